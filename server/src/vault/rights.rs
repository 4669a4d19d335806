//! Which chunks a PC may name, and what it has stored: the manifest-id
//! cache, the upload's own chunks (`upload_chunks`), and quotas.
//!
//! A PC may put a chunk id into a manifest only if it uploaded that chunk
//! in this upload (the server verified the bytes hash to the id, so the PC
//! holds the data) or the chunk is in a complete backup the PC may read
//! now (its own, or granted to it). `missing` answers "stored" only for
//! such chunks; for any other chunk the PC must send the bytes, even when
//! the store already has them. So neither a manifest kept from a revoked
//! grant nor a guessed id gives a PC another PC's data, and `missing` does
//! not tell a PC which chunks other PCs have (storage is still
//! deduplicated: an uploaded chunk that is already stored is verified and
//! not written again).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use bootvault_common::image::{ChunkId, Manifest};
use rusqlite::{params, Connection, OptionalExtension};

use super::Vault;

/// Manifest ids kept in memory at most (32 bytes each: 4 Mi ids = 128 MiB,
/// about 4 TiB of disks at 1 MiB chunks). Beyond it, the least recently
/// used manifests are dropped and read again from disk when needed.
const CACHE_MAX_IDS: usize = 4 << 20;

/// Sorted, deduplicated data chunk ids of complete backups, by backup id.
#[derive(Default)]
pub(super) struct ManifestIds {
    sets: HashMap<i64, (Arc<Vec<ChunkId>>, u64)>,
    ids: usize,
    tick: u64,
}

impl ManifestIds {
    fn get(&mut self, backup: i64) -> Option<Arc<Vec<ChunkId>>> {
        self.tick += 1;
        let tick = self.tick;
        self.sets.get_mut(&backup).map(|(s, used)| {
            *used = tick;
            s.clone()
        })
    }

    fn insert(&mut self, backup: i64, set: Arc<Vec<ChunkId>>) {
        while self.ids + set.len() > CACHE_MAX_IDS && !self.sets.is_empty() {
            let Some(oldest) = self.sets.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| *id) else { break };
            self.forget(oldest);
        }
        self.tick += 1;
        self.ids += set.len();
        if let Some((old, _)) = self.sets.insert(backup, (set, self.tick)) {
            self.ids -= old.len();
        }
    }

    pub(super) fn forget(&mut self, backup: i64) {
        if let Some((s, _)) = self.sets.remove(&backup) {
            self.ids -= s.len();
        }
    }
}

/// What one PC may name in one upload (see the module doc).
pub struct Rights {
    upload: Option<i64>,
    readable: Vec<Arc<Vec<ChunkId>>>,
}

impl Rights {
    /// Whether the PC may name chunk `id` (`db`: the vault's connection).
    pub(super) fn may_name(&self, db: &Connection, id: &ChunkId) -> Result<bool> {
        if self.readable.iter().any(|s| s.binary_search(id).is_ok()) {
            return Ok(true);
        }
        let Some(b) = self.upload else { return Ok(false) };
        Ok(db
            .prepare_cached("SELECT 1 FROM upload_chunks WHERE backup = ?1 AND chunk = ?2")?
            .query_row(params![b, &id[..]], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

impl Vault {
    /// The data chunk ids of complete backup `backup`, sorted (cached).
    pub fn manifest_ids(&self, backup: i64) -> Result<Arc<Vec<ChunkId>>> {
        if let Some(s) = self.manifest_cache().get(backup) {
            return Ok(s);
        }
        let m = Manifest::decode(&self.manifest(backup)?).map_err(|e| anyhow!("manifest of backup {backup}: {e}"))?;
        let mut ids = m.data_ids();
        ids.sort_unstable();
        ids.dedup();
        let set = Arc::new(ids);
        self.manifest_cache().insert(backup, set.clone());
        Ok(set)
    }

    /// Whether chunk `id` is part of complete backup `backup`.
    pub fn in_manifest(&self, backup: i64, id: &ChunkId) -> Result<bool> {
        Ok(self.manifest_ids(backup)?.binary_search(id).is_ok())
    }

    /// What `pc` may name in upload `upload` (None: outside an upload).
    pub fn rights(&self, pc: &str, upload: Option<i64>) -> Result<Rights> {
        let readable = self.visible_backups(pc)?.iter().map(|b| self.manifest_ids(b.id)).collect::<Result<Vec<_>>>()?;
        Ok(Rights { upload, readable })
    }

    /// Records that upload `backup` sent chunk `id` (verified).
    pub(super) fn note_uploaded(&self, db: &Connection, backup: i64, id: &ChunkId) -> Result<()> {
        db.prepare_cached("INSERT OR IGNORE INTO upload_chunks (backup, chunk) VALUES (?1, ?2)")?
            .execute(params![backup, &id[..]])?;
        Ok(())
    }

    /// Bytes of new chunks `pc` has stored: the blob bytes its complete
    /// and running uploads sent that the store did not have yet, plus those
    /// of failed uploads whose chunks the last gc could not yet remove
    /// (touched after its cutoff). This is what a quota limits.
    pub fn pc_usage(&self, pc: &str) -> Result<u64> {
        let db = self.db();
        let last_gc: i64 = db
            .query_row("SELECT value FROM meta WHERE key = 'last_gc'", [], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let used: i64 = db.query_row(
            "SELECT COALESCE(SUM(received_bytes), 0) FROM backups WHERE pc = ?1
             AND (state != 'failed' OR MAX(last_active, created) >= ?2)",
            params![pc, last_gc - super::gc::margins().0],
            |r| r.get(0),
        )?;
        Ok(used.max(0) as u64)
    }

    /// A PC's storage quota in bytes (None: unlimited).
    pub fn pc_quota(&self, pc: &str) -> Result<Option<u64>> {
        let q: Option<Option<i64>> =
            self.db().query_row("SELECT quota FROM pcs WHERE name = ?1", [pc], |r| r.get(0)).optional()?;
        Ok(q.flatten().map(|q| q.max(0) as u64))
    }

    /// Sets (or with None, clears) a registered PC's storage quota.
    pub fn set_pc_quota(&self, pc: &str, quota: Option<u64>) -> Result<()> {
        let q = quota.map(|q| i64::try_from(q).unwrap_or(i64::MAX));
        let n = self.db().execute("UPDATE pcs SET quota = ?2 WHERE name = ?1 AND registered = 1", params![pc, q])?;
        if n == 0 {
            anyhow::bail!("no registered PC {pc}");
        }
        Ok(())
    }

    /// Refuses when storing `more` new bytes would take `pc` over its quota.
    pub fn check_quota(&self, pc: &str, more: u64) -> std::result::Result<(), String> {
        let quota = match self.pc_quota(pc) {
            Ok(Some(q)) => q,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("reading the quota of {pc}: {e}")),
        };
        let used = self.pc_usage(pc).map_err(|e| format!("reading the usage of {pc}: {e}"))?;
        if used.saturating_add(more) > quota {
            return Err(format!(
                "PC {pc} is over its storage quota ({} used of {}): delete old backups or ask the admin for more",
                bootvault_common::units::human_bytes(used),
                bootvault_common::units::human_bytes(quota)
            ));
        }
        Ok(())
    }
}
