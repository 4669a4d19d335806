//! Used blocks of ext2, ext3 and ext4: the block bitmap of every block
//! group, checked against the group descriptors' free counts, their
//! checksums and the superblock's total before it is trusted.
//!
//! Marked used besides the bitmaps' set bits: every group's block
//! bitmap, inode bitmap and inode table, every superblock copy with its
//! descriptor blocks (and reserved descriptor blocks), and everything past
//! the filesystem's last block. A group whose bitmap was never written
//! (`BLOCK_UNINIT`) is rebuilt the way the kernel does
//! (`ext4_init_block_bitmap`) and checked against its free count; when the
//! two disagree the whole group is kept.
//!
//! Anything not understood (an unknown incompatible or read-only feature,
//! a journal that needs recovery, a filesystem not cleanly unmounted, a
//! wrong checksum or free count) gives `Err`: the partition is copied whole.

use super::{read_checked, ReadFn, Used};

/// Marks what the filesystem uses; Err(reason) takes the partition whole.
pub fn used(read: &mut ReadFn<'_>, size: u64, used: &mut Used) -> Result<(), String> {
    scan(read, size, used).map(|_| ())
}

const SB_OFFSET: u64 = 1024;
const SB_LEN: usize = 1024;
const MAGIC: u16 = 0xEF53;

// s_state
const STATE_VALID: u16 = 0x1;
const STATE_ERROR: u16 = 0x2;
const STATE_ORPHAN: u16 = 0x4;

// s_feature_compat
const COMPAT_SPARSE_SUPER2: u32 = 0x200;

// s_feature_incompat
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_EA_INODE: u32 = 0x400;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
const INCOMPAT_ENCRYPT: u32 = 0x10000;
const INCOMPAT_CASEFOLD: u32 = 0x20000;
/// Incompatible features that change nothing about where blocks are or
/// how the block bitmaps read (RECOVER and JOURNAL_DEV are refused with
/// their own reasons; COMPRESSION, DIRDATA and anything newer are not
/// understood).
const INCOMPAT_KNOWN: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;

// s_feature_ro_compat
const RO_SPARSE_SUPER: u32 = 0x1;
const RO_GDT_CSUM: u32 = 0x10;
const RO_BIGALLOC: u32 = 0x200;
const RO_METADATA_CSUM: u32 = 0x400;
/// Read-only features we understand: sparse_super, large_file, btree_dir,
/// huge_file, gdt_csum, dir_nlink, extra_isize, quota, bigalloc,
/// metadata_csum, readonly, project, shared_blocks, verity,
/// orphan_present. Snapshots (0x80) and replicas (0x800) are not.
const RO_KNOWN: u32 =
    0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000;

// bg_flags
const BG_BLOCK_UNINIT: u16 = 0x2;

/// How group descriptors are checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Csum {
    None,
    /// gdt_csum / uninit_bg: crc16 over the UUID, group and descriptor.
    Crc16 {
        uuid: [u8; 16],
    },
    /// metadata_csum: crc32c from this seed (descriptors and bitmaps).
    Crc32c {
        seed: u32,
    },
}

/// What the superblock says, checked for sense.
#[derive(Debug, Clone)]
struct Super {
    block_size: u64,
    /// Blocks per cluster (bigalloc), else 1: the bitmaps count clusters.
    ratio: u64,
    blocks_count: u64,
    free_blocks: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    clusters_per_group: u64,
    /// Blocks of one group's inode table.
    itable_blocks: u64,
    groups: u64,
    desc_size: usize,
    /// Descriptors per descriptor block.
    desc_per_block: u64,
    /// Descriptor blocks when all groups' descriptors sit together.
    gdt_blocks: u64,
    reserved_gdt: u64,
    /// `Some(s_first_meta_bg)` with meta_bg.
    first_meta_bg: Option<u64>,
    sparse_super: bool,
    backup_bgs: Option<[u64; 2]>,
    is64: bool,
    csum: Csum,
}

