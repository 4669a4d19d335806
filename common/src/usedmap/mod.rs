//! Which byte ranges of a partition its filesystem has in use, read from
//! the filesystem's own allocation map (docs/DESIGN.md "Used-block maps").
//!
//! A backup zeroes what is not in use before hashing and compressing, so
//! deleted files cost nothing and never leave the PC. Being wrong here
//! loses data, so every reader checks its map before trusting it and
//! answers [`Verdict::Whole`] with a reason when in doubt: the partition
//! is then copied byte for byte, as every partition was before.
//!
//! Pure, like [`crate::fsprobe`]: the readers never open a device but ask
//! a `read(offset, len)` callback (offsets relative to the partition
//! start) for what they need, check every offset and length taken from
//! the disk against the partition size, and read in requests of at most
//! [`MAX_READ`] bytes. Each reader fills a [`Used`]; what a reader does
//! not understand it marks used.
//!
//! One reader per filesystem, as partclone has: [`ext`] (ext2/3/4),
//! [`fat`] (FAT12/16/32), [`exfat`], [`ntfs`], [`swap`].

pub mod disk;
pub mod exfat;
pub mod ext;
pub mod fat;
pub mod ntfs;
pub mod swap;

/// `read(offset, len)`: exactly `len` bytes at `offset` from the
/// partition start, or why not.
pub type ReadFn<'a> = dyn FnMut(u64, usize) -> Result<Vec<u8>, String> + 'a;

/// The largest single read a reader asks for.
pub const MAX_READ: usize = 1 << 20;

/// Always kept, whatever the filesystem says: the first 64 KiB of every
/// partition (boot sectors and boot code, the FAT32 and exFAT backup boot
/// regions, superblocks and their neighbours).
pub const HEAD_BYTES: u64 = 64 << 10;

/// Most ranges a map holds before neighbouring ranges are merged (which
/// only ever marks more as used): 16 MiB of memory at worst.
const MAX_RANGES: usize = 1 << 20;

/// The used byte ranges of one partition: sorted, disjoint, not touching,
/// `[start, end)`, inside `0..size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedMap {
    size: u64,
    ranges: Vec<(u64, u64)>,
}

impl UsedMap {
    /// Everything in use (a partition taken whole).
    pub fn whole(size: u64) -> UsedMap {
        UsedMap { size, ranges: if size > 0 { vec![(0, size)] } else { Vec::new() } }
    }

    /// A map from ranges in any order, overlapping or not (clipped to
    /// `size`).
    pub fn from_ranges(size: u64, ranges: &[(u64, u64)]) -> UsedMap {
        let mut u = Used::new(size);
        for &(s, e) in ranges {
            u.mark(s, e.saturating_sub(s));
        }
        u.finish()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn used_bytes(&self) -> u64 {
        self.ranges.iter().map(|&(s, e)| e - s).sum()
    }

    /// The used ranges that meet `[off, off + len)`, clipped to it.
    pub fn used_in(&self, off: u64, len: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let end = off.saturating_add(len);
        let first = self.ranges.partition_point(|&(_, e)| e <= off);
        self.ranges[first..].iter().take_while(move |&&(s, _)| s < end).map(move |&(s, e)| (s.max(off), e.min(end)))
    }

    /// Whether any byte of `[off, off + len)` is in use.
    pub fn any_used(&self, off: u64, len: u64) -> bool {
        self.used_in(off, len).next().is_some()
    }
}

/// Collects used ranges while a reader walks its map (mostly in
/// ascending order, merged as they come).
#[derive(Debug)]
pub struct Used {
    size: u64,
    ranges: Vec<(u64, u64)>,
    /// Ranges that read as zeros whatever else is marked (see [`Used::exclude`]).
    excluded: Vec<(u64, u64)>,
    sorted: bool,
    /// Gaps smaller than this are merged away; grows when the map gets
    /// too fragmented to hold.
    granule: u64,
}

impl Used {
    pub fn new(size: u64) -> Used {
        Used { size, ranges: Vec::new(), excluded: Vec::new(), sorted: true, granule: 1 }
    }

    /// The partition size the ranges are clipped to.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Marks `[start, start + len)` used (clipped to the partition).
    pub fn mark(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len).min(self.size);
        if start >= end {
            return;
        }
        match self.ranges.last_mut() {
            Some(last) if start >= last.0 && start <= last.1.saturating_add(self.granule - 1) => {
                last.1 = last.1.max(end);
                return;
            }
            Some(last) if start < last.0 => self.sorted = false,
            _ => {}
        }
        self.ranges.push((start, end));
        if self.ranges.len() >= MAX_RANGES {
            self.compact();
            while self.ranges.len() >= MAX_RANGES / 2 {
                self.granule = self.granule.saturating_mul(4);
                self.compact();
            }
        }
    }

