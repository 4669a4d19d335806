#![no_main]
//! The partition table parser never panics on any disk contents, at either
//! sector size, and whatever it accepts is internally consistent.
use bootvault_common::partition::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ss in [512u32, 4096] {
        let mut read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
            let start = usize::try_from(off).map_err(|e| e.to_string())?;
            let end = start.checked_add(len).ok_or("overflow")?;
            data.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| "past the end".into())
        };
        if let Ok(Some(t)) = parse(&mut read, ss, data.len() as u64) {
            assert_eq!(t.sector_size, ss);
            let _ = t.to_string();
            for p in &t.partitions {
                assert!(p.number >= 1);
                assert!(!p.logical || p.number >= 5);
            }
        }
    }
});