fn le16(b: &[u8], off: usize) -> u16 {
    // Callers pass constant offsets inside buffers of a checked length.
    b.get(off..off + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn parse_super(sb: &[u8], size: u64) -> Result<Super, String> {
    if sb.len() < SB_LEN || le16(sb, 0x38) != MAGIC {
        return Err("ext: no superblock (bad magic)".into());
    }
    let log_block = le32(sb, 0x18);
    if log_block > 6 {
        return Err(format!("ext: unsupported block size (log {log_block})"));
    }
    let block_size = 1024u64 << log_block;
    let state = le16(sb, 0x3A);
    if state & STATE_ERROR != 0 {
        return Err("ext: the filesystem is marked as having errors".into());
    }
    if state & STATE_ORPHAN != 0 || state & STATE_VALID == 0 {
        return Err("ext: the filesystem was not cleanly unmounted".into());
    }
    let rev = le32(sb, 0x4C);
    let (compat, incompat, ro) = if rev == 0 { (0, 0, 0) } else { (le32(sb, 0x5C), le32(sb, 0x60), le32(sb, 0x64)) };
    if incompat & INCOMPAT_RECOVER != 0 {
        return Err("ext: journal needs recovery (the filesystem was not cleanly unmounted)".into());
    }
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Err("ext: an external journal device, not a filesystem".into());
    }
    let unknown = incompat & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(format!("ext: unknown incompatible features {unknown:#x}"));
    }
    let unknown = ro & !RO_KNOWN;
    if unknown != 0 {
        return Err(format!("ext: unknown read-only features {unknown:#x}"));
    }
    let is64 = incompat & INCOMPAT_64BIT != 0;
    let hi = |off: usize| if is64 { u64::from(le32(sb, off)) << 32 } else { 0 };
    let blocks_count = u64::from(le32(sb, 0x04)) | hi(0x150);
    let free_blocks = u64::from(le32(sb, 0x0C)) | hi(0x158);
    let first_data_block = u64::from(le32(sb, 0x14));
    let blocks_per_group = u64::from(le32(sb, 0x20));
    let inodes_per_group = u64::from(le32(sb, 0x28));
    let bigalloc = ro & RO_BIGALLOC != 0;
    let (ratio, clusters_per_group) = if bigalloc {
        let log_cluster = le32(sb, 0x1C);
        if log_cluster < log_block || log_cluster - log_block > 16 {
            return Err(format!("ext: bad cluster size (log {log_cluster}, block log {log_block})"));
        }
        (1u64 << (log_cluster - log_block), u64::from(le32(sb, 0x24)))
    } else {
        (1, blocks_per_group)
    };
    if clusters_per_group == 0
        || clusters_per_group % 8 != 0
        || clusters_per_group > 8 * block_size
        || clusters_per_group.checked_mul(ratio) != Some(blocks_per_group)
    {
        return Err(format!("ext: bad group size ({blocks_per_group} blocks, {clusters_per_group} clusters)"));
    }
    let expected_first = if block_size == 1024 && !bigalloc { 1 } else { 0 };
    if first_data_block != expected_first {
        return Err(format!("ext: first data block {first_data_block}, expected {expected_first}"));
    }
    if blocks_count <= first_data_block {
        return Err(format!("ext: bad block count {blocks_count}"));
    }
    let fs_bytes =
        blocks_count.checked_mul(block_size).ok_or_else(|| format!("ext: block count {blocks_count} overflows"))?;
    if fs_bytes > size {
        return Err(format!("ext: the filesystem ({fs_bytes} bytes) is larger than its partition ({size} bytes)"));
    }
    if free_blocks > blocks_count {
        return Err(format!("ext: {free_blocks} free blocks of {blocks_count}"));
    }
    let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);
    if u64::from(le32(sb, 0x00)) != groups.saturating_mul(inodes_per_group) || inodes_per_group == 0 {
        return Err(format!("ext: {} inodes do not fill {groups} groups of {inodes_per_group}", le32(sb, 0x00)));
    }
    let inode_size = if rev == 0 { 128 } else { u64::from(le16(sb, 0x58)) };
    if inode_size < 128 || inode_size > block_size || !inode_size.is_power_of_two() {
        return Err(format!("ext: bad inode size {inode_size}"));
    }
    let itable_blocks = (inodes_per_group * inode_size).div_ceil(block_size);
    let desc_size = if is64 { usize::from(le16(sb, 0xFE)) } else { 32 };
    if desc_size < 32 || (is64 && desc_size < 64) || desc_size > 1024 || !desc_size.is_power_of_two() {
        return Err(format!("ext: bad group descriptor size {desc_size}"));
    }
    let desc_per_block = block_size / desc_size as u64;
    let gdt_blocks = groups.div_ceil(desc_per_block);
    let first_meta_bg = (incompat & INCOMPAT_META_BG != 0).then(|| u64::from(le32(sb, 0x104)));
    let backup_bgs =
        (compat & COMPAT_SPARSE_SUPER2 != 0).then(|| [u64::from(le32(sb, 0x24C)), u64::from(le32(sb, 0x250))]);
    let csum = if ro & RO_METADATA_CSUM != 0 {
        if sb[0x175] != 1 {
            return Err(format!("ext: unknown checksum type {}", sb[0x175]));
        }
        let want = le32(sb, 0x3FC);
        let got = crc32c(!0, &sb[..0x3FC]);
        if got != want {
            return Err(format!("ext: superblock checksum mismatch ({got:#x}, stored {want:#x})"));
        }
        let seed = if incompat & INCOMPAT_CSUM_SEED != 0 { le32(sb, 0x270) } else { crc32c(!0, &sb[0x68..0x78]) };
        Csum::Crc32c { seed }
    } else if ro & RO_GDT_CSUM != 0 {
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&sb[0x68..0x78]);
        Csum::Crc16 { uuid }
    } else {
        Csum::None
    };
    Ok(Super {
        block_size,
        ratio,
        blocks_count,
        free_blocks,
        first_data_block,
        blocks_per_group,
        clusters_per_group,
        itable_blocks,
        groups,
        desc_size,
        desc_per_block,
        gdt_blocks,
        reserved_gdt: u64::from(le16(sb, 0xCE)),
        first_meta_bg,
        sparse_super: ro & RO_SPARSE_SUPER != 0,
        backup_bgs,
        is64,
        csum,
    })
}

