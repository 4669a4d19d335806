#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions
//! The vault's promises, without HTTP: verified chunks only, complete only
//! when everything is durable and present, dedup across backups and PCs,
//! abandoned uploads never complete and cleaned by gc, verify finds damage,
//! export/import round trip, jobs handed out once, restore passwords
//! (challenges, waits, tickets, jobs) and schema migrations.

use std::fs;
use std::path::{Path, PathBuf};

use bootvault_common::image::{self, Chunk, ChunkId, Manifest};
use bootvault_common::wire::{self, LockParams};
use bootvault_server::vault::{self, BackupLock, UnlockError, UnlockRefused, Vault};

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-vault-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn chunk(seed: u8) -> (Vec<u8>, ChunkId, Vec<u8>) {
    let plain: Vec<u8> = (0..4096u32).map(|i| (i as u8).wrapping_mul(seed) ^ seed).collect();
    let id = image::chunk_id(&plain);
    let blob = image::encode_blob(&plain, 1);
    (plain, id, blob)
}

fn manifest(pc: &str, ids: &[(ChunkId, u32)]) -> Manifest {
    let mut chunks: Vec<Chunk> = ids.iter().map(|(id, l)| Chunk::Data { id: *id, blob_len: *l }).collect();
    chunks.push(Chunk::Zero);
    bootvault_common::testdata::manifest_of(pc, chunks)
}

fn backup(v: &Vault, pc: &str, seeds: &[u8]) -> i64 {
    let m = manifest(pc, &seeds.iter().map(|s| (chunk(*s).1, chunk(*s).2.len() as u32)).collect::<Vec<_>>());
    let id = v.create_backup(pc, "full", m.disk_bytes, 4096).unwrap();
    for s in seeds {
        let (_, cid, blob) = chunk(*s);
        v.put_chunk(&cid, &blob, Some(id)).unwrap();
    }
    v.finish_backup(id, pc, &m.encode()).unwrap();
    id
}

fn chunk_files(dir: &Path) -> usize {
    fs::read_dir(dir.join("chunks")).unwrap().flatten().map(|d| fs::read_dir(d.path()).unwrap().count()).sum()
}

#[test]
fn complete_only_with_every_chunk_and_dedup_across_pcs() {
    let dir = temp("complete");
    let v = Vault::open(&dir).unwrap();
    let (_, a, blob_a) = chunk(3);
    let (_, b, blob_b) = chunk(5);
    let m = manifest("pc1", &[(a, blob_a.len() as u32), (b, blob_b.len() as u32)]);
    let id = v.create_backup("pc1", "full", m.disk_bytes, 4096).unwrap();
    assert_eq!(v.blob_len(&a), None);
    assert!(v.put_chunk(&a, &blob_a, Some(id)).unwrap());
    assert!(!v.put_chunk(&a, &blob_a, Some(id)).unwrap(), "second put is a no-op");
    // b missing: refused as a conflict, and the backup is not complete.
    let e = v.finish_backup(id, "pc1", &m.encode()).unwrap_err();
    assert!(e.conflict && e.message.contains("chunk 1 (offset 4096) is not in the store"), "{}", e.message);
    assert!(v.list_backups(None, false).unwrap().is_empty());
    // A blob that does not hash to its name is refused; nothing written.
    assert!(v.put_chunk(&b, &blob_a, Some(id)).unwrap_err().to_string().contains("hashes to"));
    assert_eq!(v.blob_len(&b), None);
    v.put_chunk(&b, &blob_b, Some(id)).unwrap();
    // Another PC's manifest cannot finish this backup; a damaged one neither.
    assert!(!v.finish_backup(id, "pc2", &m.encode()).unwrap_err().conflict);
    let mut bad = m.encode();
    bad[20] ^= 1;
    assert!(v.finish_backup(id, "pc1", &bad).unwrap_err().message.contains("bad manifest"));
    let row = v.finish_backup(id, "pc1", &m.encode()).unwrap();
    assert_eq!((row.state.as_str(), row.chunks, row.zero_chunks, row.received_chunks), ("complete", 3, 1, 2));
    assert_eq!(v.manifest(id).unwrap(), m.encode());
    assert_eq!(v.latest("pc1", None).unwrap(), Some(id));
    // Dedup: another PC's backup of the same chunks finds them all present.
    assert!(v.blob_len(&a).is_some() && v.blob_len(&b).is_some());
    let id2 = backup(&v, "pc2", &[3, 5]);
    assert_eq!(v.backup(id2).unwrap().unwrap().received_chunks, 0);
    assert_eq!(chunk_files(&dir), 2);
    let _ = fs::remove_dir_all(&dir);
}

