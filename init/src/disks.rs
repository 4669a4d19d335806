//! Block device discovery: which disks this PC has, how they are laid out
//! and what each partition holds.
//!
//! Reads `ROOT/sys/block/*` for the facts and the first sectors of
//! `ROOT/dev/NAME` for the partition table (parsed by the pure
//! `bootvault_common::partition`) and for the filesystem on each
//! partition, or on the whole disk when it has no table (recognised by the
//! pure `bootvault_common::fsprobe`). Only reads; never writes a device.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

use bootvault_common::fsprobe::{self, Filesystem};
use bootvault_common::partition::{self, PartitionTable, TableKind};
use bootvault_common::units::human_bytes;

#[derive(Debug, Clone)]
pub struct Disk {
    pub name: String,
    pub bytes: u64,
    pub logical: u32,
    pub physical: u32,
    pub model: String,
    pub serial: String,
    pub removable: bool,
    pub rotational: bool,
    /// `Ok(None)`: no partition table; `Err`: could not read or parse it.
    pub table: Result<Option<PartitionTable>, String>,
    /// One entry per partition of `table`, in the same order; empty when
    /// there is no table.
    pub parts: Vec<PartInfo>,
    /// What the whole disk holds when it has no partition table (a
    /// filesystem made on the bare disk, an LVM PV, a RAID member).
    pub fs: Option<Filesystem>,
}

/// One partition and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Linux device name: `vda1`, `nvme0n1p2`.
    pub name: String,
    /// 1-based, as Linux numbers them (MBR logicals from 5).
    pub number: u32,
    /// Offset from the start of the disk, in bytes.
    pub start: u64,
    pub bytes: u64,
    /// The partition type: `Linux filesystem`, `EFI System`, `FAT32`, ...
    pub type_name: &'static str,
    /// The GPT partition name (`Basic data partition`); empty for MBR.
    pub part_label: String,
    /// The filesystem recognised inside; `None` for none (or an unreadable
    /// one, or the extended partition that only holds the logicals).
    pub fs: Option<Filesystem>,
}

/// Devices that are not disks of the PC.
fn skipped(name: &str) -> bool {
    ["loop", "ram", "zram", "nbd", "fd"].iter().any(|p| name.starts_with(p))
}

fn read_trim(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// The disk's serial number: virtio and NVMe have a `serial` file; SCSI
/// and ATA disks carry it in VPD page 0x80 (4-byte header, then ASCII);
/// the `wwid` is the last resort.
fn serial(sys: &Path) -> Option<String> {
    let clean = |s: &str| {
        let words: Vec<&str> = s.split_whitespace().collect();
        (!words.is_empty()).then(|| words.join(" "))
    };
    read_trim(&sys.join("serial"))
        .or_else(|| read_trim(&sys.join("device/serial")))
        .and_then(|s| clean(&s))
        .or_else(|| {
            let page = fs::read(sys.join("device/vpd_pg80")).ok()?;
            let len = usize::from(*page.get(3)?);
            let text = page.get(4..4 + len).or_else(|| page.get(4..))?;
            clean(&String::from_utf8_lossy(text).replace('\0', " "))
        })
        .or_else(|| read_trim(&sys.join("device/wwid")).and_then(|s| clean(&s)))
}

/// All disks under `ROOT/sys/block`, sorted by name.
pub fn probe(root: &Path) -> Vec<Disk> {
    let Ok(entries) = fs::read_dir(root.join("sys/block")) else {
        return Vec::new();
    };
    let mut names: Vec<String> =
        entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).filter(|n| !skipped(n)).collect();
    names.sort();
    names.iter().map(|n| probe_one(root, n)).collect()
}

