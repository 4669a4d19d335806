//! Secrets the server hands out and checks: tokens, nonces and tickets
//! (32 bytes from the kernel), and constant-time comparison.
//!
//! Owns randomness and comparison only; where a secret is kept is the
//! caller's (tokens in the database, tickets in [`crate::unlock`]).

use std::fs::File;
use std::io::Read;

use anyhow::{Context, Result};
use bootvault_common::wire;

/// Constant-time equality of two secrets (no early exit on the first
/// differing byte, so timing tells nothing about how much matched).
pub fn secret_eq(a: &str, b: &str) -> bool {
    !a.is_empty() && ct_eq(a.as_bytes(), b.as_bytes())
}

/// Constant-time equality of two byte strings of the same length (the
/// lengths themselves are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new secret: 32 random bytes from the kernel, as hex.
pub fn new_token() -> Result<String> {
    Ok(wire::to_hex(&random_32()?))
}

/// 32 random bytes from the kernel (tokens, nonces, tickets).
pub fn random_32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).context("reading /dev/urandom")?;
    Ok(b)
}