/// Sets every chunk file's modification time `secs` into the past (as if
/// written, or last asked about, that long ago).
fn age_chunks(dir: &Path, secs: u64) {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
    for sub in fs::read_dir(dir.join("chunks")).unwrap().flatten() {
        for f in fs::read_dir(sub.path()).unwrap().flatten() {
            fs::OpenOptions::new().write(true).open(f.path()).unwrap().set_modified(then).unwrap();
        }
    }
}

#[test]
fn abandoned_uploads_and_gc() {
    let dir = temp("gc");
    let kept = {
        let v = Vault::open(&dir).unwrap();
        let kept = backup(&v, "pc1", &[3]);
        // A crash mid-upload: a chunk stored, the backup never finished.
        let half = v.create_backup("pc1", "full", 8192, 4096).unwrap();
        let (_, cid, blob) = chunk(7);
        v.put_chunk(&cid, &blob, Some(half)).unwrap();
        kept
    };
    let v = Vault::open(&dir).unwrap();
    let all = v.list_backups(None, true).unwrap();
    assert_eq!(all.iter().map(|b| b.state.as_str()).collect::<Vec<_>>(), ["complete", "uploading"]);
    assert_eq!(v.list_backups(None, false).unwrap().len(), 1, "the half backup is not listed as complete");
    // Young uploads are left alone, chunks and all.
    let r = v.gc(3600).unwrap();
    assert_eq!((r.stale_uploads, r.chunks_removed), (0, 0));
    assert_eq!(r.open_uploads.iter().map(|u| u.id).collect::<Vec<_>>(), [kept + 1], "gc says which upload is open");
    // Chunks written within gc's margin are kept even when unreferenced.
    let r = v.gc(0).unwrap();
    assert_eq!((r.stale_uploads, r.chunks_removed, r.chunks_kept, r.recent_kept), (1, 0, 1, 1));
    age_chunks(&dir, 2 * 3600);
    let r = v.gc(0).unwrap();
    assert_eq!((r.stale_uploads, r.chunks_removed, r.chunks_kept), (0, 1, 1));
    assert_eq!(v.list_backups(None, true).unwrap()[1].state, "failed");
    v.verify_backup(kept).unwrap();
    // Removing the last backup frees its chunks at the next gc.
    v.delete_backup(kept).unwrap();
    age_chunks(&dir, 2 * 3600);
    assert_eq!(v.gc(0).unwrap().chunks_removed, 1);
    assert_eq!(chunk_files(&dir), 0);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn verify_finds_damage_and_export_import_round_trip() {
    let dir = temp("verify");
    let v = Vault::open(&dir).unwrap();
    let id = backup(&v, "pc1", &[3, 5, 9]);
    assert_eq!(v.verify_backup(id).unwrap(), 3);
    let mut file = Vec::new();
    v.export(id, &mut file).unwrap();
    let other_dir = temp("verify-other");
    let other = Vault::open(&other_dir).unwrap();
    let imported = other.import(file.as_slice(), Some("pc9")).unwrap();
    assert_eq!(other.manifest(imported).unwrap(), v.manifest(id).unwrap());
    assert_eq!(other.backup(imported).unwrap().unwrap().pc, "pc9");
    other.verify_backup(imported).unwrap();
    // A damaged export is refused on import.
    let mut bad = file.clone();
    let mid = bad.len() / 3;
    bad[mid] ^= 0x10;
    assert!(other.import(bad.as_slice(), None).is_err());
    // Damage a stored chunk: verify names the chunk and its offset.
    let (_, cid, _) = chunk(5);
    let hex = image::hex(&cid);
    let p = dir.join("chunks").join(&hex[..2]).join(&hex);
    let mut b = fs::read(&p).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0xFF;
    fs::write(&p, b).unwrap();
    let e = v.verify_backup(id).unwrap_err().to_string();
    assert!(e.contains("chunk 1 at offset 4096"), "{e}");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&other_dir);
}

