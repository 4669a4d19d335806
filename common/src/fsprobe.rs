//! Which filesystem a partition holds: its type, label and UUID, so a
//! person can tell "Windows" from "DATA" before backing up or overwriting
//! a disk.
//!
//! [`probe`] never opens a device: it asks a `read(offset, len)` callback
//! (offsets relative to the partition start) for the few blocks each
//! signature needs, and caches them, so a partition costs a handful of
//! 4 KiB reads (btrfs looks at 64 KiB, a FAT or exFAT label at the root
//! directory). Every length and offset taken from the disk is checked
//! against the partition size and a total read budget; any contents give
//! a value or `None`, never a panic.
//!
//! Names and formats follow util-linux libblkid (`blkid -p`): the same
//! `TYPE` strings (`ext4`, `vfat`, `crypto_LUKS`, `LVM2_member`, ...), the
//! same labels and the same UUID spellings; the tests compare the two on
//! images made by the real mkfs tools.

use std::collections::BTreeMap;
use std::fmt;

/// What a partition (or a whole disk without a partition table) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    /// libblkid's `TYPE`: `ext4`, `vfat`, `ntfs`, `swap`, `crypto_LUKS`, ...
    pub kind: &'static str,
    /// The volume label; empty when there is none.
    pub label: String,
    /// libblkid's `UUID` spelling (a UUID, a FAT serial `1234-ABCD`, an
    /// NTFS serial, an ISO date); empty when there is none.
    pub uuid: String,
}

impl fmt::Display for Filesystem {
    /// `ext4 "root"`, or `swap` when there is no label.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.label.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{} {:?}", self.kind, self.label)
        }
    }
}

/// Identifies the filesystem or volume container on one partition of
/// `size` bytes. `read(offset, len)` must return exactly `len` bytes at
/// `offset` from the partition start; a failed or short read only rules
/// out the signatures that needed those bytes.
pub fn probe(read: &mut dyn FnMut(u64, usize) -> Result<Vec<u8>, String>, size: u64) -> Option<Filesystem> {
    let mut src = Source { read, size, blocks: BTreeMap::new(), spent: 0 };
    // RAID, LVM and encryption first: they hide what is inside them (an md
    // 1.0 member starts with the filesystem it mirrors). FAT last: its
    // signature is the weakest (the boot-sector 0x55AA that NTFS, exFAT,
    // BitLocker and MBRs share).
    const PROBES: [fn(&mut Source) -> Option<Filesystem>; 12] =
        [linux_raid, lvm2, luks, bitlocker, xfs, ext, btrfs, ntfs, exfat, iso9660, swap, vfat];
    PROBES.iter().find_map(|p| p(&mut src))
}

// ---------------------------------------------------------------------
// Reading: a block cache with bounds and a budget.

const BLOCK: u64 = 4096;
/// The most all probes together read from one partition, whatever the
/// disk claims.
const BUDGET: u64 = 1 << 20;
/// Largest single request (a FAT root directory, a cluster of one).
const MAX_GET: usize = 64 << 10;

struct Source<'a> {
    read: &'a mut dyn FnMut(u64, usize) -> Result<Vec<u8>, String>,
    size: u64,
    /// Block number -> its bytes, or `None` when reading it failed.
    blocks: BTreeMap<u64, Option<Vec<u8>>>,
    spent: u64,
}

impl Source<'_> {
    /// `len` bytes at `off`; `None` past the end of the partition, on a
    /// read error, or once the budget is spent.
    fn get(&mut self, off: u64, len: usize) -> Option<Vec<u8>> {
        if len == 0 || len > MAX_GET {
            return None;
        }
        let end = off.checked_add(len as u64)?;
        if end > self.size {
            return None;
        }
        let (first, last) = (off / BLOCK, (end - 1) / BLOCK);
        // Fetch each run of missing blocks with one read.
        let mut b = first;
        while b <= last {
            if self.blocks.contains_key(&b) {
                b += 1;
                continue;
            }
            let mut e = b;
            while e < last && !self.blocks.contains_key(&(e + 1)) {
                e += 1;
            }
            let start = b * BLOCK;
            let n = (e + 1).saturating_mul(BLOCK).min(self.size) - start;
            self.spent = self.spent.saturating_add(n);
            let got = if self.spent > BUDGET { Err(String::new()) } else { (self.read)(start, n as usize) };
            match got {
                Ok(buf) if buf.len() as u64 == n => {
                    for (i, chunk) in buf.chunks(BLOCK as usize).enumerate() {
                        self.blocks.insert(b + i as u64, Some(chunk.to_vec()));
                    }
                }
                _ => {
                    for k in b..=e {
                        self.blocks.insert(k, None);
                    }
                }
            }
            b = e + 1;
        }
        let mut out = Vec::with_capacity(len);
        for blk in first..=last {
            let data = self.blocks.get(&blk)?.as_ref()?;
            let base = blk * BLOCK;
            let from = (off.max(base) - base) as usize;
            let to = (end.min(base.saturating_add(BLOCK)) - base) as usize;
            out.extend_from_slice(data.get(from..to)?);
        }
        (out.len() == len).then_some(out)
    }
}

// ---------------------------------------------------------------------
// Byte helpers: every access is bounds-checked.

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}
fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}
fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}
fn at(b: &[u8], from: usize, len: usize) -> &[u8] {
    b.get(from..from.saturating_add(len)).unwrap_or(&[])
}

/// A fixed-size text field: up to the first NUL, lossy UTF-8, trailing
/// blanks dropped (as libblkid does).
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_owned()
}

/// A UTF-16 text field, up to the first NUL unit, trailing blanks dropped.
fn utf16(b: &[u8], big_endian: bool) -> String {
    let units = b.chunks_exact(2).map(|c| {
        if big_endian {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_le_bytes([c[0], c[1]])
        }
    });
    let s: String =
        char::decode_utf16(units.take_while(|&u| u != 0)).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
    s.trim_end().to_owned()
}

