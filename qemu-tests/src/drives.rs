//! Destination drives for backups without a server: raw images holding an
//! exFAT, ext4 or vfat filesystem (on the whole image or in one MBR
//! partition), as a USB drive or a second disk would, and the local store
//! a PC writes in their `bootvault/` directory (engine/src/local_store.rs).
//!
//! Everything here works on image files with userspace tools, never with a
//! kernel mount (the host may lack the exfat and vfat modules): debugfs for
//! ext4, mtools for vfat, and for exFAT a small read-only reader below
//! (exfatprogs 1.2 has no tool that lists or copies files). Writing into an
//! exFAT image ([`copy_store_in`]) is the one exception: exfat-fuse on a
//! loop device, which needs root.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{run, Result};

const MIB: u64 = 1 << 20;
/// Where the one partition of a partitioned drive starts (sector 2048).
const PART_START: u64 = MIB;
/// The store's directory at the filesystem's root.
const STORE_DIR: &str = "bootvault";

/// The filesystems a destination drive may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Exfat,
    Ext4,
    Vfat,
}

impl FsKind {
    /// The MBR partition type a partitioning tool would give it.
    fn mbr_type(self) -> &'static str {
        match self {
            FsKind::Exfat => "7",
            FsKind::Ext4 => "83",
            FsKind::Vfat => "c",
        }
    }
}

/// A filesystem inside an image: its kind and its byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Volume {
    pub kind: FsKind,
    pub offset: u64,
}

/// Makes a `mib` MiB raw image at `path` holding an exFAT filesystem
/// labelled `label` (mkfs.exfat): on the whole image, or in one MBR
/// partition from 1 MiB to the end when `partitioned`.
pub fn make_exfat_drive(path: &Path, mib: u64, label: &str, partitioned: bool) -> Result<()> {
    make_drive(path, mib, FsKind::Exfat, label, partitioned)
}

/// As [`make_exfat_drive`], with ext4 (mkfs.ext4).
pub fn make_ext4_drive(path: &Path, mib: u64, label: &str, partitioned: bool) -> Result<()> {
    make_drive(path, mib, FsKind::Ext4, label, partitioned)
}

/// As [`make_exfat_drive`], with FAT (mkfs.vfat; FAT32 from 64 MiB, as
/// USB sticks come).
pub fn make_vfat_drive(path: &Path, mib: u64, label: &str, partitioned: bool) -> Result<()> {
    make_drive(path, mib, FsKind::Vfat, label, partitioned)
}

/// Makes a destination drive of any [`FsKind`] (see [`make_exfat_drive`]).
pub fn make_drive(path: &Path, mib: u64, kind: FsKind, label: &str, partitioned: bool) -> Result<()> {
    if !partitioned {
        create_sized(path, mib * MIB)?;
        return mkfs(path, kind, label);
    }
    if mib < 3 {
        return Err(format!("{}: {mib} MiB is too small for a partitioned drive", path.display()));
    }
    crate::make_disk(path, mib, &format!("label: dos\nunit: sectors\nstart=2048, type={}\n", kind.mbr_type()))?;
    // The partition ends where sfdisk leaves it: at the end of the disk.
    let fs_image = sibling(path, "fs.partial");
    create_sized(&fs_image, mib * MIB - PART_START)?;
    let made = mkfs(&fs_image, kind, label).and_then(|()| splice(&fs_image, path, PART_START));
    let _ = fs::remove_file(&fs_image);
    made
}

fn create_sized(path: &Path, bytes: u64) -> Result<()> {
    let f = fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.set_len(bytes).map_err(|e| format!("sizing {}: {e}", path.display()))
}

fn mkfs(fs_image: &Path, kind: FsKind, label: &str) -> Result<()> {
    let mut cmd = match kind {
        FsKind::Exfat => {
            let mut c = Command::new("mkfs.exfat");
            c.args(["-L", label]);
            c
        }
        FsKind::Ext4 => {
            let mut c = Command::new("mkfs.ext4");
            c.args(["-q", "-F", "-L", label, "-E", "root_owner=0:0"]);
            c
        }
        FsKind::Vfat => {
            let mut c = Command::new("mkfs.vfat");
            let bytes = fs::metadata(fs_image).map(|m| m.len()).unwrap_or(0);
            if bytes >= 64 * MIB {
                // FAT32 needs 65,525 clusters: one sector per cluster below 512 MiB.
                c.args(["-F", "32"]);
                if bytes < 512 * MIB {
                    c.args(["-s", "1"]);
                }
            }
            c.args(["-n", label]);
            c
        }
    };
    run(cmd.arg(fs_image)).map(|_| ())
}

