//! What a job and a new backup may hold, over the real HTTP API (the server
//! started in this process) and through the vault the CLI uses: a job's
//! fields are checked with the PC's own rules when the job is made, so a
//! newline cannot smuggle a setting to the PC; a backup's sizes are checked
//! as the numbers they are, never cut to fit.

mod support;
use support::http;

use std::fs;
use std::path::{Path, PathBuf};

use bootvault_common::config::BackupRef;
use bootvault_common::job::JobMessage;
use bootvault_server::vault::{PcRow, Vault};

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-jobsval-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn start(data: &Path) -> u16 {
    bootvault_server::spawn_on_loopback(data, Default::default()).expect("the server starts")
}

/// The vault with `pc-one` and a complete backup of it; (pc token, admin token).
fn vault_with_a_pc(dir: &Path) -> (String, String) {
    let v = Vault::open(dir).expect("vault");
    let token = v.add_pc(&PcRow::new("pc-one", "52:54:00:00:07:01")).expect("add").token;
    (token, v.admin_token().expect("admin"))
}

#[test]
fn injected_job_fields_are_refused_over_http() {
    let dir = temp("http");
    let (token, admin) = vault_with_a_pc(&dir);
    let port = start(&dir);
    let admin_auth = format!("Bearer {admin}");
    let admin_headers =
        [("x-bootvault-pc", "-"), ("authorization", admin_auth.as_str()), ("content-type", "application/json")];
    let pc_auth = format!("Bearer {token}");
    let pc_headers = [("x-bootvault-pc", "pc-one"), ("authorization", pc_auth.as_str())];
    let job = |json: &str| http(port, "POST", "/jobs", &admin_headers, json.as_bytes());

    // JSON's "\n" is a newline in the field: the attack of the report.
    for (json, field) in [
        (r#"{"pc":"pc-one","action":"backup","disk":"sda\nbackup=3"}"#, "disk"),
        (r#"{"pc":"pc-one","action":"backup","disk":"sda backup=3"}"#, "disk"),
        (r#"{"pc":"pc-one","action":"backup","disk":"../sda"}"#, "disk"),
        (r#"{"pc":"pc-one","action":"backup","name":"weekly\nbackup=3"}"#, "name"),
        (r#"{"pc":"pc-one","action":"backup","name":"weekly\r"}"#, "name"),
        (r#"{"pc":"pc-one","action":"backup","name":"a/b"}"#, "name"),
        (r#"{"pc":"pc-one","action":"restore","backup":0}"#, "backup"),
        (r#"{"pc":"pc-one","action":"restore","backup":-3}"#, "backup"),
    ] {
        let (status, body) = job(json);
        assert_eq!(status, 422, "{json}: {body}");
        assert!(body.starts_with(field), "{json}: the reason names the field {field}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "one line: {body:?}");
    }
    // Nothing reached the PC.
    assert_eq!(http(port, "GET", "/jobs/next", &pc_headers, b"").0, 204);

    // A good job still goes through, and the PC reads exactly its fields.
    let (status, body) = job(r#"{"pc":"pc-one","action":"backup","disk":"sdb","name":"nightly-1.0_a"}"#);
    assert_eq!(status, 201, "{body}");
    let (status, next) = http(port, "GET", "/jobs/next", &pc_headers, b"");
    assert_eq!(status, 200, "{next}");
    let got = JobMessage::parse(&next).expect("the PC reads it");
    assert_eq!(
        (got.disk.as_deref(), got.name.as_deref(), got.backup),
        (Some("sdb"), Some("nightly-1.0_a"), BackupRef::Latest)
    );

    // A job stored before these checks (or by hand): failed on the server,
    // with the reason, and never sent.
    let db = rusqlite::Connection::open(dir.join("bootvault.db")).expect("db");
    db.execute(
        "INSERT INTO jobs (pc, action, disk, name, backup, state, created) \
         VALUES ('pc-one', 'restore', 'sda\nbackup=3', '', 1, 'queued', 1)",
        [],
    )
    .expect("insert");
    let (status, body) = http(port, "GET", "/jobs/next", &pc_headers, b"");
    assert_eq!(status, 500, "{body}");
    assert!(!body.contains("\nbackup=3"), "{body}");
    assert!(body.starts_with("the server did not send job 2: disk: a control character"), "{body}");
    let v = Vault::open(&dir).expect("vault");
    assert_eq!(v.list_jobs(Some("pc-one")).expect("jobs")[1].state, "failed");
    assert_eq!(http(port, "GET", "/jobs/next", &pc_headers, b"").0, 204);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn injected_job_fields_are_refused_by_the_vault() {
    let dir = temp("vault");
    vault_with_a_pc(&dir);
    let v = Vault::open(&dir).expect("vault");
    for (disk, name, backup, field) in [
        ("sda\nbackup=3", "", None, "disk"),
        ("sda\u{1b}[2J", "", None, "disk"),
        ("auto", "x\nlock=argon2id", None, "name"),
        ("auto", &"n".repeat(65), None, "name"),
        ("auto", "", Some(0), "backup"),
        ("auto", "", Some(-1), "backup"),
    ] {
        let e = v.add_job_with("pc-one", "restore", disk, name, backup, None, false, None).unwrap_err().to_string();
        assert!(e.starts_with(field), "{disk:?} {name:?} {backup:?}: the error names {field}: {e}");
        assert!(!e.contains('\n'), "one line: {e:?}");
    }
    assert!(v.next_job("pc-one").expect("next").is_none(), "nothing was queued");
    assert!(v.add_job("pc-one", "backup", "nvme0n1", "weekly", None).is_ok());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn backup_sizes_are_checked_not_cut() {
    let dir = temp("sizes");
    let (token, _) = vault_with_a_pc(&dir);
    let port = start(&dir);
    let pc_auth = format!("Bearer {token}");
    let pc_headers = [("x-bootvault-pc", "pc-one"), ("authorization", pc_auth.as_str())];
    let open = |query: &str| http(port, "POST", &format!("/backups?name=full&{query}"), &pc_headers, b"");
    for (query, field) in [
        // 2^32 + 1: cut to 1 by `as u32` before.
        ("disk_bytes=4096&chunk_size=4294967297", "chunk_size"),
        ("disk_bytes=4096&chunk_size=0", "chunk_size"),
        ("disk_bytes=4096&chunk_size=-4096", "chunk_size"),
        ("disk_bytes=4096&chunk_size=16777217", "chunk_size"),
        ("disk_bytes=18446744073709551615&chunk_size=4096", "disk_bytes"),
        ("disk_bytes=72057594037927937&chunk_size=4096", "disk_bytes"),
        ("disk_bytes=0&chunk_size=4096", "disk_bytes"),
        ("disk_bytes=lots&chunk_size=4096", "disk_bytes"),
    ] {
        let (status, body) = open(query);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.starts_with(field), "{query}: the reason names {field}: {body}");
        assert!(body.contains("..="), "{query}: the reason gives the range: {body}");
    }
    let (status, body) = open("disk_bytes=72057594037927936&chunk_size=16777216");
    assert_eq!(status, 201, "the largest allowed: {body}");
    let (status, body) = open("disk_bytes=4096");
    assert_eq!(status, 201, "the default chunk size: {body}");

    // The same limits where the CLI and import create backups.
    let v = Vault::open(&dir).expect("vault");
    for (disk_bytes, chunk_size) in
        [(u64::MAX, 4096), ((1 << 56) + 1, 4096), (0, 4096), (4096, 0), (4096, 16 << 20 | 1)]
    {
        assert!(v.create_backup("pc-one", "full", disk_bytes, chunk_size).is_err(), "{disk_bytes} {chunk_size}");
    }
    let _ = fs::remove_dir_all(&dir);
}
