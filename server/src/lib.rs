//! The bootvault server: docs/PROTOCOL.md over HTTP (axum), on top of the
//! [`vault`] (database + chunk store). Blocking work (SQLite, fsync,
//! inflating and hashing chunks) runs on tokio's blocking pool.
//!
//! Besides the database, `DATA/events.log` gets one line per PC contact
//! and backup event (`unix-time event key=value ...`), which tests and
//! admins read. The server binds exactly the address it is given (tests
//! use 127.0.0.1:0 and read the chosen port from the first line printed).
//!
//! Password-protected backups: a PC reads a locked backup's manifest and
//! chunks only with a ticket from `POST backups/ID/unlock` (or one handed
//! out with a restore job the admin unlocked); the admin token needs none,
//! since the admin owns the store the images sit in.

// Handlers return `Result<_, Response>`: the error is the HTTP answer itself,
// built once where the failure is understood; its size does not matter here.
#![allow(clippy::result_large_err)]

pub mod listener;
mod netboot;
mod refusals;
pub mod vault;

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bootvault_common::image::{self, ChunkId};
use bootvault_common::units::human_bytes;
use bootvault_common::wire;
use vault::Vault;

pub struct Options {
    pub listen: SocketAddr,
    pub data: PathBuf,
    /// Timeouts and connection caps (docs/PROTOCOL.md "Server limits").
    pub limits: listener::Limits,
}

struct App {
    vault: Vault,
    events: Mutex<std::fs::File>,
    /// DATA/admin.token, read once at start (it never changes while the
    /// server runs; every request is checked against it).
    admin_token: String,
    /// Refused and unauthenticated requests: what of them is logged.
    refusal_log: Mutex<refusals::RefusalLog>,
    /// New `pending` MACs per peer address (netboot, unauthenticated).
    new_pending: Mutex<refusals::PeerRate>,
}

/// Who sent a request, proven by a token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    /// The admin token (DATA/admin.token).
    Admin,
    /// A registered PC with its own token.
    Pc(String),
}

impl Who {
    /// The PC, or None for the admin.
    fn pc(&self) -> Option<&str> {
        match self {
            Who::Pc(p) => Some(p),
            Who::Admin => None,
        }
    }

    fn name(&self) -> &str {
        match self {
            Who::Admin => "admin",
            Who::Pc(p) => p,
        }
    }
}

type Shared = Arc<App>;

impl App {
    /// One line to stdout and events.log, synced: backup and job events
    /// must outlive a crash.
    fn event(&self, what: &str) {
        self.log_line(what, true);
    }

    /// A refused (or unauthenticated) request from `peer`: the first few
    /// per peer and kind a minute are logged in full (`line` is built only
    /// then), the rest counted into one summary line per minute. Not
    /// synced: a flood must cost neither the disk nor an fsync each.
    fn aggregated(&self, peer: IpAddr, kind: refusals::Kind, line: impl FnOnce() -> String) {
        let Ok((full, summary)) = self.refusal_log.lock().map(|mut l| l.note(peer, kind, Instant::now())) else {
            return;
        };
        if let Some(s) = summary {
            self.log_line(&s, false);
        }
        if full {
            self.log_line(&line(), false);
        }
    }

    /// The summaries of refusal windows that ended (run every few seconds).
    fn flush_refusals(&self) {
        let lines = self.refusal_log.lock().map(|mut l| l.flush(Instant::now())).unwrap_or_default();
        for l in lines {
            self.log_line(&l, false);
        }
    }

    fn log_line(&self, what: &str, sync: bool) {
        let line = format!("{} {what}\n", vault::now());
        print!("{line}");
        let _ = std::io::stdout().flush();
        if let Ok(mut f) = self.events.lock() {
            let _ = f.write_all(line.as_bytes()).and_then(|()| if sync { f.sync_data() } else { Ok(()) });
        }
    }
}

