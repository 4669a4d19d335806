//! Shared by the usedmap_* targets: a map reader never panics, reads only
//! inside the partition in requests of at most MAX_READ bytes, and its
//! map stays inside the partition and always keeps the partition's head.
use bootvault_common::usedmap::{map, Verdict, HEAD_BYTES, MAX_READ};

fn check(kind: &str, size: u64, byte_at: &dyn Fn(u64, &mut [u8]) -> bool) {
    let mut total = 0u64;
    let mut read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
        let end = off.checked_add(len as u64).expect("read range overflows");
        assert!(end <= size, "read {off}+{len} past the partition's {size} bytes");
        assert!(len <= MAX_READ, "read of {len} bytes, over MAX_READ");
        total += len as u64;
        // A reader's reads grow with the map it reads, never without bound.
        assert!(total <= (size / 8).max(64 << 20), "read {total} bytes of a {size}-byte partition");
        let mut buf = vec![0u8; len];
        if byte_at(off, &mut buf) {
            Ok(buf)
        } else {
            Err("unreadable".into())
        }
    };
    if let Verdict::UsedOnly(m) = map(kind, &mut read, size) {
        assert_eq!(m.size(), size);
        let mut prev_end = None;
        for &(s, e) in m.ranges() {
            assert!(s < e && e <= size, "range {s}..{e} of a {size}-byte partition");
            if let Some(p) = prev_end {
                assert!(s > p, "ranges not sorted and disjoint");
            }
            prev_end = Some(e);
        }
        assert!(m.any_used(0, 1) || size == 0);
        let _ = HEAD_BYTES;
    }
}

pub fn run(kind: &str, data: &[u8]) {
    // The partition is the input itself.
    check(kind, data.len() as u64, &|off, buf| {
        let Ok(start) = usize::try_from(off) else { return false };
        match data.get(start..start + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    });
    // A larger partition (size from the first 4 bytes, up to 4 GiB) whose
    // contents repeat the rest of the input; blocks whose number is a
    // multiple of 7 fail to read.
    if data.len() > 4 {
        let size = u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
        let body = &data[4..];
        check(kind, size, &|off, buf| {
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
}
