//! The admin's web console under `/admin/`, on the server's own listener:
//! sign-in with an admin account ([`crate::vault::admins`]), pages for
//! PCs, backups, jobs and their history, and live progress of what PCs
//! are running ([`progress`], followed by the pages over server-sent
//! events).
//!
//! Every page and form goes through [`Console`]: the session cookie
//! (`bv_session`: HttpOnly, SameSite=Strict, Secure over HTTPS) names a
//! session; every POST must carry that session's form token (`csrf`), and
//! a POST whose `Origin` is another site's is refused as well. A PC's
//! token opens nothing here, and the PC API takes no cookie. Every answer
//! carries a strict Content-Security-Policy (scripts and styles from this
//! server's own files only, nothing inline), and is not cached or framed.
//! Over plain http to an HTTPS server the console only points to https.
//!
//! Handlers call the same [`crate::vault::Vault`] operations the CLI does.

pub mod pages;
pub mod progress;

use std::collections::HashMap;
use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use futures_util::stream::{self, Stream, StreamExt};

use crate::api::{internal, run, Shared};
use crate::listener;
use crate::secrets::ct_eq;
use crate::vault;
use crate::vault::admins::{Session, SignInError};

/// The session cookie's name.
pub const COOKIE: &str = "bv_session";

/// Makes boot media from a directory of boot files (`vmlinuz`,
/// `initrd.img`, `cmdline`): `(dir, pc, kind)` with kind `iso` or `usb`,
/// the image's path inside `dir`. `bootvault serve` passes the builder's
/// (Debian's xorriso, syslinux, systemd-boot), so the server crate holds
/// none of it.
pub type MediaMaker =
    std::sync::Arc<dyn Fn(&std::path::Path, &str, &str) -> anyhow::Result<std::path::PathBuf> + Send + Sync>;

/// The largest form the console takes.
const FORM_BODY: usize = 64 << 10;

/// What every console answer carries.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(app: Shared) -> Router {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/") }))
        .route("/admin/", get(pages::dashboard))
        .route("/admin/sign-in", get(pages::sign_in_page).post(sign_in))
        .route("/admin/sign-out", post(sign_out))
        .route("/admin/pcs", get(pages::pcs))
        .route("/admin/pcs/approve", post(approve_pc))
        .route("/admin/pcs/{name}", get(pages::pc).post(edit_pc))
        .route("/admin/pcs/{name}/token", post(rotate_token))
        .route("/admin/pcs/{name}/media/{kind}", get(download_media))
        .route("/admin/backups", get(pages::backups))
        .route("/admin/backups/{id}/delete", post(delete_backup))
        .route("/admin/backups/{id}/verify", post(verify_backup))
        .route("/admin/backups/{id}/grant", post(grant_backup))
        .route("/admin/backups/{id}/revoke", post(revoke_backup))
        .route("/admin/jobs", get(pages::jobs).post(queue_jobs))
        .route("/admin/jobs/{id}/cancel", post(cancel_job))
        .route("/admin/history", get(pages::history))
        .route("/admin/store", get(pages::store))
        .route("/admin/store/gc", post(collect_garbage))
        .route("/admin/events", get(events))
        .route("/admin/static/console.css", get(|| async { asset("text/css", include_str!("console.css")) }))
        .route("/admin/static/console.js", get(|| async { asset("text/javascript", include_str!("console.js")) }))
        .layer(DefaultBodyLimit::max(FORM_BODY))
        .layer(middleware::map_response(security_headers))
        .with_state(app)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// The value of the session cookie, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

fn peer(headers: &HeaderMap) -> String {
    headers
        .get(listener::PEER_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<IpAddr>().ok())
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "-".into())
}

/// A plain-http request to a server that speaks HTTPS.
fn insecure(parts: &Parts) -> bool {
    parts.extensions.get::<listener::Insecure>().is_some()
}

/// A signed-in admin (extractor). Without a session a page answers with
/// the sign-in page's address (303), anything else 401.
pub struct Console(pub Session);

impl FromRequestParts<Shared> for Console {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<Console, Response> {
        if insecure(parts) {
            return Err(plain_http());
        }
        let secret = cookie(&parts.headers);
        let found = match secret {
            Some(s) => run(app, move |app| app.vault.session(&s, vault::now()).map_err(internal)).await?,
            None => None,
        };
        match found {
            Some(s) => Ok(Console(s)),
            None if parts.method == axum::http::Method::GET && !parts.uri.path().starts_with("/admin/events") => {
                Err(Redirect::to("/admin/sign-in").into_response())
            }
            None => Err(refuse(StatusCode::UNAUTHORIZED, "sign in first (/admin/sign-in)")),
        }
    }
}

