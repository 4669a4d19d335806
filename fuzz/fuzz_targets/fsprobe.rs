#![no_main]
//! The filesystem probe never panics on any partition contents, reads only
//! inside the partition, and stays within its read budget, whatever sizes
//! and offsets the (hostile or damaged) disk claims; so does the check of
//! whether a filesystem was left in use.
use bootvault_common::fsprobe::{probe, unclean};
use libfuzzer_sys::fuzz_target;

/// fsprobe's total read budget per partition (`BUDGET` in fsprobe.rs).
const BUDGET: u64 = 1 << 20;

fn check(size: u64, byte_at: &dyn Fn(u64, &mut [u8]) -> bool) {
    let mut total = 0u64;
    let mut read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
        let end = off.checked_add(len as u64).expect("read range overflows");
        assert!(end <= size, "read {off}+{len} past the partition's {size} bytes");
        total += len as u64;
        assert!(total <= BUDGET, "probe read {total} bytes, over its budget");
        let mut buf = vec![0u8; len];
        if byte_at(off, &mut buf) {
            Ok(buf)
        } else {
            Err("unreadable".into())
        }
    };
    if let Some(fs) = probe(&mut read, size) {
        assert!(!fs.kind.is_empty());
        let _ = fs.to_string();
    }
    // The check before a drive is written, for every kind it knows: inside
    // the partition, a few blocks at most.
    for kind in ["exfat", "vfat", "ext2", "ext4", "ntfs"] {
        let mut spent = 0u64;
        let mut read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
            let end = off.checked_add(len as u64).expect("read range overflows");
            assert!(end <= size, "unclean read {off}+{len} past the partition's {size} bytes");
            spent += len as u64;
            assert!(spent <= 8192, "unclean read {spent} bytes");
            let mut buf = vec![0u8; len];
            if byte_at(off, &mut buf) {
                Ok(buf)
            } else {
                Err("unreadable".into())
            }
        };
        let _ = unclean(kind, &mut read, size);
    }
}

fuzz_target!(|data: &[u8]| {
    // The partition is the input itself; nothing past it exists.
    check(data.len() as u64, &|off, buf| {
        let Ok(start) = usize::try_from(off) else { return false };
        match data.get(start..start + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    });
    // A large partition (size from the first 8 bytes) whose contents repeat
    // the rest of the input, so signatures deep inside it (btrfs at 64 KiB,
    // md 1.0 near the end, an NTFS MFT, a FAT root directory) see fuzzed
    // bytes; blocks whose number is a multiple of 7 fail to read.
    if data.len() > 8 {
        let size = u64::from_le_bytes(data[..8].try_into().unwrap_or_default()) % (1 << 44);
        let body = &data[8..];
        check(size, &|off, buf| {
            if (off / 4096) % 7 == 6 {
                return false;
            }
            let n = body.len() as u64;
            let mut at = 0;
            while at < buf.len() {
                let src = ((off + at as u64) % n) as usize;
                let take = (body.len() - src).min(buf.len() - at);
                buf[at..at + take].copy_from_slice(&body[src..src + take]);
                at += take;
            }
            true
        });
    }
});
