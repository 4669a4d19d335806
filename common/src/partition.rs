//! MBR and GPT partition tables, parsed from bytes.
//!
//! The parser never opens a device: [`parse`] asks a `read(offset, len)`
//! callback for what it needs (the MBR, the GPT header and entries, the
//! backup GPT, each EBR of an extended partition), so tests hand it a
//! `Vec<u8>` and the init hands it a block device. Every LBA computation is
//! checked; any input gives a value or an error naming the offset, never a
//! panic.

use std::fmt;

use nom::bytes::complete::take;
use nom::number::complete::{le_u32, le_u64, le_u8};
use nom::{IResult, Parser};

use crate::units::human_bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Mbr,
    Gpt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux numbers them (MBR logicals from 5).
    pub number: u32,
    pub start_lba: u64,
    pub sectors: u64,
    /// MBR: `0x83`; GPT: the type GUID, lower-case.
    pub type_id: String,
    pub type_name: &'static str,
    /// GPT partition name; empty for MBR.
    pub name: String,
    pub uuid: Option<String>,
    pub bootable: bool,
    pub logical: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub disk_id: String,
    pub sector_size: u32,
    pub partitions: Vec<Partition>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionError {
    /// The read callback failed.
    Read { offset: u64, len: usize, message: String },
    /// A structure at `offset` is not what it must be.
    BadHeader { offset: u64, what: String },
}

impl fmt::Display for PartitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionError::Read { offset, len, message } => {
                write!(f, "reading {len} bytes at offset {offset}: {message}")
            }
            PartitionError::BadHeader { offset, what } => write!(f, "at offset {offset}: {what}"),
        }
    }
}

impl std::error::Error for PartitionError {}

fn bad(offset: u64, what: impl Into<String>) -> PartitionError {
    PartitionError::BadHeader { offset, what: what.into() }
}

/// CRC-32 (IEEE 802.3, reflected, as GPT uses it).
pub fn crc32(bytes: &[u8]) -> u32 {
    !crc32_update(!0, bytes)
}

