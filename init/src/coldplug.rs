//! Coldplug: load the modules the hardware present needs.
//!
//! Reads every `modalias` under `ROOT/sys/devices`, looks each up in the
//! image's `modules.alias`, and loads the matching modules dependencies
//! first. Loading a bus driver makes its children appear (virtio_pci ->
//! virtio devices, ahci -> SCSI disks), so the walk repeats until no new
//! device has shown up for a quiet period, or the time bound runs out.
//!
//! Owns: deciding what to load. The actual load is the caller's [`Loader`]
//! (finit_module in PID 1, a recorder in tests and `init coldplug --dry-run`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootvault_common::modules::Index;

pub trait Loader {
    /// Loads the module at `path` (absolute, under the root).
    fn load(&mut self, name: &str, path: &Path) -> Result<(), String>;
}

#[derive(Debug, Default)]
pub struct Report {
    /// Modules loaded, in load order.
    pub loaded: Vec<String>,
    /// Modules that failed to load, with why.
    pub failed: Vec<(String, String)>,
    /// Modules an alias named but the image does not ship.
    pub missing: Vec<String>,
    /// Devices (sysfs path relative to the root, modalias) with no driver
    /// bound at the end.
    pub unbound: Vec<(String, String)>,
    pub rounds: u32,
    pub timed_out: bool,
}

/// All `(device dir, modalias)` pairs under `ROOT/sys/devices`. Symlinks are
/// not followed (sysfs is full of loops).
pub fn scan(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.join("sys/devices")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() && entry.file_name() == "modalias" {
                if let Ok(text) = fs::read_to_string(entry.path()) {
                    let alias = text.trim();
                    if !alias.is_empty() {
                        out.insert(dir.clone(), alias.to_owned());
                    }
                }
            }
        }
    }
    out
}

pub struct Options {
    /// Directory holding the module files (`ROOT/lib/modules/VERSION`).
    pub modules_dir: PathBuf,
    /// Give up looking for new devices after this long.
    pub timeout: Duration,
    /// Stop once no new device appeared for this long after the last load.
    pub quiet: Duration,
}

