//! `PUT|GET /api/v1/chunks/HEX`: a backup's chunks going in (verified by
//! the vault) and coming out (a PC gets only chunks of a backup it may
//! read, unlocked).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bootvault_common::image::{self, ChunkId};

use super::unlock::{ticket_of, unlocked_for};
use super::{q, readable, run, storage, take_body, text, writable, Caller, Shared, Who, CHUNK_BODY};
use crate::vault::PutError;

/// The chunk id in the path (extractor): a bad one is a 400 before the
/// caller is even checked.
pub struct ChunkPath {
    hex: String,
    id: ChunkId,
}

impl FromRequestParts<Shared> for ChunkPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<ChunkPath, Response> {
        let Path(hex) = Path::<String>::from_request_parts(parts, app).await.map_err(IntoResponse::into_response)?;
        match image::parse_hex(&hex) {
            Some(id) => Ok(ChunkPath { hex, id }),
            None => Err(text(StatusCode::BAD_REQUEST, format!("bad chunk id {hex:?}"))),
        }
    }
}

pub async fn put(
    State(app): State<Shared>,
    ChunkPath { id: cid, .. }: ChunkPath,
    Query(query): Query<HashMap<String, String>>,
    Caller(who): Caller,
    body: Body,
) -> Result<Response, Response> {
    let backup: Option<i64> = q(&query, "backup").and_then(|v| v.parse().ok());
    // A PC stores chunks only into an upload of its own.
    if let (Who::Pc(_), None) = (&who, backup) {
        return Err(text(StatusCode::BAD_REQUEST, "backup=ID missing"));
    }
    let body = take_body(body, CHUNK_BODY).await?;
    run(&app, move |app| {
        if let Some(b) = backup {
            writable(app, &who, b)?;
        }
        match app.vault.put_chunk_for(who.pc(), &cid, &body, backup) {
            Ok(true) => Ok(text(StatusCode::CREATED, "stored")),
            Ok(false) => Ok(text(StatusCode::OK, "already stored")),
            Err(PutError::Bad(m)) => Err(text(StatusCode::UNPROCESSABLE_ENTITY, m)),
            Err(PutError::Closed(m)) => Err(text(StatusCode::CONFLICT, m)),
            Err(PutError::Quota(m)) => {
                app.event(&format!("quota-refused pc={} backup={backup:?}", who.name()));
                Err(text(StatusCode::INSUFFICIENT_STORAGE, m))
            }
            Err(PutError::Storage(e)) => Err(storage(e)),
        }
    })
    .await
}

/// A PC names the backup it restores (`?backup=ID`) and gets only chunks
/// of that backup's manifest; the admin gets any chunk.
pub async fn get(
    State(app): State<Shared>,
    headers: HeaderMap,
    ChunkPath { hex, id: cid }: ChunkPath,
    Query(query): Query<HashMap<String, String>>,
    Caller(who): Caller,
) -> Result<Response, Response> {
    let backup: Option<i64> = q(&query, "backup").and_then(|v| v.parse().ok());
    let ticket = ticket_of(&headers);
    run(&app, move |app| {
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
