//! docs/PROTOCOL.md over HTTP, by resource: [`hello`], [`backups`],
//! [`chunks`], [`unlock`], [`jobs`] (jobs and results), [`pcs`] (the
//! admin's PC commands), [`boot`] (network boot, unauthenticated). Handlers parse the request, name the caller
//! and hand a typed request to the [`Vault`]; they hold no state.
//!
//! The skeleton every authenticated handler shares is written once here:
//! the [`Caller`] / [`Admin`] / [`PcCaller`] extractors check the token
//! (after the path and query parsed, before any body is read), and
//! [`run`] runs the vault work on tokio's blocking pool, where an
//! error is already the HTTP answer.
//!
//! Besides the database, `DATA/events.log` gets one line per PC contact
//! and backup event (`unix-time event key=value ...`), which tests and
//! admins read.

pub mod backups;
pub mod boot;
pub mod chunks;
pub mod hello;
pub mod jobs;
pub mod pcs;
pub mod unlock;

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use bootvault_common::image;
use bootvault_common::wire;

use crate::listener;
use crate::refusals;
use crate::vault::{self, BackupRow, Vault};

pub struct App {
    pub vault: Vault,
    events: Mutex<std::fs::File>,
    /// DATA/admin.token, read once at start (it never changes while the
    /// server runs; every request is checked against it).
    admin_token: String,
    /// Refused and unauthenticated requests: what of them is logged.
    refusal_log: Mutex<refusals::RefusalLog>,
    /// New `pending` MACs per peer address (netboot, unauthenticated).
    /// The server speaks HTTPS (the console's cookie is then Secure).
    pub https: bool,
    /// What PCs are running now, for the web console.
    pub progress: crate::web::progress::Hub,
    /// Makes boot media for the console's downloads, if the server has the tools.
    pub media: Option<crate::web::MediaMaker>,
}

pub type Shared = Arc<App>;

impl App {
    pub fn new(vault: Vault, events: std::fs::File, https: bool) -> anyhow::Result<App> {
        let admin_token = vault.admin_token()?;
        Ok(App {
            vault,
            events: Mutex::new(events),
            admin_token,
            refusal_log: Mutex::new(refusals::RefusalLog::default()),
            https,
            progress: crate::web::progress::Hub::default(),
            media: None,
        })
    }

    /// One line to stdout and events.log, synced: backup and job events
    /// must outlive a crash.
    pub fn event(&self, what: &str) {
        self.log_line(what, true);
    }

    /// A refused (or unauthenticated) request from `peer`: the first few
    /// per peer and kind a minute are logged in full (`line` is built only
    /// then), the rest counted into one summary line per minute. Not
    /// synced: a flood must cost neither the disk nor an fsync each.
    pub fn aggregated(&self, peer: IpAddr, kind: refusals::Kind, line: impl FnOnce() -> String) {
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
    pub fn flush_refusals(&self) {
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

/// Runs vault work on the blocking pool; its error is the answer.
pub async fn run<T: Send + 'static>(
    app: &Shared,
    f: impl FnOnce(&App) -> Result<T, Response> + Send + 'static,
) -> Result<T, Response> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app)).await.map_err(internal)?
}

pub fn router(app: Shared) -> Router {
    Router::new()
        .merge(boot::router())
        .route(wire::HELLO, get(hello::hello))
        .route("/api/v1/backups", post(backups::open).get(backups::list))
        .route("/api/v1/backups/latest", get(backups::latest))
        .route("/api/v1/backups/{id}", get(backups::show).delete(backups::delete))
        .route("/api/v1/backups/{id}/missing", post(backups::missing))
        .route("/api/v1/backups/{id}/finish", post(backups::finish))
        .route("/api/v1/backups/{id}/fail", post(backups::fail))
        .route("/api/v1/backups/{id}/manifest", get(backups::manifest))
        .route("/api/v1/backups/{id}/challenge", get(unlock::challenge))
        .route("/api/v1/backups/{id}/unlock", post(unlock::unlock))
        .route("/api/v1/backups/{id}/export", get(backups::export))
        .route("/api/v1/backups/{id}/grants", post(backups::grant))
        .route("/api/v1/backups/{id}/grants/{pc}", axum::routing::delete(backups::revoke))
        .route("/api/v1/backups/{id}/verify", post(backups::verify))
        .route("/api/v1/gc", post(jobs::gc))
        .route("/api/v1/import", post(backups::import))
        .route("/api/v1/chunks/{hex}", put(chunks::put).get(chunks::get))
        .route("/api/v1/jobs", post(jobs::add).get(jobs::list))
        .route("/api/v1/jobs/next", get(jobs::next))
        .route("/api/v1/results", post(jobs::result).get(jobs::list_results))
        .route(wire::PROGRESS, post(jobs::progress))
        .route("/api/v1/pcs", get(pcs::list).post(pcs::add))
        .route("/api/v1/pcs/pending", get(pcs::pending))
        .route("/api/v1/pcs/{name}", get(pcs::show).post(pcs::edit).delete(pcs::remove))
        .route("/api/v1/pcs/{name}/token", post(pcs::new_token))
        // Bodies are read by each handler after the caller is known, with
        // the route's own limit (see `take_body`).
        .layer(DefaultBodyLimit::disable())
        .with_state(app.clone())
        .merge(crate::web::router(app))
}

/// Who sent a request, proven by a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// The admin token (DATA/admin.token).
    Admin,
    /// A registered PC with its own token.
    Pc(String),
}