pub fn probe_one(root: &Path, name: &str) -> Disk {
    let sys = root.join("sys/block").join(name);
    let num = |rel: &str| read_trim(&sys.join(rel)).and_then(|s| s.parse::<u64>().ok());
    // sysfs `size` is in 512-byte units whatever the logical sector size.
    let bytes = num("size").unwrap_or(0).saturating_mul(512);
    let logical = num("queue/logical_block_size").unwrap_or(512) as u32;
    let physical = num("queue/physical_block_size").unwrap_or(u64::from(logical)) as u32;
    let model = read_trim(&sys.join("device/model")).unwrap_or_else(|| "-".into());
    let serial = serial(&sys).unwrap_or_else(|| "-".into());
    let dev = root.join("dev").join(name);
    // One open for the table and every filesystem on the disk.
    let file = (bytes > 0).then(|| File::open(&dev).map_err(|e| format!("opening {}: {e}", dev.display())));
    let mut table = match &file {
        None => Ok(None),
        Some(Ok(f)) => table_of(f, &dev, logical, bytes),
        Some(Err(e)) => Err(e.clone()),
    };
    let file = file.and_then(Result::ok);
    let whole = |f: &File| probe_fs_at(f, 0, bytes);
    let mut fs = None;
    match (&table, &file) {
        (Ok(None), Some(f)) => fs = whole(f),
        // A FAT or exFAT boot sector also ends in 0x55AA, and its boot code
        // reads as MBR entries: a stick formatted without partitions.
        // libblkid decides the same way.
        (Ok(Some(t)), Some(f)) if t.kind == TableKind::Mbr => {
            if let Some(found) = whole(f).filter(|x| matches!(x.kind, "vfat" | "exfat")) {
                table = Ok(None);
                fs = Some(found);
            }
        }
        _ => {}
    }
    let parts = match (&table, &file) {
        (Ok(Some(t)), f) => part_infos(name, t, bytes, f.as_ref()),
        _ => Vec::new(),
    };
    Disk {
        name: name.into(),
        bytes,
        logical,
        physical,
        model,
        serial,
        removable: num("removable") == Some(1),
        rotational: num("queue/rotational") == Some(1),
        table,
        parts,
        fs,
    }
}

/// The partitions of `t` with the filesystem on each, read through `dev`
/// (`None`: the device could not be opened, so no filesystems).
fn part_infos(disk: &str, t: &PartitionTable, disk_bytes: u64, dev: Option<&File>) -> Vec<PartInfo> {
    let ss = u64::from(t.sector_size);
    t.partitions
        .iter()
        .map(|p| {
            let start = p.start_lba.saturating_mul(ss);
            let bytes = p.sectors.saturating_mul(ss);
            // A partition running past the end of the disk is probed only
            // as far as the disk goes.
            let readable = bytes.min(disk_bytes.saturating_sub(start));
            let fs = match dev {
                Some(f) if p.type_name != "Extended" => probe_fs_at(f, start, readable),
                _ => None,
            };
            PartInfo {
                name: partition_name(disk, p.number),
                number: p.number,
                start,
                bytes,
                type_name: p.type_name,
                part_label: p.name.clone(),
                fs,
            }
        })
        .collect()
}

/// Reads `len` bytes at `start + off` of an open device: what the pure
/// parsers read through.
pub fn read_at(dev: &File, start: u64, off: u64, len: usize) -> Result<Vec<u8>, String> {
    let at = start.checked_add(off).ok_or("offset overflows")?;
    let mut buf = vec![0u8; len];
    dev.read_exact_at(&mut buf, at).map_err(|e| format!("reading at {at}: {e}"))?;
    Ok(buf)
}

/// The filesystem in the `bytes` bytes at `start` of an open device.
fn probe_fs_at(dev: &File, start: u64, bytes: u64) -> Option<Filesystem> {
    fsprobe::probe(&mut |off, len| read_at(dev, start, off, len), bytes)
}

/// Reads and parses the partition table of a device or image file.
pub fn read_table(dev: &Path, sector_size: u32, bytes: u64) -> Result<Option<PartitionTable>, String> {
    let f = File::open(dev).map_err(|e| format!("opening {}: {e}", dev.display()))?;
    table_of(&f, dev, sector_size, bytes)
}

/// The partition table of `f`, opened from `dev` (named in errors).
fn table_of(f: &File, dev: &Path, sector_size: u32, bytes: u64) -> Result<Option<PartitionTable>, String> {
    partition::parse(&mut |off, len| read_at(f, 0, off, len), sector_size, bytes)
        .map_err(|e| format!("{}: {e}", dev.display()))
}