/// 16 bytes as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, byte order as
/// stored; empty when absent or all zero (libblkid sets no UUID then).
fn uuid(b: &[u8]) -> String {
    if b.len() != 16 || b.iter().all(|&c| c == 0) {
        return String::new();
    }
    let h = crate::wire::to_hex(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A DOS volume serial (FAT, exFAT): `ABCD-1234`, high word first.
fn dos_serial(b: &[u8]) -> String {
    match b {
        [a, b, c, d] => format!("{d:02X}{c:02X}-{b:02X}{a:02X}"),
        _ => String::new(),
    }
}

fn found(kind: &'static str, label: String, uuid: String) -> Option<Filesystem> {
    Some(Filesystem { kind, label, uuid })
}

// ---------------------------------------------------------------------
// Linux software RAID, metadata 1.x: 1.0 near the end, 1.1 at 0, 1.2 at
// 4 KiB. (0.90, at the end and without a checksum we can trust as cheaply,
// is not recognised.)

const MD_MAGIC: u32 = 0xa92b_4efc;
/// mdadm's limit: the role table must fit the 4 KiB superblock.
const MD_MAX_DEVS: u32 = (4096 - 256) / 2;

fn linux_raid(s: &mut Source) -> Option<Filesystem> {
    let mut offsets = Vec::with_capacity(3);
    if s.size > 0x10000 {
        offsets.push((s.size & !0xfff) - 0x2000);
    }
    offsets.extend([0, 0x1000]);
    offsets.into_iter().find_map(|off| md1_at(s, off))
}

fn md1_at(s: &mut Source, off: u64) -> Option<Filesystem> {
    let sb = s.get(off, 256)?;
    if le32(&sb, 0)? != MD_MAGIC || le32(&sb, 4)? != 1 || le64(&sb, 144)? != off >> 9 {
        return None;
    }
    let max_dev = le32(&sb, 220)?;
    if max_dev > MD_MAX_DEVS {
        return None;
    }
    let full = s.get(off, 256 + 2 * max_dev as usize)?;
    (md1_csum(&full) == le32(&sb, 216)?).then_some(())?;
    found("linux_raid_member", text(at(&sb, 32, 32)), uuid(at(&sb, 16, 16)))
}

/// The md 1.x superblock checksum: 32-bit little-endian words summed into
/// 64 bits with `sb_csum` taken as zero, then the halves folded.
fn md1_csum(sb: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    let mut chunks = sb.chunks_exact(4);
    for (i, w) in chunks.by_ref().enumerate() {
        if i != 216 / 4 {
            sum += u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    if let [a, b] = chunks.remainder() {
        sum += u64::from(u16::from_le_bytes([*a, *b]));
    }
    ((sum & 0xffff_ffff) + (sum >> 32)) as u32
}

// ---------------------------------------------------------------------
// LVM2 physical volume: a label in one of the first four sectors.

fn lvm2(s: &mut Source) -> Option<Filesystem> {
    (0..4u64).find_map(|sector| {
        let b = s.get(sector * 512, 512)?;
        if at(&b, 0, 8) != b"LABELONE" || at(&b, 24, 8) != b"LVM2 001" || le64(&b, 8)? != sector {
            return None;
        }
        (lvm2_crc(at(&b, 20, 512 - 20)) == le32(&b, 16)?).then_some(())?;
        // The PV UUID is 32 characters, shown in groups 6-4-4-4-4-4-6.
        let raw = String::from_utf8_lossy(at(&b, 32, 32)).into_owned();
        let mut id = String::with_capacity(38);
        for (i, c) in raw.chars().enumerate() {
            if matches!(i, 6 | 10 | 14 | 18 | 22 | 26) {
                id.push('-');
            }
            id.push(c);
        }
        found("LVM2_member", String::new(), id)
    })
}

/// LVM2's label CRC: reflected CRC-32, seeded 0xf597a6cf, no final xor.
fn lvm2_crc(b: &[u8]) -> u32 {
    crate::partition::crc32_update(0xf597_a6cf, b)
}

// ---------------------------------------------------------------------
// LUKS 1 and 2: the primary header (a lost primary of LUKS2 is not
// searched for at the secondary offsets).

fn luks(s: &mut Source) -> Option<Filesystem> {
    let h = s.get(0, 512)?;
    if at(&h, 0, 6) != b"LUKS\xba\xbe" {
        return None;
    }
    match be16(&h, 6)? {
        1 => found("crypto_LUKS", String::new(), text(at(&h, 168, 40))),
        2 if be64(&h, 256)? == 0 => found("crypto_LUKS", text(at(&h, 24, 48)), text(at(&h, 168, 40))),
        2 => None,
        _ => found("crypto_LUKS", String::new(), String::new()),
    }
}

// ---------------------------------------------------------------------
// BitLocker (Vista, 7 and later, To Go): worth naming, since the NTFS or
// FAT inside cannot be seen.

fn bitlocker(s: &mut Source) -> Option<Filesystem> {
    let b = s.get(0, 512)?;
    let meta = match at(&b, 0, 11) {
        b"\xeb\x52\x90-FVE-FS-" => return found("BitLocker", String::new(), String::new()),
        b"\xeb\x58\x90-FVE-FS-" => le64(&b, 176)?,
        b"\xeb\x58\x90MSWIN4.1" => le64(&b, 440)?,
        _ => return None,
    };
    if meta == 0 || s.get(meta, 8)? != b"-FVE-FS-" {
        return None;
    }
    found("BitLocker", String::new(), String::new())
}

// ---------------------------------------------------------------------
// XFS: big-endian superblock at 0, with libblkid's sanity checks so a
// stray "XFSB" is not enough.

fn xfs(s: &mut Source) -> Option<Filesystem> {
    let b = s.get(0, 512)?;
    if at(&b, 0, 4) != b"XFSB" {
        return None;
    }
    let blocksize = u64::from(be32(&b, 4)?);
    let dblocks = be64(&b, 8)?;
    let rextsize = u64::from(be32(&b, 80)?);
    let agblocks = u64::from(be32(&b, 84)?);
    let agcount = u64::from(be32(&b, 88)?);
    let sectsize = u64::from(be16(&b, 102)?);
    let inodesize = u64::from(be16(&b, 104)?);
    let (blocklog, sectlog, inodelog, inopblog) = (b[120], b[121], b[122], b[123]);
    let imax_pct = b[127];
    let pow = |v: u64, log: u8, lo: u8, hi: u8| (lo..=hi).contains(&log) && v == 1 << log;
    let sane = agcount > 0
        && pow(sectsize, sectlog, 9, 15)
        && pow(blocksize, blocklog, 9, 16)
        && pow(inodesize, inodelog, 8, 11)
        && blocklog.checked_sub(inodelog) == Some(inopblog)
        && (4096..=1 << 30).contains(&(rextsize * blocksize))
        && imax_pct <= 100
        && dblocks != 0
        && dblocks <= agcount * agblocks
        && dblocks >= (agcount - 1) * agblocks + 64;
    if !sane {
        return None;
    }
    found("xfs", text(at(&b, 108, 12)), uuid(at(&b, 32, 16)))
}

// ---------------------------------------------------------------------
// ext2/3/4: the superblock at 1 KiB. Which one is decided by features, as
// libblkid does: an external journal is `jbd`; anything ext3 cannot
// mount (extents, 64bit, flex_bg, huge_file, metadata_csum, ...) is
// ext4; a journal alone is ext3; neither is ext2.

const EXT3_COMPAT_HAS_JOURNAL: u32 = 0x0004;
const EXT3_INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
/// Incompat features ext3 understands: filetype, recover, meta_bg.
const EXT3_INCOMPAT_SUPP: u32 = 0x0002 | 0x0004 | 0x0010;
/// Ro-compat features ext2/3 understand: sparse_super, large_file, btree_dir.
const EXT3_RO_COMPAT_SUPP: u32 = 0x0001 | 0x0002 | 0x0004;

fn ext(s: &mut Source) -> Option<Filesystem> {
    let b = s.get(1024, 512)?;
    if le16(&b, 0x38)? != 0xef53 {
        return None;
    }
    let (compat, incompat, ro_compat) = (le32(&b, 0x5c)?, le32(&b, 0x60)?, le32(&b, 0x64)?);
    let kind = if incompat & EXT3_INCOMPAT_JOURNAL_DEV != 0 {
        "jbd"
    } else if incompat & !EXT3_INCOMPAT_SUPP != 0 || ro_compat & !EXT3_RO_COMPAT_SUPP != 0 {
        "ext4"
    } else if compat & EXT3_COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    };
    found(kind, text(at(&b, 0x78, 16)), uuid(at(&b, 0x68, 16)))
}

// ---------------------------------------------------------------------
// btrfs: the primary superblock at 64 KiB.

fn btrfs(s: &mut Source) -> Option<Filesystem> {
    let b = s.get(0x10000, 0x22b)?;
    if at(&b, 64, 8) != b"_BHRfS_M" {
        return None;
    }
    found("btrfs", text(at(&b, 0x12b, 256)), uuid(at(&b, 32, 16)))
}

// ---------------------------------------------------------------------
// NTFS: the boot sector gives the serial; the label is the
// $VOLUME_NAME attribute of MFT record 3 ($Volume).

fn ntfs(s: &mut Source) -> Option<Filesystem> {
    let b = s.get(0, 512)?;
    if at(&b, 3, 8) != b"NTFS    " {
        return None;
    }
    let sector = u64::from(le16(&b, 0x0b)?);
    // Sectors per cluster: a power of two, or (Windows 10, clusters
    // above 64 KiB) 256 minus its log2.
    let spc = match b[0x0d] {
        n @ (1 | 2 | 4 | 8 | 16 | 32 | 64 | 128) => u64::from(n),
        n @ 0xf4..=0xff => 1u64 << (256 - u32::from(n)),
        _ => return None,
    };
    let cluster = sector * spc;
    let unused_zero = le16(&b, 0x0e)? == 0
        && b[0x10] == 0
        && le16(&b, 0x11)? == 0
        && le16(&b, 0x13)? == 0
        && le16(&b, 0x16)? == 0
        && le32(&b, 0x20)? == 0;
    if !(256..=4096).contains(&sector) || cluster > 2 << 20 || !unused_zero {
        return None;
    }
    let record = match b[0x40] as i8 {
        n @ (1 | 2 | 4 | 8 | 16 | 32 | 64) => cluster * n as u64,
        n @ -31..=-9 => 1u64 << -n,
        _ => return None,
    };
    let clusters = le64(&b, 0x28)? / spc;
    let (mft, mirror) = (le64(&b, 0x30)?, le64(&b, 0x38)?);
    if mft > clusters || mirror > clusters {
        return None;
    }
    let serial = format!("{:016X}", le64(&b, 0x48)?);
    let label = mft.checked_mul(cluster).and_then(|off| ntfs_volume_name(s, off, record)).unwrap_or_default();
    found("ntfs", label, serial)
}

fn ntfs_volume_name(s: &mut Source, mft: u64, record: u64) -> Option<String> {
    let rs = usize::try_from(record).ok().filter(|&r| (256..=MAX_GET).contains(&r))?;
    if s.get(mft, 4)? != b"FILE" {
        return None;
    }
    let mut r = s.get(mft.checked_add(3 * record)?, rs)?;
    if at(&r, 0, 4) != b"FILE" {
        return None;
    }
    // Undo the update sequence: the last two bytes of every 512-byte
    // stride were swapped out for a check value when written.
    let (usa, count) = (usize::from(le16(&r, 4)?), usize::from(le16(&r, 6)?));
    for i in 1..count {
        let (src, dst) = (usa + 2 * i, 512 * i - 2);
        if let (Some(v), true) = (r.get(src..src + 2).map(|v| [v[0], v[1]]), dst + 2 <= rs) {
            r[dst..dst + 2].copy_from_slice(&v);
        }
    }
    let mut off = usize::from(le16(&r, 0x14)?);
    for _ in 0..64 {
        let (kind, len) = (le32(&r, off)?, le32(&r, off + 4)? as usize);
        if kind == 0xffff_ffff || len == 0 {
            return None;
        }
        if kind == 0x60 {
            // $VOLUME_NAME is always resident: value length, then offset.
            if r.get(off + 8) != Some(&0) {
                return None;
            }
            let (vlen, voff) = (le32(&r, off + 16)? as usize, usize::from(le16(&r, off + 20)?));
            return Some(utf16(r.get(off.checked_add(voff)?..off.checked_add(voff)?.checked_add(vlen)?)?, false));
        }
        off = off.checked_add(len)?;
    }
    None
}

// ---------------------------------------------------------------------
// exFAT: boot sector checked with its checksum; the label is an entry of
// the root directory.

fn exfat(s: &mut Source) -> Option<Filesystem> {
    let b = s.get(0, 512)?;
    if at(&b, 3, 8) != b"EXFAT   " || at(&b, 0, 3) != b"\xeb\x76\x90" || at(&b, 510, 2) != b"\x55\xaa" {
        return None;
    }
    let (bps_shift, spc_shift) = (u32::from(b[108]), u32::from(b[109]));
    if b[11..64].iter().any(|&c| c != 0) || !(9..=12).contains(&bps_shift) || bps_shift + spc_shift > 25 {
        return None;
    }
    // Sectors 0-10 are summed (skipping the volatile flags and percent in
    // use); sector 11 repeats the sum.
    let ss = 1usize << bps_shift;
    let boot = s.get(0, 12 * ss)?;
    let sum = boot[..11 * ss]
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 106 | 107 | 112))
        .fold(0u32, |c, (_, &v)| c.rotate_right(1).wrapping_add(u32::from(v)));
    if boot[11 * ss..].chunks_exact(4).any(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) != sum) {
        return None;
    }
    let label = exfat_label(s, &b, bps_shift, spc_shift).unwrap_or_default();
    found("exfat", label, dos_serial(at(&b, 100, 4)))
}