/// Writes `from` into `into` at byte `offset`, leaving its all-zero MiBs
/// as holes (the images stay sparse).
fn splice(from: &Path, into: &Path, offset: u64) -> Result<()> {
    let src = fs::File::open(from).map_err(|e| format!("opening {}: {e}", from.display()))?;
    let dst = fs::OpenOptions::new().write(true).open(into).map_err(|e| format!("opening {}: {e}", into.display()))?;
    let len = src.metadata().map_err(|e| format!("{}: {e}", from.display()))?.len();
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(MIB) as usize;
        src.read_exact_at(&mut buf[..n], at).map_err(|e| format!("reading {} at {at}: {e}", from.display()))?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], offset + at)
                .map_err(|e| format!("writing {} at {}: {e}", into.display(), offset + at))?;
        }
        at += n as u64;
    }
    Ok(())
}

/// A path next to `path`: `path.SUFFIX`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{suffix}"));
    PathBuf::from(s)
}

/// A fresh, empty scratch directory for one call (parallel tests included).
fn scratch_dir(what: &str) -> Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let d =
        std::env::temp_dir().join(format!("bv-{what}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    Ok(d)
}

/// The filesystem of a boot sector (and the 2 KiB after its start).
fn probe(head: &[u8]) -> Option<FsKind> {
    if head.get(3..11) == Some(b"EXFAT   ") {
        return Some(FsKind::Exfat);
    }
    if head.get(1080..1082) == Some(&[0x53, 0xEF]) {
        return Some(FsKind::Ext4);
    }
    let signed = head.get(510..512) == Some(&[0x55, 0xAA]);
    if signed && (head.get(54..57) == Some(b"FAT") || head.get(82..87) == Some(b"FAT32")) {
        return Some(FsKind::Vfat);
    }
    None
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// Finds the filesystem of a drive image: on the whole image, else in its
/// first partition (MBR or GPT).
pub fn locate_volume(image: &Path) -> Result<Volume> {
    let f = fs::File::open(image).map_err(|e| format!("opening {}: {e}", image.display()))?;
    let read = |at: u64| -> Result<Vec<u8>> {
        let mut b = vec![0u8; 4096];
        f.read_exact_at(&mut b, at).map_err(|e| format!("reading {} at {at}: {e}", image.display()))?;
        Ok(b)
    };
    let head = read(0)?;
    if let Some(kind) = probe(&head) {
        return Ok(Volume { kind, offset: 0 });
    }
    if head[510..512] != [0x55, 0xAA] {
        return Err(format!("{}: no filesystem and no partition table", image.display()));
    }
    let first = (0..4).map(|i| 446 + 16 * i).find(|&e| head[e + 4] != 0);
    let start_lba = match first {
        Some(e) if head[e + 4] == 0xEE => {
            // Protective MBR: the first used GPT entry.
            let gpt = read(512)?;
            let (entries, size) = (le64(&gpt, 72), le32(&gpt, 84) as usize);
            let table = read(entries * 512)?;
            (0..4096 / size.max(128))
                .map(|i| &table[i * size..(i + 1) * size])
                .find(|e| e[..16].iter().any(|&b| b != 0))
                .map(|e| le64(e, 32))
                .ok_or_else(|| format!("{}: an empty GPT", image.display()))?
        }
        Some(e) => u64::from(le32(&head, e + 8)),
        None => return Err(format!("{}: an empty partition table", image.display())),
    };
    let offset = start_lba * 512;
    probe(&read(offset)?)
        .map(|kind| Volume { kind, offset })
        .ok_or_else(|| format!("{}: no exFAT, ext4 or FAT filesystem in the first partition", image.display()))
}

/// What a local store holds (engine/src/local_store.rs's layout).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreListing {
    /// Whether the filesystem has a `bootvault/` directory at all.
    pub present: bool,
    /// Backups with a manifest (`manifests/ID.bvm`), sorted.
    pub complete: Vec<i64>,
    /// Backups being written (`uploads/ID.open`), sorted.
    pub open: Vec<i64>,
    /// Failed backups (`failed/ID.txt`) and the reason written there, sorted.
    pub failed: Vec<(i64, String)>,
    /// Backups holding a lock file (`locks/ID.lock`), sorted.
    pub locked: Vec<i64>,
    /// Files under `chunks/`.
    pub chunk_files: usize,
    /// Files left in `tmp/` (an interrupted write).
    pub tmp_files: usize,
}

/// Lists the local store in the `bootvault/` directory of a drive image
/// (copied out to a scratch directory first, see [`copy_store_out`]).
pub fn store_listing(image: &Path) -> Result<StoreListing> {
    let scratch = scratch_dir("store-listing")?;
    let dest = scratch.join("store");
    let listing = match copy_out(image, &dest)? {
        true => store_listing_dir(&dest),
        false => Ok(StoreListing::default()),
    };
    let _ = fs::remove_dir_all(&scratch);
    listing
}

/// Lists a local store in a host directory (`bootvault backup --to DIR`).
pub fn store_listing_dir(root: &Path) -> Result<StoreListing> {
    if !root.is_dir() {
        return Ok(StoreListing::default());
    }
    let ids = |sub: &str, ext: &str| -> Vec<i64> {
        let mut ids: Vec<i64> = fs::read_dir(root.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(ext).and_then(|n| n.parse().ok())
            })
            .collect();
        ids.sort_unstable();
        ids
    };
    let mut failed = Vec::new();
    for id in ids("failed", ".txt") {
        let p = root.join("failed").join(format!("{id}.txt"));
        let why = fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        failed.push((id, why.trim_end().to_owned()));
    }
    Ok(StoreListing {
        present: true,
        complete: ids("manifests", ".bvm"),
        open: ids("uploads", ".open"),
        failed,
        locked: ids("locks", ".lock"),
        chunk_files: count_files(&root.join("chunks")),
        tmp_files: count_files(&root.join("tmp")),
    })
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// Copies the `bootvault/` directory of a drive image to `dest_dir`,
/// which must not exist yet: `dest_dir` becomes the store's root, ready for
/// `bootvault restore --from DEST_DIR`. Errors when the drive has no store.
pub fn copy_store_out(image: &Path, dest_dir: &Path) -> Result<()> {
    match copy_out(image, dest_dir)? {
        true => Ok(()),
        false => Err(format!("{} has no {STORE_DIR}/ directory", image.display())),
    }
}

/// [`copy_store_out`]; `false` when the drive has no `bootvault/`.
fn copy_out(image: &Path, dest_dir: &Path) -> Result<bool> {
    if dest_dir.exists() {
        return Err(format!("{} exists already", dest_dir.display()));
    }
    let vol = locate_volume(image)?;
    let stage = sibling(dest_dir, "copying");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).map_err(|e| format!("creating {}: {e}", stage.display()))?;
    let copied = match vol.kind {
        FsKind::Ext4 => {
            // debugfs reports a missing path on stderr and still exits 0.
            run(Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump /{STORE_DIR} {}", stage.display()))
                .arg(ext4_device(image, vol)))
            .map(|_| ())
        }
        FsKind::Vfat => {
            let listed = run(mtools("mdir", image, vol).arg("-b").arg(format!("::/{STORE_DIR}")));
            match listed {
                Ok(_) => {
                    run(mtools("mcopy", image, vol).args(["-s", "-n", "-m"]).arg(format!("::/{STORE_DIR}")).arg(&stage))
                        .map(|_| ())
                }
                // No store on the drive; any other failure is one.
                Err(e) if e.contains(&format!("\"::/{STORE_DIR}\" not found")) => Ok(()),
                Err(e) => Err(e),
            }
        }
        FsKind::Exfat => exfat::Reader::open(image, vol.offset).and_then(|r| r.copy_dir(STORE_DIR, &stage)),
    };
    let found = stage.join(STORE_DIR);
    let result = copied.and_then(|()| {
        if !found.is_dir() {
            return Ok(false);
        }
        fs::rename(&found, dest_dir)
            .map_err(|e| format!("moving {} to {}: {e}", found.display(), dest_dir.display()))?;
        Ok(true)
    });
    let _ = fs::remove_dir_all(&stage);
    result
}

