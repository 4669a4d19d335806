//! Network boot over HTTP: what a PC's firmware (iPXE) fetches before our
//! init runs.
//!
//! ```text
//! GET /boot/ipxe                 entry script (DHCP's boot file name points here)
//!                                → chain mac/${netX/mac:hexhyp}
//! GET /boot/mac/MAC              the PC's script: kernel + initrd + command line,
//!                                or a readable refusal for an unknown MAC
//! GET /boot/pc/NAME/vmlinuz      the files `bootvault build NAME --media pxe`
//! GET /boot/pc/NAME/initrd.img   published (see crate::netboot)
//! ```
//!
//! These are the only unauthenticated endpoints: firmware cannot carry a
//! token. The initramfs holds the PC's token, so anyone on the imaging
//! network who knows a registered MAC can fetch it; see docs/PROTOCOL.md.
//!
//! Anyone may call these, so what they log goes through `App::aggregated`
//! (a few lines per peer a minute, then a count), and the MACs they add to
//! `pending` are limited per peer address
//! ([`Vault::note_pending_from`], counted in the database for every
//! server) and in number ([`Vault::PENDING_MAX`]).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bootvault_common::wire;

use super::{internal, run, App, Shared};
use crate::netboot::{entry_script, pc_script, refusal_script, BOOT_FILES, NEW_PENDING_WINDOW};
use crate::refusals::Kind;
use crate::vault::{self, normalize_mac, Pending, Vault, REGISTER_UNKNOWN};

pub fn router() -> Router<Shared> {
    Router::new()
        .route(wire::BOOT_IPXE, get(entry))
        .route("/boot/mac/{mac}", get(by_mac))
        .route("/boot/pc/{name}/{file}", get(file))
}

fn ipxe(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

async fn entry(State(app): State<Shared>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    app.aggregated(peer.ip(), Kind::new("netboot-entry", ""), || format!("netboot-entry peer={peer}"));
    ipxe(entry_script())
}

/// Lists an unknown MAC for the admin, if the peer's rate and the list's
/// cap allow: the line for the PC's screen and the log's word for it.
fn list_pending(app: &App, mac: &str, peer: IpAddr) -> Result<(String, &'static str), Response> {
    match app.vault.note_pending_from(mac, &peer.to_string(), vault::now()).map_err(internal)? {
        Pending::Added => Ok(("It is now listed for the admin in: bootvault pc pending".into(), "listed")),
        Pending::Seen => Ok(("It is listed for the admin in: bootvault pc pending".into(), "listed")),
        Pending::Full => Ok((
            format!("It was not listed: the list of unknown PCs is full ({}); ask an admin.", Vault::PENDING_MAX),
            "list-full",
        )),
        Pending::NotAdmitted => Ok((
            format!(
                "It was not listed: too many unknown PCs from {peer}; retry in {} minutes or ask an admin.",
                NEW_PENDING_WINDOW.as_secs() / 60
            ),
            "rate",
        )),
    }
}

async fn by_mac(
    State(app): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(mac): Path<String>,
) -> Result<Response, Response> {
    run(&app, move |app| {
        let Some(mac) = normalize_mac(&mac) else {
            return Ok(ipxe(refusal_script(&[format!("{mac:?} is not a MAC address")])));
        };
        let Some(pc) = app.vault.pc_by_mac(&mac).map_err(internal)? else {
            let register = app.vault.setting(REGISTER_UNKNOWN).map_err(internal)?.is_some_and(|v| v == "yes");
            let mut lines = vec![
                format!("this PC (MAC {mac}) is not registered with the server."),
                format!("An admin registers it with: bootvault pc add NAME --mac {mac}"),
            ];
            let listed = if register {
                let (line, listed) = list_pending(app, &mac, peer.ip())?;
                lines.push(line);
                listed
            } else {
                "no"
            };
            app.aggregated(peer.ip(), Kind::new("netboot-unknown", listed), || {
                format!("netboot-unknown mac={mac} peer={peer} listed={listed}")
            });
            return Ok(ipxe(refusal_script(&lines)));
        };
        if pc.mode != "network" {
            app.aggregated(peer.ip(), Kind::new("netboot-refused", "mode"), || {
                format!("netboot-refused pc={} mac={mac} peer={peer} reason=mode-{}", pc.name, pc.mode)
            });
            return Ok(ipxe(refusal_script(&[format!(
                "PC {} is set to boot from its own media (mode {}); bootvault pc edit {} --mode network",
                pc.name, pc.mode, pc.name
            )])));
        }
        match app.vault.boot_files().ready(&pc.name) {
            Some(c) => {
                app.aggregated(peer.ip(), Kind::new("netboot", ""), || {
                    format!("netboot pc={} mac={mac} peer={peer}", pc.name)
                });
                Ok(ipxe(pc_script(&pc, &c)))
            }
            None => {
                app.aggregated(peer.ip(), Kind::new("netboot-refused", "no-boot-files"), || {
                    format!("netboot-refused pc={} mac={mac} peer={peer} reason=no-boot-files", pc.name)
                });
                Ok(ipxe(refusal_script(&[format!(
                    "PC {} has no network boot files yet: bootvault build {} --data DIR --media pxe",
                    pc.name, pc.name
                )])))
            }
        }
    })
    .await
}

async fn file(
    State(app): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((name, file)): Path<(String, String)>,
) -> Result<Response, Response> {
    let safe_name = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !BOOT_FILES.contains(&file.as_str()) || !safe_name {
        return Ok((StatusCode::NOT_FOUND, "no such boot file\n").into_response());
    }
    run(&app, move |app| {
        // Only registered PCs' directories are served.
        if app.vault.pc(&name).map_err(internal)?.is_none() {
            return Err((StatusCode::NOT_FOUND, format!("no registered PC {name}\n")).into_response());
        }
        // The path and the cause go to the server's output, not to the network.
        let bytes = app.vault.boot_files().read(&name, &file).map_err(|e| {
            let path = app.vault.boot_dir(&name).join(&file);
            eprintln!("{} netboot-file-unreadable pc={name} {}: {e}", vault::now(), path.display());
            let hint = format!("PC {name} has no {file} published (bootvault build {name} --media pxe)\n");
            (StatusCode::NOT_FOUND, hint).into_response()
        })?;
        app.aggregated(peer.ip(), Kind::new("netboot-file", ""), || {
            format!("netboot-file pc={name} file={file} bytes={} peer={peer}", bytes.len())
        });
        Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
    })
    .await
}
