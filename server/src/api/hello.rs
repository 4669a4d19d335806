//! `GET /api/v1/hello`: a PC (or the admin) says who it is; the PC's
//! last contact is recorded.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bootvault_common::wire;

use super::{header, internal, run, text, Caller, Shared, Who};

pub async fn hello(
    State(app): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Caller(who): Caller,
) -> Result<Response, Response> {
    let mac = header(&headers, wire::MAC_HEADER);
    let addr = header(&headers, wire::ADDR_HEADER);
    run(&app, move |app| {
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