/// Starts a server on a free port of 127.0.0.1 in a background thread and
/// returns the port once it accepts connections (tests, benchmarks).
pub fn spawn_on_loopback(data: &std::path::Path, limits: listener::Limits) -> anyhow::Result<u16> {
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("finding a free port")?.port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let opts = Options { listen, data: data.to_owned(), limits };
    std::thread::spawn(move || serve(opts));
    let start = Instant::now();
    while std::net::TcpStream::connect(listen).is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            anyhow::bail!("the server on {listen} did not start within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(port)
}

/// Starts the server and runs until Ctrl-C / SIGTERM.
pub fn serve(opts: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(run(opts))
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let vault = Vault::open(&opts.data)?;
    let events_path = opts.data.join("events.log");
    let events = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&events_path)
        .with_context(|| format!("opening {}", events_path.display()))?;
    let unfinished = vault.list_backups(None, true)?.iter().filter(|b| b.state == "uploading").count();
    let admin_token = vault.admin_token()?;
    let mut limits = opts.limits;
    let fds = listener::raise_fd_limit();
    let fd_capped = fds.filter(|f| limits.max_connections > listener::fd_budget(*f).max(8));
    if let Some(f) = fd_capped {
        limits.max_connections = listener::fd_budget(f).max(8);
    }
    let app = Arc::new(App {
        vault,
        events: Mutex::new(events),
        admin_token,
        refusal_log: Mutex::new(refusals::RefusalLog::default()),
        new_pending: Mutex::new(netboot::new_pending_rate()),
    });
    let listener =
        tokio::net::TcpListener::bind(opts.listen).await.with_context(|| format!("binding {}", opts.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    // Tests and the Makefile parse this line for the port.
    println!("bootvault server listening on http://{local} (data {})", opts.data.display());
    println!("admin token in {} (PCs authenticate with their own tokens)", app.vault.admin_token_path().display());
    if unfinished > 0 {
        println!("{unfinished} backups were left uploading (never complete; `bootvault gc` clears them)");
    }
    if let Some(f) = fd_capped {
        println!(
            "at most {} connections (not {}): the open-file limit is {f}",
            limits.max_connections, opts.limits.max_connections
        );
    }
    // Refusal summaries are written when their minute ends, also when
    // the flood has stopped.
    let flusher = app.clone();
    let summaries = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            flusher.flush_refusals();
        }
    });
    let refusing = app.clone();
    let on_refusal = move |peer: IpAddr, kind: &'static str, reason: String| {
        refusing.aggregated(peer, refusals::Kind::new("conn-refused", kind), || {
            format!("conn-refused peer={peer} reason={reason:?}")
        });
    };
    listener::serve(listener, router(app.clone()), limits, on_refusal, shutdown_signal()).await;
    summaries.abort();
    println!("bootvault server stopped");
    Ok(())
}

fn router(app: Shared) -> Router {
    Router::new()
        .merge(netboot::router())
        .route(wire::HELLO, get(hello))
        .route("/api/v1/backups", post(open_backup).get(list_backups))
        .route("/api/v1/backups/latest", get(latest))
        .route("/api/v1/backups/{id}", get(show_backup).delete(delete_backup))
        .route("/api/v1/backups/{id}/missing", post(missing))
        .route("/api/v1/backups/{id}/finish", post(finish))
        .route("/api/v1/backups/{id}/fail", post(fail))
        .route("/api/v1/backups/{id}/manifest", get(manifest))
        .route("/api/v1/backups/{id}/challenge", get(challenge))
        .route("/api/v1/backups/{id}/unlock", post(unlock))
        .route("/api/v1/backups/{id}/export", get(export))
        .route("/api/v1/import", post(import))
        .route("/api/v1/chunks/{hex}", put(put_chunk).get(get_chunk))
        .route("/api/v1/jobs", post(add_job).get(list_jobs))
        .route("/api/v1/jobs/next", get(next_job))
        .route("/api/v1/results", post(result).get(list_results))
        // Bodies are read by each handler after the caller is known, with
        // the route's own limit (see `take_body`).
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// A header value fit for a one-line log: printable ASCII without spaces.
fn header(headers: &HeaderMap, name: &str) -> String {
    let v = headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
    let clean: String = v.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    if clean.is_empty() {
        "-".into()
    } else {
        clean
    }
}

/// The PC a PC-only request comes from (jobs, results).
fn pc_only(who: Who) -> Result<String, Response> {
    match who {
        Who::Pc(p) => Ok(p),
        Who::Admin => Err(text(StatusCode::BAD_REQUEST, "this request is a PC's: send the PC's token")),
    }
}

/// The token of `Authorization: Bearer TOKEN`, if any.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(wire::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix(wire::BEARER)?.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// Checks the request's token: the admin token, or the token of the
/// registered PC the request names. Refusals are 401 with a reason the
/// PC's console shows as is, and an `auth-refused` event.
fn authenticate(app: &App, headers: &HeaderMap) -> Result<Who, Response> {
    let pc = header(headers, wire::PC_HEADER);
    // Aggregated per (peer, kind): a flood of refusals is counted, not
    // written line by line (see `App::refused`).
    let peer = headers
        .get(listener::PEER_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<IpAddr>().ok())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let refuse = |kind: &'static str, reason: String| {
        app.aggregated(peer, refusals::Kind::new("auth-refused", kind), || {
            format!("auth-refused pc={pc} peer={peer} reason={reason:?}")
        });
        Err(text(StatusCode::UNAUTHORIZED, reason))
    };
    let Some(token) = bearer(headers) else {
        return refuse(
            "no-token",
            format!(
                "no token: PC {pc} sent none (build its boot media from the server's database: bootvault build {pc} --data DIR)"
            ),
        );
    };
    if vault::secret_eq(&token, &app.admin_token) {
        return Ok(Who::Admin);
    }
    if pc == "-" {
        return refuse("no-pc", "unknown token, and no PC named in the request".into());
    }
    match app.vault.pc_token(&pc).map_err(internal)? {
        None => refuse(
            "unregistered",
            format!("PC {pc} is not registered with this server (bootvault pc add {pc} --mac ...)"),
        ),
        Some(t) if vault::secret_eq(&token, &t) => Ok(Who::Pc(pc)),
        Some(_) => {
            refuse("wrong-token", format!("wrong token for PC {pc}: its boot media is out of date or not its own"))
        }
    }
}

async fn auth(app: &Shared, headers: &HeaderMap) -> Result<Who, Response> {
    let headers = headers.clone();
    blocking(app, move |app| authenticate(app, &headers)).await
}

