//! Used-block map of exFAT, read from its Allocation Bitmap.
//!
//! Used: the main and backup boot regions (24 sectors), the FATs (not the
//! alignment gaps around them), every cluster whose bit is set in the
//! Allocation Bitmap of the active FAT, the clusters of both bitmaps,
//! the up-case table and the root directory, the sectors after the last
//! cluster, and whatever lies past the volume's end.
//!
//! The bitmap is found through the root directory, whose cluster chain is
//! walked in the active FAT (bounded: a directory is at most 256 MiB, so
//! a cycle ends the walk). Checked before the bitmap is trusted: the boot
//! region checksum, the VolumeDirty flag, the geometry (exFAT
//! specification 1.00, Microsoft), the bitmap's length, and that the
//! bitmap marks its own clusters, the up-case table's and the root
//! directory's. Any doubt takes the partition whole.

use super::{read_checked, ReadFn, Used, MAX_READ};

/// A directory (the root) is at most this long (exFAT spec 6.2).
const MAX_DIR_BYTES: u64 = 256 << 20;

/// FAT values: end of a chain, and the highest valid cluster number.
const FAT_EOC: u32 = 0xFFFF_FFFF;
const MAX_CLUSTERS: u32 = 0xFFFF_FFF5;

/// What the main boot sector says, checked (offsets in bytes from the
/// partition start).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Boot {
    sector_bytes: u64,
    cluster_bytes: u64,
    /// The active FAT.
    fat_offset: u64,
    /// All FATs.
    fats_offset: u64,
    fats_bytes: u64,
    /// The first byte of cluster 2.
    heap_offset: u64,
    /// Clusters `2..clusters + 2`.
    clusters: u32,
    root_cluster: u32,
    fs_bytes: u64,
    num_fats: u8,
    /// 0 or 1: which FAT and which Allocation Bitmap count.
    active_fat: u8,
    dirty: bool,
}

fn le16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// Parses and checks the main boot sector (its first 512 bytes).
fn parse_boot(b: &[u8]) -> Result<Boot, String> {
    if b.len() < 512 {
        return Err("exfat: boot sector shorter than 512 bytes".into());
    }
    if &b[3..11] != b"EXFAT   " {
        return Err("exfat: no EXFAT signature in the boot sector".into());
    }
    if b[11..64].iter().any(|&x| x != 0) {
        return Err("exfat: MustBeZero bytes of the boot sector are not zero".into());
    }
    if b[510] != 0x55 || b[511] != 0xAA {
        return Err("exfat: boot sector has no 55 AA signature".into());
    }
    if b[105] != 1 {
        return Err(format!("exfat: unknown revision {}.{}", b[105], b[104]));
    }
    let bps_shift = u32::from(b[108]);
    let spc_shift = u32::from(b[109]);
    if !(9..=12).contains(&bps_shift) {
        return Err(format!("exfat: invalid BytesPerSectorShift {bps_shift}"));
    }
    if spc_shift > 25 - bps_shift {
        return Err(format!("exfat: invalid SectorsPerClusterShift {spc_shift}"));
    }
    let num_fats = b[110];
    if !matches!(num_fats, 1 | 2) {
        return Err(format!("exfat: invalid NumberOfFats {num_fats}"));
    }
    let flags = le16(b, 106);
    let active_fat = (flags & 1) as u8;
    if active_fat >= num_fats {
        return Err("exfat: second FAT active but only one FAT".into());
    }
    let sectors = le64(b, 72);
    let fat_offset = u64::from(le32(b, 80));
    let fat_length = u64::from(le32(b, 84));
    let heap = u64::from(le32(b, 88));
    let clusters = le32(b, 92);
    let root = le32(b, 96);
    let fs_bytes = sectors.checked_shl(bps_shift).filter(|&v| v >> bps_shift == sectors);
    let fs_bytes = fs_bytes.ok_or_else(|| format!("exfat: VolumeLength {sectors} sectors overflows"))?;
    if fat_offset < 24 {
        return Err(format!("exfat: FatOffset {fat_offset} inside the boot regions"));
    }
    if clusters == 0 || clusters > MAX_CLUSTERS {
        return Err(format!("exfat: invalid ClusterCount {clusters}"));
    }
    let fat_need = (u64::from(clusters) + 2) * 4;
    if fat_length << bps_shift < fat_need {
        return Err(format!("exfat: FatLength {fat_length} sectors too small for {clusters} clusters"));
    }
    // All u32 sector counts shifted by at most 12 bits: no overflow in u64.
    if heap < fat_offset + fat_length * u64::from(num_fats) {
        return Err(format!("exfat: ClusterHeapOffset {heap} overlaps the FATs"));
    }
    (u64::from(clusters) << spc_shift)
        .checked_add(heap)
        .filter(|&end| end <= sectors)
        .ok_or_else(|| format!("exfat: {clusters} clusters from sector {heap} pass VolumeLength {sectors}"))?;
    if root < 2 || root > clusters + 1 {
        return Err(format!("exfat: root directory cluster {root} outside 2..={}", u64::from(clusters) + 1));
    }
    Ok(Boot {
        sector_bytes: 1 << bps_shift,
        cluster_bytes: 1 << (bps_shift + spc_shift),
        fat_offset: (fat_offset + fat_length * u64::from(active_fat)) << bps_shift,
        fats_offset: fat_offset << bps_shift,
        fats_bytes: (fat_length * u64::from(num_fats)) << bps_shift,
        heap_offset: heap << bps_shift,
        clusters,
        root_cluster: root,
        fs_bytes,
        num_fats,
        active_fat,
        dirty: flags & 2 != 0,
    })
}