#[test]
fn jobs_are_handed_out_once_and_results_recorded() {
    let dir = temp("jobs");
    let v = Vault::open(&dir).unwrap();
    v.add_pc(&pc_row("pc1", "52:54:00:00:00:01")).unwrap();
    v.add_pc(&pc_row("pc2", "52:54:00:00:00:02")).unwrap();
    let master = v.create_backup("pc2", "master", 4096, 4096).unwrap();
    assert!(v.add_job("pc1", "format", "auto", "", None).is_err());
    assert!(v.add_job("nobody", "backup", "auto", "", None).unwrap_err().to_string().contains("no registered PC"));
    assert!(v.add_job("pc1", "restore", "auto", "", Some(999)).unwrap_err().to_string().contains("no backup 999"));
    // Restoring pc2's backup on pc1 by the admin's job grants it.
    let j = v.add_job("pc1", "restore", "auto", "", Some(master)).unwrap();
    assert_eq!(v.grants(master).unwrap(), vec!["pc1".to_string()]);
    assert!(v.next_job("pc2").unwrap().is_none());
    let got = v.next_job("pc1").unwrap().unwrap();
    assert_eq!((got.id, got.action.as_str(), got.backup, got.state.as_str()), (j, "restore", Some(master), "running"));
    assert!(v.next_job("pc1").unwrap().is_none(), "handed out once");
    v.record_result("pc1", Some(j), "restore", "vda", Some(master), true, "fine", 10, 5, 1.5).unwrap();
    assert_eq!(v.list_jobs(None).unwrap()[0].state, "done");
    let r = &v.list_results(Some("pc1")).unwrap()[0];
    assert_eq!((r.ok, r.disk.as_str(), r.bytes, r.sent), (true, "vda", 10, 5));
    let _ = fs::remove_dir_all(&dir);
}

fn pc_row(name: &str, mac: &str) -> bootvault_server::vault::PcRow {
    bootvault_server::vault::PcRow::new(name, mac)
}

#[test]
fn registered_pcs_tokens_and_the_backup_guard() {
    let dir = temp("pcs");
    let v = Vault::open(&dir).unwrap();
    // A PC merely seen (hello) is not registered.
    v.seen_pc("stray", "52:54:00:00:00:99", "10.0.2.15").unwrap();
    assert!(v.list_pcs().unwrap().is_empty());
    let a = v.add_pc(&pc_row("lab-1", "52:54:00:00:00:01")).unwrap();
    let b = v.add_pc(&pc_row("lab-2", "52:54:00:00:00:02")).unwrap();
    assert_eq!(a.token.len(), 64);
    assert!(a.token.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a.token, b.token);
    assert!(v.add_pc(&pc_row("lab-1", "52:54:00:00:00:03")).unwrap_err().to_string().contains("already registered"));
    let e = v.add_pc(&pc_row("lab-3", "52:54:00:00:00:01")).unwrap_err().to_string();
    assert_eq!(e, "MAC 52:54:00:00:00:01 is already registered to PC lab-1");
    // Edit keeps the token; a MAC clash is refused.
    let mut edited = pc_row("lab-1", "52:54:00:00:00:11");
    edited.ip = "10.1.1.5/24".into();
    let after = v.edit_pc(&edited).unwrap();
    assert_eq!((after.ip.as_str(), after.token.as_str()), ("10.1.1.5/24", a.token.as_str()));
    assert!(v.edit_pc(&pc_row("lab-1", "52:54:00:00:00:02")).is_err());
    // Seen after registration: last_seen shows up.
    v.seen_pc("lab-1", "", "10.1.1.5").unwrap();
    assert!(v.pc("lab-1").unwrap().unwrap().last_seen.is_some());
    // rm refuses while backups exist, unless asked to remove them too.
    let id = backup(&v, "lab-1", &[3]);
    let e = v.remove_pc("lab-1", false).unwrap_err().to_string();
    assert!(e.contains("has 1 backups"), "{e}");
    assert_eq!(v.remove_pc("lab-1", true).unwrap(), 1);
    assert!(v.backup(id).unwrap().is_none());
    assert_eq!(v.list_pcs().unwrap().len(), 1);
    let _ = fs::remove_dir_all(&dir);
}