fn plain_http() -> Response {
    refuse(
        StatusCode::FORBIDDEN,
        "the console is served over https only: open it at https://, with this server's certificate",
    )
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{why}\n")).into_response()
}

/// A POSTed form's fields (`application/x-www-form-urlencoded`), a
/// repeated field's values in order.
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }
}

/// A POST whose browser says it comes from another site is refused (the
/// sign-in form too: another site must not sign a browser in as its own
/// account).
fn same_site(headers: &HeaderMap) -> Result<(), Response> {
    if let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        let origin = origin.to_str().unwrap_or("");
        let host = host.to_str().unwrap_or("");
        if origin.split_once("://").is_none_or(|(_, rest)| rest != host) {
            return Err(refuse(StatusCode::FORBIDDEN, "this form came from another site"));
        }
    }
    Ok(())
}

/// A form POSTed by a signed-in admin from this site: the session's form
/// token and, when the browser says where it comes from, this server's own
/// origin.
fn checked(session: &Session, headers: &HeaderMap, body: &Bytes) -> Result<Form, Response> {
    same_site(headers)?;
    let form = Form::parse(body);
    match form.get("csrf") {
        Some(t) if ct_eq(t.as_bytes(), session.csrf.as_bytes()) => Ok(form),
        _ => {
            Err(refuse(StatusCode::FORBIDDEN, "this form's token is not this session's: reload the page and try again"))
        }
    }
}

/// Where a form's handler sends the browser next, with a one-line note
/// the page shows (`?note=`), or an error (`?error=`).
fn back(to: &str, note: Result<String, String>) -> Response {
    let (key, text) = match &note {
        Ok(t) => ("note", t),
        Err(t) => ("error", t),
    };
    let q: String = form_urlencoded::Serializer::new(String::new()).append_pair(key, text).finish();
    Redirect::to(&format!("{to}?{q}")).into_response()
}

