//! The TLS 1.3 client (engine/src/tls13.rs) against rustls's server, the
//! one `bootvault serve` runs: data both ways across many records, the
//! server's session tickets and key updates, both suites; and what it
//! refuses: another certificate, a record altered on the way (in the
//! handshake and after it), a server that only speaks other algorithms.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use bootvault_common::fingerprint::Fingerprint;
use bootvault_engine::tls13::{self, Failure, Suite};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed certificate as the server makes it: (DER, key).
fn certificate(alg: &'static rcgen::SignatureAlgorithm) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["bootvault".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    (cert.der().to_vec(), key.serialize_der())
}

fn server_config(cert: &(Vec<u8>, Vec<u8>)) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.0.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.1.clone())),
        )
        .expect("server config");
    Arc::new(config)
}

/// A rustls server on 127.0.0.1 that echoes what it reads, asking for a
/// key update after `update_after` bytes; its port.
fn echo_server(config: Arc<rustls::ServerConfig>, update_after: Option<usize>) -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let h = thread::spawn(move || {
        let Ok((sock, _)) = listener.accept() else { return };
        let Ok(conn) = rustls::ServerConnection::new(config) else { return };
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut buf = vec![0; 64 << 10];
        let mut total = 0;
        let mut updated = false;
        loop {
            let n = match tls.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            total += n;
            if update_after.is_some_and(|a| total >= a && !updated) {
                updated = true;
                if tls.conn.refresh_traffic_keys().is_err() {
                    return;
                }
            }
            if tls.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    (port, h)
}

fn round_trip(suites: &[Suite], update_after: Option<usize>) -> Suite {
    let cert = certificate(&rcgen::PKCS_ED25519);
    let (port, server) = echo_server(server_config(&cert), update_after);
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut tls = tls13::connect(sock, &Fingerprint::of_der(&cert.0), suites).expect("handshake");
    let data = bootvault_common::testdata::noise(7, 3 << 20);
    let mut back = vec![0; data.len()];
    // Write and read in turns so neither side's buffers fill up.
    for (piece, out) in data.chunks(100_000).zip(back.chunks_mut(100_000)) {
        tls.write_all(piece).expect("write");
        tls.flush().expect("flush");
        tls.read_exact(out).expect("read");
    }
    assert!(back == data, "the echo differs");
    let suite = tls.suite();
    drop(tls);
    server.join().expect("server");
    suite
}

#[test]
fn echoes_megabytes_through_rustls_with_tickets_and_key_updates() {
    assert_eq!(round_trip(&[Suite::Chacha20Poly1305], None), Suite::Chacha20Poly1305);
    assert_eq!(round_trip(&[Suite::Chacha20Poly1305], Some(1 << 20)), Suite::Chacha20Poly1305);
    assert_eq!(round_trip(&[Suite::Aes128Gcm, Suite::Chacha20Poly1305], Some(5000)), Suite::Aes128Gcm);
}

#[test]
fn another_certificate_is_refused_with_its_fingerprint() {
    let theirs = certificate(&rcgen::PKCS_ED25519);
    let ours = certificate(&rcgen::PKCS_ED25519);
    let (port, _server) = echo_server(server_config(&theirs), None);
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    match tls13::connect(sock, &Fingerprint::of_der(&ours.0), &[Suite::Chacha20Poly1305]) {
        Err(Failure::Pin(seen)) => assert_eq!(seen, Fingerprint::of_der(&theirs.0)),
        Err(Failure::Io(e)) => panic!("not a pin refusal: {e}"),
        Ok(_) => panic!("accepted another certificate"),
    }
}

#[test]
fn a_server_without_ed25519_is_refused_cleanly() {
    let cert = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (port, _server) = echo_server(server_config(&cert), None);
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    match tls13::connect(sock, &Fingerprint::of_der(&cert.0), &[Suite::Chacha20Poly1305]) {
        Err(Failure::Io(e)) => assert!(e.to_string().contains("TLS:"), "{e}"),
        Err(Failure::Pin(seen)) => panic!("pin refusal for the right certificate: {seen}"),
        Ok(_) => panic!("accepted a handshake it cannot verify"),
    }
}

/// The socket with one byte flipped at a given offset of what it reads.
struct Flip {
    sock: TcpStream,
    read: usize,
    at: Option<usize>,
}

impl Read for Flip {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        if let Some(at) = self.at {
            if at >= self.read && at < self.read + n {
                buf[at - self.read] ^= 0x01;
                self.at = None;
            }
        }
        self.read += n;
        Ok(n)
    }
}

impl Write for Flip {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

#[test]
fn a_record_altered_on_the_way_is_refused() {
    let cert = certificate(&rcgen::PKCS_ED25519);
    let pin = Fingerprint::of_der(&cert.0);
    // In the handshake: in the ServerHello's random (the transcript, and
    // so every key, differs) and in the protected certificate.
    for at in [20, 200] {
        let (port, _server) = echo_server(server_config(&cert), None);
        let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        match tls13::connect(Flip { sock, read: 0, at: Some(at) }, &pin, &[Suite::Chacha20Poly1305]) {
            Err(Failure::Io(e)) => assert!(e.to_string().contains("TLS:"), "byte {at}: {e}"),
            Err(Failure::Pin(seen)) => panic!("byte {at}: pin refusal {seen}"),
            Ok(_) => panic!("byte {at}: an altered handshake accepted"),
        }
    }
    // After it: the echo's first record.
    let (port, _server) = echo_server(server_config(&cert), None);
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut tls =
        tls13::connect(Flip { sock, read: 0, at: None }, &pin, &[Suite::Chacha20Poly1305]).expect("handshake");
    tls.write_all(b"hello, server").expect("write");
    let r = tls.get_mut();
    r.at = Some(r.read + 30);
    let mut buf = [0; 64];
    let e = loop {
        match tls.read(&mut buf) {
            Ok(0) => panic!("end of stream, no error"),
            Ok(n) => assert!(!buf[..n].starts_with(b"hello"), "altered data delivered"),
            Err(e) => break e,
        }
    };
    assert!(e.to_string().contains("failed its authentication"), "{e}");
}
