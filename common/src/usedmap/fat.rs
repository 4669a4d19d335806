//! Used-block map of FAT12, FAT16 and FAT32, read from the File
//! Allocation Table itself.
//!
//! Used: everything before the data area (boot sector, FSInfo, backup
//! boot sector and the rest of the reserved sectors, every FAT copy, the
//! FAT12/16 fixed root directory), every data cluster whose FAT entry is
//! not zero (in a chain, end of chain, or marked bad), the sectors after
//! the last whole cluster, and whatever lies past the filesystem's end.
//!
//! The FAT is streamed in pieces of at most [`MAX_READ`]; what is kept is
//! two bits per cluster (not free / pointed at), a sixteenth of a FAT32.
//! The FSInfo free count is only a hint that drivers leave stale, so it is
//! not read. Anything the Microsoft specification (FAT: General Overview
//! of On-Disk Format, 1.03) does not allow, copies of the FAT that
//! disagree, and a volume not cleanly unmounted take the partition whole.

use super::{read_checked, ReadFn, Used, MAX_READ};

/// Which FAT, by the count of data clusters (the specification's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

impl Kind {
    fn bits(self) -> u64 {
        match self {
            Kind::Fat12 => 12,
            Kind::Fat16 => 16,
            Kind::Fat32 => 32,
        }
    }

    /// The entry value marking a bad cluster.
    fn bad(self) -> u32 {
        match self {
            Kind::Fat12 => 0xFF7,
            Kind::Fat16 => 0xFFF7,
            Kind::Fat32 => 0x0FFF_FFF7,
        }
    }

    /// Bytes of FAT holding `entries` entries.
    fn fat_bytes(self, entries: u64) -> u64 {
        match self {
            Kind::Fat12 => entries.saturating_mul(3).div_ceil(2),
            Kind::Fat16 => entries.saturating_mul(2),
            Kind::Fat32 => entries.saturating_mul(4),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Fat12 => "FAT12",
            Kind::Fat16 => "FAT16",
            Kind::Fat32 => "FAT32",
        }
    }
}

/// What the boot sector says, checked (all offsets in bytes from the
/// partition start).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bpb {
    kind: Kind,
    cluster_bytes: u64,
    /// The first FAT.
    fat_offset: u64,
    /// One FAT copy.
    fat_bytes: u64,
    num_fats: u64,
    /// `None`: every copy is a mirror of the first; `Some(i)`: FAT32 with
    /// mirroring off, only copy `i` counts.
    active_fat: Option<u64>,
    /// Cluster 2.
    data_offset: u64,
    /// Data clusters: numbers `2..clusters + 2`.
    clusters: u32,
    fs_bytes: u64,
    media: u8,
    /// FAT32's root directory cluster.
    root_cluster: Option<u32>,
    /// The boot sector's "not cleanly unmounted" flag (Linux and Windows).
    dirty: bool,
}