/// The boot region checksum over sectors 0..=10, leaving out
/// VolumeFlags and PercentInUse (exFAT spec 3.4).
fn boot_checksum(region: &[u8]) -> u32 {
    region
        .iter()
        .enumerate()
        .filter(|&(i, _)| !matches!(i, 106 | 107 | 112))
        .fold(0u32, |sum, (_, &b)| sum.rotate_right(1).wrapping_add(u32::from(b)))
}

/// The active FAT, read through a small cache (chains are mostly
/// ascending runs).
struct Fat {
    offset: u64,
    clusters: u32,
    cache_at: u64,
    cache: Vec<u8>,
}

/// Bytes of FAT read at a time while following chains.
const FAT_PIECE: u64 = 64 << 10;

impl Fat {
    /// The FAT entry of `cluster` (in `2..clusters + 2`).
    fn next(&mut self, read: &mut ReadFn<'_>, size: u64, cluster: u32) -> Result<u32, String> {
        let at = u64::from(cluster) * 4;
        if at < self.cache_at || at + 4 > self.cache_at + self.cache.len() as u64 {
            let end = (u64::from(self.clusters) + 2) * 4;
            let start = at / FAT_PIECE * FAT_PIECE;
            let len = (end - start).min(FAT_PIECE);
            self.cache = read_checked(read, size, self.offset + start, len as usize, "exfat FAT")?;
            self.cache_at = start;
        }
        Ok(le32(&self.cache, (at - self.cache_at) as usize))
    }

