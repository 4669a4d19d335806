//! Pure formats shared by every part of bootvault.
//!
//! Nothing in this crate opens a file or makes a syscall: each module takes
//! bytes or `&str` and returns values, so the init (PID 1), the host builder
//! and the server all parse the same way and every parser is table-tested.

pub mod cmdline;
pub mod config;
pub mod cpio;
pub mod fingerprint;
pub mod fsprobe;
pub mod gz;
pub mod image;
pub mod job;
pub mod modules;
pub mod partition;
pub mod seal;
pub mod testdata;
#[cfg(test)]
pub(crate) mod testfs;
pub mod units;
pub mod usedmap;
pub mod wire;