impl Super {
    /// First block of group `g` (`g < groups`, so no overflow: the
    /// filesystem fits the partition).
    fn group_first(&self, g: u64) -> u64 {
        self.first_data_block + g * self.blocks_per_group
    }

    fn group_blocks(&self, g: u64) -> u64 {
        (self.blocks_count - self.group_first(g)).min(self.blocks_per_group)
    }

    /// Where group `g`'s superblock copy would be (block 1, not 0, for
    /// group 0 of a 1 KiB bigalloc filesystem).
    fn sb_block(&self, g: u64) -> u64 {
        let b = self.group_first(g);
        if b == 0 && self.block_size == 1024 {
            1
        } else {
            b
        }
    }

    /// Whether group `g` holds a superblock copy (`ext4_bg_has_super`).
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if let Some(bgs) = self.backup_bgs {
            return g == bgs[0] || g == bgs[1];
        }
        if g <= 1 || !self.sparse_super {
            return true;
        }
        if g.is_multiple_of(2) {
            return false;
        }
        [3u64, 5, 7].iter().any(|&base| {
            let mut n = base;
            while n < g {
                n *= base;
            }
            n == g
        })
    }

    /// Where descriptor block `i` is (`ext2fs_descriptor_block_loc2`).
    fn desc_block(&self, i: u64) -> u64 {
        match self.first_meta_bg {
            Some(first) if i >= first => {
                let g = i * self.desc_per_block;
                self.sb_block(g) + u64::from(self.has_super(g))
            }
            _ => self.sb_block(0) + 1 + i,
        }
    }

    /// The blocks at the start of group `g` that hold a superblock copy
    /// and descriptors (`ext4_num_base_meta_clusters`, in blocks).
    fn base_meta_blocks(&self, g: u64) -> u64 {
        let sup = u64::from(self.has_super(g));
        match self.first_meta_bg {
            Some(first) if g / self.desc_per_block >= first => {
                let r = g % self.desc_per_block;
                let desc = u64::from(r == 0 || r == 1 || r == self.desc_per_block - 1);
                sup + desc
            }
            Some(first) if sup == 1 => 1 + first + self.reserved_gdt,
            None if sup == 1 => 1 + self.gdt_blocks + self.reserved_gdt,
            _ => 0,
        }
    }
}

/// One group descriptor.
#[derive(Debug, Clone, Copy)]
struct Desc {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    free: u64,
    flags: u16,
    bitmap_csum: u32,
}

fn parse_desc(sb: &Super, g: u64, d: &[u8]) -> Result<Desc, String> {
    let wide = sb.is64 && sb.desc_size >= 64;
    let hi32 = |off: usize| if wide { u64::from(le32(d, off)) << 32 } else { 0 };
    let hi16 = |off: usize| if wide { u64::from(le16(d, off)) << 16 } else { 0 };
    let stored = le16(d, 0x1E);
    let le_group = (g as u32).to_le_bytes();
    let computed = match sb.csum {
        Csum::None => None,
        Csum::Crc32c { seed } => {
            let mut c = crc32c(seed, &le_group);
            c = crc32c(c, &d[..0x1E]);
            c = crc32c(c, &[0, 0]);
            c = crc32c(c, &d[0x20..]);
            Some((c & 0xFFFF) as u16)
        }
        Csum::Crc16 { uuid } => {
            let mut c = crc16(!0, &uuid);
            c = crc16(c, &le_group);
            c = crc16(c, &d[..0x1E]);
            if sb.is64 {
                c = crc16(c, &d[0x20..]);
            }
            Some(c)
        }
    };
    if let Some(c) = computed {
        if c != stored {
            return Err(format!("ext: group {g}: descriptor checksum mismatch ({c:#06x}, stored {stored:#06x})"));
        }
    }
    let mut bitmap_csum = u32::from(le16(d, 0x18));
    if sb.desc_size >= 0x3A {
        bitmap_csum |= u32::from(le16(d, 0x38)) << 16;
    }
    Ok(Desc {
        block_bitmap: u64::from(le32(d, 0x00)) | hi32(0x20),
        inode_bitmap: u64::from(le32(d, 0x04)) | hi32(0x24),
        inode_table: u64::from(le32(d, 0x08)) | hi32(0x28),
        free: u64::from(le16(d, 0x0C)) | hi16(0x2C),
        flags: le16(d, 0x12),
        bitmap_csum,
    })
}

