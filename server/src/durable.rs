//! Files written whole or not at all: a temporary file in the data
//! directory's `tmp/`, fsync'ed, renamed over its destination, and the
//! destination's directory fsync'ed. A reader meanwhile sees the old file
//! or the new one, never half of one; a full disk leaves nothing behind.
//!
//! Used by the chunk store, the published boot files and the admin token;
//! it owns no path but `tmp/`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, Context, Result};

/// Writes through one temporary directory (on the destinations' filesystem).
pub struct DurableWriter {
    tmp: PathBuf,
    seq: AtomicU64,
}

impl DurableWriter {
    pub fn new(tmp: &Path) -> DurableWriter {
        DurableWriter { tmp: tmp.to_owned(), seq: AtomicU64::new(0) }
    }

    /// The temporary directory (gc removes what crashed writers left there).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// A fresh temporary path (unique in this process).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        self.tmp.join(format!("{what}{}-{}.tmp", std::process::id(), self.seq.fetch_add(1, Ordering::Relaxed)))
    }

    /// Writes `bytes` to a temporary file, fsyncs it, renames it to `dest`
    /// and fsyncs the directory.
    pub fn write(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.temp_path("");
        let parent = dest.parent().ok_or_else(|| anyhow!("{} has no parent", dest.display()))?;
        fs::create_dir_all(parent)?;
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .with_context(|| format!("writing {}", tmp.display()))
            .and_then(|()| fs::rename(&tmp, dest).with_context(|| format!("renaming into {}", dest.display())));
        if written.is_err() {
            // A full disk must not leave half-written files behind.
            let _ = fs::remove_file(&tmp);
        }
        written?;
        fsync_dir(parent)
    }
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))
}