/// A data directory made before PCs could be registered (schema 1) opens
/// and keeps its backups.
#[test]
fn schema_1_databases_are_migrated() {
    let dir = temp("migrate");
    fs::create_dir_all(&dir).unwrap();
    {
        let db = rusqlite::Connection::open(dir.join("bootvault.db")).unwrap();
        db.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO meta VALUES ('schema_version', '1');
             CREATE TABLE pcs (name TEXT PRIMARY KEY, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
                 last_mac TEXT NOT NULL DEFAULT '', last_addr TEXT NOT NULL DEFAULT '');
             INSERT INTO pcs VALUES ('old', 1, 2, '', '');",
        )
        .unwrap();
    }
    let v = Vault::open(&dir).unwrap();
    assert!(v.list_pcs().unwrap().is_empty(), "seen PCs are not registered by the migration");
    v.add_pc(&pc_row("old", "52:54:00:00:00:05")).unwrap();
    drop(v);
    let v = Vault::open(&dir).unwrap();
    assert_eq!(v.list_pcs().unwrap()[0].mac, "52:54:00:00:00:05");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn grants_pending_and_settings() {
    let dir = temp("grants");
    let v = Vault::open(&dir).unwrap();
    let token = fs::read_to_string(v.admin_token_path()).unwrap();
    assert_eq!(token.trim().len(), 64);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(v.admin_token_path()).unwrap().permissions().mode() & 0o777, 0o600);
    drop(v);
    let v = Vault::open(&dir).unwrap();
    assert_eq!(v.admin_token().unwrap(), token.trim(), "the admin token survives reopening");

    for (n, m) in [("a", "52:54:00:00:00:0a"), ("b", "52:54:00:00:00:0b"), ("c", "52:54:00:00:00:0c")] {
        v.add_pc(&pc_row(n, m)).unwrap();
    }
    assert_eq!(v.pc_token("a").unwrap(), Some(v.pc("a").unwrap().unwrap().token));
    assert_eq!(v.pc_token("stranger").unwrap(), None);
    assert_eq!(v.pc_by_mac("52-54-00-00-00-0B").unwrap().unwrap().name, "b");
    let id = v.create_backup("a", "master", 4096, 4096).unwrap();
    let row = v.backup(id).unwrap().unwrap();
    assert!(v.can_read("a", &row).unwrap() && !v.can_read("b", &row).unwrap());
    v.grant(id, "b").unwrap();
    assert!(v.can_read("b", &row).unwrap() && !v.can_read("c", &row).unwrap());
    assert!(v.grant(id, "nobody").is_err());
    v.grant(id, "*").unwrap();
    assert!(v.can_read("c", &row).unwrap());
    assert_eq!(v.grants(id).unwrap(), vec!["*".to_string(), "b".to_string()]);
    assert!(v.revoke(id, "*").unwrap() && !v.revoke(id, "*").unwrap());
    assert!(!v.can_read("c", &row).unwrap());
    // Only complete backups are visible to PCs.
    assert!(v.visible_backups("b").unwrap().is_empty());
    v.remove_pc("b", false).unwrap();
    assert!(v.grants(id).unwrap().is_empty(), "an unregistered PC's grants go with it");

    let e = v.publish_boot_files("b", &[("cmdline", b"x".to_vec())]).unwrap_err().to_string();
    assert_eq!(e, "no registered PC b");
    let n = v.publish_boot_files("a", &[("vmlinuz", vec![1; 10]), ("cmdline", b"quiet\n".to_vec())]).unwrap();
    assert_eq!(n, 16);
    assert_eq!(fs::read(v.boot_dir("a").join("cmdline")).unwrap(), b"quiet\n");
    assert_eq!(fs::read(v.boot_dir("a").join("vmlinuz")).unwrap(), vec![1; 10]);

    let now = bootvault_server::vault::now();
    v.note_pending("52:54:00:aa:bb:cc", "10.0.2.15", now, true).unwrap();
    v.note_pending("52:54:00:AA:BB:CC", "10.0.2.16", now, true).unwrap();
    let p = v.list_pending(now).unwrap();
    assert_eq!((p.len(), p[0].count, p[0].addr.as_str()), (1, 2, "10.0.2.16"));
    assert!(v.forget_pending("52:54:00:aa:bb:cc").unwrap());
    assert!(v.list_pending(now).unwrap().is_empty());

    assert_eq!(v.setting("server_urls").unwrap(), None);
    v.set_setting("server_urls", Some("http://10.0.0.1:8080")).unwrap();
    assert_eq!(v.setting("server_urls").unwrap().as_deref(), Some("http://10.0.0.1:8080"));
    v.set_setting("server_urls", None).unwrap();
    assert_eq!(v.setting("server_urls").unwrap(), None);
    assert!(bootvault_server::vault::secret_eq("abc", "abc"));
    assert!(!bootvault_server::vault::secret_eq("abc", "abd") && !bootvault_server::vault::secret_eq("", ""));
    let _ = fs::remove_dir_all(&dir);
}