fn le16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses and checks the BIOS Parameter Block in the first 512 bytes.
fn parse_bpb(b: &[u8]) -> Result<Bpb, String> {
    if b.len() < 512 {
        return Err("fat: boot sector shorter than 512 bytes".into());
    }
    if b[510] != 0x55 || b[511] != 0xAA {
        return Err("fat: boot sector has no 55 AA signature".into());
    }
    let bps = u64::from(le16(b, 11));
    if !matches!(bps, 512 | 1024 | 2048 | 4096) {
        return Err(format!("fat: invalid bytes per sector {bps}"));
    }
    let spc = u64::from(b[13]);
    if spc == 0 || !spc.is_power_of_two() {
        return Err(format!("fat: invalid sectors per cluster {spc}"));
    }
    let reserved = u64::from(le16(b, 14));
    if reserved == 0 {
        return Err("fat: no reserved sectors".into());
    }
    let num_fats = u64::from(b[16]);
    if num_fats == 0 {
        return Err("fat: no FAT copies".into());
    }
    let root_entries = u64::from(le16(b, 17));
    let (ts16, ts32) = (u64::from(le16(b, 19)), u64::from(le32(b, 32)));
    if ts16 != 0 && ts32 != 0 && ts16 != ts32 {
        return Err(format!("fat: total sector counts disagree ({ts16} and {ts32})"));
    }
    let total = if ts16 != 0 { ts16 } else { ts32 };
    if total == 0 {
        return Err("fat: zero total sectors".into());
    }
    let media = b[21];
    let fatsz16 = u64::from(le16(b, 22));
    // A zero 16-bit FAT size is the FAT32 layout (extended BPB at 36).
    let fat32_layout = fatsz16 == 0;
    let fat_sectors = if fat32_layout { u64::from(le32(b, 36)) } else { fatsz16 };
    if fat_sectors == 0 {
        return Err("fat: zero FAT size".into());
    }
    if fat32_layout && root_entries != 0 {
        return Err(format!("fat: FAT32 layout with {root_entries} fixed root directory entries"));
    }
    if !fat32_layout && root_entries == 0 {
        return Err("fat: FAT12/16 layout without root directory entries".into());
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let meta = num_fats
        .checked_mul(fat_sectors)
        .and_then(|f| f.checked_add(reserved))
        .and_then(|m| m.checked_add(root_sectors))
        .filter(|&m| m < total)
        .ok_or_else(|| format!("fat: metadata does not fit in the {total} sectors"))?;
    let count = (total - meta) / spc;
    let kind = if count < 4085 {
        Kind::Fat12
    } else if count < 65525 {
        Kind::Fat16
    } else {
        Kind::Fat32
    };
    // Linux reads the layout, Windows the count; where they disagree the
    // volume means different things to each.
    if fat32_layout != (kind == Kind::Fat32) {
        let layout = if fat32_layout { "FAT32" } else { "FAT12/16" };
        return Err(format!("fat: {layout} layout with {count} clusters (a {} by count): ambiguous type", kind.name()));
    }
    if count > 0x0FFF_FFF5 {
        return Err(format!("fat: {count} clusters are too many for FAT32"));
    }
    let clusters = u32::try_from(count).map_err(|_| format!("fat: {count} clusters"))?;
    if count == 0 {
        return Err("fat: no data clusters".into());
    }
    let fat_bytes = fat_sectors * bps;
    let needed = kind.fat_bytes(count + 2);
    if needed > fat_bytes {
        return Err(format!("fat: a FAT of {fat_bytes} bytes is too small for {count} clusters ({needed} bytes)"));
    }
    let (active_fat, root_cluster, state_at) = if kind == Kind::Fat32 {
        let ext_flags = le16(b, 40);
        if le16(b, 42) != 0 {
            return Err(format!("fat: unknown FAT32 version {:#06x}", le16(b, 42)));
        }
        let root = le32(b, 44);
        if root < 2 || u64::from(root) > count + 1 {
            return Err(format!("fat: FAT32 root cluster {root} outside 2..={}", count + 1));
        }
        let active = if ext_flags & 0x80 != 0 {
            let a = u64::from(ext_flags & 0x0F);
            if a >= num_fats {
                return Err(format!("fat: active FAT {a} but only {num_fats} copies"));
            }
            Some(a)
        } else {
            None
        };
        (active, Some(root), 64)
    } else {
        (None, None, 36)
    };
    // Drive number, state byte, extended boot signature (0x28 / 0x29).
    let dirty = matches!(b[state_at + 2], 0x28 | 0x29) && b[state_at + 1] & 1 != 0;
    Ok(Bpb {
        kind,
        cluster_bytes: spc * bps,
        fat_offset: reserved * bps,
        fat_bytes,
        num_fats,
        active_fat,
        data_offset: meta * bps,
        clusters,
        fs_bytes: total * bps,
        media,
        root_cluster,
        dirty,
    })
}

/// Entry `i` of a piece of FAT that starts at an entry boundary (for
/// FAT12 at an even entry).
fn entry(kind: Kind, buf: &[u8], i: usize) -> Option<u32> {
    match kind {
        Kind::Fat12 => {
            let off = i / 2 * 3 + i % 2;
            let v = u16::from_le_bytes([*buf.get(off)?, *buf.get(off + 1)?]);
            Some(u32::from(if i.is_multiple_of(2) { v & 0xFFF } else { v >> 4 }))
        }
        Kind::Fat16 => Some(u32::from(u16::from_le_bytes([*buf.get(2 * i)?, *buf.get(2 * i + 1)?]))),
        Kind::Fat32 => {
            let s = buf.get(4 * i..4 * i + 4)?;
            Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) & 0x0FFF_FFFF)
        }
    }
}

