//! Our own kernel (`bootvault kernel build --config NAME --arch ARCH`):
//! Debian's `linux-source-6.1`, the same series as the stock kernel,
//! configured by `make allnoconfig` with a fragment of `kernel-config/` and
//! the architecture's one as `KCONFIG_ALLCONFIG` (what they do not name is
//! off), everything built in and no modules, built once into the cache.
//!
//! Owns `CACHE/kernel-source/` (the source package, unpacked once, with a
//! `.complete` marker), `CACHE/built/NAME-ARCH.obj/` (the kernel's build
//! directory, kept so that a changed fragment rebuilds only what it
//! touches) and `CACHE/built/NAME-ARCH-HASH/`: `boot/vmlinuz-R`
//! and an empty `lib/modules/R`, laid out as a stock kernel's tree so the
//! rest of the builder takes it as one. HASH covers the fragments and the
//! source package, so an edited fragment builds a new kernel. The
//! fragments are compiled into the binary, as the module profiles are.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::kernel::{self, run, Kernel};

/// The source package: the stock kernel's series.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";

/// The built-in fragments, by name.
pub const FRAGMENTS: &[(&str, &str)] = &[
    ("pc", include_str!("../../kernel-config/pc.config")),
    ("floppy", include_str!("../../kernel-config/floppy.config")),
    ("x86_64", include_str!("../../kernel-config/x86_64.config")),
    ("i686", include_str!("../../kernel-config/i686.config")),
];

/// The configurations `--config` takes (the others are architectures').
pub const CONFIGS: &[&str] = &["pc", "floppy"];

/// The PC architectures we build for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    I686,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Arch> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "i686" | "i386" => Ok(Arch::I686),
            _ => bail!("unknown architecture {s:?} (x86_64 or i686)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::I686 => "i686",
        }
    }

    /// The kernel's ARCH= for it.
    fn kernel_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::I686 => "i386",
        }
    }
}

fn fragment(name: &str) -> Result<&'static str> {
    FRAGMENTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .with_context(|| format!("no kernel configuration {name:?} (have {})", CONFIGS.join(", ")))
}

/// The settings a fragment asks for: `(CONFIG_X, value)`, `n` for
/// `# CONFIG_X is not set`.
pub fn settings(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# ").and_then(|r| r.strip_suffix(" is not set")) {
            if rest.starts_with("CONFIG_") {
                out.push((rest.to_owned(), "n".to_owned()));
            }
        } else if let Some((k, v)) = line.split_once('=').filter(|(k, _)| k.starts_with("CONFIG_")) {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

/// The settings the kernel's resolved `.config` did not keep, each as
/// `CONFIG_X=y (got n)`: a symbol whose dependencies are missing is
/// dropped silently by Kconfig, and a driver silently missing is what this
/// guards against.
pub fn not_kept(wanted: &[(String, String)], config: &str) -> Vec<String> {
    let got = settings(config);
    wanted
        .iter()
        .filter_map(|(k, v)| {
            let have = got.iter().find(|(g, _)| g == k).map(|(_, v)| v.as_str()).unwrap_or("n");
            (have != v).then(|| format!("{k}={v} (got {have})"))
        })
        .collect()
}

/// The unpacked source tree, downloaded and unpacked on first use.
pub fn source() -> Result<PathBuf> {
    let root = kernel::cache_dir().join("kernel-source");
    let tree = root.join(SOURCE_PACKAGE);
    if root.join(".complete").exists() {
        return Ok(tree);
    }
    let tmp = kernel::cache_dir().join(".kernel-source.partial");
    let deb = kernel::download(SOURCE_PACKAGE, &tmp)?;
    let version = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tmp.join("deb")))?;
    fs::remove_file(&deb)?;
    let tarball = tmp.join("deb/usr/src").join(format!("{SOURCE_PACKAGE}.tar.xz"));
    eprintln!("unpacking {}", tarball.display());
    let unpacked = tmp.join("src");
    fs::create_dir_all(&unpacked)?;
    run(Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(&unpacked))?;
    if !unpacked.join(SOURCE_PACKAGE).join("Makefile").exists() {
        bail!("{} holds no {SOURCE_PACKAGE}/Makefile", tarball.display());
    }
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root)?;
    fs::rename(unpacked.join(SOURCE_PACKAGE), &tree)?;
    fs::write(root.join("package"), format!("{version}\n"))?;
    fs::write(root.join(".complete"), "")?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(tree)
}

/// Where configuration `name` for `arch` is (or will be) built.
fn build_dir(name: &str, arch: Arch) -> Result<PathBuf> {
    let mut key = Vec::new();
    for f in [name, arch.name()] {
        key.extend_from_slice(fragment(f)?.as_bytes());
    }
    let root = kernel::cache_dir();
    key.extend(fs::read(root.join("kernel-source/package")).unwrap_or_default());
    let hash = bootvault_common::image::hex(&bootvault_common::image::chunk_id(&key));
    Ok(root.join("built").join(format!("{name}-{}-{}", arch.name(), &hash[..12])))
}

