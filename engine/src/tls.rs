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
//! AES-128-GCM first.
//!
//! [`connector`] plugs into ureq's connector chain after its TCP
//! connector: `http://` passes through untouched, `https://` is wrapped
//! here, and an `https://` URL without a pin is refused.

use std::fmt;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use bootvault_common::fingerprint::Fingerprint;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport, TransportAdapter,
};

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

/// The TLS step of a client's connector chain.
pub struct PinnedTls {
    pin: Option<Fingerprint>,
    refusals: Refusals,
}

impl fmt::Debug for PinnedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinnedTls")
    }
}

/// The TLS step for a server pinned to `pin` (None: `https://` refused;
/// `http://` works either way). Its refusals land in `refusals`.
pub fn connector(pin: Option<Fingerprint>, refusals: Refusals) -> PinnedTls {
    PinnedTls { pin, refusals }
}

impl<In: Transport> Connector<In> for PinnedTls {
    type Out = Either<In, PinnedTransport>;

    fn connect(&self, details: &ConnectionDetails, chained: Option<In>) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Err(ureq::Error::ConnectionFailed);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let Some(pin) = &self.pin else {
            return Err(ureq::Error::Tls(
                "an https:// server needs its certificate's fingerprint (--fingerprint, or fingerprint= in the PC's settings)",
            ));
        };
        let mut sock = Buffered::new(TransportAdapter::new(transport.boxed(), details.current_time.clone()));
        sock.inner.set_timeout(details.timeout);
        let stream = match tls13::connect(sock, pin, SUITES) {
            Ok(s) => s,
            Err(tls13::Failure::Pin(seen)) => {
                let line = format!(
                    "its certificate is not the one this PC trusts (SHA-256 {seen}, expected {pin}): another server, \
                     or someone in between; nothing was sent"
                );
                self.refusals.set(line.clone());
                return Err(ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, line)));
            }
            Err(tls13::Failure::Io(e)) => return Err(ureq::Error::Io(e)),
        };
        let buffers = LazyBuffers::new(details.config.input_buffer_size(), details.config.output_buffer_size());
        Ok(Some(Either::B(PinnedTransport { buffers, stream })))
    }
}

/// The socket under TLS, read in large pieces: records are read a header
/// and a body at a time, which would cost a system call (and ureq's
/// timeout set-up) per record of a restore.
pub struct Buffered {
    inner: TransportAdapter,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl Buffered {
    const SIZE: usize = 128 << 10;

    fn new(inner: TransportAdapter) -> Buffered {
        Buffered { inner, buf: vec![0; Self::SIZE], pos: 0, len: 0 }
    }
}

impl Read for Buffered {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = self.inner.read(&mut self.buf)?;
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Buffered {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.inner.write(data)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.inner.write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A TLS connection as ureq's transport.
pub struct PinnedTransport {
    buffers: LazyBuffers,
    stream: Tls<Buffered>,
}

impl fmt::Debug for PinnedTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinnedTransport")
    }
}

impl Transport for PinnedTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().inner.set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().inner.set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().inner.get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}