/// debugfs's name for the ext4 filesystem at an offset of a file.
fn ext4_device(image: &Path, vol: Volume) -> String {
    format!("{}?offset={}", image.display(), vol.offset)
}

/// An mtools command on the FAT filesystem at an offset of a file.
fn mtools(tool: &str, image: &Path, vol: Volume) -> Command {
    let mut c = Command::new(tool);
    // No geometry checks: the filesystem need not match a floppy's.
    c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(format!("{}@@{}", image.display(), vol.offset));
    c
}

/// Copies a local store in a host directory (its `chunks/`, `manifests/`,
/// ... ) into the `bootvault/` directory of a drive image, created if
/// absent: a drive prepared on the host, as a PC would have left it.
/// ext4 through debugfs, vfat through mtools; exFAT through exfat-fuse on a
/// loop device (root only).
pub fn copy_store_in(image: &Path, store_dir: &Path) -> Result<()> {
    let vol = locate_volume(image)?;
    let mut entries: Vec<PathBuf> = fs::read_dir(store_dir)
        .map_err(|e| format!("listing {}: {e}", store_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    match vol.kind {
        FsKind::Ext4 => {
            let mut script = format!("mkdir /{STORE_DIR}\n");
            debugfs_script(store_dir, &format!("/{STORE_DIR}"), &mut script)?;
            let scratch = scratch_dir("debugfs")?;
            let file = scratch.join("commands");
            let written =
                fs::write(&file, script).map_err(|e| format!("writing {}: {e}", file.display())).and_then(|()| {
                    run(Command::new("debugfs").arg("-w").arg("-f").arg(&file).arg(ext4_device(image, vol)))
                });
            let _ = fs::remove_dir_all(&scratch);
            written?;
            // debugfs leaves the free counts to the checker, as an unmount would.
            let fixed = Command::new("e2fsck")
                .arg("-fy")
                .arg(ext4_device(image, vol))
                .output()
                .map_err(|e| format!("starting e2fsck: {e}"))?;
            match fixed.status.code() {
                Some(0 | 1) => Ok(()),
                _ => Err(format!("e2fsck -fy {}: {}", image.display(), String::from_utf8_lossy(&fixed.stdout))),
            }
        }
        FsKind::Vfat => {
            let _ = run(mtools("mmd", image, vol).arg(format!("::/{STORE_DIR}")));
            if entries.is_empty() {
                return Ok(());
            }
            run(mtools("mcopy", image, vol).args(["-s", "-o"]).args(&entries).arg(format!("::/{STORE_DIR}/")))
                .map(|_| ())
        }
        FsKind::Exfat => {
            let mount = FuseMount::exfat(image, vol.offset)?;
            let dest = mount.dir.join(STORE_DIR);
            fs::create_dir_all(&dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
            if !entries.is_empty() {
                run(Command::new("cp").arg("-r").args(&entries).arg(&dest))?;
            }
            mount.finish()
        }
    }
}

/// debugfs commands that recreate the tree under `host` at `at`.
fn debugfs_script(host: &Path, at: &str, script: &mut String) -> Result<()> {
    let mut entries: Vec<fs::DirEntry> =
        fs::read_dir(host).map_err(|e| format!("listing {}: {e}", host.display()))?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(char::is_whitespace) || e.path().to_string_lossy().contains(char::is_whitespace) {
            return Err(format!("{}: debugfs commands cannot name paths with spaces", e.path().display()));
        }
        let inside = format!("{at}/{name}");
        if e.file_type().map_err(|err| format!("{}: {err}", e.path().display()))?.is_dir() {
            script.push_str(&format!("mkdir {inside}\n"));
            debugfs_script(&e.path(), &inside, script)?;
        } else {
            script.push_str(&format!("write {} {inside}\n", e.path().display()));
        }
    }
    Ok(())
}

/// An exFAT filesystem at an offset of an image, mounted through a loop
/// device and exfat-fuse (which wants a block device when run as root);
/// unmounted and detached on drop.
struct FuseMount {
    loop_dev: String,
    dir: PathBuf,
    mounted: bool,
}

impl FuseMount {
    fn exfat(image: &Path, offset: u64) -> Result<FuseMount> {
        let loop_dev =
            run(Command::new("losetup").args(["--find", "--show", "--offset", &offset.to_string()]).arg(image))
                .map_err(|e| format!("{e}\n(writing into an exFAT image needs root and a loop device)"))?
                .trim()
                .to_owned();
        let mut m = FuseMount { loop_dev, dir: scratch_dir("exfat-mount")?, mounted: false };
        run(Command::new("mount.exfat-fuse").arg(&m.loop_dev).arg(&m.dir))
            .map_err(|e| format!("{e}\n(exfat-fuse, Debian package exfat-fuse; /dev/fuse needed)"))?;
        m.mounted = true;
        Ok(m)
    }

    /// Unmounts (flushing everything to the image), reporting failures.
    fn finish(mut self) -> Result<()> {
        self.mounted = false;
        run(Command::new("umount").arg(&self.dir)).map(|_| ())
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).output();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.loop_dev).output();
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Checks the filesystem of a drive image with its own checker, read-only
/// (e2fsck -fn, fsck.vfat -n, fsck.exfat -n): what a PC wrote, or a power
/// cut left, must be a consistent filesystem. A partition is checked in a
/// copy (only e2fsck reads at an offset).
pub fn fsck_drive(image: &Path) -> Result<()> {
    let vol = locate_volume(image)?;
    if vol.kind == FsKind::Ext4 {
        return run(Command::new("e2fsck").arg("-fn").arg(ext4_device(image, vol))).map(|_| ());
    }
    let scratch = scratch_dir("fsck")?;
    let target = if vol.offset == 0 {
        Ok(image.to_owned())
    } else {
        let part = scratch.join("part.img");
        let len = fs::metadata(image).map_err(|e| format!("{}: {e}", image.display()))?.len() - vol.offset;
        create_sized(&part, len).and_then(|()| splice_out(image, vol.offset, &part)).map(|()| part)
    };
    let checked = target.and_then(|t| {
        let tool = if vol.kind == FsKind::Vfat { "fsck.vfat" } else { "fsck.exfat" };
        run(Command::new(tool).arg("-n").arg(&t)).map(|_| ())
    });
    let _ = fs::remove_dir_all(&scratch);
    checked
}

/// Repairs the filesystem of a whole-drive image as its owner would on
/// another machine (`fsck.exfat -y`, `fsck.vfat -a`, `e2fsck -fy`):
/// exit 1 ("errors corrected") counts as done.
pub fn repair_drive(image: &Path) -> Result<()> {
    let vol = locate_volume(image)?;
    let mut cmd = match vol.kind {
        FsKind::Ext4 => {
            let mut c = Command::new("e2fsck");
            c.arg("-fy").arg(ext4_device(image, vol));
            c
        }
        _ if vol.offset != 0 => return Err(format!("{}: only a filesystem on the whole drive", image.display())),
        FsKind::Vfat => {
            let mut c = Command::new("fsck.vfat");
            c.arg("-a").arg(image);
            c
        }
        FsKind::Exfat => {
            let mut c = Command::new("fsck.exfat");
            c.arg("-y").arg(image);
            c
        }
    };
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    match out.status.code() {
        Some(0 | 1) => Ok(()),
        _ => Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// Copies `into`'s length of bytes from `from` at `offset` (sparse).
fn splice_out(from: &Path, offset: u64, into: &Path) -> Result<()> {
    let src = fs::File::open(from).map_err(|e| format!("opening {}: {e}", from.display()))?;
    let dst = fs::OpenOptions::new().write(true).open(into).map_err(|e| format!("opening {}: {e}", into.display()))?;
    let len = dst.metadata().map_err(|e| format!("{}: {e}", into.display()))?.len();
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(MIB) as usize;
        src.read_exact_at(&mut buf[..n], offset + at)
            .map_err(|e| format!("reading {} at {}: {e}", from.display(), offset + at))?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], at).map_err(|e| format!("writing {} at {at}: {e}", into.display()))?;
        }
        at += n as u64;
    }
    Ok(())
}

