//! The restore pipeline.
//!
//! The manifest is fetched and checked (digest, then target size and
//! logical sector size) before a single byte is written. Worker threads
//! then fetch chunks, inflate them and verify length and BLAKE3 before the
//! bytes reach the disk; all-zero chunks become BLKZEROOUT (or a punched
//! hole in an image file). Writes are whole chunks at chunk-aligned
//! offsets. At the end: flush, re-read the partition table, and optionally
//! read everything back and compare.
//!
//! Free space of a filesystem backed up used-only (`Unused` chunks) is
//! neither fetched nor written: its runs are discarded in a few large
//! requests (BLKDISCARD, a punched hole in an image file) before the
//! workers start, or left as they are on a disk without discard.
//!
//! A differential restore ([`Compare`]): before fetching a chunk, a worker
//! reads that range of the target; a chunk whose bytes are already there
//! (BLAKE3 of the range is its id, or it reads as zeros for an all-zero
//! chunk) is neither fetched nor written. So re-imaging a PC to the image
//! it already holds reads its used data once and writes next to nothing,
//! and a restore that stopped part-way (a damaged chunk, a lost server, a
//! cancel) is finished by running it again. [`Compare::Auto`], the
//! default, stops reading the target once the first chunks show it holds
//! something else (a blank or foreign disk), where reading first would
//! only cost time (BENCHMARKS.md "Differential restore").
//!
//! A password-protected backup needs an unlock ticket in the client
//! (`lock::unlock`, or a server job's); without one the manifest is
//! refused and nothing is written. Cancelling (`RestoreOptions::cancel`)
//! stops the workers before their next fetch or write. A restore that
//! stops once writing may have begun, cancelled or failed, says in its
//! error what it left on the target ([`target_state`]): unchanged, or
//! partly overwritten and by how much.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootvault_common::image::{self, Chunk, ChunkId, Manifest};
use bootvault_common::seal::DataKey;
use bootvault_common::units::human_bytes;

use crate::device::Device;
use crate::memory::{self, Fit, Job};
use crate::progress::Progress;
use crate::store::Store;
use crate::EngineError;

/// The largest piece of zeros a restore writes at once (and holds).
pub(crate) const ZEROS: usize = 64 << 10;

/// Whether a restore reads the target to skip what it already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Compare while it pays: stop once [`AUTO_PROBE`] data chunks were
    /// compared and fewer than one in [`AUTO_MIN_HIT`] was already there.
    Auto,
    Always,
    Never,
}

/// Data chunks [`Compare::Auto`] compares before it judges the target.
pub const AUTO_PROBE: u64 = 32;
/// [`Compare::Auto`] keeps comparing while at least one chunk in this
/// many was already there.
pub const AUTO_MIN_HIT: u64 = 8;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub threads: usize,
    pub compare: Compare,
    /// Read the whole disk back afterwards and compare with the manifest.
    pub verify: bool,
    /// Set from another thread to stop the restore (the disk is then
    /// incomplete).
    pub cancel: Arc<AtomicBool>,
    /// The data key of an encrypted backup.
    pub key: Option<Arc<DataKey>>,
    /// Bytes of memory the restore may size itself from (a third of it, see
    /// [`crate::memory`]); None: what the machine has available at the
    /// start. Fewer workers than `threads` are used where those do not fit.
    pub available: Option<u64>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            threads: crate::default_threads(),
            compare: Compare::Auto,
            verify: false,
            cancel: Arc::new(AtomicBool::new(false)),
            key: None,
            available: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub id: i64,
    pub disk_bytes: u64,
    pub target_bytes: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    /// Chunks (data or all-zero) the target already held: not fetched,
    /// not written.
    pub skipped_chunks: u64,
    /// Chunks fetched from the server.
    pub fetched_chunks: u64,
    /// Blob bytes fetched.
    pub fetched_bytes: u64,
    /// Disk bytes written (fetched chunks and zeroed ranges).
    pub written_bytes: u64,
    /// Free space of the backed-up filesystems: neither fetched nor written.
    pub unused_bytes: u64,
    /// Of that, what the target discarded (the rest kept its old bytes).
    pub discarded_bytes: u64,
    /// Target bytes read to find chunks already there.
    pub compared_bytes: u64,
    pub verified: bool,
    /// Why the kernel refused to re-read the partition table, if it did.
    pub reread_error: Option<String>,
    pub elapsed: Duration,
    /// The workers the memory allowed.
    pub fit: Fit,
}