fn admin_only(who: &Who) -> Result<(), Response> {
    match who {
        Who::Admin => Ok(()),
        Who::Pc(p) => Err(text(StatusCode::FORBIDDEN, format!("PC {p} may not do this: it needs the admin token"))),
    }
}

fn backup_row(app: &App, id: i64) -> Result<vault::BackupRow, Response> {
    app.vault.backup(id).map_err(internal)?.ok_or_else(|| text(StatusCode::NOT_FOUND, format!("no backup {id}")))
}

/// The backup, if `who` may read it (its owner, a PC granted it, admin).
fn readable(app: &App, who: &Who, id: i64) -> Result<vault::BackupRow, Response> {
    let row = backup_row(app, id)?;
    match who {
        Who::Admin => Ok(row),
        Who::Pc(p) if app.vault.can_read(p, &row).map_err(internal)? => Ok(row),
        Who::Pc(p) => {
            app.event(&format!("access-refused pc={p} backup={id} owner={}", row.pc));
            Err(text(StatusCode::FORBIDDEN, format!("backup {id} is not PC {p}'s, and PC {p} has no grant for it")))
        }
    }
}

/// The backup, if `who` owns it (the admin may act on any); the vault
/// checks its state.
fn writable(app: &App, who: &Who, id: i64) -> Result<vault::BackupRow, Response> {
    let row = backup_row(app, id)?;
    if let Who::Pc(p) = who {
        if &row.pc != p {
            app.event(&format!("access-refused pc={p} backup={id} owner={}", row.pc));
            return Err(text(StatusCode::FORBIDDEN, format!("backup {id} is not PC {p}'s")));
        }
    }
    Ok(row)
}

/// The one-line refusal of a locked backup without a ticket; the PC's
/// console shows it as is.
fn locked_reason(id: i64) -> String {
    format!(
        "backup {id} is protected by a password; restore it at the PC's console, or through a server job made with \
         --password-file"
    )
}

/// The unlock ticket a request carries, if any.
fn ticket_of(headers: &HeaderMap) -> Option<String> {
    headers.get(wire::UNLOCK_HEADER).and_then(|v| v.to_str().ok()).map(|t| t.trim().to_owned())
}

/// A PC reads a locked backup only with a valid ticket for it; `423
/// Locked` otherwise. The admin needs none.
fn unlocked_for(app: &App, who: &Who, row: &vault::BackupRow, ticket: Option<&str>) -> Result<(), Response> {
    let Who::Pc(p) = who else { return Ok(()) };
    if !row.locked || ticket.is_some_and(|t| app.vault.ticket_ok(p, row.id, t, vault::now())) {
        return Ok(());
    }
    app.event(&format!(
        "access-refused pc={p} backup={} reason={}",
        row.id,
        if ticket.is_some() { "\"unknown or expired unlock ticket\"" } else { "\"locked, no unlock ticket\"" }
    ));
    Err(text(StatusCode::LOCKED, locked_reason(row.id)))
}

