//! `/api/v1/jobs...` and `/api/v1/results`: the admin queues and lists
//! jobs; a PC takes its next job and reports results.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::unlock::{check_unlock, nonce_and_proof};
use super::{internal, kv_body, lock_of, q, refused, run, take_body, text, Admin, PcCaller, Shared, SMALL_BODY};
use crate::vault;

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
    /// The password's wrap key sealed with the site's data key (hex),
    /// for the PC; the server cannot open it.
    #[serde(default)]
    wrap: Option<String>,
}

pub async fn add(State(app): State<Shared>, _: Admin, body: Body) -> Result<Response, Response> {
    let j: NewJob = serde_json::from_slice(&take_body(body, SMALL_BODY).await?)
        .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, format!("the job: {e}")))?;
    let lock = lock_of(j.lock.as_deref())?;
    let (disk, name) = (j.disk.as_deref().unwrap_or("auto"), j.name.as_deref().unwrap_or(""));
    // By the PC's own rules, before a proof uses up the admin's nonce
    // (the vault checks them again, for the CLI).
    bootvault_common::job::check_fields(disk, name, j.backup).map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let (disk, name) = (disk.to_owned(), name.to_owned());
    let proven = match (&j.nonce, &j.proof) {
        (Some(n), Some(p)) => Some(nonce_and_proof(n, p)?),
        (None, None) => None,
        _ => return Err(text(StatusCode::BAD_REQUEST, "nonce and proof go together")),
    };
    run(&app, move |app| {
        if let Some((nonce, proof)) = &proven {
            let b = j.backup.ok_or_else(|| text(StatusCode::BAD_REQUEST, "a proof needs the backup id"))?;
            check_unlock(app, &j.pc, b, nonce, proof, "admin")?;
        }
        let id = app
            .vault
            .add_job_with(&j.pc, &j.action, &disk, &name, j.backup, lock.as_ref(), proven.is_some(), j.wrap.as_deref())
            .map_err(refused)?;
        Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
    })
    .await
}

pub async fn list(
    State(app): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    _: Admin,
) -> Result<Response, Response> {
    let pc = q(&query, "pc").map(str::to_owned);
    run(&app, move |app| Ok(Json(app.vault.list_jobs(pc.as_deref()).map_err(internal)?).into_response())).await
}

pub async fn next(State(app): State<Shared>, PcCaller(pc): PcCaller) -> Result<Response, Response> {
    run(&app, move |app| match app.vault.next_job(&pc).map_err(internal)? {
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
                    wrap: j.wrap.clone(),
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

pub async fn result(State(app): State<Shared>, PcCaller(pc): PcCaller, body: Body) -> Result<Response, Response> {
    let kv = kv_body(&take_body(body, SMALL_BODY).await?);
    let get = |k: &str| kv.get(k).map(String::as_str).unwrap_or("");
    let num = |k: &str| get(k).parse::<u64>().unwrap_or(0);
    let (job, backup) = (get("job").parse().ok(), get("backup").parse().ok());
    let (action, disk, message) = (get("action").to_owned(), get("disk").to_owned(), get("message").to_owned());
    let ok = get("ok") == "yes";
    let (bytes, sent, seconds) = (num("bytes"), num("sent"), get("seconds").parse().unwrap_or(0.0));
    run(&app, move |app| {
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

/// A PC's progress report: kept in memory for the console's live view
/// (the result, at the end, goes to the database as before).
pub async fn progress(State(app): State<Shared>, PcCaller(pc): PcCaller, body: Body) -> Result<Response, Response> {
    let kv = kv_body(&take_body(body, SMALL_BODY).await?);
    let p = crate::web::progress::Progress::from_report(&pc, &kv, vault::now())
        .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    // The log gets each PC's steps, not every report.
    let line = format!(
        "progress pc={} action={} job={} step={} done={} total={}",
        p.pc,
        p.action,
        p.job.map(|j| j.to_string()).unwrap_or_else(|| "-".into()),
        p.step,
        p.done,
        p.total
    );
    if app.progress.report(p) {
        app.event(&line);
    }
    Ok(text(StatusCode::OK, "noted"))
}

pub async fn list_results(
    State(app): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    _: Admin,
) -> Result<Response, Response> {
    let pc = q(&query, "pc").map(str::to_owned);
    run(&app, move |app| Ok(Json(app.vault.list_results(pc.as_deref()).map_err(internal)?).into_response())).await
}

/// `bootvault gc --server`: the same gc (`?max_age=SECONDS`, default an
/// hour); its report.
pub async fn gc(
    State(app): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    _: Admin,
) -> Result<Response, Response> {
    let max_age = match q(&query, "max_age").map(str::parse::<i64>) {
        None => 3600,
        Some(Ok(n)) if n >= 0 => n,
        Some(_) => return Err(text(StatusCode::BAD_REQUEST, "max_age: seconds, not negative")),
    };
    run(&app, move |app| {
        let r = app.vault.gc(max_age).map_err(internal)?;
        app.event(&format!("gc removed={} freed={} kept={} by=api", r.chunks_removed, r.bytes_freed, r.chunks_kept));
        Ok(Json(r).into_response())
    })
    .await
}
