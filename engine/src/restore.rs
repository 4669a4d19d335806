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
//! A password-protected backup needs an unlock ticket in the client
//! (`lock::unlock`, or a server job's); without one the manifest is
//! refused and nothing is written. Cancelling (`RestoreOptions::cancel`)
//! stops the workers before their next fetch or write; the error then says
//! how much of the disk was written.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootvault_common::image::{self, Chunk, Manifest};
use bootvault_common::units::human_bytes;

use crate::client::Client;
use crate::device::Device;
use crate::progress::Progress;
use crate::EngineError;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub threads: usize,
    /// Read the whole disk back afterwards and compare with the manifest.
    pub verify: bool,
    /// Set from another thread to stop the restore (the disk is then
    /// incomplete).
    pub cancel: Arc<AtomicBool>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions { threads: crate::default_threads(), verify: false, cancel: Arc::new(AtomicBool::new(false)) }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub id: i64,
    pub disk_bytes: u64,
    pub target_bytes: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub fetched_bytes: u64,
    pub verified: bool,
    /// Why the kernel refused to re-read the partition table, if it did.
    pub reread_error: Option<String>,
    pub elapsed: Duration,
}

impl RestoreReport {
    /// The one-line outcome; `target` names the disk written.
    pub fn summary(&self, target: &str) -> String {
        format!(
            "restore of backup {} complete: {} onto {target} ({}), {} chunks ({} all-zero), {} fetched{}, {:.1} s",
            self.id,
            human_bytes(self.disk_bytes),
            human_bytes(self.target_bytes),
            self.chunks,
            self.zero_chunks,
            human_bytes(self.fetched_bytes),
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

/// The error of a cancelled restore, `written` of `total` bytes done.
pub fn cancelled_message(written: u64, total: u64) -> String {
    if written == 0 {
        return "restore cancelled before anything was written; the disk is unchanged".into();
    }
    format!("restore cancelled after {} of {}; the disk is now incomplete", human_bytes(written), human_bytes(total))
}

pub fn fetch_manifest(client: &Client, backup: i64) -> Result<Manifest, EngineError> {
    let bytes = client.manifest(backup)?;
    Manifest::decode(&bytes).map_err(|e| EngineError::new(format!("manifest of backup {backup} is damaged: {e}")))
}

pub fn restore(
    dev: &Device,
    client: &Client,
    backup: i64,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RestoreReport, EngineError> {
    let start = Instant::now();
    let m = fetch_manifest(client, backup)?;
    check_target(&m, dev.bytes, dev.logical)?;
    let count = m.chunks.len();
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let fetched = AtomicU64::new(0);
    let error: Mutex<Option<EngineError>> = Mutex::new(None);
    let zeros = vec![0u8; m.chunk_size as usize];
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
        let mut workers = Vec::new();
        for _ in 0..opts.threads.max(1) {
            workers.push(s.spawn(|| {
                while !stopping() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let (off, len) = m.chunk_range(i);
                    let r = match &m.chunks[i] {
                        Chunk::Zero => dev.zero_range(off, len as u64, &zeros),
                        Chunk::Data { id, .. } => {
                            let plain = client
                                .chunk(backup, id, u64::from(image::MAX_CHUNK_SIZE) + 64)
                                .and_then(|blob| {
                                    fetched.fetch_add(blob.len() as u64, Ordering::Relaxed);
                                    image::decode_verified(&blob, len, id).map_err(|e| EngineError::new(e.to_string()))
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
                    done.fetch_add(len as u64, Ordering::Relaxed);
                }
            }));
        }
        let mut last = Instant::now();
        while workers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                progress(&snapshot(start));
            }
        }
    });
    if let Some(e) = error.lock().ok().and_then(|mut e| e.take()) {
        return Err(e);
    }
    let written = done.load(Ordering::Relaxed);
    if opts.cancel.load(Ordering::Relaxed) && written < m.disk_bytes {
        // What was written stays written: flush it, so the message is true.
        let _ = dev.sync();
        return Err(EngineError::new(cancelled_message(written, m.disk_bytes)));
    }
    dev.sync()?;
    progress(&snapshot(start));
    let reread_error = dev.reread_partitions();
    if opts.verify {
        verify(dev, &m)?;
    }
    Ok(RestoreReport {
        id: backup,
        disk_bytes: m.disk_bytes,
        target_bytes: dev.bytes,
        chunks: count as u64,
        zero_chunks: m.zero_chunks(),
        fetched_bytes: fetched.load(Ordering::Relaxed),
        verified: opts.verify,
        reread_error,
        elapsed: start.elapsed(),
    })
}

/// Reads the restored range back and compares every chunk with the
/// manifest.
pub fn verify(dev: &Device, m: &Manifest) -> Result<(), EngineError> {
    let mut buf = vec![0u8; m.chunk_size as usize];
    for (i, c) in m.chunks.iter().enumerate() {
        let (off, len) = m.chunk_range(i);
        dev.read_at(&mut buf[..len], off)?;
        let ok = match c {
            Chunk::Zero => image::is_zero(&buf[..len]),
            Chunk::Data { id, .. } => image::chunk_id(&buf[..len]) == *id,
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
    fn cancelled_messages() {
        assert_eq!(
            cancelled_message(12 << 20, 64 << 20),
            "restore cancelled after 12.0 MiB of 64.0 MiB; the disk is now incomplete"
        );
        assert!(cancelled_message(0, 64 << 20).contains("the disk is unchanged"));
    }
}
