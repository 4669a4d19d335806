#![no_main]
use bootvault_common::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let mut mid = s.len() / 2;
        while !s.is_char_boundary(mid) {
            mid -= 1;
        }
        let (file, line) = s.split_at(mid);
        let (config, problems) = Config::load(Some(file), line);
        if !problems.iter().any(|p| p.fatal) {
            // A configuration we accept writes out and reads back the same.
            let (again, p2) = Config::load(Some(&config.to_file()), "");
            assert!(p2.iter().all(|p| !p.fatal), "{p2:?}");
            assert_eq!(again, config);
        }
    }
});
