//! gc while backups run, and what a PC may name in a manifest (issue 10,
//! items 1, 2, 6, 9): gc is held at each of its phases while uploads open,
//! deduplicate against unreferenced chunks and finish; every backup that
//! completes keeps every chunk. A PC names only chunks it sent or may read.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use bootvault_common::image::{ChunkId, Manifest};
use bootvault_server::vault::{GcPhase, PcRow, PutError, Vault};

#[path = "support/backups.rs"]
mod backups;
use backups::{chunk, gc_held, manifest, pc_backup};

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-gcsafe-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn age_chunks(dir: &Path, secs: u64) {
    let then = SystemTime::now() - Duration::from_secs(secs);
    for sub in fs::read_dir(dir.join("chunks")).unwrap().flatten() {
        for f in fs::read_dir(sub.path()).unwrap().flatten() {
            fs::OpenOptions::new().write(true).open(f.path()).unwrap().set_modified(then).unwrap();
        }
    }
}

/// 600 unreferenced chunks of seeds 1000.. (a deleted PC's), last touched
/// two hours ago.
fn garbage(v: &Vault, dir: &Path) {
    for s in 1000..1600 {
        let (cid, blob) = chunk(s);
        v.put_chunk(&cid, &blob, None).unwrap();
    }
    age_chunks(dir, 2 * 3600);
}