pub fn coldplug(root: &Path, index: &Index, opts: &Options, loader: &mut dyn Loader) -> Report {
    let start = Instant::now();
    let mut report = Report::default();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut attempted: BTreeSet<String> = BTreeSet::new();
    let mut named = Named::default();
    let mut last_change = Instant::now();
    let mut devices;
    loop {
        report.rounds += 1;
        devices = scan(root);
        let mut changed = false;
        for alias in devices.values() {
            if !seen.insert(alias.clone()) {
                continue;
            }
            changed = true;
            for module in index.lookup(alias) {
                load_with_deps(index, module, &opts.modules_dir, &mut attempted, loader, &mut named);
            }
        }
        if changed {
            last_change = Instant::now();
        } else if last_change.elapsed() >= opts.quiet {
            break;
        }
        if start.elapsed() >= opts.timeout {
            report.timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (report.loaded, report.failed, report.missing) = (named.loaded, named.failed, named.missing);
    report.unbound = devices
        .iter()
        .filter(|(dir, _)| fs::symlink_metadata(dir.join("driver")).is_err())
        .map(|(dir, alias)| {
            let rel = dir.strip_prefix(root).unwrap_or(dir);
            (format!("/{}", rel.display()), alias.clone())
        })
        .collect();
    report
}

/// What loading modules by name did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Named {
    pub loaded: Vec<String>,
    pub failed: Vec<(String, String)>,
    /// Names the image does not ship (built into the kernel, or absent).
    pub missing: Vec<String>,
}

/// Loads modules by name, each after what it needs: drivers with no
/// device to match (filesystems, code pages), which the kernel would
/// otherwise ask a modprobe we do not have for.
pub fn load_named(index: &Index, names: &[&str], modules_dir: &Path, loader: &mut dyn Loader) -> Named {
    let mut out = Named::default();
    let mut attempted: BTreeSet<String> = BTreeSet::new();
    for want in names {
        load_with_deps(index, want, modules_dir, &mut attempted, loader, &mut out);
    }
    out
}

/// Loads `want` after everything it needs, each module at most once
/// (`attempted` remembers across calls), recording what happened.
fn load_with_deps(
    index: &Index,
    want: &str,
    modules_dir: &Path,
    attempted: &mut BTreeSet<String>,
    loader: &mut dyn Loader,
    out: &mut Named,
) {
    for name in index.load_order(want) {
        if !attempted.insert(name.clone()) {
            continue;
        }
        let Some(m) = index.modules.get(&name) else {
            out.missing.push(name);
            continue;
        };
        match loader.load(&name, &modules_dir.join(&m.path)) {
            Ok(()) => out.loaded.push(name),
            Err(e) => out.failed.push((name, e)),
        }
    }
}

/// How PID 1 reports devices without a driver: the ones on buses where a
/// missing driver usually means a missing NIC or disk (PCI, USB, virtio)
/// one per line, the rest (ACPI, platform, ...) counted per bus.
pub fn summarize_unbound(unbound: &[(String, String)]) -> (Vec<String>, String) {
    let mut listed = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (dev, alias) in unbound {
        let bus = alias.split(':').next().unwrap_or("?");
        if matches!(bus, "pci" | "usb" | "virtio") {
            listed.push(format!("{dev} {alias}"));
        } else {
            *counts.entry(bus).or_default() += 1;
        }
    }
    let rest: Vec<String> = counts.iter().map(|(bus, n)| format!("{bus} {n}")).collect();
    (listed, rest.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    /// A loader that, like the kernel, makes child devices appear when a
    /// bus driver loads.
    struct FakeKernel<'a> {
        root: &'a Path,
        loaded: Vec<String>,
    }

    impl Loader for FakeKernel<'_> {
        fn load(&mut self, name: &str, path: &Path) -> Result<(), String> {
            if !path.exists() {
                return Err(format!("{}: No such file", path.display()));
            }
            self.loaded.push(name.into());
            let pci = self.root.join("sys/devices/pci0000:00/0000:00:03.0");
            match name {
                "virtio_pci" => {
                    let v = pci.join("virtio0");
                    fs::create_dir_all(&v).map_err(|e| e.to_string())?;
                    fs::write(v.join("modalias"), "virtio:d00000001v00001AF4\n").map_err(|e| e.to_string())?;
                    std::os::unix::fs::symlink("../../../bus/pci/drivers/virtio-pci", pci.join("driver"))
                        .map_err(|e| e.to_string())?;
                }
                "virtio_net" => {
                    std::os::unix::fs::symlink("x", pci.join("virtio0/driver")).map_err(|e| e.to_string())?;
                }
                _ => {}
            }
            Ok(())
        }
    }

    #[test]
    fn loads_bus_then_children_deps_first() {
        let tmp = TempDir::new("coldplug");
        let root = tmp.path();
        let pci = root.join("sys/devices/pci0000:00/0000:00:03.0");
        fs::create_dir_all(&pci).expect("mkdir");
        fs::write(pci.join("modalias"), "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n").expect("write");
        let other = root.join("sys/devices/platform/pcspkr");
        fs::create_dir_all(&other).expect("mkdir");
        fs::write(other.join("modalias"), "platform:pcspkr\n").expect("write");
        // A symlink loop must not hang the walk.
        std::os::unix::fs::symlink("../..", root.join("sys/devices/platform/loop")).expect("symlink");

        let mods = root.join("lib/modules/6.1.0");
        for f in ["virtio.ko", "virtio_ring.ko", "virtio_pci.ko", "virtio_net.ko"] {
            fs::create_dir_all(&mods).expect("mkdir");
            fs::write(mods.join(f), b"").expect("write");
        }
        let index = Index::parse(
            "virtio_pci.ko: virtio_ring.ko virtio.ko\nvirtio_net.ko: virtio_ring.ko virtio.ko net_failover.ko\nvirtio_ring.ko:\nvirtio.ko:\n",
            "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\nalias virtio:d00000001v* virtio_net\n",
        )
        .expect("index");
        let mut kernel = FakeKernel { root, loaded: vec![] };
        let opts = Options { modules_dir: mods, timeout: Duration::from_secs(5), quiet: Duration::from_millis(200) };
        let report = coldplug(root, &index, &opts, &mut kernel);
        assert_eq!(report.loaded, vec!["virtio", "virtio_ring", "virtio_pci", "virtio_net"]);
        assert_eq!(report.missing, vec!["net_failover"]);
        assert!(report.failed.is_empty());
        assert!(!report.timed_out);
        assert!(report.rounds >= 2);
        assert_eq!(report.unbound, vec![("/sys/devices/platform/pcspkr".to_string(), "platform:pcspkr".to_string())]);
    }

    #[test]
    fn loads_by_name_deps_first_once() {
        let tmp = TempDir::new("named");
        let mods = tmp.path().join("lib/modules/6.1.0");
        fs::create_dir_all(&mods).expect("mkdir");
        for f in ["ext4.ko", "jbd2.ko", "mbcache.ko", "crc16.ko", "vfat.ko", "fat.ko"] {
            fs::write(mods.join(f), b"").expect("write");
        }
        let index = Index::parse(
            "ext4.ko: mbcache.ko jbd2.ko crc16.ko\nvfat.ko: fat.ko\nfat.ko:\njbd2.ko:\nmbcache.ko:\ncrc16.ko:\nexfat.ko:\n",
            "",
        )
        .expect("index");
        let mut kernel = FakeKernel { root: tmp.path(), loaded: vec![] };
        let r = load_named(&index, &["ext4", "vfat", "fat", "ntfs3", "exfat"], &mods, &mut kernel);
        assert_eq!(r.loaded, vec!["crc16", "jbd2", "mbcache", "ext4", "fat", "vfat"]);
        assert_eq!(r.missing, vec!["ntfs3"], "not shipped: built in or absent");
        assert_eq!(r.failed.len(), 1, "listed but its file is gone: {:?}", r.failed);
        assert_eq!(r.failed[0].0, "exfat");
    }

    #[test]
    fn unbound_summary_lists_what_matters() {
        let unbound = vec![
            ("/sys/devices/pci0000:00/0000:00:1f.3".to_string(), "pci:v00008086d00002930sv1bc0Csc05i00".to_string()),
            ("/sys/devices/platform/pcspkr".to_string(), "platform:pcspkr".to_string()),
            ("/sys/devices/LNXSYSTM:00".to_string(), "acpi:LNXSYSTM:".to_string()),
            ("/sys/devices/LNXSYSTM:01".to_string(), "acpi:LNXPWRBN:".to_string()),
        ];
        let (listed, rest) = summarize_unbound(&unbound);
        assert_eq!(listed, vec!["/sys/devices/pci0000:00/0000:00:1f.3 pci:v00008086d00002930sv1bc0Csc05i00"]);
        assert_eq!(rest, "acpi 2, platform 1");
    }

    #[test]
    fn failures_are_reported_not_retried() {
        let tmp = TempDir::new("coldplug-fail");
        let root = tmp.path();
        let dev = root.join("sys/devices/pci0000:00/0000:00:02.0");
        fs::create_dir_all(&dev).expect("mkdir");
        fs::write(dev.join("modalias"), "pci:v00008086d0000100Esv0bc02\n").expect("write");
        let index = Index::parse("e1000.ko:\n", "alias pci:v00008086d0000100Esv* e1000\n").expect("index");
        let mut kernel = FakeKernel { root, loaded: vec![] };
        let opts = Options {
            modules_dir: root.join("lib/modules/x"),
            timeout: Duration::from_secs(2),
            quiet: Duration::from_millis(100),
        };
        let report = coldplug(root, &index, &opts, &mut kernel);
        assert!(report.loaded.is_empty());
        assert_eq!(report.failed.len(), 1);
        assert!(report.failed[0].1.contains("e1000.ko"), "{:?}", report.failed);
    }
}