/// The reflected IEEE CRC-32 register after `bytes`, from `seed`, with no
/// final inversion: [`crc32`] is `!crc32_update(!0, ..)`; LVM2 labels use
/// their own seed.
pub fn crc32_update(seed: u32, bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = seed;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

// ---------------------------------------------------------------------------
// MBR

/// One of the four 16-byte MBR/EBR entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrEntry {
    pub status: u8,
    pub kind: u8,
    pub start_lba: u32,
    pub sectors: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mbr {
    pub disk_signature: u32,
    pub entries: [MbrEntry; 4],
}

fn mbr_entry(i: &[u8]) -> IResult<&[u8], MbrEntry> {
    let (i, (status, _chs1, kind, _chs2, start_lba, sectors)) =
        (le_u8, take(3usize), le_u8, take(3usize), le_u32, le_u32).parse(i)?;
    Ok((i, MbrEntry { status, kind, start_lba, sectors }))
}

fn mbr_body(i: &[u8]) -> IResult<&[u8], Mbr> {
    let (i, (_code, disk_signature, _reserved)) = (take(440usize), le_u32, take(2usize)).parse(i)?;
    let (i, (e0, e1, e2, e3)) = (mbr_entry, mbr_entry, mbr_entry, mbr_entry).parse(i)?;
    Ok((i, Mbr { disk_signature, entries: [e0, e1, e2, e3] }))
}

fn has_signature(sector: &[u8]) -> bool {
    sector.get(510..512) == Some(&[0x55, 0xAA][..])
}

/// Parses a 512-byte MBR (or EBR) sector. Requires the 0x55AA signature.
pub fn parse_mbr(sector: &[u8]) -> Result<Mbr, PartitionError> {
    if !has_signature(sector) {
        return Err(bad(510, "no 0x55AA boot signature"));
    }
    mbr_body(sector).map(|(_, m)| m).map_err(|_| bad(0, "MBR shorter than 512 bytes"))
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

fn mbr_type_name(kind: u8) -> &'static str {
    match kind {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0E => "FAT16",
        0x05 | 0x0F | 0x85 => "Extended",
        0x07 => "NTFS/exFAT",
        0x0B => "FAT32",
        0x0C => "FAT32 (LBA)",
        0x11 | 0x14 | 0x16 | 0x1B | 0x1C | 0x1E => "Hidden FAT",
        0x27 => "Windows recovery",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8E => "Linux LVM",
        0xA5 => "FreeBSD",
        0xA6 => "OpenBSD",
        0xA8 => "Darwin UFS",
        0xAF => "HFS+",
        0xEE => "GPT protective",
        0xEF => "EFI System",
        0xFD => "Linux RAID",
        _ => "unknown",
    }
}

fn mbr_partition(number: u32, start_lba: u64, e: &MbrEntry, logical: bool) -> Partition {
    Partition {
        number,
        start_lba,
        sectors: u64::from(e.sectors),
        type_id: format!("0x{:02x}", e.kind),
        type_name: mbr_type_name(e.kind),
        name: String::new(),
        uuid: None,
        bootable: e.status == 0x80,
        logical,
    }
}

/// Most logical partitions we follow (Linux allows up to 256 minors per
/// disk; real tables have a handful).
const MAX_LOGICAL: u32 = 128;

type ReadFn<'a> = dyn FnMut(u64, usize) -> Result<Vec<u8>, String> + 'a;

fn read_at(read: &mut ReadFn<'_>, offset: u64, len: usize) -> Result<Vec<u8>, PartitionError> {
    let bytes = read(offset, len).map_err(|message| PartitionError::Read { offset, len, message })?;
    if bytes.len() < len {
        return Err(PartitionError::Read { offset, len, message: format!("short read ({} bytes)", bytes.len()) });
    }
    Ok(bytes)
}

fn lba_offset(lba: u64, sector_size: u32) -> Option<u64> {
    lba.checked_mul(u64::from(sector_size))
}

/// Follows the EBR chain of the extended partition at `ext_start`.
fn logicals(
    read: &mut ReadFn<'_>,
    ext_start: u64,
    sector_size: u32,
    t: &mut PartitionTable,
) -> Result<(), PartitionError> {
    let mut ebr_lba = ext_start;
    let mut seen = Vec::new();
    let mut number = 5;
    while number < 5 + MAX_LOGICAL {
        if seen.contains(&ebr_lba) {
            t.warnings.push(format!("extended partition chain loops at LBA {ebr_lba}; stopped"));
            return Ok(());
        }
        seen.push(ebr_lba);
        let off = lba_offset(ebr_lba, sector_size).ok_or_else(|| bad(0, format!("EBR LBA {ebr_lba} overflows")))?;
        let sector = read_at(read, off, 512)?;
        let ebr = match parse_mbr(&sector) {
            Ok(e) => e,
            Err(_) => {
                t.warnings.push(format!("no valid EBR at LBA {ebr_lba} (offset {off}); logical partitions stop here"));
                return Ok(());
            }
        };
        let [first, link, ..] = ebr.entries;
        if first.kind != 0 && first.sectors != 0 {
            let start = ebr_lba
                .checked_add(u64::from(first.start_lba))
                .ok_or_else(|| bad(off, "logical partition start overflows"))?;
            t.partitions.push(mbr_partition(number, start, &first, true));
            number += 1;
        }
        if link.kind == 0 || link.sectors == 0 || !is_extended(link.kind) {
            return Ok(());
        }
        ebr_lba = ext_start.checked_add(u64::from(link.start_lba)).ok_or_else(|| bad(off, "EBR link overflows"))?;
    }
    t.warnings.push(format!("more than {MAX_LOGICAL} logical partitions; stopped"));
    Ok(())
}

// ---------------------------------------------------------------------------
// GPT

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptHeader {
    pub lba: u64,
    pub header_size: u32,
    pub header_crc: u32,
    pub current_lba: u64,
    pub alternate_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub disk_guid: [u8; 16],
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

/// Text form of an on-disk (mixed-endian) GUID.
pub fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        g[13],
        g[14],
        g[15]
    )
}

fn guid(i: &[u8]) -> IResult<&[u8], [u8; 16]> {
    let (i, b) = take(16usize).parse(i)?;
    let mut g = [0u8; 16];
    g.copy_from_slice(b);
    Ok((i, g))
}

