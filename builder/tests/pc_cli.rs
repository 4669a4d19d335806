//! `bootvault pc` through the real binary: what an admin types.

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
    let (ok, out) = bootvault(
        &data,
        &["add", "lab-1", "--mac", "52:54:00:AA:00:01", "--ip", "10.9.0.7/24", "--gateway", "10.9.0.1"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("token          ") && out.contains("registered;"), "{out}");
    let (ok, out) = bootvault(&data, &["add", "lab-2", "--ip", "10.9.0.8"]);
    assert!(!ok && out.contains("a MAC is required"), "{out}");
    let (ok, out) = bootvault(&data, &["add", "lab-2", "--mac", "52:54:00:aa:00:02", "--ip", "10.9.0.8"]);
    assert!(!ok && out.contains("expected dhcp or ADDR/PREFIX"), "{out}");
    let (ok, out) = bootvault(&data, &["--json", "list"]);
    assert!(ok && out.contains("\"mac\": \"52:54:00:aa:00:01\"") && !out.contains("\"token\""), "{out}");
    let (ok, out) = bootvault(&data, &["show", "lab-1"]);
    assert!(ok && !out.contains("token"), "the token is shown only when asked: {out}");
    let (ok, out) = bootvault(&data, &["edit", "lab-1", "--dhcp", "--default-action", "backup"]);
    assert!(ok && out.contains("ip             dhcp") && out.contains("default action backup"), "{out}");
    let (ok, out) = bootvault(&data, &["show", "lab-1"]);
    assert!(ok && out.contains("quota          none (0 B used)"), "{out}");
    let (ok, out) = bootvault(&data, &["edit", "lab-1", "--quota", "500G"]);
    assert!(ok && out.contains("quota          500.0 GiB (0 B used)"), "{out}");
    let (ok, out) = bootvault(&data, &["--json", "show", "lab-1"]);
    assert!(ok && out.contains(&format!("\"quota\": {}", 500u64 << 30)) && out.contains("\"used\": 0"), "{out}");
    let (ok, out) = bootvault(&data, &["edit", "lab-1", "--quota", "lots"]);
    assert!(!ok && out.contains("quota \"lots\""), "{out}");
    let (ok, out) = bootvault(&data, &["edit", "lab-1", "--quota", "none"]);
    assert!(ok && out.contains("quota          none"), "{out}");
    let (ok, out) = bootvault(&data, &["rm", "lab-1"]);
    assert!(ok && out.contains("PC lab-1 unregistered"), "{out}");
    let (ok, out) = bootvault(&data, &["rm", "lab-1"]);
    assert!(!ok && out.contains("no registered PC lab-1"), "{out}");
    let _ = std::fs::remove_dir_all(&data);
}
