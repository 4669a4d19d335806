//! A machine in the middle: a TLS proxy on 127.0.0.1 that ends each
//! connection with a certificate of its own (a fresh Ed25519 key, as our
//! server's, so only the pin can tell them apart), reads what the client
//! sends in clear, and relays it over TLS to the real server (trusting
//! whatever certificate it shows, as an attacker would). The tests count
//! what it read: a client that checks its pin sends it nothing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::Result;

pub struct Interceptor {
    pub port: u16,
    /// Its own certificate's (a client pinned to it would talk through it:
    /// how the tests show the interceptor works).
    pub fingerprint: String,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    /// TLS handshakes a client completed with us.
    pub handshakes: Arc<AtomicU64>,
    /// Application bytes clients sent us (decrypted).
    pub plaintext: Arc<AtomicU64>,
}

impl Interceptor {
    /// Listens on a free port of 127.0.0.1, relaying to `127.0.0.1:target`.
    pub fn start(target: u16) -> Result<Interceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| e.to_string())?;
        let cert = rcgen::CertificateParams::new(vec!["bootvault".to_owned(), "127.0.0.1".to_owned()])
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| e.to_string())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der)
            .map_err(|e| e.to_string())?;
        let server = Arc::new(server);
        let upstream = trust_anything()?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("interceptor: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let me = Interceptor {
            port,
            fingerprint: bootvault_common::fingerprint::Fingerprint::of_der(cert.der()).to_string(),
            connections: Arc::default(),
            handshakes: Arc::default(),
            plaintext: Arc::default(),
        };
        let (connections, handshakes, plaintext) =
            (me.connections.clone(), me.handshakes.clone(), me.plaintext.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                connections.fetch_add(1, Ordering::Relaxed);
                let (server, upstream) = (server.clone(), upstream.clone());
                let (handshakes, plaintext) = (handshakes.clone(), plaintext.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, target, server, upstream, &handshakes, &plaintext);
                });
            }
        });
        Ok(me)
    }

    pub fn plaintext_bytes(&self) -> u64 {
        self.plaintext.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }
}

/// One client: our TLS to it, the attacker's TLS to the server, bytes
/// copied both ways in turn (enough for HTTP/1.1 request–answer).
fn relay(
    client: TcpStream,
    target: u16,
    server: Arc<rustls::ServerConfig>,
    upstream: Arc<rustls::ClientConfig>,
    handshakes: &AtomicU64,
    plaintext: &AtomicU64,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut theirs =
        rustls::StreamOwned::new(rustls::ServerConnection::new(server).map_err(std::io::Error::other)?, client);
    while theirs.conn.is_handshaking() {
        theirs.conn.complete_io(&mut theirs.sock)?;
    }
    handshakes.fetch_add(1, Ordering::Relaxed);
    let sock = TcpStream::connect(("127.0.0.1", target))?;
    let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    let mut ours =
        rustls::StreamOwned::new(rustls::ClientConnection::new(upstream, name).map_err(std::io::Error::other)?, sock);
    ours.sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    theirs.sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut moved = false;
        match theirs.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                plaintext.fetch_add(n as u64, Ordering::Relaxed);
                ours.write_all(&buf[..n])?;
                moved = true;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
        match ours.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                theirs.write_all(&buf[..n])?;
                moved = true;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
        if !moved {
            std::thread::yield_now();
        }
    }
}

/// A TLS client set-up that takes any server certificate: the attacker's
/// side here, and benches on 127.0.0.1.
pub fn trust_anything() -> crate::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAnything(provider)))
            .with_no_client_auth(),
    ))
}

/// The attacker's side: any certificate will do.
#[derive(Debug)]
struct TrustAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
