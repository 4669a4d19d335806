//! Restore passwords over HTTP: `GET backups/ID/challenge`, `POST
//! backups/ID/unlock`, and the ticket check every read of a locked
//! backup goes through ([`unlocked_for`]). The state and the rules are
//! [`crate::unlock`]'s, through the vault.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bootvault_common::wire;

use super::{kv_body, q, readable, run, take_body, text, App, Caller, Shared, Who, SMALL_BODY};
use crate::vault::{self, BackupRow, UnlockRefused};

/// The one-line refusal of a locked backup without a ticket; the PC's
/// console shows it as is.
fn locked_reason(id: i64) -> String {
    format!(
        "backup {id} is protected by a password; restore it at the PC's console, or through a server job made with \
         --password-file"
    )
}

/// The unlock ticket a request carries, if any.
pub fn ticket_of(headers: &HeaderMap) -> Option<String> {
    headers.get(wire::UNLOCK_HEADER).and_then(|v| v.to_str().ok()).map(|t| t.trim().to_owned())
}

/// A PC reads a locked backup only with a valid ticket for it; `423
/// Locked` otherwise. The admin needs none.
pub fn unlocked_for(app: &App, who: &Who, row: &BackupRow, ticket: Option<&str>) -> Result<(), Response> {
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

fn unlock_status(kind: UnlockRefused) -> StatusCode {
    match kind {
        UnlockRefused::Wrong => StatusCode::FORBIDDEN,
        UnlockRefused::Wait => StatusCode::TOO_MANY_REQUESTS,
        UnlockRefused::NoChallenge | UnlockRefused::NotLocked => StatusCode::CONFLICT,
        UnlockRefused::NoBackup => StatusCode::NOT_FOUND,
        UnlockRefused::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Parses `nonce=HEX` and `proof=HEX` (64 hex digits each).
pub fn nonce_and_proof(nonce: &str, proof: &str) -> Result<([u8; 32], [u8; 32]), Response> {
    let mut n = [0u8; 32];
    let mut p = [0u8; 32];
    wire::hex_into(nonce, &mut n).map_err(|e| text(StatusCode::BAD_REQUEST, format!("nonce: {e}")))?;
    wire::hex_into(proof, &mut p).map_err(|e| text(StatusCode::BAD_REQUEST, format!("proof: {e}")))?;
    Ok((n, p))
}

/// Checks an unlock proof for `pc`, logging `unlock-ok` or `unlock-refused`.
pub fn check_unlock(
    app: &App,
    pc: &str,
    id: i64,
    nonce: &[u8; 32],
    proof: &[u8; 32],
    by: &str,
) -> Result<(), Response> {
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

/// The PC (or, for the admin, `?pc=`, default the owner) an unlock is for.
fn unlock_pc(who: &Who, row: &BackupRow, query: &HashMap<String, String>) -> String {
    match who {
        Who::Pc(p) => p.clone(),
        Who::Admin => q(query, "pc").unwrap_or(&row.pc).to_owned(),
    }
}

/// `locked=no`, or the lock's parameters, salt and a fresh one-time nonce.
pub async fn challenge(
    State(app): State<Shared>,
    Path(id): Path<i64>,
    Query(query): Query<HashMap<String, String>>,
    Caller(who): Caller,
) -> Result<Response, Response> {
    run(&app, move |app| {
        let row = readable(app, &who, id)?;
        let pc = unlock_pc(&who, &row, &query);
        match app.vault.challenge(&pc, id, vault::now()) {
            Ok(None) => Ok(text(StatusCode::OK, "locked=no")),
            Ok(Some(c)) => Ok(text(
                StatusCode::OK,
                format!(
                    "locked=yes\nkdf={}\nm={}\nt={}\np={}\nsalt={}\nnonce={}\n",
                    c.kdf.as_str(),
                    c.params.m_kib,
                    c.params.t_cost,
                    c.params.p,
                    wire::to_hex(&c.salt),
                    wire::to_hex(&c.nonce)
                ),
            )),
            Err(e) => {
                if e.kind == UnlockRefused::Wait {
                    app.event(&format!("unlock-refused pc={pc} backup={id} by={} reason={:?}", who.name(), e.message));
                }
                Err(text(unlock_status(e.kind), e.message))
            }
        }
    })
    .await
}

/// Body `nonce=HEX\nproof=HEX` → `ticket=HEX\nexpires=UNIX` (the PC
/// sends it as `x-bootvault-unlock`); 403 wrong password, 429 wait.
pub async fn unlock(
    State(app): State<Shared>,
    Path(id): Path<i64>,
    Query(query): Query<HashMap<String, String>>,
    Caller(who): Caller,
    body: Body,
) -> Result<Response, Response> {
    let kv = kv_body(&take_body(body, SMALL_BODY).await?);
    let get = |k: &str| kv.get(k).map(String::as_str).unwrap_or("");
    let (nonce, proof) = nonce_and_proof(get("nonce"), get("proof"))?;
    run(&app, move |app| {
        let row = readable(app, &who, id)?;
        let pc = unlock_pc(&who, &row, &query);
        check_unlock(app, &pc, id, &nonce, &proof, who.name())?;
        let now = vault::now();
        let ticket = app.vault.issue_ticket(&pc, id, now).map_err(super::internal)?;
        Ok(text(StatusCode::OK, format!("ticket={ticket}\nexpires={}", now + vault::TICKET_SECONDS)))
    })
    .await
}
