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

mod netboot;
pub mod vault;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
}

struct App {
    vault: Vault,
    events: Mutex<std::fs::File>,
    /// Data chunk ids of recently read manifests, so a PC fetching chunks
    /// can be held to the backups it may read without re-parsing.
    manifest_ids: Mutex<HashMap<i64, Arc<HashSet<ChunkId>>>>,
    /// DATA/admin.token, read once at start (it never changes while the
    /// server runs; every request is checked against it).
    admin_token: String,
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
    fn name(&self) -> &str {
        match self {
            Who::Admin => "admin",
            Who::Pc(p) => p,
        }
    }
}

type Shared = Arc<App>;

impl App {
    /// One line to stdout and events.log.
    fn event(&self, what: &str) {
        let line = format!("{} {what}\n", vault::now());
        print!("{line}");
        let _ = std::io::stdout().flush();
        if let Ok(mut f) = self.events.lock() {
            let _ = f.write_all(line.as_bytes()).and_then(|()| f.sync_data());
        }
    }
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
    let app =
        Arc::new(App { vault, events: Mutex::new(events), manifest_ids: Mutex::new(HashMap::new()), admin_token });
    let listener =
        tokio::net::TcpListener::bind(opts.listen).await.with_context(|| format!("binding {}", opts.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    // Tests and the Makefile parse this line for the port.
    println!("bootvault server listening on http://{local} (data {})", opts.data.display());
    println!("admin token in {} (PCs authenticate with their own tokens)", app.vault.admin_token_path().display());
    if unfinished > 0 {
        println!("{unfinished} backups were left uploading (never complete; `bootvault gc` clears them)");
    }
    axum::serve(listener, router(app).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
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
        .layer(DefaultBodyLimit::max(64 << 20))
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
    let refuse = |reason: String| {
        app.event(&format!("auth-refused pc={pc} reason={reason:?}"));
        Err(text(StatusCode::UNAUTHORIZED, reason))
    };
    let Some(token) = bearer(headers) else {
        return refuse(format!(
            "no token: PC {pc} sent none (build its boot media from the server's database: bootvault build {pc} --data DIR)"
        ));
    };
    if vault::secret_eq(&token, &app.admin_token) {
        return Ok(Who::Admin);
    }
    if pc == "-" {
        return refuse("unknown token, and no PC named in the request".into());
    }
    match app.vault.pc_token(&pc).map_err(internal)? {
        None => refuse(format!("PC {pc} is not registered with this server (bootvault pc add {pc} --mac ...)")),
        Some(t) if vault::secret_eq(&token, &t) => Ok(Who::Pc(pc)),
        Some(_) => refuse(format!("wrong token for PC {pc}: its boot media is out of date or not its own")),
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
            Err(text(
                StatusCode::FORBIDDEN,
                format!("backup {id} belongs to PC {}, and PC {p} has no grant for it", row.pc),
            ))
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
            return Err(text(StatusCode::FORBIDDEN, format!("backup {id} belongs to PC {}", row.pc)));
        }
    }
    Ok(row)
}

/// Whether chunk `cid` is part of backup `id` (manifest ids cached).
fn in_manifest(app: &App, id: i64, cid: &ChunkId) -> Result<bool, Response> {
    let cached = app.manifest_ids.lock().ok().and_then(|m| m.get(&id).cloned());
    let ids = match cached {
        Some(ids) => ids,
        None => {
            let m = app.vault.manifest(id).map_err(|e| text(StatusCode::NOT_FOUND, e.to_string()))?;
            let m = image::Manifest::decode(&m).map_err(internal)?;
            let ids: Arc<HashSet<ChunkId>> = Arc::new(m.data_ids().into_iter().collect());
            if let Ok(mut cache) = app.manifest_ids.lock() {
                if cache.len() >= 32 {
                    cache.clear();
                }
                cache.insert(id, ids.clone());
            }
            ids
        }
    };
    Ok(ids.contains(cid))
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

fn internal(e: impl std::fmt::Display) -> Response {
    text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
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
    body: Bytes,
) -> Response {
    // The body: optional `key=value` lines; `lock=TEXT` locks the backup.
    let lock_text = String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == "lock")
        .map(|(_, v)| v.trim().to_owned());
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            let pc = match &who {
                Who::Pc(p) => p.clone(),
                Who::Admin => q(&query, "pc")
                    .map(str::to_owned)
                    .ok_or_else(|| text(StatusCode::BAD_REQUEST, "pc missing (whose backup is it?)"))?,
            };
            let name = q(&query, "name").unwrap_or("full").to_owned();
            let num = |k: &str| q(&query, k).and_then(|v| v.parse::<u64>().ok());
            let disk_bytes = num("disk_bytes").ok_or_else(|| text(StatusCode::BAD_REQUEST, "disk_bytes missing"))?;
            let chunk_size = num("chunk_size").unwrap_or(u64::from(image::DEFAULT_CHUNK_SIZE)) as u32;
            let lock = lock_of(lock_text.as_deref())?;
            blocking(&app, move |app| {
                let id = app
                    .vault
                    .create_backup_locked(&pc, &name, disk_bytes, chunk_size, lock.as_ref())
                    .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
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

async fn missing(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<i64>, body: Bytes) -> Response {
    if !body.len().is_multiple_of(32) || body.len() > 1024 * 32 {
        return text(StatusCode::BAD_REQUEST, "expected up to 1024 chunk ids of 32 bytes");
    }
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            blocking(&app, move |app| {
                writable(app, &who, id)?;
                let mut out = Vec::with_capacity(body.len() / 8);
                for c in body.chunks_exact(32) {
                    let mut cid: ChunkId = [0; 32];
                    cid.copy_from_slice(c);
                    out.extend_from_slice(&app.vault.blob_len(&cid).unwrap_or(0).to_le_bytes());
                }
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
    body: Bytes,
) -> Response {
    let Some(cid) = image::parse_hex(&hex) else {
        return text(StatusCode::BAD_REQUEST, format!("bad chunk id {hex:?}"));
    };
    if body.len() > image::MAX_CHUNK_SIZE as usize + 64 {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "blob larger than the largest chunk");
    }
    let backup: Option<i64> = q(&query, "backup").and_then(|v| v.parse().ok());
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            blocking(&app, move |app| {
                // A PC stores chunks only into an upload of its own.
                match (&who, backup) {
                    (Who::Pc(_), None) => return Err(text(StatusCode::BAD_REQUEST, "backup=ID missing")),
                    (_, Some(b)) => {
                        writable(app, &who, b)?;
                    }
                    (Who::Admin, None) => {}
                }
                match app.vault.put_chunk(&cid, &body, backup) {
                    Ok(true) => Ok(text(StatusCode::CREATED, "stored")),
                    Ok(false) => Ok(text(StatusCode::OK, "already stored")),
                    Err(e) => Err(text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
                }
            })
            .await
        }
        .await,
    )
}

async fn finish(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<i64>, body: Bytes) -> Response {
    body_or(
        async {
            let who = auth(&app, &headers).await?;
            blocking(&app, move |app| {
                let pc = writable(app, &who, id)?.pc;
                match app.vault.finish_backup(id, &pc, &body) {
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
                        let status = if e.conflict { StatusCode::CONFLICT } else { StatusCode::UNPROCESSABLE_ENTITY };
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

async fn fail(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<i64>, body: Bytes) -> Response {
    let reason: String = String::from_utf8_lossy(&body).lines().next().unwrap_or("").chars().take(500).collect();
    body_or(
        async {
            let who = auth(&app, &headers).await?;
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
                if let Ok(mut cache) = app.manifest_ids.lock() {
                    cache.remove(&id);
                }
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
    body: Bytes,
) -> Response {
    let kv = kv_body(&body);
    body_or(
        async {
            let who = auth(&app, &headers).await?;
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
                let m = app.vault.manifest(id).map_err(|e| text(StatusCode::NOT_FOUND, e.to_string()))?;
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
                    if !in_manifest(app, b, &cid)? {
                        return Err(text(StatusCode::FORBIDDEN, format!("chunk {hex} is not part of backup {b}")));
                    }
                }
                let blob = app.vault.chunk(&cid).map_err(|e| text(StatusCode::NOT_FOUND, e.to_string()))?;
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

/// Spools the upload to a temporary file, then imports it (verified as it
/// is read).
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
    let tmp = app.vault.dir().join("tmp").join(format!("import-{}-{}.bvimg", std::process::id(), vault::now()));
    let mut file = match tokio::fs::File::create(&tmp).await {
        Ok(f) => f,
        Err(e) => return internal(e),
    };
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let r = match chunk {
            Ok(b) => tokio::io::AsyncWriteExt::write_all(&mut file, &b).await.map_err(internal),
            Err(e) => Err(text(StatusCode::BAD_REQUEST, e.to_string())),
        };
        if let Err(resp) = r {
            let _ = tokio::fs::remove_file(&tmp).await;
            return resp;
        }
    }
    drop(file);
    body_or(
        blocking(&app, move |app| {
            let r = std::fs::File::open(&tmp)
                .map_err(anyhow::Error::from)
                .and_then(|f| app.vault.import(std::io::BufReader::new(f), pc.as_deref()));
            let _ = std::fs::remove_file(&tmp);
            let id = r.map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))?;
            app.event(&format!("backup-imported id={id}"));
            Ok(text(StatusCode::CREATED, format!("id={id}")))
        })
        .await,
    )
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

async fn add_job(State(app): State<Shared>, headers: HeaderMap, Json(j): Json<NewJob>) -> Response {
    body_or(
        async {
            admin_only(&auth(&app, &headers).await?)?;
            let lock = lock_of(j.lock.as_deref())?;
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
                    .add_job_with(
                        &j.pc,
                        &j.action,
                        j.disk.as_deref().unwrap_or("auto"),
                        j.name.as_deref().unwrap_or(""),
                        j.backup,
                        lock.as_ref(),
                        proven.is_some(),
                    )
                    .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
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
                    app.event(&format!("job-start id={} pc={pc} action={}", j.id, j.action));
                    let mut body = format!("job={}\naction={}\ndisk={}\nname={}\n", j.id, j.action, j.disk, j.name);
                    if let Some(b) = j.backup {
                        body.push_str(&format!("backup={b}\n"));
                    }
                    if let Some(lock) = &j.lock {
                        body.push_str(&format!("lock={lock}\n"));
                    }
                    if let (true, Some(b)) = (j.unlocked, j.backup) {
                        let ticket = app.vault.issue_ticket(&pc, b, vault::now()).map_err(internal)?;
                        body.push_str(&format!("ticket={ticket}\n"));
                    }
                    Ok(text(StatusCode::OK, body))
                }
            })
            .await
        }
        .await,
    )
}

async fn result(State(app): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    body_or(
        async {
            let pc = pc_only(auth(&app, &headers).await?)?;
            let kv = kv_body(&body);
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
