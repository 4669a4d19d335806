#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions
//! One scenario drives every [`Database`] method and checks what comes
//! back; it runs on SQLite and on a real PostgreSQL the test starts, with
//! the same assertions: the two implementations must not differ. Then the
//! guarantees PostgreSQL must keep across servers sharing it: schema
//! creation raced, each job handed out once, the pending list's cap, and
//! the unlock-failure counts.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::sync::Barrier;

use bootvault_common::wire::{Kdf, LockParams};
use bootvault_server::db::postgres::PgDb;
use bootvault_server::db::sqlite::SqliteDb;
use bootvault_server::db::{
    Completion, Database, NewBackup, NewJob, NewResult, OpenUpload, PcRow, Pending, PendingRules,
};
use bootvault_server::testenv::Postgres;
use bootvault_server::unlock::BackupLock;

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-dbconf-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn err(r: anyhow::Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

fn upload<'a>(pc: &'a str, name: &'a str, created: i64, lock: Option<&'a BackupLock>) -> NewBackup<'a> {
    NewBackup { pc, name, created, last_active: 0, disk_bytes: 1 << 30, chunk_size: 4 << 20, lock }
}

fn job<'a>(pc: &'a str, action: &'a str) -> NewJob<'a> {
    NewJob { pc, action, disk: "auto", name: "disk", backup: None, lock: None, unlocked: false, wrap: None }
}

fn result<'a>(pc: &'a str, job: Option<i64>, ok: bool, message: &'a str) -> NewResult<'a> {
    NewResult { pc, job, action: "backup", disk: "auto", backup: None, ok, message, bytes: 10, sent: 5, seconds: 1.5 }
}

fn names(db: &dyn Database) -> Vec<String> {
    db.list_pcs().unwrap().into_iter().map(|p| p.name).collect()
}

fn ids(rows: &[bootvault_server::db::BackupRow]) -> Vec<i64> {
    rows.iter().map(|b| b.id).collect()
}

/// Every method of the trait, with the results each must give.
fn scenario(db: &dyn Database) {
    pcs(db);
    let (b1, b4) = backups(db);
    grants_and_unlock_failures(db, b1, b4);
    pending(db);
    settings(db);
    jobs(db, b1);
    admins(db);
    challenges_and_tickets(db);
}

/// Restore passwords' challenges (single use, replaced, expired) and
/// tickets (by hash, expired ones dropped).
fn challenges_and_tickets(db: &dyn Database) {
    let (n1, n2) = ([1u8; 32], [2u8; 32]);
    assert_eq!(db.take_challenge("pc-a", 7).unwrap(), None);
    db.put_challenge("pc-a", 7, &n1, 1300, 1000).unwrap();
    db.put_challenge("pc-a", 7, &n2, 1300, 1000).unwrap();
    db.put_challenge("pc-b", 7, &n1, 1100, 1000).unwrap();
    assert_eq!(db.take_challenge("pc-a", 7).unwrap(), Some((n2, 1300)), "the newer replaces the older");
    assert_eq!(db.take_challenge("pc-a", 7).unwrap(), None, "single use");
    // Opening another drops the expired ones.
    db.put_challenge("pc-c", 8, &n1, 1500, 1200).unwrap();
    assert_eq!(db.take_challenge("pc-b", 7).unwrap(), None, "expired at 1100, dropped at 1200");
    assert_eq!(db.take_challenge("pc-c", 8).unwrap(), Some((n1, 1500)));

    assert_eq!(db.ticket("h1").unwrap(), None);
    db.add_ticket("h1", "pc-a", 7, 2000, 1000).unwrap();
    db.add_ticket("h2", "pc-b", 9, 1500, 1000).unwrap();
    assert_eq!(db.ticket("h1").unwrap(), Some(("pc-a".into(), 7, 2000)));
    db.add_ticket("h3", "pc-c", 9, 3000, 1600).unwrap();
    assert_eq!(db.ticket("h2").unwrap(), None, "expired tickets are dropped");
    assert_eq!(db.ticket("h3").unwrap(), Some(("pc-c".into(), 9, 3000)));
}

