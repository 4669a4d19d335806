#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let params = bootvault_common::cmdline::parse(s);
        // Every parameter we produce must survive quoting and re-parsing.
        for p in params {
            if let Some(v) = p.value.as_deref() {
                if let Some(q) = bootvault_common::cmdline::quote(v) {
                    let again = bootvault_common::cmdline::parse(&format!("k={q}"));
                    assert_eq!(again.first().and_then(|p| p.value.as_deref()), Some(v));
                }
            }
        }
    }
});
