//! `/api/v1/pcs...`: the admin's PC commands over HTTP (`bootvault pc
//! --server URL`), the same vault operations as on the data directory
//! and in the web console. Admin token only; a PC's token is refused.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{internal, q, refused, run, take_body, text, Admin, Shared, SMALL_BODY};
use crate::vault::{self, PcChanges};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPc {
    name: String,
    #[serde(default)]
    changes: PcChanges,
}

async fn json_body<T: serde::de::DeserializeOwned>(body: Body, what: &str) -> Result<T, Response> {
    serde_json::from_slice(&take_body(body, SMALL_BODY).await?)
        .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, format!("{what}: {e}")))
}

/// Registered PCs, by name (no tokens).
pub async fn list(State(app): State<Shared>, _: Admin) -> Result<Response, Response> {
    run(&app, |app| {
        let mut rows = app.vault.list_pcs().map_err(internal)?;
        rows.iter_mut().for_each(|p| p.token.clear());
        Ok(Json(rows).into_response())
    })
    .await
}

/// Registers a PC; the answer holds its token, once.
pub async fn add(State(app): State<Shared>, _: Admin, body: Body) -> Result<Response, Response> {
    let new: NewPc = json_body(body, "the PC").await?;
    run(&app, move |app| {
        let pc = app.vault.add_pc_with(&new.name, &new.changes).map_err(refused)?;
        app.event(&format!("pc-added pc={} mac={} by=api", pc.name, pc.mac));
        let view = app.vault.pc_view(pc, true).map_err(internal)?;
        Ok((StatusCode::CREATED, Json(view)).into_response())
    })
    .await
}

/// One PC (`?token=1` adds its token).
pub async fn show(
    State(app): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    _: Admin,
) -> Result<Response, Response> {
    let token = q(&query, "token").is_some_and(|v| v == "1" || v == "yes");
    run(&app, move |app| {
        let pc = app
            .vault
            .pc(&name)
            .map_err(internal)?
            .ok_or_else(|| text(StatusCode::NOT_FOUND, format!("no registered PC {name}")))?;
        Ok(Json(app.vault.pc_view(pc, token).map_err(internal)?).into_response())
    })
    .await
}

/// Changes a PC's settings (checked as the init checks them).
pub async fn edit(
    State(app): State<Shared>,
    Path(name): Path<String>,
    _: Admin,
    body: Body,
) -> Result<Response, Response> {
    let changes: PcChanges = json_body(body, "the changes").await?;
    run(&app, move |app| {
        let pc = app.vault.edit_pc_with(&name, &changes).map_err(refused)?;
        app.event(&format!("pc-edited pc={} by=api", pc.name));
        Ok(Json(app.vault.pc_view(pc, false).map_err(internal)?).into_response())
    })
    .await
}

/// Unregisters a PC (`?with_backups=1` removes its backups too).
pub async fn remove(
    State(app): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    _: Admin,
) -> Result<Response, Response> {
    let with_backups = q(&query, "with_backups").is_some_and(|v| v == "1" || v == "yes");
    run(&app, move |app| {
        let n = app.vault.remove_pc(&name, with_backups).map_err(refused)?;
        app.event(&format!("pc-removed pc={name} backups={n} by=api"));
        Ok(Json(serde_json::json!({ "backups_removed": n })).into_response())
    })
    .await
}

/// Unknown MACs that network-booted, oldest first.
pub async fn pending(State(app): State<Shared>, _: Admin) -> Result<Response, Response> {
    run(&app, |app| Ok(Json(app.vault.list_pending(vault::now()).map_err(internal)?).into_response())).await
}

/// A new token for a PC; the answer holds it, once. Its boot media made
/// before stop working.
pub async fn new_token(State(app): State<Shared>, Path(name): Path<String>, _: Admin) -> Result<Response, Response> {
    run(&app, move |app| {
        let pc = app.vault.rotate_token(&name).map_err(refused)?;
        app.event(&format!("pc-token-rotated pc={} by=api", pc.name));
        Ok(Json(app.vault.pc_view(pc, true).map_err(internal)?).into_response())
    })
    .await
}