fn pcs(db: &dyn Database) {
    assert_eq!(db.pc_token("a").unwrap(), None);
    db.add_pc(&PcRow::new("a", "aa:aa"), "tok-a", 100).unwrap();
    assert_eq!(db.pc_token("a").unwrap().as_deref(), Some("tok-a"));
    assert_eq!(err(db.add_pc(&PcRow::new("a", "ff:ff"), "t", 101)), "PC a is already registered");
    assert_eq!(err(db.add_pc(&PcRow::new("b", "aa:aa"), "t", 101)), "MAC aa:aa is already registered to PC a");
    // No MAC is no clash.
    db.add_pc(&PcRow::new("b", ""), "tok-b", 102).unwrap();
    db.add_pc(&PcRow::new("c", ""), "tok-c", 103).unwrap();

    // A PC merely seen is not registered, until an admin adds it.
    db.seen_pc("d", "dd:dd", "10.0.0.4", 110).unwrap();
    assert_eq!(db.pc_token("d").unwrap(), None);
    assert_eq!(names(db), ["a", "b", "c"]);
    assert_eq!(err(db.edit_pc(&PcRow::new("d", ""))), "no registered PC d");
    assert!(!db.set_pc_token("d", "x").unwrap());
    assert!(!db.set_pc_quota("d", Some(5)).unwrap());
    db.add_pc(&PcRow::new("d", "dd:dd"), "tok-d", 111).unwrap();
    let d = db.list_pcs().unwrap().into_iter().find(|p| p.name == "d").unwrap();
    assert_eq!((d.last_seen, d.last_addr.as_str(), d.token.as_str()), (Some(110), "10.0.0.4", "tok-d"));

    db.seen_pc("a", "", "10.0.0.1", 120).unwrap();
    db.seen_pc("a", "", "", 130).unwrap();
    let a = db.list_pcs().unwrap().into_iter().next().unwrap();
    assert_eq!(a, {
        let mut a = PcRow::new("a", "aa:aa");
        a.token = "tok-a".into();
        a.last_seen = Some(130);
        a.last_addr = "10.0.0.1".into();
        a
    });

    let mut b = PcRow::new("b", "aa:aa");
    assert_eq!(err(db.edit_pc(&b)), "MAC aa:aa is already registered to PC a");
    b.mac = "bb:bb".into();
    b.ip = "10.0.0.2/24".into();
    b.gateway = "10.0.0.254".into();
    b.dns = "10.0.0.53".into();
    b.mode = "local".into();
    b.disk = "/dev/sda".into();
    b.default_action = "backup".into();
    db.edit_pc(&b).unwrap();
    // Keeping its own MAC is no clash.
    db.edit_pc(&PcRow::new("a", "aa:aa")).unwrap();
    let listed = db.list_pcs().unwrap();
    let got = listed.iter().find(|p| p.name == "b").unwrap();
    b.token = "tok-b".into();
    assert_eq!(*got, b, "edit_pc replaces the settings, not the token");
    assert_eq!(err(db.edit_pc(&PcRow::new("zz", ""))), "no registered PC zz");

    assert!(db.set_pc_token("a", "tok-a2").unwrap());
    assert!(!db.set_pc_token("zz", "x").unwrap());
    assert_eq!(db.pc_token("a").unwrap().as_deref(), Some("tok-a2"));

    assert_eq!(db.pc_quota("a").unwrap(), None);
    assert!(db.set_pc_quota("a", Some(1000)).unwrap());
    assert_eq!(db.pc_quota("a").unwrap(), Some(1000));
    assert!(db.set_pc_quota("a", Some(u64::MAX)).unwrap());
    assert_eq!(db.pc_quota("a").unwrap(), Some(i64::MAX as u64));
    assert!(db.set_pc_quota("a", None).unwrap());
    assert_eq!(db.pc_quota("a").unwrap(), None);
    assert!(!db.set_pc_quota("zz", Some(1)).unwrap());
    assert_eq!(db.pc_quota("zz").unwrap(), None);

    // Removing frees the name and the MAC and drops the PC's grants.
    db.grant(77, "d", 140).unwrap();
    db.grant(77, "a", 140).unwrap();
    db.remove_pc("d").unwrap();
    assert_eq!(names(db), ["a", "b", "c"]);
    assert_eq!(db.pc_token("d").unwrap(), None);
    assert_eq!(db.grants(77).unwrap(), ["a"]);
    db.add_pc(&PcRow::new("e", "dd:dd"), "tok-e", 141).unwrap();
    db.remove_pc("e").unwrap();
    assert!(db.revoke(77, "a").unwrap());
    db.remove_pc("nobody").unwrap();
}