/// Largest entry array we read (the spec's minimum is 16 KiB; 1 MiB is
/// far past any real table).
const MAX_ENTRIES_BYTES: u64 = 1 << 20;

/// Parses and validates a GPT header read from `lba`.
pub fn parse_gpt_header(bytes: &[u8], lba: u64, sector_size: u32) -> Result<GptHeader, PartitionError> {
    let off = lba.saturating_mul(u64::from(sector_size));
    let fields = |i| -> IResult<&[u8], GptHeader> {
        let (i, (_sig, _rev, header_size, header_crc, _res)) =
            (take(8usize), le_u32, le_u32, le_u32, le_u32).parse(i)?;
        let (i, (current_lba, alternate_lba, first_usable, last_usable)) = (le_u64, le_u64, le_u64, le_u64).parse(i)?;
        let (i, (disk_guid, entries_lba, num_entries, entry_size, entries_crc)) =
            (guid, le_u64, le_u32, le_u32, le_u32).parse(i)?;
        Ok((
            i,
            GptHeader {
                lba,
                header_size,
                header_crc,
                current_lba,
                alternate_lba,
                first_usable,
                last_usable,
                disk_guid,
                entries_lba,
                num_entries,
                entry_size,
                entries_crc,
            },
        ))
    };
    if bytes.get(..8) != Some(b"EFI PART") {
        return Err(bad(off, "no GPT signature \"EFI PART\""));
    }
    let (_, h) = fields(bytes).map_err(|_| bad(off, "GPT header truncated"))?;
    let hs = h.header_size as usize;
    if hs < 92 || hs > bytes.len() || hs > sector_size as usize {
        return Err(bad(off, format!("GPT header size {} out of range", h.header_size)));
    }
    let mut copy = bytes[..hs].to_vec();
    copy[16..20].fill(0);
    let crc = crc32(&copy);
    if crc != h.header_crc {
        return Err(bad(off, format!("GPT header CRC mismatch (stored {:08x}, computed {crc:08x})", h.header_crc)));
    }
    if h.current_lba != lba {
        return Err(bad(off, format!("GPT header says it is at LBA {}, read from LBA {lba}", h.current_lba)));
    }
    if h.entry_size < 128 || h.entry_size % 8 != 0 {
        return Err(bad(off, format!("GPT entry size {} invalid", h.entry_size)));
    }
    if u64::from(h.num_entries) * u64::from(h.entry_size) > MAX_ENTRIES_BYTES {
        return Err(bad(off, format!("GPT claims {} entries of {} bytes; too many", h.num_entries, h.entry_size)));
    }
    Ok(h)
}

fn gpt_type_name(guid: &str) -> &'static str {
    match guid {
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "EFI System",
        "21686148-6449-6e6f-744e-656564454649" => "BIOS boot",
        "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux filesystem",
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "Linux swap",
        "e6d6d379-f507-44c2-a23c-238f2a3df928" => "Linux LVM",
        "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" => "Linux root (x86-64)",
        "bc13c2ff-59e6-4262-a352-b275fd6f7172" => "Linux extended boot",
        "933ac7e1-2eb4-4f13-b844-0e14e2aef915" => "Linux home",
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "Microsoft basic data",
        "e3c9e316-0b5c-4db8-817d-f92df00215ae" => "Microsoft reserved",
        "de94bba4-06d1-4d40-a16a-bfd50179d6ac" => "Windows recovery",
        "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3" => "Windows LDM metadata",
        "af9b60a0-1431-4f62-bc68-3311714a69ad" => "Windows LDM data",
        "48465300-0000-11aa-aa11-00306543ecac" => "Apple HFS+",
        "7c3457ef-0000-11aa-aa11-00306543ecac" => "Apple APFS",
        "516e7cb4-6ecf-11d6-8ff8-00022d09712b" => "FreeBSD",
        _ => "unknown",
    }
}