    /// The clusters of the chain from `first`: `count` of them if given
    /// (the chain must be at least that long), else up to the end of the
    /// chain, at most `limit`.
    fn chain(
        &mut self,
        read: &mut ReadFn<'_>,
        size: u64,
        first: u32,
        count: Option<u64>,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u32>, String> {
        let max = u64::from(self.clusters) + 1;
        let valid = |c: u32| c >= 2 && u64::from(c) <= max;
        if !valid(first) {
            return Err(format!("exfat: {what} starts at cluster {first}, outside the cluster heap"));
        }
        let want = count.unwrap_or(limit);
        // Longer than the heap is a cycle, and would be a huge list.
        if want > u64::from(self.clusters) && count.is_some() {
            return Err(format!("exfat: {what} of {want} clusters, more than the heap holds"));
        }
        let mut out = Vec::new();
        let mut c = first;
        loop {
            out.push(c);
            if out.len() as u64 >= want {
                if count.is_none() && self.next(read, size, c)? != FAT_EOC {
                    return Err(format!("exfat: {what} chain longer than {limit} clusters (a cycle?)"));
                }
                return Ok(out);
            }
            let next = self.next(read, size, c)?;
            if next == FAT_EOC {
                if count.is_some() {
                    return Err(format!("exfat: {what} chain ends after {} of {want} clusters", out.len()));
                }
                return Ok(out);
            }
            if !valid(next) {
                return Err(format!("exfat: {what} chain: cluster {c} links to {next:#x}"));
            }
            c = next;
        }
    }

    /// [`Fat::chain`], refusing chains that visit a cluster twice.
    fn chain_once(
        &mut self,
        read: &mut ReadFn<'_>,
        size: u64,
        first: u32,
        count: Option<u64>,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u32>, String> {
        let chain = self.chain(read, size, first, count, limit, what)?;
        let mut sorted = chain.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("exfat: {what} chain visits cluster {} twice", w[0]));
        }
        Ok(chain)
    }
}

/// A primary entry of the root directory that owns clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    first: u32,
    len: u64,
}

/// What the root directory says about the bitmaps and up-case table.
#[derive(Debug, Default)]
struct Root {
    bitmaps: [Option<Extent>; 2],
    upcase: Option<Extent>,
}

/// Reads the entries of one piece of the root directory; false once the
/// end-of-directory entry is met.
fn root_entries(piece: &[u8], root: &mut Root) -> Result<bool, String> {
    for e in piece.chunks_exact(32) {
        let extent = Extent { first: le32(e, 20), len: le64(e, 24) };
        match e[0] {
            0x00 => return Ok(false),
            0x81 => {
                let slot = &mut root.bitmaps[usize::from(e[1] & 1)];
                if slot.replace(extent).is_some() {
                    return Err("exfat: two Allocation Bitmaps for the same FAT".into());
                }
            }
            0x82 => {
                if root.upcase.replace(extent).is_some() {
                    return Err("exfat: two up-case tables".into());
                }
            }
            // Volume label, file.
            0x83 | 0x85 => {}
            // Unused or deleted entries, benign ones, secondary ones.
            t if t & 0x80 == 0 || t & 0x20 != 0 || t & 0x40 != 0 => {}
            t => return Err(format!("exfat: unknown critical directory entry {t:#04x} in the root")),
        }
    }
    Ok(true)
}