fn set_bit(map: &mut [u8], i: u64) {
    if let Some(b) = map.get_mut((i / 8) as usize) {
        *b |= 1 << (i % 8);
    }
}

fn bit(map: &[u8], i: u64) -> bool {
    map.get((i / 8) as usize).is_some_and(|b| b >> (i % 8) & 1 == 1)
}

/// Marks what the filesystem uses; Err(reason) takes the partition whole.
pub fn used(read: &mut ReadFn<'_>, size: u64, used: &mut Used) -> Result<(), String> {
    let boot = read_checked(read, size, 0, 512, "fat boot sector")?;
    let bpb = parse_bpb(&boot)?;
    if bpb.fs_bytes > size {
        return Err(format!(
            "fat: the filesystem ({} bytes) is larger than its partition ({size} bytes)",
            bpb.fs_bytes
        ));
    }
    if bpb.dirty {
        return Err("fat: volume not cleanly unmounted (boot sector dirty flag)".into());
    }
    let nonfree = scan_fat(read, size, &bpb)?;

    used.mark(0, bpb.data_offset);
    // Bit i is cluster i + 2, the first cluster of the data area.
    used.mark_bits(&nonfree, 0, bpb.cluster_bytes, bpb.data_offset);
    let data_end = bpb.data_offset + u64::from(bpb.clusters) * bpb.cluster_bytes;
    used.mark(data_end, bpb.fs_bytes.saturating_sub(data_end));
    used.mark_beyond(bpb.fs_bytes);
    Ok(())
}

