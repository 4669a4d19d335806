//! Garbage collection that is safe while backups run, and the chunk
//! store's lock and marks that make it so (docs/DESIGN.md, "Garbage
//! collection").
//!
//! Every writer (a backup asking which chunks are missing, uploading one,
//! or finishing; an import) sets a chunk's modification time to now when
//! it asks about, uploads or names it (unless it was set within
//! [`TOUCH_SKIP`]), holding `DATA/chunks.lock` shared. gc:
//! 1. notes its start and the uploads open at that moment, failing those
//!    idle for longer than `max_age`; its cutoff is the earlier of its
//!    start and the oldest open upload's creation, minus [`GC_MARGIN`];
//! 2. then marks every chunk named by a complete backup;
//! 3. then, one chunk directory at a time with `DATA/chunks.lock` held
//!    exclusive, removes the chunks that are unmarked *and* last touched
//!    before the cutoff.
//!
//! A backup completing after step 2 was open at step 1 or opened later;
//! either way it touched each chunk it names at or after its creation
//! (less [`TOUCH_SKIP`]), which is after the cutoff: its chunks are kept.
//! Touch and removal exclude each other through the lock, so a writer
//! either sees a chunk gone (and uploads it again) or gc sees it touched.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use bootvault_common::image::{self, ChunkId, Manifest};
use rusqlite::params;
use serde::Serialize;

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

/// An upload that was open while gc ran, holding back what it may remove.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OpenUpload {
    pub id: i64,
    pub pc: String,
    pub created: i64,
    pub last_active: i64,
}

#[derive(Debug, Default, Clone, Serialize)]
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

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Vault {
    /// `DATA/chunks.lock`, held shared by writers and exclusive by gc's
    /// sweep of one directory. Released when the file is dropped.
    pub(super) fn chunk_lock(&self, exclusive: bool) -> Result<File> {
        let p = self.dir.join("chunks.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        if exclusive { f.lock() } else { f.lock_shared() }.with_context(|| format!("locking {}", p.display()))?;
        Ok(f)
    }

    /// The stored blob's length, marking the chunk as in use now (see the
    /// module doc); None if it is not in the store. Call with the chunk
    /// lock held shared.
    pub(super) fn touch_chunk(&self, id: &ChunkId) -> Result<Option<u32>> {
        let p = self.chunk_path(id);
        let meta = match fs::metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        let now = SystemTime::now();
        let touched = meta.modified().map(unix).unwrap_or(0);
        if touched + margins().1 <= unix(now) {
            fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(now))
                .with_context(|| format!("marking {} in use", p.display()))?;
        }
        Ok(Some(meta.len() as u32))
    }

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
        {
            let db = self.db();
            report.stale_uploads = db.execute(
                "UPDATE backups SET state = 'failed', finished = ?2,
                   reason = 'abandoned upload: no activity for ' || ?3 || ' s (gc)'
                 WHERE state = 'uploading' AND MAX(last_active, created) <= ?1",
                params![start - max_age, start, max_age],
            )? as u64;
            db.execute(
                "DELETE FROM upload_chunks WHERE backup NOT IN (SELECT id FROM backups WHERE state = 'uploading')",
                [],
            )?;
            let mut st = db.prepare(
                "SELECT id, pc, created, MAX(last_active, created) FROM backups WHERE state = 'uploading' ORDER BY created",
            )?;
            report.open_uploads = st
                .query_map([], |r| {
                    Ok(OpenUpload { id: r.get(0)?, pc: r.get(1)?, created: r.get(2)?, last_active: r.get(3)? })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
        }
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

        let cutoff = UNIX_EPOCH + Duration::from_secs(report.cutoff.max(0) as u64);
        let mut dirs: Vec<_> = fs::read_dir(self.dir.join("chunks"))?.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs {
            self.sweep_dir(&dir, &keep, cutoff, &mut report)?;
            hook(GcPhase::Swept);
        }
        // Temporary files of writes that died half-way (none of a running
        // writer: those are newer than the cutoff).
        for f in fs::read_dir(self.dir.join("tmp"))?.flatten() {
            if f.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < cutoff) {
                let _ = fs::remove_file(f.path());
            }
        }
        self.db().execute(
            "INSERT INTO meta (key, value) VALUES ('last_gc', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1",
            [start.to_string()],
        )?;
        Ok(report)
    }

    fn sweep_dir(&self, dir: &Path, keep: &HashSet<ChunkId>, cutoff: SystemTime, report: &mut GcReport) -> Result<()> {
        let _lock = self.chunk_lock(true)?;
        for f in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
            let name = f.file_name();
            let id = name.to_str().and_then(image::parse_hex);
            if id.is_some_and(|id| keep.contains(&id)) {
                report.chunks_kept += 1;
                continue;
            }
            let Ok(meta) = f.metadata() else { continue };
            if meta.modified().is_ok_and(|t| t >= cutoff) {
                report.recent_kept += 1;
                continue;
            }
            fs::remove_file(f.path()).with_context(|| format!("removing {}", f.path().display()))?;
            report.bytes_freed += meta.len();
            report.chunks_removed += 1;
        }
        Ok(())
    }
}
