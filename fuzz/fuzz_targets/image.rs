#![no_main]
//! Manifest and single-file decoding never panic; an accepted manifest
//! encodes back to a manifest that decodes equal.
use bootvault_common::image::{ImageReader, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(Manifest::decode(&m.encode()).ok().as_ref(), Some(&m));
    }
    if let Ok(mut r) = ImageReader::new(data) {
        while let Ok(Some(_)) = r.next_record() {}
    }
});
