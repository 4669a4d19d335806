#![no_main]
//! The ext4 used-block map reader on hostile partitions (see usedmap_harness.rs).
use libfuzzer_sys::fuzz_target;

#[path = "usedmap_harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::run("ext4", data));