/// The SHA-256 of a whole file (sha256sum), to show a drive was not
/// written to.
pub fn image_digest(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg("-b").arg(path))?;
    out.split_whitespace().next().map(str::to_owned).ok_or_else(|| format!("no digest from sha256sum: {out:?}"))
}

/// A read-only exFAT reader, enough to copy a directory tree out of an
/// image (exFAT specification, sections 3, 4, 6 and 7).
mod exfat {
    use std::fs::{self, File};
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    use super::{le32, le64};
    use crate::Result;

    const ENTRY: usize = 32;
    const FILE: u8 = 0x85;
    const STREAM: u8 = 0xC0;
    const NAME: u8 = 0xC1;
    const DIRECTORY: u16 = 0x10;
    /// Stream extension flag: the clusters are contiguous, the FAT is not used.
    const NO_FAT_CHAIN: u8 = 0x02;

    pub struct Reader {
        file: File,
        /// Byte offset of the volume in the image.
        base: u64,
        cluster: u64,
        fat: u64,
        heap: u64,
        clusters: u32,
        root: u32,
    }

    /// One directory entry set: a file or a directory.
    struct Entry {
        name: String,
        dir: bool,
        first: u32,
        contiguous: bool,
        valid: u64,
        len: u64,
    }

    impl Reader {
        pub fn open(image: &Path, base: u64) -> Result<Reader> {
            let file = File::open(image).map_err(|e| format!("opening {}: {e}", image.display()))?;
            let mut boot = [0u8; 512];
            file.read_exact_at(&mut boot, base).map_err(|e| format!("reading {}: {e}", image.display()))?;
            if &boot[3..11] != b"EXFAT   " || !(9..=12).contains(&boot[108]) || boot[109] > 25 - boot[108] {
                return Err(format!("{} at {base}: not an exFAT boot sector", image.display()));
            }
            let sector = 1u64 << boot[108];
            Ok(Reader {
                file,
                base,
                cluster: sector << boot[109],
                fat: u64::from(le32(&boot, 80)) * sector,
                heap: u64::from(le32(&boot, 88)) * sector,
                clusters: le32(&boot, 92),
                root: le32(&boot, 96),
            })
        }

