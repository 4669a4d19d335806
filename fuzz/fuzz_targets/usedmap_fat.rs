#![no_main]
//! The vfat used-block map reader on hostile partitions (see usedmap_harness.rs).
use libfuzzer_sys::fuzz_target;

#[path = "usedmap_harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::run("vfat", data));
