#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions
//! Two servers (two `Vault`s, as two `bootvault serve` processes have) on
//! one real PostgreSQL database and one real S3 bucket (Garage), both
//! started by the test: a restore password unlocked through one server is
//! good on the other (challenges and tickets live in the database, used
//! once whichever server is asked), and gc on one server while backups
//! complete through the other keeps every chunk they name (the store lock
//! is PostgreSQL's, across servers).

use std::fs;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use bootvault_common::wire::{self, LockParams};
use bootvault_server::blobs_s3::S3BlobStore;
use bootvault_server::db::postgres::PgDb;
use bootvault_server::db::Pending;
use bootvault_server::s3::S3Client;
use bootvault_server::testenv::Postgres;
use bootvault_server::testenv_s3::Garage;
use bootvault_server::vault::{self, BackupLock, GcPhase, PcRow, UnlockRefused, Vault};

#[path = "support/backups.rs"]
mod backups;
use backups::{chunk, gc_held, pc_backup};

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-across-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// gc's margin shortened to 6 s for this test binary (S3 objects' times
/// cannot be set back, so the test waits instead).
fn short_gc_margin() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("BOOTVAULT_GC_MARGIN", "6"));
}

/// Two servers' vaults, each with its own data directory, on one database
/// and one bucket prefix.
fn two_servers(dir: &std::path::Path, pg: &Postgres, garage: &Garage, name: &str) -> (Vault, Vault) {
    let url = pg.new_database(name).unwrap();
    let open = |tag: &str| {
        let store = S3BlobStore::with_client(S3Client::new(garage.config(name).unwrap())).unwrap();
        Vault::with(&dir.join(tag), Box::new(PgDb::connect(&url).unwrap()), Box::new(store)).unwrap()
    };
    (open("server-a"), open("server-b"))
}

