//! `/api/v1/backups...` and `/api/v1/import`: opening, feeding, finishing
//! and failing an upload; listing, showing and deleting backups; the
//! manifest; the single-file form out (`export`) and in (`import`).

use std::collections::HashMap;
use std::io::Write;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bootvault_common::image::{self, ChunkId};
use bootvault_common::units::human_bytes;

use super::unlock::{ticket_of, unlocked_for};
use super::{
    full_or, internal, lock_of, q, readable, refused, run, storage, take_body, text, writable, Admin, Caller, Shared,
    Who, MANIFEST_BODY, MISSING_BODY, SMALL_BODY,
};
use crate::vault::{self, BackupRow};

pub async fn open(
    State(app): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    Caller(who): Caller,
    body: Body,
) -> Result<Response, Response> {
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
    run(&app, move |app| {
        if let Err(m) = app.vault.check_quota(&pc, 1) {
            app.event(&format!("quota-refused pc={pc} backup=new"));
            return Err(text(StatusCode::INSUFFICIENT_STORAGE, m));
        }
        let id = app.vault.create_backup_locked(&pc, &name, disk_bytes, chunk_size, lock.as_ref()).map_err(refused)?;
        app.event(&format!(
            "backup-open id={id} pc={pc} name={name:?} disk_bytes={disk_bytes}{}",
            if lock.is_some() { " locked=yes" } else { "" }
        ));
        Ok(text(StatusCode::CREATED, format!("id={id}")))
    })
    .await
}

pub async fn missing(
    State(app): State<Shared>,
    Path(id): Path<i64>,
    Caller(who): Caller,
    body: Body,
) -> Result<Response, Response> {
    let body = take_body(body, MISSING_BODY).await?;
    if !body.len().is_multiple_of(32) {
        return Err(text(StatusCode::BAD_REQUEST, "expected up to 1024 chunk ids of 32 bytes"));
    }
    run(&app, move |app| {
        writable(app, &who, id)?;
        let ids: Vec<ChunkId> = body.chunks_exact(32).filter_map(|c| c.try_into().ok()).collect();
        let lens = app.vault.missing(id, who.pc(), &ids).map_err(storage)?;
        let out: Vec<u8> = lens.iter().flat_map(|l| l.to_le_bytes()).collect();
        Ok((StatusCode::OK, out).into_response())
    })
    .await
}

pub async fn finish(
    State(app): State<Shared>,
    Path(id): Path<i64>,
    Caller(who): Caller,
    body: Body,
) -> Result<Response, Response> {
    let body = take_body(body, MANIFEST_BODY).await?;
    run(&app, move |app| {
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

pub async fn fail(
    State(app): State<Shared>,
    Path(id): Path<i64>,
    Caller(who): Caller,
    body: Body,
) -> Result<Response, Response> {
    let body = take_body(body, SMALL_BODY).await?;
    let reason: String = String::from_utf8_lossy(&body).lines().next().unwrap_or("").chars().take(500).collect();
    run(&app, move |app| {
        writable(app, &who, id)?;
        app.vault.fail_backup(id, &reason).map_err(|e| text(StatusCode::CONFLICT, e.to_string()))?;
        app.event(&format!("backup-failed id={id} reason={reason:?}"));
        Ok(text(StatusCode::OK, "state=failed"))
    })
    .await
}

/// `?pc=NAME` (default: the asking PC): its newest complete backup, or, for
/// another PC's backups, the newest one granted to the asking PC.
pub async fn latest(
    State(app): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    Caller(who): Caller,
) -> Result<Response, Response> {
    let name = q(&query, "name").map(str::to_owned);
    let of = match (&who, q(&query, "pc")) {
        (_, Some(p)) => p.to_owned(),
        (Who::Pc(p), None) => p.clone(),
        (Who::Admin, None) => return Err(text(StatusCode::BAD_REQUEST, "pc missing")),
    };
    run(&app, move |app| {
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
            None => {
                Err(text(StatusCode::NOT_FOUND, format!("no complete backup of {of} that {} may restore", who.name())))
            }
        }
    })
    .await
}

/// `?format=lines`: one line per backup, newest first, tab-separated
/// `key=value` fields the init parses without JSON.
fn backup_lines(rows: &[BackupRow]) -> String {
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
pub async fn list(
    State(app): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    Caller(who): Caller,
) -> Result<Response, Response> {
    let pc = q(&query, "pc").map(str::to_owned);
    let all = q(&query, "all").is_some_and(|v| v == "1" || v == "yes");
    let lines = q(&query, "format") == Some("lines");
    run(&app, move |app| {
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

pub async fn show(State(app): State<Shared>, Path(id): Path<i64>, Caller(who): Caller) -> Result<Response, Response> {
    run(&app, move |app| Ok(Json(readable(app, &who, id)?).into_response())).await
}

pub async fn delete(State(app): State<Shared>, Path(id): Path<i64>, _: Admin) -> Result<Response, Response> {
    run(&app, move |app| {
        app.vault.delete_backup(id).map_err(|e| text(StatusCode::NOT_FOUND, e.to_string()))?;
        app.event(&format!("backup-deleted id={id}"));
        Ok(text(StatusCode::OK, "deleted"))
    })
    .await
}

pub async fn manifest(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Caller(who): Caller,
) -> Result<Response, Response> {
    let ticket = ticket_of(&headers);
    run(&app, move |app| {
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

/// Streams the single-file form: a blocking writer feeds a pipe.
pub async fn export(State(app): State<Shared>, Path(id): Path<i64>, _: Admin) -> Response {
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
pub async fn import(
    State(app): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    _: Admin,
    body: Body,
) -> Response {
    use futures_util::StreamExt;
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
#[serde(deny_unknown_fields)]
pub struct GrantTo {
    /// Registered PCs, or `*` for every PC.
    pcs: Vec<String>,
}

/// Lets PCs restore a backup (`bootvault backups grant --server`); the
/// grants after it.
pub async fn grant(State(app): State<Shared>, Path(id): Path<i64>, _: Admin, body: Body) -> Result<Response, Response> {
    let to: GrantTo = serde_json::from_slice(&take_body(body, SMALL_BODY).await?)
        .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, format!("the grant: {e}")))?;
    run(&app, move |app| {
        for pc in &to.pcs {
            app.vault.grant(id, pc).map_err(super::refused)?;
            app.event(&format!("backup-granted backup={id} pc={pc} by=api"));
        }
        Ok(Json(serde_json::json!({ "grants": app.vault.grants(id).map_err(internal)? })).into_response())
    })
    .await
}

/// Takes a grant back; the grants after it.
pub async fn revoke(
    State(app): State<Shared>,
    Path((id, pc)): Path<(i64, String)>,
    _: Admin,
) -> Result<Response, Response> {
    run(&app, move |app| {
        if !app.vault.revoke(id, &pc).map_err(internal)? {
            return Err(text(StatusCode::NOT_FOUND, format!("backup {id} was not granted to {pc}")));
        }
        app.event(&format!("backup-revoked backup={id} pc={pc} by=api"));
        Ok(Json(serde_json::json!({ "grants": app.vault.grants(id).map_err(internal)? })).into_response())
    })
    .await
}

/// Reads every stored chunk of a backup back and checks it against its id.
pub async fn verify(State(app): State<Shared>, Path(id): Path<i64>, _: Admin) -> Result<Response, Response> {
    run(&app, move |app| {
        let n = app
            .vault
            .verify_backup(id)
            .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, format!("backup {id} is damaged: {e:#}")))?;
        Ok(Json(serde_json::json!({ "id": id, "ok": true, "chunks_checked": n })).into_response())
    })
    .await
}
