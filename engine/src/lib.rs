//! The backup/restore engine. The same code runs in the PID 1 (against
//! `/dev/vda`) and on the host (`bootvault backup --disk FILE`, the
//! benchmarks), so what is tested and measured on the host is what runs
//! on the PC.
//!
//! * [`device`] — block devices and image files behind one type.
//! * [`client`] — the HTTP protocol of docs/PROTOCOL.md, over [`http`]
//!   (HTTP/1.1) and, for `https://`, [`tls`] ([`tls13`]: TLS 1.3 with the
//!   server's certificate pinned).
//! * [`backup`], [`restore`] — the pipelines: worker threads read, hash,
//!   compress and send (or fetch, verify and write) in parallel with a
//!   bounded number of chunks in memory.
//! * [`store`] — what the pipelines need from where backups live; the
//!   client is one store, [`local_store`] (a directory on a local drive,
//!   the server's layout) another.
//! * [`progress`] — the console progress line (pure).
//! * [`lock`] — restore passwords: Argon2id key, challenge–response unlock.
//! * [`memory`] — the workers and chunks in flight that fit the PC's memory.

pub mod backup;
pub mod client;
pub mod device;
pub mod http;
pub mod local_store;
pub mod lock;
pub mod memory;
pub mod progress;
pub mod restore;
pub mod store;
pub mod tls;
pub mod tls13;

use std::fmt;

/// One readable line: what failed, on which object, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError(pub String);

impl EngineError {
    pub fn new(msg: impl Into<String>) -> EngineError {
        EngineError(msg.into())
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EngineError {}

/// Worker threads to use: two per core, at least four, at most eight.
/// A worker spends much of its time waiting on the server (a missing
/// query, an upload the server verifies and syncs, a fetch), so more
/// workers than cores keep the cores busy: on two cores, four workers
/// back up the bench disks about 20 % faster than two and restore up to
/// twice as fast (BENCHMARKS.md "Imaging real-looking disks"). Memory:
/// `workers × group` chunks plus their blobs.
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores * 2).clamp(4, 8)
}
