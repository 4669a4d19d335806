//! Local drives as backup destinations and restore sources: the
//! filesystems of the PC's disks that a backup can be written to, finding
//! one by its label or name, mounting it, its free space, and unmounting
//! it cleanly.
//!
//! Owns: the mount points under `/run/bootvault/`, the filesystem modules
//! (loaded by name the first time a drive is looked at: they have no
//! device for coldplug to match). Not the store inside (`bootvault/` at
//! the filesystem's root): that is `bootvault_engine::local_store`'s.
//!
//! Listing only ever mounts read-only, without replaying a journal, and
//! unmounts at once: a drive is written only once it has been chosen, and
//! nothing stays mounted on a disk a restore is about to overwrite.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use bootvault_common::units::human_bytes;
use bootvault_engine::local_store::{LocalStore, DRIVE_DIR};

use crate::disks::{self, Disk};
use crate::{coldplug, sys};

/// Filesystems a backup can be written to, as `fsprobe` names them.
const WRITABLE: &[&str] = &["ext2", "ext3", "ext4", "vfat", "exfat", "ntfs"];

/// Modules to load by name before mounting: crc32c (ext4's checksums ask
/// the crypto API for it, by name), the filesystems, then the code pages
/// FAT asks for (`iocharset=ascii` and codepage 437 by
/// default on Debian's kernel; `utf8` for exFAT).
const FS_MODULES: &[&str] =
    &["crc32c_generic", "ext4", "vfat", "exfat", "ntfs3", "nls_cp437", "nls_ascii", "nls_utf8", "nls_iso8859-1"];

/// Where volumes are mounted: `/run/bootvault/sdb1`.
const MOUNT_DIR: &str = "/run/bootvault";

/// A filesystem on a partition (or a whole disk without a table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Kernel name of the block device: `sdb1`, or `sdb` for a filesystem
    /// on the bare disk.
    pub dev: String,
    /// The disk it is on: `sdb`.
    pub disk: String,
    pub kind: &'static str,
    pub label: String,
    pub bytes: u64,
    pub removable: bool,
}

impl Volume {
    /// `sdb1 exfat "BACKUPS"` (the label only when there is one).
    pub fn title(&self) -> String {
        if self.label.is_empty() {
            format!("{} {}", self.dev, self.kind)
        } else {
            format!("{} {} {:?}", self.dev, self.kind, self.label)
        }
    }
}

/// Every filesystem of `disks` a backup could be written to.
pub fn volumes(disks: &[Disk]) -> Vec<Volume> {
    let mut out = Vec::new();
    for d in disks {
        let whole = d.fs.iter().map(|fs| (d.name.clone(), fs, d.bytes));
        let parts = d.parts.iter().filter_map(|p| p.fs.as_ref().map(|fs| (p.name.clone(), fs, p.bytes)));
        for (dev, fs, bytes) in whole.chain(parts) {
            if WRITABLE.contains(&fs.kind) {
                out.push(Volume {
                    dev,
                    disk: d.name.clone(),
                    kind: fs.kind,
                    label: fs.label.clone(),
                    bytes,
                    removable: d.removable,
                });
            }
        }
    }
    out
}

/// The volume `spec` names: a device name (`sdb1`), else a label (exact,
/// then ignoring case, as FAT labels are often upper-cased). Two volumes
/// with the label are an error: the PC must not guess.
pub fn find<'a>(vols: &'a [Volume], spec: &str) -> Result<&'a Volume, String> {
    if let Some(v) = vols.iter().find(|v| v.dev == spec) {
        return Ok(v);
    }
    let exact: Vec<&Volume> = vols.iter().filter(|v| v.label == spec).collect();
    let matches =
        if exact.is_empty() { vols.iter().filter(|v| v.label.eq_ignore_ascii_case(spec)).collect() } else { exact };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no drive labelled or named {spec:?} (found: {})",
            if vols.is_empty() {
                "no filesystem a backup can go to".to_owned()
            } else {
                vols.iter().map(Volume::title).collect::<Vec<_>>().join(", ")
            }
        )),
        many => Err(format!(
            "{} drives are labelled {spec:?} ({}); name the one to use, e.g. local:{}",
            many.len(),
            many.iter().map(|v| v.dev.as_str()).collect::<Vec<_>>().join(", "),
            many[0].dev
        )),
    }
}

