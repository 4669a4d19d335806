//! Network boot: what a PC's firmware (iPXE) fetches before our init runs.
//!
//! ```text
//! GET /boot/ipxe                 entry script (DHCP's boot file name points here)
//!                                → chain mac/${netX/mac:hexhyp}
//! GET /boot/mac/MAC              the PC's script: kernel + initrd + command line,
//!                                or a readable refusal for an unknown MAC
//! GET /boot/pc/NAME/vmlinuz      the files `bootvault build NAME --media pxe`
//! GET /boot/pc/NAME/initrd.img   put in DATA/boot/NAME/
//! ```
//!
//! These are the only unauthenticated endpoints: firmware cannot carry a
//! token. The initramfs holds the PC's token, so anyone on the imaging
//! network who knows a registered MAC can fetch it; see docs/PROTOCOL.md.
//! This module owns the scripts and the file serving; the PC records are
//! the vault's.
//!
//! Anyone may call these, so what they log goes through `App::aggregated`
//! (a few lines per peer a minute, then a count), and the MACs they add to
//! `pending` are limited per peer address ([`new_pending_rate`]) and in
//! number ([`Vault::PENDING_MAX`](crate::vault::Vault::PENDING_MAX)).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bootvault_common::wire;

use crate::refusals::{Kind, PeerRate};
use crate::vault::{self, normalize_mac, PcRow, Pending, REGISTER_UNKNOWN};
use crate::{blocking, body_or, internal, App, Shared};

/// Files a PC may fetch from its boot directory.
pub const BOOT_FILES: &[&str] = &["vmlinuz", "initrd.img"];

/// New MACs one peer address may add to `pending` per [`NEW_PENDING_WINDOW`]:
/// a PC network-boots with one MAC (a few with several NICs); a peer
/// inventing MACs stops here.
const NEW_PENDING_PER_PEER: u32 = 8;
const NEW_PENDING_WINDOW: Duration = Duration::from_secs(600);
/// Peer addresses tracked for that; more at once wait for the window.
const NEW_PENDING_PEERS: usize = 1024;

/// The limit on new `pending` MACs per peer address.
pub fn new_pending_rate() -> PeerRate {
    PeerRate::new(NEW_PENDING_WINDOW, NEW_PENDING_PER_PEER, NEW_PENDING_PEERS)
}

pub fn router() -> Router<Shared> {
    Router::new()
        .route(wire::BOOT_IPXE, get(entry))
        .route("/boot/mac/{mac}", get(by_mac))
        .route("/boot/pc/{name}/{file}", get(file))
}