fn unlock_status(kind: vault::UnlockRefused) -> StatusCode {
    match kind {
        vault::UnlockRefused::Wrong => StatusCode::FORBIDDEN,
        vault::UnlockRefused::Wait => StatusCode::TOO_MANY_REQUESTS,
        vault::UnlockRefused::NoChallenge | vault::UnlockRefused::NotLocked => StatusCode::CONFLICT,
        vault::UnlockRefused::NoBackup => StatusCode::NOT_FOUND,
        vault::UnlockRefused::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Parses `nonce=HEX` and `proof=HEX` (64 hex digits each).
fn nonce_and_proof(nonce: &str, proof: &str) -> Result<([u8; 32], [u8; 32]), Response> {
    let mut n = [0u8; 32];
    let mut p = [0u8; 32];
    wire::hex_into(nonce, &mut n).map_err(|e| text(StatusCode::BAD_REQUEST, format!("nonce: {e}")))?;
    wire::hex_into(proof, &mut p).map_err(|e| text(StatusCode::BAD_REQUEST, format!("proof: {e}")))?;
    Ok((n, p))
}

/// Checks an unlock proof for `pc`, logging `unlock-ok` or `unlock-refused`.
fn check_unlock(app: &App, pc: &str, id: i64, nonce: &[u8; 32], proof: &[u8; 32], by: &str) -> Result<(), Response> {
    match app.vault.verify_unlock(pc, id, nonce, proof, vault::now()) {
        Ok(()) => {
            app.event(&format!("unlock-ok pc={pc} backup={id} by={by}"));
            Ok(())
        }
        Err(e) => {
            app.event(&format!("unlock-refused pc={pc} backup={id} by={by} reason={:?}", e.message));
            Err(text(unlock_status(e.kind), e.message))
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut b = body.into();
    if !b.ends_with('\n') {
        b.push('\n');
    }
    (status, b).into_response()
}

/// A failure of the server itself: the detail (paths, SQL) goes to the
/// server's output only; the caller reads that the server failed, or that
/// its storage is full (507).
fn internal(e: impl std::fmt::Display) -> Response {
    eprintln!("{} internal-error {e:#}", vault::now());
    text(StatusCode::INTERNAL_SERVER_ERROR, "the server failed to answer (the reason is in its log)")
}

/// 507 for a vault error from a full disk (the detail to the server's
/// output only), or `otherwise` for any other.
fn full_or(e: anyhow::Error, otherwise: impl FnOnce(anyhow::Error) -> Response) -> Response {
    if !vault::is_storage_full(&e) {
        return otherwise(e);
    }
    eprintln!("{} storage-full {e:#}", vault::now());
    text(StatusCode::INSUFFICIENT_STORAGE, "the server's storage is full; try again after its admin frees space")
}

/// [`internal`] for vault errors, telling a full disk apart.
fn storage(e: anyhow::Error) -> Response {
    full_or(e, internal)
}

/// A vault refusal (a bad value: 422 with its reason), or a full disk (507).
fn refused(e: anyhow::Error) -> Response {
    full_or(e, |e| text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

/// Largest bodies per route: small `key=value` requests, a batch of chunk
/// ids, a blob, a manifest (32 bytes and a length per chunk: 64 MiB is a
/// 2 TiB disk at 1 MiB chunks).
const SMALL_BODY: usize = 16 << 10;
const MISSING_BODY: usize = 1024 * 32;
const CHUNK_BODY: usize = image::MAX_CHUNK_SIZE as usize + 64;
const MANIFEST_BODY: usize = 64 << 20;

/// Reads a request's body once the caller is authenticated, within the
/// route's `limit` (413, from the declared length before any byte is
/// read); a body that stops sending is a 408 (the connection's idle limit).
async fn take_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    listener::read_body(body, limit).await.map_err(IntoResponse::into_response)
}

/// Runs vault work on the blocking pool.
async fn blocking<T: Send + 'static>(
    app: &Shared,
    f: impl FnOnce(&App) -> Result<T, Response> + Send + 'static,
) -> Result<T, Response> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app)).await.map_err(internal)?
}

fn body_or(r: Result<Response, Response>) -> Response {
    r.unwrap_or_else(|e| e)
}

/// A `key=value` lines body (the init-facing format); a repeated key
/// keeps its last value.
fn kv_body(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A backup's lock from its text form; a bad one is a 422 naming why.
fn lock_of(text_form: Option<&str>) -> Result<Option<vault::BackupLock>, Response> {
    text_form
        .map(vault::BackupLock::from_text)
        .transpose()
        .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))
}

async fn hello(State(app): State<Shared>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap) -> Response {
    let mac = header(&headers, wire::MAC_HEADER);
    let addr = header(&headers, wire::ADDR_HEADER);
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            blocking(&app, move |app| {
                let pc = who.name().to_owned();
                if let Who::Pc(p) = &who {
                    app.vault.seen_pc(p, &mac, &addr).map_err(internal)?;
                }
                app.event(&format!("hello pc={pc} mac={mac} addr={addr} peer={peer}"));
                Ok(text(
                    StatusCode::OK,
                    format!("{} {}: hello {pc}, seen at {addr}", wire::HELLO_PREFIX, env!("CARGO_PKG_VERSION")),
                ))
            })
            .await
        }
        .await,
    )
}

fn q<'a>(query: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    query.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

async fn open_backup(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            // The body: optional `key=value` lines; `lock=TEXT` locks the backup.
            let body = take_body(body, SMALL_BODY).await?;
            let lock_text = String::from_utf8_lossy(&body)
                .lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == "lock")
                .map(|(_, v)| v.trim().to_owned());
            let pc = match &who {
                Who::Pc(p) => p.clone(),
                Who::Admin => q(&query, "pc")
                    .map(str::to_owned)
                    .ok_or_else(|| text(StatusCode::BAD_REQUEST, "pc missing (whose backup is it?)"))?,
            };
            let name = q(&query, "name").unwrap_or("full").to_owned();
            // Parsed as the types they are stored in and range-checked, never cut to fit.
            let bad_size = |k: &str, v: &str| {
                let range = if k == "chunk_size" {
                    format!("{}..={}", image::MIN_CHUNK_SIZE, image::MAX_CHUNK_SIZE)
                } else {
                    format!("1..={}", image::MAX_DISK_BYTES)
                };
                text(StatusCode::BAD_REQUEST, format!("{k}={v:?}: expected a number {range}"))
            };
            let disk_bytes = q(&query, "disk_bytes")
                .ok_or_else(|| text(StatusCode::BAD_REQUEST, "disk_bytes missing"))
                .and_then(|v| v.parse::<u64>().map_err(|_| bad_size("disk_bytes", v)))?;
            let chunk_size = match q(&query, "chunk_size") {
                Some(v) => v.parse::<u32>().map_err(|_| bad_size("chunk_size", v))?,
                None => image::DEFAULT_CHUNK_SIZE,
            };
            image::check_new_backup(disk_bytes, chunk_size).map_err(|e| text(StatusCode::BAD_REQUEST, e))?;
            let lock = lock_of(lock_text.as_deref())?;
            blocking(&app, move |app| {
                if let Err(m) = app.vault.check_quota(&pc, 1) {
                    app.event(&format!("quota-refused pc={pc} backup=new"));
                    return Err(text(StatusCode::INSUFFICIENT_STORAGE, m));
                }
                let id = app
                    .vault
                    .create_backup_locked(&pc, &name, disk_bytes, chunk_size, lock.as_ref())
                    .map_err(refused)?;
                app.event(&format!(
                    "backup-open id={id} pc={pc} name={name:?} disk_bytes={disk_bytes}{}",
                    if lock.is_some() { " locked=yes" } else { "" }
                ));
                Ok(text(StatusCode::CREATED, format!("id={id}")))
            })
            .await
        }
        .await,
    )
}