/// Streams through the FAT (comparing the mirrors on the way) and
/// returns one bit per data cluster, set when its entry is not free.
fn scan_fat(read: &mut ReadFn<'_>, size: u64, bpb: &Bpb) -> Result<Vec<u8>, String> {
    let kind = bpb.kind;
    let clusters = u64::from(bpb.clusters);
    let entries = clusters + 2;
    let max = clusters + 1;
    let need = kind.fat_bytes(entries);
    let copy_at = |k: u64| bpb.fat_offset + k * bpb.fat_bytes;
    let active = bpb.active_fat.unwrap_or(0);
    let mirrors: Vec<u64> =
        if bpb.active_fat.is_some() { Vec::new() } else { (0..bpb.num_fats).filter(|&k| k != active).collect() };

    // Not free / pointed at by some entry: bit i is cluster i + 2.
    let map_len = usize::try_from(clusters.div_ceil(8)).map_err(|_| "fat: too many clusters".to_string())?;
    let mut nonfree = vec![0u8; map_len];
    let mut pointed = vec![0u8; map_len];

    // Pieces hold whole groups of entries (3 bytes = 2 FAT12 entries).
    let piece = (MAX_READ / 12 * 12) as u64;
    let mut done = 0u64;
    while done < need {
        let n = (need - done).min(piece);
        let mut buf = read_checked(read, size, copy_at(active) + done, n as usize, "FAT")?;
        for &k in &mirrors {
            let other = read_checked(read, size, copy_at(k) + done, n as usize, "FAT copy")?;
            if let Some(p) = buf.iter().zip(&other).position(|(a, b)| a != b) {
                let e = (done + p as u64) * 8 / kind.bits();
                return Err(format!("fat: FAT copies {} and {} differ at entry {e}", active + 1, k + 1));
            }
        }
        // The last FAT12 entry of an odd count ends mid-byte.
        buf.push(0);
        let first = done * 8 / kind.bits();
        let last = if done + n == need { entries } else { (done + n) * 8 / kind.bits() };
        for e in first..last {
            let v = entry(kind, &buf, (e - first) as usize).ok_or("fat: FAT piece shorter than its entries")?;
            match e {
                0 => {
                    if v & 0xFF != u32::from(bpb.media) {
                        return Err(format!(
                            "fat: FAT media byte {:#04x} is not the boot sector's {:#04x}",
                            v & 0xFF,
                            bpb.media
                        ));
                    }
                }
                1 => {
                    // Clean-shutdown and no-hard-error bits (FAT16/32).
                    let (clean, no_error) = match kind {
                        Kind::Fat12 => (true, true),
                        Kind::Fat16 => (v & 0x8000 != 0, v & 0x4000 != 0),
                        Kind::Fat32 => (v & 0x0800_0000 != 0, v & 0x0400_0000 != 0),
                    };
                    if !clean {
                        return Err("fat: volume not cleanly unmounted (FAT entry 1)".into());
                    }
                    if !no_error {
                        return Err("fat: volume had disk errors when last mounted (FAT entry 1)".into());
                    }
                }
                _ => {
                    let v64 = u64::from(v);
                    if v == 0 {
                        continue;
                    }
                    if (2..=max).contains(&v64) {
                        set_bit(&mut pointed, v64 - 2);
                    } else if v < kind.bad() {
                        return Err(format!("fat: FAT entry {e} points to cluster {v}, outside 2..={max}"));
                    }
                    // In a chain, end of chain, or bad: not free.
                    set_bit(&mut nonfree, e - 2);
                }
            }
        }
        done += n;
    }

    if let Some(i) = pointed.iter().zip(&nonfree).position(|(p, f)| p & !f != 0) {
        let byte = pointed[i] & !nonfree[i];
        let c = i as u64 * 8 + u64::from(byte.trailing_zeros()) + 2;
        return Err(format!("fat: a cluster chain leads to cluster {c}, which is free"));
    }
    if let Some(root) = bpb.root_cluster {
        if !bit(&nonfree, u64::from(root) - 2) {
            return Err(format!("fat: FAT32 root directory cluster {root} is free"));
        }
    }
    Ok(nonfree)
}

#[cfg(test)]
mod tests {
    use super::super::{map, UsedMap, Verdict};
    use super::*;
    use crate::testdata::noise;
    use crate::testfs::{tool, Scratch};
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// Runs a tool, panicking with its output unless it succeeds.
    fn run(name: &str, args: &[&str]) -> String {
        let out = Command::new(tool(name))
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap_or_else(|e| panic!("{name} {args:?}: {e}"));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{name} {args:?} failed: {text}");
        text
    }