/// Waits up to `timeout` for the volume `spec` to show up (a USB drive
/// appears a moment after its controller's driver loads); the disks as
/// they were then, and the volume.
pub fn wait_for(spec: &str, timeout: Duration, say: &dyn Fn(String)) -> Result<(Vec<Disk>, Volume), String> {
    let start = Instant::now();
    let mut said = false;
    loop {
        let all = disks::probe(Path::new("/"));
        let vols = volumes(&all);
        match find(&vols, spec) {
            Ok(v) => {
                let v = v.clone();
                return Ok((all, v));
            }
            Err(e) if start.elapsed() >= timeout || e.contains("drives are labelled") => {
                return Err(format!("drive local:{spec}: {e}"))
            }
            Err(_) => {
                if !said {
                    say(format!("drive: waiting up to {} s for local:{spec} to appear", timeout.as_secs()));
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Whether a backup that reads `need` bytes fits in `free` bytes. The
/// stored size is known only at the end (compression and deduplication);
/// `need` is what the backup reads (the used space), the most it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Fits,
    /// Fits only if the data compresses (to at least a quarter).
    Maybe,
    TooSmall,
}

pub fn fit(free: u64, need: u64) -> Fit {
    if free >= need {
        Fit::Fits
    } else if free.saturating_mul(4) >= need {
        Fit::Maybe
    } else {
        Fit::TooSmall
    }
}

/// The fit as a line, or why the volume is refused.
pub fn fit_text(free: u64, need: u64) -> Result<String, String> {
    match fit(free, need) {
        Fit::Fits => Ok(format!("{} free, fits (up to {} to store)", human_bytes(free), human_bytes(need))),
        Fit::Maybe => {
            Ok(format!("{} free for up to {}: fits only if it compresses well", human_bytes(free), human_bytes(need)))
        }
        Fit::TooSmall => Err(format!("too small: {}", space_line(free, need))),
    }
}

/// `16.0 MiB free, the backup needs up to 1.0 GiB`.
pub fn space_line(free: u64, need: u64) -> String {
    format!("{} free, the backup needs up to {}", human_bytes(free), human_bytes(need))
}

struct ModuleLoader;

impl coldplug::Loader for ModuleLoader {
    fn load(&mut self, _name: &str, path: &Path) -> Result<(), String> {
        sys::load_module(path)
    }
}

static MODULES: Once = Once::new();

/// Loads the filesystem modules the image ships, once. Problems are said,
/// not fatal: a kernel with the filesystems built in needs none.
pub fn load_modules(say: &dyn Fn(String)) {
    MODULES.call_once(|| {
        let dir = Path::new("/lib/modules").join(crate::pid1::kernel_release());
        let Ok(dep) = std::fs::read_to_string(dir.join("modules.dep")) else { return };
        let index = match bootvault_common::modules::Index::parse(&dep, "") {
            Ok(i) => i,
            Err(e) => return say(format!("modules: {}: {e}", dir.display())),
        };
        let r = coldplug::load_named(&index, FS_MODULES, &dir, &mut ModuleLoader);
        if !r.loaded.is_empty() {
            say(format!("modules: loaded for drives: {}", r.loaded.join(" ")));
        }
        for (m, e) in &r.failed {
            say(format!("modules: failed to load {m}: {e}"));
        }
    });
}

/// A mounted volume; unmounted (lazily, after a sync) when dropped, or
/// cleanly with [`Mounted::unmount`].
pub struct Mounted {
    pub volume: Volume,
    pub dir: PathBuf,
    pub writable: bool,
    mounted: bool,
}

/// The kernel's name for a filesystem fsprobe found: ext2 and ext3 are
/// mounted by the ext4 driver, NTFS by ntfs3.
fn fstype(kind: &str) -> &str {
    match kind {
        "ext2" | "ext3" | "ext4" => "ext4",
        "ntfs" => "ntfs3",
        other => other,
    }
}

/// Mounts `v`: read-write to use it, or read-only (no journal replayed)
/// to look at it.
pub fn mount(v: &Volume, writable: bool, say: &dyn Fn(String)) -> Result<Mounted, String> {
    load_modules(say);
    let dir = Path::new(MOUNT_DIR).join(&v.dev);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let dir_s = dir.to_string_lossy().into_owned();
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOATIME;
    if !writable {
        flags |= libc::MS_RDONLY;
    }
    let data = match (fstype(v.kind), writable) {
        ("ext4", false) => "norecovery",
        _ => "",
    };
    let dev = format!("/dev/{}", v.dev);
    sys::mount(&dev, &dir_s, fstype(v.kind), flags, data).map_err(|e| {
        let hint = match e.err.raw_os_error() {
            Some(libc::ENODEV) => format!(" (this kernel has no {} driver)", fstype(v.kind)),
            Some(libc::EROFS) | Some(libc::EACCES) => " (the drive is write-protected)".to_owned(),
            _ => String::new(),
        };
        format!("mounting {}: {}{hint}", v.title(), e.err)
    })?;
    Ok(Mounted { volume: v.clone(), dir, writable, mounted: true })
}

impl Mounted {
    /// Bytes free for a backup.
    pub fn free(&self) -> Result<u64, String> {
        sys::space(&self.dir.to_string_lossy()).map(|(free, _)| free).map_err(|e| e.to_string())
    }

    /// Where the backups are on this volume.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join(DRIVE_DIR)
    }

    /// Writes everything out and unmounts; an error says the drive may
    /// not be safe to remove.
    pub fn unmount(mut self) -> Result<(), String> {
        self.mounted = false;
        sys::sync();
        let dir = self.dir.to_string_lossy().into_owned();
        let mut last = String::new();
        // Busy for a moment while the last descriptors close.
        for _ in 0..20 {
            match sys::umount(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.err.raw_os_error() == Some(libc::EBUSY) => {
                    last = e.to_string();
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(format!("unmounting {}: {}", self.volume.title(), e.err)),
            }
        }
        let _ = sys::umount_lazy(&dir);
        Err(format!("unmounting {}: {last}", self.volume.title()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            sys::sync();
            let _ = sys::umount_lazy(&self.dir.to_string_lossy());
        }
    }
}

/// Mounts `v` and opens the store on it, as a backup or a restore uses
/// it: read-write, which cleans up what an interrupted backup left; to
/// restore (`for_backup` false), a write-protected drive is read
/// read-only, and a drive without backups gets no empty store made on it.
///
/// A drive whose filesystem was left in use (a power cut, a pulled drive:
/// [`unclean`]) is never written: a backup to it is refused, a restore
/// reads it read-only and leaves what an interrupted backup left there.
pub fn open_store(v: &Volume, for_backup: bool, say: &dyn Fn(String)) -> Result<(Mounted, LocalStore), String> {
    if let Some(why) = unclean(v) {
        let check = match v.kind {
            "exfat" => "fsck.exfat -y",
            "vfat" => "fsck.vfat -a",
            _ => "e2fsck -p",
        };
        let text = format!("drive {}: the filesystem {why}", v.title());
        if for_backup {
            return Err(format!(
                "{text}; writing to it could damage the backups on it: check it first (`{check}` on any Linux \
                 machine, or chkdsk on Windows)"
            ));
        }
        say(format!("{text}: reading it read-only, nothing on it is cleaned up (check it with `{check}`)"));
        let mounted = mount(v, false, say)?;
        let store = LocalStore::open_read(&mounted.store_dir()).map_err(|e| format!("drive {}: {e}", v.title()))?;
        return Ok((mounted, store));
    }
    let mounted = match mount(v, true, say) {
        Ok(m) => m,
        Err(e) if !for_backup => {
            say(format!("drive: {e}; reading it read-only"));
            mount(v, false, say)?
        }
        Err(e) => return Err(e),
    };
    let root = mounted.store_dir();
    let store = if mounted.writable && (for_backup || LocalStore::exists(&root)) {
        LocalStore::open(&root)
    } else {
        LocalStore::open_read(&root)
    };
    Ok((mounted, store.map_err(|e| format!("drive {}: {e}", v.title()))?))
}

/// Why `v` must be checked before it is written
/// ([`bootvault_common::fsprobe::unclean`]);
/// `None` when it is clean or cannot be read (mounting then says why).
fn unclean(v: &Volume) -> Option<&'static str> {
    let dev = std::fs::File::open(format!("/dev/{}", v.dev)).ok()?;
    bootvault_common::fsprobe::unclean(v.kind, &mut |off, len| disks::read_at(&dev, 0, off, len), v.bytes)
}

/// What a look at a volume found: free space and the backups on it.
pub struct Look {
    /// Free bytes, or why the volume could not be looked at.
    pub free: Result<u64, String>,
    /// Complete backups on it (empty when it holds no store).
    pub backups: Vec<bootvault_engine::client::BackupInfo>,
}

/// Mounts `v` read-only for a moment: its free space and its backups.
pub fn look(v: &Volume, say: &dyn Fn(String)) -> Look {
    let mut look = Look { free: Err(String::new()), backups: Vec::new() };
    match mount(v, false, say) {
        Err(e) => look.free = Err(e),
        Ok(m) => {
            look.free = m.free();
            let store = m.store_dir();
            if LocalStore::exists(&store) {
                use bootvault_engine::store::Store;
                if let Ok(s) = LocalStore::open_read(&store) {
                    look.backups = s.backups().unwrap_or_default();
                }
            }
            drop(m);
        }
    }
    look
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootvault_common::fsprobe::Filesystem;

    fn fs(kind: &'static str, label: &str) -> Option<Filesystem> {
        Some(Filesystem { kind, label: label.into(), uuid: String::new() })
    }

    fn disk(name: &str, removable: bool, whole: Option<Filesystem>, parts: &[(&str, Option<Filesystem>)]) -> Disk {
        let mut d = crate::testutil::bare_disk(name, 1 << 30, removable);
        d.fs = whole;
        d.parts = parts
            .iter()
            .enumerate()
            .map(|(i, (n, f))| crate::disks::PartInfo {
                name: (*n).into(),
                number: i as u32 + 1,
                start: 1 << 20,
                bytes: 100 << 20,
                type_name: "Linux filesystem",
                part_label: String::new(),
                fs: f.clone(),
            })
            .collect();
        d
    }

    #[test]
    fn lists_writable_filesystems_and_finds_by_name_or_label() {
        let disks = vec![
            disk(
                "sda",
                false,
                None,
                &[("sda1", fs("vfat", "EFI")), ("sda2", fs("ext4", "root")), ("sda3", fs("swap", ""))],
            ),
            disk("sdb", true, fs("exfat", "BACKUPS"), &[]),
            disk("sdc", false, None, &[("sdc1", fs("crypto_LUKS", "")), ("sdc2", fs("ntfs", "Data")), ("sdc3", None)]),
            disk("sdd", true, None, &[("sdd1", fs("vfat", "backups"))]),
        ];
        let vols = volumes(&disks);
        let names: Vec<&str> = vols.iter().map(|v| v.dev.as_str()).collect();
        assert_eq!(names, ["sda1", "sda2", "sdb", "sdc2", "sdd1"], "no swap, LUKS or empty partitions");
        assert_eq!(vols[2].title(), "sdb exfat \"BACKUPS\"");
        assert!(vols[2].removable && vols[2].disk == "sdb");
        assert_eq!(find(&vols, "sda2").map(|v| v.dev.as_str()), Ok("sda2"));
        assert_eq!(find(&vols, "root").map(|v| v.dev.as_str()), Ok("sda2"));
        assert_eq!(find(&vols, "BACKUPS").map(|v| v.dev.as_str()), Ok("sdb"), "an exact label wins");
        assert_eq!(find(&vols, "data").map(|v| v.dev.as_str()), Ok("sdc2"), "then any case");
        let e = find(&vols, "Backups").unwrap_err();
        assert!(e.starts_with("2 drives are labelled \"Backups\" (sdb, sdd1)"), "{e}");
        let e = find(&vols, "stick").unwrap_err();
        assert!(e.starts_with("no drive labelled or named \"stick\" (found: sda1 vfat \"EFI\", "), "{e}");
        assert!(find(&[], "x").unwrap_err().contains("no filesystem a backup can go to"));
    }

    #[test]
    fn fit_is_judged_on_what_the_backup_reads() {
        assert_eq!(fit(10 << 30, 4 << 30), Fit::Fits);
        assert_eq!(fit(4 << 30, 4 << 30), Fit::Fits);
        assert_eq!(fit(2 << 30, 4 << 30), Fit::Maybe);
        assert_eq!(fit(1 << 30, 4 << 30), Fit::Maybe);
        assert_eq!(fit((1 << 30) - 1, 4 << 30), Fit::TooSmall);
        assert_eq!(fit(0, 0), Fit::Fits);
        assert_eq!(
            fit_text(16 << 20, 1 << 30).unwrap_err(),
            "too small: 16.0 MiB free, the backup needs up to 1.0 GiB"
        );
        assert!(fit_text(2 << 30, 1 << 30).expect("fits").contains("fits"));
    }
}