/// What a scan found besides the map (for the tests).
#[derive(Debug, Default)]
struct Scan {
    /// `BLOCK_UNINIT` groups whose rebuilt bitmap disagreed with their
    /// free count and were kept whole.
    uninit_kept_whole: u64,
}

fn scan(read: &mut ReadFn<'_>, size: u64, used: &mut Used) -> Result<Scan, String> {
    let raw = read_checked(read, size, SB_OFFSET, SB_LEN, "ext superblock")?;
    let sb = parse_super(&raw, size)?;
    let bs = sb.block_size;
    let bs_len = bs as usize;
    let unit = bs * sb.ratio;
    let uninit_ok = sb.csum != Csum::None;
    let mut scan = Scan::default();
    let mut free_total = 0u64;
    // The descriptor block last read, and which one it is.
    let mut desc_index = u64::MAX;
    let mut desc_block = Vec::new();
    for g in 0..sb.groups {
        // The descriptor.
        let i = g / sb.desc_per_block;
        if desc_index != i {
            let blk = sb.desc_block(i);
            if blk >= sb.blocks_count {
                return Err(format!("ext: descriptor block {i} at block {blk} lies outside the filesystem"));
            }
            desc_block = read_checked(read, size, blk * bs, bs_len, "ext group descriptors")?;
            desc_index = i;
        }
        let at = (g % sb.desc_per_block) as usize * sb.desc_size;
        let Some(raw_desc) = desc_block.get(at..at + sb.desc_size) else {
            return Err(format!("ext: group {g}: descriptor outside its block"));
        };
        let d = parse_desc(&sb, g, raw_desc)?;

        // The group's own metadata, wherever flex_bg put it.
        let inside =
            |b: u64, n: u64| b >= sb.first_data_block && b.checked_add(n).is_some_and(|e| e <= sb.blocks_count);
        if !inside(d.block_bitmap, 1) || !inside(d.inode_bitmap, 1) || !inside(d.inode_table, sb.itable_blocks) {
            return Err(format!(
                "ext: group {g}: bitmap or inode table outside the filesystem (blocks {}, {}, {})",
                d.block_bitmap, d.inode_bitmap, d.inode_table
            ));
        }
        used.mark(d.block_bitmap * bs, bs);
        used.mark(d.inode_bitmap * bs, bs);
        used.mark(d.inode_table * bs, sb.itable_blocks * bs);
        let first = sb.group_first(g);
        let base = sb.base_meta_blocks(g);
        if base > 0 {
            used.mark(sb.sb_block(g) * bs, base * bs);
        }

        // Clusters of this group (the last one may be short).
        let clusters = sb.group_blocks(g).div_ceil(sb.ratio);
        let map_len = (sb.clusters_per_group / 8) as usize;
        let bitmap = if uninit_ok && d.flags & BG_BLOCK_UNINIT != 0 {
            let synth = uninit_bitmap(&sb, g, &d, base, map_len);
            if count_free(&synth, clusters) != d.free {
                scan.uninit_kept_whole += 1;
                used.mark(first * bs, sb.group_blocks(g) * bs);
                free_total = free_total.saturating_add(d.free);
                continue;
            }
            synth
        } else {
            let mut b = read_checked(read, size, d.block_bitmap * bs, bs_len, "ext block bitmap")?;
            b.truncate(map_len);
            if let Csum::Crc32c { seed } = sb.csum {
                let mut c = crc32c(seed, &b);
                if sb.desc_size < 0x3A {
                    c &= 0xFFFF;
                }
                if c != d.bitmap_csum {
                    return Err(format!(
                        "ext: group {g}: block bitmap checksum mismatch ({c:#x}, stored {:#x})",
                        d.bitmap_csum
                    ));
                }
            }
            let free = count_free(&b, clusters);
            if free != d.free {
                return Err(format!("ext: group {g}: descriptor says {} free clusters, its bitmap {free}", d.free));
            }
            b
        };
        free_total = free_total.saturating_add(d.free);
        // Bits past a short last group lie past the filesystem's end,
        // which is marked used anyway.
        used.mark_bits(&bitmap, 0, unit, first * bs);
    }
    let free_blocks = free_total.saturating_mul(sb.ratio);
    if free_blocks != sb.free_blocks {
        return Err(format!("ext: the groups have {free_blocks} free blocks, the superblock says {}", sb.free_blocks));
    }
    used.mark_beyond(sb.blocks_count * bs);
    Ok(scan)
}

