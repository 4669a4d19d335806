//! Temporary directories for fixture trees (no extra crate for it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "bootvault-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A disk as the probe would describe it: no table, no filesystem,
/// 512-byte sectors; tests set what they need.
pub fn bare_disk(name: &str, bytes: u64, removable: bool) -> crate::disks::Disk {
    crate::disks::Disk {
        name: name.into(),
        bytes,
        logical: 512,
        physical: 512,
        model: "-".into(),
        serial: "-".into(),
        removable,
        rotational: false,
        table: Ok(None),
        parts: Vec::new(),
        fs: None,
    }
}
