//! The stock kernel: fetching Debian's package into a cache, and finding
//! the kernel image and module tree (ours or one the user names).
//!
//! Owns the kernel cache (`$BOOTVAULT_CACHE` or `~/.cache/bootvault`),
//! laid out as `kernels/PACKAGE/{boot,lib}` exactly as `dpkg-deb -x`
//! unpacks it, plus a `.complete` marker written last so a half-unpacked
//! tree is never used. It never writes into a module tree the user named.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use bootvault_common::modules::{self, Index};

/// A kernel image and its modules.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub image: PathBuf,
    /// `lib/modules/RELEASE`.
    pub modules: PathBuf,
    pub release: String,
}

pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BOOTVAULT_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/bootvault")
}

/// Runs `cmd`; its standard output, or an error with the last lines it
/// wrote to standard error (a kernel build writes many).
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.trim().lines().collect();
        bail!("{shown} failed ({}): {}", out.status, lines[lines.len().saturating_sub(15)..].join("\n"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The versioned package `linux-image-amd64` currently depends on, from
/// `apt-cache depends` output.
pub fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit))
        .map(str::to_owned)
}

/// Downloads and unpacks the stock kernel package (idempotent: a complete
/// unpacked tree is reused without touching the network).
pub fn fetch(meta: &str) -> Result<Kernel> {
    let deps = run(Command::new("apt-cache").args(["depends", meta]))
        .context("asking apt which kernel package to use (is this Debian with apt? run `apt-get update`)")?;
    let package = parse_depends(&deps).with_context(|| format!("{meta} depends on no linux-image-VERSION package"))?;
    let root = cache_dir().join("kernels").join(package.replace(':', "_"));
    if root.join(".complete").exists() {
        return locate_in(&root);
    }
    let tmp = cache_dir().join("kernels").join(format!(".{}.partial", package.replace(':', "_")));
    let deb = download(&package, &tmp)?;
    let unpacked = tmp.join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    fs::remove_file(&deb)?;
    // Our own depmod, written once into our own cache.
    let k = locate_in(&unpacked)?;
    let index = scan_modules(&k.modules)?;
    fs::write(k.modules.join("modules.dep"), index.dep_text())?;
    fs::write(k.modules.join("modules.alias"), index.alias_text())?;
    fs::write(unpacked.join(".complete"), format!("{package}\n"))?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&unpacked, &root).with_context(|| format!("moving the kernel into {}", root.display()))?;
    let _ = fs::remove_dir_all(&tmp);
    locate_in(&root)
}

/// Downloads a Debian package into `dir` (emptied first) with `apt-get
/// download`; returns the .deb.
pub fn download(package: &str, dir: &Path) -> Result<PathBuf> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("fetching {package} with apt-get download");
    run(Command::new("apt-get").current_dir(dir).args(["download", "-q", package]))
        .with_context(|| format!("downloading {package} (try `apt-get update` first)"))?;
    fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))
}

/// Finds `boot/vmlinuz-R` and `lib/modules/R` in an unpacked package tree.
pub fn locate_in(root: &Path) -> Result<Kernel> {
    let boot = root.join("boot");
    let image = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    let release = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    let modules = root.join("lib/modules").join(&release);
    if !modules.is_dir() {
        bail!("no module tree {} for kernel {}", modules.display(), image.display());
    }
    Ok(Kernel { image, modules, release })
}

/// A user's own kernel: the image, and the module tree whose directory
/// name is the release.
pub fn user_kernel(image: &Path, modules: &Path) -> Result<Kernel> {
    if !image.is_file() {
        bail!("kernel image {} not found", image.display());
    }
    let release = modules
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("cannot tell the kernel release from {}", modules.display()))?
        .to_owned();
    if !modules.is_dir() {
        bail!("module directory {} not found", modules.display());
    }
    Ok(Kernel { image: image.to_owned(), modules: modules.to_owned(), release })
}

/// Debian's stock kernel for 32-bit PCs (`linux-image-686` of the i386
/// architecture, which dpkg must know: `dpkg --add-architecture i386`,
/// `apt-get update`), fetched into the cache once.
pub fn fetch_686() -> Result<Kernel> {
    fetch("linux-image-686:i386").context("the i686 stock kernel (is i386 in `dpkg --print-foreign-architectures`?)")
}

/// The latest fetched 64-bit stock kernel in the cache, if any.
pub fn cached() -> Option<Kernel> {
    let dir = cache_dir().join("kernels");
    let mut trees: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(".complete").exists() && p.to_string_lossy().ends_with("-amd64"))
        .collect();
    trees.sort();
    locate_in(trees.last()?).ok()
}

/// The module index of a tree: its `modules.dep`/`modules.alias` if it has
/// them, else derived from every module's `.modinfo`.
pub fn index(modules_dir: &Path) -> Result<Index> {
    let dep = fs::read_to_string(modules_dir.join("modules.dep"));
    let alias = fs::read_to_string(modules_dir.join("modules.alias"));
    match (dep, alias) {
        (Ok(d), Ok(a)) => Index::parse(&d, &a).with_context(|| format!("in {}", modules_dir.display())),
        _ => scan_modules(modules_dir),
    }
}

/// Our depmod: reads the `.modinfo` of every `.ko` under `dir`.
pub fn scan_modules(dir: &Path) -> Result<Index> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?.flatten() {
            let p = e.path();
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(p);
            } else if p.to_str().is_some_and(|s| s.ends_with(".ko") || s.ends_with(".ko.xz") || s.ends_with(".ko.zst"))
            {
                found.push(p);
            }
        }
    }
    found.sort();
    let mut infos = Vec::with_capacity(found.len());
    for p in &found {
        let bytes = fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let info = modules::modinfo(&bytes).with_context(|| format!("module {}", p.display()))?;
        let rel = p.strip_prefix(dir).unwrap_or(p).to_string_lossy().into_owned();
        infos.push((rel, info));
    }
    Ok(Index::from_modinfo(infos.iter().map(|(p, i)| (p.clone(), i.as_slice()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_line() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(parse_depends(text).as_deref(), Some("linux-image-6.1.0-56-amd64"));
        assert_eq!(parse_depends("linux-image-amd64\n  Depends: linux-image-amd64-signed\n"), None);
        assert_eq!(parse_depends(""), None);
    }
}
