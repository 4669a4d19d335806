//! `--media pxe`: publishes a PC's boot files into the server's data
//! directory through the vault (`DATA/boot/NAME/{vmlinuz,initrd.img,cmdline}`),
//! where the server's network-boot endpoints serve them to the PC's iPXE
//! by MAC address.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bootvault_server::vault::Vault;

/// Publishes `boot_dir`'s files for PC `name` into the server's data
/// directory, and `boot_dir/base.img` (the initramfs without the PC's
/// configuration) with them as the site's template, from which the web
/// console makes the boot files of the PCs it approves; returns the bytes
/// published and where they went.
pub fn publish(vault: &Vault, name: &str, boot_dir: &Path, config: &str) -> Result<(u64, PathBuf)> {
    let files = ["vmlinuz", "initrd.img", "cmdline"]
        .into_iter()
        .map(|f| {
            let p = boot_dir.join(f);
            fs::read(&p).with_context(|| format!("reading {}", p.display())).map(|bytes| (f, bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = vault.publish_boot_files(name, &files)?;
    let read = |f: &str| {
        let p = boot_dir.join(f);
        fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    vault.publish_site_template(&[
        ("vmlinuz", read("vmlinuz")?),
        ("base.img", read("base.img")?),
        ("cmdline", read("cmdline")?),
        ("config", config.as_bytes().to_vec()),
        ("pc", name.as_bytes().to_vec()),
    ])?;
    Ok((bytes, vault.boot_dir(name)))
}