#[test]
fn a_password_unlocked_through_one_server_opens_the_backup_on_the_other() {
    let dir = temp("unlock");
    let (pg, garage) = (Postgres::start(&dir.join("pg")).unwrap(), Garage::start(&dir.join("garage")).unwrap());
    let (a, b) = two_servers(&dir, &pg, &garage, "unlock");
    a.add_pc(&PcRow::new("pc-one", "52:54:00:00:00:01")).unwrap();
    let lock = BackupLock {
        kdf: wire::Kdf::Argon2id,
        params: LockParams { m_kib: 64, t_cost: 1, p: 1 },
        salt: [1; 16],
        key: [7; 32],
    };
    let id = a.create_backup_locked("pc-one", "locked", 4096, 4096, Some(&lock)).unwrap();
    let now = vault::now();

    // The challenge from A, the answer through B, the ticket good on A.
    let ch = a.challenge("pc-one", id, now).unwrap().expect("locked");
    let proof = wire::unlock_proof(&lock.key, &ch.nonce, "pc-one", id);
    let ticket = b.unlock("pc-one", id, &ch.nonce, &proof, now).unwrap();
    assert!(a.ticket_ok("pc-one", id, &ticket, now), "a ticket from B opens the backup on A");
    assert!(b.ticket_ok("pc-one", id, &ticket, now));
    assert!(!a.ticket_ok("pc-two", id, &ticket, now), "for its PC only");
    assert!(!a.ticket_ok("pc-one", id + 1, &ticket, now), "for its backup only");
    assert!(!a.ticket_ok("pc-one", id, &ticket, now + 25 * 3600), "for a day");
    assert!(!a.ticket_ok("pc-one", id, "00", now));
    // The challenge was used up by B: answering it again through A fails.
    let again = a.unlock("pc-one", id, &ch.nonce, &proof, now).unwrap_err();
    assert!(matches!(again.kind, UnlockRefused::NoChallenge), "{}", again.message);
    // Wrong passwords through either server count together.
    for v in [&a, &b, &a, &b, &a] {
        let ch = v.challenge("pc-one", id, now).unwrap().unwrap();
        let wrong = wire::unlock_proof(&[9; 32], &ch.nonce, "pc-one", id);
        let e = [&b, &a][usize::from(std::ptr::eq(v, &b))].unlock("pc-one", id, &ch.nonce, &wrong, now).unwrap_err();
        assert!(matches!(e.kind, UnlockRefused::Wrong), "{}", e.message);
    }
    let e = b.challenge("pc-one", id, now).unwrap_err();
    assert!(matches!(e.kind, UnlockRefused::Wait), "five wrong ones across both servers: {}", e.message);

    // Unknown MACs from one peer, through both servers: one rate for both.
    let listed = (0..20)
        .filter(|i| {
            let v = if i % 2 == 0 { &a } else { &b };
            v.note_pending_from(&format!("52:54:00:aa:00:{i:02x}"), "10.9.9.9", now).unwrap() == Pending::Added
        })
        .count();
    assert_eq!(listed as i64, bootvault_server::netboot::NEW_PENDING_PER_PEER);
    assert_eq!(
        a.note_pending_from("52:54:00:aa:01:00", "10.9.9.8", now).unwrap(),
        Pending::Added,
        "another peer has its own count"
    );
    drop((a, b));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn gc_on_one_server_keeps_what_backups_through_the_other_name() {
    short_gc_margin();
    let (margin, _) = vault::gc_margins();
    let dir = temp("gc");
    let (pg, garage) = (Postgres::start(&dir.join("pg")).unwrap(), Garage::start(&dir.join("garage")).unwrap());
    let (a, b) = two_servers(&dir, &pg, &garage, "gc");
    // Garbage, older than gc's margin: chunks no backup names (yet).
    for s in 1000..1300 {
        let (cid, blob) = chunk(s);
        b.put_chunk(&cid, &blob, None).unwrap();
    }
    std::thread::sleep(Duration::from_secs(margin as u64 + 2));

    let (to_test, from_gc) = mpsc::channel::<GcPhase>();
    let (to_gc, go_on) = mpsc::channel::<()>();
    let gc_vault = &a;
    let (report, done) = std::thread::scope(|s| {
        let gc = s.spawn(move || gc_held(gc_vault, to_test, go_on));
        let mut done = Vec::new();
        // Through B, at each of A's gc phases, backups reusing the old chunks.
        assert_eq!(from_gc.recv().unwrap(), GcPhase::Started);
        done.push(pc_backup(&b, "pc-b", &[1000, 1001, 1002, 2]));
        to_gc.send(()).unwrap();
        assert_eq!(from_gc.recv().unwrap(), GcPhase::Marked);
        done.push(pc_backup(&b, "pc-c", &[1003, 1004, 3]));
        to_gc.send(()).unwrap();
        assert_eq!(from_gc.recv().unwrap(), GcPhase::Swept);
        // With chunks from every group, the swept one included.
        done.push(pc_backup(&b, "pc-d", &(1100..1200).collect::<Vec<_>>()));
        to_gc.send(()).unwrap();
        (gc.join().unwrap(), done)
    });
    for id in &done {
        assert_eq!(b.backup(*id).unwrap().unwrap().state, "complete");
        a.verify_backup(*id).unwrap_or_else(|e| panic!("backup {id} lost a chunk to gc on the other server: {e:#}"));
    }
    assert!(report.chunks_removed > 0, "the garbage nobody named went: {report:?}");
    // Every chunk no backup names and untouched since is gone; the rest stay.
    let named: usize = 4 + 3 + 100;
    assert!(report.chunks_removed as usize <= 300 + 3 - named, "{report:?}");
    for s in 1200..1300 {
        assert_eq!(b.missing(done[0], None, &[chunk(s).0]).unwrap(), vec![0], "chunk {s} was garbage");
    }
    drop((a, b));
    let _ = fs::remove_dir_all(&dir);
}
