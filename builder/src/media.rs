//! Boot media made from a PC's boot files: a hybrid ISO (`OUT/NAME.iso`)
//! and a raw USB disk image (`OUT/NAME-usb.img`), each bootable on BIOS
//! (isolinux / syslinux) and on UEFI (systemd-boot), and `--write`, which
//! copies one of them onto a USB stick (`media/device.rs`).
//!
//! It owns those two image files, their staging directory next to them
//! (`OUT/.NAME-TYPE.tmp`, removed on success and on failure), and the device
//! given to `--write`. It only reads the boot files `build` wrote
//! (`OUT/{vmlinuz,initrd.img,cmdline}`) and never changes them; PXE is not
//! its business. The Debian programs it runs (xorriso, mkfs.vfat, mtools,
//! syslinux) get a fixed `SOURCE_DATE_EPOCH` and `TZ=UTC`, and every id is
//! derived from the PC name, so the same inputs give the same bytes
//! (docs/MEDIA.md).

mod device;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use bootvault_common::units::human_bytes;

/// The images this module makes (`--media iso`, `--media usb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Hybrid ISO: CD/DVD, or dd'ed to a USB stick; BIOS and UEFI.
    Iso,
    /// Raw disk image (MBR + one FAT partition) for a USB stick; BIOS and UEFI.
    Usb,
    /// A 1.44 MB floppy (FAT12, syslinux); BIOS.
    Floppy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Iso => "iso",
            Kind::Usb => "usb",
            Kind::Floppy => "floppy",
        }
    }
}

/// A built image, for the size report and `--write`.
#[derive(Debug, Clone)]
pub struct Image {
    pub kind: Kind,
    pub path: PathBuf,
    pub bytes: u64,
}

impl Image {
    /// `  iso        23.4 MiB  out/lab-3/lab-3.iso (BIOS isolinux, UEFI systemd-boot)`
    pub fn report_line(&self) -> String {
        let how = match self.kind {
            Kind::Iso => "BIOS isolinux, UEFI systemd-boot",
            Kind::Usb => "BIOS syslinux, UEFI systemd-boot",
            Kind::Floppy => "FAT12 floppy, BIOS syslinux",
        };
        format!("  {:<10} {}  {} ({how})", self.kind.name(), human_bytes(self.bytes), self.path.display())
    }
}

/// Writes the USB image (or the ISO when only that was built) onto a whole
/// disk, after the checks and the confirmation of `media/device.rs`.
pub fn write_to_device(images: &[Image], device: &Path, yes: bool) -> Result<()> {
    let image = images
        .iter()
        .find(|i| i.kind == Kind::Usb)
        .or_else(|| images.iter().find(|i| i.kind == Kind::Iso))
        .context("--write needs an image to write: add --media usb (or --media iso)")?;
    device::write(&image.path, device, yes, &device::Roots::system())
}

// ---------------------------------------------------------------------------
// Pure parts: names, ids, configuration files, sizes, the MBR.

/// Used when the environment has no `SOURCE_DATE_EPOCH`: 1980-01-01 00:00
/// UTC, the earliest time FAT can store, so it reads as "no date".
pub const DEFAULT_EPOCH: u64 = 315_532_800;

/// Byte offset of the USB image's partition: 1 MiB, as partitioning tools
/// align it (and room for nothing else: syslinux needs no gap).
pub const USB_PART_START_LBA: u32 = 2048;