fn test_lock(key: u8) -> BackupLock {
    BackupLock {
        kdf: bootvault_common::wire::Kdf::Argon2id,
        params: LockParams { m_kib: 64, t_cost: 1, p: 1 },
        salt: [1; 16],
        key: [key; 32],
    }
}

/// A locked backup, complete, of `pc`.
fn locked_backup(v: &Vault, pc: &str, lock: &BackupLock) -> i64 {
    let m = manifest(pc, &[(chunk(3).1, chunk(3).2.len() as u32)]);
    let id = v.create_backup_locked(pc, "full", m.disk_bytes, 4096, Some(lock)).unwrap();
    v.put_chunk(&chunk(3).1, &chunk(3).2, Some(id)).unwrap();
    v.finish_backup(id, pc, &m.encode()).unwrap();
    id
}

/// Answers a challenge with the key `key` would derive.
fn answer(v: &Vault, pc: &str, id: i64, key: &[u8; 32], now: i64) -> Result<String, UnlockError> {
    let c = v.challenge(pc, id, now)?.expect("locked");
    v.unlock(pc, id, &c.nonce, &wire::unlock_proof(key, &c.nonce, pc, id), now)
}

/// Five free tries, then waits of 30 s doubling to an hour since the last
/// failure, kept in the database across restarts; a success clears them.
/// Time is passed in, so no test sleeps.
#[test]
fn unlock_challenges_waits_and_tickets() {
    assert_eq!(
        [0, 4, 5, 6, 7, 11, 12, 60].map(vault::unlock_wait),
        [0, 0, 30, 60, 120, 1920, 3600, 3600],
        "seconds to wait after N failures"
    );
    let dir = temp("unlock");
    let v = Vault::open(&dir).unwrap();
    let lock = test_lock(7);
    let id = locked_backup(&v, "pc1", &lock);
    let open = backup(&v, "pc1", &[5]);
    assert_eq!(v.backup_lock(id).unwrap(), Some(lock.clone()));
    assert!(v.backup(id).unwrap().unwrap().locked && !v.backup(open).unwrap().unwrap().locked);
    assert_eq!(v.challenge("pc1", open, 0).unwrap(), None);
    assert_eq!(v.challenge("pc1", 999, 0).unwrap_err().kind, UnlockRefused::NoBackup);

    let t0 = 1_000_000;
    let ticket = answer(&v, "pc1", id, &[7; 32], t0).unwrap();
    assert!(v.ticket_ok("pc1", id, &ticket, t0 + vault::TICKET_SECONDS - 1));
    assert!(!v.ticket_ok("pc1", id, &ticket, t0 + vault::TICKET_SECONDS), "expired");
    assert!(!v.ticket_ok("pc2", id, &ticket, t0) && !v.ticket_ok("pc1", open, &ticket, t0), "bound to pc+backup");
    assert!(!v.ticket_ok("pc1", id, "0000", t0));

    // Nonces: single use, short-lived, one open per pc+backup.
    let c = v.challenge("pc1", id, t0).unwrap().unwrap();
    let proof = wire::unlock_proof(&[7; 32], &c.nonce, "pc1", id);
    v.unlock("pc1", id, &c.nonce, &proof, t0).unwrap();
    assert_eq!(v.unlock("pc1", id, &c.nonce, &proof, t0).unwrap_err().kind, UnlockRefused::NoChallenge, "replayed");
    let c = v.challenge("pc1", id, t0).unwrap().unwrap();
    let proof = wire::unlock_proof(&[7; 32], &c.nonce, "pc1", id);
    let late = t0 + vault::CHALLENGE_SECONDS;
    assert_eq!(v.unlock("pc1", id, &c.nonce, &proof, late).unwrap_err().kind, UnlockRefused::NoChallenge, "expired");
    let first = v.challenge("pc1", id, t0).unwrap().unwrap();
    let _second = v.challenge("pc1", id, t0).unwrap().unwrap();
    let proof = wire::unlock_proof(&[7; 32], &first.nonce, "pc1", id);
    assert_eq!(v.unlock("pc1", id, &first.nonce, &proof, t0).unwrap_err().kind, UnlockRefused::NoChallenge);
    // A proof made for another PC or backup is wrong here.
    let c = v.challenge("pc1", id, t0).unwrap().unwrap();
    let e = v.unlock("pc1", id, &c.nonce, &wire::unlock_proof(&[7; 32], &c.nonce, "pc2", id), t0).unwrap_err();
    assert_eq!(
        (e.kind, e.message),
        (UnlockRefused::Wrong, format!("wrong password for backup {id} (4 tries left before a wait)"))
    );

    for (n, left) in [(2, "3 tries left before a wait"), (3, "2 tries left"), (4, "1 try left before a wait")] {
        let e = answer(&v, "pc1", id, &[8; 32], t0 + n).unwrap_err();
        assert!(e.kind == UnlockRefused::Wrong && e.message.contains(left), "{e:?}");
    }
    let e = answer(&v, "pc1", id, &[8; 32], t0 + 5).unwrap_err();
    assert_eq!(e.message, format!("wrong password for backup {id} (try again in 30 s)"));
    // Waiting: refused without looking at the proof, the right one included.
    let e = answer(&v, "pc1", id, &[7; 32], t0 + 25).unwrap_err();
    assert_eq!(
        (e.kind, e.message),
        (UnlockRefused::Wait, format!("too many wrong passwords for backup {id} from pc1; try again in 10 s"))
    );
    let c = v.challenge("pc1", id, t0 + 5).err().unwrap();
    assert_eq!(c.kind, UnlockRefused::Wait, "no challenge while waiting either");
    assert_eq!(v.unlock_failures("pc1", id).unwrap(), (5, t0 + 5), "waiting tries do not count");
    // Another PC has its own count.
    answer(&v, "pc2", id, &[7; 32], t0 + 6).unwrap();
    // A restart keeps the count.
    drop(v);
    let v = Vault::open(&dir).unwrap();
    assert_eq!(answer(&v, "pc1", id, &[7; 32], t0 + 34).unwrap_err().kind, UnlockRefused::Wait);
    // After the wait a wrong try doubles it.
    let e = answer(&v, "pc1", id, &[8; 32], t0 + 35).unwrap_err();
    assert_eq!(e.message, format!("wrong password for backup {id} (try again in 60 s)"));
    let e = answer(&v, "pc1", id, &[7; 32], t0 + 94).unwrap_err();
    assert!(e.message.ends_with("try again in 1 s"), "{e:?}");
    answer(&v, "pc1", id, &[7; 32], t0 + 95).unwrap();
    assert_eq!(v.unlock_failures("pc1", id).unwrap(), (0, 0), "a success clears the count");
    let _ = fs::remove_dir_all(&dir);
}