async fn missing(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<i64>, body: Body) -> Response {
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            let body = take_body(body, MISSING_BODY).await?;
            if !body.len().is_multiple_of(32) {
                return Err(text(StatusCode::BAD_REQUEST, "expected up to 1024 chunk ids of 32 bytes"));
            }
            blocking(&app, move |app| {
                writable(app, &who, id)?;
                let ids: Vec<ChunkId> = body.chunks_exact(32).filter_map(|c| c.try_into().ok()).collect();
                let lens = app.vault.missing(id, who.pc(), &ids).map_err(storage)?;
                let out: Vec<u8> = lens.iter().flat_map(|l| l.to_le_bytes()).collect();
                Ok((StatusCode::OK, out).into_response())
            })
            .await
        }
        .await,
    )
}

async fn put_chunk(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(hex): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    let Some(cid) = image::parse_hex(&hex) else {
        return text(StatusCode::BAD_REQUEST, format!("bad chunk id {hex:?}"));
    };
    let backup: Option<i64> = q(&query, "backup").and_then(|v| v.parse().ok());
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            // A PC stores chunks only into an upload of its own.
            if let (Who::Pc(_), None) = (&who, backup) {
                return Err(text(StatusCode::BAD_REQUEST, "backup=ID missing"));
            }
            let body = take_body(body, CHUNK_BODY).await?;
            blocking(&app, move |app| {
                if let Some(b) = backup {
                    writable(app, &who, b)?;
                }
                match app.vault.put_chunk_for(who.pc(), &cid, &body, backup) {
                    Ok(true) => Ok(text(StatusCode::CREATED, "stored")),
                    Ok(false) => Ok(text(StatusCode::OK, "already stored")),
                    Err(vault::PutError::Bad(m)) => Err(text(StatusCode::UNPROCESSABLE_ENTITY, m)),
                    Err(vault::PutError::Closed(m)) => Err(text(StatusCode::CONFLICT, m)),
                    Err(vault::PutError::Quota(m)) => {
                        app.event(&format!("quota-refused pc={} backup={backup:?}", who.name()));
                        Err(text(StatusCode::INSUFFICIENT_STORAGE, m))
                    }
                    Err(vault::PutError::Storage(e)) => Err(storage(e)),
                }
            })
            .await
        }
        .await,
    )
}

async fn finish(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<i64>, body: Body) -> Response {
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            let body = take_body(body, MANIFEST_BODY).await?;
            blocking(&app, move |app| {
                let pc = writable(app, &who, id)?.pc;
                match app.vault.finish_backup_for(id, &pc, &body, who.pc().is_some()) {
                    Ok(b) => {
                        app.event(&format!(
                            "backup {id} of pc={pc} complete: {} chunks ({} zero), {} received in {} new chunks, {} already stored",
                            b.chunks,
                            b.zero_chunks,
                            human_bytes(b.received_bytes),
                            b.received_chunks,
                            human_bytes(b.blob_bytes.saturating_sub(b.received_bytes))
                        ));
                        Ok(text(StatusCode::OK, format!("id={id}\nstate=complete")))
                    }
                    Err(e) => {
                        let status = if e.conflict {
                            StatusCode::CONFLICT
                        } else if e.forbidden {
                            StatusCode::FORBIDDEN
                        } else {
                            StatusCode::UNPROCESSABLE_ENTITY
                        };
                        app.event(&format!("backup-refused id={id} pc={pc} reason={:?}", e.message));
                        Err(text(status, e.message))
                    }
                }
            })
            .await
        }
        .await,
    )
}

async fn fail(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<i64>, body: Body) -> Response {
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            let body = take_body(body, SMALL_BODY).await?;
            let reason: String =
                String::from_utf8_lossy(&body).lines().next().unwrap_or("").chars().take(500).collect();
            blocking(&app, move |app| {
                writable(app, &who, id)?;
                app.vault.fail_backup(id, &reason).map_err(|e| text(StatusCode::CONFLICT, e.to_string()))?;
                app.event(&format!("backup-failed id={id} reason={reason:?}"));
                Ok(text(StatusCode::OK, "state=failed"))
            })
            .await
        }
        .await,
    )
}