/// FNV-1a, 32 bits: a stable id from the PC name (not a secret, only
/// "different PCs get different ids, the same PC always the same").
pub fn name_id(salt: &str, pc: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in salt.bytes().chain([0]).chain(pc.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The ISO volume id: `BOOTVAULT_` and the PC name in ISO 9660
/// d-characters (A-Z, 0-9, _), at most 32 of them.
pub fn iso_volume_id(pc: &str) -> String {
    let name: String =
        pc.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    let mut id = format!("BOOTVAULT_{name}");
    id.truncate(32);
    id
}

/// The kernel command line from the builder's `cmdline` file: one line.
pub fn cmdline_from_file(text: &str) -> Result<String> {
    let line = text.trim();
    if line.contains(['\n', '\r']) {
        bail!("the cmdline file has more than one line");
    }
    Ok(line.to_owned())
}

/// isolinux/syslinux: boot the one entry at once (`prompt 0`; `timeout 1`
/// only matters if someone holds Shift).
pub fn syslinux_cfg(pc: &str, cmdline: &str) -> String {
    format!(
        "# bootvault PC {pc} (written by bootvault build)\n\
         default bootvault\nprompt 0\ntimeout 1\n\n\
         label bootvault\n  linux /vmlinuz\n  initrd /initrd.img\n  append {cmdline}\n"
    )
}

/// systemd-boot's loader.conf: the bootvault entry, no menu.
pub fn loader_conf() -> String {
    "default bootvault.conf\ntimeout 0\neditor no\n".to_owned()
}

/// systemd-boot's entry: the EFI-stub kernel, its initrd and command line.
pub fn loader_entry(pc: &str, cmdline: &str) -> String {
    format!("title   bootvault {pc}\nlinux   /vmlinuz\ninitrd  /initrd.img\noptions {cmdline}\n")
}

/// A floppy's size and the FAT12 layout mkfs.vfat gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floppy {
    /// `1.44 MB`
    pub name: &'static str,
    pub sectors: u64,
    /// Sectors per FAT (two FATs), root directory sectors, bytes per cluster.
    pub fat: u64,
    pub root: u64,
    pub cluster: u64,
}

/// The 1.44 MB floppy of every PC with a floppy drive.
pub const FLOPPY_144: Floppy = Floppy { name: "1.44 MB", sectors: 2880, fat: 9, root: 14, cluster: 512 };
/// The 2.88 MB (ED) floppy of some drives and of QEMU's.
pub const FLOPPY_288: Floppy = Floppy { name: "2.88 MB", sectors: 5760, fat: 9, root: 15, cluster: 1024 };

impl Floppy {
    pub fn bytes(&self) -> u64 {
        self.sectors * 512
    }

    /// What its files can take: all sectors less the boot sector, the two
    /// FATs and the root directory.
    pub fn data_bytes(&self) -> u64 {
        (self.sectors - 1 - 2 * self.fat - self.root) * 512
    }

    /// Whether files of these sizes fit (each takes whole clusters); Err
    /// says by how much they do not.
    pub fn fit(&self, files: &[(&str, u64)]) -> std::result::Result<u64, String> {
        let used: u64 = files.iter().map(|(_, n)| n.div_ceil(self.cluster) * self.cluster).sum();
        let room = self.data_bytes();
        if used <= room {
            return Ok(used);
        }
        let parts: Vec<String> = files.iter().map(|(name, n)| format!("{name} {}", human_bytes(*n))).collect();
        Err(format!(
            "does not fit on a {} floppy: {} take {used} bytes, {} more than the {room} its FAT12 holds ({} \
             bytes in all)",
            self.name,
            parts.join(" + "),
            used - room,
            self.bytes()
        ))
    }
}

/// Size of a FAT16 filesystem (MiB) holding `payload` bytes in `files`
/// files: mkfs.vfat's 2 KiB clusters waste under 4 KiB a file, 5 % plus
/// 1 MiB covers the FATs, directories and root; below 12 MiB mkfs.vfat
/// cannot make FAT16 (too few clusters).
pub fn fat_mib(payload: u64, files: u64) -> u64 {
    let need = payload + payload / 20 + files * 4096 + (1 << 20);
    need.div_ceil(1 << 20).max(12)
}

/// One primary partition for `mbr_sector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrPartition {
    pub bootable: bool,
    pub kind: u8,
    pub start_lba: u32,
    pub sectors: u32,
}

/// CHS address of an LBA in the 255-head, 63-sector geometry, as the three
/// MBR bytes; beyond cylinder 1023 the conventional "use LBA" maximum.
fn chs(lba: u32) -> [u8; 3] {
    let (c, h, s) = {
        let c = lba / (255 * 63);
        if c > 1023 {
            (1023, 254, 63)
        } else {
            (c, (lba / 63) % 255, lba % 63 + 1)
        }
    };
    [h as u8, (s as u8 & 0x3f) | (((c >> 8) as u8 & 0x03) << 6), c as u8]
}

