//! Block device discovery: which disks this PC has and how they are laid out.
//!
//! Reads `ROOT/sys/block/*` for the facts and the first sectors of
//! `ROOT/dev/NAME` for the partition table (parsed by the pure
//! `bootvault_common::partition`). Only reads; never writes a device.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

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
    let table = if bytes == 0 { Ok(None) } else { read_table(&root.join("dev").join(name), logical, bytes) };
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
    }
}

/// Reads and parses the partition table of a device or image file.
pub fn read_table(dev: &Path, sector_size: u32, bytes: u64) -> Result<Option<PartitionTable>, String> {
    let f = File::open(dev).map_err(|e| format!("opening {}: {e}", dev.display()))?;
    let mut read = |offset: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).map_err(|e| format!("reading {} at {offset}: {e}", dev.display()))?;
        Ok(buf)
    };
    partition::parse(&mut read, sector_size, bytes).map_err(|e| format!("{}: {e}", dev.display()))
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
            Ok(None) => out.push_str("  no partition table\n"),
            Err(e) => out.push_str(&format!("  partition table unreadable: {e}\n")),
            Ok(Some(t)) => {
                let kind = match t.kind {
                    TableKind::Mbr => "mbr",
                    TableKind::Gpt => "gpt",
                };
                out.push_str(&format!("  table {kind} id {} ({} partitions)\n", t.disk_id, t.partitions.len()));
                for p in &t.partitions {
                    let bytes = p.sectors.saturating_mul(u64::from(t.sector_size));
                    let part = partition_name(&d.name, p.number);
                    out.push_str(&format!(
                        "  {:<10} start {:>10} {:>10} {:>14}  {:<22} {}{}\n",
                        part,
                        p.start_lba,
                        human_bytes(bytes),
                        bytes,
                        p.type_name,
                        if p.name.is_empty() { String::new() } else { format!("{:?} ", p.name) },
                        if p.bootable { "boot" } else { "" }
                    ));
                }
                for w in &t.warnings {
                    out.push_str(&format!("  warning: {w}\n"));
                }
            }
        }
    }
    out
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
        disk(root, "vda", &[("size", "8"), ("serial", "bv-1"), ("queue/rotational", "0")]);
        // An ATA disk: the serial is in VPD page 0x80.
        disk(root, "sdb", &[("size", "8"), ("device/wwid", "t10.ATA     QEMU HARDDISK    X")]);
        fs::write(root.join("sys/block/sdb/device/vpd_pg80"), b"\x00\x80\x00\x0cBVMBR0002   ").expect("write");
        // vda's device node: an MBR with one partition.
        fs::create_dir_all(root.join("dev")).expect("mkdir");
        let mut img = vec![0u8; 4096];
        img[446 + 4] = 0x83;
        img[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        img[446 + 12..446 + 16].copy_from_slice(&7u32.to_le_bytes());
        img[510] = 0x55;
        img[511] = 0xAA;
        fs::write(root.join("dev/vda"), &img).expect("write");

        let disks = probe(root);
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["sda", "sdb", "vda"]);
        let sda = &disks[0];
        assert_eq!((sda.bytes, sda.logical, sda.physical), (1_048_576, 512, 4096));
        assert_eq!((sda.model.as_str(), sda.serial.as_str()), ("QEMU HARDDISK", "SN123"));
        assert!(sda.rotational && !sda.removable);
        // No device node: an error naming the path, not a panic.
        assert!(sda.table.as_ref().unwrap_err().contains("dev/sda"));
        assert_eq!(disks[1].serial, "BVMBR0002");
        let vda = &disks[2];
        assert_eq!(vda.serial, "bv-1");
        let t = vda.table.as_ref().expect("read").as_ref().expect("table");
        assert_eq!(t.partitions.len(), 1);
        assert_eq!((t.partitions[0].start_lba, t.partitions[0].sectors), (1, 7));
        let text = render(&disks);
        assert!(text.contains("vda1"), "{text}");
        assert!(text.contains("1048576"), "{text}");
    }

    #[test]
    fn picks_the_first_fixed_disk_or_the_named_one() {
        let d = |name: &str, bytes: u64, removable: bool| Disk {
            name: name.into(),
            bytes,
            logical: 512,
            physical: 512,
            model: "-".into(),
            serial: "-".into(),
            removable,
            rotational: false,
            table: Ok(None),
        };
        let disks =
            vec![d("sda", 1 << 30, true), d("sdb", 0, false), d("sdc", 1 << 30, false), d("vda", 1 << 20, false)];
        assert_eq!(pick(&disks, "auto").unwrap().name, "sdc");
        assert_eq!(pick(&disks, "vda").unwrap().name, "vda");
        assert_eq!(pick(&disks, "nvme0n1").unwrap_err(), "disk nvme0n1 not found (have: sda, sdb, sdc, vda)");
        assert_eq!(pick(&disks[..2], "auto").unwrap_err(), "no fixed disk found (have: sda, sdb)");
        assert_eq!(pick(&[], "auto").unwrap_err(), "no fixed disk found (have: none)");
    }

    #[test]
    fn partition_names() {
        assert_eq!(partition_name("sda", 1), "sda1");
        assert_eq!(partition_name("nvme0n1", 2), "nvme0n1p2");
        assert_eq!(partition_name("mmcblk0", 5), "mmcblk0p5");
    }
}