/// Returns two complete backups of PC a (b1 named "disk", b4 "other").
fn backups(db: &dyn Database) -> (i64, i64) {
    let (id1, id2, id3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    let b1 = db.create_backup(&upload("a", "disk", 200, None)).unwrap();
    let row = db.backup(b1).unwrap().unwrap();
    assert_eq!(
        (row.pc.as_str(), row.name.as_str(), row.state.as_str(), row.created, row.finished),
        ("a", "disk", "uploading", 200, None)
    );
    assert_eq!((row.disk_bytes, row.chunk_size, row.locked, row.model.as_str()), (1 << 30, 4 << 20, false, ""));
    assert_eq!(db.backup(b1 + 1000).unwrap(), None);
    assert_eq!(db.backup_lock(b1).unwrap(), None);
    assert_eq!(db.backup_lock(b1 + 1000).unwrap(), None);

    db.note_chunk(b1, &id1, Some(500), 210).unwrap();
    db.note_chunk(b1, &id2, None, 211).unwrap();
    db.note_chunk(b1, &id1, Some(500), 212).unwrap();
    assert!(db.upload_has_chunk(b1, &id1).unwrap());
    assert!(db.upload_has_chunk(b1, &id2).unwrap());
    assert!(!db.upload_has_chunk(b1, &id3).unwrap());
    let row = db.backup(b1).unwrap().unwrap();
    assert_eq!((row.received_bytes, row.received_chunks), (1000, 2));
    assert_eq!(db.pc_usage("a", 0).unwrap(), 1000);
    assert!(db.list_backups(Some("a"), false).unwrap().is_empty());
    assert_eq!(ids(&db.list_backups(Some("a"), true).unwrap()), [b1]);

    // Active after the cut: still open, with its last activity.
    assert_eq!(
        db.close_stale_uploads(205, 300, 3600).unwrap(),
        (0, vec![OpenUpload { id: b1, pc: "a".into(), created: 200, last_active: 212 }])
    );
    db.complete_backup(b1, &Completion { chunks: 10, zero_chunks: 2, blob_bytes: 900, digest: "d1", model: "M" }, 220)
        .unwrap();
    let row = db.backup(b1).unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.finished, row.digest.as_str(), row.model.as_str()),
        ("complete", Some(220), "d1", "M")
    );
    assert_eq!((row.chunks, row.zero_chunks, row.blob_bytes), (10, 2, 900));
    assert!(!db.upload_has_chunk(b1, &id1).unwrap(), "completing forgets the upload's chunks");

    // A locked import: its lock comes back whole; set_origin moves it.
    let lock = BackupLock {
        kdf: Kdf::Argon2idSplit,
        params: LockParams { m_kib: 65536, t_cost: 3, p: 4 },
        salt: [7; 16],
        key: [9; 32],
    };
    let b2 = db.create_backup(&NewBackup { last_active: 235, ..upload("a", "import", 230, Some(&lock)) }).unwrap();
    assert_eq!(db.backup_lock(b2).unwrap(), Some(lock));
    assert!(db.backup(b2).unwrap().unwrap().locked);
    db.set_origin(b2, "b", "imported", 2 << 30, 1 << 20).unwrap();
    let row = db.backup(b2).unwrap().unwrap();
    assert_eq!(
        (row.pc.as_str(), row.name.as_str(), row.disk_bytes, row.chunk_size),
        ("b", "imported", 2 << 30, 1 << 20)
    );
    db.note_active(b2, 240).unwrap();
    db.note_chunk(b2, &id3, None, 240).unwrap();
    assert_eq!(
        db.close_stale_uploads(239, 250, 77).unwrap(),
        (0, vec![OpenUpload { id: b2, pc: "b".into(), created: 230, last_active: 240 }])
    );
    assert_eq!(db.close_stale_uploads(240, 260, 77).unwrap(), (1, vec![]));
    let row = db.backup(b2).unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.finished, row.reason.as_str()),
        ("failed", Some(260), "abandoned upload: no activity for 77 s (gc)")
    );
    assert!(!db.upload_has_chunk(b2, &id3).unwrap(), "gc forgets a closed upload's chunks");
    assert!(!db.fail_backup(b2, "again", 270).unwrap(), "only an upload fails");

    let b3 = db.create_backup(&upload("a", "other", 280, None)).unwrap();
    db.note_chunk(b3, &id3, Some(300), 285).unwrap();
    assert!(db.fail_backup(b3, "broken pipe", 290).unwrap());
    let row = db.backup(b3).unwrap().unwrap();
    assert_eq!((row.state.as_str(), row.finished, row.reason.as_str()), ("failed", Some(290), "broken pipe"));
    assert!(!db.upload_has_chunk(b3, &id3).unwrap());
    // complete_backup does not check the state (the vault does).
    let nothing = Completion { chunks: 0, zero_chunks: 0, blob_bytes: 0, digest: "", model: "" };
    db.complete_backup(b3, &nothing, 291).unwrap();
    assert_eq!(db.backup(b3).unwrap().unwrap().state, "complete");
    db.delete_backup(b3).unwrap();
    assert_eq!(db.backup(b3).unwrap(), None);
    let b3 = db.create_backup(&upload("a", "other", 280, None)).unwrap();
    db.note_chunk(b3, &id3, Some(300), 285).unwrap();
    assert!(db.fail_backup(b3, "broken pipe", 290).unwrap());
    // Failed uploads count while recently active.
    assert_eq!(db.pc_usage("a", 286).unwrap(), 1000);
    assert_eq!(db.pc_usage("a", 285).unwrap(), 1300);
    assert_eq!(db.pc_usage("b", 0).unwrap(), 0);
    assert_eq!(db.pc_usage("nobody", 0).unwrap(), 0);

    assert_eq!(db.latest("a", None).unwrap(), Some(b1));
    let b4 = db.create_backup(&upload("a", "other", 300, None)).unwrap();
    assert_eq!(db.latest("a", None).unwrap(), Some(b1), "an upload is not a backup yet");
    db.complete_backup(b4, &Completion { chunks: 1, zero_chunks: 0, blob_bytes: 1, digest: "d4", model: "" }, 310)
        .unwrap();
    assert_eq!(db.latest("a", None).unwrap(), Some(b4));
    assert_eq!(db.latest("a", Some("disk")).unwrap(), Some(b1));
    assert_eq!(db.latest("a", Some("none")).unwrap(), None);
    assert_eq!(db.latest("b", None).unwrap(), None);
    assert_eq!(db.find_complete("a", "disk", 200, "d1").unwrap(), Some(b1));
    assert_eq!(db.find_complete("a", "disk", 200, "d2").unwrap(), None);
    assert_eq!(db.find_complete("a", "disk", 201, "d1").unwrap(), None);
    assert_eq!(db.find_complete("b", "disk", 200, "d1").unwrap(), None);

    assert_eq!(ids(&db.list_backups(None, false).unwrap()), [b1, b4]);
    assert_eq!(ids(&db.list_backups(None, true).unwrap()), [b1, b2, b3, b4]);
    assert_eq!(ids(&db.list_backups(Some("b"), true).unwrap()), [b2]);
    assert_eq!(ids(&db.list_backups(Some("b"), false).unwrap()), Vec::<i64>::new());
    let listed = db.list_backups(Some("a"), false).unwrap();
    assert_eq!(listed[0], db.backup(b1).unwrap().unwrap());
    (b1, b4)
}