/// The first sector of a disk: boot code (at most 440 bytes, e.g.
/// syslinux's mbr.bin), disk signature, one partition, 0x55AA.
pub fn mbr_sector(boot_code: &[u8], disk_signature: u32, p: MbrPartition) -> Result<[u8; 512]> {
    if boot_code.len() > 440 {
        bail!("MBR boot code is {} bytes, more than 440", boot_code.len());
    }
    if p.sectors == 0 || p.start_lba.checked_add(p.sectors).is_none() {
        bail!("partition of {} sectors at {} does not fit an MBR", p.sectors, p.start_lba);
    }
    let mut s = [0u8; 512];
    s[..boot_code.len()].copy_from_slice(boot_code);
    s[440..444].copy_from_slice(&disk_signature.to_le_bytes());
    let e = &mut s[446..462];
    e[0] = if p.bootable { 0x80 } else { 0 };
    e[1..4].copy_from_slice(&chs(p.start_lba));
    e[4] = p.kind;
    e[5..8].copy_from_slice(&chs(p.start_lba + p.sectors - 1));
    e[8..12].copy_from_slice(&p.start_lba.to_le_bytes());
    e[12..16].copy_from_slice(&p.sectors.to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xAA;
    Ok(s)
}

/// An xorriso `-graft-points` pathspec `TARGET=SOURCE` ('=' and '\' in
/// either side escaped with '\').
fn graft(target: &str, source: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    let esc = |bytes: &[u8], out: &mut Vec<u8>| {
        for &b in bytes {
            if b == b'=' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
    };
    esc(target.as_bytes(), &mut out);
    out.push(b'=');
    esc(source.as_os_str().as_bytes(), &mut out);
    OsString::from_vec(out)
}

// ---------------------------------------------------------------------------
// The Debian programs and files.

/// A program this module runs, and the Debian package that has it.
#[derive(Clone, Copy)]
struct Tool {
    program: &'static str,
    package: &'static str,
}

const XORRISO: Tool = Tool { program: "xorriso", package: "xorriso" };
const MKFS_VFAT: Tool = Tool { program: "mkfs.vfat", package: "dosfstools" };
const MMD: Tool = Tool { program: "mmd", package: "mtools" };
const MCOPY: Tool = Tool { program: "mcopy", package: "mtools" };
const SYSLINUX: Tool = Tool { program: "syslinux", package: "syslinux" };

/// A file from a Debian package that goes onto the media.
#[derive(Clone, Copy)]
struct PackageFile {
    path: &'static str,
    package: &'static str,
}

const ISOLINUX_BIN: PackageFile = PackageFile { path: "/usr/lib/ISOLINUX/isolinux.bin", package: "isolinux" };
const ISOHDPFX_BIN: PackageFile = PackageFile { path: "/usr/lib/ISOLINUX/isohdpfx.bin", package: "isolinux" };
const LDLINUX_C32: PackageFile =
    PackageFile { path: "/usr/lib/syslinux/modules/bios/ldlinux.c32", package: "syslinux-common" };
const MBR_BIN: PackageFile = PackageFile { path: "/usr/lib/syslinux/mbr/mbr.bin", package: "syslinux-common" };
const SYSTEMD_BOOT: PackageFile =
    PackageFile { path: "/usr/lib/systemd/boot/efi/systemd-bootx64.efi", package: "systemd-boot-efi" };

impl PackageFile {
    fn path(self) -> Result<&'static Path> {
        let p = Path::new(self.path);
        if !p.is_file() {
            bail!("{} not found: install the Debian package {} (make deps does)", self.path, self.package);
        }
        Ok(p)
    }
}

/// Where a program is: `PATH`, then the sbin directories an ordinary
/// user's `PATH` lacks on Debian (mkfs.vfat lives in /usr/sbin).
fn locate(tool: Tool) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool.program))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{} not found: install the Debian package {} (make deps does)", tool.program, tool.package)
        })
}

/// The environment that makes the tools' output reproducible: fixed
/// timestamps (xorriso, mtools and mkfs.vfat honour SOURCE_DATE_EPOCH, but
/// xorriso also needs --set_all_file_dates; mtools writes FAT local time,
/// hence TZ=UTC), no user mtools settings.
struct Env {
    epoch: u64,
}