fn exfat_label(s: &mut Source, b: &[u8], bps_shift: u32, spc_shift: u32) -> Option<String> {
    let fat = u64::from(le32(b, 80)?) << bps_shift;
    let heap = u64::from(le32(b, 88)?) << bps_shift;
    let count = le32(b, 92)?;
    let cluster_bytes = 1u64 << (bps_shift + spc_shift);
    let mut cluster = le32(b, 96)?;
    for _ in 0..8 {
        if cluster < 2 || cluster > count.saturating_add(1) {
            return None;
        }
        let off = heap.checked_add(u64::from(cluster - 2).checked_mul(cluster_bytes)?)?;
        let dir = s.get(off, cluster_bytes.min(MAX_GET as u64) as usize)?;
        for e in dir.chunks_exact(32) {
            match e[0] {
                0x00 => return None,
                // Label: character count, then up to 11 UTF-16LE units.
                0x83 => return Some(utf16(at(e, 2, (usize::from(e[1]) * 2).min(22)), false)),
                _ => {}
            }
        }
        if cluster_bytes > MAX_GET as u64 {
            return None;
        }
        cluster = le32(&s.get(fat.checked_add(u64::from(cluster) * 4)?, 4)?, 0)?;
    }
    None
}

// ---------------------------------------------------------------------
// ISO 9660: the primary volume descriptor at 32 KiB; a Joliet
// supplementary descriptor carries the label in UTF-16BE when the
// primary's restricted alphabet could not. The "UUID" is the volume's
// modification (else creation) time, as libblkid shows it.

fn iso9660(s: &mut Source) -> Option<Filesystem> {
    const PVD: u64 = 0x8000;
    let pvd = s.get(PVD, 2048)?;
    if at(&pvd, 1, 5) != b"CD001" {
        return None;
    }
    let raw = at(&pvd, 40, 32).to_vec();
    let mut label = text(&raw);
    for i in 1..=16u64 {
        let Some(d) = s.get(PVD + i * 2048, 2048) else { break };
        if at(&d, 1, 5) != b"CD001" || d[0] == 0xff {
            break;
        }
        let joliet = d[0] == 2 && matches!(at(&d, 88, 3), b"%/@" | b"%/C" | b"%/E");
        if joliet {
            let wide = at(&d, 40, 32);
            // The same text in both: keep the primary's, which is not
            // cut at 16 characters.
            let same = wide.chunks_exact(2).zip(&raw).all(|(u, &a)| u[0] == 0 && u[1] == a);
            if !same {
                label = utf16(wide, true);
            }
            break;
        }
    }
    let date = |d: &[u8]| {
        let digits = at(d, 0, 16);
        let set = digits.len() == 16
            && digits.iter().all(u8::is_ascii_digit)
            && !(digits.iter().all(|&c| c == b'0') && d.get(16) == Some(&0));
        set.then(|| {
            let t = String::from_utf8_lossy(digits);
            format!("{}-{}-{}-{}-{}-{}-{}", &t[0..4], &t[4..6], &t[6..8], &t[8..10], &t[10..12], &t[12..14], &t[14..16])
        })
    };
    let id = date(at(&pvd, 830, 17)).or_else(|| date(at(&pvd, 813, 17))).unwrap_or_default();
    found("iso9660", label, id)
}

