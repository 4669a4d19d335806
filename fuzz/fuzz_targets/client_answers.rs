#![no_main]
//! The PC's parsers of what a server answers (docs/PROTOCOL.md): the
//! backup list, the unlock challenge, `key=value` bodies. A hostile or
//! broken server may send anything; they never panic, and what they accept
//! stays within the bounds the PC relies on.
use bootvault_engine::client::{kv_get, parse_backup_lines, parse_challenge, parse_kv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(list) = parse_backup_lines(&text) {
        assert!(list.len() <= text.lines().count());
    }
    if let Ok(Some(ch)) = parse_challenge(&text) {
        // A challenge the PC acts on cannot make it allocate gigabytes.
        assert!(ch.params.check().is_ok(), "{:?}", ch.params);
        assert!((8..=64).contains(&ch.salt.len()));
    }
    let kv = parse_kv(&text);
    assert!(kv.len() <= text.lines().count());
    for (k, v) in &kv {
        assert!(!k.contains('\n') && !v.contains('\n'));
        assert_eq!(k.trim(), k);
        assert_eq!(v.trim(), v);
    }
    // The first of repeated keys is the one read.
    if let Some((k, v)) = kv.first() {
        assert_eq!(kv_get(&kv, k), Some(v.as_str()));
    }
});
