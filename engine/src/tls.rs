//! HTTPS to one bootvault server, known by its certificate's SHA-256
//! fingerprint (docs/DESIGN.md "Transport").
//!
//! The PC and the host CLI trust exactly one certificate, pinned when the
//! PC was built (or given with `--fingerprint`): no CA bundle, nothing that
//! expires on the PC, no name to match. The handshake still proves the
//! server holds that certificate's private key (rustls checks its
//! signature over the handshake), so a machine in the middle with any
//! other certificate is refused before a request byte (token included)
//! is sent.
//!
//! The server is ours, so the client speaks exactly what it does and
//! nothing more ([`provider`]): TLS 1.3, X25519, ChaCha20-Poly1305 (fast
//! without AES instructions, as on the old PCs this project names),
//! Ed25519 certificates. Every other algorithm ring has stays out of the
//! init (BENCHMARKS.md "What TLS costs the init": P-256's tables alone are
//! 151 KB).
//!
//! [`connector`] plugs into ureq's connector chain after its TCP
//! connector: `http://` passes through untouched, `https://` is wrapped
//! here, and an `https://` URL without a pin is refused.

use std::fmt;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use bootvault_common::fingerprint::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport, TransportAdapter,
};

/// The client's algorithms: one of each, the ones `bootvault serve`
/// uses with PCs (its own Ed25519 certificate).
pub fn provider() -> CryptoProvider {
    use rustls::crypto::ring::kx_group;
    use rustls::crypto::WebPkiSupportedAlgorithms;
    type Algorithms = &'static [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm];
    static ED25519: Algorithms = &[webpki::ring::ED25519];
    static MAPPING: &[(SignatureScheme, Algorithms)] = &[(SignatureScheme::ED25519, ED25519)];
    CryptoProvider {
        cipher_suites: suites(),
        kx_groups: vec![kx_group::X25519],
        signature_verification_algorithms: WebPkiSupportedAlgorithms { all: ED25519, mapping: MAPPING },
        secure_random: &Random,
        key_provider: &NoKeys,
    }
}

/// ChaCha20-Poly1305 only in the init; the host's builds (feature
/// `aes-tls`) offer AES-128-GCM first, which CPUs with AES instructions
/// run about three times faster, and fall back to ChaCha20 where the
/// server (or the CPU) prefers it.
fn suites() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite;
    #[cfg(feature = "aes-tls")]
    return vec![cipher_suite::TLS13_AES_128_GCM_SHA256, cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    #[cfg(not(feature = "aes-tls"))]
    vec![cipher_suite::TLS13_CHACHA20_POLY1305_SHA256]
}

/// The kernel's random numbers (getrandom), as the engine's nonces.
#[derive(Debug)]
struct Random;

impl rustls::crypto::SecureRandom for Random {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        crate::lock::random_bytes(buf).map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

/// The client proves itself with its token, never with a key of its own.
#[derive(Debug)]
struct NoKeys;

impl rustls::crypto::KeyProvider for NoKeys {
    fn load_private_key(
        &self,
        _key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        Err(rustls::Error::General("no client keys".into()))
    }
}

/// What the last handshake refused, in words for the console: set when
/// the server showed a certificate other than the pinned one.
#[derive(Clone, Default)]
pub struct Refusals(Arc<Mutex<Option<String>>>);

impl Refusals {
    /// The refusal of the last handshake that failed on the pin, taken.
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The same, left in place (the client takes it for its message).
    fn peek(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, line: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
    }
}

/// Accepts exactly the certificate whose SHA-256 is `pin`, and checks
/// the handshake's signature with it.
struct Pinned {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
    refusals: Refusals,
}

impl fmt::Debug for Pinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pinned({})", self.pin)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of_der(end_entity);
        if seen == self.pin {
            return Ok(ServerCertVerified::assertion());
        }
        self.refusals.set(format!(
            "its certificate is not the one this PC trusts (SHA-256 {seen}, expected {}): another server, or \
             someone in between; nothing was sent",
            self.pin
        ));
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS step of a client's connector chain.
pub struct PinnedTls {
    config: Option<Arc<ClientConfig>>,
    refusals: Refusals,
}

impl fmt::Debug for PinnedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinnedTls")
    }
}

/// The TLS step for a server pinned to `pin` (None: `https://` refused;
/// `http://` works either way). Its refusals land in `refusals`.
pub fn connector(pin: Option<Fingerprint>, refusals: Refusals) -> Result<PinnedTls, String> {
    let config = match pin {
        None => None,
        Some(pin) => {
            let provider = Arc::new(provider());
            let verifier = Arc::new(Pinned { pin, provider: provider.clone(), refusals: refusals.clone() });
            let config = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| format!("setting up TLS: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Some(Arc::new(config))
        }
    };
    Ok(PinnedTls { config, refusals })
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
        let Some(config) = &self.config else {
            return Err(ureq::Error::Tls(
                "an https:// server needs its certificate's fingerprint (--fingerprint, or fingerprint= in the PC's settings)",
            ));
        };
        let host = details.uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|_| ureq::Error::Tls("not a host name"))?;
        let mut conn =
            ClientConnection::new(config.clone(), name).map_err(|e| ureq::Error::Io(std::io::Error::other(e)))?;
        let mut sock = Buffered::new(TransportAdapter::new(transport.boxed(), details.current_time.clone()));
        sock.inner.set_timeout(details.timeout);
        if let Err(e) = conn.complete_io(&mut sock) {
            return Err(ureq::Error::Io(match self.refusals.peek() {
                Some(line) => std::io::Error::new(std::io::ErrorKind::PermissionDenied, line),
                None => e,
            }));
        }
        let buffers = LazyBuffers::new(details.config.input_buffer_size(), details.config.output_buffer_size());
        Ok(Some(Either::B(PinnedTransport { buffers, stream: StreamOwned { conn, sock } })))
    }
}

/// The socket under rustls, read in large pieces: rustls asks for at most
/// 4 KiB at a time, which would cost a system call (and ureq's timeout
/// set-up) per 4 KiB of a restore.
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
    stream: StreamOwned<ClientConnection, Buffered>,
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
