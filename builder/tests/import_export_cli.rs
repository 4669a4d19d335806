//! `bootvault backups import-dir` and `export-dir` through the real
//! binary: a backup made with `backup --to` moves into a server's store
//! (deduplicated, skipped when already there, restored over HTTP byte for
//! byte) and back out into a local store (restored from it byte for
//! byte); a damaged chunk, an unfinished backup and an unregistered PC are
//! refused; a locked backup keeps its lock.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bootvault_common::wire::Kdf;
use bootvault_engine::lock::{Lock, Params};
use bootvault_server::vault::{PcRow, Vault};

fn bootvault(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bootvault")).args(args).output().expect("runs bootvault");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A scratch directory with a 4 MiB disk image (noise, then zeros).
fn scratch(name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("bv-import-export-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("dir");
    let mut data = bootvault_common::testdata::noise(33, 3 << 20);
    data.extend(vec![0u8; 1 << 20]);
    let src = dir.join("disk.img");
    fs::write(&src, &data).expect("disk");
    (dir, src, data)
}

/// `backup --to STORE` of the image as lab-1.
/// A backup into `store`: encrypted with the site key (the default), or
/// with `extra` (`--no-encryption` where a test looks at plain chunks).
fn backup_to(src: &Path, store: &Path, name: &str, extra: &[&str]) {
    let mut args = vec!["backup", "--disk", s(src), "--to", s(store), "--pc", "lab-1", "--name", name];
    args.extend_from_slice(extra);
    let (ok, out) = bootvault(&args);
    assert!(ok && out.contains("complete"), "{out}");
}

/// Registers lab-1 in a new data directory; its token.
fn register(data: &Path) -> String {
    let v = Vault::open(data).expect("vault");
    v.add_pc(&PcRow::new("lab-1", "52:54:00:00:00:01")).expect("pc add").token
}

/// A blank target as large as `len`.
fn blank(dir: &Path, name: &str, len: usize) -> PathBuf {
    let t = dir.join(name);
    fs::write(&t, vec![0xEEu8; len]).expect("target");
    t
}

fn backups_json(data: &Path, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["backups", "--data", s(data), "--json", "list"];
    if all {
        args.push("--all");
    }
    let (ok, out) = bootvault(&args);
    assert!(ok, "{out}");
    serde_json::from_str(&out).expect("json list")
}

#[test]
fn import_deduplicates_restores_over_http_and_exports_back() {
    let (dir, src, data) = scratch("round");
    // On a drive, the store is bootvault/ at the filesystem's root.
    let drive = dir.join("usb");
    backup_to(&src, &drive.join("bootvault"), "stick", &[]);
    let server = dir.join("data");
    fs::create_dir_all(&server).expect("data dir");

    // lab-1 is not registered yet: refused, saying what to do.
    let (ok, out) = bootvault(&["backups", "--data", s(&server), "import-dir", s(&drive)]);
    assert!(!ok && out.contains("not registered") && out.contains("bootvault pc add lab-1"), "{out}");
    assert!(backups_json(&server, false).is_empty(), "{out}");

    let _token = register(&server);
    let (ok, out) = bootvault(&["backups", "--data", s(&server), "import-dir", s(&drive)]);
    assert!(ok && out.contains("local backup 1 → server backup"), "{out}");
    assert!(out.contains("1 backups copied, 0 already there, 0 failed"), "{out}");
    let listed = backups_json(&server, false);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0]["pc"].as_str(), listed[0]["name"].as_str()), (Some("lab-1"), Some("stick")));
    assert_eq!(listed[0]["state"].as_str(), Some("complete"));
    let id = listed[0]["id"].as_i64().expect("id");

    // Again: already imported, nothing copied.
    let (ok, out) = bootvault(&["backups", "--data", s(&server), "import-dir", s(&drive)]);
    assert!(ok && out.contains("already there, skipped"), "{out}");
    assert!(out.contains("0 backups copied, 1 already there, 0 failed; 0 B copied"), "{out}");
    // A second backup of the same disk: recorded, but every chunk is already on the server.
    backup_to(&src, &drive.join("bootvault"), "again", &[]);
    // An unfinished one is never imported.
    fs::write(drive.join("bootvault/uploads/9.open"), "name=half\n").expect("open upload");
    let (ok, out) = bootvault(&["backups", "--data", s(&server), "import-dir", s(&drive)]);
    assert!(ok && out.contains("local backup 2 → server backup"), "{out}");
    assert!(out.contains("1 backups copied, 1 already there, 0 failed; 0 B copied"), "{out}");
    assert!(out.contains("not imported: unfinished local backup(s) 9 (uploads/)"), "{out}");
    assert_eq!(backups_json(&server, true).len(), 2, "nothing recorded for the unfinished backup");

    // Restore from the server over HTTP (admin token).
    let port =
        bootvault_server::spawn_on_loopback(&server, bootvault_server::listener::Limits::DEFAULT).expect("server");
    let url = format!("http://127.0.0.1:{port}");
    let admin = fs::read_to_string(server.join("admin.token")).expect("admin token");
    let target = blank(&dir, "from-server.img", data.len());
    let id_s = id.to_string();
    let (ok, out) = bootvault(&[
        "restore",
        "--disk",
        s(&target),
        "--server",
        &url,
        "--pc",
        "lab-1",
        "--token",
        admin.trim(),
        "--backup",
        &id_s,
    ]);
    assert!(ok, "{out}");
    assert!(fs::read(&target).expect("read") == data, "restored from the server byte for byte");

    // Out again into a new local store, restored from there.
    let out_store = dir.join("out");
    let (ok, out) = bootvault(&["backups", "--data", s(&server), "export-dir", s(&out_store), "--backup", &id_s]);
    assert!(ok && out.contains(&format!("server backup {id} → local backup 1")), "{out}");
    let target = blank(&dir, "from-dir.img", data.len());
    let (ok, out) =
        bootvault(&["restore", "--disk", s(&target), "--from", s(&out_store), "--pc", "lab-1", "--backup", "1"]);
    assert!(ok, "{out}");
    assert!(fs::read(&target).expect("read") == data, "restored from the exported directory byte for byte");
    let (ok, out) = bootvault(&["backups", "--data", s(&server), "export-dir", s(&out_store), "--all"]);
    assert!(ok && out.contains("already there, skipped") && out.contains("1 backups copied, 1 already there"), "{out}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_chunk_is_refused_and_nothing_completes() {
    let (dir, src, _) = scratch("damaged");
    let store = dir.join("store");
    // Plain: an import re-hashes plain chunks; an encrypted one is checked
    // for its shape only, and in full by the restore that opens it.
    backup_to(&src, &store, "full", &["--no-encryption"]);
    let server = dir.join("data");
    register(&server);
    // Flip the last byte of one chunk file.
    let sub = fs::read_dir(store.join("chunks")).expect("chunks").flatten().next().expect("a chunk dir").path();
    let chunk = fs::read_dir(&sub).expect("chunk dir").flatten().next().expect("a chunk").path();
    let mut bytes = fs::read(&chunk).expect("chunk");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5A;
    fs::write(&chunk, &bytes).expect("damage");
    let hex = chunk.file_name().and_then(|n| n.to_str()).expect("name").to_owned();

    let (ok, out) = bootvault(&["backups", "--data", s(&server), "import-dir", s(&store)]);
    assert!(!ok, "{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(&hex)).collect();
    assert_eq!(lines.len(), 1, "one line names the chunk: {out}");
    assert!(lines[0].starts_with("local backup 1: not copied:"), "{out}");
    assert!(backups_json(&server, false).is_empty(), "nothing complete: {out}");
    let all = backups_json(&server, true);
    assert!(all.iter().all(|b| b["state"].as_str() == Some("failed")), "{all:?}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_locked_backup_keeps_its_lock() {
    let (dir, src, data) = scratch("locked");
    let store = dir.join("store");
    // Plain: the lock file is added by hand below, the way a PC of old kept one.
    backup_to(&src, &store, "secret", &["--no-encryption"]);
    // The lock as a PC's console would keep it (small Argon2id costs).
    let params = Params { m_kib: 64, t_cost: 1, p: 1 };
    let salt = [9u8; 16];
    let (key, _) = bootvault_engine::lock::keys(b"hunter22", Kdf::Argon2idSplit, &salt, &params).expect("derive");
    let lock = Lock { kdf: Kdf::Argon2idSplit, params, salt, key, wrap: None };
    fs::create_dir_all(store.join("locks")).expect("locks dir");
    fs::write(store.join("locks/1.lock"), format!("{}\n", lock.to_text())).expect("lock file");
    let server = dir.join("data");
    let token = register(&server);

    let (ok, out) = bootvault(&["backups", "--data", s(&server), "import-dir", s(&store)]);
    assert!(ok && out.contains("locked"), "{out}");
    let listed = backups_json(&server, false);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["locked"].as_bool(), Some(true), "{listed:?}");
    let id = listed[0]["id"].as_i64().expect("id");

    // Over HTTP, as the PC: refused without the password, restored with it.
    let port =
        bootvault_server::spawn_on_loopback(&server, bootvault_server::listener::Limits::DEFAULT).expect("server");
    let client = bootvault_engine::client::Client::new(&format!("http://127.0.0.1:{port}"), "lab-1", &token);
    let target = blank(&dir, "target.img", data.len());
    let dev = bootvault_engine::device::Device::open(&target, true).expect("target");
    let opts = bootvault_engine::restore::RestoreOptions::default();
    let refused = bootvault_engine::restore::restore(&dev, &client, id, &opts, &mut |_| {});
    let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(why.contains("protected by a password"), "{why}");
    assert!(bootvault_engine::lock::unlock(&client, id, b"hunter22").expect("unlock"), "it has a password");
    bootvault_engine::restore::restore(&dev, &client, id, &opts, &mut |_| {}).expect("restore with the password");
    drop(dev);
    assert!(fs::read(&target).expect("read") == data, "restored byte for byte");
    let _ = fs::remove_dir_all(&dir);
}