    /// The verdict on an image file, read through the callback.
    fn map_file(path: &str, size: Option<u64>) -> Verdict {
        let f = std::fs::File::open(path).expect("open image");
        let size = size.unwrap_or_else(|| f.metadata().expect("stat").len());
        let mut read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
            assert!(len <= MAX_READ, "read of {len} bytes");
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, off).map_err(|e| e.to_string())?;
            Ok(buf)
        };
        map("vfat", &mut read, size)
    }

    fn used_only(v: Verdict) -> UsedMap {
        match v {
            Verdict::UsedOnly(m) => m,
            Verdict::Whole(r) => panic!("taken whole: {r}"),
        }
    }

    fn whole(v: Verdict) -> String {
        match v {
            Verdict::Whole(r) => r,
            Verdict::UsedOnly(m) => panic!("expected Whole, got a map of {} bytes", m.used_bytes()),
        }
    }

    /// `img` with everything `m` leaves unused zeroed.
    fn zeroed(img: &[u8], m: &UsedMap) -> Vec<u8> {
        let mut out = vec![0u8; img.len()];
        for &(s, e) in m.ranges() {
            out[s as usize..e as usize].copy_from_slice(&img[s as usize..e as usize]);
        }
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// A fresh filesystem made by mkfs.vfat.
    fn mkfs(s: &Scratch, size: u64, args: &[&str]) -> String {
        let img = s.path("img");
        let f = std::fs::File::create(&img).expect("image");
        f.set_len(size).expect("size image");
        let mut a = args.to_vec();
        a.push(&img);
        run("mkfs.vfat", &a);
        img
    }

    /// Fills `img` with directories and files (some written after a
    /// deletion, so they are fragmented), then deletes the files holding
    /// `marker`. Returns the surviving files (FAT path, content).
    fn populate(s: &Scratch, img: &str, scale: usize, marker: &str) -> Vec<(String, Vec<u8>)> {
        run("mmd", &["-i", img, "::/docs", "::/docs/deep", "::/empty"]);
        let mut kept = Vec::new();
        let mut doomed = Vec::new();
        let sizes = [0usize, 1, 511, 4096, 9000, 40_000 * scale, 150_000 * scale];
        for (i, &len) in sizes.iter().enumerate() {
            for (dir, seed) in [("::/docs", 1u64), ("::/docs/deep", 2)] {
                let name = format!("{dir}/f{i}.bin");
                kept.push((name, noise(seed * 100 + i as u64, len)));
                let mut m = marker.repeat(30_000 * scale / marker.len() + 1).into_bytes();
                m.extend_from_slice(&noise(seed * 1000 + i as u64, 777));
                doomed.push((format!("{dir}/gone{i}.bin"), m));
            }
        }
        let write = |(name, data): &(String, Vec<u8>)| {
            let local = s.path("src");
            std::fs::write(&local, data).expect("write source");
            run("mcopy", &["-i", img, "-o", &local, name]);
        };
        // Interleave, so that deleting leaves holes between kept files.
        for (k, d) in kept.iter().zip(&doomed) {
            write(k);
            write(d);
        }
        for (name, _) in &doomed {
            run("mdel", &["-i", img, name]);
        }
        // Written into the holes: fragmented chains. Whole clusters, so
        // no deleted bytes stay behind in its last cluster's slack.
        let late = (String::from("::/late.bin"), noise(99, 64 * 1024 * scale));
        write(&late);
        kept.push(late);
        kept
    }

    /// The full check on one populated filesystem.
    fn check_populated(tag: &str, size: u64, args: &[&str], scale: usize) {
        let s = Scratch::new(tag);
        let img = mkfs(&s, size, args);
        let marker = format!("BV-DELETED-MARKER-{tag}-");
        let files = populate(&s, &img, scale, &marker);
        let orig = std::fs::read(&img).expect("read image");
        assert!(contains(&orig, marker.as_bytes()), "{tag}: the deleted data is not on the image to begin with");

        let m = used_only(map_file(&img, None));
        let copy = s.path("copy");
        std::fs::write(&copy, zeroed(&orig, &m)).expect("write copy");

        run("fsck.vfat", &["-n", &copy]);
        let out = s.path("out");
        for (name, data) in &files {
            let _ = std::fs::remove_file(&out);
            run("mcopy", &["-i", &copy, name, &out]);
            assert!(std::fs::read(&out).expect("read back") == *data, "{tag}: {name} differs in the zeroed copy");
        }
        let copy_bytes = std::fs::read(&copy).expect("read copy");
        assert!(!contains(&copy_bytes, marker.as_bytes()), "{tag}: deleted data survived zeroing");
        let data: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
        assert!(m.used_bytes() < data + size / 10, "{tag}: {} bytes used for {data} bytes of files", m.used_bytes());
    }

    #[test]
    fn fat12_populated() {
        check_populated("fat12", 2 * MIB, &["-F", "12"], 1);
    }

    #[test]
    fn fat16_populated() {
        check_populated("fat16", 32 * MIB, &["-F", "16"], 4);
    }

    #[test]
    fn fat16_4k_sectors_populated() {
        check_populated("fat16-4k", 32 * MIB, &["-F", "16", "-S", "4096", "-s", "1"], 4);
    }

    #[test]
    fn fat32_populated() {
        check_populated("fat32", 64 * MIB, &["-F", "32"], 4);
    }

    #[test]
    fn empty_filesystems_are_small() {
        for (tag, size, args) in [
            ("e12", 4 * MIB, &["-F", "12"][..]),
            ("e16", 64 * MIB, &["-F", "16"][..]),
            ("e32", 64 * MIB, &["-F", "32", "-s", "1"][..]),
        ] {
            let s = Scratch::new(tag);
            let img = mkfs(&s, size, args);
            let m = used_only(map_file(&img, None));
            assert!(m.used_bytes() < size / 10, "{tag}: {} of {size} bytes used", m.used_bytes());
            // Larger partition than filesystem: the rest is kept.
            let f = std::fs::OpenOptions::new().write(true).open(&img).expect("open");
            f.set_len(size + MIB).expect("grow");
            let m = used_only(map_file(&img, None));
            assert!(m.ranges().last().expect("ranges").1 == size + MIB && m.any_used(size, MIB), "{tag}");
        }
    }

    #[test]
    fn fat32_layout_with_few_clusters_is_whole() {
        // mkfs.fat makes this (with a warning); Linux reads it as FAT32,
        // the specification's count says FAT16.
        let s = Scratch::new("ambiguous");
        let img = mkfs(&s, 32 * MIB, &["-F", "32", "-S", "4096"]);
        assert!(whole(map_file(&img, None)).contains("ambiguous"));
    }

    /// A populated image, its BPB, and a way to poke FAT entries.
    struct Damage {
        _s: Scratch,
        img: String,
        bpb: Bpb,
    }

    impl Damage {
        fn new(tag: &str, size: u64, args: &[&str]) -> Damage {
            let s = Scratch::new(tag);
            let img = mkfs(&s, size, args);
            populate(&s, &img, 1, "damage");
            let head = std::fs::read(&img).expect("read")[..512].to_vec();
            let bpb = parse_bpb(&head).expect("bpb");
            assert!(matches!(map_file(&img, None), Verdict::UsedOnly(_)), "{tag}: undamaged is not mapped");
            Damage { _s: s, img, bpb }
        }

        fn get(&self, copy: u64, e: u64) -> u32 {
            let img = std::fs::read(&self.img).expect("read");
            let at = (self.bpb.fat_offset + copy * self.bpb.fat_bytes) as usize;
            entry(self.bpb.kind, &img[at..], e as usize).expect("entry")
        }

        /// Sets entry `e` in the given FAT copies.
        fn set(&self, copies: &[u64], e: u64, v: u32) {
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&self.img).expect("open");
            for &c in copies {
                let at = self.bpb.fat_offset + c * self.bpb.fat_bytes;
                match self.bpb.kind {
                    Kind::Fat12 => {
                        let off = at + e / 2 * 3 + e % 2;
                        let mut b = [0u8; 2];
                        f.read_exact_at(&mut b, off).expect("read");
                        let old = u16::from_le_bytes(b);
                        let new =
                            if e.is_multiple_of(2) { old & 0xF000 | v as u16 } else { old & 0x000F | (v as u16) << 4 };
                        f.write_all_at(&new.to_le_bytes(), off).expect("write");
                    }
                    Kind::Fat16 => f.write_all_at(&(v as u16).to_le_bytes(), at + 2 * e).expect("write"),
                    Kind::Fat32 => f.write_all_at(&v.to_le_bytes(), at + 4 * e).expect("write"),
                }
            }
        }

        fn poke(&self, off: u64, bytes: &[u8]) {
            let f = std::fs::OpenOptions::new().write(true).open(&self.img).expect("open");
            f.write_all_at(bytes, off).expect("write");
        }

        /// The first free data cluster and the first cluster in a chain.
        fn free_and_chained(&self) -> (u64, u64) {
            let n = u64::from(self.bpb.clusters) + 2;
            let free = (2..n).find(|&c| self.get(0, c) == 0).expect("a free cluster");
            let chained = (2..n).find(|&c| (2..n).contains(&u64::from(self.get(0, c)))).expect("a chain");
            (free, chained)
        }

        fn verdict(&self) -> Verdict {
            map_file(&self.img, None)
        }
    }

    #[test]
    fn damaged_fat16_is_whole() {
        let d = Damage::new("dmg16", 16 * MIB, &["-F", "16"]);
        let (free, chained) = d.free_and_chained();

        // One copy changed: an interrupted update.
        d.set(&[0], free, 0xFFFF);
        assert!(whole(d.verdict()).contains(&format!("differ at entry {free}")));
        d.set(&[0], free, 0);

        // Dirty in FAT entry 1, and in the boot sector.
        let e1 = d.get(0, 1);
        d.set(&[0, 1], 1, e1 & !0x8000);
        assert!(whole(d.verdict()).contains("not cleanly unmounted"));
        d.set(&[0, 1], 1, e1 & !0x4000);
        assert!(whole(d.verdict()).contains("disk errors"));
        d.set(&[0, 1], 1, e1);
        d.poke(37, &[1]);
        assert!(whole(d.verdict()).contains("not cleanly unmounted"));
        d.poke(37, &[0]);

        // Entries out of range, and a chain into a free cluster.
        d.set(&[0, 1], free, d.bpb.clusters + 2);
        assert!(whole(d.verdict()).contains("outside"), "past the last cluster");
        d.set(&[0, 1], free, 1);
        assert!(whole(d.verdict()).contains("outside"), "reserved value 1");
        d.set(&[0, 1], free, 0);
        let next = d.get(0, chained);
        d.set(&[0, 1], chained, free as u32);
        assert!(whole(d.verdict()).contains(&format!("leads to cluster {free}")));
        d.set(&[0, 1], chained, next);

        // Media byte.
        let e0 = d.get(0, 0);
        d.set(&[0, 1], 0, e0 ^ 0x01);
        assert!(whole(d.verdict()).contains("media"));
        d.set(&[0, 1], 0, e0);

        // A bad cluster is kept, harmlessly.
        d.set(&[0, 1], free, 0xFFF7);
        let m = used_only(d.verdict());
        assert!(m.any_used(d.bpb.data_offset + (free - 2) * d.bpb.cluster_bytes, 1));
        d.set(&[0, 1], free, 0);

        // The partition is shorter than the filesystem.
        let len = std::fs::metadata(&d.img).expect("stat").len();
        assert!(whole(map_file(&d.img, Some(len - 512))).contains("larger than its partition"));

        // The boot sector signature.
        d.poke(510, &[0, 0]);
        assert!(whole(d.verdict()).contains("signature"));
    }

    #[test]
    fn damaged_fat32_is_whole() {
        let d = Damage::new("dmg32", 64 * MIB, &["-F", "32", "-s", "1"]);
        let (free, _) = d.free_and_chained();

        d.set(&[1], free, 0x0FFF_FFFF);
        assert!(whole(d.verdict()).contains(&format!("FAT copies 1 and 2 differ at entry {free}")));
        d.set(&[1], free, 0);

        let e1 = d.get(0, 1);
        d.set(&[0, 1], 1, e1 & !0x0800_0000);
        assert!(whole(d.verdict()).contains("not cleanly unmounted"));
        d.set(&[0, 1], 1, e1);
        d.poke(65, &[1]);
        assert!(whole(d.verdict()).contains("not cleanly unmounted"));
        d.poke(65, &[0]);

        // The upper four bits are not part of the entry.
        d.set(&[0, 1], free, 0xF000_0000);
        assert!(matches!(d.verdict(), Verdict::UsedOnly(_)));
        d.set(&[0, 1], free, 0x0FFF_FFF0);
        assert!(whole(d.verdict()).contains("outside"));
        d.set(&[0, 1], free, 0);

        // The root directory cluster free.
        let root = u64::from(d.bpb.root_cluster.expect("FAT32 root"));
        let v = d.get(0, root);
        d.set(&[0, 1], root, 0);
        assert!(whole(d.verdict()).contains("root directory cluster"));
        d.set(&[0, 1], root, v);

        // Mirroring off (ExtFlags bit 7), FAT 2 active: copy 1 no longer
        // counts, so differing copies are fine and copy 2 is read.
        d.poke(40, &[0x81, 0]);
        d.set(&[0], free, 0x0FFF_FFFF);
        let m = used_only(d.verdict());
        assert!(!m.any_used(d.bpb.data_offset + (free - 2) * d.bpb.cluster_bytes, 1));
        d.set(&[1], free, 0x0FFF_FFFF);
        let m = used_only(d.verdict());
        assert!(m.any_used(d.bpb.data_offset + (free - 2) * d.bpb.cluster_bytes, 1));
        d.poke(40, &[0x82, 0]);
        assert!(whole(d.verdict()).contains("active FAT"));
    }

    /// A minimal FAT12 boot sector: 512-byte sectors, 4 per cluster, 1
    /// reserved, 2 FATs of 2 sectors, 64 root entries, 2048 sectors.
    fn fat12_boot() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 4;
        b[14..16].copy_from_slice(&1u16.to_le_bytes());
        b[16] = 2;
        b[17..19].copy_from_slice(&64u16.to_le_bytes());
        b[19..21].copy_from_slice(&2048u16.to_le_bytes());
        b[21] = 0xF8;
        b[22..24].copy_from_slice(&2u16.to_le_bytes());
        b[38] = 0x29;
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn bpb_from_literal_bytes() {
        let b = fat12_boot();
        let p = parse_bpb(&b).expect("valid");
        // 1 + 2 * 2 + 4 root sectors = 9; (2048 - 9) / 4 = 509 clusters.
        assert_eq!(
            (p.kind, p.clusters, p.data_offset, p.fat_offset, p.fat_bytes),
            (Kind::Fat12, 509, 9 * 512, 512, 1024)
        );
        assert_eq!((p.cluster_bytes, p.fs_bytes, p.dirty), (2048, 2048 * 512, false));

        let bad = |f: &dyn Fn(&mut Vec<u8>), what: &str| {
            let mut b = fat12_boot();
            f(&mut b);
            let e = parse_bpb(&b).expect_err(what);
            assert!(e.starts_with("fat: "), "{e}");
        };
        bad(&|b| b[11..13].copy_from_slice(&768u16.to_le_bytes()), "sector size");
        bad(&|b| b[13] = 3, "cluster size");
        bad(&|b| b[14] = 0, "reserved");
        bad(&|b| b[16] = 0, "FATs");
        bad(&|b| b[17] = 0, "root entries");
        bad(&|b| b[19..21].copy_from_slice(&9u16.to_le_bytes()), "metadata past the end");
        bad(&|b| b[32..36].copy_from_slice(&4096u32.to_le_bytes()), "two sizes");
        bad(&|b| b[22] = 1, "FAT too small");
        bad(&|b| b[22..24].copy_from_slice(&[0, 0]), "FAT32 layout, FAT12 count");

        let mut b = fat12_boot();
        b[37] = 1;
        assert!(parse_bpb(&b).expect("valid").dirty);
    }

    #[test]
    fn fat12_entries_share_bytes() {
        // Entries 0xABC, 0xDEF, 0x123 packed as FAT12 does.
        let buf = [0xBC, 0xFA, 0xDE, 0x23, 0x01];
        assert_eq!(entry(Kind::Fat12, &buf, 0), Some(0xABC));
        assert_eq!(entry(Kind::Fat12, &buf, 1), Some(0xDEF));
        assert_eq!(entry(Kind::Fat12, &buf, 2), Some(0x123));
        assert_eq!(entry(Kind::Fat12, &buf, 3), None);
        assert_eq!(entry(Kind::Fat32, &[0xFF, 0xFF, 0xFF, 0xFF], 0), Some(0x0FFF_FFFF));
    }
}
