//! gzip (RFC 1952) in and out, in memory: the builder's gzipped modules
//! and initramfs parts, the init's module loading, the server's
//! network-boot overlays. Deflate itself is miniz_oxide's.

/// Unpacks a gzip file (RFC 1952, one member): the header's optional
/// fields skipped, the deflate stream inflated up to `limit` bytes, its
/// length and CRC-32 checked against the trailer.
pub fn gunzip(gz: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    if gz.len() < 18 || gz[..3] != [0x1f, 0x8b, 8] {
        return Err("not a gzip file".into());
    }
    let flags = gz[3];
    let mut at = 10usize;
    let short = || "truncated gzip header".to_owned();
    if flags & FEXTRA != 0 {
        let n = gz.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]])).ok_or_else(short)?;
        at += 2 + usize::from(n);
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let end = gz.get(at..).and_then(|rest| rest.iter().position(|&b| b == 0)).ok_or_else(short)?;
            at += end + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    let body = gz.get(at..gz.len().saturating_sub(8)).ok_or_else(short)?;
    let out = miniz_oxide::inflate::decompress_to_vec_with_limit(body, limit).map_err(|e| {
        if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput {
            format!("gzip: unpacks to more than {limit} bytes")
        } else {
            format!("gzip: bad deflate stream ({:?})", e.status)
        }
    })?;
    let tail = &gz[gz.len() - 8..];
    let crc = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let len = u32::from_le_bytes([tail[4], tail[5], tail[6], tail[7]]);
    if len != out.len() as u32 {
        return Err(format!("gzip: {} bytes unpacked, the trailer says {len}", out.len()));
    }
    if crc != crate::partition::crc32(&out) {
        return Err("gzip: CRC-32 mismatch".into());
    }
    Ok(out)
}

/// Packs `data` as gzip with no name and no time, so the same module
/// gives the same bytes (reproducible initramfs and their parts).
pub fn gzip(data: &[u8], level: u8) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    out.extend(miniz_oxide::deflate::compress_to_vec(data, level));
    out.extend(crate::partition::crc32(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 4 << 20;

    #[test]
    fn gzip_round_trip_with_the_optional_header_fields() {
        let module: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 ^ (i >> 9) as u8).collect();
        let packed = gzip(&module, 9);
        assert!(packed.len() < module.len() / 2);
        assert_eq!(gunzip(&packed, LIMIT), Ok(module.clone()));
        assert_eq!(gzip(&module, 9), packed, "reproducible");
        // What gzip(1) writes: a name (FNAME), here also FEXTRA, FCOMMENT and FHCRC.
        let mut full = vec![0x1f, 0x8b, 8, 2 | 4 | 8 | 16, 1, 2, 3, 4, 0, 3, 3, 0, b'a', b'b', b'c'];
        full.extend(b"virtio_net.ko\0a comment\0");
        full.extend([0xAA, 0xBB]);
        full.extend(&packed[10..]);
        assert_eq!(gunzip(&full, LIMIT), Ok(module));
    }

    #[test]
    fn bad_gzip_is_refused() {
        let packed = gzip(b"\x7fELF module bytes", 6);
        assert_eq!(gunzip(b"\x7fELF not packed at all", LIMIT), Err("not a gzip file".into()));
        let mut crc = packed.clone();
        let n = crc.len();
        crc[n - 8] ^= 1;
        assert_eq!(gunzip(&crc, LIMIT), Err("gzip: CRC-32 mismatch".into()));
        let mut len = packed.clone();
        len[n - 1] = 1;
        assert!(gunzip(&len, LIMIT).is_err_and(|e| e.contains("the trailer says")));
        assert!(gunzip(&packed[..n - 3], LIMIT).is_err());
        let mut name = packed[..10].to_vec();
        name[3] = 8; // a name that never ends
        name.extend(b"no terminator here");
        assert_eq!(gunzip(&name, LIMIT), Err("truncated gzip header".into()));
        // A bomb stops at the limit instead of filling memory.
        let bomb = gzip(&vec![0u8; LIMIT + 1], 1);
        assert!(gunzip(&bomb, LIMIT).is_err_and(|e| e.contains("more than")));
    }
}