#[test]
fn backups_completing_while_gc_runs_keep_their_chunks() {
    let dir = temp("phases");
    let v = Vault::open(&dir).unwrap();
    garbage(&v, &dir);
    // One upload open before gc starts, one opened at each phase; each
    // reuses (deduplicates against) unreferenced, old chunks.
    let early_m = manifest("pc-a", &[1000, 1001, 1]);
    let early = v.create_backup("pc-a", "full", early_m.disk_bytes, 4096).unwrap();
    for s in [1000, 1001, 1] {
        let (cid, blob) = chunk(s);
        v.put_chunk_for(Some("pc-a"), &cid, &blob, Some(early)).unwrap();
    }
    // The early upload opened three hours ago and sent its chunks since.
    let db = rusqlite::Connection::open(dir.join("bootvault.db")).unwrap();
    db.execute("UPDATE backups SET created = created - 3 * 3600 WHERE id = ?1", [early]).unwrap();
    age_chunks(&dir, 2 * 3600);

    let (to_test, from_gc) = mpsc::channel::<GcPhase>();
    let gc_dir = dir.clone();
    let (to_gc, go_on) = mpsc::channel::<()>();
    let report = std::thread::scope(|s| {
        // gc as its own process does: its own vault on the directory.
        let gc = s.spawn(move || gc_held(&Vault::open(&gc_dir).unwrap(), to_test, go_on));
        let mut done = Vec::new();
        // Started: cutoff noted; an upload opens and completes before the mark.
        assert_eq!(from_gc.recv().unwrap(), GcPhase::Started);
        done.push(pc_backup(&v, "pc-b", &[1002, 1003, 2]));
        // The early upload keeps going and finishes after the mark.
        to_gc.send(()).unwrap();
        assert_eq!(from_gc.recv().unwrap(), GcPhase::Marked);
        done.push(pc_backup(&v, "pc-c", &[1004, 1005, 3]));
        v.finish_backup_for(early, "pc-a", &early_m.encode(), true).unwrap();
        done.push(early);
        // After the first directory is swept: one more, with chunks from every directory.
        to_gc.send(()).unwrap();
        assert_eq!(from_gc.recv().unwrap(), GcPhase::Swept);
        let all: Vec<u32> = (1100..1400).collect();
        done.push(pc_backup(&v, "pc-d", &all));
        to_gc.send(()).unwrap();
        (gc.join().unwrap(), done)
    });
    let (report, done) = report;
    assert!(report.open_uploads.iter().any(|u| u.id == early), "{report:?}");
    for id in done {
        let b = v.backup(id).unwrap().unwrap();
        assert_eq!(b.state, "complete");
        v.verify_backup(id).unwrap_or_else(|e| panic!("backup {id} lost a chunk to gc: {e:#}"));
    }
    // The early upload, open since before the garbage was last touched,
    // held gc back: unreferenced chunks newer than its start were kept.
    assert_eq!(report.chunks_removed, 0, "{report:?}");
    assert!(report.recent_kept > 0, "{report:?}");
    // Once nothing is open, the garbage nobody named goes.
    age_chunks(&dir, 2 * 3600);
    let r = v.gc(0).unwrap();
    assert!(r.open_uploads.is_empty());
    let kept = 3 + 3 + 3 + 300;
    assert_eq!((r.chunks_kept, r.chunks_removed), (kept, 603 - kept), "{r:?}");
    for id in v.list_backups(None, false).unwrap() {
        v.verify_backup(id.id).unwrap();
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn uploads_age_by_activity_not_creation() {
    let dir = temp("activity");
    let v = Vault::open(&dir).unwrap();
    let m = manifest("pc-a", &[1, 2]);
    let id = v.create_backup("pc-a", "full", m.disk_bytes, 4096).unwrap();
    // Opened three hours ago, but still sending.
    let db = rusqlite::Connection::open(dir.join("bootvault.db")).unwrap();
    db.execute("UPDATE backups SET created = created - 3 * 3600, last_active = last_active - 3 * 3600", []).unwrap();
    let (cid, blob) = chunk(1);
    v.put_chunk_for(Some("pc-a"), &cid, &blob, Some(id)).unwrap();
    let r = v.gc(3600).unwrap();
    assert_eq!(r.stale_uploads, 0, "an upload active now is not abandoned");
    assert_eq!(r.open_uploads.len(), 1);
    let (cid, blob) = chunk(2);
    v.put_chunk_for(Some("pc-a"), &cid, &blob, Some(id)).unwrap();
    v.finish_backup_for(id, "pc-a", &m.encode(), true).unwrap();
    v.verify_backup(id).unwrap();
    // Idle for longer than the age: failed, and its chunks go.
    let id2 = v.create_backup("pc-a", "full", m.disk_bytes, 4096).unwrap();
    db.execute("UPDATE backups SET created = created - 2 * 3600 WHERE id = ?1", [id2]).unwrap();
    let r = v.gc(3600).unwrap();
    assert_eq!(r.stale_uploads, 1);
    let b = v.backup(id2).unwrap().unwrap();
    assert_eq!(b.state, "failed");
    assert!(b.reason.contains("no activity for 3600 s"), "{}", b.reason);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_pc_names_only_chunks_it_sent_or_may_read() {
    let dir = temp("rights");
    let v = Vault::open(&dir).unwrap();
    for (i, pc) in ["owner", "thief"].iter().enumerate() {
        v.add_pc(&PcRow::new(pc, &format!("52:54:00:00:01:{i:02x}"))).unwrap();
    }
    let theirs = pc_backup(&v, "owner", &[10, 11, 12]);
    let m = v.manifest(theirs).unwrap();
    // A grant lets the thief restore it...
    v.grant(theirs, "thief").unwrap();
    assert!(v.in_manifest(theirs, &chunk(10).0).unwrap());
    // ... and, while it holds, name its chunks (no need to send them).
    let mut mine = Manifest::decode(&m).unwrap();
    mine.pc = "thief".into();
    let up = v.create_backup("thief", "full", mine.disk_bytes, 4096).unwrap();
    let ids: Vec<ChunkId> = [10, 11, 12].iter().map(|s| chunk(*s).0).collect();
    assert!(v.missing(up, Some("thief"), &ids).unwrap().iter().all(|l| *l > 0));
    v.fail_backup(up, "test").unwrap();
    // Revoked: the kept manifest gives it nothing.
    assert!(v.revoke(theirs, "thief").unwrap());
    let up = v.create_backup("thief", "full", mine.disk_bytes, 4096).unwrap();
    assert_eq!(v.missing(up, Some("thief"), &ids).unwrap(), [0, 0, 0], "missing tells nothing of others' chunks");
    let e = v.finish_backup_for(up, "thief", &mine.encode(), true).unwrap_err();
    assert!(e.forbidden && e.message.contains("in no backup thief may read"), "{e:?}");
    assert_eq!(v.backup(up).unwrap().unwrap().state, "uploading");
    // Sending bad bytes under a stored chunk's id proves nothing.
    let e = v.put_chunk_for(Some("thief"), &ids[0], &chunk(99).1, Some(up)).unwrap_err();
    assert!(matches!(e, PutError::Bad(_)), "{e:?}");
    // Sending the real bytes proves it holds the data: stored once, named.
    for s in [10, 11, 12] {
        let (cid, blob) = chunk(s);
        assert!(!v.put_chunk_for(Some("thief"), &cid, &blob, Some(up)).unwrap(), "already stored, not written again");
    }
    v.finish_backup_for(up, "thief", &mine.encode(), true).unwrap();
    assert_eq!(v.backup(up).unwrap().unwrap().received_bytes, 0, "nothing new stored");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn quotas_refuse_new_bytes_past_the_limit() {
    let dir = temp("quota");
    let v = Vault::open(&dir).unwrap();
    v.add_pc(&PcRow::new("small", "52:54:00:00:02:01")).unwrap();
    let one = chunk(1).1.len() as u64;
    v.set_pc_quota("small", Some(one * 2 + one / 2)).unwrap();
    assert_eq!(v.pc_quota("small").unwrap(), Some(one * 2 + one / 2));
    let m = manifest("small", &[1, 2, 3]);
    let id = v.create_backup("small", "full", m.disk_bytes, 4096).unwrap();
    for s in [1, 2] {
        let (cid, blob) = chunk(s);
        assert!(v.put_chunk_for(Some("small"), &cid, &blob, Some(id)).unwrap());
    }
    assert_eq!(v.pc_usage("small").unwrap(), 2 * one);
    let (cid, blob) = chunk(3);
    let e = v.put_chunk_for(Some("small"), &cid, &blob, Some(id)).unwrap_err();
    assert!(matches!(&e, PutError::Quota(m) if m.contains("over its storage quota")), "{e:?}");
    assert!(v.blob_len(&cid).is_none(), "nothing written");
    assert!(v.check_quota("small", 1).is_ok());
    // A failed upload's bytes count until gc has swept them.
    v.fail_backup(id, "test").unwrap();
    assert_eq!(v.pc_usage("small").unwrap(), 2 * one);
    v.gc(3600).unwrap();
    assert_eq!(v.pc_usage("small").unwrap(), 2 * one, "too recent for gc to remove");
    let db = rusqlite::Connection::open(dir.join("bootvault.db")).unwrap();
    db.execute("UPDATE backups SET last_active = last_active - 3600, created = created - 3600", []).unwrap();
    age_chunks(&dir, 3600);
    assert_eq!(v.gc(3600).unwrap().chunks_removed, 2);
    assert_eq!(v.pc_usage("small").unwrap(), 0);
    let _ = fs::remove_dir_all(&dir);
}

/// Chunks of one PC sent at once (a PC keeps several in flight) share the
/// room left under the quota: never more than the quota is stored, however
/// the checks interleave.
#[test]
fn chunks_sent_at_once_never_pass_the_quota_together() {
    let dir = temp("quota-race");
    let v = Vault::open(&dir).unwrap();
    v.add_pc(&PcRow::new("small", "52:54:00:00:02:02")).unwrap();
    let one = chunk(1).1.len() as u64;
    let quota = one * 5 + one / 2;
    v.set_pc_quota("small", Some(quota)).unwrap();
    let seeds: Vec<u32> = (100..164).collect();
    let m = manifest("small", &seeds);
    let id = v.create_backup("small", "full", m.disk_bytes, 4096).unwrap();
    let stored = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (v, seeds, stored) = (&v, &seeds, &stored);
            s.spawn(move || {
                for seed in seeds.iter().skip(t).step_by(8) {
                    let (cid, blob) = chunk(*seed);
                    match v.put_chunk_for(Some("small"), &cid, &blob, Some(id)) {
                        Ok(true) => {
                            stored.fetch_add(blob.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(PutError::Quota(_)) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
            });
        }
    });
    let stored = stored.into_inner();
    assert_eq!(v.pc_usage("small").unwrap(), stored);
    assert!(stored <= quota, "{stored} stored past a quota of {quota}");
    assert_eq!(stored, 5 * one, "the room is used, not refused early");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_backup_opened_after_gc_started_keeps_the_old_chunks_it_reuses() {
    let dir = temp("late");
    let v = Vault::open(&dir).unwrap();
    garbage(&v, &dir);
    let mut late = None;
    let gv = Vault::open(&dir).unwrap();
    // No upload is open when gc starts; one opens, reuses old unreferenced
    // chunks and completes between gc's mark and its sweep.
    let r = gv
        .gc_with(3600, &mut |phase| {
            if phase == GcPhase::Marked {
                late = Some(pc_backup(&v, "pc-late", &(1500..1510).collect::<Vec<_>>()));
            }
        })
        .unwrap();
    let late = late.unwrap();
    assert!(r.open_uploads.is_empty());
    assert_eq!((r.chunks_removed, r.recent_kept), (590, 10), "{r:?}");
    v.verify_backup(late).unwrap_or_else(|e| panic!("the late backup lost a chunk to gc: {e:#}"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_backup_removed_while_gc_marks_does_not_stop_it_and_an_unreadable_one_does() {
    let dir = temp("removed");
    let v = Vault::open(&dir).unwrap();
    let gone = pc_backup(&v, "pc-a", &[1, 2]);
    let kept = pc_backup(&v, "pc-a", &[3]);
    age_chunks(&dir, 2 * 3600);
    let gv = Vault::open(&dir).unwrap();
    let r = gv
        .gc_with(3600, &mut |phase| {
            if phase == GcPhase::Started {
                v.delete_backup(gone).unwrap();
            }
        })
        .unwrap();
    assert_eq!((r.chunks_removed, r.chunks_kept), (2, 1), "{r:?}");
    v.verify_backup(kept).unwrap();
    // A complete backup whose manifest is unreadable: gc removes nothing.
    fs::write(dir.join("manifests").join(format!("{kept}.bvm")), b"garbage").unwrap();
    age_chunks(&dir, 2 * 3600);
    let e = v.gc(3600).unwrap_err();
    assert!(format!("{e:#}").contains("nothing removed"), "{e:#}");
    assert!(v.blob_len(&chunk(3).0).is_some());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_retried_finish_of_the_same_manifest_succeeds() {
    let dir = temp("refinish");
    let v = Vault::open(&dir).unwrap();
    let m = manifest("pc-a", &[1, 2]);
    let id = pc_backup(&v, "pc-a", &[1, 2]);
    // The first answer was lost: the PC sends the same manifest again.
    let row = v.finish_backup_for(id, "pc-a", &m.encode(), true).unwrap();
    assert_eq!(row.state, "complete");
    // Another manifest for a complete backup is still refused.
    let other = manifest("pc-a", &[1, 3]);
    let e = v.finish_backup_for(id, "pc-a", &other.encode(), true).unwrap_err();
    assert!(e.message.contains("is complete"), "{e:?}");
    let _ = fs::remove_dir_all(&dir);
}

/// The server cannot check an encrypted blob, so a PC could store one
/// under the name of a plain chunk before its owner sends it; the owner's
/// plain blob, which proves itself, then replaces it.
#[test]
fn an_encrypted_blob_cannot_squat_a_plain_chunks_name() {
    let dir = temp("squat");
    let v = Vault::open(&dir).unwrap();
    for (pc, mac) in [("squatter", "52:54:00:00:00:61"), ("owner", "52:54:00:00:00:62")] {
        v.add_pc(&PcRow::new(pc, mac)).unwrap();
    }
    let (cid, blob) = chunk(21);
    let mut fake = vec![bootvault_common::seal::TAG_SEALED];
    fake.extend_from_slice(&[0x5a; 4096]);
    let up = v.create_backup("squatter", "full", 4096, 4096).unwrap();
    assert!(v.put_chunk_for(Some("squatter"), &cid, &fake, Some(up)).unwrap(), "the shape is all it can check");
    let mine = pc_backup(&v, "owner", &[21]);
    assert_eq!(v.chunk(&cid).unwrap(), blob, "the proven plain blob replaced the squatter's");
    assert_eq!(v.verify_backup(mine).unwrap(), 1);
    let _ = fs::remove_dir_all(&dir);
}