fn grants_and_unlock_failures(db: &dyn Database, b1: i64, b4: i64) {
    assert_eq!(ids(&db.visible_backups("a").unwrap()), [b1, b4]);
    assert!(db.visible_backups("b").unwrap().is_empty());
    assert!(!db.granted(b1, "b").unwrap());
    db.grant(b1, "b", 300).unwrap();
    db.grant(b1, "b", 301).unwrap();
    db.grant(b1, "c", 302).unwrap();
    assert_eq!(db.grants(b1).unwrap(), ["b", "c"]);
    assert_eq!(ids(&db.visible_backups("b").unwrap()), [b1]);
    db.grant(b4, "*", 303).unwrap();
    assert_eq!(ids(&db.visible_backups("b").unwrap()), [b1, b4]);
    assert_eq!(ids(&db.visible_backups("zz").unwrap()), [b4]);
    assert!(db.granted(b1, "b").unwrap());
    assert!(db.granted(b4, "zz").unwrap());
    assert!(!db.granted(b1, "zz").unwrap());
    assert!(db.revoke(b1, "b").unwrap());
    assert!(!db.revoke(b1, "b").unwrap());
    assert_eq!(db.grants(b1).unwrap(), ["c"]);
    assert!(db.grants(b1 + 1000).unwrap().is_empty());

    assert_eq!(db.unlock_failures("b", b1).unwrap(), (0, 0));
    assert_eq!(db.add_unlock_failure("b", b1, 305).unwrap(), 1);
    assert_eq!(db.add_unlock_failure("b", b1, 310).unwrap(), 2);
    assert_eq!(db.add_unlock_failure("c", b1, 311).unwrap(), 1);
    assert_eq!(db.unlock_failures("b", b1).unwrap(), (2, 310));
    db.clear_unlock_failures("b", b1).unwrap();
    assert_eq!(db.unlock_failures("b", b1).unwrap(), (0, 0));
    assert_eq!(db.unlock_failures("c", b1).unwrap(), (1, 311));

    // Deleting a backup takes its grants and failure counts along.
    let b5 = db.create_backup(&upload("a", "gone", 320, None)).unwrap();
    db.note_chunk(b5, &[5; 32], Some(1), 321).unwrap();
    db.grant(b5, "b", 322).unwrap();
    db.add_unlock_failure("b", b5, 323).unwrap();
    db.delete_backup(b5).unwrap();
    assert_eq!(db.backup(b5).unwrap(), None);
    assert!(db.grants(b5).unwrap().is_empty());
    assert_eq!(db.unlock_failures("b", b5).unwrap(), (0, 0));
    assert!(!db.upload_has_chunk(b5, &[5; 32]).unwrap());
}