// ---------------------------------------------------------------------
// Linux swap (and a suspended image in it): the signature ends the first
// page, whatever the page size; version 1 keeps a label and UUID at 1 KiB.

fn swap(s: &mut Source) -> Option<Filesystem> {
    // libblkid's minimum: ten pages.
    if s.size < 10 * 4096 {
        return None;
    }
    for page in [0x1000u64, 0x2000, 0x4000, 0x8000, 0x10000] {
        let Some(m) = s.get(page - 10, 10) else { continue };
        let (kind, v1) = match m.as_slice() {
            b"SWAPSPACE2" => ("swap", true),
            b"SWAP-SPACE" => return found("swap", String::new(), String::new()),
            b"LINHIB0001" => ("swsuspend", false),
            _ if matches!(at(&m, 0, 9), b"S1SUSPEND" | b"S2SUSPEND" | b"ULSUSPEND") => ("swsuspend", false),
            _ => continue,
        };
        let h = s.get(1024, 512)?;
        let version = le32(&h, 0)?;
        if v1 && ((version != 1 && version.swap_bytes() != 1) || le32(&h, 4)? == 0) {
            return None;
        }
        // libblkid's guard against garbage: two padding words are zero.
        let (label, id) = if le32(&h, 44 + 32 * 4)? == 0 && le32(&h, 44 + 33 * 4)? == 0 {
            (text(at(&h, 28, 16)), uuid(at(&h, 12, 16)))
        } else {
            (String::new(), String::new())
        };
        return found(kind, label, id);
    }
    None
}

// ---------------------------------------------------------------------
// FAT12/16/32: the BIOS parameter block, validated as libblkid does. The
// label is the volume-label entry of the root directory (what Windows
// changes), else the one in the boot sector; "NO NAME" means none.

const FAT12_MAX: u64 = 0xff4;
const FAT16_MAX: u64 = 0xfff4;
const FAT32_MAX: u64 = 0x0fff_fff6;
const NO_NAME: &[u8] = b"NO NAME    ";

fn vfat(s: &mut Source) -> Option<Filesystem> {
    let b = s.get(0, 512)?;
    let strong = matches!(at(&b, 0x52, 5), b"MSWIN")
        || at(&b, 0x52, 8) == b"FAT32   "
        || at(&b, 0x36, 5) == b"MSDOS"
        || matches!(at(&b, 0x36, 8), b"FAT16   " | b"FAT12   " | b"FAT     ");
    // Without a type string, only the boot signature, and not the
    // FAT-like pseudo boot sector JFS and HPFS leave.
    if !strong && (at(&b, 510, 2) != b"\x55\xaa" || matches!(at(&b, 0x36, 8), b"JFS     " | b"HPFS    ")) {
        return None;
    }
    let fats = u64::from(b[0x10]);
    let reserved = u64::from(le16(&b, 0x0e)?);
    let media = b[0x15];
    let spc = u64::from(b[0x0d]);
    let ss = u64::from(le16(&b, 0x0b)?);
    if fats == 0
        || reserved == 0
        || !(media >= 0xf8 || media == 0xf0)
        || !spc.is_power_of_two()
        || !ss.is_power_of_two()
        || !(512..=4096).contains(&ss)
    {
        return None;
    }
    let dir_entries = u64::from(le16(&b, 0x11)?);
    let sectors = match le16(&b, 0x13)? {
        0 => u64::from(le32(&b, 0x20)?),
        n => u64::from(n),
    };
    let fat16_len = u64::from(le16(&b, 0x16)?);
    let fat32_len = u64::from(le32(&b, 0x24)?);
    let fat_sectors = (if fat16_len != 0 { fat16_len } else { fat32_len }) * fats;
    let dir_sectors = (dir_entries * 32).div_ceil(ss);
    let clusters = sectors.checked_sub(reserved + fat_sectors + dir_sectors)? / spc;
    let max = if fat16_len == 0 && fat32_len != 0 {
        FAT32_MAX
    } else if clusters > FAT12_MAX {
        FAT16_MAX
    } else {
        FAT12_MAX
    };
    if clusters > max {
        return None;
    }

    let (root_label, boot_label, serial) = if fat16_len != 0 {
        let dir = s.get((reserved + fat_sectors) * ss, ((dir_entries * 32) as usize).min(MAX_GET));
        (dir.and_then(|d| fat_dir_label(&d)), at(&b, 0x2b, 11), at(&b, 0x27, 4))
    } else if fat32_len != 0 {
        let cluster_bytes = spc * ss;
        let data = (reserved + fat_sectors) * ss;
        let fat_entries = fat32_len * ss / 4;
        let mut next = u64::from(le32(&b, 0x2c)?);
        let mut label = None;
        for _ in 0..16 {
            if next < 2 || next >= fat_entries {
                break;
            }
            let off = data + (next - 2) * cluster_bytes;
            let Some(dir) = s.get(off, cluster_bytes.min(MAX_GET as u64) as usize) else { break };
            label = fat_dir_label(&dir);
            if label.is_some() || cluster_bytes > MAX_GET as u64 {
                break;
            }
            let Some(e) = s.get(reserved * ss + next * 4, 4) else { break };
            next = u64::from(le32(&e, 0)? & 0x0fff_ffff);
        }
        (label, at(&b, 0x47, 11), at(&b, 0x43, 4))
    } else {
        (None, &[][..], &[][..])
    };
    let label = match root_label {
        Some(l) if l != NO_NAME => l,
        _ => boot_label.to_vec(),
    };
    let label = if label == NO_NAME { String::new() } else { text(&label) };
    found("vfat", label, dos_serial(serial))
}

/// The volume-label entry of a FAT directory: attribute "volume ID"
/// without "directory", not a long-name entry, no cluster.
fn fat_dir_label(dir: &[u8]) -> Option<Vec<u8>> {
    for e in dir.chunks_exact(32) {
        match e[0] {
            0x00 => return None,
            0xe5 => continue,
            _ => {}
        }
        let attr = e[11];
        let has_cluster = e[20] | e[21] | e[26] | e[27] != 0;
        if has_cluster || attr & 0x3f == 0x0f {
            continue;
        }
        if attr & 0x18 == 0x08 {
            return Some(e[..11].to_vec());
        }
    }
    None
}

// ---------------------------------------------------------------------
// Whether a filesystem was left in use: FAT, exFAT and ext2 have no
// journal, and after a power cut their allocation records (the exFAT
// bitmap, the FAT, ext2's bitmaps) may say a cluster is free that a file
// or directory written just before the cut uses. Linux mounts such a
// volume read-write with a warning and hands that cluster to the next
// file: two files then share it, and writing one overwrites the other
// (seen here: a note written after a cut landed in a directory's cluster).
// Only a filesystem checker repairs that; until then a drive is read, not
// written.

