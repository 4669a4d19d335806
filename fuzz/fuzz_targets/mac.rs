#![no_main]
//! MAC addresses from the network (the `x-bootvault-mac` header, iPXE's
//! `${net0/mac}`) and from admins: never panics, and accepts only the six
//! two-digit hex groups that `mac_string` writes (any case, `:` or `-`).
use bootvault_common::units::{mac_string, parse_mac};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(mac) = parse_mac(s) {
        let canonical = mac_string(mac);
        assert_eq!(canonical, s.trim().to_ascii_lowercase().replace('-', ":"), "a MAC spelled another way");
        assert_eq!(parse_mac(&canonical), Some(mac));
    }
});