fn pending(db: &dyn Database) {
    let rules = PendingRules { expire_before: 0, max: 2, admit_new: true };
    let closed = PendingRules { admit_new: false, ..rules };
    assert!(db.list_pending(0).unwrap().is_empty());
    assert_eq!(db.note_pending("m1", "10.1.0.1", 400, rules).unwrap(), Pending::Added);
    assert_eq!(db.note_pending("m1", "10.1.0.9", 401, rules).unwrap(), Pending::Seen);
    assert_eq!(db.note_pending("m2", "10.1.0.2", 402, closed).unwrap(), Pending::NotAdmitted);
    assert_eq!(db.note_pending("m2", "10.1.0.2", 402, rules).unwrap(), Pending::Added);
    assert_eq!(db.note_pending("m3", "10.1.0.3", 403, rules).unwrap(), Pending::Full);
    assert_eq!(db.note_pending("m3", "10.1.0.3", 403, closed).unwrap(), Pending::NotAdmitted);
    // A listed MAC is seen whatever the rules.
    assert_eq!(db.note_pending("m2", "10.1.0.2", 404, closed).unwrap(), Pending::Seen);
    let listed = db.list_pending(0).unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|p| (p.mac.as_str(), p.first_seen, p.last_seen, p.addr.as_str(), p.count))
            .collect::<Vec<_>>(),
        [("m1", 400, 401, "10.1.0.9", 2), ("m2", 402, 404, "10.1.0.2", 2)]
    );
    assert_eq!(db.list_pending(402).unwrap().iter().map(|p| p.mac.as_str()).collect::<Vec<_>>(), ["m2"]);
    // Expired entries make room first.
    let later = PendingRules { expire_before: 402, ..rules };
    assert_eq!(db.note_pending("m3", "10.1.0.3", 500, later).unwrap(), Pending::Added);
    assert_eq!(db.list_pending(0).unwrap().iter().map(|p| p.mac.as_str()).collect::<Vec<_>>(), ["m2", "m3"]);
    assert!(db.forget_pending("m2").unwrap());
    assert!(!db.forget_pending("m2").unwrap());
    assert_eq!(db.list_pending(0).unwrap().len(), 1);
}

fn settings(db: &dyn Database) {
    assert_eq!(db.setting("k").unwrap(), None);
    db.set_setting("k", Some("v")).unwrap();
    db.set_setting("k2", Some("other")).unwrap();
    assert_eq!(db.setting("k").unwrap().as_deref(), Some("v"));
    db.set_setting("k", Some("w")).unwrap();
    assert_eq!(db.setting("k").unwrap().as_deref(), Some("w"));
    db.set_setting("k", None).unwrap();
    db.set_setting("never", None).unwrap();
    assert_eq!(db.setting("k").unwrap(), None);
    assert_eq!(db.setting("k2").unwrap().as_deref(), Some("other"));

    assert_eq!(db.last_gc().unwrap(), 0);
    db.set_last_gc(123).unwrap();
    assert_eq!(db.last_gc().unwrap(), 123);
    db.set_last_gc(124).unwrap();
    assert_eq!(db.last_gc().unwrap(), 124);
}