impl RestoreReport {
    /// The one-line outcome; `target` names the disk written.
    pub fn summary(&self, target: &str) -> String {
        format!(
            "restore of backup {} complete: {} onto {target} ({}), {} chunks ({} all-zero): {} already right on \
             the disk, {} fetched ({}), {} written, {} of free space not written{}, {:.1} s",
            self.id,
            human_bytes(self.disk_bytes),
            human_bytes(self.target_bytes),
            self.chunks,
            self.zero_chunks,
            self.skipped_chunks,
            self.fetched_chunks,
            human_bytes(self.fetched_bytes),
            human_bytes(self.written_bytes),
            human_bytes(self.unused_bytes),
            if self.verified { ", verified by reading back" } else { "" },
            self.elapsed.as_secs_f64()
        )
    }
}

/// Whether a backup fits on a target. Checked before anything is written.
pub fn check_target(m: &Manifest, target_bytes: u64, target_logical: u32) -> Result<(), EngineError> {
    if target_bytes < m.disk_bytes {
        return Err(EngineError::new(format!(
            "target is {} ({target_bytes} bytes), smaller than the backed-up disk's {} ({} bytes); nothing was written",
            human_bytes(target_bytes),
            human_bytes(m.disk_bytes),
            m.disk_bytes
        )));
    }
    if target_logical != m.logical {
        return Err(EngineError::new(format!(
            "target has {target_logical}-byte logical sectors, the backup was made from {}-byte sectors; nothing was written",
            m.logical
        )));
    }
    Ok(())
}

/// How [`target_state`] words a target that this run wrote to: what the
/// console looks for to tell an incomplete disk from an unchanged one.
pub const PARTLY_OVERWRITTEN: &str = "the target disk is now partly overwritten";

/// What a restore that stopped early (cancelled or failed) left on the
/// target, `written` of the backup's `total` bytes written by this run
/// and `matched` found already right: the one place that words it.
pub fn target_state(written: u64, matched: u64, total: u64) -> String {
    if written == 0 {
        return "nothing was written; the target disk is unchanged".into();
    }
    let matched =
        if matched > 0 { format!(", {} already matched the backup", human_bytes(matched)) } else { String::new() };
    format!(
        "{PARTLY_OVERWRITTEN} ({} of {} written{matched}): it will not boot as it is; run the restore again, which \
         writes only what still differs, or restore another backup",
        human_bytes(written),
        human_bytes(total)
    )
}

/// The error of a cancelled restore (see [`target_state`]).
pub fn cancelled_message(written: u64, matched: u64, total: u64) -> String {
    format!("restore cancelled; {}", target_state(written, matched, total))
}

/// The manifest of a backup, unsealed with `key` when it is encrypted
/// (and checked against the index the store keeps); a locked backup with
/// a key of its own opens with the wrap key of the password the store
/// was unlocked with.
pub fn fetch_manifest(client: &dyn Store, backup: i64, key: Option<&DataKey>) -> Result<Manifest, EngineError> {
    fetch_manifest_sealed(client, backup, key).map(|(m, _)| m)
}

/// [`fetch_manifest`], and the key its chunks open with (None: the
/// backup is not encrypted).
fn fetch_manifest_sealed(
    client: &dyn Store,
    backup: i64,
    key: Option<&DataKey>,
) -> Result<(Manifest, Option<Arc<DataKey>>), EngineError> {
    let bytes = client.manifest(backup)?;
    let m = Manifest::decode(&bytes)
        .map_err(|e| EngineError::new(format!("manifest of backup {backup} is damaged: {e}")))?;
    let wrapped = m.sealed.as_ref().is_some_and(|s| s.wrapped.is_some());
    let own = match client.wrap_key(backup) {
        Some(wrap) if wrapped => {
            m.own_key(&wrap).map_err(|e| EngineError::new(format!("backup {backup}: {e}")))?.map(Arc::new)
        }
        _ => None,
    };
    let key: Option<Arc<DataKey>> = match (own, m.sealed.is_some()) {
        (Some(own), _) => Some(own),
        (None, true) => key.map(|k| Arc::new(k.clone())),
        (None, false) => None,
    };
    let m = m.unsealed(key.as_deref()).map_err(|e| EngineError::new(format!("backup {backup}: {e}")))?;
    Ok((m, key))
}