/// The disks as a console table, partitions indented under their disk.
pub fn render(disks: &[Disk]) -> String {
    if disks.is_empty() {
        return "no disks found\n".into();
    }
    let mut out = format!(
        "{:<8} {:>10} {:>14}  {:<9} {:<4} {:<9} {:<18} {}\n",
        "DISK", "SIZE", "BYTES", "SECTORS", "ROT", "REMOVABLE", "MODEL", "SERIAL"
    );
    for d in disks {
        out.push_str(&format!(
            "{:<8} {:>10} {:>14}  {:<9} {:<4} {:<9} {:<18} {}\n",
            d.name,
            human_bytes(d.bytes),
            d.bytes,
            format!("{}/{}", d.logical, d.physical),
            if d.rotational { "yes" } else { "no" },
            if d.removable { "yes" } else { "no" },
            d.model,
            d.serial
        ));
        match &d.table {
            Ok(None) => match &d.fs {
                Some(fs) => out.push_str(&format!("  no partition table, whole disk: {fs}\n")),
                None => out.push_str("  no partition table, no filesystem\n"),
            },
            Err(e) => out.push_str(&format!("  partition table unreadable: {e}\n")),
            Ok(Some(t)) => {
                let kind = match t.kind {
                    TableKind::Mbr => "mbr",
                    TableKind::Gpt => "gpt",
                };
                out.push_str(&format!("  table {kind} id {} ({} partitions)\n", t.disk_id, t.partitions.len()));
                // `parts` has one entry per partition of the table.
                for (p, info) in t.partitions.iter().zip(&d.parts) {
                    let fs = info.fs.as_ref().map_or_else(|| "-".to_owned(), |f| f.to_string());
                    let line = format!(
                        "  {:<10} start {:>10} {:>10} {:>14}  {:<22} {:<24} {}{}",
                        info.name,
                        p.start_lba,
                        human_bytes(info.bytes),
                        info.bytes,
                        p.type_name,
                        fs,
                        if p.name.is_empty() { String::new() } else { format!("{:?} ", p.name) },
                        if p.bootable { "boot" } else { "" }
                    );
                    out.push_str(line.trim_end());
                    out.push('\n');
                }
                for w in &t.warnings {
                    out.push_str(&format!("  warning: {w}\n"));
                }
            }
        }
    }
    out
}

/// What a disk holds, one short line per partition, for a person choosing
/// which disk to back up or overwrite:
///
/// ```text
/// vda1  100.0 MiB  ext4  "root"
/// vda2  50.0 MiB  vfat  "EFI"
/// vda3  16.0 MiB  no filesystem (Microsoft reserved)
/// ```
///
/// or a single line for a disk without partitions (`no partition table,
/// ext4 "data"`, `no partition table or filesystem found`).
pub fn contents(d: &Disk) -> Vec<String> {
    let fs_text = |fs: &Filesystem| {
        if fs.label.is_empty() {
            fs.kind.to_owned()
        } else {
            format!("{}  {:?}", fs.kind, fs.label)
        }
    };
    if d.bytes == 0 {
        return vec!["no medium (0 bytes)".into()];
    }
    match &d.table {
        Err(e) => vec![format!("partition table unreadable: {e}")],
        Ok(None) => vec![match &d.fs {
            Some(fs) => format!("no partition table, {fs}"),
            None => "no partition table or filesystem found".into(),
        }],
        Ok(Some(t)) if t.partitions.is_empty() => {
            let kind = match t.kind {
                TableKind::Mbr => "MBR",
                TableKind::Gpt => "GPT",
            };
            vec![format!("empty {kind} partition table (no partitions)")]
        }
        Ok(Some(_)) => d
            .parts
            .iter()
            .map(|p| {
                let what = match &p.fs {
                    Some(fs) => fs_text(fs),
                    None if p.type_name == "Extended" => "extended partition (holds the logical ones)".into(),
                    None => format!("no filesystem ({})", p.type_name),
                };
                format!("{}  {}  {}", p.name, human_bytes(p.bytes), what)
            })
            .collect(),
    }
}