    /// Marks `[start, end)` of everything past `fs_bytes` (what lies
    /// beyond the filesystem's own end is not the filesystem's to free).
    pub fn mark_beyond(&mut self, fs_bytes: u64) {
        let size = self.size;
        self.mark(fs_bytes, size.saturating_sub(fs_bytes));
    }

    /// Marks the units whose bits are set in `bitmap` (bit `i` is byte
    /// `i / 8`, bit `i % 8`, least significant first: the order ext4,
    /// exFAT and NTFS share). Bit 0 is unit `first_unit`; a unit is
    /// `unit_bytes` long and starts at `base + unit * unit_bytes`.
    pub fn mark_bits(&mut self, bitmap: &[u8], first_unit: u64, unit_bytes: u64, base: u64) {
        let bits = bitmap.len() as u64 * 8;
        let mut i = 0u64;
        while i < bits {
            // Skip clear bits a byte at a time where possible.
            let byte = bitmap[(i / 8) as usize];
            if i.is_multiple_of(8) && byte == 0 {
                i += 8;
                continue;
            }
            if byte >> (i % 8) & 1 == 0 {
                i += 1;
                continue;
            }
            let run_start = i;
            while i < bits {
                let byte = bitmap[(i / 8) as usize];
                if i.is_multiple_of(8) && byte == 0xFF {
                    i += 8;
                } else if byte >> (i % 8) & 1 == 1 {
                    i += 1;
                } else {
                    break;
                }
            }
            let unit = first_unit.saturating_add(run_start);
            let start = base.saturating_add(unit.saturating_mul(unit_bytes));
            self.mark(start, (i - run_start).saturating_mul(unit_bytes));
        }
    }

    fn compact(&mut self) {
        if !self.sorted {
            self.ranges.sort_unstable();
            self.sorted = true;
        }
        let g = self.granule;
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match out.last_mut() {
                Some(last) if s <= last.1.saturating_add(g - 1) => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.ranges = out;
    }

    /// Makes `[start, start + len)` read as zeros even where it lies in
    /// a marked range: stale bytes inside an allocated structure that the
    /// filesystem itself ignores (the attributes of a free NTFS MFT record,
    /// which keep a deleted small file's contents). At most [`MAX_RANGES`]
    /// exclusions are kept; past that they are dropped, which only keeps
    /// more.
    pub fn exclude(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len).min(self.size);
        if start < end && self.excluded.len() < MAX_RANGES {
            self.excluded.push((start, end));
        }
    }

    pub fn finish(mut self) -> UsedMap {
        self.compact();
        if self.excluded.is_empty() {
            return UsedMap { size: self.size, ranges: self.ranges };
        }
        self.excluded.sort_unstable();
        let mut out = Vec::with_capacity(self.ranges.len());
        let mut ex = self.excluded.iter().peekable();
        for &(s, e) in &self.ranges {
            let mut at = s;
            // Skip exclusions that end before this range.
            while ex.peek().is_some_and(|&&(_, xe)| xe <= at) {
                ex.next();
            }
            let mut look = ex.clone();
            while let Some(&&(xs, xe)) = look.peek() {
                if xs >= e {
                    break;
                }
                if xs > at {
                    out.push((at, xs));
                }
                at = at.max(xe);
                look.next();
            }
            if at < e {
                out.push((at, e));
            }
        }
        UsedMap { size: self.size, ranges: out }
    }
}

/// What a backup does with one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Only these ranges are copied; the rest reads as zeros.
    UsedOnly(UsedMap),
    /// Copied byte for byte, and why.
    Whole(String),
}

/// The map of a partition of `size` bytes holding filesystem `kind`
/// (fsprobe's `TYPE`: `ext4`, `vfat`, ...). Unknown kinds, containers
/// (LVM, RAID, encryption) and any doubt give [`Verdict::Whole`].
pub fn map(kind: &str, read: &mut ReadFn<'_>, size: u64) -> Verdict {
    let mut used = Used::new(size);
    let result = match kind {
        "ext2" | "ext3" | "ext4" => ext::used(read, size, &mut used),
        "vfat" => fat::used(read, size, &mut used),
        "exfat" => exfat::used(read, size, &mut used),
        "ntfs" => ntfs::used(read, size, &mut used),
        "swap" => swap::used(read, size, &mut used),
        "crypto_LUKS" | "BitLocker" => return Verdict::Whole("encrypted: its contents cannot be read".into()),
        "LVM2_member" | "linux_raid_member" => {
            return Verdict::Whole(format!("{kind}: a volume container, copied whole"))
        }
        other => return Verdict::Whole(format!("{other}: its allocation map is not read")),
    };
    match result {
        Ok(()) => {
            used.mark(0, HEAD_BYTES);
            Verdict::UsedOnly(used.finish())
        }
        Err(reason) => Verdict::Whole(reason),
    }
}

