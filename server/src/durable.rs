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

    /// Writes `bytes` readable by the owner only (mode 0600), whole or not
    /// at all. `replace: false` keeps a `dest` that exists (checked
    /// atomically by a hard link where the filesystem has them: two
    /// processes creating it at once both end up reading the first one's
    /// file) and says whether this call created it.
    pub fn write_private(&self, dest: &Path, bytes: &[u8], replace: bool) -> Result<bool> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.temp_path("");
        let parent = dest.parent().ok_or_else(|| anyhow!("{} has no parent", dest.display()))?;
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        fs::create_dir_all(&self.tmp).with_context(|| format!("creating {}", self.tmp.display()))?;
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .with_context(|| format!("writing {}", tmp.display()));
        let placed = written.and_then(|()| {
            if replace {
                fs::rename(&tmp, dest).map(|()| true)
            } else {
                match fs::hard_link(&tmp, dest) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    // A filesystem without hard links: the check and the
                    // rename are two steps there.
                    Err(_) if dest.exists() => Ok(false),
                    Err(_) => fs::rename(&tmp, dest).map(|()| true),
                }
            }
            .with_context(|| format!("creating {}", dest.display()))
        });
        let _ = fs::remove_file(&tmp);
        let created = placed?;
        fsync_dir(parent)?;
        Ok(created)
    }
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_the_owners_and_kept_or_replaced_as_asked() {
        let dir = std::env::temp_dir().join(format!("bv-durable-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let w = DurableWriter::new(&dir.join("tmp"));
        let p = dir.join("sub/secret");
        assert!(w.write_private(&p, b"first", false).expect("created"));
        assert_eq!(fs::metadata(&p).expect("there").permissions().mode() & 0o777, 0o600);
        assert!(!w.write_private(&p, b"second", false).expect("kept"));
        assert_eq!(fs::read(&p).expect("read"), b"first");
        assert!(w.write_private(&p, b"third", true).expect("replaced"));
        assert_eq!(fs::read(&p).expect("read"), b"third");
        assert_eq!(fs::read_dir(dir.join("tmp")).expect("tmp").count(), 0, "no temporary file left");
        fs::remove_dir_all(&dir).expect("cleaning up");
    }
}
