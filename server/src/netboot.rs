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

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bootvault_common::wire;

use crate::vault::{normalize_mac, PcRow, REGISTER_UNKNOWN};
use crate::{blocking, body_or, internal, Shared};

/// Files a PC may fetch from its boot directory.
pub const BOOT_FILES: &[&str] = &["vmlinuz", "initrd.img"];

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
    app.event(&format!("netboot-entry peer={peer}"));
    ipxe(entry_script())
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
            if register {
                app.vault.note_pending(&mac, &peer.ip().to_string()).map_err(internal)?;
                lines.push("It is now listed for the admin in: bootvault pc pending".into());
            }
            app.event(&format!("netboot-unknown mac={mac} peer={peer} listed={}", if register { "yes" } else { "no" }));
            return Ok(ipxe(refusal_script(&lines)));
        };
        if pc.mode != "network" {
            app.event(&format!("netboot-refused pc={} mac={mac} reason=mode-{}", pc.name, pc.mode));
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
                app.event(&format!("netboot pc={} mac={mac} peer={peer}", pc.name));
                Ok(ipxe(pc_script(&pc, &c)))
            }
            _ => {
                app.event(&format!("netboot-refused pc={} mac={mac} reason=no-boot-files", pc.name));
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

async fn file(State(app): State<Shared>, Path((name, file)): Path<(String, String)>) -> Response {
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
        let bytes = std::fs::read(&path)
            .map_err(|e| (StatusCode::NOT_FOUND, format!("{}: {e}\n", path.display())).into_response())?;
        app.event(&format!("netboot-file pc={name} file={file} bytes={}", bytes.len()));
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