/// The disk a backup or restore works on: `auto` is the first
/// non-removable disk with a size (sorted by name, so `sda` before `sdb`,
/// `vda` before `vdb`); otherwise the disk of that name.
pub fn pick<'a>(disks: &'a [Disk], want: &str) -> Result<&'a Disk, String> {
    let names = || disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ");
    if want == "auto" {
        return disks.iter().find(|d| !d.removable && d.bytes > 0).ok_or_else(|| {
            format!("no fixed disk found (have: {})", if disks.is_empty() { "none".into() } else { names() })
        });
    }
    disks.iter().find(|d| d.name == want).ok_or_else(|| format!("disk {want} not found (have: {})", names()))
}

/// As [`pick`], never the disk `except` (the one holding the drive a
/// local job writes to or reads from): `auto` skips it, naming it is
/// refused.
pub fn pick_except<'a>(disks: &'a [Disk], want: &str, except: &str) -> Result<&'a Disk, String> {
    if want == except {
        return Err(format!(
            "disk {want} holds the backup drive itself: a disk is never backed up onto, or restored from, itself"
        ));
    }
    if want == "auto" {
        let others: Vec<Disk> = disks.iter().filter(|d| d.name != except).cloned().collect();
        let name = pick(&others, "auto")?.name.clone();
        return pick(disks, &name);
    }
    pick(disks, want)
}

