//! The backup/restore engine. The same code runs in the PID 1 (against
//! `/dev/vda`) and on the host (`bootvault backup --disk FILE`, the
//! benchmarks), so what is tested and measured on the host is what runs
//! on the PC.
//!
//! * [`device`] — block devices and image files behind one type.
//! * [`client`] — the HTTP protocol of docs/PROTOCOL.md.
//! * [`backup`], [`restore`] — the pipelines: worker threads read, hash,
//!   compress and send (or fetch, verify and write) in parallel with a
//!   bounded number of chunks in memory.
//! * [`progress`] — the console progress line (pure).
//! * [`lock`] — restore passwords: Argon2id key, challenge–response unlock.

pub mod backup;
pub mod client;
pub mod device;
pub mod lock;
pub mod progress;
pub mod restore;

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

/// Worker threads to use: one per core, at least two so reading and
/// sending overlap even on one core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(2, 8)
}