/// Marks what the filesystem uses; Err(reason) takes the partition whole.
pub fn used(read: &mut ReadFn<'_>, size: u64, used: &mut Used) -> Result<(), String> {
    let head = read_checked(read, size, 0, 512, "exfat boot sector")?;
    let boot = parse_boot(&head)?;
    if boot.fs_bytes > size {
        return Err(format!("exfat: the volume ({} bytes) is larger than its partition ({size} bytes)", boot.fs_bytes));
    }
    if boot.dirty {
        return Err("exfat: volume not cleanly unmounted (VolumeDirty)".into());
    }
    let sb = boot.sector_bytes as usize;
    let region = read_checked(read, size, 0, 12 * sb, "exfat boot region")?;
    let sum = boot_checksum(&region[..11 * sb]);
    if region[11 * sb..].chunks_exact(4).any(|c| le32(c, 0) != sum) {
        return Err("exfat: boot region checksum mismatch".into());
    }

    let cb = boot.cluster_bytes;
    let cluster_at = |c: u32| boot.heap_offset + (u64::from(c) - 2) * cb;
    let mut fat = Fat { offset: boot.fat_offset, clusters: boot.clusters, cache_at: 0, cache: Vec::new() };

    // The root directory: its chain, then its entries up to the end mark.
    let dir_limit = (MAX_DIR_BYTES / cb).max(1);
    let root_chain = fat.chain_once(read, size, boot.root_cluster, None, dir_limit, "root directory")?;
    let mut root = Root::default();
    'walk: for &c in &root_chain {
        let mut at = 0u64;
        while at < cb {
            let n = (cb - at).min(MAX_READ as u64);
            let piece = read_checked(read, size, cluster_at(c) + at, n as usize, "exfat root directory")?;
            if !root_entries(&piece, &mut root)? {
                break 'walk;
            }
            at += n;
        }
    }

    let active = usize::from(boot.active_fat);
    let bitmap_len = u64::from(boot.clusters).div_ceil(8);
    let mut bitmap_chains = Vec::new();
    for (i, bm) in root.bitmaps.iter().enumerate().take(usize::from(boot.num_fats)) {
        let bm = bm.ok_or_else(|| format!("exfat: no Allocation Bitmap for FAT {}", i + 1))?;
        if bm.len != bitmap_len {
            return Err(format!(
                "exfat: Allocation Bitmap {} is {} bytes, not {bitmap_len} for {} clusters",
                i + 1,
                bm.len,
                boot.clusters
            ));
        }
        bitmap_chains.push(fat.chain_once(read, size, bm.first, Some(bm.len.div_ceil(cb)), 0, "Allocation Bitmap")?);
    }
    let upcase = root.upcase.ok_or("exfat: no up-case table in the root directory")?;
    // A full table maps all 65536 UTF-16 units: 128 KiB.
    if upcase.len == 0 || upcase.len > 128 << 10 {
        return Err(format!("exfat: up-case table of {} bytes", upcase.len));
    }
    let upcase_chain = fat.chain_once(read, size, upcase.first, Some(upcase.len.div_ceil(cb)), 0, "up-case table")?;

    // Clusters the bitmap must mark as allocated.
    let mut required: Vec<u32> =
        root_chain.iter().chain(&bitmap_chains[active]).chain(&upcase_chain).copied().collect();
    required.sort_unstable();
    required.dedup();

    // Stream the active bitmap along its chain.
    let mut next_required = required.iter().peekable();
    let mut byte = 0u64;
    for &c in &bitmap_chains[active] {
        let mut at = 0u64;
        while at < cb && byte < bitmap_len {
            let n = (cb - at).min(bitmap_len - byte).min(MAX_READ as u64);
            let piece = read_checked(read, size, cluster_at(c) + at, n as usize, "exfat Allocation Bitmap")?;
            let end_bit = (byte + n) * 8;
            while let Some(&&r) = next_required.peek() {
                let bit = u64::from(r) - 2;
                if bit >= end_bit {
                    break;
                }
                let local = bit - byte * 8;
                if piece[(local / 8) as usize] >> (local % 8) & 1 == 0 {
                    return Err(format!("exfat: metadata cluster {r} is free in the Allocation Bitmap"));
                }
                next_required.next();
            }
            // Bit i is cluster i + 2, the first of the heap.
            used.mark_bits(&piece, byte * 8, cb, boot.heap_offset);
            byte += n;
            at += n;
        }
    }

    if let Some(&r) = next_required.next() {
        return Err(format!("exfat: metadata cluster {r} lies past the Allocation Bitmap"));
    }

    // The boot regions and the FATs; the alignment gaps around them
    // belong to nothing.
    used.mark(0, 24 * boot.sector_bytes);
    used.mark(boot.fats_offset, boot.fats_bytes);
    for &c in bitmap_chains.iter().flatten().chain(&upcase_chain).chain(&root_chain) {
        used.mark(cluster_at(c), cb);
    }
    let heap_end = boot.heap_offset + u64::from(boot.clusters) * cb;
    used.mark(heap_end, boot.fs_bytes.saturating_sub(heap_end));
    used.mark_beyond(boot.fs_bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{map, UsedMap, Verdict};
    use super::*;
    use crate::testdata::noise;
    use crate::testfs::{tool, Scratch};
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// Runs a tool, panicking with its output unless it succeeds.
    fn run(name: &str, args: &[&str]) -> String {
        let out = Command::new(tool(name)).args(args).output().unwrap_or_else(|e| panic!("{name} {args:?}: {e}"));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{name} {args:?} failed: {text}");
        text
    }

    /// An image on a loop device (optionally with 4 KiB sectors), and
    /// mounted through FUSE when `dir` is given; undone on drop.
    struct Loop {
        dev: String,
        dir: Option<String>,
    }
    impl Loop {
        fn new(img: &str, sector: u32, read_only: bool) -> Loop {
            let sector = sector.to_string();
            let mut args = vec!["-f", "--show", "-b", &sector];
            if read_only {
                args.push("-r");
            }
            args.push(img);
            let dev = run("losetup", &args).trim().to_string();
            Loop { dev, dir: None }
        }
        fn mount(&mut self, dir: &str, read_only: bool) {
            std::fs::create_dir_all(dir).expect("mount point");
            let mut args = vec![];
            if read_only {
                args.extend(["-o", "ro"]);
            }
            args.extend([self.dev.as_str(), dir]);
            run("mount.exfat-fuse", &args);
            self.dir = Some(dir.to_string());
        }
    }
    impl Drop for Loop {
        fn drop(&mut self) {
            if let Some(dir) = self.dir.take() {
                for _ in 0..50 {
                    let ok = Command::new(tool("umount")).arg(&dir).status().is_ok_and(|s| s.success());
                    if ok {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
            let _ = Command::new(tool("losetup")).args(["-d", &self.dev]).status();
        }
    }

    fn map_file(path: &str, size: Option<u64>) -> Verdict {
        let f = std::fs::File::open(path).expect("open image");
        let size = size.unwrap_or_else(|| f.metadata().expect("stat").len());
        let mut read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
            assert!(len <= MAX_READ, "read of {len} bytes");
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, off).map_err(|e| e.to_string())?;
            Ok(buf)
        };
        map("exfat", &mut read, size)
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

    /// A fresh exFAT made by mkfs.exfat, on a loop device when the
    /// sector size is not 512.
    fn mkfs(s: &Scratch, size: u64, sector: u32, args: &[&str]) -> String {
        let img = s.path("img");
        let f = std::fs::File::create(&img).expect("image");
        f.set_len(size).expect("size image");
        if sector == 512 {
            let mut a = args.to_vec();
            a.push(&img);
            run("mkfs.exfat", &a);
        } else {
            let l = Loop::new(&img, sector, false);
            let mut a = args.to_vec();
            a.push(&l.dev);
            run("mkfs.exfat", &a);
        }
        img
    }

    /// `fsck.exfat -n` passes on the image.
    fn fsck_clean(img: &str) {
        run("fsck.exfat", &["-n", img]);
    }

    /// Writes files through the FUSE driver, deleting those that hold
    /// `marker`; returns the survivors (path under the root, content).
    fn populate(s: &Scratch, img: &str, sector: u32, marker: &str) -> Vec<(String, Vec<u8>)> {
        let mut l = Loop::new(img, sector, false);
        let dir = s.path("mnt");
        l.mount(&dir, false);
        let root = Path::new(&dir);
        for d in ["docs/deep", "empty"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        let mut kept = Vec::new();
        let mut doomed = Vec::new();
        for (i, len) in [0usize, 1, 511, 4096, 9000, 100_000, 600_000].into_iter().enumerate() {
            for (d, seed) in [("docs", 1u64), ("docs/deep", 2)] {
                let k = (format!("{d}/f{i}.bin"), noise(seed * 100 + i as u64, len));
                let mut m = marker.repeat(100_000 / marker.len() + 1).into_bytes();
                m.extend_from_slice(&noise(seed * 1000 + i as u64, 777));
                let g = format!("{d}/gone{i}.bin");
                // Interleaved, so deleting leaves holes between kept files.
                std::fs::write(root.join(&k.0), &k.1).expect("write file");
                std::fs::write(root.join(&g), &m).expect("write file");
                kept.push(k);
                doomed.push(g);
            }
        }
        // Enough small files that the root directory needs several clusters.
        for i in 0..150 {
            let k = (format!("root-file-with-a-long-name-{i:03}.txt"), noise(5000 + i, 300));
            std::fs::write(root.join(&k.0), &k.1).expect("write file");
            kept.push(k);
        }
        for g in &doomed {
            std::fs::remove_file(root.join(g)).expect("delete");
        }
        // Whole clusters, so no deleted bytes stay behind in its slack.
        let late = (String::from("late.bin"), noise(99, 14 << 16));
        std::fs::write(root.join(&late.0), &late.1).expect("write file");
        kept.push(late);
        drop(l);
        kept
    }

    fn check_populated(tag: &str, size: u64, sector: u32, args: &[&str]) {
        let s = Scratch::new(tag);
        let img = mkfs(&s, size, sector, args);
        let marker = format!("BV-DELETED-EXFAT-{tag}-");
        let files = populate(&s, &img, sector, &marker);
        fsck_clean(&img);
        let orig = std::fs::read(&img).expect("read image");
        assert!(contains(&orig, marker.as_bytes()), "{tag}: the deleted data is not on the image to begin with");

        let m = used_only(map_file(&img, None));
        let copy = s.path("copy");
        let copy_bytes = zeroed(&orig, &m);
        std::fs::write(&copy, &copy_bytes).expect("write copy");
        assert!(!contains(&copy_bytes, marker.as_bytes()), "{tag}: deleted data survived zeroing");
        fsck_clean(&copy);

        let mut l = Loop::new(&copy, sector, true);
        let dir = s.path("ro");
        l.mount(&dir, true);
        for (name, data) in &files {
            let back = std::fs::read(Path::new(&dir).join(name)).expect("read back");
            assert!(back == *data, "{tag}: {name} differs in the zeroed copy");
        }
        drop(l);
        let cb = parse_boot(&orig[..512]).expect("boot").cluster_bytes;
        let data: u64 = files.iter().map(|(_, d)| (d.len() as u64).div_ceil(cb) * cb).sum();
        assert!(m.used_bytes() < data + size / 10, "{tag}: {} bytes used for {data} bytes of files", m.used_bytes());
    }

    #[test]
    fn populated() {
        check_populated("4k", 32 * MIB, 512, &[]);
    }

    #[test]
    fn populated_small_clusters_4k_sectors() {
        check_populated("sect4k", 32 * MIB, 4096, &["-c", "4K", "-L", "four"]);
    }

    #[test]
    fn populated_packed_bitmap_big_clusters() {
        check_populated("packed", 48 * MIB, 512, &["-c", "64K", "--pack-bitmap"]);
    }

    #[test]
    fn empty_filesystems_are_small() {
        for (tag, size, args) in [("e16", 16 * MIB, &[][..]), ("e64", 64 * MIB, &["-c", "512"][..])] {
            let s = Scratch::new(tag);
            let img = mkfs(&s, size, 512, args);
            let orig = std::fs::read(&img).expect("read");
            let m = used_only(map_file(&img, None));
            assert!(m.used_bytes() < size / 10, "{tag}: {} of {size} bytes used", m.used_bytes());
            let copy = s.path("copy");
            std::fs::write(&copy, zeroed(&orig, &m)).expect("write copy");
            fsck_clean(&copy);
            // A partition larger than the volume: the rest is kept.
            let f = std::fs::OpenOptions::new().write(true).open(&img).expect("open");
            f.set_len(size + MIB).expect("grow");
            let m = used_only(map_file(&img, None));
            assert!(m.ranges().last().expect("ranges").1 == size + MIB && m.any_used(size, MIB), "{tag}");
        }
    }

    /// A fresh image with a few files written by hand-free means: mkfs
    /// only, plus the way to poke bytes and fix the boot checksum.
    struct Damage {
        _s: Scratch,
        img: String,
        boot: Boot,
    }

    impl Damage {
        fn new(tag: &str) -> Damage {
            let s = Scratch::new(tag);
            let img = mkfs(&s, 16 * MIB, 512, &[]);
            let head = std::fs::read(&img).expect("read")[..512].to_vec();
            let boot = parse_boot(&head).expect("boot");
            assert!(matches!(map_file(&img, None), Verdict::UsedOnly(_)), "{tag}: undamaged is not mapped");
            Damage { _s: s, img, boot }
        }

        fn peek(&self, off: u64, len: usize) -> Vec<u8> {
            let f = std::fs::File::open(&self.img).expect("open");
            let mut b = vec![0u8; len];
            f.read_exact_at(&mut b, off).expect("read");
            b
        }

        fn poke(&self, off: u64, bytes: &[u8]) {
            let f = std::fs::OpenOptions::new().write(true).open(&self.img).expect("open");
            f.write_all_at(bytes, off).expect("write");
        }

        /// Rewrites the checksum sector after a change to the boot region.
        fn reseal(&self) {
            let sb = self.boot.sector_bytes as usize;
            let sum = boot_checksum(&self.peek(0, 11 * sb));
            self.poke(11 * sb as u64, &sum.to_le_bytes().repeat(sb / 4));
        }

        fn cluster_at(&self, c: u32) -> u64 {
            self.boot.heap_offset + u64::from(c - 2) * self.boot.cluster_bytes
        }

        /// The root directory entry of `kind` (first one).
        fn root_entry(&self, kind: u8) -> u64 {
            let at = self.cluster_at(self.boot.root_cluster);
            let dir = self.peek(at, self.boot.cluster_bytes as usize);
            let i = dir.chunks_exact(32).position(|e| e[0] == kind).expect("root entry");
            at + i as u64 * 32
        }

        fn verdict(&self) -> Verdict {
            map_file(&self.img, None)
        }
    }

    #[test]
    fn damaged_is_whole() {
        let d = Damage::new("dmg");

        // Dirty volume, with a valid checksum (VolumeFlags is outside it).
        d.poke(106, &[2, 0]);
        assert!(whole(d.verdict()).contains("not cleanly unmounted"));
        d.poke(106, &[0, 0]);

        // A changed byte inside the checksummed region.
        let label = d.peek(100, 1)[0];
        d.poke(100, &[label ^ 0xFF]);
        assert!(whole(d.verdict()).contains("checksum"));
        d.poke(100, &[label]);
        assert!(matches!(d.verdict(), Verdict::UsedOnly(_)));

        // Bitmap bit of the root directory cleared.
        let bm = d.root_entry(0x81);
        let bm_cluster = le32(&d.peek(bm + 20, 4), 0);
        let bit = u64::from(d.boot.root_cluster - 2);
        let at = d.cluster_at(bm_cluster) + bit / 8;
        let byte = d.peek(at, 1)[0];
        d.poke(at, &[byte & !(1 << (bit % 8))]);
        assert!(whole(d.verdict()).contains("free in the Allocation Bitmap"));
        d.poke(at, &[byte]);

        // Bitmap length.
        let len = d.peek(bm + 24, 8);
        d.poke(bm + 24, &(le64(&len, 0) + 1).to_le_bytes());
        assert!(whole(d.verdict()).contains("bytes, not"));
        d.poke(bm + 24, &len);

        // Root directory chain running in a circle.
        let fat_at = d.boot.fat_offset + u64::from(d.boot.root_cluster) * 4;
        let link = d.peek(fat_at, 4);
        d.poke(fat_at, &d.boot.root_cluster.to_le_bytes());
        assert!(whole(d.verdict()).contains("root directory"));
        d.poke(fat_at, &0x1234_5678u32.to_le_bytes());
        assert!(whole(d.verdict()).contains("links to"));
        d.poke(fat_at, &link);

        // No up-case table / an unknown critical entry.
        let up = d.root_entry(0x82);
        d.poke(up, &[0x02]);
        assert!(whole(d.verdict()).contains("no up-case table"));
        d.poke(up, &[0x8F]);
        assert!(whole(d.verdict()).contains("unknown critical"));
        d.poke(up, &[0x82]);

        // Geometry: the heap past the volume (checksum resealed).
        let sectors = d.peek(72, 8);
        d.poke(72, &(d.boot.heap_offset / d.boot.sector_bytes + 10).to_le_bytes());
        d.reseal();
        assert!(whole(d.verdict()).contains("pass VolumeLength"));
        d.poke(72, &sectors);
        d.reseal();

        // Truncated partition.
        let len = std::fs::metadata(&d.img).expect("stat").len();
        assert!(whole(map_file(&d.img, Some(len - 4096))).contains("larger than its partition"));
        assert!(matches!(d.verdict(), Verdict::UsedOnly(_)));
    }

    /// A minimal boot sector: 512-byte sectors, 8 per cluster, FAT at
    /// sector 128 of 8 sectors, heap at 256, 100 clusters, root at 4.
    fn boot_sector() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..3].copy_from_slice(&[0xEB, 0x76, 0x90]);
        b[3..11].copy_from_slice(b"EXFAT   ");
        b[72..80].copy_from_slice(&2048u64.to_le_bytes());
        b[80..84].copy_from_slice(&128u32.to_le_bytes());
        b[84..88].copy_from_slice(&8u32.to_le_bytes());
        b[88..92].copy_from_slice(&256u32.to_le_bytes());
        b[92..96].copy_from_slice(&100u32.to_le_bytes());
        b[96..100].copy_from_slice(&4u32.to_le_bytes());
        b[104..106].copy_from_slice(&[0, 1]);
        b[108] = 9;
        b[109] = 3;
        b[110] = 1;
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn boot_sector_from_literal_bytes() {
        let p = parse_boot(&boot_sector()).expect("valid");
        assert_eq!((p.sector_bytes, p.cluster_bytes, p.fat_offset, p.heap_offset), (512, 4096, 128 * 512, 256 * 512));
        assert_eq!((p.clusters, p.root_cluster, p.fs_bytes, p.dirty), (100, 4, MIB, false));

        let bad = |f: &dyn Fn(&mut Vec<u8>), what: &str| {
            let mut b = boot_sector();
            f(&mut b);
            let e = parse_boot(&b).expect_err(what);
            assert!(e.starts_with("exfat: "), "{e}");
        };
        bad(&|b| b[20] = 1, "MustBeZero");
        bad(&|b| b[108] = 13, "sector shift");
        bad(&|b| b[109] = 17, "cluster shift");
        bad(&|b| b[110] = 3, "FAT count");
        bad(&|b| b[106] = 1, "second FAT active with one FAT");
        bad(&|b| b[80] = 8, "FAT in the boot region");
        bad(&|b| b[84] = 0, "FAT too small");
        bad(&|b| b[88..92].copy_from_slice(&130u32.to_le_bytes()), "heap over the FAT");
        bad(&|b| b[92..96].copy_from_slice(&300u32.to_le_bytes()), "heap past the volume");
        bad(&|b| b[96..100].copy_from_slice(&102u32.to_le_bytes()), "root past the heap");
        bad(&|b| b[105] = 2, "revision 2");
        let mut b = boot_sector();
        b[106] = 2;
        assert!(parse_boot(&b).expect("valid").dirty);
    }

    #[test]
    fn checksum_skips_flags_and_percent() {
        let mut region = vec![0u8; 11 * 512];
        region[0] = 1;
        let sum = boot_checksum(&region);
        // One byte in, rotated once per following byte.
        assert_eq!(sum, 1u32.rotate_right(11 * 512 - 1 - 3));
        region[106] = 0xFF;
        region[107] = 0xFF;
        region[112] = 50;
        assert_eq!(boot_checksum(&region), sum);
        region[113] = 1;
        assert_ne!(boot_checksum(&region), sum);
    }
}
