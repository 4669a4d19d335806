#![no_main]
//! `cpio::read_archive` never panics, and whatever it accepts round-trips:
//! written back with `write_archive`, it reads as the same entries, sorted
//! with their parent directories added (`cpio::normalize`), and writing
//! those again gives the same bytes.
use libfuzzer_sys::fuzz_target;

// The module lives in the builder binary crate, which a fuzz target cannot
// depend on; it is pure std, so it is compiled in here as is.
#[path = "../../common/src/cpio.rs"]
#[allow(dead_code)]
mod cpio;

use cpio::{normalize, read_archive, write_archive, Format};

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = read_archive(data) else {
        return;
    };
    // Re-write in the form the input used, so both writers get exercised.
    let format = if data.get(..6) == Some(b"070702".as_slice()) {
        Format::NewcCrc
    } else {
        Format::Newc
    };
    let expected = match normalize(entries.clone()) {
        Ok(expected) => expected,
        Err(_) => {
            // Paths the writer refuses (".", absolute, duplicates, ...):
            // it must refuse them as a whole, writing nothing.
            let mut out = Vec::new();
            assert!(write_archive(entries, format, &mut out).is_err());
            assert!(out.is_empty());
            return;
        }
    };
    let mut bytes = Vec::new();
    let written = write_archive(entries, format, &mut bytes).expect("normalized entries write");
    assert_eq!(written, bytes.len() as u64);
    assert_eq!(bytes.len() % 512, 0);
    let again = read_archive(&bytes).expect("a written archive reads back");
    assert_eq!(again, expected);
    let mut rewritten = Vec::new();
    write_archive(again, format, &mut rewritten).expect("re-read entries write");
    assert!(
        rewritten == bytes,
        "writing the re-read entries changed the bytes"
    );
});