fn jobs(db: &dyn Database, b1: i64) {
    assert_eq!(db.next_job("a", 599).unwrap(), None);
    let j1 = db.add_job(&NewJob { lock: Some("LOCKTEXT".into()), ..job("a", "backup") }, 600).unwrap();
    let j2 = db
        .add_job(&NewJob { backup: Some(b1), unlocked: true, wrap: Some("WRAP".into()), ..job("a", "restore") }, 601)
        .unwrap();
    let j3 = db.add_job(&job("b", "backup"), 602).unwrap();
    let listed = db.list_jobs(Some("a")).unwrap();
    assert_eq!(listed.iter().map(|j| (j.id, j.state.as_str())).collect::<Vec<_>>(), [(j1, "queued"), (j2, "queued")]);
    assert_eq!((listed[0].lock.as_deref(), listed[0].created, listed[0].started), (Some("LOCKTEXT"), 600, None));
    assert_eq!(db.list_jobs(None).unwrap().len(), 3);

    let got = db.next_job("a", 610).unwrap().unwrap();
    assert_eq!((got.id, got.state.as_str(), got.started), (j1, "running", Some(610)));
    assert_eq!((got.action.as_str(), got.disk.as_str(), got.name.as_str()), ("backup", "auto", "disk"));
    assert_eq!(
        (got.lock.as_deref(), got.wrap.as_deref(), got.unlocked, got.backup),
        (Some("LOCKTEXT"), None, false, None)
    );
    let stored = db.list_jobs(Some("a")).unwrap().into_iter().next().unwrap();
    assert_eq!((stored.state.as_str(), stored.lock, stored.wrap), ("running", None, None), "the lock goes out once");
    let got = db.next_job("a", 611).unwrap().unwrap();
    assert_eq!((got.id, got.unlocked, got.backup, got.wrap.as_deref()), (j2, true, Some(b1), Some("WRAP")));
    assert_eq!(db.list_jobs(Some("a")).unwrap()[1].wrap, None, "the wrap key goes out once");
    assert_eq!(db.next_job("a", 612).unwrap(), None);
    assert_eq!(db.next_job("zz", 612).unwrap(), None);

    assert!(!db.cancel_job(j2, "too late", 613).unwrap(), "a running job is not cancelled");
    assert!(db.cancel_job(j3, "cancelled by admin", 614).unwrap());
    assert!(!db.cancel_job(j3, "again", 615).unwrap());
    assert!(!db.cancel_job(j3 + 1000, "none", 615).unwrap());
    let b_jobs = db.list_jobs(Some("b")).unwrap();
    assert_eq!((b_jobs[0].state.as_str(), b_jobs[0].finished), ("failed", Some(614)));
    assert_eq!(db.next_job("b", 616).unwrap(), None, "a cancelled job is not handed out");
    let r = db.list_results(Some("b")).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].pc.as_str(), r[0].job, r[0].action.as_str(), r[0].ok, r[0].message.as_str(), r[0].at),
        ("b", Some(j3), "backup", false, "cancelled by admin", 614)
    );
    assert_eq!((r[0].bytes, r[0].sent, r[0].seconds), (0, 0, 0.0));

    db.record_result(&result("a", Some(j1), true, "done"), 620).unwrap();
    // Another PC's result does not end a's job.
    db.record_result(&result("b", Some(j2), true, "not mine"), 621).unwrap();
    assert_eq!(db.list_jobs(Some("a")).unwrap()[1].state, "running");
    db.record_result(&result("a", Some(j2), false, "disk error"), 622).unwrap();
    db.record_result(&result("a", None, true, "menu backup"), 623).unwrap();
    let a_jobs = db.list_jobs(Some("a")).unwrap();
    assert_eq!(
        a_jobs.iter().map(|j| (j.state.as_str(), j.finished)).collect::<Vec<_>>(),
        [("done", Some(620)), ("failed", Some(622))]
    );
    let r = db.list_results(Some("a")).unwrap();
    assert_eq!(
        r.iter().map(|r| (r.job, r.ok, r.message.as_str(), r.at)).collect::<Vec<_>>(),
        [(Some(j1), true, "done", 620), (Some(j2), false, "disk error", 622), (None, true, "menu backup", 623)]
    );
    assert_eq!((r[0].bytes, r[0].sent, r[0].seconds, r[0].backup), (10, 5, 1.5, None));
    assert_eq!(db.list_results(None).unwrap().len(), 5);
    let all = db.list_results(None).unwrap();
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "results by id");
}

