#![no_main]
use bootvault_common::modules::{glob_match, modinfo, Index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = modinfo(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let mut mid = s.len() / 2;
        while !s.is_char_boundary(mid) {
            mid -= 1;
        }
        let (dep, alias) = s.split_at(mid);
        let _ = glob_match(dep, alias);
        if let Ok(index) = Index::parse(dep, alias) {
            for name in index.modules.keys() {
                let order = index.load_order(name);
                assert_eq!(order.last(), Some(name));
            }
            let _ = index.lookup(s);
        }
    }
});
