//! `bootvault jobs add ... --password-file` through the real binary: a
//! backup job carries a lock (never the password), a restore job of a
//! locked backup is refused without the password, counts a wrong one, and
//! is queued unlocked with the right one.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use bootvault_common::image::{self, Chunk};
use bootvault_engine::lock::{derive, Params};
use bootvault_server::vault::{BackupLock, PcRow, Vault};

fn jobs(data: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bootvault"))
        .arg("jobs")
        .arg("--data")
        .arg(data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs bootvault");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or("").as_bytes()).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("bootvault ends");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A complete backup of `pc` locked with `password` (small Argon2id costs;
/// the CLI derives with whatever the challenge says).
fn locked_backup(v: &Vault, pc: &str, password: &[u8]) -> i64 {
    let params = Params { m_kib: 64, t_cost: 1, p: 1 };
    let salt = [5u8; 16];
    let key = derive(password, &salt, &params).expect("derive");
    let lock = BackupLock { kdf: bootvault_common::wire::Kdf::Argon2id, params, salt, key: *key };
    let plain = vec![7u8; 4096];
    let cid = image::chunk_id(&plain);
    let blob = image::encode_blob(&plain, 1);
    let m = bootvault_common::testdata::manifest_of(pc, vec![Chunk::Data { id: cid, blob_len: blob.len() as u32 }]);
    let id = v.create_backup_locked(pc, "full", 4096, 4096, Some(&lock)).expect("create");
    v.put_chunk(&cid, &blob, Some(id)).expect("chunk");
    v.finish_backup(id, pc, &m.encode()).expect("finish");
    id
}

#[test]
fn job_add_with_a_password_file() {
    let dir = std::env::temp_dir().join(format!("bv-jobs-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let v = Vault::open(&data).expect("vault");
    v.add_pc(&PcRow::new("lab-1", "52:54:00:aa:00:01")).expect("add pc");
    let id = locked_backup(&v, "lab-1", b"correct horse");
    let right = dir.join("right.txt");
    std::fs::write(&right, "correct horse\nsecond line is not the password\n").expect("password file");
    let wrong = dir.join("wrong.txt");
    std::fs::write(&wrong, "battery staple\n").expect("password file");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n").expect("password file");

    // A backup job: the lock is derived here; the database never sees the password.
    let (ok, out) = jobs(&data, &["add", "lab-1", "backup", "--password-file", right.to_str().expect("path")], None);
    assert!(ok && out.contains("will be protected by the password"), "{out}");
    let job = v.next_job("lab-1").expect("next").expect("a job");
    let lock = BackupLock::from_text(job.lock.as_deref().expect("the job carries a lock")).expect("lock");
    assert_eq!(lock.params, Params::DEFAULT);
    let (key, _) = bootvault_engine::lock::keys(b"correct horse", lock.kdf, &lock.salt, &lock.params).expect("derive");
    assert_eq!(*key, lock.key);

    // Restore jobs of the locked backup.
    let (ok, out) = jobs(&data, &["add", "lab-1", "restore", "--backup", &id.to_string()], None);
    assert!(
        !ok && out.contains(&format!("backup {id} is protected by a password: give the job --password-file")),
        "{out}"
    );
    let (ok, out) = jobs(&data, &["add", "lab-1", "restore", "--password-file", wrong.to_str().expect("path")], None);
    assert!(!ok && out.contains(&format!("wrong password for backup {id} (4 tries left before a wait)")), "{out}");
    assert_eq!(v.unlock_failures("lab-1", id).expect("failures").0, 1, "counted under the target PC");
    let (ok, out) = jobs(&data, &["add", "lab-1", "restore", "--password-file", empty.to_str().expect("path")], None);
    assert!(!ok && out.contains("the first line (the password) is empty"), "{out}");
    // `latest` is resolved now, and standard input works.
    let (ok, out) = jobs(&data, &["add", "lab-1", "restore", "--password-file", "-"], Some("correct horse\n"));
    assert!(ok && out.contains(&format!("restore of backup {id}, unlocked with its password")), "{out}");
    let job = v.next_job("lab-1").expect("next").expect("a job");
    assert_eq!((job.backup, job.unlocked), (Some(id), true));
    assert_eq!(v.unlock_failures("lab-1", id).expect("failures").0, 0, "a success clears the count");
    // No password anywhere in the database files (read once the vault is
    // closed: reading a SQLite file while this process has it open would
    // drop the process's POSIX locks on it).
    drop(v);
    for f in std::fs::read_dir(&data).expect("data dir").flatten() {
        let bytes = std::fs::read(f.path()).unwrap_or_default();
        assert!(!bytes.windows(13).any(|w| w == b"correct horse"), "password in {}", f.path().display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `jobs add` goes through the vault's checks: a field the PC would refuse
/// (or read as a second setting) is refused here, naming the field.
#[test]
fn job_add_refuses_what_the_pc_would_refuse() {
    let data = std::env::temp_dir().join(format!("bv-jobs-cli-fields-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let v = Vault::open(&data).expect("vault");
    v.add_pc(&PcRow::new("lab-1", "52:54:00:aa:00:01")).expect("add pc");
    for (args, why) in [
        (&["--disk", "sda\nbackup=3"][..], "disk=\"sda\\nbackup=3\": expected auto or a disk name"),
        (&["--name", "nightly\nbackup=3"][..], "name=\"nightly\\nbackup=3\": '\\n' is not allowed"),
        (&["--backup", "0"][..], "backup=0: expected a backup id"),
    ] {
        let (ok, out) = jobs(&data, &[&["add", "lab-1", "restore"][..], args].concat(), None);
        assert!(!ok && out.contains(why), "{args:?}: {out}");
    }
    assert!(v.next_job("lab-1").expect("next").is_none(), "nothing queued");
    let (ok, out) = jobs(&data, &["add", "lab-1", "backup", "--disk", "nvme0n1", "--name", "weekly"], None);
    assert!(ok, "{out}");
    let _ = std::fs::remove_dir_all(&data);
}

/// The same admin commands against a running server (`--server`, the
/// admin token, the pinned certificate) instead of its data directory.
#[test]
fn jobs_and_backups_over_the_servers_api() {
    let dir = std::env::temp_dir().join(format!("bv-jobs-remote-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let v = Vault::open(&data).expect("vault");
    v.add_pc(&PcRow::new("lab-1", "52:54:00:aa:00:11")).expect("add pc");
    let backup = locked_backup(&v, "lab-1", b"correct horse");
    let port = bootvault_server::spawn_on_loopback_with(&data, Default::default(), bootvault_server::tls::Mode::Made)
        .expect("server");
    let fp = bootvault_server::tls::fingerprint_in(&data).expect("read").expect("made").to_string();
    let url = format!("https://127.0.0.1:{port}");
    let admin = v.admin_token().expect("token");
    let cli = |cmd: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bootvault"))
            .args([cmd, "--server", &url, "--fingerprint", &fp])
            .args(args)
            .env("BOOTVAULT_ADMIN_TOKEN", &admin)
            .output()
            .expect("runs bootvault");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, out) = cli("jobs", &["add", "lab-1", "backup", "--name", "nightly"]);
    assert!(ok && out.contains("job 1 queued for lab-1"), "{out}");
    let (ok, out) = cli("jobs", &["--json", "list"]);
    assert!(ok && out.contains("\"name\": \"nightly\"") && out.contains("\"state\": \"queued\""), "{out}");
    assert_eq!(v.list_jobs(None).expect("jobs").len(), 1, "the server's database has it");
    // The server's own checks answer, as on the data directory.
    let (ok, out) = cli("jobs", &["add", "lab-1", "backup", "--disk", "sda;reboot"]);
    assert!(!ok && out.contains("disk"), "{out}");
    let (ok, out) = cli("jobs", &["add", "nobody", "backup"]);
    assert!(!ok && out.contains("no registered PC nobody"), "{out}");
    // Password jobs stay on the data directory for now, and say so.
    let (ok, out) = cli("jobs", &["add", "lab-1", "restore", "--password-file", "-"]);
    assert!(!ok && out.contains("--data"), "{out}");
    let (ok, out) = cli("backups", &["list"]);
    assert!(ok && out.contains("lab-1"), "{out}");
    v.add_pc(&PcRow::new("lab-2", "52:54:00:aa:00:12")).expect("add pc");
    let id = backup.to_string();
    let (ok, out) = cli("backups", &["grant", &id, "lab-2"]);
    assert!(ok && out.contains(&format!("backup {id} may be restored by lab-2")), "{out}");
    assert_eq!(v.grants(backup).expect("grants"), ["lab-2"]);
    let (ok, out) = cli("backups", &["revoke", &id, "lab-2"]);
    assert!(ok && out.contains("none (owner only)"), "{out}");
    let (ok, out) = cli("backups", &["revoke", &id, "lab-2"]);
    assert!(!ok && out.contains("was not granted"), "{out}");
    let (ok, out) = cli("backups", &["verify", &id]);
    assert!(ok && out.contains("1 stored chunks verified"), "{out}");
    let (ok, out) = cli("backups", &["export", &id, "/dev/null"]);
    assert!(!ok && out.contains("--data"), "{out}");
    let (ok, out) = cli("backups", &["rm", &backup.to_string()]);
    assert!(ok, "{out}");
    assert!(v.backup(backup).expect("db").is_none());
    let (ok, out) = cli("jobs", &["results"]);
    assert!(ok, "{out}");
    // gc over HTTP: the deleted backup's chunk goes once it is old enough.
    let (ok, out) = cli("gc", &["--json"]);
    assert!(ok && out.contains("\"chunks_removed\""), "{out}");
    assert!(v.last_gc().expect("db") > 0);
    // A wrong token or a wrong certificate: refused, nothing done.
    let out = Command::new(env!("CARGO_BIN_EXE_bootvault"))
        .args(["jobs", "--server", &url, "--fingerprint", &fp, "--admin-token", "0000", "list"])
        .output()
        .expect("runs");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401"));
    let other = "00".repeat(32);
    let (ok, out) = {
        let out = Command::new(env!("CARGO_BIN_EXE_bootvault"))
            .args(["jobs", "--server", &url, "--fingerprint", &other, "list"])
            .env("BOOTVAULT_ADMIN_TOKEN", &admin)
            .output()
            .expect("runs");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert!(!ok && out.contains("refusing the server"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
