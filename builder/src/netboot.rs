//! `--media pxe`: publishes a PC's boot files into the server's data
//! directory (`DATA/boot/NAME/{vmlinuz,initrd.img,cmdline}`), where the
//! server's network-boot endpoints serve them to the PC's iPXE by MAC
//! address. Each file is written to a temporary name, synced and renamed,
//! so a PC booting meanwhile gets the old files or the new ones, never a
//! half-written one.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Copies `boot_dir`'s files for PC `name` into `data`; returns the bytes
/// published.
pub fn publish(data: &Path, name: &str, boot_dir: &Path) -> Result<u64> {
    let dest = data.join("boot").join(name);
    fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut total = 0;
    for file in ["vmlinuz", "initrd.img", "cmdline"] {
        let src = boot_dir.join(file);
        let bytes = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        let tmp = dest.join(format!(".{file}.tmp"));
        let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, dest.join(file)).with_context(|| format!("renaming into {}", dest.join(file).display()))?;
        total += bytes.len() as u64;
    }
    fs::File::open(&dest).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dest.display()))?;
    Ok(total)
}