fn admins(db: &dyn Database) {
    assert!(db.list_admins().unwrap().is_empty());
    db.add_admin("root", "h1", 700).unwrap();
    assert_eq!(err(db.add_admin("root", "h9", 701)), "an admin named root exists already");
    assert_eq!(db.admin_hash("root").unwrap().as_deref(), Some("h1"));
    assert_eq!(db.admin_hash("nobody").unwrap(), None);
    db.add_admin("alice", "h2", 701).unwrap();
    assert_eq!(db.list_admins().unwrap(), [("alice".to_owned(), 701), ("root".to_owned(), 700)]);

    db.add_session("s1", "root", "c1", 710).unwrap();
    assert!(db.add_session("s1", "root", "c1", 710).is_err(), "a session id is unique");
    assert_eq!(db.session("s1", 700, 700, 720).unwrap(), Some(("root".into(), "c1".into())));
    // Used at 720, so still fresh for idle_since 720; then used at 725.
    assert_eq!(db.session("s1", 720, 700, 725).unwrap(), Some(("root".into(), "c1".into())));
    assert_eq!(db.session("s1", 726, 700, 730).unwrap(), None);
    assert_eq!(db.session("s1", 0, 0, 731).unwrap(), None, "an expired session is deleted");
    db.add_session("s5", "root", "c5", 770).unwrap();
    assert_eq!(db.session("s5", 0, 771, 780).unwrap(), None, "too old, however busy");
    assert_eq!(db.session("s5", 0, 0, 781).unwrap(), None);

    db.add_session("s2", "root", "c2", 740).unwrap();
    db.add_session("s3", "alice", "c3", 750).unwrap();
    assert!(db.set_admin_hash("root", "h3").unwrap());
    assert!(!db.set_admin_hash("nobody", "h").unwrap());
    assert_eq!(db.admin_hash("root").unwrap().as_deref(), Some("h3"));
    assert_eq!(db.session("s2", 0, 0, 751).unwrap(), None, "a new password ends the sessions");
    assert_eq!(db.session("s3", 0, 0, 751).unwrap(), Some(("alice".into(), "c3".into())));
    assert!(db.remove_admin("alice").unwrap());
    assert!(!db.remove_admin("alice").unwrap());
    assert_eq!(db.session("s3", 0, 0, 752).unwrap(), None, "removing an admin ends its sessions");
    db.add_session("s4", "root", "c4", 760).unwrap();
    db.end_session("s4").unwrap();
    db.end_session("s4").unwrap();
    assert_eq!(db.session("s4", 0, 0, 761).unwrap(), None);
    assert_eq!(db.list_admins().unwrap(), [("root".to_owned(), 700)]);

    assert_eq!(db.signin_failures("root", 0).unwrap(), 0);
    db.add_signin_failure(&["root", "peer:1"], 800, 0).unwrap();
    db.add_signin_failure(&["root"], 801, 0).unwrap();
    assert_eq!(db.signin_failures("root", 0).unwrap(), 2);
    assert_eq!(db.signin_failures("root", 801).unwrap(), 1);
    assert_eq!(db.signin_failures("peer:1", 0).unwrap(), 1);
    db.add_signin_failure(&[], 900, 801).unwrap();
    assert_eq!(db.signin_failures("root", 0).unwrap(), 1, "failures before forget_before are dropped");
    assert_eq!(db.signin_failures("peer:1", 0).unwrap(), 0);
    db.clear_signin_failures("root").unwrap();
    assert_eq!(db.signin_failures("root", 0).unwrap(), 0);
}

fn pg_schema_version(url: &str) -> String {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query_one("SELECT value FROM meta WHERE key = 'schema_version'", &[]).unwrap().get(0)
}

#[test]
fn sqlite_conformance() {
    let dir = temp("sqlite");
    let db = SqliteDb::open(&dir.join("bootvault.db")).unwrap();
    scenario(&db);
    drop(db);
    // A database from a newer bootvault is refused, not used half-understood.
    let conn = rusqlite::Connection::open(dir.join("bootvault.db")).unwrap();
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'", []).unwrap();
    drop(conn);
    let e = SqliteDb::open(&dir.join("bootvault.db")).err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(e.contains("newer than this bootvault knows"), "{e}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn postgres_conformance() {
    let dir = temp("pg");
    let pg = Postgres::start(&dir).unwrap();
    let db = PgDb::connect(&pg.url()).unwrap();
    scenario(&db);
    drop(db);

    // The same schema version numbers as SQLite.
    let sqlite = temp("pg-sqlite");
    drop(SqliteDb::open(&sqlite.join("bootvault.db")).unwrap());
    let lite: String = rusqlite::Connection::open(sqlite.join("bootvault.db"))
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pg_schema_version(&pg.url()), lite);
    fs::remove_dir_all(&sqlite).unwrap();

    // Opening again keeps the data; a newer schema is refused in one line.
    let db = PgDb::connect(&pg.url()).unwrap();
    assert_eq!(db.pc_token("a").unwrap().as_deref(), Some("tok-a2"));
    drop(db);
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    c.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'", &[]).unwrap();
    let refused = format!("{:#}", PgDb::connect(&pg.url()).err().unwrap());
    assert!(refused.contains("schema version 999 is newer than this bootvault knows"), "{refused}");
    assert!(!refused.contains('\n'), "{refused}");
    drop(c);

    // A connection the database ended is opened again before use.
    let db = PgDb::connect(&pg.new_database("reconnect").unwrap()).unwrap();
    db.set_setting("k", Some("v")).unwrap();
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    let others = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = 'reconnect'";
    assert!(c.query_one(others, &[]).unwrap().get::<_, i64>(0) > 0);
    c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'reconnect'", &[]).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.query_one(others, &[]).unwrap().get::<_, i64>(0) > 0 {
        assert!(std::time::Instant::now() < until, "the connection was not ended");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(db.setting("k").unwrap().as_deref(), Some("v"));
    drop((db, c, pg));
    fs::remove_dir_all(&dir).unwrap();
}