async fn sign_in(State(app): State<Shared>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    if insecure(&parts) {
        return plain_http();
    }
    let Ok(body) = axum::body::to_bytes(body, FORM_BODY).await else {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "that form is too large");
    };
    let headers = parts.headers;
    if let Err(r) = same_site(&headers) {
        return r;
    }
    let form = Form::parse(&body);
    let name = form.get("name").unwrap_or("").to_owned();
    let password = form.get("password").unwrap_or("").to_owned();
    let from = peer(&headers);
    let https = app.https;
    let answer = run(&app, move |app| app.vault.sign_in(&name, &password, &from, vault::now()).map_err(internal)).await;
    match answer {
        Ok(Ok((secret, s))) => {
            app.event(&format!("admin-signed-in admin={} peer={}", s.admin, peer(&headers)));
            let secure = if https { "; Secure" } else { "" };
            let set = format!("{COOKIE}={secret}; Path=/admin; HttpOnly; SameSite=Strict{secure}");
            let mut r = Redirect::to("/admin/").into_response();
            if let Ok(v) = HeaderValue::from_str(&set) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Ok(Err(SignInError::Wrong)) => {
            app.event(&format!("admin-sign-in-refused peer={} reason=wrong", peer(&headers)));
            pages::sign_in_answer(StatusCode::UNAUTHORIZED, "wrong name or password")
        }
        Ok(Err(SignInError::Limited { retry_after })) => {
            app.event(&format!("admin-sign-in-refused peer={} reason=limited", peer(&headers)));
            let mut r = pages::sign_in_answer(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("too many failed sign-ins: try again in {} minutes", (retry_after + 59) / 60),
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            r
        }
        Err(r) => r,
    }
}

async fn sign_out(State(app): State<Shared>, Console(s): Console, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = checked(&s, &headers, &body) {
        return r;
    }
    if let Some(secret) = cookie(&headers) {
        let _ = run(&app, move |app| app.vault.sign_out(&secret).map_err(internal)).await;
    }
    let mut r = Redirect::to("/admin/sign-in").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("bv_session=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// What a form's work answers: a note for the page (done), or why not.
type Note = Result<String, String>;

/// A form POSTed by a signed-in admin from this site (extractor): the
/// session found ([`Console`]), the body read within [`FORM_BODY`], and
/// the form checked as this session's own ([`checked`]).
pub struct Posted {
    form: Form,
    admin: String,
}

impl axum::extract::FromRequest<Shared> for Posted {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, app: &Shared) -> Result<Posted, Response> {
        let (mut parts, body) = req.into_parts();
        let Console(s) = Console::from_request_parts(&mut parts, app).await?;
        let body = axum::body::to_bytes(body, FORM_BODY)
            .await
            .map_err(|_| refuse(StatusCode::PAYLOAD_TOO_LARGE, "that form is too large"))?;
        let form = checked(&s, &parts.headers, &body)?;
        Ok(Posted { form, admin: s.admin })
    }
}

impl Posted {
    /// Runs `work` on the blocking pool with the form and the admin's
    /// name, and sends the browser back to `to` with its note. An
    /// `Err(Response)` from `work` is the answer itself (the server failed).
    async fn act(
        self,
        app: &Shared,
        to: String,
        work: impl FnOnce(&crate::api::App, Form, String) -> Result<Note, Response> + Send + 'static,
    ) -> Response {
        let Posted { form, admin } = self;
        match run(app, move |app| work(app, form, admin)).await {
            Ok(note) => back(&to, note),
            Err(r) => r,
        }
    }
}

/// Registers a pending MAC as a PC named in the form.
async fn approve_pc(State(app): State<Shared>, posted: Posted) -> Response {
    posted
        .act(&app, "/admin/pcs".into(), |app, form, admin| {
            let (Some(mac), Some(name)) = (form.get("mac"), form.get("name")) else {
                return Ok(Err("approving needs the MAC and a name".into()));
            };
            let changes = vault::PcChanges { mac: Some(mac.to_owned()), ..vault::PcChanges::default() };
            Ok(match app.vault.add_pc_with(name, &changes) {
                Ok(pc) => {
                    app.event(&format!("pc-approved pc={} mac={} admin={admin}", pc.name, pc.mac));
                    Ok(format!("PC {} registered with MAC {}{}", pc.name, pc.mac, republish(app, &pc.name)))
                }
                Err(e) => Err(format!("{e:#}")),
            })
        })
        .await
}

/// The PC's network-boot files made again from the site's template (its
/// settings or token changed), as a note's ending.
fn republish(app: &crate::api::App, pc: &str) -> String {
    match app.vault.pc(pc) {
        Ok(Some(row)) if row.mode != "network" => {
            "; it boots from its own media (mode local): build them again with `bootvault build`".to_owned()
        }
        _ => match app.vault.publish_from_site(pc) {
            Ok(true) => "; its network-boot files are ready: power it on again".to_owned(),
            Ok(false) => format!(
                "; no network-boot template yet (one `bootvault build ... --media pxe --data DIR` makes it): build \
                 {pc}'s boot media by hand"
            ),
            Err(e) => format!("; its network-boot files could not be made: {e:#}"),
        },
    }
}

/// A PC's settings from its page's form; its network-boot files follow.
async fn edit_pc(State(app): State<Shared>, Path(name): Path<String>, posted: Posted) -> Response {
    posted
        .act(&app, format!("/admin/pcs/{name}"), move |app, form, admin| {
            let field = |k: &str| form.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.trim().to_owned());
            let changes = vault::PcChanges {
                mac: field("mac"),
                ip: field("ip"),
                gateway: field("gateway"),
                dns: field("dns"),
                mode: field("mode"),
                disk: field("disk"),
                default_action: field("default_action"),
                quota: field("quota"),
            };
            Ok(match app.vault.edit_pc_with(&name, &changes) {
                Ok(pc) => {
                    app.event(&format!("pc-edited pc={} admin={admin}", pc.name));
                    Ok(format!("PC {} saved{}", pc.name, republish(app, &pc.name)))
                }
                Err(e) => Err(format!("{e:#}")),
            })
        })
        .await
}

/// A new token: the PC's old boot media stop working at once.
async fn rotate_token(State(app): State<Shared>, Path(name): Path<String>, posted: Posted) -> Response {
    posted
        .act(&app, format!("/admin/pcs/{name}"), move |app, _, admin| {
            Ok(match app.vault.rotate_token(&name) {
                Ok(pc) => {
                    app.event(&format!("pc-token-rotated pc={} admin={admin}", pc.name));
                    Ok(format!(
                        "PC {}: new token; boot media made before no longer work{}",
                        pc.name,
                        republish(app, &pc.name)
                    ))
                }
                Err(e) => Err(format!("{e:#}")),
            })
        })
        .await
}

/// Lets another PC (or every PC, `*`) restore a backup.
async fn grant_backup(State(app): State<Shared>, Path(id): Path<i64>, posted: Posted) -> Response {
    posted
        .act(&app, "/admin/backups".into(), move |app, form, admin| {
            let Some(pc) = form.get("pc") else { return Ok(Err("granting needs a PC".into())) };
            Ok(match app.vault.grant(id, pc) {
                Ok(()) => {
                    app.event(&format!("backup-granted backup={id} pc={pc} admin={admin}"));
                    let who = if pc == "*" { "every PC".to_owned() } else { format!("PC {pc}") };
                    Ok(format!("backup {id}: {who} may restore it"))
                }
                Err(e) => Err(format!("{e:#}")),
            })
        })
        .await
}

async fn revoke_backup(State(app): State<Shared>, Path(id): Path<i64>, posted: Posted) -> Response {
    posted
        .act(&app, "/admin/backups".into(), move |app, form, admin| {
            let pc = form.get("pc").unwrap_or("");
            if !app.vault.revoke(id, pc).map_err(internal)? {
                return Ok(Err(format!("backup {id} had no grant for {pc}")));
            }
            app.event(&format!("backup-revoked backup={id} pc={pc} admin={admin}"));
            Ok(Ok(format!("backup {id}: {pc} may no longer restore it")))
        })
        .await
}

/// `bootvault gc` from the console: the same vault operation, uploads
/// idle for an hour counted as abandoned.
async fn collect_garbage(State(app): State<Shared>, posted: Posted) -> Response {
    posted.act(&app, "/admin/store".into(), |app, _, admin| {
        Ok(match app.vault.gc(3600) {
            Ok(r) => {
                app.event(&format!(
                    "gc admin={admin} removed={} freed={} kept={} recent={} stale={}",
                    r.chunks_removed, r.bytes_freed, r.chunks_kept, r.recent_kept, r.stale_uploads
                ));
                Ok(format!(
                    "garbage collected: {} chunks removed ({}), {} kept for complete backups, {} kept for running ones, {} \
                     abandoned uploads failed",
                    r.chunks_removed,
                    bootvault_common::units::human_bytes(r.bytes_freed),
                    r.chunks_kept,
                    r.recent_kept,
                    r.stale_uploads
                ))
            }
            Err(e) => Err(format!("gc: {e:#}")),
        })
    })
    .await
}

async fn delete_backup(State(app): State<Shared>, Path(id): Path<i64>, posted: Posted) -> Response {
    posted
        .act(&app, "/admin/backups".into(), move |app, _, admin| {
            Ok(match app.vault.delete_backup(id) {
                Ok(()) => {
                    app.event(&format!("backup-deleted backup={id} admin={admin}"));
                    Ok(format!("backup {id} deleted"))
                }
                Err(e) => Err(format!("{e:#}")),
            })
        })
        .await
}

async fn verify_backup(State(app): State<Shared>, Path(id): Path<i64>, posted: Posted) -> Response {
    posted
        .act(&app, "/admin/backups".into(), move |app, _, _| {
            Ok(app
                .vault
                .verify_backup(id)
                .map(|n| format!("backup {id}: all {n} chunks read back and match their ids"))
                .map_err(|e| format!("backup {id}: {e:#}")))
        })
        .await
}

/// One job per PC ticked: a backup, or a restore of one backup onto each
/// (the one-image-to-many-PCs deployment).
async fn queue_jobs(State(app): State<Shared>, posted: Posted) -> Response {
    posted
        .act(&app, "/admin/jobs".into(), |app, form, admin| {
            let pcs = form.all("pc");
            let action = form.get("action").unwrap_or("");
            let (disk, name) = (form.get("disk").unwrap_or("auto"), form.get("name").unwrap_or(""));
            let Ok(backup) = form.get("backup").map(str::parse::<i64>).transpose() else {
                return Ok(Err("backup: not a backup id".into()));
            };
            if pcs.is_empty() {
                return Ok(Err("tick at least one PC".into()));
            }
            if action == "restore" && backup.is_none() {
                return Ok(Err("a restore needs the backup to restore".into()));
            }
            let mut ids = Vec::new();
            for pc in &pcs {
                match app.vault.add_job(pc, action, disk, name, backup) {
                    Ok(id) => {
                        app.event(&format!("job-added job={id} pc={pc} action={action} admin={admin}"));
                        ids.push(id.to_string());
                    }
                    Err(e) => return Ok(Err(format!("{pc}: {e:#} ({} queued before it)", ids.len()))),
                }
            }
            Ok(Ok(format!("{} queued: jobs {}", ids.len(), ids.join(", "))))
        })
        .await
}

async fn cancel_job(State(app): State<Shared>, Path(id): Path<i64>, posted: Posted) -> Response {
    posted
        .act(&app, "/admin/jobs".into(), move |app, _, admin| {
            if !app.vault.cancel_job(id, &format!("cancelled by {admin}")).map_err(internal)? {
                return Ok(Err(format!("job {id} is not waiting: a PC took it, or it ended")));
            }
            app.event(&format!("job-cancelled job={id} admin={admin}"));
            Ok(Ok(format!("job {id} cancelled")))
        })
        .await
}

/// A PC's ISO or USB image, made now from the site's network-boot
/// template with the PC's own settings: what it boots is what network
/// boot gives it, so it holds no data key either (the page says so).
async fn download_media(
    State(app): State<Shared>,
    Console(s): Console,
    Path((name, kind)): Path<(String, String)>,
) -> Response {
    if !matches!(kind.as_str(), "iso" | "usb") {
        return refuse(StatusCode::NOT_FOUND, "media are iso or usb");
    }
    let admin = s.admin.clone();
    let made = run(&app, move |app| {
        let Some(maker) = &app.media else {
            return Err(refuse(
                StatusCode::NOT_IMPLEMENTED,
                "this server makes no boot media (it runs without the builder)",
            ));
        };
        let row = app
            .vault
            .pc(&name)
            .map_err(internal)?
            .ok_or_else(|| refuse(StatusCode::NOT_FOUND, &format!("no registered PC {name}")))?;
        let template = app.vault.boot_files().site().ok_or_else(|| {
            refuse(
                StatusCode::CONFLICT,
                "no network-boot template yet: one `bootvault build ... --media pxe --data DIR` makes it",
            )
        })?;
        let files = crate::netboot::overlay_initrd(&template, &row)
            .map_err(|e| refuse(StatusCode::CONFLICT, &format!("{e:#}")))?;
        let dir = app
            .vault
            .dir()
            .join("tmp")
            .join(format!("media-{name}-{}", crate::secrets::new_token().map_err(internal)?));
        let result = (|| -> anyhow::Result<(std::fs::File, u64)> {
            std::fs::create_dir_all(&dir)?;
            for (f, bytes) in &files {
                std::fs::write(dir.join(f), bytes)?;
            }
            let path = maker(&dir, &name, &kind)?;
            // Open, then remove: the open file is all the answer needs.
            let file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            Ok((file, len))
        })();
        let _ = std::fs::remove_dir_all(&dir);
        let (file, len) = result.map_err(internal)?;
        app.event(&format!("media-made pc={name} kind={kind} bytes={len} admin={admin}"));
        Ok((file, len, format!("{name}.{}", if kind == "iso" { "iso" } else { "img" })))
    })
    .await;
    let (file, len, filename) = match made {
        Ok(m) => m,
        Err(r) => return r,
    };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)));
    let disposition = format!("attachment; filename=\"{filename}\"");
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// Server-sent events: every running PC's last report at once, then each
/// new report as it comes (`event: progress`, JSON), with a comment every
/// 15 s to keep proxies from closing the stream.
async fn events(
    State(app): State<Shared>,
    _: Console,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let now = app.progress.current(vault::now());
    let rx = app.progress.subscribe();
    let first = stream::iter(now);
    let live = stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(p) => return Some((p, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let events = first.chain(live).map(|p| Ok(Event::default().event("progress").json_data(&p).unwrap_or_default()));
    Sse::new(events).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
}

/// Query parameters of a page: `note`/`error` from a form's answer.
pub fn notes(query: &HashMap<String, String>) -> (Option<String>, Option<String>) {
    (query.get("note").cloned(), query.get("error").cloned())
}
