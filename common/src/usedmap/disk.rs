//! The whole disk's plan: which partitions are taken used-only, which
//! whole and why, and the disk ranges that are free space of a filesystem
//! taken used-only. Everything else (the partition table, gaps between
//! partitions, EBRs, boot code, partitions taken whole) is used.

use super::{map, ReadFn, Verdict};
use crate::fsprobe;
use crate::image::PartitionRecord;
use crate::partition;

/// What the backup does with one chunk's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkUse {
    /// Every byte is used: read it all.
    Used,
    /// No byte is used: do not read it.
    Unused,
    /// Read it, then zero these ranges (relative to the chunk's start).
    Partly(Vec<(usize, usize)>),
}

/// The disk's plan, made once before a backup reads any chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskPlan {
    pub partitions: Vec<PartitionRecord>,
    /// Disk byte ranges that are free space: sorted, disjoint.
    unused: Vec<(u64, u64)>,
}

impl DiskPlan {
    /// Free bytes the backup neither reads nor stores.
    pub fn unused_bytes(&self) -> u64 {
        self.unused.iter().map(|&(s, e)| e - s).sum()
    }

    /// The free ranges of the disk, sorted.
    pub fn unused_ranges(&self) -> &[(u64, u64)] {
        &self.unused
    }

    /// How to take the chunk at `[off, off + len)`.
    pub fn chunk(&self, off: u64, len: usize) -> ChunkUse {
        let end = off + len as u64;
        let first = self.unused.partition_point(|&(_, e)| e <= off);
        let mut holes = Vec::new();
        for &(s, e) in self.unused[first..].iter().take_while(|&&(s, _)| s < end) {
            holes.push(((s.max(off) - off) as usize, (e.min(end) - off) as usize));
        }
        match holes.as_slice() {
            [] => ChunkUse::Used,
            [(0, e)] if *e == len => ChunkUse::Unused,
            _ => ChunkUse::Partly(holes),
        }
    }

    /// Zeroes the free ranges of `buf`, which holds the disk's bytes at `off`.
    pub fn mask(&self, off: u64, buf: &mut [u8]) {
        match self.chunk(off, buf.len()) {
            ChunkUse::Used => {}
            ChunkUse::Unused => buf.fill(0),
            ChunkUse::Partly(holes) => {
                for (s, e) in holes {
                    buf[s..e].fill(0);
                }
            }
        }
    }
}

/// Reads the partition table and every partition's allocation map of a
/// disk of `disk_bytes` bytes with `sector_size`-byte sectors. `raw`
/// takes every partition whole (and still records what it holds).
pub fn plan(read: &mut ReadFn<'_>, disk_bytes: u64, sector_size: u32, raw: bool) -> DiskPlan {
    // (number, start, bytes) of the partitions that hold data themselves.
    let mut parts: Vec<(u32, u64, u64)> = Vec::new();
    match partition::parse(read, sector_size, disk_bytes) {
        Ok(Some(t)) => {
            for p in t.partitions.iter().filter(|p| p.type_name != "Extended") {
                let start = p.start_lba.saturating_mul(u64::from(t.sector_size));
                let bytes = p.sectors.saturating_mul(u64::from(t.sector_size));
                parts.push((p.number, start, bytes));
            }
        }
        // A filesystem on the whole disk (a "superfloppy" USB stick).
        Ok(None) => parts.push((0, 0, disk_bytes)),
        // A damaged table: nothing is known to be free, the disk is taken whole.
        Err(_) => return DiskPlan::default(),
    }
    let mut sorted = parts.clone();
    sorted.sort_by_key(|&(_, s, _)| s);
    let overlap = sorted.windows(2).any(|w| w[0].1.saturating_add(w[0].2) > w[1].1);
    let mut plan = DiskPlan::default();
    for (number, start, bytes) in parts {
        // A partition past the disk's end is taken as far as the disk goes.
        let bytes = bytes.min(disk_bytes.saturating_sub(start));
        if bytes == 0 {
            continue;
        }
        let mut part_read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
            if off.checked_add(len as u64).is_none_or(|e| e > bytes) {
                return Err(format!("{len} bytes at {off} lie past the partition's end"));
            }
            read(start + off, len)
        };
        let fs = fsprobe::probe(&mut part_read, bytes);
        if number == 0 && fs.is_none() {
            // No table and nothing recognised: a disk of raw bytes.
            continue;
        }
        let kind = fs.as_ref().map(|f| f.kind).unwrap_or("");
        let verdict = if raw {
            Verdict::Whole("mode=raw".into())
        } else if overlap {
            Verdict::Whole("partitions overlap in the table".into())
        } else if kind.is_empty() {
            Verdict::Whole("no filesystem recognised".into())
        } else {
            map(kind, &mut part_read, bytes)
        };
        let record = |used_only, used_bytes, note: String| PartitionRecord {
            number,
            start,
            bytes,
            fs: kind.to_owned(),
            used_only,
            used_bytes,
            note,
        };
        match verdict {
            Verdict::Whole(note) => plan.partitions.push(record(false, bytes, note)),
            Verdict::UsedOnly(m) => {
                let mut at = 0;
                for &(s, e) in m.ranges() {
                    if s > at {
                        plan.unused.push((start + at, start + s));
                    }
                    at = e;
                }
                if at < bytes {
                    plan.unused.push((start + at, start + bytes));
                }
                plan.partitions.push(record(true, m.used_bytes(), String::new()));
            }
        }
    }
    plan.unused.sort_unstable();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::PartitionRecord;

    fn with_unused(unused: Vec<(u64, u64)>) -> DiskPlan {
        DiskPlan { partitions: Vec::<PartitionRecord>::new(), unused }
    }

    #[test]
    fn chunk_classes() {
        let p = with_unused(vec![(100, 200), (300, 1000)]);
        assert_eq!(p.chunk(0, 100), ChunkUse::Used);
        assert_eq!(p.chunk(100, 100), ChunkUse::Unused);
        assert_eq!(p.chunk(400, 100), ChunkUse::Unused);
        assert_eq!(p.chunk(150, 200), ChunkUse::Partly(vec![(0, 50), (150, 200)]));
        assert_eq!(p.chunk(900, 200), ChunkUse::Partly(vec![(0, 100)]));
        let mut buf = vec![7u8; 200];
        p.mask(150, &mut buf);
        assert!(buf[..50].iter().all(|&b| b == 0) && buf[50..150].iter().all(|&b| b == 7));
        assert!(buf[150..].iter().all(|&b| b == 0));
        assert_eq!(p.unused_bytes(), 800);
    }

    #[test]
    fn raw_bytes_without_table_plan_nothing() {
        let disk = crate::testdata::noise(3, 1 << 20);
        let mut read = |off: u64, len: usize| Ok(disk[off as usize..off as usize + len].to_vec());
        let p = plan(&mut read, disk.len() as u64, 512, false);
        assert!(p.partitions.is_empty());
        assert_eq!(p.unused_bytes(), 0);
    }
}