/// Parses the entries array of `h` (bytes = `num_entries * entry_size`),
/// after checking its CRC. Empty entries (type all zeros) are skipped.
pub fn parse_gpt_entries(bytes: &[u8], h: &GptHeader, sector_size: u32) -> Result<Vec<Partition>, PartitionError> {
    let off = h.entries_lba.saturating_mul(u64::from(sector_size));
    let len = (h.num_entries as usize).saturating_mul(h.entry_size as usize);
    let array = bytes.get(..len).ok_or_else(|| bad(off, "GPT entry array truncated"))?;
    let crc = crc32(array);
    if crc != h.entries_crc {
        return Err(bad(
            off,
            format!("GPT entry array CRC mismatch (stored {:08x}, computed {crc:08x})", h.entries_crc),
        ));
    }
    /// Type GUID, unique GUID, first LBA, last LBA, attributes, name.
    type RawEntry<'a> = ([u8; 16], [u8; 16], u64, u64, u64, &'a [u8]);
    let mut out = Vec::new();
    for (i, e) in array.chunks_exact(h.entry_size as usize).enumerate() {
        let entry =
            |i| -> IResult<&[u8], RawEntry<'_>> { (guid, guid, le_u64, le_u64, le_u64, take(72usize)).parse(i) };
        let Ok((_, (type_guid, uuid, first, last, attrs, name))) = entry(e) else {
            return Err(bad(off, format!("GPT entry {i} truncated")));
        };
        if type_guid == [0u8; 16] {
            continue;
        }
        let type_id = guid_string(&type_guid);
        let units: Vec<u16> =
            name.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
        let sectors = last.checked_sub(first).and_then(|n| n.checked_add(1)).unwrap_or(0);
        out.push(Partition {
            number: i as u32 + 1,
            start_lba: first,
            sectors,
            type_name: gpt_type_name(&type_id),
            type_id,
            name: String::from_utf16_lossy(&units),
            uuid: Some(guid_string(&uuid)),
            bootable: attrs & (1 << 2) != 0,
            logical: false,
        });
    }
    Ok(out)
}

fn read_gpt(read: &mut ReadFn<'_>, lba: u64, sector_size: u32) -> Result<(GptHeader, Vec<Partition>), PartitionError> {
    let off = lba_offset(lba, sector_size).ok_or_else(|| bad(0, format!("GPT header LBA {lba} overflows")))?;
    let sector = read_at(read, off, sector_size as usize)?;
    let h = parse_gpt_header(&sector, lba, sector_size)?;
    let len = h.num_entries as usize * h.entry_size as usize;
    let eoff = lba_offset(h.entries_lba, sector_size)
        .ok_or_else(|| bad(off, format!("GPT entries LBA {} overflows", h.entries_lba)))?;
    let entries = read_at(read, eoff, len)?;
    let parts = parse_gpt_entries(&entries, &h, sector_size)?;
    Ok((h, parts))
}

// ---------------------------------------------------------------------------