/// Jobs carry passwords, never in plain text: a backup job its lock (once,
/// to the PC), a restore job of a locked backup only once unlocked.
#[test]
fn jobs_with_passwords() {
    let dir = temp("job-locks");
    let v = Vault::open(&dir).unwrap();
    v.add_pc(&pc_row("pc1", "52:54:00:00:00:01")).unwrap();
    let lock = test_lock(7);
    let id = locked_backup(&v, "pc1", &lock);
    let e = v.add_job("pc1", "restore", "auto", "", Some(id)).unwrap_err().to_string();
    assert_eq!(e, format!("backup {id} is protected by a password: give the job --password-file FILE"));
    let e = v.add_job("pc1", "restore", "auto", "", None).unwrap_err().to_string();
    assert!(e.contains(&format!("the latest backup of pc1 ({id}) is protected by a password")), "{e}");
    assert!(v.add_job_with("pc1", "restore", "auto", "", None, None, true, None).is_err(), "unlocked needs an id");
    assert!(v.add_job_with("pc1", "restore", "auto", "", Some(id), Some(&lock), false, None).is_err());
    let b = v.add_job_with("pc1", "backup", "auto", "weekly", None, Some(&lock), false, None).unwrap();
    let r = v.add_job_with("pc1", "restore", "auto", "", Some(id), None, true, None).unwrap();
    assert!(!serde_json::to_string(&v.list_jobs(None).unwrap()).unwrap().contains("argon2id"), "never listed");
    let got = v.next_job("pc1").unwrap().unwrap();
    assert_eq!((got.id, got.lock.as_deref()), (b, Some(lock.to_text().as_str())));
    assert_eq!(BackupLock::from_text(got.lock.as_deref().unwrap()).unwrap(), lock);
    assert_eq!(v.list_jobs(None).unwrap()[0].lock, None, "handed to the PC once, then dropped");
    let got = v.next_job("pc1").unwrap().unwrap();
    assert_eq!((got.id, got.unlocked, got.backup), (r, true, Some(id)));
    let _ = fs::remove_dir_all(&dir);
}