/// The kernel built from configuration `name` for `arch`, if it is in the cache.
pub fn built(name: &str, arch: Arch) -> Result<Option<Kernel>> {
    let dir = build_dir(name, arch)?;
    Ok(if dir.join(".complete").exists() { Some(kernel::locate_in(&dir)?) } else { None })
}

/// Builds configuration `name` for `arch` unless the cache holds it.
pub fn build(name: &str, arch: Arch) -> Result<Kernel> {
    if !CONFIGS.contains(&name) {
        bail!("no kernel configuration {name:?} (have {})", CONFIGS.join(", "));
    }
    let src = source()?;
    if let Some(k) = built(name, arch)? {
        return Ok(k);
    }
    let dir = build_dir(name, arch)?;
    // Kept between builds: an edited fragment rebuilds what it touches.
    let obj = kernel::cache_dir().join("built").join(format!("{name}-{}.obj", arch.name()));
    fs::create_dir_all(&obj).with_context(|| format!("creating {}", obj.display()))?;
    let make = |args: &[&str]| {
        let mut c = Command::new("make");
        c.current_dir(&src).arg(format!("O={}", obj.display())).arg(format!("ARCH={}", arch.kernel_arch()));
        c.args(args);
        c
    };
    // allnoconfig with the fragments as KCONFIG_ALLCONFIG: what they do
    // not name is off (olddefconfig would turn on every default).
    let mut wanted = Vec::new();
    let mut all = String::new();
    for f in [name, arch.name()] {
        let text = fragment(f)?;
        all.push_str(text);
        all.push('\n');
        wanted.extend(settings(text));
    }
    let allconfig = obj.join("bootvault.config");
    fs::write(&allconfig, &all)?;
    run(&mut make(&["-s", &format!("KCONFIG_ALLCONFIG={}", allconfig.display()), "allnoconfig"]))?;
    let config = fs::read_to_string(obj.join(".config"))?;
    let lost = not_kept(&wanted, &config);
    if !lost.is_empty() {
        bail!(
            "kernel configuration {name} ({}): Kconfig did not keep {} (a dependency is missing): {}",
            arch.name(),
            lost.len(),
            lost.join(", ")
        );
    }
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string();
    eprintln!(
        "building kernel {name} for {} in {} ({jobs} jobs; about 6 minutes on 2 cores)",
        arch.name(),
        obj.display()
    );
    run(&mut make(&["-s", "-j", &jobs, "bzImage"]))?;
    let release = run(&mut make(&["-s", "kernelrelease"]))?.trim().to_owned();
    if release.is_empty() {
        bail!("the kernel's build gave no release name");
    }
    let tree = dir.with_extension("tree");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(tree.join("boot"))?;
    let modules = tree.join("lib/modules").join(&release);
    fs::create_dir_all(&modules)?;
    fs::write(modules.join("modules.dep"), "")?;
    fs::write(modules.join("modules.alias"), "")?;
    fs::copy(obj.join("arch/x86/boot/bzImage"), tree.join("boot").join(format!("vmlinuz-{release}")))?;
    fs::copy(obj.join(".config"), tree.join("boot").join(format!("config-{release}")))?;
    fs::write(tree.join(".complete"), format!("{name} {}\n", arch.name()))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tree, &dir)?;
    // Kernels of earlier fragments of this configuration are superseded.
    let prefix = format!("{name}-{}-", arch.name());
    for old in fs::read_dir(kernel::cache_dir().join("built"))?.flatten().map(|e| e.path()) {
        let n = old.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if n.starts_with(&prefix) && !n.contains('.') && old != dir {
            let _ = fs::remove_dir_all(&old);
        }
    }
    kernel::locate_in(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_parse() {
        for (name, text) in FRAGMENTS {
            let s = settings(text);
            assert!(!s.is_empty() || *name == "none", "{name}");
            assert!(s.iter().all(|(k, v)| k.starts_with("CONFIG_") && !v.is_empty()), "{name}");
        }
        let pc = settings(fragment("pc").expect("pc"));
        for needed in ["CONFIG_E1000", "CONFIG_R8169", "CONFIG_ATA_PIIX", "CONFIG_USB_STORAGE", "CONFIG_PACKET"] {
            assert!(pc.iter().any(|(k, v)| k == needed && v == "y"), "{needed}");
        }
        assert!(!pc.iter().any(|(k, _)| k == "CONFIG_MODULES"), "no modules, by allnoconfig");
        assert_eq!(
            settings(fragment("i686").expect("i686"))[0],
            ("CONFIG_64BIT".to_owned(), "n".to_owned()),
            "i686 turns 64-bit off"
        );
    }

    #[test]
    fn kept_and_lost() {
        let wanted = settings("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\nCONFIG_D=y\n");
        let config = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=\"x\"\n# CONFIG_D is not set\n";
        assert_eq!(not_kept(&wanted, config), vec!["CONFIG_B=n (got y)", "CONFIG_D=y (got n)"]);
        assert!(not_kept(&wanted[..1], config).is_empty());
    }
}
