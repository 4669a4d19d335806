//! HTTPS to one bootvault server, known by its certificate's SHA-256
//! fingerprint (docs/DESIGN.md "Transport").
//!
//! The PC and the host CLI trust exactly one certificate, pinned when the
//! PC was built (or given with `--fingerprint`): no CA bundle, nothing that
//! expires on the PC, no name to match. The handshake still proves the
//! server holds that certificate's private key (it signs the handshake),
//! so a machine in the middle with any other certificate is refused
//! before a request byte (token included) is sent.
//!
//! The protocol is [`crate::tls13`]: TLS 1.3, X25519, Ed25519 and
//! ChaCha20-Poly1305 (fast without AES instructions, as on the old PCs
//! this project names); host builds (feature `aes-tls`) offer
//! AES-128-GCM first. [`crate::http`] calls [`handshake`] on each new
//! `https://` connection.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootvault_common::fingerprint::Fingerprint;

use crate::tls13::{self, Suite, Tls};

/// The suites offered, in order: ChaCha20-Poly1305 only in the init;
/// the host's builds (feature `aes-tls`) offer AES-128-GCM first, which
/// CPUs with AES instructions run about three times faster.
pub const SUITES: &[Suite] =
    if cfg!(feature = "aes-tls") { &[Suite::Aes128Gcm, Suite::Chacha20Poly1305] } else { &[Suite::Chacha20Poly1305] };

/// What the last handshake refused, in words for the console: set when
/// the server showed a certificate other than the pinned one.
#[derive(Clone, Default)]
pub struct Refusals(Arc<Mutex<Option<String>>>);

impl Refusals {
    /// The refusal of the last handshake that failed on the pin, taken.
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn set(&self, line: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
    }
}

/// The TLS handshake on a new connection to a server pinned to `pin`. A
/// certificate other than the pinned one is refused (the line also lands
/// in `refusals`, so the client never tries that server again).
pub fn handshake(tcp: TcpStream, pin: &Fingerprint, refusals: &Refusals) -> io::Result<Tls<Sock>> {
    match tls13::connect(Sock::new(tcp), pin, SUITES) {
        Ok(tls) => Ok(tls),
        Err(tls13::Failure::Pin(seen)) => {
            let line = format!(
                "its certificate is not the one this PC trusts (SHA-256 {seen}, expected {pin}): another server, or \
                 someone in between; nothing was sent"
            );
            refusals.set(line.clone());
            Err(io::Error::new(io::ErrorKind::PermissionDenied, line))
        }
        Err(tls13::Failure::Io(e)) => Err(e),
    }
}

/// The socket under TLS, read in large pieces: records are read a header
/// and a body at a time, which would otherwise cost two system calls per
/// record of a restore.
pub struct Sock {
    pub tcp: TcpStream,
    /// When set, every write ends by then (see [`write_until`]).
    pub write_by: Option<Instant>,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl Sock {
    const SIZE: usize = 64 << 10;

    fn new(tcp: TcpStream) -> Sock {
        Sock { tcp, write_by: None, buf: vec![0; Self::SIZE], pos: 0, len: 0 }
    }
}

/// Makes the next write on `tcp` end by `by`, or fails with `TimedOut`
/// if that has passed: `SO_SNDTIMEO` counts from each system call, so a
/// socket taking a few bytes at a time would otherwise never time out.
pub(crate) fn write_until(tcp: &TcpStream, by: Instant) -> io::Result<()> {
    let left = by.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(1) {
        return Err(io::ErrorKind::TimedOut.into());
    }
    tcp.set_write_timeout(Some(left))
}

impl Read for Sock {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
            self.len = self.tcp.read(&mut self.buf)?;
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Sock {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(by) = self.write_by {
            write_until(&self.tcp, by)?;
        }
        self.tcp.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}