/// A schema 3 database (before restore passwords) opens as schema 4 and
/// keeps its backups and jobs, unlocked.
#[test]
fn schema_3_databases_are_migrated() {
    let dir = temp("migrate-3");
    fs::create_dir_all(&dir).unwrap();
    {
        let db = rusqlite::Connection::open(dir.join("bootvault.db")).unwrap();
        db.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO meta VALUES ('schema_version', '3');
             CREATE TABLE pcs (name TEXT PRIMARY KEY, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
                 last_mac TEXT NOT NULL DEFAULT '', last_addr TEXT NOT NULL DEFAULT '',
                 registered INTEGER NOT NULL DEFAULT 0, mac TEXT NOT NULL DEFAULT '', ip TEXT NOT NULL DEFAULT 'dhcp',
                 gateway TEXT NOT NULL DEFAULT '', dns TEXT NOT NULL DEFAULT '', mode TEXT NOT NULL DEFAULT 'network',
                 disk TEXT NOT NULL DEFAULT 'auto', default_action TEXT NOT NULL DEFAULT 'menu',
                 token TEXT NOT NULL DEFAULT '');
             CREATE TABLE backups (id INTEGER PRIMARY KEY AUTOINCREMENT, pc TEXT NOT NULL, name TEXT NOT NULL,
                 state TEXT NOT NULL CHECK (state IN ('uploading','complete','failed')),
                 created INTEGER NOT NULL, finished INTEGER, disk_bytes INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
                 chunks INTEGER NOT NULL DEFAULT 0, zero_chunks INTEGER NOT NULL DEFAULT 0,
                 blob_bytes INTEGER NOT NULL DEFAULT 0, received_bytes INTEGER NOT NULL DEFAULT 0,
                 received_chunks INTEGER NOT NULL DEFAULT 0, digest TEXT NOT NULL DEFAULT '',
                 reason TEXT NOT NULL DEFAULT '');
             INSERT INTO backups (pc, name, state, created, disk_bytes, chunk_size) VALUES ('old', 'full', 'failed', 1, 4096, 4096);
             CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, pc TEXT NOT NULL, action TEXT NOT NULL,
                 disk TEXT NOT NULL, name TEXT NOT NULL, backup INTEGER,
                 state TEXT NOT NULL CHECK (state IN ('queued','running','done','failed')),
                 created INTEGER NOT NULL, started INTEGER, finished INTEGER);
             INSERT INTO jobs (pc, action, disk, name, state, created) VALUES ('old', 'backup', 'auto', '', 'queued', 1);
             CREATE TABLE grants (backup INTEGER NOT NULL, pc TEXT NOT NULL, created INTEGER NOT NULL,
                 PRIMARY KEY (backup, pc));",
        )
        .unwrap();
    }
    let v = Vault::open(&dir).unwrap();
    let b = v.backup(1).unwrap().unwrap();
    assert_eq!((b.state.as_str(), b.locked, b.model.as_str()), ("failed", false, ""));
    assert_eq!(v.backup_lock(1).unwrap(), None);
    let j = v.next_job("old").unwrap().unwrap();
    assert_eq!((j.lock, j.unlocked, j.wrap), (None, false, None));
    assert_eq!(v.unlock_failures("old", 1).unwrap(), (0, 0));
    drop(v);
    let db = rusqlite::Connection::open(dir.join("bootvault.db")).unwrap();
    let version: String =
        db.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(version, "8");
    drop(db);
    let v = Vault::open(&dir).unwrap(); // the migration runs once
                                        // Schema 7's and 8's tables work on a migrated database.
    v.add_admin("ann", "correct horse battery").unwrap();
    assert_eq!(v.list_admins().unwrap().len(), 1);
    let ticket = v.issue_ticket("old", 1, 100).unwrap();
    assert!(v.ticket_ok("old", 1, &ticket, 101));
    let _ = fs::remove_dir_all(&dir);
}