        fn read_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
            self.file.read_exact_at(buf, self.base + at).map_err(|e| format!("exFAT: reading at {at}: {e}"))
        }

        /// The clusters holding `len` bytes from `first`.
        fn chain(&self, first: u32, contiguous: bool, len: Option<u64>) -> Result<Vec<u32>> {
            let valid = |c: u32| c >= 2 && c - 2 < self.clusters;
            if !valid(first) {
                return Err(format!("exFAT: cluster {first} out of range"));
            }
            if contiguous {
                let n = len.unwrap_or(0).div_ceil(self.cluster);
                return Ok((0..n as u32).map(|i| first + i).collect());
            }
            let mut out = vec![first];
            loop {
                if len.is_some_and(|l| out.len() as u64 * self.cluster >= l) {
                    return Ok(out);
                }
                let mut next = [0u8; 4];
                self.read_at(&mut next, self.fat + u64::from(out[out.len() - 1]) * 4)?;
                let next = u32::from_le_bytes(next);
                if next >= 0xFFFF_FFF8 {
                    return Ok(out);
                }
                if !valid(next) || out.len() > self.clusters as usize {
                    return Err(format!("exFAT: broken cluster chain at {next}"));
                }
                out.push(next);
            }
        }

        /// `len` bytes of the data starting at cluster `first` (all its
        /// clusters when `len` is None: a directory with no stream entry).
        fn data(&self, first: u32, contiguous: bool, len: Option<u64>) -> Result<Vec<u8>> {
            let clusters = self.chain(first, contiguous, len)?;
            let mut out = vec![0u8; clusters.len() * self.cluster as usize];
            for (i, c) in clusters.iter().enumerate() {
                let at = self.heap + u64::from(c - 2) * self.cluster;
                self.read_at(&mut out[i * self.cluster as usize..(i + 1) * self.cluster as usize], at)?;
            }
            if let Some(l) = len {
                out.truncate(l as usize);
            }
            Ok(out)
        }

