//! `bootvault pc list | head`: a reader that stops early ends the CLI
//! quietly, as it ends any Unix tool (SIGPIPE), not with a panic; the
//! server keeps ignoring SIGPIPE.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use bootvault_server::vault::{PcRow, Vault};

#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let data = std::env::temp_dir().join(format!("bv-broken-pipe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let v = Vault::open(&data).expect("vault");
    // About 100 bytes a line: well over a pipe's 64 KiB buffer, so the CLI
    // is still writing when the reader goes away.
    for i in 0..1200u32 {
        let mac = format!("52:54:00:{:02x}:{:02x}:{:02x}", i >> 16, (i >> 8) & 0xff, i & 0xff);
        v.add_pc(&PcRow::new(&format!("lab-{i}"), &mac)).expect("add pc");
    }
    drop(v);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bootvault"))
        .args(["pc", "--data"])
        .arg(&data)
        .arg("list")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs bootvault");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 200];
    stdout.read_exact(&mut first).expect("the first lines");
    assert!(first.starts_with(b"PC "), "{}", String::from_utf8_lossy(&first));
    drop(stdout);
    let out = child.wait_with_output().expect("bootvault ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "nothing said on stderr: {stderr}");
    let quiet = out.status.signal() == Some(libc::SIGPIPE) || matches!(out.status.code(), Some(0 | 141));
    assert!(quiet, "ended by SIGPIPE, not an error: {:?}", out.status);
    let _ = std::fs::remove_dir_all(&data);
}

/// A PC closing its socket must not kill the server: `serve` keeps SIGPIPE
/// ignored (as Rust starts every program), only the other commands drop it.
#[test]
fn the_server_keeps_ignoring_sigpipe() {
    let data = std::env::temp_dir().join(format!("bv-serve-sigpipe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bootvault"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("runs bootvault serve");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("a line");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("listening"), "{first}");
    let ignored = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).expect("SigIgn line");
    let mask = u64::from_str_radix(ignored.trim(), 16).expect("hex mask");
    assert_ne!(mask & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE ignored: {ignored}");
    let _ = std::fs::remove_dir_all(&data);
}