impl Who {
    /// The PC, or None for the admin.
    pub fn pc(&self) -> Option<&str> {
        match self {
            Who::Pc(p) => Some(p),
            Who::Admin => None,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Who::Admin => "admin",
            Who::Pc(p) => p,
        }
    }
}

/// The authenticated caller, the admin or a registered PC (extractor;
/// refusals are 401 with a reason the PC's console shows as is).
pub struct Caller(pub Who);

/// The admin (extractor): a PC's token is a 403.
pub struct Admin;

/// A registered PC (extractor): the admin's token is a 400 (the request
/// is a PC's: jobs, results).
pub struct PcCaller(pub String);

impl FromRequestParts<Shared> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<Caller, Response> {
        if parts.extensions.get::<listener::Insecure>().is_some() {
            // The token crossed in clear already; taking it would teach
            // clients that this works.
            return Err(text(
                StatusCode::FORBIDDEN,
                "this server takes tokens only over https:// (with its certificate's fingerprint); this request came \
                 over plain http"
                    .to_owned(),
            ));
        }
        let headers = parts.headers.clone();
        run(app, move |app| authenticate(app, &headers)).await.map(Caller)
    }
}

impl FromRequestParts<Shared> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<Admin, Response> {
        match Caller::from_request_parts(parts, app).await?.0 {
            Who::Admin => Ok(Admin),
            Who::Pc(p) => Err(text(StatusCode::FORBIDDEN, format!("PC {p} may not do this: it needs the admin token"))),
        }
    }
}

impl FromRequestParts<Shared> for PcCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<PcCaller, Response> {
        match Caller::from_request_parts(parts, app).await?.0 {
            Who::Pc(p) => Ok(PcCaller(p)),
            Who::Admin => Err(text(StatusCode::BAD_REQUEST, "this request is a PC's: send the PC's token")),
        }
    }
}

/// A header value fit for a one-line log: printable ASCII without spaces.
pub fn header(headers: &HeaderMap, name: &str) -> String {
    let v = headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
    let clean: String = v.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    if clean.is_empty() {
        "-".into()
    } else {
        clean
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
    // written line by line (see `App::aggregated`).
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

fn backup_row(app: &App, id: i64) -> Result<BackupRow, Response> {
    app.vault.backup(id).map_err(internal)?.ok_or_else(|| text(StatusCode::NOT_FOUND, format!("no backup {id}")))
}

/// The backup, if `who` may read it (its owner, a PC granted it, admin).
pub fn readable(app: &App, who: &Who, id: i64) -> Result<BackupRow, Response> {
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
pub fn writable(app: &App, who: &Who, id: i64) -> Result<BackupRow, Response> {
    let row = backup_row(app, id)?;
    if let Who::Pc(p) = who {
        if &row.pc != p {
            app.event(&format!("access-refused pc={p} backup={id} owner={}", row.pc));
            return Err(text(StatusCode::FORBIDDEN, format!("backup {id} is not PC {p}'s")));
        }
    }
    Ok(row)
}

pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut b = body.into();
    if !b.ends_with('\n') {
        b.push('\n');
    }
    (status, b).into_response()
}

/// A failure of the server itself: the detail (paths, SQL) goes to the
/// server's output only; the caller reads that the server failed, or that
/// its storage is full (507).
pub fn internal(e: impl std::fmt::Display) -> Response {
    eprintln!("{} internal-error {e:#}", vault::now());
    text(StatusCode::INTERNAL_SERVER_ERROR, "the server failed to answer (the reason is in its log)")
}

/// 507 for a vault error from a full disk (the detail to the server's
/// output only), or `otherwise` for any other.
pub fn full_or(e: anyhow::Error, otherwise: impl FnOnce(anyhow::Error) -> Response) -> Response {
    if !vault::is_storage_full(&e) {
        return otherwise(e);
    }
    eprintln!("{} storage-full {e:#}", vault::now());
    text(StatusCode::INSUFFICIENT_STORAGE, "the server's storage is full; try again after its admin frees space")
}

/// [`internal`] for vault errors, telling a full disk apart.
pub fn storage(e: anyhow::Error) -> Response {
    full_or(e, internal)
}

/// A vault refusal (a bad value: 422 with its reason), or a full disk (507).
pub fn refused(e: anyhow::Error) -> Response {
    full_or(e, |e| text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

/// Largest bodies per route: small `key=value` requests, a batch of chunk
/// ids, a blob, a manifest (32 bytes and a length per chunk: 64 MiB is a
/// 2 TiB disk at 1 MiB chunks).
pub const SMALL_BODY: usize = 16 << 10;
pub const MISSING_BODY: usize = 1024 * 32;
pub const CHUNK_BODY: usize = image::MAX_CHUNK_SIZE as usize + 64;
pub const MANIFEST_BODY: usize = 64 << 20;

/// Reads a request's body once the caller is authenticated, within the
/// route's `limit` (413, from the declared length before any byte is
/// read); a body that stops sending is a 408 (the connection's idle limit).
pub async fn take_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    listener::read_body(body, limit).await.map_err(IntoResponse::into_response)
}

/// A `key=value` lines body (the init-facing format); a repeated key
/// keeps its last value.
pub fn kv_body(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A query parameter, if given and not empty.
pub fn q<'a>(query: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    query.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

/// A backup's lock from its text form; a bad one is a 422 naming why.
pub fn lock_of(text_form: Option<&str>) -> Result<Option<vault::BackupLock>, Response> {
    text_form
        .map(vault::BackupLock::from_text)
        .transpose()
        .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))
}