        fn entries(&self, dir: &[u8]) -> Vec<Entry> {
            let mut out = Vec::new();
            let mut i = 0;
            while i + ENTRY <= dir.len() {
                let e = &dir[i..i + ENTRY];
                if e[0] == 0 {
                    break;
                }
                let count = usize::from(e[1]);
                if e[0] != FILE || count < 2 || i + (count + 1) * ENTRY > dir.len() {
                    i += ENTRY;
                    continue;
                }
                let attributes = u16::from_le_bytes([e[4], e[5]]);
                let s = &dir[i + ENTRY..i + 2 * ENTRY];
                if s[0] != STREAM {
                    i += ENTRY;
                    continue;
                }
                let name_len = usize::from(s[3]);
                let units: Vec<u16> = (0..count - 1)
                    .map(|k| &dir[i + (2 + k) * ENTRY..i + (3 + k) * ENTRY])
                    .filter(|n| n[0] == NAME)
                    .flat_map(|n| n[2..32].chunks(2).map(|u| u16::from_le_bytes([u[0], u[1]])).collect::<Vec<_>>())
                    .take(name_len)
                    .collect();
                out.push(Entry {
                    name: String::from_utf16_lossy(&units),
                    dir: attributes & DIRECTORY != 0,
                    first: le32(s, 20),
                    contiguous: s[1] & NO_FAT_CHAIN != 0,
                    valid: le64(s, 8),
                    len: le64(s, 24),
                });
                i += (count + 1) * ENTRY;
            }
            out
        }

