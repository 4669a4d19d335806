//! Assembling a PC's initramfs: the init, the modules its profile needs
//! (closed over dependencies), the filtered module index, the per-PC
//! config and the few nodes the kernel needs before devtmpfs, as a
//! reproducible newc archive compressed with gzip.
//!
//! Reproducible: entries are sorted, times and owners zeroed, the gzip
//! header carries no time or name, so the same inputs give the same bytes.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use bootvault_common::modules::Index;

use crate::kernel::Kernel;
use bootvault_common::cpio::{self, Entry, Format, Kind};

/// Where the PC's configuration is in the archive.
pub const CONFIG_PATH: &str = "etc/bootvault.conf";

/// What went into an image, for the size report.
#[derive(Debug, Default)]
pub struct Report {
    pub init_bytes: u64,
    pub modules: Vec<String>,
    pub module_bytes: u64,
    /// The same, gzipped as shipped.
    pub module_packed: u64,
    pub missing: Vec<String>,
    pub cpio_bytes: u64,
    pub compressed_bytes: u64,
}

fn file(path: &str, mode: u32, data: Vec<u8>) -> Entry {
    Entry { path: path.to_owned(), mode, kind: Kind::File(data) }
}

fn dir(path: &str) -> Entry {
    Entry { path: path.to_owned(), mode: 0o755, kind: Kind::Dir }
}

/// The archive entries (uncompressed) and what they hold.
pub fn entries(
    init: &[u8],
    kernel: &Kernel,
    index: &Index,
    wanted: &[String],
    config_text: &str,
    key_text: Option<&str>,
) -> Result<(Vec<Entry>, Report)> {
    let mut report = Report { init_bytes: init.len() as u64, ..Report::default() };
    let mut out = vec![
        file("init", 0o755, init.to_vec()),
        file(CONFIG_PATH, 0o644, config_text.as_bytes().to_vec()),
        Entry { path: "dev/console".into(), mode: 0o600, kind: Kind::CharDev { major: 5, minor: 1 } },
        Entry { path: "dev/null".into(), mode: 0o666, kind: Kind::CharDev { major: 1, minor: 3 } },
    ];
    if let Some(k) = key_text {
        // The data key of backups encrypted on the PC (docs/DESIGN.md).
        out.push(file("etc/bootvault.key", 0o600, format!("{k}\n").into_bytes()));
    }
    for d in ["proc", "sys", "run", "tmp", "root"] {
        out.push(dir(d));
    }
    let (set, missing) = index.closure(wanted.iter().map(String::as_str));
    report.missing = missing;
    let mut shipped = index.restrict(&set);
    let base = format!("lib/modules/{}", kernel.release);
    // Each module gzipped: the init unpacks it in memory to load it, so the
    // initramfs's tmpfs holds about a quarter of the bytes for the whole
    // run (the stock kernel's `qemu` profile: 8.5 MiB of modules in 2.2,
    // memory a small PC has for its backup instead).
    for (name, m) in shipped.modules.iter_mut() {
        let src = kernel.modules.join(&m.path);
        let data = fs::read(&src).with_context(|| format!("reading module {}", src.display()))?;
        let packed = bootvault_common::gz::gzip(&data, 9);
        report.module_bytes += data.len() as u64;
        report.module_packed += packed.len() as u64;
        report.modules.push(name.clone());
        m.path.push_str(bootvault_common::modules::GZ);
        out.push(file(&format!("{base}/{}", m.path), 0o644, packed));
    }
    out.push(file(&format!("{base}/modules.dep"), 0o644, shipped.dep_text().into_bytes()));
    out.push(file(&format!("{base}/modules.alias"), 0o644, shipped.alias_text().into_bytes()));
    Ok((out, report))
}

/// How the archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip -9: every kernel reads it.
    Gzip,
    /// xz, LZMA2 only with CRC32 (what every kernel's decompressor takes:
    /// the x86 filter needs CONFIG_XZ_DEC_X86), about a sixth smaller than
    /// gzip on the init: for the floppy. Made by the `xz` program
    /// (xz-utils), single-threaded, so the bytes are reproducible.
    Xz,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
        }
    }
}

fn xz(raw: Vec<u8>) -> Result<Vec<u8>> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("xz")
        .args(["--format=xz", "--check=crc32", "--lzma2=preset=9e,dict=1MiB", "-T1", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running xz (Debian package xz-utils)")?;
    let mut stdin = child.stdin.take().context("xz's stdin")?;
    let feeder = std::thread::spawn(move || stdin.write_all(&raw));
    let out = child.wait_with_output().context("running xz")?;
    feeder.join().map_err(|_| anyhow::anyhow!("feeding xz"))??;
    if !out.status.success() {
        anyhow::bail!("xz failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// Writes the compressed archive to `dest`.
pub fn write(entries: Vec<Entry>, dest: &Path, report: &mut Report, how: Compression) -> Result<()> {
    let mut raw = Vec::new();
    report.cpio_bytes = cpio::write_archive(entries, Format::NewcCrc, &mut raw).context("writing the cpio archive")?;
    let bytes = match how {
        Compression::Gzip => {
            let mut gz =
                flate2::GzBuilder::new().mtime(0).operating_system(3).write(Vec::new(), flate2::Compression::best());
            gz.write_all(&raw)?;
            gz.finish()?
        }
        Compression::Xz => xz(raw)?,
    };
    report.compressed_bytes = bytes.len() as u64;
    let tmp = dest.with_extension("partial");
    fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dest).with_context(|| format!("renaming to {}", dest.display()))?;
    Ok(())
}
