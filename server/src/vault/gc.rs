//! Garbage collection that is safe while backups run, on this server and
//! on any other sharing its database and chunk store (docs/DESIGN.md,
//! "Garbage collection"). The lock is the database's across servers
//! ([`Database::store_lock`](crate::db::Database::store_lock), PostgreSQL's
//! advisory lock) taken before the store's own
//! ([`BlobStore::lock`](crate::blobs::BlobStore::lock)); the marks are the
//! store's ([`BlobStore::touch`](crate::blobs::BlobStore::touch): a file's
//! mtime, an object's LastModified); the order of the steps is kept here.
//!
//! Every writer (a backup asking which chunks are missing, uploading one,
//! or finishing; an import) sets a chunk's modification time to now when
//! it asks about, uploads or names it (unless it was set within
//! [`TOUCH_SKIP`]), holding the store lock shared. gc:
//! 1. notes its start and the uploads open at that moment, failing those
//!    idle for longer than `max_age`; its cutoff is the earlier of its
//!    start and the oldest open upload's creation, minus [`GC_MARGIN`];
//! 2. then marks every chunk named by a complete backup;
//! 3. then, one chunk group at a time with the store lock held
//!    exclusive, removes the chunks that are unmarked *and* last touched
//!    before the cutoff.
//!
//! A backup completing after step 2 was open at step 1 or opened later;
//! either way it touched each chunk it names at or after its creation
//! (less [`TOUCH_SKIP`]), which is after the cutoff: its chunks are kept.
//! Touch and removal exclude each other through the lock, so a writer
//! either sees a chunk gone (and uploads it again) or gc sees it touched.

use std::collections::HashSet;

use anyhow::{anyhow, Result};
use bootvault_common::image::{ChunkId, Manifest};
use serde::Serialize;

pub use crate::db::OpenUpload;

use super::{now, Vault};

/// gc keeps unreferenced chunks touched less than this before its start
/// (or before the oldest open upload's start). Larger than [`TOUCH_SKIP`],
/// and a margin against clock granularity.
pub const GC_MARGIN: i64 = 15 * 60;
/// A chunk touched less than this ago is not touched again (saves a
/// metadata write per chunk on deduplicated backups).
pub const TOUCH_SKIP: i64 = 5 * 60;

/// The margin in effect, and the touch skip (a third of it). Benchmarks
/// and soaks shorten both for every process of a run with
/// `BOOTVAULT_GC_MARGIN=SECONDS` (at least 6), so gc removes chunks within
/// minutes; the proof of safety holds for any margin larger than the skip.
pub fn margins() -> (i64, i64) {
    static MARGINS: std::sync::OnceLock<(i64, i64)> = std::sync::OnceLock::new();
    *MARGINS.get_or_init(|| {
        match std::env::var("BOOTVAULT_GC_MARGIN").ok().and_then(|v| v.trim().parse::<i64>().ok()) {
            Some(m) if m >= 6 => (m, m / 3),
            _ => (GC_MARGIN, TOUCH_SKIP),
        }
    })
}

#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Uploads idle for longer than the maximum age, now failed.
    pub stale_uploads: u64,
    pub chunks_removed: u64,
    pub bytes_freed: u64,
    /// Chunks some complete backup names.
    pub chunks_kept: u64,
    /// Unreferenced chunks kept because they were touched after the cutoff
    /// (by an upload still open or finished meanwhile, or just recently).
    pub recent_kept: u64,
    /// Chunks touched before this unix time and unreferenced were removed.
    pub cutoff: i64,
    /// The uploads open when gc started; the oldest sets the cutoff.
    pub open_uploads: Vec<OpenUpload>,
}

/// Where gc is; a test hook may hold it there (see [`Vault::gc_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcPhase {
    /// Cutoff and open uploads noted, nothing marked yet.
    Started,
    /// Every complete backup's chunks marked; the sweep comes next.
    Marked,
    /// One chunk directory swept.
    Swept,
}

impl Vault {
    /// Marks uploads idle for longer than `max_age` seconds failed, then
    /// removes every chunk that no complete backup names and that nobody
    /// touched since the cutoff (see the module doc).
    pub fn gc(&self, max_age: i64) -> Result<GcReport> {
        self.gc_with(max_age, &mut |_| {})
    }

    /// [`Vault::gc`], calling `hook` at each phase (tests hold gc there
    /// while backups run).
    pub fn gc_with(&self, max_age: i64, hook: &mut dyn FnMut(GcPhase)) -> Result<GcReport> {
        let mut report = GcReport::default();
        let start = now();
        (report.stale_uploads, report.open_uploads) = self.db.close_stale_uploads(start - max_age, start, max_age)?;
        let oldest = report.open_uploads.iter().map(|u| u.created).min().unwrap_or(start);
        report.cutoff = start.min(oldest) - margins().0;
        hook(GcPhase::Started);

        // Mark: after noting the open uploads (a backup completing between
        // the two steps is then in one of them).
        let mut keep: HashSet<ChunkId> = HashSet::new();
        for b in self.list_backups(None, false)? {
            let bytes = match self.manifest(b.id) {
                Ok(bytes) => bytes,
                // Deleted since it was listed (`backups rm` meanwhile): nothing to keep.
                Err(_) if self.backup(b.id)?.is_none() => continue,
                // A complete backup whose manifest cannot be read: removing
                // anything now could remove its chunks. Stop.
                Err(e) => return Err(e.context(format!("gc stopped, nothing removed: backup {} is unreadable", b.id))),
            };
            let m = Manifest::decode(&bytes)
                .map_err(|e| anyhow!("gc stopped, nothing removed: manifest of backup {}: {e}", b.id))?;
            keep.extend(m.data_ids());
        }
        hook(GcPhase::Marked);

        for group in self.blobs.groups()? {
            self.sweep(&group, &keep, report.cutoff, &mut report)?;
            hook(GcPhase::Swept);
        }
        // Temporary files of writes that died half-way (none of a running
        // writer: those are newer than the cutoff).
        self.blobs.clean_temp(report.cutoff);
        self.db.set_last_gc(start)?;
        Ok(report)
    }

    /// Removes one group's chunks that are unmarked and older than the
    /// cutoff, with the store locked exclusive.
    fn sweep(&self, group: &str, keep: &HashSet<ChunkId>, cutoff: i64, report: &mut GcReport) -> Result<()> {
        let _lock = self.store_lock(true)?;
        for b in self.blobs.list(group)? {
            if b.id.is_some_and(|id| keep.contains(&id)) {
                report.chunks_kept += 1;
                continue;
            }
            if b.touched >= cutoff {
                report.recent_kept += 1;
                continue;
            }
            self.blobs.remove(&b)?;
            report.bytes_freed += b.len;
            report.chunks_removed += 1;
        }
        Ok(())
    }
}