/// Two servers on one fresh database: both start (the schema is made
/// once), every job goes out exactly once, the pending list keeps its
/// cap and no wrong password is lost.
#[test]
fn postgres_across_servers() {
    const THREADS: usize = 8;
    let dir = temp("pg-race");
    let pg = Postgres::start(&dir).unwrap();

    // Schema creation raced, a few times over.
    for round in 0..4 {
        let url = pg.new_database(&format!("race{round}")).unwrap();
        let start = Barrier::new(2);
        let both: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        PgDb::connect(&url)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for db in both {
            db.unwrap_or_else(|e| panic!("round {round}: {e:#}"));
        }
    }

    let url = pg.new_database("servers").unwrap();
    let servers = [PgDb::connect(&url).unwrap(), PgDb::connect(&url).unwrap()];
    const JOBS: usize = 200;
    let mut queued = BTreeSet::new();
    for i in 0..JOBS {
        let lock = format!("lock{i}");
        queued.insert(servers[i % 2].add_job(&NewJob { lock: Some(lock), ..job("pc", "backup") }, i as i64).unwrap());
    }
    let start = Barrier::new(THREADS);
    let handed: Vec<(i64, Option<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (db, start) = (&servers[t % 2], &start);
                s.spawn(move || {
                    start.wait();
                    let mut got = Vec::new();
                    while let Some(j) = db.next_job("pc", 1000).unwrap() {
                        got.push((j.id, j.lock));
                    }
                    got
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let got: BTreeSet<i64> = handed.iter().map(|(id, _)| *id).collect();
    assert_eq!(handed.len(), JOBS, "a job was handed out twice or not at all");
    assert_eq!(got, queued);
    assert!(handed.iter().all(|(_, lock)| lock.is_some()), "every lock went out with its job");
    assert!(servers[0].list_jobs(None).unwrap().iter().all(|j| j.state == "running" && j.lock.is_none()));

    // The pending list's cap, with both servers listing new MACs at once.
    const MAX: usize = 5;
    let rules = PendingRules { expire_before: 0, max: MAX, admit_new: true };
    let start = Barrier::new(THREADS);
    let outcomes: Vec<Pending> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (db, start) = (&servers[t % 2], &start);
                s.spawn(move || {
                    start.wait();
                    (0..10).map(|i| db.note_pending(&format!("m{t}-{i}"), "", 1, rules).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(outcomes.iter().filter(|o| **o == Pending::Added).count(), MAX);
    assert_eq!(servers[1].list_pending(0).unwrap().len(), MAX);

    // Wrong passwords counted from both servers at once: none lost.
    const TRIES: usize = 25;
    let start = Barrier::new(THREADS);
    let counts: BTreeSet<i64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (db, start) = (&servers[t % 2], &start);
                s.spawn(move || {
                    start.wait();
                    (0..TRIES).map(|i| db.add_unlock_failure("pc", 1, i as i64).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let n = (THREADS * TRIES) as i64;
    assert_eq!(counts, (1..=n).collect::<BTreeSet<_>>(), "each failure got its own count");
    assert_eq!(servers[0].unlock_failures("pc", 1).unwrap().0, n);

    drop(servers);
    drop(pg);
    fs::remove_dir_all(&dir).unwrap();
}

/// The chunk store's lock across servers: one server's exclusive lock
/// (gc's sweep) waits for every other's shared ones (writers) and keeps
/// them out while held; SQLite has none (one data directory).
#[test]
fn the_store_lock_holds_across_servers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let dir = temp("pg-lock");
    let pg = Postgres::start(&dir).unwrap();
    let url = pg.new_database("lock").unwrap();
    let (a, b) = (PgDb::connect(&url).unwrap(), PgDb::connect(&url).unwrap());
    let sqlite = SqliteDb::open(&dir.join("bootvault.db")).unwrap();
    assert!(sqlite.store_lock(true).unwrap().is_none());

    let shared_a = a.store_lock(false).unwrap().expect("a lock");
    let shared_b = b.store_lock(false).unwrap().expect("shared locks go together");
    let swept = AtomicBool::new(false);
    std::thread::scope(|s| {
        let gc = s.spawn(|| {
            let held = a.store_lock(true).unwrap();
            swept.store(true, Ordering::SeqCst);
            held
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!swept.load(Ordering::SeqCst), "the exclusive lock waits for the writers");
        drop(shared_a);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!swept.load(Ordering::SeqCst), "and for the other server's");
        drop(shared_b);
        let held = gc.join().unwrap();
        assert!(swept.load(Ordering::SeqCst));
        let writer = s.spawn(|| b.store_lock(false).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!writer.is_finished(), "a writer on the other server waits for the sweep");
        drop(held);
        drop(writer.join().unwrap());
    });
}