fn ipxe(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// The entry script: the same for every PC, so DHCP needs one boot file
/// name. iPXE resolves the relative URL against this script's URL.
pub fn entry_script() -> String {
    "#!ipxe\necho bootvault: asking the server for this PC's boot files (MAC ${netX/mac})\n\
     chain mac/${netX/mac:hexhyp} || goto failed\nexit\n:failed\n\
     echo bootvault: the server did not answer; retrying in 10 s\nsleep 10\nchain mac/${netX/mac:hexhyp}\n"
        .to_owned()
}

/// The per-PC script: the boot files of `pc` with its command line.
pub fn pc_script(pc: &PcRow, cmdline: &str) -> String {
    // `initrd=` names the initrd for EFI-stub kernels under UEFI iPXE;
    // the BIOS path ignores it.
    format!(
        "#!ipxe\necho bootvault: PC {name} ({mac}) boots over the network\n\
         kernel /boot/pc/{name}/vmlinuz initrd=initrd.img {cmdline}\n\
         initrd /boot/pc/{name}/initrd.img\nboot\n",
        name = pc.name,
        mac = pc.mac,
        cmdline = cmdline.trim()
    )
}

/// What an unknown, or not network-bootable, PC is told on its screen.
pub fn refusal_script(lines: &[String]) -> String {
    let mut s = String::from("#!ipxe\n");
    for l in lines {
        // iPXE expands ${...}; keep the message literal.
        s.push_str(&format!("echo bootvault: {}\n", l.replace('$', "")));
    }
    s.push_str("echo bootvault: powering off in 60 s\nsleep 60\npoweroff\n");
    s
}

async fn entry(State(app): State<Shared>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    app.aggregated(peer.ip(), Kind::new("netboot-entry", ""), || format!("netboot-entry peer={peer}"));
    ipxe(entry_script())
}

/// Lists an unknown MAC for the admin, if the peer's rate and the list's
/// cap allow: the line for the PC's screen and the log's word for it.
fn list_pending(app: &App, mac: &str, peer: IpAddr) -> Result<(String, &'static str), Response> {
    let now = Instant::now();
    let admit = app.new_pending.lock().is_ok_and(|mut r| r.allows(peer, now));
    match app.vault.note_pending(mac, &peer.to_string(), vault::now(), admit).map_err(internal)? {
        Pending::Added => {
            if let Ok(mut r) = app.new_pending.lock() {
                r.spend(peer, now);
            }
            Ok(("It is now listed for the admin in: bootvault pc pending".into(), "listed"))
        }
        Pending::Seen => Ok(("It is listed for the admin in: bootvault pc pending".into(), "listed")),
        Pending::Full => Ok((
            format!(
                "It was not listed: the list of unknown PCs is full ({}); ask an admin.",
                vault::Vault::PENDING_MAX
            ),
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
) -> Response {
    let r = blocking(&app, move |app| {
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
        let dir = app.vault.boot_dir(&pc.name);
        let cmdline = std::fs::read_to_string(dir.join("cmdline")).ok();
        let present = BOOT_FILES.iter().all(|f| dir.join(f).is_file());
        match cmdline {
            Some(c) if present => {
                app.aggregated(peer.ip(), Kind::new("netboot", ""), || {
                    format!("netboot pc={} mac={mac} peer={peer}", pc.name)
                });
                Ok(ipxe(pc_script(&pc, &c)))
            }
            _ => {
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
    .await;
    body_or(r)
}

async fn file(
    State(app): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((name, file)): Path<(String, String)>,
) -> Response {
    let safe_name = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !BOOT_FILES.contains(&file.as_str()) || !safe_name {
        return (StatusCode::NOT_FOUND, "no such boot file\n").into_response();
    }
    let r = blocking(&app, move |app| {
        // Only registered PCs' directories are served.
        if app.vault.pc(&name).map_err(internal)?.is_none() {
            return Err((StatusCode::NOT_FOUND, format!("no registered PC {name}\n")).into_response());
        }
        let path = app.vault.boot_dir(&name).join(&file);
        // The path and the cause go to the server's output, not to the network.
        let bytes = std::fs::read(&path).map_err(|e| {
            eprintln!("{} netboot-file-unreadable pc={name} {}: {e}", crate::vault::now(), path.display());
            let hint = format!("PC {name} has no {file} published (bootvault build {name} --media pxe)\n");
            (StatusCode::NOT_FOUND, hint).into_response()
        })?;
        app.aggregated(peer.ip(), Kind::new("netboot-file", ""), || {
            format!("netboot-file pc={name} file={file} bytes={} peer={peer}", bytes.len())
        });
        Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
    })
    .await;
    body_or(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts() {
        let mut pc = PcRow::new("lab-3", "52:54:00:12:34:56");
        pc.token = "secret".into();
        let s = pc_script(&pc, "console=ttyS0 bootvault.pc=lab-3\n");
        assert!(s.starts_with("#!ipxe\n"));
        assert!(
            s.contains("kernel /boot/pc/lab-3/vmlinuz initrd=initrd.img console=ttyS0 bootvault.pc=lab-3\n"),
            "{s}"
        );
        assert!(s.contains("initrd /boot/pc/lab-3/initrd.img\nboot\n"));
        assert!(!s.contains("secret"), "the token is in the initrd, never in a script");
        let r = refusal_script(&["costs ${x}".into()]);
        assert!(r.contains("echo bootvault: costs {x}\n") && r.ends_with("poweroff\n"), "{r}");
        assert!(entry_script().contains("chain mac/${netX/mac:hexhyp}"));
    }
}
