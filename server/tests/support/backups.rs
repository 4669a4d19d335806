#![allow(dead_code)] // each test file uses some of these
//! Backups as a PC makes them, for the vault tests that race gc against
//! uploads (gc_safety.rs, across_servers.rs).

use bootvault_common::image::{self, Chunk, ChunkId, Manifest};
use std::sync::mpsc;
use std::time::Duration;

use bootvault_server::vault::{GcPhase, GcReport, Vault};

/// A 4096-byte chunk from a seed: (id, blob).
pub fn chunk(seed: u32) -> (ChunkId, Vec<u8>) {
    let plain = bootvault_common::testdata::noise(u64::from(seed), 4096);
    (image::chunk_id(&plain), image::encode_blob(&plain, 1))
}

/// The manifest of a backup of `pc` naming the chunks of `seeds`.
pub fn manifest(pc: &str, seeds: &[u32]) -> Manifest {
    let chunks = seeds
        .iter()
        .map(|s| {
            let (id, blob) = chunk(*s);
            Chunk::Data { id, blob_len: blob.len() as u32 }
        })
        .collect();
    bootvault_common::testdata::manifest_of(pc, chunks)
}

/// A whole backup as a PC makes it, through `v`: open, ask, send what is
/// asked for, finish with the rights check.
pub fn pc_backup(v: &Vault, pc: &str, seeds: &[u32]) -> i64 {
    let m = manifest(pc, seeds);
    let id = v.create_backup(pc, "full", m.disk_bytes, 4096).expect("open");
    let ids: Vec<ChunkId> = seeds.iter().map(|s| chunk(*s).0).collect();
    for (s, len) in seeds.iter().zip(v.missing(id, Some(pc), &ids).expect("missing")) {
        if len == 0 {
            let (cid, blob) = chunk(*s);
            v.put_chunk_for(Some(pc), &cid, &blob, Some(id)).expect("chunk");
        }
    }
    v.finish_backup_for(id, pc, &m.encode(), true).expect("finish");
    id
}

/// gc on `v`, held at each phase (the first sweep only): each phase is
/// sent to `to_test`, then gc waits for a word on `go_on` (bounded: a
/// failing test must not hang).
pub fn gc_held(v: &Vault, to_test: mpsc::Sender<GcPhase>, go_on: mpsc::Receiver<()>) -> GcReport {
    let mut seen_swept = false;
    v.gc_with(3600, &mut |phase| {
        if phase == GcPhase::Swept && seen_swept {
            return;
        }
        seen_swept |= phase == GcPhase::Swept;
        to_test.send(phase).expect("the test listens");
        let _ = go_on.recv_timeout(Duration::from_secs(60));
    })
    .expect("gc")
}
