#![no_main]
//! A backup's lock text (`argon2id-split m=.. t=.. p=.. salt=.. key=..`), which
//! a PC sends when it opens a backup and the server parses: never panics;
//! what is accepted has parameters in bounds and writes back to the same
//! lock; the engine's `Lock` agrees with the wire parser. Also `hex_into`,
//! which both use.
use bootvault_common::wire::{hex_into, lock_text, parse_lock_text, to_hex};
use bootvault_engine::lock::Lock;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut key = [0u8; 32];
    if let Ok((kdf, params, salt)) = parse_lock_text(text, &mut key) {
        assert!(params.check().is_ok());
        let again = lock_text(kdf, &params, &salt, &key);
        let mut key2 = [0u8; 32];
        assert_eq!(parse_lock_text(&again, &mut key2), Ok((kdf, params, salt)));
        assert_eq!(key, key2);
        let lock = Lock::from_text(text).expect("the engine refuses a lock the wire parser accepts");
        assert_eq!(lock.to_text(), again);
    }
    let mut out = vec![0u8; text.len() / 2];
    if hex_into(text, &mut out).is_ok() {
        assert_eq!(to_hex(&out), text.to_ascii_lowercase());
    }
});