/// The bitmap the kernel builds for a group whose bitmap was never
/// written: its superblock copy and descriptors, and its own bitmaps and
/// inode table where they lie inside it.
fn uninit_bitmap(sb: &Super, g: u64, d: &Desc, base: u64, map_len: usize) -> Vec<u8> {
    let mut b = vec![0u8; map_len];
    let cpg = sb.clusters_per_group;
    let mut set = |c: u64| {
        if c < cpg {
            b[(c / 8) as usize] |= 1 << (c % 8);
        }
    };
    for c in 0..base.div_ceil(sb.ratio).min(cpg) {
        set(c);
    }
    let first = sb.group_first(g);
    let end = first + sb.group_blocks(g);
    for (start, n) in [(d.block_bitmap, 1), (d.inode_bitmap, 1), (d.inode_table, sb.itable_blocks)] {
        let lo = start.max(first);
        let hi = start.saturating_add(n).min(end);
        let mut blk = lo;
        while blk < hi {
            set((blk - first) / sb.ratio);
            blk += 1;
        }
    }
    b
}

/// Clear bits among the first `bits` of `bitmap`.
fn count_free(bitmap: &[u8], bits: u64) -> u64 {
    let full = (bits / 8) as usize;
    let mut set: u64 = bitmap.iter().take(full).map(|b| u64::from(b.count_ones())).sum();
    let rest = bits % 8;
    if rest > 0 {
        if let Some(&b) = bitmap.get(full) {
            set += u64::from((b & ((1u8 << rest) - 1)).count_ones());
        }
    }
    bits.saturating_sub(set)
}

const fn crc32c_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

const fn crc16_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u16;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xA001 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC32C: [u32; 256] = crc32c_table();
static CRC16: [u16; 256] = crc16_table();