/// `?pc=NAME` (default: the asking PC): its newest complete backup, or, for
/// another PC's backups, the newest one granted to the asking PC.
async fn latest(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let name = q(&query, "name").map(str::to_owned);
    let of = q(&query, "pc").map(str::to_owned);
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            let of = match (&who, of) {
                (_, Some(p)) => p,
                (Who::Pc(p), None) => p.clone(),
                (Who::Admin, None) => return Err(text(StatusCode::BAD_REQUEST, "pc missing")),
            };
            blocking(&app, move |app| {
                let found = match &who {
                    Who::Pc(p) if *p != of => app
                        .vault
                        .visible_backups(p)
                        .map_err(internal)?
                        .into_iter()
                        .rev()
                        .find(|b| b.pc == of && name.as_ref().is_none_or(|n| *n == b.name))
                        .map(|b| b.id),
                    _ => app.vault.latest(&of, name.as_deref()).map_err(internal)?,
                };
                match found {
                    Some(id) => Ok(text(StatusCode::OK, format!("id={id}"))),
                    None if of == who.name() => Err(text(StatusCode::NOT_FOUND, format!("no complete backup of {of}"))),
                    None => Err(text(
                        StatusCode::NOT_FOUND,
                        format!("no complete backup of {of} that {} may restore", who.name()),
                    )),
                }
            })
            .await
        }
        .await,
    )
}

/// `?format=lines`: one line per backup, newest first, tab-separated
/// `key=value` fields the init parses without JSON.
fn backup_lines(rows: &[vault::BackupRow]) -> String {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    rows.iter()
        .rev()
        .map(|b| {
            format!(
                "id={}\tpc={}\tname={}\tcreated={}\tdisk_bytes={}\tstored_bytes={}\tlocked={}\tmodel={}\n",
                b.id,
                clean(&b.pc),
                clean(&b.name),
                b.created,
                b.disk_bytes,
                b.blob_bytes,
                if b.locked { "yes" } else { "no" },
                clean(&b.model)
            )
        })
        .collect()
}

/// Admin: every backup (`?pc=`, `?all=1`); a PC: the complete backups it
/// may restore (its own and those granted to it). JSON, or with
/// `?format=lines` the init's form.
async fn list_backups(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let pc = q(&query, "pc").map(str::to_owned);
    let all = q(&query, "all").is_some_and(|v| v == "1" || v == "yes");
    let lines = q(&query, "format") == Some("lines");
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            blocking(&app, move |app| {
                let rows = match &who {
                    Who::Admin => app.vault.list_backups(pc.as_deref(), all).map_err(internal)?,
                    Who::Pc(p) => app.vault.visible_backups(p).map_err(internal)?,
                };
                if lines {
                    return Ok((StatusCode::OK, backup_lines(&rows)).into_response());
                }
                Ok(Json(rows).into_response())
            })
            .await
        }
        .await,
    )
}

async fn show_backup(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            blocking(&app, move |app| Ok(Json(readable(app, &who, id)?).into_response())).await
        }
        .await,
    )
}

async fn delete_backup(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    body_or(
        async {
            admin_only(&auth(&app, &headers).await?)?;
            blocking(&app, move |app| {
                app.vault.delete_backup(id).map_err(|e| text(StatusCode::NOT_FOUND, e.to_string()))?;
                app.event(&format!("backup-deleted id={id}"));
                Ok(text(StatusCode::OK, "deleted"))
            })
            .await
        }
        .await,
    )
}

/// The PC (or, for the admin, `?pc=`, default the owner) an unlock is for.
fn unlock_pc(who: &Who, row: &vault::BackupRow, query: &HashMap<String, String>) -> String {
    match who {
        Who::Pc(p) => p.clone(),
        Who::Admin => q(query, "pc").unwrap_or(&row.pc).to_owned(),
    }
}

/// `locked=no`, or the lock's parameters, salt and a fresh one-time nonce.
async fn challenge(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            blocking(&app, move |app| {
                let row = readable(app, &who, id)?;
                let pc = unlock_pc(&who, &row, &query);
                match app.vault.challenge(&pc, id, vault::now()) {
                    Ok(None) => Ok(text(StatusCode::OK, "locked=no")),
                    Ok(Some(c)) => Ok(text(
                        StatusCode::OK,
                        format!(
                            "locked=yes\nkdf=argon2id\nm={}\nt={}\np={}\nsalt={}\nnonce={}\n",
                            c.params.m_kib,
                            c.params.t_cost,
                            c.params.p,
                            wire::to_hex(&c.salt),
                            wire::to_hex(&c.nonce)
                        ),
                    )),
                    Err(e) => {
                        if e.kind == vault::UnlockRefused::Wait {
                            app.event(&format!(
                                "unlock-refused pc={pc} backup={id} by={} reason={:?}",
                                who.name(),
                                e.message
                            ));
                        }
                        Err(text(unlock_status(e.kind), e.message))
                    }
                }
            })
            .await
        }
        .await,
    )
}

/// Body `nonce=HEX\nproof=HEX` → `ticket=HEX\nexpires=UNIX` (the PC
/// sends it as `x-bootvault-unlock`); 403 wrong password, 429 wait.
async fn unlock(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            let kv = kv_body(&take_body(body, SMALL_BODY).await?);
            let get = |k: &str| kv.get(k).map(String::as_str).unwrap_or("");
            let (nonce, proof) = nonce_and_proof(get("nonce"), get("proof"))?;
            blocking(&app, move |app| {
                let row = readable(app, &who, id)?;
                let pc = unlock_pc(&who, &row, &query);
                check_unlock(app, &pc, id, &nonce, &proof, who.name())?;
                let now = vault::now();
                let ticket = app.vault.issue_ticket(&pc, id, now).map_err(internal)?;
                Ok(text(StatusCode::OK, format!("ticket={ticket}\nexpires={}", now + vault::TICKET_SECONDS)))
            })
            .await
        }
        .await,
    )
}

