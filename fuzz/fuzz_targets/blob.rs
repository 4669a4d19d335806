#![no_main]
//! Chunk blobs, as a PC uploads them and a server hands them back: decoding
//! never panics and never returns more than the cap; what decodes verifies
//! against its own id and re-encodes to the same bytes. Chunk ids in hex
//! (URL paths, chunk file names) parse only in their canonical spelling.
use bootvault_common::image::{chunk_id, decode_blob, decode_verified, encode_blob, hex, parse_hex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(id) = parse_hex(s) {
            assert_eq!(hex(&id), s.to_ascii_lowercase(), "a chunk id spelled two ways");
        }
    }
    let [a, b, blob @ ..] = data else { return };
    // The cap, up to 1 MiB (a chunk's size on the wire).
    let max = usize::from(u16::from_le_bytes([*a, *b])) * 16;
    if let Ok(plain) = decode_blob(blob, max) {
        assert!(plain.len() <= max);
        let id = chunk_id(&plain);
        assert_eq!(decode_verified(blob, plain.len(), &id).as_deref(), Ok(plain.as_slice()));
        for level in [0, 1, 6] {
            assert_eq!(decode_blob(&encode_blob(&plain, level), plain.len()).as_deref(), Ok(plain.as_slice()));
        }
    }
});
