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

use super::Vault;
use crate::db::Database;

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
    /// Whether the PC may name chunk `id`.
    pub(super) fn may_name(&self, db: &dyn Database, id: &ChunkId) -> Result<bool> {
        if self.readable.iter().any(|s| s.binary_search(id).is_ok()) {
            return Ok(true);
        }
        let Some(b) = self.upload else { return Ok(false) };
        db.upload_has_chunk(b, id)
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

    /// Bytes of new chunks `pc` has stored: the blob bytes its complete
    /// and running uploads sent that the store did not have yet, plus those
    /// of failed uploads whose chunks the last gc could not yet remove
    /// (touched after its cutoff). This is what a quota limits.
    pub fn pc_usage(&self, pc: &str) -> Result<u64> {
        let last_gc = self.db.last_gc()?;
        self.db.pc_usage(pc, last_gc - super::gc::margins().0)
    }

    /// A PC's storage quota in bytes (None: unlimited).
    pub fn pc_quota(&self, pc: &str) -> Result<Option<u64>> {
        self.db.pc_quota(pc)
    }

    /// Sets (or with None, clears) a registered PC's storage quota.
    pub fn set_pc_quota(&self, pc: &str, quota: Option<u64>) -> Result<()> {
        if !self.db.set_pc_quota(pc, quota)? {
            anyhow::bail!("no registered PC {pc}");
        }
        Ok(())
    }

    /// Refuses when storing `more` new bytes would take `pc` over its quota.
    pub fn check_quota(&self, pc: &str, more: u64) -> std::result::Result<(), String> {
        match self.quota_of(pc)? {
            Some(quota) => self.fits_quota(pc, quota, more),
            None => Ok(()),
        }
    }

    /// [`Vault::pc_quota`], its error as a quota refusal's line.
    pub(super) fn quota_of(&self, pc: &str) -> std::result::Result<Option<u64>, String> {
        self.pc_quota(pc).map_err(|e| format!("reading the quota of {pc}: {e}"))
    }

    /// Refuses when storing `more` new bytes would take `pc` past `quota`.
    pub(super) fn fits_quota(&self, pc: &str, quota: u64, more: u64) -> std::result::Result<(), String> {
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