        fn entry_data(&self, e: &Entry, len: u64) -> Result<Vec<u8>> {
            if len == 0 || e.first == 0 {
                return Ok(Vec::new());
            }
            self.data(e.first, e.contiguous, Some(len))
        }

        /// Copies the directory `name` of the root (and all below it) to
        /// `dest/name`; nothing when there is no such directory.
        pub fn copy_dir(&self, name: &str, dest: &Path) -> Result<()> {
            let root = self.data(self.root, false, None)?;
            let Some(top) = self.entries(&root).into_iter().find(|e| e.dir && e.name == name) else {
                return Ok(());
            };
            self.copy(&top, &dest.join(name), 0)
        }

        fn copy(&self, e: &Entry, to: &Path, depth: u32) -> Result<()> {
            if !e.dir {
                let mut bytes = self.entry_data(e, e.valid.min(e.len))?;
                // Past the valid data length, a file reads as zeros.
                bytes.resize(e.len as usize, 0);
                return fs::write(to, bytes).map_err(|err| format!("writing {}: {err}", to.display()));
            }
            if depth > 32 {
                return Err(format!("exFAT: directories nested too deep at {}", to.display()));
            }
            fs::create_dir_all(to).map_err(|err| format!("creating {}: {err}", to.display()))?;
            let listing = self.entry_data(e, e.len)?;
            for child in self.entries(&listing) {
                if child.name.is_empty() || child.name.contains('/') || child.name == "." || child.name == ".." {
                    return Err(format!("exFAT: a bad file name {:?} in {}", child.name, to.display()));
                }
                self.copy(&child, &to.join(&child.name), depth + 1)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake local store: two complete backups, one open, one failed, a
    /// lock, three chunks and a leftover temporary file.
    fn fake_store(root: &Path) {
        let files: &[(&str, &[u8])] = &[
            ("chunks/ab/ab01", &[1u8; 5000]),
            ("chunks/ab/ab02", b"two"),
            ("chunks/cd/cd03", &[3u8; 70_000]),
            ("manifests/1.bvm", b"m1"),
            ("manifests/3.bvm", b"m3"),
            ("uploads/4.open", b"name=x\n"),
            ("failed/2.txt", b"disk read error at 4096\n"),
            ("locks/3.lock", b"lock"),
            ("tmp/77-0.tmp", b"half"),
        ];
        for (p, body) in files {
            let p = root.join(p);
            fs::create_dir_all(p.parent().expect("a parent")).expect("store dirs");
            fs::write(&p, body).expect("store file");
        }
    }

    fn want() -> StoreListing {
        StoreListing {
            present: true,
            complete: vec![1, 3],
            open: vec![4],
            failed: vec![(2, "disk read error at 4096".into())],
            locked: vec![3],
            chunk_files: 3,
            tmp_files: 1,
        }
    }

    /// Same files, same bytes.
    fn same_tree(a: &Path, b: &Path) {
        let mut stack = vec![PathBuf::new()];
        let mut n = 0;
        while let Some(rel) = stack.pop() {
            for e in fs::read_dir(a.join(&rel)).expect("list").flatten() {
                let r = rel.join(e.file_name());
                if e.file_type().expect("type").is_dir() {
                    stack.push(r);
                } else {
                    assert_eq!(fs::read(a.join(&r)).expect("a"), fs::read(b.join(&r)).expect("b"), "{}", r.display());
                    n += 1;
                }
            }
        }
        assert_eq!(n, count_files(b), "as many files in {} as in {}", b.display(), a.display());
    }

    fn round_trip(kind: FsKind, partitioned: bool) {
        let dir = scratch_dir(&format!("drive-{kind:?}-{partitioned}")).expect("scratch");
        let img = dir.join("drive.img");
        make_drive(&img, 64, kind, "BVDEST", partitioned).expect("make the drive");
        let vol = locate_volume(&img).expect("locate");
        assert_eq!(vol, Volume { kind, offset: if partitioned { PART_START } else { 0 } });
        assert_eq!(store_listing(&img).expect("empty listing"), StoreListing::default(), "no store yet");
        assert!(copy_store_out(&img, &dir.join("none")).is_err(), "no store to copy");
        let store = dir.join("store");
        fake_store(&store);
        copy_store_in(&img, &store).expect("copy the store in");
        fsck_drive(&img).expect("a clean filesystem");
        assert_eq!(store_listing(&img).expect("listing"), want());
        let out = dir.join("out");
        copy_store_out(&img, &out).expect("copy out");
        same_tree(&store, &out);
        let digest = image_digest(&img).expect("digest");
        assert_eq!(digest.len(), 64);
        assert_eq!(image_digest(&img).expect("digest"), digest, "reading changes nothing");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn ext4_drives_round_trip() {
        round_trip(FsKind::Ext4, false);
        round_trip(FsKind::Ext4, true);
    }

    #[test]
    fn vfat_drives_round_trip() {
        round_trip(FsKind::Vfat, false);
        round_trip(FsKind::Vfat, true);
    }

    /// Writing into exFAT goes through exfat-fuse on a loop device: root.
    #[test]
    fn exfat_drives_round_trip() {
        round_trip(FsKind::Exfat, false);
        round_trip(FsKind::Exfat, true);
    }

    /// The exFAT reader on what exfat-fuse writes for a real store:
    /// directories over many clusters, and a file whose clusters are not
    /// contiguous (read through the FAT).
    #[test]
    fn exfat_reader_follows_long_directories_and_fragmented_files() {
        let dir = scratch_dir("exfat-reader").expect("scratch");
        let img = dir.join("drive.img");
        make_exfat_drive(&img, 32, "BVFRAG", false).expect("drive");
        let store = dir.join("store");
        for i in 0..300 {
            let p = store.join(format!("chunks/{:02x}/{i:064x}", i % 256));
            fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
            fs::write(&p, crate::noise(i, 100 + i as usize)).expect("chunk");
        }
        copy_store_in(&img, &store).expect("copy in");
        {
            // a, b, then a deleted and c larger than a: c's clusters wrap around b.
            let m = FuseMount::exfat(&img, 0).expect("mount");
            let top = m.dir.join(STORE_DIR);
            fs::write(top.join("a"), crate::noise(1, 40_000)).expect("a");
            fs::write(top.join("b"), crate::noise(2, 40_000)).expect("b");
            fs::remove_file(top.join("a")).expect("rm a");
            fs::write(top.join("c"), crate::noise(3, 200_000)).expect("c");
            m.finish().expect("unmount");
        }
        fsck_drive(&img).expect("clean");
        let out = dir.join("out");
        copy_store_out(&img, &out).expect("copy out");
        assert_eq!(fs::read(out.join("c")).expect("c"), crate::noise(3, 200_000));
        assert_eq!(fs::read(out.join("b")).expect("b"), crate::noise(2, 40_000));
        assert!(!out.join("a").exists(), "a deleted file is not listed");
        fs::remove_file(out.join("b")).expect("rm");
        fs::remove_file(out.join("c")).expect("rm");
        same_tree(&store, &out);
        assert_eq!(store_listing(&img).expect("listing").chunk_files, 300);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_blank_image_has_no_volume() {
        let dir = scratch_dir("blank-drive").expect("scratch");
        let img = dir.join("blank.img");
        create_sized(&img, MIB).expect("blank");
        assert!(locate_volume(&img).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_host_store_lists() {
        let dir = scratch_dir("host-store").expect("scratch");
        fake_store(&dir.join("s"));
        assert_eq!(store_listing_dir(&dir.join("s")).expect("listing"), want());
        assert_eq!(store_listing_dir(&dir.join("absent")).expect("listing"), StoreListing::default());
        let _ = fs::remove_dir_all(&dir);
    }
}