/// Reads and parses the partition table of a disk of `disk_bytes` bytes
/// with `sector_size`-byte logical sectors. `Ok(None)`: no table.
pub fn parse(
    read: &mut ReadFn<'_>,
    sector_size: u32,
    disk_bytes: u64,
) -> Result<Option<PartitionTable>, PartitionError> {
    if !(512..=65536).contains(&sector_size) || !sector_size.is_power_of_two() {
        return Err(bad(0, format!("sector size {sector_size} is not a power of two in 512..65536")));
    }
    let sector = read_at(read, 0, 512)?;
    if !has_signature(&sector) {
        return Ok(None);
    }
    let mbr = parse_mbr(&sector)?;
    let disk_sectors = disk_bytes / u64::from(sector_size);
    let protective = mbr.entries.iter().any(|e| e.kind == 0xEE);
    let mut t = if protective {
        let mut warnings = Vec::new();
        if mbr.entries.iter().any(|e| e.kind != 0xEE && e.kind != 0) {
            warnings.push("hybrid MBR: the MBR lists partitions beside the GPT; the GPT is used".to_owned());
        }
        let (h, partitions) = match read_gpt(read, 1, sector_size) {
            Ok(r) => r,
            Err(primary) => {
                let backup_lba = disk_sectors.saturating_sub(1);
                match read_gpt(read, backup_lba, sector_size) {
                    Ok(r) => {
                        warnings.push(format!("primary GPT unusable ({primary}); used the backup at LBA {backup_lba}"));
                        r
                    }
                    Err(backup) => {
                        return Err(bad(
                            sector_size as u64,
                            format!("no usable GPT: primary: {primary}; backup: {backup}"),
                        ))
                    }
                }
            }
        };
        if h.lba == 1 && h.alternate_lba != disk_sectors.saturating_sub(1) {
            warnings.push(format!(
                "backup GPT header expected at LBA {}, header says {} (disk resized?)",
                disk_sectors.saturating_sub(1),
                h.alternate_lba
            ));
        }
        PartitionTable { kind: TableKind::Gpt, disk_id: guid_string(&h.disk_guid), sector_size, partitions, warnings }
    } else {
        let mut t = PartitionTable {
            kind: TableKind::Mbr,
            disk_id: format!("0x{:08x}", mbr.disk_signature),
            sector_size,
            partitions: Vec::new(),
            warnings: Vec::new(),
        };
        let mut extended = None;
        for (i, e) in mbr.entries.iter().enumerate() {
            if e.kind == 0 || e.sectors == 0 {
                continue;
            }
            t.partitions.push(mbr_partition(i as u32 + 1, u64::from(e.start_lba), e, false));
            if is_extended(e.kind) {
                if extended.is_some() {
                    t.warnings.push(format!("more than one extended partition; partition {} ignored", i + 1));
                } else {
                    extended = Some(u64::from(e.start_lba));
                }
            }
        }
        if let Some(ext) = extended {
            logicals(read, ext, sector_size, &mut t)?;
        }
        t
    };
    check_bounds(&mut t, disk_sectors);
    Ok(Some(t))
}

/// Warnings for partitions past the end of the disk or overlapping.
fn check_bounds(t: &mut PartitionTable, disk_sectors: u64) {
    let mut spans: Vec<(u64, u64, u32)> = Vec::new();
    for p in &t.partitions {
        let end = p.start_lba.saturating_add(p.sectors);
        if end > disk_sectors {
            t.warnings.push(format!("partition {} ends past the end of the disk", p.number));
        }
        // The extended container holds its logicals; do not compare those.
        if p.type_name != "Extended" {
            for &(s, e, n) in &spans {
                if p.start_lba < e && s < end {
                    t.warnings.push(format!("partitions {n} and {} overlap", p.number));
                }
            }
            spans.push((p.start_lba, end, p.number));
        }
    }
}