pub fn restore(
    dev: &Device,
    client: &dyn Store,
    backup: i64,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RestoreReport, EngineError> {
    let start = Instant::now();
    // A key given for a backup that is not encrypted is not used.
    let (m, key) = fetch_manifest_sealed(client, backup, opts.key.as_deref())?;
    let key = key.as_deref();
    check_target(&m, dev.bytes, dev.logical)?;
    let job = Job::Restore { chunk_size: m.chunk_size };
    let fit = memory::fit(job, opts.available.or_else(memory::available), opts.threads, 1)
        .map_err(|e| EngineError::new(format!("{e}; nothing was written")))?;
    let count = m.chunks.len();
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    let matched = AtomicU64::new(0);
    let skipped = AtomicU64::new(0);
    let fetched_chunks = AtomicU64::new(0);
    let fetched = AtomicU64::new(0);
    let compared = AtomicU64::new(0);
    let (checked, hits) = (AtomicU64::new(0), AtomicU64::new(0));
    let comparing = AtomicBool::new(opts.compare != Compare::Never);
    let error: Mutex<Option<EngineError>> = Mutex::new(None);
    let finished = (Mutex::new(0usize), std::sync::Condvar::new());
    // Free space first, in runs: a few large discards instead of one per chunk.
    let (mut unused, mut discarded) = (0u64, 0u64);
    for (off, len) in unused_runs(&m) {
        if opts.cancel.load(Ordering::Relaxed) {
            break;
        }
        unused += len;
        if dev.discard(off, len) {
            discarded += len;
        }
        done.fetch_add(len, Ordering::Relaxed);
    }
    // Zeros for a target that cannot zero a range itself, written a piece at a time.
    let zeros = vec![0u8; (m.chunk_size as usize).min(ZEROS)];
    let fail = |e: EngineError| {
        abort.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = error.lock() {
            slot.get_or_insert(e);
        }
    };
    let stopping = || abort.load(Ordering::Relaxed) || opts.cancel.load(Ordering::Relaxed);
    let snapshot = |start: Instant| Progress {
        action: "restore",
        done: done.load(Ordering::Relaxed),
        total: m.disk_bytes,
        sent: fetched.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    };
    std::thread::scope(|s| {
        let workers = fit.threads;
        for _ in 0..workers {
            s.spawn(|| {
                // Counted out however the worker ends; wakes the progress loop.
                let _done = Finished(&finished);
                // The worker's one chunk-sized buffer: what the target holds now.
                let mut current = vec![0u8; m.chunk_size as usize];
                while !stopping() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let (off, len) = m.chunk_range(i);
                    if m.chunks[i] == Chunk::Unused {
                        continue;
                    }
                    if comparing.load(Ordering::Relaxed) {
                        compared.fetch_add(len as u64, Ordering::Relaxed);
                        let there =
                            already_there(dev, &m.chunks[i], m.quick.get(i).copied(), key, off, &mut current[..len]);
                        if let Chunk::Data { .. } = m.chunks[i] {
                            let n = checked.fetch_add(1, Ordering::Relaxed) + 1;
                            let h = hits.fetch_add(u64::from(there), Ordering::Relaxed) + u64::from(there);
                            if opts.compare == Compare::Auto && n >= AUTO_PROBE && h * AUTO_MIN_HIT < n {
                                comparing.store(false, Ordering::Relaxed);
                            }
                        }
                        if there {
                            skipped.fetch_add(1, Ordering::Relaxed);
                            matched.fetch_add(len as u64, Ordering::Relaxed);
                            done.fetch_add(len as u64, Ordering::Relaxed);
                            continue;
                        }
                    }
                    let r = match &m.chunks[i] {
                        Chunk::Unused => Ok(()),
                        Chunk::Zero => dev.zero_range(off, len as u64, &zeros),
                        Chunk::Data { id, .. } => {
                            // A valid blob is at most the chunk plus its tag.
                            let plain = client
                                .chunk(backup, id, len as u64 + 4096)
                                .and_then(|mut blob| {
                                    fetched.fetch_add(blob.len() as u64, Ordering::Relaxed);
                                    fetched_chunks.fetch_add(1, Ordering::Relaxed);
                                    image::decode_with(&mut blob, len, id, key)
                                        .map_err(|e| EngineError::new(e.to_string()))
                                })
                                .map_err(|e| {
                                    EngineError::new(format!(
                                        "chunk {i} at offset {off} ({}): {e}; restore stopped there",
                                        human_bytes(off)
                                    ))
                                });
                            // Fetching takes a while: nothing more is written once cancelled.
                            if stopping() {
                                return;
                            }
                            plain.and_then(|plain| dev.write_at(&plain, off))
                        }
                    };
                    if let Err(e) = r {
                        fail(e);
                        return;
                    }
                    written.fetch_add(len as u64, Ordering::Relaxed);
                    done.fetch_add(len as u64, Ordering::Relaxed);
                }
            });
        }
        let mut last = Instant::now();
        let (count, wake) = &finished;
        let mut ended = count.lock().unwrap_or_else(|p| p.into_inner());
        while *ended < workers {
            ended = wake.wait_timeout(ended, Duration::from_millis(250)).unwrap_or_else(|p| p.into_inner()).0;
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                progress(&snapshot(start));
            }
        }
    });
    let written = written.load(Ordering::Relaxed);
    let matched = matched.load(Ordering::Relaxed);
    // Whatever stops the restore from here on, the error says what the target holds.
    let stopped = |e: EngineError| {
        // What was written stays written: flush it, so the message is true.
        let _ = dev.sync();
        EngineError::new(format!("{e}; {}", target_state(written, matched, m.disk_bytes)))
    };
    if let Some(e) = error.lock().ok().and_then(|mut e| e.take()) {
        return Err(stopped(e));
    }
    if opts.cancel.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < m.disk_bytes {
        let _ = dev.sync();
        return Err(EngineError::new(cancelled_message(written, matched, m.disk_bytes)));
    }
    dev.sync().map_err(stopped)?;
    progress(&snapshot(start));
    let reread_error = dev.reread_partitions();
    if opts.verify {
        verify(dev, &m, key).map_err(stopped)?;
    }
    Ok(RestoreReport {
        id: backup,
        disk_bytes: m.disk_bytes,
        target_bytes: dev.bytes,
        chunks: count as u64,
        zero_chunks: m.zero_chunks(),
        skipped_chunks: skipped.load(Ordering::Relaxed),
        fetched_chunks: fetched_chunks.load(Ordering::Relaxed),
        fetched_bytes: fetched.load(Ordering::Relaxed),
        written_bytes: written,
        unused_bytes: unused,
        discarded_bytes: discarded,
        compared_bytes: compared.load(Ordering::Relaxed),
        verified: opts.verify,
        reread_error,
        elapsed: start.elapsed(),
        fit,
    })
}