/// Linux partition device name: `sda` + 1 = `sda1`, `nvme0n1` + 1 = `nvme0n1p1`.
pub fn partition_name(disk: &str, number: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn disk(root: &Path, name: &str, files: &[(&str, &str)]) {
        let d = root.join("sys/block").join(name);
        for (f, v) in files {
            let p = d.join(f);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, format!("{v}\n")).expect("write");
        }
    }

    #[test]
    fn probes_fixture_tree() {
        let tmp = TempDir::new("disks");
        let root = tmp.path();
        disk(
            root,
            "sda",
            &[
                ("size", "2048"),
                ("queue/logical_block_size", "512"),
                ("queue/physical_block_size", "4096"),
                ("queue/rotational", "1"),
                ("removable", "0"),
                ("device/model", "QEMU HARDDISK   "),
                ("device/serial", "SN123"),
            ],
        );
        disk(root, "loop0", &[("size", "100")]);
        disk(root, "vda", &[("size", "8192"), ("serial", "bv-1"), ("queue/rotational", "0")]);
        // An ATA disk: the serial is in VPD page 0x80.
        disk(root, "sdb", &[("size", "8"), ("device/wwid", "t10.ATA     QEMU HARDDISK    X")]);
        fs::write(root.join("sys/block/sdb/device/vpd_pg80"), b"\x00\x80\x00\x0cBVMBR0002   ").expect("write");
        // vda's device node: an MBR with ext4, FAT, an empty partition and
        // an extended one holding a swap area.
        fs::create_dir_all(root.join("dev")).expect("mkdir");
        let vda = root.join("dev/vda");
        fs::File::create(&vda).and_then(|f| f.set_len(8192 * 512)).expect("image");
        let mut mbr = vec![0u8; 512];
        mbr_entry(&mut mbr, 0, 0x83, 2048, 2048);
        mbr_entry(&mut mbr, 1, 0xef, 4096, 2048);
        mbr[446 + 16] = 0x80;
        mbr_entry(&mut mbr, 2, 0x83, 6144, 1024);
        mbr_entry(&mut mbr, 3, 0x05, 7168, 1024);
        write_at(&vda, 0, &mbr);
        let mut ebr = vec![0u8; 512];
        mbr_entry(&mut ebr, 0, 0x82, 1, 1023);
        write_at(&vda, 7168 * 512, &ebr);
        write_at(&vda, 2048 * 512, &ext4_sb("root"));
        write_at(&vda, 4096 * 512, &fat12(2048, b"EFI        "));
        write_at(&vda, 7169 * 512, &swap_header("swp"));
        // vdb: ext4 on the bare disk; vdc: nothing at all; vdd: a stick
        // formatted without partitions, its boot code looking like MBR
        // entries.
        disk(root, "vdb", &[("size", "2048")]);
        fs::write(root.join("dev/vdb"), [ext4_sb("data"), vec![0u8; 1024 * 512 - 4096]].concat()).expect("write");
        disk(root, "vdc", &[("size", "2048")]);
        fs::write(root.join("dev/vdc"), vec![0u8; 2048 * 512]).expect("write");
        disk(root, "vdd", &[("size", "2048"), ("removable", "1")]);
        let mut stick = fat12(2048, b"STICK      ");
        stick[446..510].fill(0x41);
        fs::write(root.join("dev/vdd"), stick).expect("write");

        let disks = probe(root);
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["sda", "sdb", "vda", "vdb", "vdc", "vdd"]);
        let sda = &disks[0];
        assert_eq!((sda.bytes, sda.logical, sda.physical), (1_048_576, 512, 4096));
        assert_eq!((sda.model.as_str(), sda.serial.as_str()), ("QEMU HARDDISK", "SN123"));
        assert!(sda.rotational && !sda.removable);
        // No device node: an error naming the path, not a panic.
        assert!(sda.table.as_ref().unwrap_err().contains("dev/sda"));
        assert!(sda.parts.is_empty() && sda.fs.is_none());
        assert_eq!(disks[1].serial, "BVMBR0002");
        let vda = &disks[2];
        assert_eq!(vda.serial, "bv-1");
        let t = vda.table.as_ref().expect("read").as_ref().expect("table");
        assert_eq!(t.partitions.len(), 5);
        assert_eq!((t.partitions[0].start_lba, t.partitions[0].sectors), (2048, 2048));
        assert_eq!(vda.parts.len(), 5);
        let root_fs =
            Filesystem { kind: "ext4", label: "root".into(), uuid: "5eed5eed-0000-4000-8000-000000000001".into() };
        assert_eq!(
            vda.parts[0],
            PartInfo {
                name: "vda1".into(),
                number: 1,
                start: 1 << 20,
                bytes: 1 << 20,
                type_name: "Linux",
                part_label: String::new(),
                fs: Some(root_fs)
            }
        );
        assert_eq!(vda.parts[1].fs.as_ref().map(|f| (f.kind, f.uuid.as_str())), Some(("vfat", "1234-ABCD")));
        assert_eq!(vda.fs, None, "a partitioned disk has no whole-disk filesystem");
        assert_eq!(
            contents(vda),
            [
                r#"vda1  1.0 MiB  ext4  "root""#,
                r#"vda2  1.0 MiB  vfat  "EFI""#,
                "vda3  512.0 KiB  no filesystem (Linux)",
                "vda4  512.0 KiB  extended partition (holds the logical ones)",
                r#"vda5  511.5 KiB  swap  "swp""#,
            ]
        );
        assert_eq!(contents(&disks[3]), [r#"no partition table, ext4 "data""#]);
        assert_eq!(contents(&disks[4]), ["no partition table or filesystem found"]);
        let vdd = &disks[5];
        assert!(matches!(vdd.table, Ok(None)), "a FAT boot sector is not an MBR: {:?}", vdd.table);
        assert_eq!(contents(vdd), [r#"no partition table, vfat "STICK""#]);
        assert!(contents(sda)[0].starts_with("partition table unreadable: opening"), "{:?}", contents(sda));
        let text = render(&disks);
        assert!(text.contains("vda1"), "{text}");
        assert!(text.contains("1048576"), "{text}");
        let line = |name: &str| text.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_default().to_owned();
        assert!(line("vda1 ").contains(r#"ext4 "root""#), "{text}");
        assert!(line("vda2 ").contains(r#"vfat "EFI""#) && line("vda2 ").ends_with("boot"), "{text}");
        assert!(text.contains(r#"no partition table, whole disk: ext4 "data""#), "{text}");
    }

    fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
        let f = fs::OpenOptions::new().write(true).open(path).expect("open");
        f.write_all_at(bytes, offset).expect("write");
    }

    fn mbr_entry(sector: &mut [u8], i: usize, kind: u8, start: u32, sectors: u32) {
        let e = &mut sector[446 + 16 * i..446 + 16 * (i + 1)];
        e[4] = kind;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
        sector[510] = 0x55;
        sector[511] = 0xAA;
    }

    /// The first 4 KiB of an ext4 filesystem: a journal and extents.
    fn ext4_sb(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        let sb = &mut b[1024..2048];
        sb[0x38..0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        sb[0x5c..0x60].copy_from_slice(&0x4u32.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&0x42u32.to_le_bytes());
        sb[0x68..0x78].copy_from_slice(&[0x5e, 0xed, 0x5e, 0xed, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1]);
        sb[0x78..0x78 + label.len()].copy_from_slice(label.as_bytes());
        b
    }

    /// A FAT12 filesystem of `sectors` sectors, labelled in the boot
    /// sector and in the root directory.
    fn fat12(sectors: u16, label: &[u8; 11]) -> Vec<u8> {
        let mut b = vec![0u8; usize::from(sectors) * 512];
        b[0..11].copy_from_slice(b"\xeb\x3c\x90mkfs.fat");
        b[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
        b[0x0d] = 4; // sectors per cluster
        b[0x0e..0x10].copy_from_slice(&1u16.to_le_bytes()); // reserved
        b[0x10] = 2; // FATs
        b[0x11..0x13].copy_from_slice(&512u16.to_le_bytes()); // root entries
        b[0x13..0x15].copy_from_slice(&sectors.to_le_bytes());
        b[0x15] = 0xf8;
        b[0x16..0x18].copy_from_slice(&2u16.to_le_bytes()); // sectors per FAT
        b[0x26] = 0x29;
        b[0x27..0x2b].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
        b[0x2b..0x36].copy_from_slice(label);
        b[0x36..0x3e].copy_from_slice(b"FAT12   ");
        b[510] = 0x55;
        b[511] = 0xAA;
        let root_dir = (1 + 2 * 2) * 512;
        b[root_dir..root_dir + 11].copy_from_slice(label);
        b[root_dir + 11] = 0x08;
        b
    }

    /// The first page of a Linux swap area, version 1.
    fn swap_header(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[1024..1028].copy_from_slice(&1u32.to_le_bytes());
        b[1028..1032].copy_from_slice(&100u32.to_le_bytes());
        b[1036..1052].copy_from_slice(&[0x11; 16]);
        b[1052..1052 + label.len()].copy_from_slice(label.as_bytes());
        b[4086..4096].copy_from_slice(b"SWAPSPACE2");
        b
    }

    #[test]
    fn picks_the_first_fixed_disk_or_the_named_one() {
        let d = crate::testutil::bare_disk;
        let disks =
            vec![d("sda", 1 << 30, true), d("sdb", 0, false), d("sdc", 1 << 30, false), d("vda", 1 << 20, false)];
        assert_eq!(pick(&disks, "auto").unwrap().name, "sdc");
        assert_eq!(pick(&disks, "vda").unwrap().name, "vda");
        assert_eq!(pick(&disks, "nvme0n1").unwrap_err(), "disk nvme0n1 not found (have: sda, sdb, sdc, vda)");
        assert_eq!(pick(&disks[..2], "auto").unwrap_err(), "no fixed disk found (have: sda, sdb)");
        assert_eq!(pick(&[], "auto").unwrap_err(), "no fixed disk found (have: none)");
        // A local drive on a second fixed disk: auto passes it by, naming it is refused.
        assert_eq!(pick_except(&disks, "auto", "sdc").unwrap().name, "vda");
        assert_eq!(pick_except(&disks, "auto", "sda").unwrap().name, "sdc");
        assert!(pick_except(&disks, "sdc", "sdc").unwrap_err().contains("holds the backup drive itself"));
        assert_eq!(pick_except(&disks, "vda", "sdc").unwrap().name, "vda");
        assert!(pick_except(&disks[..3], "auto", "sdc").unwrap_err().starts_with("no fixed disk found"));
    }

    #[test]
    fn partition_names() {
        assert_eq!(partition_name("sda", 1), "sda1");
        assert_eq!(partition_name("nvme0n1", 2), "nvme0n1p2");
        assert_eq!(partition_name("mmcblk0", 5), "mmcblk0p5");
    }
}