impl Env {
    fn from_process() -> Result<Env> {
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970"))?,
            Err(_) => DEFAULT_EPOCH,
        };
        Ok(Env { epoch })
    }

    /// Runs `tool` with the arguments `args` adds; `object` names what it
    /// was making, for the one-line error.
    fn run(&self, tool: Tool, object: &Path, args: impl FnOnce(&mut Command)) -> Result<()> {
        let mut cmd = Command::new(locate(tool)?);
        args(&mut cmd);
        cmd.env("SOURCE_DATE_EPOCH", self.epoch.to_string())
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("MTOOLSRC", "/dev/null")
            .stdin(Stdio::null());
        let out = cmd.output().with_context(|| format!("running {} for {}", tool.program, object.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = err.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            bail!(
                "{} failed making {} ({}): {}",
                tool.program,
                object.display(),
                out.status,
                last[last.len().saturating_sub(2)..].join(" / ")
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Files that exist only while an image is being made.

/// A staging directory, removed when dropped.
struct Staging(PathBuf);

impl Staging {
    fn new(path: PathBuf) -> Result<Staging> {
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Staging(path))
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.0.join(name);
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The image being made under a temporary name; renamed to its final
/// name by `commit`, removed if dropped before that, so a failed build
/// never leaves a half-written image under the final name.
struct Partial {
    tmp: PathBuf,
    done: bool,
}

impl Partial {
    fn new(final_path: &Path) -> Result<Partial> {
        let mut name = final_path.file_name().context("image path without a file name")?.to_owned();
        name.push(".partial");
        let tmp = final_path.with_file_name(name);
        let _ = fs::remove_file(&tmp);
        Ok(Partial { tmp, done: false })
    }

    fn commit(mut self, final_path: &Path) -> Result<u64> {
        let f = fs::File::open(&self.tmp).with_context(|| format!("opening {}", self.tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", self.tmp.display()))?;
        let bytes = f.metadata().with_context(|| format!("reading {}", self.tmp.display()))?.len();
        fs::rename(&self.tmp, final_path)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), final_path.display()))?;
        self.done = true;
        Ok(bytes)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The boot files `build` wrote, checked before any tool runs.
struct BootFiles {
    vmlinuz: PathBuf,
    initrd: PathBuf,
    cmdline: String,
    bytes: u64,
}

impl BootFiles {
    fn read(out: &Path) -> Result<BootFiles> {
        let vmlinuz = out.join("vmlinuz");
        let initrd = out.join("initrd.img");
        let mut bytes = 0;
        for p in [&vmlinuz, &initrd] {
            bytes += fs::metadata(p).with_context(|| format!("reading {}", p.display()))?.len();
        }
        let cmdline_path = out.join("cmdline");
        let text = fs::read_to_string(&cmdline_path).with_context(|| format!("reading {}", cmdline_path.display()))?;
        let cmdline = cmdline_from_file(&text).with_context(|| format!("reading {}", cmdline_path.display()))?;
        Ok(BootFiles { vmlinuz, initrd, cmdline, bytes })
    }
}

/// Fills a FAT filesystem (`fat` is `IMAGE` or `IMAGE@@OFFSET` for mtools)
/// with systemd-boot, its configuration, the kernel and the initramfs: the
/// UEFI half of both media.
fn fill_uefi(env: &Env, fat: &OsStr, image: &Path, staging: &Staging, pc: &str, boot: &BootFiles) -> Result<()> {
    let systemd_boot = SYSTEMD_BOOT.path()?;
    let loader_conf = staging.write("loader.conf", &loader_conf())?;
    let entry = staging.write("bootvault.conf", &loader_entry(pc, &boot.cmdline))?;
    env.run(MMD, image, |c| {
        c.arg("-i").arg(fat).args(["::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"]);
    })?;
    for (source, target) in [
        (systemd_boot, "::/EFI/BOOT/BOOTX64.EFI"),
        (loader_conf.as_path(), "::/loader/loader.conf"),
        (entry.as_path(), "::/loader/entries/bootvault.conf"),
        (boot.vmlinuz.as_path(), "::/vmlinuz"),
        (boot.initrd.as_path(), "::/initrd.img"),
    ] {
        // No -m: mtools stamps SOURCE_DATE_EPOCH, not the source's mtime.
        env.run(MCOPY, image, |c| {
            c.arg("-i").arg(fat).arg("-o").arg(source).arg(target);
        })?;
    }
    Ok(())
}

fn file_len(p: &Path) -> Result<u64> {
    Ok(fs::metadata(p).with_context(|| format!("reading {}", p.display()))?.len())
}

fn volume_serial(pc: &str, salt: &str) -> String {
    format!("{:08X}", name_id(salt, pc))
}

// ---------------------------------------------------------------------------
// The media.

/// `OUT/NAME.iso`: ISO 9660 with isolinux for BIOS (El Torito, and
/// isohdpfx.bin's MBR when dd'ed to a stick), and an appended FAT
/// partition for UEFI that is also the El Torito EFI image.
pub fn iso(out: &Path, pc: &str) -> Result<Image> {
    let env = Env::from_process()?;
    let boot = BootFiles::read(out)?;
    let (isolinux, isohdpfx, ldlinux) = (ISOLINUX_BIN.path()?, ISOHDPFX_BIN.path()?, LDLINUX_C32.path()?);
    let final_path = out.join(format!("{pc}.iso"));
    let partial = Partial::new(&final_path)?;
    let staging = Staging::new(out.join(format!(".{pc}-iso.tmp")))?;

    // The UEFI side: a FAT image of its own (El Torito needs a filesystem
    // image), sized to its files.
    let efi_img = staging.0.join("efi.img");
    let payload = boot.bytes + file_len(SYSTEMD_BOOT.path()?)?;
    let kib = fat_mib(payload, 5) * 1024;
    env.run(MKFS_VFAT, &efi_img, |c| {
        c.args(["--invariant", "-F", "16", "-n", "BOOTVAULT", "-i", &volume_serial(pc, "iso-esp"), "-C"])
            .arg(&efi_img)
            .arg(kib.to_string());
    })?;
    fill_uefi(&env, efi_img.as_os_str(), &efi_img, &staging, pc, &boot)?;

    let cfg = staging.write("isolinux.cfg", &syslinux_cfg(pc, &boot.cmdline))?;
    env.run(XORRISO, &final_path, |c| {
        c.args(["-as", "mkisofs", "-o"])
            .arg(&partial.tmp)
            .args(["-V", &iso_volume_id(pc), "-r", "-J", "-joliet-long", "-graft-points"])
            // SOURCE_DATE_EPOCH alone keeps each file's own mtime.
            .args(["--set_all_file_dates", &format!("={}", env.epoch)])
            .arg("-isohybrid-mbr")
            .arg(isohdpfx)
            .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
            .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
            .args(["-eltorito-alt-boot", "-e", "--interval:appended_partition_2:all::", "-no-emul-boot"])
            .arg("-isohybrid-gpt-basdat")
            .args(["-append_partition", "2", "0xef"])
            .arg(&efi_img)
            .arg(graft("isolinux/isolinux.bin", isolinux))
            .arg(graft("isolinux/ldlinux.c32", ldlinux))
            .arg(graft("isolinux/isolinux.cfg", &cfg))
            .arg(graft("vmlinuz", &boot.vmlinuz))
            .arg(graft("initrd.img", &boot.initrd));
    })?;
    let bytes = partial.commit(&final_path)?;
    Ok(Image { kind: Kind::Iso, path: final_path, bytes })
}

/// `OUT/NAME-usb.img`: MBR (syslinux's mbr.bin) and one bootable FAT16
/// partition at 1 MiB holding syslinux for BIOS and systemd-boot for UEFI,
/// with one copy of the kernel and initramfs that both use.
pub fn usb(out: &Path, pc: &str) -> Result<Image> {
    let env = Env::from_process()?;
    let boot = BootFiles::read(out)?;
    let mbr_code = fs::read(MBR_BIN.path()?).with_context(|| format!("reading {}", MBR_BIN.path))?;
    let ldlinux_bytes = file_len(LDLINUX_C32.path()?)?;
    let final_path = out.join(format!("{pc}-usb.img"));
    let partial = Partial::new(&final_path)?;
    let staging = Staging::new(out.join(format!(".{pc}-usb.tmp")))?;

    // ldlinux.sys is about half of ldlinux.c32; count it as a whole one.
    let payload = boot.bytes + file_len(SYSTEMD_BOOT.path()?)? + 2 * ldlinux_bytes;
    let part_mib = fat_mib(payload, 8);
    let part_sectors = u32::try_from(part_mib * 2048).context("USB image larger than an MBR can describe")?;
    let offset = u64::from(USB_PART_START_LBA) * 512;
    {
        let f = fs::File::create(&partial.tmp).with_context(|| format!("creating {}", partial.tmp.display()))?;
        f.set_len(offset + part_mib * (1 << 20)).with_context(|| format!("sizing {}", partial.tmp.display()))?;
    }
    let img = &partial.tmp;
    env.run(MKFS_VFAT, &final_path, |c| {
        c.args(["--invariant", "-F", "16", "-n", "BOOTVAULT", "-i", &volume_serial(pc, "usb-fat")])
            .args(["-h", &USB_PART_START_LBA.to_string(), "--offset", &USB_PART_START_LBA.to_string()])
            .arg(img)
            .arg((part_mib * 1024).to_string());
    })?;
    let mut fat = img.as_os_str().to_owned();
    fat.push(format!("@@{offset}"));
    fill_uefi(&env, &fat, &final_path, &staging, pc, &boot)?;
    let cfg = staging.write("syslinux.cfg", &syslinux_cfg(pc, &boot.cmdline))?;
    env.run(MMD, &final_path, |c| {
        c.arg("-i").arg(&fat).arg("::/syslinux");
    })?;
    env.run(MCOPY, &final_path, |c| {
        c.arg("-i").arg(&fat).arg("-o").arg(&cfg).arg("::/syslinux/syslinux.cfg");
    })?;
    // Last, so nothing moves the ldlinux.sys whose sectors it records.
    env.run(SYSLINUX, &final_path, |c| {
        c.args(["--install", "--directory", "/syslinux", "--offset", &offset.to_string()]).arg(img);
    })?;

    let mbr = mbr_sector(
        &mbr_code,
        name_id("usb-mbr", pc),
        MbrPartition { bootable: true, kind: 0x0e, start_lba: USB_PART_START_LBA, sectors: part_sectors },
    )
    .with_context(|| format!("writing the MBR of {}", final_path.display()))?;
    let mut f = fs::OpenOptions::new().write(true).open(img).with_context(|| format!("opening {}", img.display()))?;
    f.write_all(&mbr).with_context(|| format!("writing the MBR of {}", img.display()))?;
    drop(f);
    let bytes = partial.commit(&final_path)?;
    Ok(Image { kind: Kind::Usb, path: final_path, bytes })
}

/// `OUT/NAME-floppy.img` (1.44 MB) or `OUT/NAME-floppy288.img` (2.88 MB):
/// a FAT12 floppy with syslinux, the kernel and the initramfs; BIOS only.
/// Refused, with the sizes, when they do not fit (our smallest kernel is
/// `--kernel-config floppy --arch i686`).
pub fn floppy(out: &Path, pc: &str, size: Floppy) -> Result<Image> {
    let env = Env::from_process()?;
    let boot = BootFiles::read(out)?;
    let ldlinux = LDLINUX_C32.path()?;
    let staging = Staging::new(out.join(format!(".{pc}-floppy.tmp")))?;
    let cfg = staging.write("syslinux.cfg", &syslinux_cfg(pc, &boot.cmdline))?;
    // ldlinux.sys, which `syslinux --install` writes, is about half of ldlinux.c32.
    let files = [
        ("kernel", file_len(&boot.vmlinuz)?),
        ("initramfs", file_len(&boot.initrd)?),
        ("syslinux", file_len(ldlinux)? * 3 / 2),
        ("syslinux.cfg", file_len(&cfg)?),
    ];
    let flag = if size == FLOPPY_144 { "floppy" } else { "floppy288" };
    size.fit(&files).map_err(|e| anyhow::anyhow!("--media {flag}: {e}"))?;
    let final_path = out.join(format!("{pc}-{flag}.img"));
    let partial = Partial::new(&final_path)?;
    let img = &partial.tmp;
    env.run(MKFS_VFAT, &final_path, |c| {
        c.args(["--invariant", "-C", "-F", "12", "-n", "BOOTVAULT", "-i", &volume_serial(pc, "floppy")])
            .arg(img)
            .arg((size.bytes() / 1024).to_string());
    })?;
    let fat = img.as_os_str().to_owned();
    for (source, target) in [
        (cfg.as_path(), "::/syslinux.cfg"),
        (ldlinux, "::/ldlinux.c32"),
        (boot.vmlinuz.as_path(), "::/vmlinuz"),
        (boot.initrd.as_path(), "::/initrd.img"),
    ] {
        env.run(MCOPY, &final_path, |c| {
            c.arg("-i").arg(&fat).arg("-o").arg(source).arg(target);
        })?;
    }
    // Last, so nothing moves the ldlinux.sys whose sectors it records.
    env.run(SYSLINUX, &final_path, |c| {
        c.arg("--install").arg(img);
    })?;
    let bytes = partial.commit(&final_path)?;
    Ok(Image { kind: Kind::Floppy, path: final_path, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootvault_common::partition::{parse_mbr, MbrEntry};

    #[test]
    fn what_fits_on_a_floppy() {
        assert_eq!((FLOPPY_144.bytes(), FLOPPY_144.data_bytes()), (1_474_560, 1_457_664));
        assert_eq!((FLOPPY_288.bytes(), FLOPPY_288.data_bytes()), (2_949_120, 2_931_712));
        assert_eq!(FLOPPY_144.fit(&[("kernel", 1_000_000), ("initramfs", 1)]), Ok(1_000_448 + 512));
        assert_eq!(FLOPPY_288.fit(&[("kernel", 1_000_000), ("initramfs", 1)]), Ok(1_000_448 + 1024));
        let e = FLOPPY_144.fit(&[("kernel", 1_000_000), ("initramfs", 500_000)]).expect_err("too large");
        assert_eq!(
            e,
            "does not fit on a 1.44 MB floppy: kernel 976.6 KiB + initramfs 488.3 KiB take 1500672 bytes, 43008 more \
             than the 1457664 its FAT12 holds (1474560 bytes in all)"
        );
        assert!(FLOPPY_288.fit(&[("kernel", 1_000_000), ("initramfs", 500_000)]).is_ok());
    }

    #[test]
    fn write_needs_an_image() {
        let e = write_to_device(&[], Path::new("/dev/null"), true).expect_err("refused");
        assert!(format!("{e}").starts_with("--write needs an image"), "{e}");
    }

    #[test]
    fn ids_are_stable_and_differ_between_pcs() {
        // FNV-1a test vector for the empty input is the offset basis; ours
        // always hashes at least the separator, so check stability instead.
        assert_eq!(name_id("usb-mbr", "lab-3"), name_id("usb-mbr", "lab-3"));
        assert_ne!(name_id("usb-mbr", "lab-3"), name_id("usb-mbr", "lab-4"));
        assert_ne!(name_id("usb-mbr", "lab-3"), name_id("usb-fat", "lab-3"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(name_id("ab", "c"), name_id("a", "bc"));
        assert_eq!(volume_serial("x", "y").len(), 8);
    }

    #[test]
    fn iso_volume_id_is_d_characters_and_at_most_32() {
        assert_eq!(iso_volume_id("lab-3"), "BOOTVAULT_LAB_3");
        assert_eq!(iso_volume_id("lab 3.é"), "BOOTVAULT_LAB_3__");
        let long = iso_volume_id(&"x".repeat(40));
        assert_eq!(long.len(), 32);
        assert!(long.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
    }

    #[test]
    fn cmdline_file_is_one_line() {
        assert_eq!(cmdline_from_file("console=ttyS0 quiet\n").ok().as_deref(), Some("console=ttyS0 quiet"));
        assert!(cmdline_from_file("a\nb\n").is_err());
    }

    #[test]
    fn boot_loader_configs_name_the_files_and_do_not_wait() {
        let s = syslinux_cfg("lab-3", "console=ttyS0,115200 bootvault.pc=lab-3");
        assert!(s.contains("\nprompt 0\n") && s.contains("\ntimeout 1\n"), "{s}");
        assert!(s.contains("  linux /vmlinuz\n  initrd /initrd.img\n"), "{s}");
        assert!(s.ends_with("  append console=ttyS0,115200 bootvault.pc=lab-3\n"), "{s}");
        assert!(loader_conf().contains("timeout 0\n"));
        assert_eq!(
            loader_entry("lab-3", "quiet bootvault.pc=\"lab 3\""),
            "title   bootvault lab-3\nlinux   /vmlinuz\ninitrd  /initrd.img\noptions quiet bootvault.pc=\"lab 3\"\n"
        );
    }

    #[test]
    fn fat_size_covers_payload_and_has_a_floor() {
        assert_eq!(fat_mib(0, 0), 12);
        assert_eq!(fat_mib(3 << 20, 5), 12);
        let payload = 30 << 20;
        let mib = fat_mib(payload, 8);
        assert!(mib << 20 >= payload + payload / 20 + (1 << 20), "{mib}");
        assert!(mib <= 35, "{mib}");
    }

    #[test]
    fn mbr_sector_round_trips_through_the_parser() {
        let code = [0xfa_u8; 440];
        let p = MbrPartition { bootable: true, kind: 0x0e, start_lba: 2048, sectors: 24 * 2048 };
        let s = mbr_sector(&code, 0x1234_5678, p).expect("mbr");
        assert_eq!(&s[..440], &code[..]);
        let m = parse_mbr(&s).expect("parses");
        assert_eq!(m.disk_signature, 0x1234_5678);
        assert_eq!(m.entries[0], MbrEntry { status: 0x80, kind: 0x0e, start_lba: 2048, sectors: 49152 });
        assert!(m.entries[1..].iter().all(|e| e.kind == 0 && e.sectors == 0));
        // CHS of LBA 2048 in 255/63 geometry: cylinder 0, head 32, sector 33.
        assert_eq!(&s[447..450], &[32, 33, 0]);
        // Last sector 51199: cylinder 3, head 47, sector 44.
        assert_eq!(&s[451..454], &[47, 44, 3]);
    }

    #[test]
    fn mbr_chs_saturates_and_bad_input_is_refused() {
        assert_eq!(chs(u32::MAX), [254, 0xff, 0xff]);
        assert_eq!(chs(0), [0, 1, 0]);
        let p = MbrPartition { bootable: false, kind: 0x0c, start_lba: 2048, sectors: 1 };
        assert!(mbr_sector(&[0; 441], 0, p).is_err());
        assert!(mbr_sector(&[], 0, MbrPartition { sectors: 0, ..p }).is_err());
        assert!(mbr_sector(&[], 0, MbrPartition { start_lba: u32::MAX, ..p }).is_err());
    }

    #[test]
    fn graft_points_escape_equals_and_backslashes() {
        assert_eq!(graft("vmlinuz", Path::new("/a=b/c\\d")), OsString::from("vmlinuz=/a\\=b/c\\\\d"));
    }

    #[test]
    fn report_line_matches_the_build_report() {
        let i = Image { kind: Kind::Iso, path: PathBuf::from("out/lab-3/lab-3.iso"), bytes: 24_536_678 };
        assert_eq!(i.report_line(), "  iso        23.4 MiB  out/lab-3/lab-3.iso (BIOS isolinux, UEFI systemd-boot)");
    }

    /// Both media from small stand-in boot files, twice, with the inputs'
    /// mtimes changed in between: identical bytes. Needs the Debian tools
    /// (`make deps`); the QEMU suite boots the real thing.
    #[test]
    fn media_are_reproducible() {
        let dir = std::env::temp_dir().join(format!("bootvault-media-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let make = |sub: &str, mtime: u64| -> (Vec<u8>, Vec<u8>) {
            let out = dir.join(sub);
            fs::create_dir_all(&out).expect("dir");
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
            for (name, len) in [("vmlinuz", 300_000usize), ("initrd.img", 200_000)] {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
                fs::write(out.join(name), data).expect("write");
                fs::File::options().write(true).open(out.join(name)).expect("open").set_modified(t).expect("mtime");
            }
            fs::write(out.join("cmdline"), "console=ttyS0,115200 quiet bootvault.pc=repro\n").expect("cmdline");
            let iso = iso(&out, "repro").expect("iso builds");
            let usb = usb(&out, "repro").expect("usb builds");
            assert!(!out.join(".repro-iso.tmp").exists() && !out.join("repro.iso.partial").exists());
            (fs::read(iso.path).expect("iso"), fs::read(usb.path).expect("usb"))
        };
        let (iso1, usb1) = make("a", 1_000_000_000);
        let (iso2, usb2) = make("b", 1_700_000_000);
        let _ = fs::remove_dir_all(&dir);
        assert!(iso1 == iso2, "ISO bytes differ");
        assert!(usb1 == usb2, "USB image bytes differ");
        let m = parse_mbr(&usb1[..512]).expect("usb mbr");
        assert_eq!(m.entries[0].start_lba, USB_PART_START_LBA);
        assert_eq!(u64::from(m.entries[0].start_lba + m.entries[0].sectors) * 512, usb1.len() as u64);
        assert_eq!(&usb1[..440], &fs::read(MBR_BIN.path).expect("mbr.bin")[..440]);
    }
}
