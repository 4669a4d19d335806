//! `bootvault pc` through the real binary: what an admin types, on the
//! data directory and against a running server (`--server`), with the
//! same answers.

use std::process::Command;

fn bootvault(data: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bootvault"))
        .arg("pc")
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("runs bootvault");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn register_list_show_edit_remove() {
    let data = std::env::temp_dir().join(format!("bv-pc-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    scenario(&|args| bootvault(&data, args));
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn the_same_over_the_servers_api() {
    let data = std::env::temp_dir().join(format!("bv-pc-remote-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = bootvault_server::spawn_on_loopback_with(&data, Default::default(), bootvault_server::tls::Mode::Made)
        .expect("server");
    let fp = bootvault_server::tls::fingerprint_in(&data).expect("read").expect("made").to_string();
    let admin = std::fs::read_to_string(data.join("admin.token")).expect("admin token");
    let url = format!("https://127.0.0.1:{port}");
    scenario(&|args| {
        let out = Command::new(env!("CARGO_BIN_EXE_bootvault"))
            .args(["pc", "--server", &url, "--fingerprint", &fp])
            .args(args)
            .env("BOOTVAULT_ADMIN_TOKEN", admin.trim())
            .output()
            .expect("runs bootvault");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    });
    // The server's database is the one the commands changed.
    let left = bootvault_server::vault::Vault::open(&data).expect("vault").list_pcs().expect("pcs");
    assert!(left.is_empty(), "the scenario removed its PC");
    let _ = std::fs::remove_dir_all(&data);
}

/// What an admin types, and what each command must answer.
fn scenario(bootvault: &dyn Fn(&[&str]) -> (bool, String)) {
    let (ok, out) =
        bootvault(&["add", "lab-1", "--mac", "52:54:00:AA:00:01", "--ip", "10.9.0.7/24", "--gateway", "10.9.0.1"]);
    assert!(ok, "{out}");
    assert!(out.contains("token          ") && out.contains("registered;"), "{out}");
    let (ok, out) = bootvault(&["add", "lab-2", "--ip", "10.9.0.8"]);
    assert!(!ok && out.contains("a MAC is required"), "{out}");
    let (ok, out) = bootvault(&["add", "lab-2", "--mac", "52:54:00:aa:00:02", "--ip", "10.9.0.8"]);
    assert!(!ok && out.contains("expected dhcp or ADDR/PREFIX"), "{out}");
    let (ok, out) = bootvault(&["--json", "list"]);
    assert!(ok && out.contains("\"mac\": \"52:54:00:aa:00:01\"") && !out.contains("\"token\""), "{out}");
    let (ok, out) = bootvault(&["show", "lab-1"]);
    assert!(ok && !out.contains("token"), "the token is shown only when asked: {out}");
    let (ok, out) = bootvault(&["edit", "lab-1", "--dhcp", "--default-action", "backup"]);
    assert!(ok && out.contains("ip             dhcp") && out.contains("default action backup"), "{out}");
    let (ok, out) = bootvault(&["show", "lab-1"]);
    assert!(ok && out.contains("quota          none (0 B used)"), "{out}");
    let (ok, out) = bootvault(&["edit", "lab-1", "--quota", "500G"]);
    assert!(ok && out.contains("quota          500.0 GiB (0 B used)"), "{out}");
    let (ok, out) = bootvault(&["--json", "show", "lab-1"]);
    assert!(ok && out.contains(&format!("\"quota\": {}", 500u64 << 30)) && out.contains("\"used\": 0"), "{out}");
    let (ok, out) = bootvault(&["edit", "lab-1", "--quota", "lots"]);
    assert!(!ok && out.contains("quota \"lots\""), "{out}");
    let (ok, out) = bootvault(&["edit", "lab-1", "--quota", "none"]);
    assert!(ok && out.contains("quota          none"), "{out}");
    let (ok, out) = bootvault(&["rm", "lab-1"]);
    assert!(ok && out.contains("PC lab-1 unregistered"), "{out}");
    let (ok, out) = bootvault(&["rm", "lab-1"]);
    assert!(!ok && out.contains("no registered PC lab-1"), "{out}");
}