/// Castagnoli CRC without the final inversion, as ext4 chains it
/// (`ext4_chksum`): the standard CRC-32C of `data` is
/// `!crc32c(!0, data)`.
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// The kernel's `crc16` (polynomial 0x8005, reflected), used by
/// `uninit_bg`/`gdt_csum` descriptors.
fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc = CRC16[((crc ^ u16::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::noise;
    use crate::testfs::{tool, Scratch};
    use crate::usedmap::UsedMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn run(bin: &str, args: &[&str], path: &Path) -> std::process::Output {
        Command::new(tool(bin)).args(args).arg(path).output().unwrap_or_else(|e| panic!("{bin}: {e}"))
    }

    fn reader(img: &[u8]) -> impl FnMut(u64, usize) -> Result<Vec<u8>, String> + '_ {
        move |off, len| {
            let start = usize::try_from(off).map_err(|e| e.to_string())?;
            img.get(start..start + len).map(<[u8]>::to_vec).ok_or_else(|| format!("past the end at {off}"))
        }
    }

    fn scan_img(img: &[u8], size: u64) -> Result<(UsedMap, Scan), String> {
        let mut used = Used::new(size);
        let s = scan(&mut reader(img), size, &mut used)?;
        Ok((used.finish(), s))
    }

    fn marker(i: usize) -> Vec<u8> {
        format!("BV-DELETED-MARKER-{i}-").into_bytes()
    }

    /// The files put in every filesystem: (path, contents). Those named
    /// `del*` are deleted afterwards.
    fn files() -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for i in 0..8usize {
            out.push((format!("f{i}.bin"), noise(i as u64, 3000 + i * 41_000)));
        }
        out.push(("sub/deep/nested.txt".into(), noise(99, 70_000)));
        out.push(("sub/small".into(), b"hello".to_vec()));
        for i in 0..3usize {
            let m = marker(i);
            let body: Vec<u8> = m.iter().copied().cycle().take(60_000 + i * 10_000).collect();
            out.push((format!("del{i}"), body));
        }
        out
    }

    /// A filesystem image built by `mkfs` from the test files, with the
    /// `del*` files deleted again and checked clean by e2fsck.
    fn build(s: &Scratch, mkfs: &str, args: &[&str], bytes: u64, fs_blocks: Option<&str>) -> PathBuf {
        let tree = s.0.join("tree");
        let _ = std::fs::remove_dir_all(&tree);
        for (name, data) in files() {
            let p = tree.join(&name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, data).expect("write file");
        }
        let img = s.0.join("fs.img");
        let _ = std::fs::remove_file(&img);
        std::fs::File::create(&img).and_then(|f| f.set_len(bytes)).expect("image");
        let mut cmd = Command::new(tool(mkfs));
        cmd.args(["-q", "-F", "-d"]).arg(&tree).args(args).arg(&img);
        if let Some(n) = fs_blocks {
            cmd.arg(n);
        }
        let out = cmd.output().expect("mkfs runs");
        assert!(out.status.success(), "{mkfs} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let cmds = s.0.join("cmds");
        std::fs::write(&cmds, "rm /del0\nrm /del1\nrm /del2\n").expect("cmds");
        let out = Command::new(tool("debugfs")).arg("-w").arg("-f").arg(&cmds).arg(&img).output().expect("debugfs");
        assert!(out.status.success(), "debugfs rm: {}", String::from_utf8_lossy(&out.stderr));
        let out = run("e2fsck", &["-fn"], &img);
        assert!(out.status.success(), "{mkfs} {args:?}: not clean: {}", String::from_utf8_lossy(&out.stdout));
        img
    }

    /// `dumpe2fs -h` value of `field` ("Block count", ...).
    fn header(img: &Path, field: &str) -> u64 {
        let out = run("dumpe2fs", &["-h"], img);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.starts_with(&format!("{field}:"))).expect("dumpe2fs field");
        line.split(':').nth(1).expect("value").trim().parse().expect("number")
    }

    fn zeroed_copy(img: &[u8], map: &UsedMap) -> Vec<u8> {
        let mut copy = vec![0u8; img.len()];
        for &(s, e) in map.ranges() {
            copy[s as usize..e as usize].copy_from_slice(&img[s as usize..e as usize]);
        }
        copy
    }

    /// Whether the file holds `needle` (grep: a byte loop in a debug
    /// build takes seconds per image).
    fn contains(path: &Path, needle: &[u8]) -> bool {
        let out = Command::new("grep")
            .args(["-q", "-a", "-F", "-e"])
            .arg(String::from_utf8_lossy(needle).as_ref())
            .arg(path)
            .status()
            .expect("grep runs");
        out.success()
    }

    /// Maps the image, zeroes what is unused, and checks the copy.
    fn check_roundtrip(s: &Scratch, what: &str, img_path: &Path) -> UsedMap {
        let img = std::fs::read(img_path).expect("read image");
        let size = img.len() as u64;
        let (map, stats) = scan_img(&img, size).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(stats.uninit_kept_whole, 0, "{what}: uninit groups taken whole");
        // Exactly the blocks the filesystem counts as used, plus what lies
        // past its end (bigalloc counts whole clusters, the same bytes).
        let bs = header(img_path, "Block size");
        let blocks = header(img_path, "Block count");
        let free = header(img_path, "Free blocks");
        let first = header(img_path, "First block");
        let want = (blocks - free - first) * bs + (size - blocks * bs);
        assert_eq!(map.used_bytes(), want, "{what}: used bytes");

        let copy = zeroed_copy(&img, &map);
        let copy_path = s.0.join("copy.img");
        std::fs::write(&copy_path, &copy).expect("write copy");
        for i in 0..3 {
            assert!(contains(img_path, &marker(i)), "{what}: marker {i} not in the original");
            assert!(!contains(&copy_path, &marker(i)), "{what}: deleted marker {i} survives zeroing");
        }
        let out = run("e2fsck", &["-fn"], &copy_path);
        assert!(out.status.success(), "{what}: copy not clean: {}", String::from_utf8_lossy(&out.stdout));
        let dump = s.0.join("dump");
        let _ = std::fs::remove_dir_all(&dump);
        std::fs::create_dir_all(&dump).expect("dump dir");
        let out = Command::new(tool("debugfs"))
            .arg("-R")
            .arg(format!("rdump / {}", dump.display()))
            .arg(&copy_path)
            .output()
            .expect("debugfs rdump");
        assert!(out.status.success(), "{what}: rdump: {}", String::from_utf8_lossy(&out.stderr));
        for (name, data) in files() {
            let got = std::fs::read(dump.join(&name));
            if name.starts_with("del") {
                assert!(got.is_err(), "{what}: {name} still there");
            } else {
                assert!(got.as_ref().is_ok_and(|g| *g == data), "{what}: {name} differs in the copy");
            }
        }
        map
    }

    const MIB: u64 = 1 << 20;

    /// (what, mkfs, args, image size, filesystem size in blocks).
    type Case = (&'static str, &'static str, &'static [&'static str], u64, Option<&'static str>);

    const CASES: &[Case] = &[
        ("ext4 4 KiB", "mkfs.ext4", &["-b", "4096", "-g", "1024"], 32 * MIB, None),
        ("ext4 1 KiB", "mkfs.ext4", &["-b", "1024"], 64 * MIB, None),
        ("ext4 no flex_bg", "mkfs.ext4", &["-b", "1024", "-O", "^flex_bg"], 64 * MIB, None),
        ("ext4 uninit_bg", "mkfs.ext4", &["-b", "1024", "-O", "^metadata_csum,uninit_bg"], 64 * MIB, None),
        ("ext4 not 64bit", "mkfs.ext4", &["-b", "4096", "-g", "2048", "-O", "^64bit"], 32 * MIB, None),
        ("ext4 meta_bg", "mkfs.ext4", &["-b", "1024", "-g", "1024", "-O", "meta_bg,^resize_inode"], 48 * MIB, None),
        ("ext4 bigalloc", "mkfs.ext4", &["-b", "1024", "-O", "bigalloc", "-C", "2048"], 64 * MIB, None),
        ("ext4 sparse_super2", "mkfs.ext4", &["-b", "1024", "-O", "sparse_super2"], 64 * MIB, None),
        ("ext4 smaller than its partition", "mkfs.ext4", &["-b", "4096", "-g", "1024"], 32 * MIB, Some("5000")),
        ("ext3", "mkfs.ext3", &["-b", "1024"], 32 * MIB, None),
        ("ext2", "mkfs.ext2", &["-b", "4096", "-g", "1024"], 16 * MIB, None),
    ];

    #[test]
    fn real_filesystems_round_trip() {
        let s = Scratch::new("cases");
        for &(what, mkfs, args, bytes, fs_blocks) in CASES {
            let img = build(&s, mkfs, args, bytes, fs_blocks);
            let map = check_roundtrip(&s, what, &img);
            if let Some(n) = fs_blocks {
                let end: u64 = n.parse::<u64>().expect("blocks") * 4096;
                assert_eq!(map.used_in(end, bytes).collect::<Vec<_>>(), vec![(end, bytes)], "{what}: tail");
            }
        }
    }

    #[test]
    fn empty_filesystem_is_mostly_free() {
        let s = Scratch::new("empty");
        let img = s.0.join("e.img");
        std::fs::File::create(&img).and_then(|f| f.set_len(64 * MIB)).expect("image");
        let out = run("mkfs.ext4", &["-q", "-F", "-b", "4096"], &img);
        assert!(out.status.success());
        let data = std::fs::read(&img).expect("read");
        let (map, _) = scan_img(&data, 64 * MIB).expect("map");
        // A 4 MiB journal, 1 MiB of inode tables, bitmaps and descriptors.
        let free = header(&img, "Free blocks");
        assert_eq!(map.used_bytes(), (16384 - free) * 4096);
        assert!(map.used_bytes() < 64 * MIB * 15 / 100, "{} bytes used", map.used_bytes());
    }

    /// A small default ext4 (1 KiB blocks, metadata_csum) to damage.
    fn damaged(s: &Scratch, args: &[&str]) -> (PathBuf, Vec<u8>) {
        let img = build(s, "mkfs.ext4", args, 16 * MIB, None);
        let data = std::fs::read(&img).expect("read");
        assert!(scan_img(&data, data.len() as u64).is_ok(), "undamaged image maps");
        (img, data)
    }

    fn whole_reason(data: &[u8]) -> String {
        match scan_img(data, data.len() as u64) {
            Ok(_) => panic!("damaged image mapped"),
            Err(e) => e,
        }
    }

    /// Byte offset of group `g`'s descriptor field `off` (1 KiB blocks,
    /// descriptors in block 2).
    fn desc_field(data: &[u8], g: usize, off: usize) -> usize {
        let size =
            if le32(&data[1024..], 0x60) & INCOMPAT_64BIT != 0 { le16(&data[1024..], 0xFE) as usize } else { 32 };
        2048 + g * size + off
    }

    fn block_bitmap(data: &[u8], g: usize) -> usize {
        let at = desc_field(data, g, 0);
        le32(data, at) as usize * 1024
    }

    #[test]
    fn flipped_bitmap_bit_disagrees_with_the_free_count() {
        let s = Scratch::new("flip");
        let (_, mut data) = damaged(&s, &["-b", "1024", "-O", "^metadata_csum,uninit_bg"]);
        let at = block_bitmap(&data, 0) + 1000;
        data[at] ^= 0x10;
        let r = whole_reason(&data);
        assert!(r.contains("group 0") && r.contains("free"), "{r}");
    }

    #[test]
    fn flipped_bitmap_bit_breaks_the_bitmap_checksum() {
        let s = Scratch::new("flipcsum");
        let (_, mut data) = damaged(&s, &["-b", "1024"]);
        let at = block_bitmap(&data, 0) + 1000;
        data[at] ^= 0x10;
        let r = whole_reason(&data);
        assert!(r.contains("block bitmap checksum"), "{r}");
    }

    #[test]
    fn descriptor_checksums_are_checked() {
        let s = Scratch::new("gdcsum");
        for args in [&["-b", "1024"][..], &["-b", "1024", "-O", "^metadata_csum,uninit_bg"]] {
            let (_, mut data) = damaged(&s, args);
            // bg_itable_unused of group 1: nothing else looks at it.
            let at = desc_field(&data, 1, 0x1C);
            data[at] ^= 1;
            let r = whole_reason(&data);
            assert!(r.contains("group 1: descriptor checksum"), "{args:?}: {r}");
        }
    }

    #[test]
    fn needs_recovery_and_dirty_states() {
        let s = Scratch::new("state");
        let (img, _) = damaged(&s, &["-b", "1024"]);
        let out = run("debugfs", &["-w", "-R", "feature needs_recovery"], &img);
        assert!(out.status.success());
        let data = std::fs::read(&img).expect("read");
        assert!(whole_reason(&data).contains("journal needs recovery"));
        let out = run("debugfs", &["-w", "-R", "feature ^needs_recovery"], &img);
        assert!(out.status.success());
        let out = run("debugfs", &["-w", "-R", "ssv state 0"], &img);
        assert!(out.status.success());
        let data = std::fs::read(&img).expect("read");
        assert!(whole_reason(&data).contains("not cleanly unmounted"));
        let out = run("debugfs", &["-w", "-R", "ssv state 3"], &img);
        assert!(out.status.success());
        let data = std::fs::read(&img).expect("read");
        assert!(whole_reason(&data).contains("errors"));
    }

    #[test]
    fn superblock_damage() {
        let s = Scratch::new("sb");
        let (img, data) = damaged(&s, &["-b", "1024"]);
        // Truncated partition.
        let r = match scan_img(&data, data.len() as u64 - 4096) {
            Err(e) => e,
            Ok(_) => panic!("truncated partition mapped"),
        };
        assert!(r.contains("larger than its partition"), "{r}");
        // Superblock checksum.
        let mut bad = data.clone();
        bad[1024 + 0x10] ^= 1;
        assert!(whole_reason(&bad).contains("superblock checksum"));
        // Superblock free count (written with a valid checksum).
        let out = run("debugfs", &["-w", "-R", "ssv free_blocks_count 7"], &img);
        assert!(out.status.success());
        let bad = std::fs::read(&img).expect("read");
        assert!(whole_reason(&bad).contains("the superblock says 7"));
        // An unknown incompatible feature, with a fixed-up checksum.
        let mut bad = data.clone();
        bad[1024 + 0x62] |= 0x40;
        let c = crc32c(!0, &bad[1024..1024 + 0x3FC]);
        bad[1024 + 0x3FC..1024 + 0x400].copy_from_slice(&c.to_le_bytes());
        assert!(whole_reason(&bad).contains("unknown incompatible features 0x400000"));
        // No ext at all.
        assert!(whole_reason(&vec![0u8; 1 << 20]).contains("bad magic"));
    }

    #[test]
    fn bitmap_outside_the_filesystem() {
        let s = Scratch::new("outside");
        let (_, mut data) = damaged(&s, &["-b", "1024", "-O", "^metadata_csum"]);
        let at = desc_field(&data, 1, 0);
        data[at..at + 4].copy_from_slice(&0x00F0_0000u32.to_le_bytes());
        let r = whole_reason(&data);
        assert!(r.contains("outside the filesystem"), "{r}");
    }

    #[test]
    fn checksums_on_literal_bytes() {
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
        assert_eq!(count_free(&[0b1010_0101, 0xFF, 0x0F], 20), 4);
        assert_eq!(count_free(&[0, 0], 12), 12);
    }

    #[test]
    fn sparse_super_groups() {
        let mut sb = vec![0u8; 1024];
        sb[0x04..0x08].copy_from_slice(&(8192u32 * 50).to_le_bytes());
        sb[0x18] = 2; // 4 KiB
        sb[0x20..0x24].copy_from_slice(&8192u32.to_le_bytes());
        sb[0x28..0x2C].copy_from_slice(&16u32.to_le_bytes());
        sb[0x00..0x04].copy_from_slice(&(16u32 * 7).to_le_bytes());
        sb[0x38..0x3A].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x3A] = 1;
        sb[0x4C] = 1;
        sb[0x58] = 128;
        sb[0x64] = 1; // sparse_super
                      // 50 blocks of groups? 7 groups don't fill 8192 * 50 blocks.
        assert!(parse_super(&sb, 1 << 40).is_err());
        sb[0x04..0x08].copy_from_slice(&(8192u32 * 7).to_le_bytes());
        let p = parse_super(&sb, 1 << 40).expect("valid");
        let with: Vec<u64> = (0..7).filter(|&g| p.has_super(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5]);
        assert_eq!(p.base_meta_blocks(3), 2);
        assert_eq!(p.base_meta_blocks(4), 0);
        sb[0x64] = 0;
        let p = parse_super(&sb, 1 << 40).expect("valid");
        assert!((0..7).all(|g| p.has_super(g)));
    }
}