/// Counts a worker out when it ends, however it ends.
struct Finished<'a>(&'a (Mutex<usize>, std::sync::Condvar));

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        let (count, wake) = self.0;
        *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        wake.notify_all();
    }
}

/// Whether the target already holds chunk `c` at `off` (`buf` is the
/// chunk's length; it is left holding the target's bytes). A range the
/// target cannot read (past its end, a read error) does not hold it: the
/// chunk is then fetched and written, and the write says what is wrong.
///
/// With the manifest's quick fingerprint (XXH3-128, version 2) the
/// comparison costs a fraction of BLAKE3's; manifests without one
/// compare BLAKE3 ids.
fn already_there(
    dev: &Device,
    c: &Chunk,
    quick: Option<u128>,
    key: Option<&DataKey>,
    off: u64,
    buf: &mut [u8],
) -> bool {
    if off + buf.len() as u64 > dev.bytes || dev.read_at(buf, off).is_err() {
        return false;
    }
    match (c, quick) {
        (Chunk::Zero, _) => image::is_zero(buf),
        (Chunk::Data { .. }, Some(q)) if q != 0 => image::quick_id(buf) == q,
        (Chunk::Data { id, .. }, _) => id_of(buf, key) == *id,
        (Chunk::Unused, _) => true,
    }
}