/// Reads `len` bytes at `off`, checked against the partition's `size`
/// and split into requests of at most [`MAX_READ`]; every reader's way in.
pub fn read_checked(read: &mut ReadFn<'_>, size: u64, off: u64, len: usize, what: &str) -> Result<Vec<u8>, String> {
    let end = off.checked_add(len as u64).filter(|&e| e <= size).ok_or_else(|| {
        format!("{what} at byte {off} ({len} bytes) lies past the end of the partition ({size} bytes)")
    })?;
    let _ = end;
    if len <= MAX_READ {
        let b = read(off, len).map_err(|e| format!("reading {what} at byte {off}: {e}"))?;
        return check_len(b, len, off, what);
    }
    let mut out = Vec::with_capacity(len);
    let mut at = 0usize;
    while at < len {
        let n = (len - at).min(MAX_READ);
        let b = read(off + at as u64, n).map_err(|e| format!("reading {what} at byte {}: {e}", off + at as u64))?;
        out.extend_from_slice(&check_len(b, n, off + at as u64, what)?);
        at += n;
    }
    Ok(out)
}

fn check_len(b: Vec<u8>, len: usize, off: u64, what: &str) -> Result<Vec<u8>, String> {
    if b.len() == len {
        Ok(b)
    } else {
        Err(format!("reading {what} at byte {off}: {} bytes instead of {len}", b.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_merges_and_clips() {
        let mut u = Used::new(100);
        u.mark(10, 5);
        u.mark(15, 5);
        u.mark(30, 100);
        u.mark(0, 2);
        u.mark(1, 0);
        let m = u.finish();
        assert_eq!(m.ranges(), &[(0, 2), (10, 20), (30, 100)]);
        assert_eq!(m.used_bytes(), 82);
        assert_eq!(m.used_in(12, 20).collect::<Vec<_>>(), vec![(12, 20), (30, 32)]);
        assert!(!m.any_used(20, 10));
        assert!(m.any_used(19, 1));
    }

    #[test]
    fn bits_lsb_first() {
        let mut u = Used::new(1 << 20);
        // Units 0, 2..=9 and 16..=23, 4 KiB each, from byte 8192.
        u.mark_bits(&[0b1111_1101, 0b0000_0011, 0xFF], 0, 4096, 8192);
        let m = u.finish();
        assert_eq!(
            m.ranges(),
            &[(8192, 8192 + 4096), (8192 + 2 * 4096, 8192 + 10 * 4096), (8192 + 16 * 4096, 8192 + 24 * 4096)]
        );
    }

    #[test]
    fn exclusions_cut_marked_ranges() {
        let mut u = Used::new(1000);
        u.mark(0, 500);
        u.mark(600, 100);
        u.exclude(100, 10);
        u.exclude(105, 20);
        u.exclude(490, 120);
        u.exclude(900, 50);
        let m = u.finish();
        assert_eq!(m.ranges(), &[(0, 100), (125, 490), (610, 700)]);
    }

    #[test]
    fn too_many_ranges_only_grow() {
        let mut u = Used::new(u64::MAX);
        for i in 0..(MAX_RANGES as u64 + 10) {
            u.mark(i * 8, 1);
        }
        let m = u.finish();
        assert!(m.ranges().len() < MAX_RANGES);
        // Every marked byte is still used.
        for i in [0, 1, 12345, MAX_RANGES as u64 + 9] {
            assert!(m.any_used(i * 8, 1), "{i}");
        }
    }

    #[test]
    fn unknown_kinds_are_whole() {
        let mut read = |_: u64, len: usize| Ok(vec![0u8; len]);
        assert!(matches!(map("crypto_LUKS", &mut read, 1 << 20), Verdict::Whole(r) if r.contains("encrypted")));
        assert!(matches!(map("xfs", &mut read, 1 << 20), Verdict::Whole(_)));
        assert!(matches!(map("LVM2_member", &mut read, 1 << 20), Verdict::Whole(_)));
    }
}
