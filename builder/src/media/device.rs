//! `--write DEVICE`: copies a built image onto a whole-disk block device
//! (a USB stick) after a confirmation typed on the terminal.
//!
//! It refuses, before anything is written: a path that is not a block
//! device, a partition, a disk that is mounted, used as swap or held by
//! device mapper/RAID (itself or any partition), a read-only disk, a disk
//! smaller than the image, and a non-interactive stdin without `--yes`.
//! The checks read `/sys` and `/proc` under roots given as parameters, so
//! unit tests run them on fixture trees. It writes nothing but the device.

use std::fs;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bootvault_common::units::human_bytes;

/// Where the kernel's views of devices and mounts are.
pub struct Roots {
    pub sys: PathBuf,
    pub proc: PathBuf,
}

impl Roots {
    pub fn system() -> Roots {
        Roots { sys: PathBuf::from("/sys"), proc: PathBuf::from("/proc") }
    }
}

/// A whole disk that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `sdb`.
    pub name: String,
    /// Vendor and model from sysfs, e.g. `SanDisk Ultra`.
    pub model: String,
    pub bytes: u64,
    pub removable: bool,
}

impl Disk {
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {}{})",
            self.name,
            self.model,
            human_bytes(self.bytes),
            if self.removable { ", removable" } else { "" }
        )
    }
}

/// Linux `dev_t` to (major, minor), as glibc's `gnu_dev_major/minor`.
pub fn dev_major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// The kernel name of the block device at `path` (following symlinks such
/// as /dev/disk/by-id/...), through `SYS/dev/block/MAJOR:MINOR`.
pub fn block_device_name(path: &Path, sys: &Path) -> Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device: give a whole disk such as /dev/sdb", path.display());
    }
    let (major, minor) = dev_major_minor(meta.rdev());
    let link = sys.join(format!("dev/block/{major}:{minor}"));
    let target = fs::canonicalize(&link).with_context(|| format!("reading {}", link.display()))?;
    let name = target.file_name().and_then(|n| n.to_str()).context("block device without a name in sysfs")?;
    Ok(name.to_owned())
}