impl fmt::Display for PartitionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            TableKind::Mbr => "mbr",
            TableKind::Gpt => "gpt",
        };
        writeln!(f, "{kind} table, disk id {}, {}-byte sectors", self.disk_id, self.sector_size)?;
        writeln!(f, "{:>3} {:>12} {:>12} {:>10}  {:<22} NAME", "#", "START", "SECTORS", "SIZE", "TYPE")?;
        for p in &self.partitions {
            writeln!(
                f,
                "{:>3} {:>12} {:>12} {:>10}  {:<22} {}{}",
                p.number,
                p.start_lba,
                p.sectors,
                human_bytes(p.sectors.saturating_mul(u64::from(self.sector_size))),
                p.type_name,
                p.name,
                if p.bootable { " (boot)" } else { "" }
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EFI: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    const LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

    fn guid_bytes(s: &str) -> [u8; 16] {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        let b: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex")).collect();
        let mut g = [0u8; 16];
        g[..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
        g[4..6].copy_from_slice(&[b[5], b[4]]);
        g[6..8].copy_from_slice(&[b[7], b[6]]);
        g[8..].copy_from_slice(&b[8..]);
        g
    }

    fn put_entry(sector: &mut [u8], i: usize, status: u8, kind: u8, start: u32, sectors: u32) {
        let o = 446 + 16 * i;
        sector[o] = status;
        sector[o + 4] = kind;
        sector[o + 8..o + 12].copy_from_slice(&start.to_le_bytes());
        sector[o + 12..o + 16].copy_from_slice(&sectors.to_le_bytes());
        sector[510] = 0x55;
        sector[511] = 0xAA;
    }

    fn reader(img: &[u8]) -> impl FnMut(u64, usize) -> Result<Vec<u8>, String> + '_ {
        move |off, len| {
            let s = usize::try_from(off).map_err(|e| e.to_string())?;
            img.get(s..s.checked_add(len).ok_or("overflow")?)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "past the end".to_string())
        }
    }

    fn parse_img(img: &[u8], ss: u32) -> Result<Option<PartitionTable>, PartitionError> {
        parse(&mut reader(img), ss, img.len() as u64)
    }

    /// A GPT disk image of `sectors` sectors with the given
    /// (type, first, last, name) partitions, primary and backup.
    fn gpt_image(ss: usize, sectors: u64, parts: &[(&str, u64, u64, &str)]) -> Vec<u8> {
        let mut img = vec![0u8; ss * sectors as usize];
        put_entry(&mut img, 0, 0, 0xEE, 1, (sectors - 1) as u32);
        let mut entries = vec![0u8; 128 * 128];
        for (i, (ty, first, last, name)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&guid_bytes(ty));
            e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        let entries_crc = crc32(&entries);
        let entry_sectors = (entries.len() / ss) as u64;
        let header = |lba: u64, alt: u64, entries_lba: u64| {
            let mut h = vec![0u8; 92];
            h[..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&lba.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[40..48].copy_from_slice(&(2 + entry_sectors).to_le_bytes());
            h[48..56].copy_from_slice(&(sectors - 2 - entry_sectors).to_le_bytes());
            h[56..72].copy_from_slice(&[0xAB; 16]);
            h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
            let crc = crc32(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        };
        let last = sectors - 1;
        let backup_entries = last - entry_sectors;
        let p = header(1, last, 2);
        img[ss..ss + 92].copy_from_slice(&p);
        img[2 * ss..2 * ss + entries.len()].copy_from_slice(&entries);
        let b = header(last, 1, backup_entries);
        let bo = last as usize * ss;
        img[bo..bo + 92].copy_from_slice(&b);
        let beo = backup_entries as usize * ss;
        img[beo..beo + entries.len()].copy_from_slice(&entries);
        img
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guid_text_is_mixed_endian() {
        assert_eq!(guid_string(&guid_bytes(EFI)), EFI);
        assert_eq!(guid_bytes(EFI)[..4], [0x28, 0x73, 0x2a, 0xc1]);
    }

    #[test]
    fn mbr_two_primaries() {
        let mut img = vec![0u8; 512 * 4096];
        put_entry(&mut img, 0, 0x80, 0x0C, 2048, 1024);
        put_entry(&mut img, 1, 0, 0x83, 3072, 1024);
        img[440..444].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        let t = parse_img(&img, 512).expect("ok").expect("table");
        assert_eq!(t.kind, TableKind::Mbr);
        assert_eq!(t.disk_id, "0xdeadbeef");
        assert_eq!(t.partitions.len(), 2);
        let p = &t.partitions[0];
        assert_eq!((p.number, p.start_lba, p.sectors, p.bootable), (1, 2048, 1024, true));
        assert_eq!((p.type_id.as_str(), p.type_name), ("0x0c", "FAT32 (LBA)"));
        assert_eq!(t.partitions[1].type_name, "Linux");
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn mbr_extended_with_logicals() {
        let mut img = vec![0u8; 512 * 8192];
        put_entry(&mut img, 0, 0, 0x83, 2048, 1024);
        put_entry(&mut img, 1, 0, 0x05, 4096, 4096);
        // EBR 1 at 4096: logical at +2048 (abs 6144), link to EBR at ext+2048.
        let mut ebr1 = vec![0u8; 512];
        put_entry(&mut ebr1, 0, 0, 0x83, 2048, 512);
        put_entry(&mut ebr1, 1, 0, 0x05, 2048 + 512, 1536);
        img[4096 * 512..4097 * 512].copy_from_slice(&ebr1);
        // EBR 2 at 4096+2560 = 6656: logical at +64 (abs 6720).
        let mut ebr2 = vec![0u8; 512];
        put_entry(&mut ebr2, 0, 0, 0x82, 64, 1000);
        img[6656 * 512..6657 * 512].copy_from_slice(&ebr2);
        let t = parse_img(&img, 512).expect("ok").expect("table");
        let got: Vec<(u32, u64, u64, bool)> =
            t.partitions.iter().map(|p| (p.number, p.start_lba, p.sectors, p.logical)).collect();
        assert_eq!(
            got,
            vec![(1, 2048, 1024, false), (2, 4096, 4096, false), (5, 6144, 512, true), (6, 6720, 1000, true)]
        );
        assert_eq!(t.partitions[3].type_name, "Linux swap");
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn ebr_loop_terminates() {
        let mut img = vec![0u8; 512 * 8192];
        put_entry(&mut img, 0, 0, 0x0F, 4096, 4096);
        let mut ebr = vec![0u8; 512];
        put_entry(&mut ebr, 0, 0, 0x83, 1, 10);
        put_entry(&mut ebr, 1, 0, 0x05, 0, 10); // links back to itself
        img[4096 * 512..4097 * 512].copy_from_slice(&ebr);
        let t = parse_img(&img, 512).expect("ok").expect("table");
        assert_eq!(t.partitions.len(), 2);
        assert!(t.warnings.iter().any(|w| w.contains("loops")), "{:?}", t.warnings);
    }

    #[test]
    fn gpt_three_partitions() {
        let img = gpt_image(
            512,
            8192,
            &[
                (EFI, 2048, 3071, "esp"),
                (LINUX, 3072, 6143, "root"),
                ("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7", 6144, 8000, "data"),
            ],
        );
        let t = parse_img(&img, 512).expect("ok").expect("table");
        assert_eq!(t.kind, TableKind::Gpt);
        assert_eq!(t.disk_id, guid_string(&[0xAB; 16]));
        let got: Vec<(u32, u64, u64, &str, &str)> =
            t.partitions.iter().map(|p| (p.number, p.start_lba, p.sectors, p.type_name, p.name.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (1, 2048, 1024, "EFI System", "esp"),
                (2, 3072, 3072, "Linux filesystem", "root"),
                (3, 6144, 1857, "Microsoft basic data", "data")
            ]
        );
        assert_eq!(t.partitions[0].type_id, EFI);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert!(t.to_string().contains("EFI System"));
    }

    #[test]
    fn gpt_4096_byte_sectors() {
        let img = gpt_image(4096, 1024, &[(LINUX, 256, 511, "big")]);
        let t = parse_img(&img, 4096).expect("ok").expect("table");
        assert_eq!((t.partitions[0].start_lba, t.partitions[0].sectors), (256, 256));
        assert_eq!(t.sector_size, 4096);
    }

    #[test]
    fn gpt_bad_primary_uses_backup_then_both_bad_is_an_error() {
        let mut img = gpt_image(512, 8192, &[(LINUX, 2048, 4095, "root")]);
        img[512 + 40] ^= 0xFF; // corrupt a field: header CRC no longer matches
        let t = parse_img(&img, 512).expect("ok").expect("table");
        assert_eq!(t.partitions.len(), 1);
        assert!(t.warnings.iter().any(|w| w.contains("backup at LBA 8191")), "{:?}", t.warnings);
        let last = 8191 * 512;
        img[last + 40] ^= 0xFF;
        let e = parse_img(&img, 512).unwrap_err().to_string();
        assert!(e.contains("no usable GPT"), "{e}");
        assert!(e.contains("offset 512") && e.contains(&format!("offset {last}")), "{e}");
    }

    #[test]
    fn gpt_bad_entries_crc_is_caught() {
        let mut img = gpt_image(512, 8192, &[(LINUX, 2048, 4095, "root")]);
        img[2 * 512 + 60] ^= 1; // primary entries
        let t = parse_img(&img, 512).expect("ok").expect("table");
        assert!(t.warnings[0].contains("entry array CRC mismatch"), "{:?}", t.warnings);
    }

    #[test]
    fn no_signature_is_no_table_and_short_reads_are_errors() {
        assert_eq!(parse_img(&vec![0u8; 4096], 512), Ok(None));
        assert!(matches!(parse_img(&[0u8; 100], 512), Err(PartitionError::Read { offset: 0, .. })));
        let mut img = vec![0u8; 1024];
        put_entry(&mut img, 0, 0, 0xEE, 1, 100);
        let e = parse_img(&img, 512).unwrap_err();
        assert!(e.to_string().contains("no usable GPT"), "{e}");
        assert!(parse_img(&img, 1000).is_err(), "odd sector size refused");
    }

    #[test]
    fn bounds_warnings() {
        let mut img = vec![0u8; 512 * 100];
        put_entry(&mut img, 0, 0, 0x83, 10, 50);
        put_entry(&mut img, 1, 0, 0x83, 40, 100);
        let t = parse_img(&img, 512).expect("ok").expect("table");
        assert!(t.warnings.iter().any(|w| w.contains("partition 2 ends past the end")), "{:?}", t.warnings);
        assert!(t.warnings.iter().any(|w| w.contains("partitions 1 and 2 overlap")), "{:?}", t.warnings);
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let valid = gpt_image(512, 256, &[(LINUX, 40, 200, "x")]);
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let mut img = if round % 2 == 0 {
                valid.clone()
            } else {
                (0..(next() % 4096) as usize).map(|_| next() as u8).collect()
            };
            if !img.is_empty() {
                for _ in 0..(next() % 16) {
                    let i = (next() % img.len() as u64) as usize;
                    img[i] = next() as u8;
                }
                // Aim at the MBR entries and GPT header fields often.
                let i = (446 + next() % 66) as usize;
                if i < img.len() && round % 3 == 0 {
                    img[i] = 0xEE;
                }
            }
            let ss = if round % 5 == 0 { 4096 } else { 512 };
            let _ = parse_img(&img, ss);
        }
    }

    /// Real tables written by util-linux's sfdisk.
    #[test]
    fn agrees_with_sfdisk() {
        let sfdisk = ["/usr/sbin/sfdisk", "/sbin/sfdisk"].into_iter().find(|p| std::path::Path::new(p).exists());
        let Some(sfdisk) = sfdisk else {
            eprintln!("sfdisk not found; skipping");
            return;
        };
        // sfdisk's own type shortcuts, so the names are checked against
        // util-linux's table rather than against ours.
        let cases = [
            (
                "label: gpt\nstart=2048, size=4096, type=U, name=\"esp\"\nstart=6144, size=8192, type=L\nstart=14336, size=2048, type=S\n",
                vec![(1, 2048, 4096, "EFI System"), (2, 6144, 8192, "Linux filesystem"), (3, 14336, 2048, "Linux swap")],
                TableKind::Gpt,
            ),
            (
                "label: dos\nstart=2048, size=4096, type=83\nstart=6144, size=16384, type=5\nstart=8192, size=2048, type=83\nstart=12288, size=4096, type=82\n",
                vec![(1, 2048, 4096, "Linux"), (2, 6144, 16384, "Extended"), (5, 8192, 2048, "Linux"), (6, 12288, 4096, "Linux swap")],
                TableKind::Mbr,
            ),
        ];
        for (i, (script, want, kind)) in cases.into_iter().enumerate() {
            let path = std::env::temp_dir().join(format!("bv-part-{}-{i}.img", std::process::id()));
            std::fs::write(&path, vec![0u8; 16 << 20]).expect("image");
            let mut child = std::process::Command::new(sfdisk)
                .args(["-q", "--no-reread", "--no-tell-kernel"])
                .arg(&path)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("sfdisk runs");
            {
                use std::io::Write;
                child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("script");
            }
            assert!(child.wait().expect("sfdisk").success());
            let img = std::fs::read(&path).expect("read");
            let _ = std::fs::remove_file(&path);
            let t = parse_img(&img, 512).expect("ok").expect("table");
            assert_eq!(t.kind, kind);
            let got: Vec<(u32, u64, u64, &str)> =
                t.partitions.iter().map(|p| (p.number, p.start_lba, p.sectors, p.type_name)).collect();
            assert_eq!(got, want, "case {i}");
            assert!(t.warnings.is_empty(), "case {i}: {:?}", t.warnings);
        }
    }
}