async fn manifest(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let ticket = ticket_of(&headers);
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            blocking(&app, move |app| {
                let row = readable(app, &who, id)?;
                unlocked_for(app, &who, &row, ticket.as_deref())?;
                let m = app.vault.manifest(id).map_err(|e| {
                    eprintln!("{} manifest-unreadable backup={id} {e:#}", vault::now());
                    text(StatusCode::NOT_FOUND, format!("backup {id} has no readable manifest"))
                })?;
                if row.pc != who.name() {
                    app.event(&format!("restore-granted pc={} backup={id} owner={}", who.name(), row.pc));
                }
                Ok((StatusCode::OK, m).into_response())
            })
            .await
        }
        .await,
    )
}

/// A PC names the backup it restores (`?backup=ID`) and gets only chunks
/// of that backup's manifest; the admin gets any chunk.
async fn get_chunk(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(hex): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(cid) = image::parse_hex(&hex) else {
        return text(StatusCode::BAD_REQUEST, format!("bad chunk id {hex:?}"));
    };
    let backup: Option<i64> = q(&query, "backup").and_then(|v| v.parse().ok());
    let ticket = ticket_of(&headers);
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            blocking(&app, move |app| {
                if let Who::Pc(_) = who {
                    let b = backup.ok_or_else(|| text(StatusCode::BAD_REQUEST, "backup=ID missing"))?;
                    let row = readable(app, &who, b)?;
                    unlocked_for(app, &who, &row, ticket.as_deref())?;
                    if !app.vault.in_manifest(b, &cid).map_err(storage)? {
                        return Err(text(StatusCode::FORBIDDEN, format!("chunk {hex} is not part of backup {b}")));
                    }
                }
                let blob = app
                    .vault
                    .chunk(&cid)
                    .map_err(|_| text(StatusCode::NOT_FOUND, format!("chunk {hex} is not in the store")))?;
                Ok((StatusCode::OK, blob).into_response())
            })
            .await
        }
        .await,
    )
}

/// Streams the single-file form: a blocking writer feeds a pipe.
async fn export(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    match auth(&app, &headers).await {
        Ok(who) => {
            if let Err(r) = admin_only(&who) {
                return r;
            }
        }
        Err(r) => return r,
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    struct ChannelWriter(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);
    impl Write for ChannelWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.blocking_send(Ok(Bytes::copy_from_slice(buf))).map_err(|_| std::io::ErrorKind::BrokenPipe)?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    if let Err(e) = app.vault.manifest(id) {
        return text(StatusCode::NOT_FOUND, e.to_string());
    }
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || {
        let w = std::io::BufWriter::with_capacity(1 << 20, ChannelWriter(tx.clone()));
        if let Err(e) = app2.vault.export(id, w) {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (StatusCode::OK, Body::from_stream(stream)).into_response()
}

/// Streams the upload into the vault as it arrives (no spool file): the
/// header is checked first, every chunk verified as it is read, and a bad
/// file is refused at its first bad byte.
async fn import(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    use futures_util::StreamExt;
    match auth(&app, &headers).await {
        Ok(who) => {
            if let Err(r) = admin_only(&who) {
                return r;
            }
        }
        Err(r) => return r,
    }
    let pc = q(&query, "pc").map(str::to_owned);
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let worker = tokio::task::spawn_blocking({
        let app = app.clone();
        move || {
            let r = app.vault.import(std::io::BufReader::with_capacity(1 << 20, ChannelReader::new(rx)), pc.as_deref());
            if let Ok(id) = &r {
                app.event(&format!("backup-imported id={id}"));
            }
            r
        }
    });
    // Feed the body to the importer; it stops reading (and the channel
    // closes) as soon as it refuses the file. A body that stops sending
    // fails by the connection's idle limit.
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let item = frame.map_err(|e| std::io::Error::other(format!("reading the upload: {e}")));
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    match worker.await {
        Ok(Ok(id)) => text(StatusCode::CREATED, format!("id={id}")),
        Ok(Err(e)) => full_or(e, |e| text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}"))),
        Err(e) => internal(e),
    }
}

/// A blocking reader over the body's frames, for the importer.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> ChannelReader {
        ChannelReader { rx, current: Bytes::new() }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(frame) => self.current = frame?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[derive(serde::Deserialize)]
struct NewJob {
    pc: String,
    action: String,
    #[serde(default)]
    disk: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    backup: Option<i64>,
    /// Backup job: the lock text (`bootvault job add ... --password-file`).
    #[serde(default)]
    lock: Option<String>,
    /// Restore job of a locked backup: the answer to `GET
    /// backups/ID/challenge?pc=PC` (hex), checked as PC's unlock.
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    proof: Option<String>,
}

async fn add_job(State(app): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    body_or(
        async {
            admin_only(&auth(&app, &headers).await?)?;
            let j: NewJob = serde_json::from_slice(&take_body(body, SMALL_BODY).await?)
                .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, format!("the job: {e}")))?;
            let lock = lock_of(j.lock.as_deref())?;
            let (disk, name) = (j.disk.as_deref().unwrap_or("auto"), j.name.as_deref().unwrap_or(""));
            // By the PC's own rules, before a proof uses up the admin's nonce
            // (the vault checks them again, for the CLI).
            bootvault_common::job::check_fields(disk, name, j.backup)
                .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, e))?;
            let (disk, name) = (disk.to_owned(), name.to_owned());
            let proven = match (&j.nonce, &j.proof) {
                (Some(n), Some(p)) => Some(nonce_and_proof(n, p)?),
                (None, None) => None,
                _ => return Err(text(StatusCode::BAD_REQUEST, "nonce and proof go together")),
            };
            blocking(&app, move |app| {
                if let Some((nonce, proof)) = &proven {
                    let b = j.backup.ok_or_else(|| text(StatusCode::BAD_REQUEST, "a proof needs the backup id"))?;
                    check_unlock(app, &j.pc, b, nonce, proof, "admin")?;
                }
                let id = app
                    .vault
                    .add_job_with(&j.pc, &j.action, &disk, &name, j.backup, lock.as_ref(), proven.is_some())
                    .map_err(refused)?;
                Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
            })
            .await
        }
        .await,
    )
}