/// `(offset, length)` of each run of consecutive `Unused` chunks.
pub fn unused_runs(m: &Manifest) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, c) in m.chunks.iter().enumerate() {
        if *c != Chunk::Unused {
            continue;
        }
        let (off, len) = m.chunk_range(i);
        match runs.last_mut() {
            Some(last) if last.0 + last.1 == off => last.1 += len as u64,
            _ => runs.push((off, len as u64)),
        }
    }
    runs
}

/// Reads the restored range back and compares every chunk with the
/// manifest (free space, which holds whatever it held, is skipped).
/// A chunk's id, keyed when the backup is encrypted.
fn id_of(plain: &[u8], key: Option<&DataKey>) -> ChunkId {
    match key {
        Some(k) => k.chunk_id(plain),
        None => image::chunk_id(plain),
    }
}

pub fn verify(dev: &Device, m: &Manifest, key: Option<&DataKey>) -> Result<(), EngineError> {
    let mut buf = vec![0u8; m.chunk_size as usize];
    for (i, c) in m.chunks.iter().enumerate() {
        if *c == Chunk::Unused {
            continue;
        }
        let (off, len) = m.chunk_range(i);
        dev.read_at(&mut buf[..len], off)?;
        let ok = match c {
            Chunk::Zero => image::is_zero(&buf[..len]),
            Chunk::Data { id, .. } => id_of(&buf[..len], key) == *id,
            Chunk::Unused => true,
        };
        if !ok {
            return Err(EngineError::new(format!("verify: chunk {i} at offset {off} differs from the backup")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootvault_common::image::TableKind;

    fn manifest(disk_bytes: u64, logical: u32) -> Manifest {
        Manifest {
            created: 0,
            chunk_size: 1 << 20,
            disk_bytes,
            logical,
            physical: logical,
            table: TableKind::None,
            pc: "pc".into(),
            name: "n".into(),
            model: String::new(),
            serial: String::new(),
            extents: Vec::new(),
            partitions: Vec::new(),
            quick: Vec::new(),
            sealed: None,
            chunks: vec![Chunk::Zero; Manifest::chunk_count(disk_bytes, 1 << 20) as usize],
        }
    }

    #[test]
    fn target_checks() {
        let m = manifest(64 << 20, 512);
        assert!(check_target(&m, 64 << 20, 512).is_ok());
        assert!(check_target(&m, 128 << 20, 512).is_ok());
        let e = check_target(&m, 32 << 20, 512).unwrap_err().to_string();
        assert!(e.contains("smaller than the backed-up disk's 64.0 MiB"), "{e}");
        assert!(e.contains("nothing was written"), "{e}");
        let e = check_target(&m, 64 << 20, 4096).unwrap_err().to_string();
        assert!(e.contains("4096-byte logical sectors"), "{e}");
    }

    #[test]
    fn stopped_messages() {
        assert_eq!(
            target_state(180 << 20, 0, 1 << 30),
            "the target disk is now partly overwritten (180.0 MiB of 1.0 GiB written): it will not boot as it is; \
             run the restore again, which writes only what still differs, or restore another backup"
        );
        let again = target_state(20 << 20, 180 << 20, 1 << 30);
        assert!(again.starts_with(PARTLY_OVERWRITTEN), "{again}");
        assert!(again.contains("(20.0 MiB of 1.0 GiB written, 180.0 MiB already matched the backup)"), "{again}");
        assert_eq!(target_state(0, 5 << 20, 1 << 30), "nothing was written; the target disk is unchanged");
        assert_eq!(
            cancelled_message(12 << 20, 0, 64 << 20),
            format!("restore cancelled; {}", target_state(12 << 20, 0, 64 << 20))
        );
        assert!(!cancelled_message(0, 0, 64 << 20).contains(PARTLY_OVERWRITTEN));
    }
}