/// Why the `kind` filesystem (as [`probe`] named it) must be checked
/// before it is written to: it says it was not unmounted cleanly, or that
/// it has errors. `None` when clean, journaled (replayed on mount), or a
/// kind without such a flag. Reads the first 2 KiB only.
pub fn unclean(
    kind: &str,
    read: &mut dyn FnMut(u64, usize) -> Result<Vec<u8>, String>,
    size: u64,
) -> Option<&'static str> {
    const DIRTY: &str = "was not unmounted cleanly (a power cut, or a drive pulled out)";
    let mut src = Source { read, size, blocks: BTreeMap::new(), spent: 0 };
    match kind {
        "exfat" => {
            // VolumeFlags: bit 1 VolumeDirty, bit 2 MediaFailure.
            let flags = le16(&src.get(0, 512)?, 106)?;
            if flags & 4 != 0 {
                Some("has failed sectors recorded on it")
            } else if flags & 2 != 0 {
                Some(DIRTY)
            } else {
                None
            }
        }
        "vfat" => {
            // Linux's state byte (BS_Reserved1, which Windows's chkdsk
            // reads too): bit 0 dirty. FAT32's boot sector is longer; it
            // has no 16-bit FAT size.
            let b = src.get(0, 512)?;
            let state = if le16(&b, 0x16)? == 0 { b[0x41] } else { b[0x25] };
            (state & 1 != 0).then_some(DIRTY)
        }
        "ext2" | "ext3" | "ext4" => {
            let sb = src.get(1024, 1024)?;
            let state = le16(&sb, 0x3a)?;
            let journal = le32(&sb, 0x5c)? & 0x4 != 0;
            if state & 2 != 0 {
                Some("has errors recorded on it")
            } else if state & 1 == 0 && !journal {
                Some(DIRTY)
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testfs::{find_tool as tool, Scratch};
    use std::collections::HashMap;
    use std::path::Path;
    use std::process::Command;

    fn reader(img: &[u8]) -> impl FnMut(u64, usize) -> Result<Vec<u8>, String> + '_ {
        move |off, len| {
            let start = usize::try_from(off).map_err(|e| e.to_string())?;
            let end = start.checked_add(len).ok_or("overflow")?;
            img.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| format!("past the end at {off}"))
        }
    }

    fn probe_img(img: &[u8]) -> Option<Filesystem> {
        probe(&mut reader(img), img.len() as u64)
    }

    /// Probes a file on disk, returning the result and the bytes read.
    fn probe_file(path: &Path) -> (Option<Filesystem>, u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(path).expect("open image");
        let size = f.metadata().expect("stat").len();
        let mut total = 0u64;
        let mut read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
            total += len as u64;
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, off).map_err(|e| e.to_string())?;
            Ok(buf)
        };
        let fs = probe(&mut read, size);
        (fs, total)
    }

    /// `\x20`-style escapes of `blkid -o udev`'s `_ENC` values.
    fn unescape(v: &str) -> String {
        let b = v.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
                if let Some(n) = std::str::from_utf8(&b[i + 2..(i + 4).min(b.len())])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(n);
                    i += 4;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// What `blkid -p` (low-level probe, no cache) says about a file:
    /// (TYPE, LABEL, UUID), absent ones empty; `None` when it finds nothing.
    fn blkid(blkid: &Path, path: &Path) -> Option<(String, String, String)> {
        let out = Command::new(blkid).args(["-p", "-o", "udev"]).arg(path).output().expect("blkid runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| vars.get(k).map(|v| unescape(v)).unwrap_or_default();
        let kind = get("ID_FS_TYPE");
        (!kind.is_empty()).then(|| (kind, get("ID_FS_LABEL_ENC"), get("ID_FS_UUID_ENC")))
    }

    /// One image made by a real tool: (what, tool, size, args before the
    /// file, args after it, expected kind, expected label).
    type Case =
        (&'static str, &'static str, u64, &'static [&'static str], &'static [&'static str], &'static str, &'static str);

    const MIB: u64 = 1 << 20;

    const CASES: &[Case] = &[
        ("ext2", "mkfs.ext2", 8 * MIB, &["-q", "-F", "-L", "my root"], &[], "ext2", "my root"),
        ("ext3", "mkfs.ext3", 8 * MIB, &["-q", "-F", "-L", "r3"], &[], "ext3", "r3"),
        ("ext4", "mkfs.ext4", 16 * MIB, &["-q", "-F", "-L", "Données"], &[], "ext4", "Données"),
        ("ext4, no label", "mkfs.ext4", 8 * MIB, &["-q", "-F"], &[], "ext4", ""),
        (
            "ext4, 4 KiB blocks, 64bit",
            "mkfs.ext4",
            64 * MIB,
            &["-q", "-F", "-b", "4096", "-O", "64bit", "-L", "big"],
            &[],
            "ext4",
            "big",
        ),
        ("ext2 with extents", "mkfs.ext2", 8 * MIB, &["-q", "-F", "-O", "extents", "-L", "x"], &[], "ext4", "x"),
        ("FAT12", "mkfs.vfat", 2 * MIB, &["-n", "EFI"], &[], "vfat", "EFI"),
        ("FAT12, no label", "mkfs.vfat", 2 * MIB, &[], &[], "vfat", ""),
        ("FAT16", "mkfs.vfat", 40 * MIB, &["-F", "16", "-n", "DATA16"], &[], "vfat", "DATA16"),
        ("FAT32", "mkfs.vfat", 64 * MIB, &["-F", "32", "-n", "WIN DATA"], &[], "vfat", "WIN DATA"),
        (
            "FAT32, 4 KiB sectors",
            "mkfs.vfat",
            64 * MIB,
            &["-F", "32", "-S", "4096", "-n", "BIG4K"],
            &[],
            "vfat",
            "BIG4K",
        ),
        ("swap", "mkswap", MIB, &["-L", "swp"], &[], "swap", "swp"),
        ("swap, no label", "mkswap", MIB, &[], &[], "swap", ""),
        ("swap, 64 KiB pages", "mkswap", 4 * MIB, &["-p", "65536", "-L", "bigpage"], &[], "swap", "bigpage"),
        ("ntfs", "mkfs.ntfs", 16 * MIB, &["-Q", "-F", "-L", "Windows"], &[], "ntfs", "Windows"),
        (
            "ntfs, 4 KiB sectors",
            "mkfs.ntfs",
            32 * MIB,
            &["-Q", "-F", "-s", "4096", "-c", "8192", "-L", "Données"],
            &[],
            "ntfs",
            "Données",
        ),
        ("ntfs, no label", "mkfs.ntfs", 16 * MIB, &["-Q", "-F"], &[], "ntfs", ""),
        ("exfat", "mkfs.exfat", 16 * MIB, &["-L", "Photos 2024"], &[], "exfat", "Photos 2024"),
        ("exfat, no label", "mkfs.exfat", 16 * MIB, &[], &[], "exfat", ""),
        ("xfs", "mkfs.xfs", 320 * MIB, &["-q", "-L", "xlab"], &[], "xfs", "xlab"),
        ("btrfs", "mkfs.btrfs", 128 * MIB, &["-q", "-f", "-L", "pool"], &[], "btrfs", "pool"),
        (
            "LUKS2",
            "cryptsetup",
            20 * MIB,
            &[
                "luksFormat",
                "-q",
                "--disable-locks",
                "--type",
                "luks2",
                "--label",
                "secret",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
            ],
            &["KEYFILE"],
            "crypto_LUKS",
            "secret",
        ),
        (
            "LUKS1",
            "cryptsetup",
            20 * MIB,
            &["luksFormat", "-q", "--disable-locks", "--type", "luks1", "--pbkdf-force-iterations", "1000"],
            &["KEYFILE"],
            "crypto_LUKS",
            "",
        ),
    ];

    /// Every filesystem the host can make, probed by us and by blkid:
    /// the same type, label and UUID, read with a few KiB.
    #[test]
    fn agrees_with_blkid_on_real_filesystems() {
        let scratch = Scratch::new("mkfs");
        let key = scratch.0.join("key");
        std::fs::write(&key, "passphrase").expect("key");
        let blkid_bin = tool("blkid");
        if blkid_bin.is_none() {
            eprintln!("blkid not found; checking the expected types and labels only");
        }
        let mut ran = 0;
        for (i, &(what, mkfs, size, before, after, kind, label)) in CASES.iter().enumerate() {
            let Some(bin) = tool(mkfs) else {
                eprintln!("{mkfs} not found; skipping {what}");
                continue;
            };
            let img = scratch.0.join(format!("{i}.img"));
            std::fs::File::create(&img).and_then(|f| f.set_len(size)).expect("sparse image");
            let after: Vec<&Path> =
                after.iter().map(|a| if *a == "KEYFILE" { key.as_path() } else { Path::new(a) }).collect();
            let out = Command::new(&bin).args(before).arg(&img).args(&after).output().expect("mkfs runs");
            assert!(out.status.success(), "{what}: {mkfs} failed: {}", String::from_utf8_lossy(&out.stderr));
            let (got, bytes) = probe_file(&img);
            let got = got.unwrap_or_else(|| panic!("{what}: nothing recognised"));
            assert_eq!((got.kind, got.label.as_str()), (kind, label), "{what}");
            assert!(bytes <= 160 << 10, "{what}: read {bytes} bytes");
            if let Some(b) = &blkid_bin {
                let (bkind, blabel, buuid) = blkid(b, &img).unwrap_or_else(|| panic!("{what}: blkid finds nothing"));
                // libblkid calls a journal-less ext fs "ext4" on a host
                // whose kernel has no ext2 driver; only that may differ.
                let host_quirk = kind == "ext2" && bkind == "ext4";
                if !host_quirk {
                    assert_eq!(got.kind, bkind, "{what}: type");
                }
                assert_eq!(got.label, blabel, "{what}: label");
                assert_eq!(got.uuid, buuid, "{what}: uuid");
                assert!(!got.uuid.is_empty(), "{what}: no uuid");
            }
            ran += 1;
        }
        eprintln!("{ran} of {} real filesystems checked", CASES.len());
    }

    /// ISO 9660 with and without Joliet and El Torito, from xorriso.
    #[test]
    fn agrees_with_blkid_on_iso9660() {
        let Some(xorriso) = tool("xorriso") else {
            eprintln!("xorriso not found; skipping iso9660");
            return;
        };
        let scratch = Scratch::new("iso");
        let tree = scratch.0.join("tree");
        std::fs::create_dir_all(&tree).expect("tree");
        std::fs::write(tree.join("boot.img"), vec![0u8; 2048]).expect("file");
        let cases: [(&[&str], &str); 4] = [
            (&["-V", "BOOTVAULT"], "BOOTVAULT"),
            (&["-V", "My Disk é", "-J"], "My Disk é"),
            (&["-V", "Install medium", "-J", "-b", "boot.img", "-no-emul-boot"], "Install medium"),
            // Joliet keeps 16 characters; the primary descriptor all 24.
            (&["-V", "A long volume name, 2024", "-J"], "A long volume name, 2024"),
        ];
        for (i, (args, label)) in cases.iter().enumerate() {
            let img = scratch.0.join(format!("{i}.iso"));
            let out = Command::new(&xorriso)
                .args(["-as", "mkisofs", "-quiet"])
                .args(*args)
                .arg("-o")
                .arg(&img)
                .arg(&tree)
                .output()
                .expect("xorriso runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let (got, bytes) = probe_file(&img);
            let got = got.expect("iso recognised");
            assert_eq!((got.kind, got.label.as_str()), ("iso9660", *label));
            assert!(bytes <= 64 << 10, "read {bytes}");
            if let Some(b) = tool("blkid") {
                let (kind, blabel, buuid) = blkid(&b, &img).expect("blkid finds it");
                assert_eq!((got.kind, &got.label, &got.uuid), (kind.as_str(), &blabel, &buuid), "case {i}");
            }
        }
        // A primary label in the restricted ISO alphabet, as strict
        // mastering tools write it: the Joliet one is the real name.
        let mut img = std::fs::read(scratch.0.join("1.iso")).expect("read");
        img[0x8000 + 40..0x8000 + 72].copy_from_slice(b"MY_DISK                         ");
        let uuid = probe_img(&img).expect("iso").uuid;
        check_with_blkid("iso joliet label", &img, &fs("iso9660", "My Disk é", &uuid));
    }

    /// Images we build ourselves (no tool makes them on a plain file),
    /// checked against blkid when it is there. Above 1.44 MB: libblkid
    /// skips RAID and LVM signatures on floppy-sized devices.
    fn check_with_blkid(what: &str, img: &[u8], want: &Filesystem) {
        assert_eq!(probe_img(img).as_ref(), Some(want), "{what}");
        let Some(b) = tool("blkid") else {
            eprintln!("blkid not found; {what} checked against the expected value only");
            return;
        };
        let scratch = Scratch::new(&what.replace(' ', "-"));
        let path = scratch.0.join("img");
        std::fs::write(&path, img).expect("write");
        let got = blkid(&b, &path);
        assert_eq!(got, Some((want.kind.to_owned(), want.label.clone(), want.uuid.clone())), "{what}: blkid");
    }

    fn fs(kind: &'static str, label: &str, uuid: &str) -> Filesystem {
        Filesystem { kind, label: label.into(), uuid: uuid.into() }
    }

    fn lvm2_pv(sector: usize, size: usize) -> Vec<u8> {
        let mut img = vec![0u8; size];
        let l = &mut img[sector * 512..(sector + 1) * 512];
        l[0..8].copy_from_slice(b"LABELONE");
        l[8..16].copy_from_slice(&(sector as u64).to_le_bytes());
        l[20..24].copy_from_slice(&32u32.to_le_bytes());
        l[24..32].copy_from_slice(b"LVM2 001");
        l[32..64].copy_from_slice(b"AbCdEf1234567890GhIjKlMnOpQrStUv");
        let crc = lvm2_crc(&l[20..]);
        l[16..20].copy_from_slice(&crc.to_le_bytes());
        img
    }

    #[test]
    fn lvm2_physical_volume() {
        let want = fs("LVM2_member", "", "AbCdEf-1234-5678-90Gh-IjKl-MnOp-QrStUv");
        check_with_blkid("lvm2 sector 1", &lvm2_pv(1, 4 << 20), &want);
        check_with_blkid("lvm2 sector 3", &lvm2_pv(3, 4 << 20), &want);
        let mut bad = lvm2_pv(1, 4 << 20);
        bad[600] ^= 1;
        assert_eq!(probe_img(&bad), None, "a wrong CRC is no PV");
    }

    /// An md 1.x member: superblock at `off`, set name and UUIDs, with
    /// its checksum.
    fn md_member(off: usize, size: usize) -> Vec<u8> {
        let mut img = vec![0u8; size];
        let sb = &mut img[off..off + 4096];
        sb[0..4].copy_from_slice(&MD_MAGIC.to_le_bytes());
        sb[4..8].copy_from_slice(&1u32.to_le_bytes());
        sb[16..32].copy_from_slice(&[
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x01,
        ]);
        sb[32..43].copy_from_slice(b"bootvault:0");
        sb[72..76].copy_from_slice(&1u32.to_le_bytes()); // raid1
        sb[92..96].copy_from_slice(&2u32.to_le_bytes());
        sb[144..152].copy_from_slice(&((off as u64) >> 9).to_le_bytes());
        sb[168..184].copy_from_slice(&[7; 16]);
        sb[220..224].copy_from_slice(&2u32.to_le_bytes());
        sb[256..260].copy_from_slice(&[0, 0, 1, 0]);
        let csum = md1_csum(&sb[..260]);
        sb[216..220].copy_from_slice(&csum.to_le_bytes());
        img
    }

    #[test]
    fn linux_raid_members() {
        let want = fs("linux_raid_member", "bootvault:0", "11223344-5566-7788-99aa-bbccddeeff01");
        check_with_blkid("md 1.2", &md_member(4096, 4 << 20), &want);
        check_with_blkid("md 1.1", &md_member(0, 4 << 20), &want);
        // 1.0 sits at the end, here over an ext4 it mirrors: RAID wins.
        let size = (4 << 20) + 1536;
        let mut img = md_member((size & !0xfff) - 0x2000, size);
        img[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        check_with_blkid("md 1.0", &img, &want);
        let mut bad = md_member(4096, 4 << 20);
        bad[4096 + 40] ^= 1;
        assert_eq!(probe_img(&bad), None, "a wrong checksum is no member");
    }

    #[test]
    fn bitlocker_volumes() {
        let mut img = vec![0u8; 1 << 20];
        img[0..11].copy_from_slice(b"\xeb\x58\x90-FVE-FS-");
        img[510..512].copy_from_slice(b"\x55\xaa");
        img[176..184].copy_from_slice(&0x2000u64.to_le_bytes());
        img[0x2000..0x2008].copy_from_slice(b"-FVE-FS-");
        assert_eq!(probe_img(&img), Some(fs("BitLocker", "", "")));
        img[0x2000] = b'x';
        assert_eq!(probe_img(&img), None, "no metadata block, no BitLocker");
    }

    /// A FAT16 whose root-directory label (what Windows renames) differs
    /// from the stale one in the boot sector: the directory wins.
    #[test]
    fn fat_label_comes_from_the_root_directory() {
        let Some(mkfs) = tool("mkfs.vfat") else {
            eprintln!("mkfs.vfat not found; skipping the FAT root-directory label case");
            return;
        };
        let scratch = Scratch::new("fatdir");
        let path = scratch.0.join("img");
        std::fs::File::create(&path).and_then(|f| f.set_len(40 * MIB)).expect("image");
        let out = Command::new(mkfs).args(["-F", "16", "-n", "NEWNAME"]).arg(&path).output().expect("mkfs");
        assert!(out.status.success());
        let mut img = std::fs::read(&path).expect("read");
        img[0x2b..0x36].copy_from_slice(b"OLDNAME    ");
        let got = probe_img(&img).expect("vfat");
        assert_eq!(got.label, "NEWNAME");
        let serial = got.uuid.clone();
        check_with_blkid("fat16 renamed", &img, &fs("vfat", "NEWNAME", &serial));
    }

    #[test]
    fn nothing_on_empty_or_tiny_partitions() {
        assert_eq!(probe_img(&[]), None);
        assert_eq!(probe_img(&[0u8; 100]), None);
        assert_eq!(probe_img(&vec![0u8; 1 << 20]), None);
        assert_eq!(probe_img(&vec![0xffu8; 1 << 20]), None);
        // A huge size whose reads all fail.
        let mut failing = |_: u64, _: usize| -> Result<Vec<u8>, String> { Err("I/O error".into()) };
        assert_eq!(probe(&mut failing, u64::MAX), None);
        // A reader that returns short or long buffers is not trusted.
        let mut short = |_: u64, len: usize| -> Result<Vec<u8>, String> { Ok(vec![0x55; len / 2]) };
        assert_eq!(probe(&mut short, 1 << 30), None);
        let mut long = |_: u64, len: usize| -> Result<Vec<u8>, String> { Ok(vec![0; len + 7]) };
        assert_eq!(probe(&mut long, 1 << 30), None);
    }

    /// An empty 1 TiB partition costs a few blocks, not megabytes.
    #[test]
    fn reads_only_a_few_blocks() {
        let mut spent = 0u64;
        let mut calls = 0;
        let mut zeros = |_: u64, len: usize| -> Result<Vec<u8>, String> {
            spent += len as u64;
            calls += 1;
            Ok(vec![0; len])
        };
        assert_eq!(probe(&mut zeros, 1 << 40), None);
        assert!(spent <= 96 << 10, "read {spent} bytes");
        assert!(calls <= 12, "{calls} reads");
    }

    /// A minimal ext superblock with the given features and label.
    fn ext_image(compat: u32, incompat: u32, ro: u32, label: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 64 << 10];
        let sb = &mut img[1024..2048];
        sb[0x38..0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        sb[0x5c..0x60].copy_from_slice(&compat.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        sb[0x64..0x68].copy_from_slice(&ro.to_le_bytes());
        sb[0x68..0x78].copy_from_slice(&[0xab; 16]);
        sb[0x78..0x78 + label.len()].copy_from_slice(label);
        img
    }

    #[test]
    fn ext_generation_from_features() {
        let kind = |c, i, r| probe_img(&ext_image(c, i, r, b"x")).map(|f| f.kind);
        assert_eq!(kind(0, 0x2, 0x3), Some("ext2"));
        assert_eq!(kind(0x4, 0x2, 0x3), Some("ext3"));
        assert_eq!(kind(0x4, 0x2 | 0x40, 0x3), Some("ext4"), "extents");
        assert_eq!(kind(0x4, 0x2 | 0x80, 0x3), Some("ext4"), "64bit");
        assert_eq!(kind(0x4, 0x2 | 0x200, 0x3), Some("ext4"), "flex_bg");
        assert_eq!(kind(0, 0x2, 0x400), Some("ext4"), "metadata_csum without a journal");
        assert_eq!(kind(0, 0x8, 0), Some("jbd"));
        // Labels: NUL-terminated, trailing blanks dropped, invalid UTF-8 replaced.
        let label = |l: &[u8]| probe_img(&ext_image(0, 0, 0, l)).map(|f| f.label);
        assert_eq!(label(b"root  \0junk").as_deref(), Some("root"));
        assert_eq!(label(b"0123456789abcdef").as_deref(), Some("0123456789abcdef"));
        assert_eq!(label(b"caf\xe9").as_deref(), Some("caf\u{fffd}"));
        assert_eq!(
            probe_img(&ext_image(0, 0, 0, b"")).map(|f| f.uuid),
            Some("abababab-abab-abab-abab-abababababab".into())
        );
    }

    /// Boot sectors that claim a filesystem but carry impossible numbers.
    #[test]
    fn bogus_lengths_give_none_or_partial_never_a_panic() {
        // FAT with the type string but zero sector size / FAT count.
        let mut fat = vec![0u8; 1 << 20];
        fat[0x36..0x3e].copy_from_slice(b"FAT16   ");
        fat[510..512].copy_from_slice(b"\x55\xaa");
        assert_eq!(probe_img(&fat), None);
        // A FAT16 whose root directory claims 65535 entries past the end
        // and whose sector count is smaller than its metadata.
        fat[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
        fat[0x0d] = 4;
        fat[0x0e..0x10].copy_from_slice(&1u16.to_le_bytes());
        fat[0x10] = 2;
        fat[0x11..0x13].copy_from_slice(&0xffffu16.to_le_bytes());
        fat[0x13..0x15].copy_from_slice(&100u16.to_le_bytes());
        fat[0x15] = 0xf8;
        fat[0x16..0x18].copy_from_slice(&8u16.to_le_bytes());
        assert_eq!(probe_img(&fat), None, "fewer sectors than metadata");
        fat[0x13..0x15].copy_from_slice(&2048u16.to_le_bytes());
        fat[0x11..0x13].copy_from_slice(&16u16.to_le_bytes());
        fat[0x2b..0x36].copy_from_slice(b"BOOTLABEL  ");
        // Root directory at (1 + 16) * 512: a label entry.
        fat[17 * 512..17 * 512 + 11].copy_from_slice(b"DIRLABEL   ");
        fat[17 * 512 + 11] = 0x08;
        assert_eq!(probe_img(&fat).map(|f| f.label), Some("DIRLABEL".into()));
        // Truncate the image inside the root directory: the boot label.
        assert_eq!(probe_img(&fat[..17 * 512 + 4]).map(|f| f.label), Some("BOOTLABEL".into()));

        // NTFS whose $Volume attribute lengths point outside the record.
        let mut ntfs = vec![0u8; 1 << 20];
        ntfs[3..11].copy_from_slice(b"NTFS    ");
        ntfs[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
        ntfs[0x0d] = 8;
        ntfs[0x28..0x30].copy_from_slice(&2048u64.to_le_bytes());
        ntfs[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
        ntfs[0x40] = 0xf6; // 1 KiB records
        ntfs[0x48..0x50].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
        let mft = 4 * 4096;
        ntfs[mft..mft + 4].copy_from_slice(b"FILE");
        let vol = mft + 3 * 1024;
        ntfs[vol..vol + 4].copy_from_slice(b"FILE");
        ntfs[vol + 0x14..vol + 0x16].copy_from_slice(&0x38u16.to_le_bytes());
        let a = vol + 0x38;
        ntfs[a..a + 4].copy_from_slice(&0x60u32.to_le_bytes());
        ntfs[a + 4..a + 8].copy_from_slice(&0x30u32.to_le_bytes());
        ntfs[a + 16..a + 20].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        ntfs[a + 20..a + 22].copy_from_slice(&0x18u16.to_le_bytes());
        assert_eq!(probe_img(&ntfs), Some(fs("ntfs", "", "0123456789ABCDEF")), "serial kept, label dropped");
        ntfs[a + 16..a + 20].copy_from_slice(&4u32.to_le_bytes());
        ntfs[a + 0x18..a + 0x1c].copy_from_slice(b"O\0K\0");
        assert_eq!(probe_img(&ntfs).map(|f| f.label), Some("OK".into()));
        ntfs[a + 4..a + 8].copy_from_slice(&0u32.to_le_bytes());
        ntfs[a..a + 4].copy_from_slice(&0x10u32.to_le_bytes());
        assert_eq!(probe_img(&ntfs).map(|f| f.label), Some(String::new()), "zero-length attribute ends the walk");
        ntfs[0x40] = 0x80; // neither a count nor a shift
        assert_eq!(probe_img(&ntfs), None);

        // exFAT with a sector shift of 255 and one of 12 but no checksum.
        let mut ex = vec![0u8; 1 << 20];
        ex[0..3].copy_from_slice(b"\xeb\x76\x90");
        ex[3..11].copy_from_slice(b"EXFAT   ");
        ex[510..512].copy_from_slice(b"\x55\xaa");
        ex[108] = 255;
        assert_eq!(probe_img(&ex), None);
        ex[108] = 12;
        ex[109] = 13;
        assert_eq!(probe_img(&ex), None);

        // An md superblock claiming 2^32-1 devices.
        let mut md = md_member(4096, 1 << 20);
        md[4096 + 220..4096 + 224].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(probe_img(&md), None);

        // ISO descriptors that never end, on a short image.
        let mut iso = vec![0u8; 0x8000 + 4 * 2048];
        for i in 0..4 {
            let d = 0x8000 + i * 2048;
            iso[d] = 1;
            iso[d + 1..d + 6].copy_from_slice(b"CD001");
            iso[d + 40..d + 44].copy_from_slice(b"DISC");
        }
        assert_eq!(probe_img(&iso).map(|f| f.label), Some("DISC".into()));
    }

    /// Real images (when the tools are there) and our own fixtures,
    /// randomly damaged and truncated: any answer but a panic.
    #[test]
    fn damaged_images_never_panic() {
        let mut seeds: Vec<Vec<u8>> =
            vec![lvm2_pv(1, 256 << 10), md_member(4096, 256 << 10), ext_image(0x4, 0x2c2, 0x400, b"x")];
        let scratch = Scratch::new("damage");
        for (i, &(_, mkfs, size, before, after, _, _)) in CASES.iter().enumerate() {
            let Some(bin) = tool(mkfs) else { continue };
            if !after.is_empty() || size > 64 * MIB {
                continue;
            }
            let img = scratch.0.join(format!("{i}.img"));
            std::fs::File::create(&img).and_then(|f| f.set_len(size)).expect("image");
            if Command::new(&bin).args(before).arg(&img).output().is_ok_and(|o| o.status.success()) {
                let mut b = std::fs::read(&img).expect("read");
                b.truncate(256 << 10);
                seeds.push(b);
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let known = [
            "linux_raid_member",
            "LVM2_member",
            "crypto_LUKS",
            "BitLocker",
            "xfs",
            "ext2",
            "ext3",
            "ext4",
            "jbd",
            "btrfs",
            "ntfs",
            "exfat",
            "iso9660",
            "swap",
            "swsuspend",
            "vfat",
        ];
        for round in 0..3000 {
            let mut img = seeds[round % seeds.len()].clone();
            // Damage the first 64 KiB, where the structures are.
            let hot = img.len().min(64 << 10);
            for _ in 0..1 + next() % 24 {
                let i = (next() % hot as u64) as usize;
                img[i] = next() as u8;
            }
            if round % 4 == 0 {
                img.truncate((next() % img.len() as u64) as usize);
            }
            // Sometimes claim a bigger partition than the bytes we have.
            let size = if round % 3 == 0 { img.len() as u64 + next() % (1 << 30) } else { img.len() as u64 };
            if let Some(f) = probe(&mut reader(&img), size) {
                assert!(known.contains(&f.kind), "{}", f.kind);
                let _ = f.to_string();
            };
        }
    }

    #[test]
    fn display() {
        assert_eq!(fs("ext4", "root", "").to_string(), "ext4 \"root\"");
        assert_eq!(fs("swap", "", "x").to_string(), "swap");
    }

    /// A volume made by the real mkfs tools is clean; with the flag its
    /// driver sets while mounted, it is not; ext3's journal makes it safe.
    #[test]
    fn volumes_left_mounted_are_unclean() {
        let dir = Scratch::new("unclean");
        // mkfs, its arguments, the kind, the flag's byte, bits cleared, bits set.
        type Case = (&'static str, &'static [&'static str], &'static str, usize, u8, u8);
        let cases: [Case; 5] = [
            ("mkfs.exfat", &[], "exfat", 106, 0, 2),
            ("mkfs.vfat", &["-F", "16"], "vfat", 0x25, 0, 1),
            ("mkfs.vfat", &["-F", "32"], "vfat", 0x41, 0, 1),
            ("mkfs.ext2", &["-q", "-F"], "ext2", 1024 + 0x3a, 1, 0),
            ("mkfs.ext3", &["-q", "-F"], "ext3", 1024 + 0x3a, 1, 0),
        ];
        for (mkfs, args, kind, at, clear, set) in cases {
            let Some(tool) = tool(mkfs) else { panic!("{mkfs} not found: `make deps` installs it") };
            let path = dir.path(&format!("{mkfs}{}.img", args.join("")));
            std::fs::write(&path, vec![0u8; 48 << 20]).expect("image");
            let out = Command::new(tool).args(args).arg(&path).output().expect("mkfs");
            assert!(out.status.success(), "{mkfs}: {}", String::from_utf8_lossy(&out.stderr));
            let mut img = std::fs::read(&path).expect("read");
            let fs = probe_img(&img).expect("probed");
            assert_eq!(fs.kind, kind);
            assert_eq!(unclean(kind, &mut reader(&img), img.len() as u64), None, "{mkfs} {args:?} fresh");
            img[at] = (img[at] & !clear) | set;
            let found = unclean(kind, &mut reader(&img), img.len() as u64);
            if kind == "ext3" {
                assert_eq!(found, None, "a journal is replayed on mount");
                img[at] |= 2;
                assert_eq!(unclean(kind, &mut reader(&img), img.len() as u64), Some("has errors recorded on it"));
            } else {
                assert!(found.is_some_and(|w| w.contains("not unmounted cleanly")), "{mkfs} {args:?}: {found:?}");
            }
        }
        // Short, unreadable or foreign input: no answer, no panic.
        assert_eq!(unclean("exfat", &mut reader(&[0u8; 100]), 100), None);
        assert_eq!(unclean("ntfs", &mut reader(&[0xffu8; 4096]), 4096), None);
    }
}
