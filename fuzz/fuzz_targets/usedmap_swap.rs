#![no_main]
//! The swap used-block map reader on hostile partitions (see usedmap_harness.rs).
use libfuzzer_sys::fuzz_target;

#[path = "usedmap_harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::run("swap", data));