async fn list_jobs(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let pc = q(&query, "pc").map(str::to_owned);
    body_or(
        async {
            admin_only(&auth(&app, &headers).await?)?;
            blocking(&app, move |app| Ok(Json(app.vault.list_jobs(pc.as_deref()).map_err(internal)?).into_response()))
                .await
        }
        .await,
    )
}

async fn next_job(State(app): State<Shared>, headers: HeaderMap) -> Response {
    body_or(
        async {
            let pc = pc_only(auth(&app, &headers).await?)?;
            blocking(&app, move |app| match app.vault.next_job(&pc).map_err(internal)? {
                None => Ok(StatusCode::NO_CONTENT.into_response()),
                Some(j) => {
                    use bootvault_common::config::BackupRef;
                    use bootvault_common::job::{parse_action, JobMessage};
                    let message = parse_action(&j.action).and_then(|action| {
                        let m = JobMessage {
                            id: j.id,
                            action,
                            // An empty disk: the PC's own setting.
                            disk: Some(j.disk.clone()).filter(|d| !d.is_empty()),
                            name: Some(j.name.clone()),
                            backup: j.backup.map_or(BackupRef::Latest, BackupRef::Id),
                            lock: j.lock.clone(),
                            ticket: None,
                        };
                        m.check().map(|()| m)
                    });
                    let mut message = match message {
                        Ok(m) => m,
                        Err(e) => {
                            // A job stored before its fields were checked: it fails
                            // here, where the admin sees why, and never reaches the PC.
                            app.event(&format!("job-refused id={} pc={pc} reason={e:?}", j.id));
                            let why = format!("the server did not send job {}: {e}", j.id);
                            app.vault
                                .record_result(&pc, Some(j.id), &j.action, &j.disk, j.backup, false, &why, 0, 0, 0.0)
                                .map_err(internal)?;
                            return Err(text(StatusCode::INTERNAL_SERVER_ERROR, why));
                        }
                    };
                    if let (true, Some(b)) = (j.unlocked, j.backup) {
                        message.ticket = Some(app.vault.issue_ticket(&pc, b, vault::now()).map_err(internal)?);
                    }
                    let body = message.encode().map_err(internal)?;
                    app.event(&format!("job-start id={} pc={pc} action={}", j.id, j.action));
                    Ok(text(StatusCode::OK, body))
                }
            })
            .await
        }
        .await,
    )
}

async fn result(State(app): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    body_or(
        async {
            let pc = pc_only(auth(&app, &headers).await?)?;
            let kv = kv_body(&take_body(body, SMALL_BODY).await?);
            let get = |k: &str| kv.get(k).map(String::as_str).unwrap_or("");
            let num = |k: &str| get(k).parse::<u64>().unwrap_or(0);
            let (job, backup) = (get("job").parse().ok(), get("backup").parse().ok());
            let (action, disk, message) = (get("action").to_owned(), get("disk").to_owned(), get("message").to_owned());
            let ok = get("ok") == "yes";
            let (bytes, sent, seconds) = (num("bytes"), num("sent"), get("seconds").parse().unwrap_or(0.0));
            blocking(&app, move |app| {
                app.vault
                    .record_result(&pc, job, &action, &disk, backup, ok, &message, bytes, sent, seconds)
                    .map_err(internal)?;
                app.event(&format!(
                    "result pc={pc} action={action} ok={} bytes={bytes} sent={sent} seconds={seconds} message={message:?}",
                    if ok { "yes" } else { "no" }
                ));
                Ok(text(StatusCode::OK, "recorded"))
            })
            .await
        }
        .await,
    )
}

async fn list_results(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let pc = q(&query, "pc").map(str::to_owned);
    body_or(
        async {
            admin_only(&auth(&app, &headers).await?)?;
            blocking(
                &app,
                move |app| Ok(Json(app.vault.list_results(pc.as_deref()).map_err(internal)?).into_response()),
            )
            .await
        }
        .await,
    )
}