fn read_trimmed(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Names of the partitions of `disk` (`SYS/block/DISK/*/partition`), sorted.
fn partitions(sys: &Path, disk: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(sys.join("block").join(disk))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("partition").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The whole disk holding partition `name`, if it is one.
fn parent_disk(sys: &Path, name: &str) -> Option<String> {
    fs::read_dir(sys.join("block"))
        .ok()?
        .flatten()
        .find(|e| e.path().join(name).join("partition").is_file())
        .and_then(|e| e.file_name().to_str().map(str::to_owned))
}

/// `/dev/sdb1` -> `sdb1`; other sources (`/dev/mapper/...`, `tmpfs`) are
/// not names of block devices and are caught by the holders check.
fn dev_name(source: &str) -> Option<&str> {
    source.strip_prefix("/dev/")
}

/// Checks that `name` is a whole disk that may be overwritten by an image
/// of `image_bytes`; returns what the confirmation shows.
pub fn check_disk(name: &str, roots: &Roots, image_bytes: u64) -> Result<Disk> {
    let sys = &roots.sys;
    let dir = sys.join("block").join(name);
    if !dir.is_dir() {
        if let Some(parent) = parent_disk(sys, name) {
            bail!("/dev/{name} is a partition: give the whole disk /dev/{parent}");
        }
        bail!("/dev/{name} is not a whole disk (no {})", dir.display());
    }
    let mut devices = vec![name.to_owned()];
    devices.extend(partitions(sys, name));

    let ours = |source: &str| dev_name(source).is_some_and(|d| devices.iter().any(|x| x == d));
    let mounts_path = roots.proc.join("mounts");
    let mounts = fs::read_to_string(&mounts_path).with_context(|| format!("reading {}", mounts_path.display()))?;
    for line in mounts.lines() {
        let mut w = line.split_whitespace();
        let (Some(source), Some(target)) = (w.next(), w.next()) else { continue };
        if ours(source) {
            bail!("{source} is mounted on {}: unmount it first", target.replace("\\040", " "));
        }
    }
    // Swap is not in /proc/mounts.
    let swaps = fs::read_to_string(roots.proc.join("swaps")).unwrap_or_default();
    for line in swaps.lines().skip(1) {
        if let Some(source) = line.split_whitespace().next() {
            if ours(source) {
                bail!("{source} is in use as swap: swapoff it first");
            }
        }
    }
    // Device mapper (LUKS, LVM) and md RAID on the disk or a partition.
    for d in &devices {
        let holders = if d == name { dir.join("holders") } else { dir.join(d).join("holders") };
        if let Some(h) = fs::read_dir(&holders).into_iter().flatten().flatten().next() {
            bail!("/dev/{d} is in use by {} (device mapper, LVM or RAID)", h.file_name().to_string_lossy());
        }
    }

    if read_trimmed(&dir.join("ro")).as_deref() == Some("1") {
        bail!("/dev/{name} is read-only (a write-protect switch?)");
    }
    let size_path = dir.join("size");
    let sectors: u64 = read_trimmed(&size_path)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("reading the size of /dev/{name} from {}", size_path.display()))?;
    // sysfs counts 512-byte units whatever the sector size.
    let bytes = sectors * 512;
    let model = [read_trimmed(&dir.join("device/vendor")), read_trimmed(&dir.join("device/model"))]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let model = if model.is_empty() { "unknown model".to_owned() } else { model };
    if bytes < image_bytes {
        bail!(
            "/dev/{name} ({model}) holds {}, less than the image's {}",
            if bytes == 0 { "nothing (no medium?)".to_owned() } else { human_bytes(bytes) },
            human_bytes(image_bytes)
        );
    }
    let removable = read_trimmed(&dir.join("removable")).as_deref() == Some("1");
    Ok(Disk { name: name.to_owned(), model, bytes, removable })
}

/// Shows what will be overwritten and asks for the device name; anything
/// else typed (or end of input) writes nothing.
pub fn confirm(disk: &Disk, image: &Path, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<()> {
    let prompt = format!(
        "About to overwrite /dev/{} with {}.\nEverything on it will be lost. Type {} to go on: ",
        disk.describe(),
        image.display(),
        disk.name
    );
    out.write_all(prompt.as_bytes()).and_then(|_| out.flush()).context("writing the confirmation prompt")?;
    let mut answer = String::new();
    input.read_line(&mut answer).context("reading the confirmation")?;
    let answer = answer.trim();
    if answer != disk.name && answer != format!("/dev/{}", disk.name) {
        bail!("confirmation was {answer:?}, not {:?}: nothing written", disk.name);
    }
    Ok(())
}

/// `O_EXCL` on a block device: the kernel refuses the open while anything
/// has it mounted or claimed (asm-generic value, as on x86 and arm).
const O_EXCL: i32 = 0o200;

/// Checks the device, asks (unless `yes`), writes `image`, syncs, reports.
pub fn write(image: &Path, device: &Path, yes: bool, roots: &Roots) -> Result<()> {
    let image_bytes = fs::metadata(image).with_context(|| format!("reading {}", image.display()))?.len();
    let name = block_device_name(device, &roots.sys)?;
    let disk = check_disk(&name, roots, image_bytes)?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("stdin is not a terminal: refusing to overwrite /dev/{name} unconfirmed (pass --yes to skip the question)");
        }
        confirm(&disk, image, &mut std::io::stdin().lock(), &mut std::io::stderr())?;
    }

    let mut src = fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .custom_flags(O_EXCL)
        .open(device)
        .with_context(|| format!("opening {} for writing (in use?)", device.display()))?;
    let start = Instant::now();
    let mut buf = vec![0u8; 4 << 20];
    let mut written = 0u64;
    let show = std::io::stderr().is_terminal();
    loop {
        let n = src.read(&mut buf).with_context(|| format!("reading {}", image.display()))?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])
            .with_context(|| format!("writing {} at {}", device.display(), human_bytes(written)))?;
        written += n as u64;
        if show {
            eprint!("\r  {} of {} written", human_bytes(written), human_bytes(image_bytes));
        }
    }
    dst.sync_all().with_context(|| format!("syncing {}", device.display()))?;
    if show {
        eprintln!();
    }
    println!(
        "wrote {} ({}) to {} in {:.1} s, synced",
        image.display(),
        human_bytes(written),
        disk_line(device, &disk),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `/dev/sdb (SanDisk Ultra, ...)`, with the path given when it differs
/// (e.g. /dev/disk/by-id/...).
fn disk_line(device: &Path, disk: &Disk) -> String {
    let dev = format!("/dev/{}", disk.describe());
    if device == Path::new("/dev").join(&disk.name) {
        dev
    } else {
        format!("{} = {dev}", device.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture `/sys` + `/proc`: disk `sdb` (8 GiB, removable) with
    /// partitions sdb1, sdb2, and the system disk `sda` with sda1.
    struct Fixture {
        root: PathBuf,
        roots: Roots,
    }

    impl Fixture {
        fn new(tag: &str) -> Fixture {
            let root = std::env::temp_dir().join(format!("bootvault-device-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            let put = |p: &str, text: &str| {
                let p = root.join(p);
                fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                fs::write(p, text).expect("write");
            };
            put("sys/block/sdb/size", "16777216\n");
            put("sys/block/sdb/ro", "0\n");
            put("sys/block/sdb/removable", "1\n");
            put("sys/block/sdb/device/vendor", "SanDisk \n");
            put("sys/block/sdb/device/model", "Ultra           \n");
            put("sys/block/sdb/sdb1/partition", "1\n");
            put("sys/block/sdb/sdb2/partition", "2\n");
            fs::create_dir_all(root.join("sys/block/sdb/holders")).expect("holders");
            fs::create_dir_all(root.join("sys/block/sdb/sdb1/holders")).expect("holders");
            put("sys/block/sda/size", "500118192\n");
            put("sys/block/sda/sda1/partition", "1\n");
            put("proc/mounts", "sysfs /sys sysfs rw 0 0\n/dev/sda1 / ext4 rw 0 0\n");
            put("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n");
            let roots = Roots { sys: root.join("sys"), proc: root.join("proc") };
            Fixture { root, roots }
        }

        fn put(&self, p: &str, text: &str) {
            let p = self.root.join(p);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, text).expect("write");
        }

        fn refusal(&self, name: &str, image_bytes: u64) -> String {
            match check_disk(name, &self.roots, image_bytes) {
                Ok(d) => panic!("{name} accepted: {d:?}"),
                Err(e) => format!("{e:#}"),
            }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn an_unmounted_stick_is_accepted_with_model_and_size() {
        let f = Fixture::new("ok");
        let d = check_disk("sdb", &f.roots, 24 << 20).expect("accepted");
        assert_eq!(d, Disk { name: "sdb".into(), model: "SanDisk Ultra".into(), bytes: 8 << 30, removable: true });
        assert_eq!(d.describe(), "sdb (SanDisk Ultra, 8.0 GiB, removable)");
    }

    #[test]
    fn partitions_and_unknown_names_are_refused() {
        let f = Fixture::new("part");
        assert_eq!(f.refusal("sdb1", 1), "/dev/sdb1 is a partition: give the whole disk /dev/sdb");
        assert!(f.refusal("sdz", 1).starts_with("/dev/sdz is not a whole disk"), "{}", f.refusal("sdz", 1));
    }

    #[test]
    fn a_disk_with_a_mounted_partition_is_refused() {
        let f = Fixture::new("mounted");
        assert_eq!(f.refusal("sda", 1), "/dev/sda1 is mounted on /: unmount it first");
        f.put("proc/mounts", "/dev/sdb2 /media/me/MY\\040STICK vfat rw 0 0\n");
        assert_eq!(f.refusal("sdb", 1), "/dev/sdb2 is mounted on /media/me/MY STICK: unmount it first");
        f.put("proc/mounts", "/dev/sdb /mnt iso9660 ro 0 0\n");
        assert_eq!(f.refusal("sdb", 1), "/dev/sdb is mounted on /mnt: unmount it first");
        // A longer name that merely starts with the disk's is not it.
        f.put("proc/mounts", "/dev/sdb10 /mnt vfat rw 0 0\n/dev/sdbb /x vfat rw 0 0\n");
        assert!(check_disk("sdb", &f.roots, 1).is_ok());
    }

    #[test]
    fn swap_and_holders_are_refused() {
        let f = Fixture::new("held");
        f.put("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n/dev/sdb2  partition\t1024\t0\t-2\n");
        assert_eq!(f.refusal("sdb", 1), "/dev/sdb2 is in use as swap: swapoff it first");
        f.put("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n");
        f.put("sys/block/sdb/sdb1/holders/dm-0", "");
        assert_eq!(f.refusal("sdb", 1), "/dev/sdb1 is in use by dm-0 (device mapper, LVM or RAID)");
    }

    #[test]
    fn small_empty_and_read_only_disks_are_refused() {
        let f = Fixture::new("small");
        assert_eq!(f.refusal("sdb", 9 << 30), "/dev/sdb (SanDisk Ultra) holds 8.0 GiB, less than the image's 9.0 GiB");
        f.put("sys/block/sdb/size", "0\n");
        assert!(f.refusal("sdb", 1).contains("holds nothing (no medium?)"), "{}", f.refusal("sdb", 1));
        f.put("sys/block/sdb/size", "16777216\n");
        f.put("sys/block/sdb/ro", "1\n");
        assert_eq!(f.refusal("sdb", 1), "/dev/sdb is read-only (a write-protect switch?)");
    }

    #[test]
    fn a_regular_file_is_not_a_block_device() {
        let f = Fixture::new("file");
        let p = f.root.join("disk.img");
        fs::write(&p, [0u8; 512]).expect("write");
        let e = format!("{:#}", block_device_name(&p, &f.roots.sys).expect_err("refused"));
        assert!(e.ends_with("is not a block device: give a whole disk such as /dev/sdb"), "{e}");
    }

    #[test]
    fn confirmation_needs_the_device_name() {
        let d = Disk { name: "sdb".into(), model: "SanDisk Ultra".into(), bytes: 8 << 30, removable: true };
        let img = Path::new("out/lab-3/lab-3-usb.img");
        let mut shown = Vec::new();
        confirm(&d, img, &mut &b"sdb\n"[..], &mut shown).expect("confirmed");
        let shown = String::from_utf8_lossy(&shown);
        assert!(shown.contains("/dev/sdb (SanDisk Ultra, 8.0 GiB, removable)"), "{shown}");
        confirm(&d, img, &mut &b"/dev/sdb\n"[..], &mut Vec::new()).expect("full path also confirms");
        for typed in [&b"y\n"[..], b"sda\n", b""] {
            let e = confirm(&d, img, &mut &typed[..], &mut Vec::new()).expect_err("refused");
            assert!(format!("{e}").ends_with("nothing written"), "{e}");
        }
    }

    #[test]
    fn dev_t_splits_like_glibc() {
        // makedev(8, 17) and makedev(259, 1048576).
        assert_eq!(dev_major_minor((8 << 8) | 17), (8, 17));
        let big = ((259u64 & 0xfff) << 8) | ((1_048_576u64 & !0xff) << 12);
        assert_eq!(dev_major_minor(big), (259, 1_048_576));
    }
}
