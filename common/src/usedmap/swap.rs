//! Used bytes of a Linux swap area: only its header page. The rest holds
//! pages swapped out by a system that has since shut down, meaningless
//! after a reboot, so a backup keeps the header (label, UUID, bad-page
//! list) and zeroes the rest.
//!
//! Except when the system hibernated: then the swap area holds its memory
//! image, which resuming needs, and the partition is taken whole. So is an
//! old version-0 area, or a header that does not make sense.
//!
//! The header is one page (of the page size of the machine that made it:
//! 4 KiB on x86, up to 64 KiB elsewhere) ending with its 10-byte magic;
//! `struct swap_header` in the kernel's `include/linux/swap.h`.

use super::{read_checked, ReadFn, Used};

/// Page sizes a swap header may have been written with, smallest first.
const PAGE_SIZES: [u64; 5] = [4096, 8192, 16384, 32768, 65536];

/// Magics written over `SWAPSPACE2` by hibernation (the kernel's
/// swsusp, uswsusp, and the newer kernel signature).
const HIBERNATION: [&[u8]; 4] = [b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001"];

/// TuxOnIce writes its own header at the start of the area.
const TUXONICE: &[u8] = b"\xed\xc3\x02\xe9\x98\x56\xe5\x0c";

/// Offsets in the header page (`swap_header.info`).
const VERSION: usize = 1024;
const LAST_PAGE: usize = 1028;
const NR_BADPAGES: usize = 1032;
const BADPAGES: usize = 1536;

/// Marks what the swap area keeps; Err(reason) takes the partition whole.
pub fn used(read: &mut ReadFn<'_>, size: u64, used: &mut Used) -> Result<(), String> {
    let len = size.min(PAGE_SIZES[PAGE_SIZES.len() - 1]);
    if len < PAGE_SIZES[0] {
        return Err(format!("swap: the partition ({size} bytes) is smaller than one page"));
    }
    let head = read_checked(read, size, 0, len as usize, "swap header")?;
    let page = header_page(&head)?;
    let (swap_bytes, _bad) = parse_header(&head, page, size)?;
    used.mark(0, page);
    // What lies past the swap area's last page is not the swap area's.
    used.mark_beyond(swap_bytes);
    Ok(())
}

/// The page size the header was written with: where its magic sits.
fn header_page(head: &[u8]) -> Result<u64, String> {
    if head.starts_with(TUXONICE) {
        return Err("swap: swap holds a hibernation image (TuxOnIce)".into());
    }
    for page in PAGE_SIZES {
        let Some(magic) = head.get(page as usize - 10..page as usize) else { break };
        if magic == b"SWAPSPACE2" {
            return Ok(page);
        }
        if magic == b"SWAP-SPACE" {
            return Err("swap: an old version 0 swap area".into());
        }
        if HIBERNATION.iter().any(|h| magic.starts_with(h)) {
            let name = String::from_utf8_lossy(magic).trim_end_matches('\0').to_string();
            return Err(format!("swap: swap holds a hibernation image ({name})"));
        }
    }
    Err("swap: no swap signature at the end of a 4 to 64 KiB header page".into())
}

/// `(bytes the area spans, bad pages)` from the header in `head`, whose
/// page is `page` bytes, on a partition of `size` bytes.
fn parse_header(head: &[u8], page: u64, size: u64) -> Result<(u64, u32), String> {
    let field = |off: usize| -> [u8; 4] {
        let mut b = [0u8; 4];
        if let Some(s) = head.get(off..off + 4) {
            b.copy_from_slice(s);
        }
        b
    };
    // mkswap writes the header in the byte order of the machine it runs on.
    let u32_of: fn([u8; 4]) -> u32 = match field(VERSION) {
        v if u32::from_le_bytes(v) == 1 => u32::from_le_bytes,
        v if u32::from_be_bytes(v) == 1 => u32::from_be_bytes,
        v => return Err(format!("swap: unknown header version {}", u32::from_le_bytes(v))),
    };
    let last_page = u64::from(u32_of(field(LAST_PAGE)));
    let bad = u32_of(field(NR_BADPAGES));
    let max_bad = (page - 10 - BADPAGES as u64) / 4;
    if u64::from(bad) > max_bad {
        return Err(format!("swap: {bad} bad pages listed, a header holds at most {max_bad}"));
    }
    if last_page == 0 {
        return Err("swap: the header describes an empty area".into());
    }
    // last_page < 2^32 and page <= 64 KiB: no overflow.
    let swap_bytes = (last_page + 1) * page;
    if swap_bytes > size {
        return Err(format!("swap: the area ({swap_bytes} bytes) is larger than its partition ({size} bytes)"));
    }
    Ok((swap_bytes, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testfs::{tool, Scratch};
    use crate::usedmap::UsedMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn map_img(img: &[u8], size: u64) -> Result<UsedMap, String> {
        let mut read = |off: u64, len: usize| {
            let start = usize::try_from(off).map_err(|e| e.to_string())?;
            img.get(start..start + len).map(<[u8]>::to_vec).ok_or_else(|| format!("past the end at {off}"))
        };
        let mut u = Used::new(size);
        used(&mut read, size, &mut u)?;
        Ok(u.finish())
    }

    const MARKER: &[u8] = b"BV-SWAPPED-OUT-PAGE-";

    /// A swap area made by mkswap over `bytes` of "swapped-out memory"
    /// (the marker, repeated): the image and its file.
    fn mkswap(s: &Scratch, name: &str, bytes: usize, args: &[&str], after: &[&str]) -> (PathBuf, Vec<u8>) {
        let path = s.0.join(name);
        let junk: Vec<u8> = MARKER.iter().copied().cycle().take(bytes).collect();
        std::fs::write(&path, junk).expect("image");
        let out = Command::new(tool("mkswap")).args(args).arg(&path).args(after).output().expect("mkswap runs");
        assert!(out.status.success(), "mkswap {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let img = std::fs::read(&path).expect("read");
        (path, img)
    }

    /// `blkid -p -o export` of a file: TYPE, LABEL, UUID lines.
    fn blkid(path: &Path) -> Vec<String> {
        let out = Command::new(tool("blkid")).args(["-p", "-o", "export"]).arg(path).output().expect("blkid");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter(|l| l.starts_with("TYPE=") || l.starts_with("LABEL=") || l.starts_with("UUID="))
            .map(String::from)
            .collect()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// (what, image bytes, mkswap args, size argument in KiB, page).
    type Case = (&'static str, usize, &'static [&'static str], &'static [&'static str], u64);

    #[test]
    fn real_swap_areas_keep_only_their_header() {
        let s = Scratch::new("real");
        const MIB: usize = 1 << 20;
        let cases: [Case; 4] = [
            ("4 KiB pages, label", MIB, &["-L", "swp"], &[], 4096),
            ("8 KiB pages", 2 * MIB, &["-p", "8192", "-L", "eight"], &[], 8192),
            ("64 KiB pages", 4 * MIB, &["-p", "65536"], &[], 65536),
            ("smaller than its partition", 2 * MIB, &["-L", "part"], &["1024"], 4096),
        ];
        for (i, (what, bytes, args, after, page)) in cases.into_iter().enumerate() {
            let (path, img) = mkswap(&s, &format!("{i}.img"), bytes, args, after);
            let map = map_img(&img, bytes as u64).unwrap_or_else(|e| panic!("{what}: {e}"));
            let area = if after.is_empty() { bytes as u64 } else { MIB as u64 };
            let mut want = vec![(0, page)];
            if area < bytes as u64 {
                want.push((area, bytes as u64));
            }
            assert_eq!(map.ranges(), &want[..], "{what}");
            // The zeroed copy is still the same swap area, and the
            // swapped-out pages are gone.
            let mut copy = vec![0u8; bytes];
            for &(a, b) in map.ranges() {
                copy[a as usize..b as usize].copy_from_slice(&img[a as usize..b as usize]);
            }
            assert!(contains(&img[page as usize..area as usize], MARKER), "{what}: no swapped-out data");
            assert!(!contains(&copy[..area as usize], MARKER), "{what}: swapped-out data survives");
            let copy_path = s.0.join(format!("{i}.copy"));
            std::fs::write(&copy_path, &copy).expect("copy");
            let ids = blkid(&path);
            assert!(ids.iter().any(|l| l == "TYPE=swap"), "{what}: {ids:?}");
            assert_eq!(blkid(&copy_path), ids, "{what}");
            // And the whole map, as a backup asks for it.
            let mut read = |off: u64, len: usize| Ok::<_, String>(img[off as usize..off as usize + len].to_vec());
            let v = crate::usedmap::map("swap", &mut read, bytes as u64);
            assert!(matches!(v, crate::usedmap::Verdict::UsedOnly(_)), "{what}: {v:?}");
        }
    }

    #[test]
    fn hibernated_and_old_areas_are_whole() {
        let s = Scratch::new("hib");
        for (page, bytes) in [(4096usize, 1usize << 20), (8192, 2 << 20)] {
            let (_, img) = mkswap(&s, "h.img", bytes, &["-p", &page.to_string()], &[]);
            assert!(map_img(&img, bytes as u64).is_ok());
            for magic in [&b"S1SUSPEND\0"[..], b"S2SUSPEND\0", b"ULSUSPEND\0", b"LINHIB0001"] {
                let mut bad = img.clone();
                bad[page - 10..page].copy_from_slice(magic);
                let r = map_img(&bad, bytes as u64).expect_err("hibernated swap mapped");
                assert!(r.contains("swap holds a hibernation image"), "{r}");
            }
            let mut bad = img.clone();
            bad[..8].copy_from_slice(TUXONICE);
            assert!(map_img(&bad, bytes as u64).expect_err("tuxonice").contains("hibernation"));
            let mut bad = img.clone();
            bad[page - 10..page].copy_from_slice(b"SWAP-SPACE");
            assert!(map_img(&bad, bytes as u64).expect_err("v0").contains("version 0"));
            // Truncated partition.
            let r = map_img(&img[..bytes / 2], bytes as u64 / 2).expect_err("truncated");
            assert!(r.contains("larger than its partition"), "{r}");
            // Impossible bad-page count, unknown version, no magic.
            let mut bad = img.clone();
            bad[NR_BADPAGES..NR_BADPAGES + 4].copy_from_slice(&100_000u32.to_le_bytes());
            assert!(map_img(&bad, bytes as u64).expect_err("badpages").contains("bad pages"));
            let mut bad = img.clone();
            bad[VERSION] = 2;
            assert!(map_img(&bad, bytes as u64).expect_err("version").contains("version"));
            let mut bad = img.clone();
            bad[page - 10..page].copy_from_slice(&[0; 10]);
            assert!(map_img(&bad, bytes as u64).expect_err("magic").contains("no swap signature"));
        }
    }

    /// A header written on a big-endian machine, on literal bytes.
    #[test]
    fn big_endian_header() {
        let mut img = vec![0u8; 64 << 10];
        img[16384 - 10..16384].copy_from_slice(b"SWAPSPACE2");
        img[VERSION..VERSION + 4].copy_from_slice(&1u32.to_be_bytes());
        img[LAST_PAGE..LAST_PAGE + 4].copy_from_slice(&2u32.to_be_bytes());
        img[NR_BADPAGES..NR_BADPAGES + 4].copy_from_slice(&1u32.to_be_bytes());
        img[BADPAGES..BADPAGES + 4].copy_from_slice(&1u32.to_be_bytes());
        let map = map_img(&img, 64 << 10).expect("maps");
        assert_eq!(map.ranges(), &[(0, 16384), (3 * 16384, 64 << 10)]);
        assert_eq!(parse_header(&img, 16384, 64 << 10), Ok((3 * 16384, 1)));
        assert!(map_img(&img[..2048], 2048).expect_err("tiny").contains("smaller than one page"));
    }
}
