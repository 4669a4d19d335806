//! A TLS 1.3 client for one server known by its certificate's SHA-256
//! (RFC 8446, the part a pinned bootvault server needs).
//!
//! The client offers exactly one key exchange (X25519), one signature
//! scheme (Ed25519) and ChaCha20-Poly1305 (with AES-128-GCM first in
//! host builds, [`Suite`]); no session resumption, no early data, no
//! client certificate, no HelloRetryRequest. It accepts the server only
//! when the first certificate's SHA-256 is the pin and the server signed
//! the handshake with that certificate's key (CertificateVerify) and
//! proved it derived the same keys (Finished). Anything else ends the
//! handshake before an application byte is sent.
//!
//! Why not rustls, which the server runs: the same client in rustls
//! weighed 213 KB more in the init (BENCHMARKS.md "What the init weighs");
//! this one is a few KB over ring's primitives, which the init holds
//! anyway for sealing. Every test that talks to `bootvault serve` runs
//! this client against rustls's server.
//!
//! Pure parts (key schedule, messages, the certificate's key) are
//! functions of bytes; [`connect`] and [`Tls`] do the I/O on any
//! `Read + Write`.

use std::io::{self, Read, Write};

use bootvault_common::fingerprint::Fingerprint;
use ring::{aead, agreement, digest, hmac, rand, signature};
use zeroize::Zeroize;

/// Largest plaintext in one record (RFC 8446 5.1).
const MAX_PLAIN: usize = 1 << 14;
/// Largest protected record body: plaintext, content type, padding, tag.
const MAX_CIPHERTEXT: usize = MAX_PLAIN + 256;
/// Largest handshake message taken (the server's certificate is < 1 KiB).
const MAX_MESSAGE: usize = 64 << 10;

const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const CHANGE_CIPHER_SPEC: u8 = 20;

const SERVER_HELLO: u8 = 2;
const NEW_SESSION_TICKET: u8 = 4;
const ENCRYPTED_EXTENSIONS: u8 = 8;
const CERTIFICATE: u8 = 11;
const CERTIFICATE_VERIFY: u8 = 15;
const FINISHED: u8 = 20;
const KEY_UPDATE: u8 = 24;

const X25519: u16 = 0x001d;
const ED25519: u16 = 0x0807;
const TLS13: u16 = 0x0304;

/// SHA-256("HelloRetryRequest"): a ServerHello with this random asks for
/// another key share.
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91, 0xc2, 0xa2, 0x11,
    0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// A cipher suite the client can offer (all with SHA-256).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// TLS_CHACHA20_POLY1305_SHA256: fast without AES instructions.
    Chacha20Poly1305,
    /// TLS_AES_128_GCM_SHA256: about three times faster with them.
    Aes128Gcm,
}

impl Suite {
    fn id(self) -> u16 {
        match self {
            Suite::Chacha20Poly1305 => 0x1303,
            Suite::Aes128Gcm => 0x1301,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Suite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
            Suite::Aes128Gcm => &aead::AES_128_GCM,
        }
    }
}

/// Why a handshake did not end in a connection.
#[derive(Debug)]
pub enum Failure {
    /// The server showed another certificate (its SHA-256 here).
    Pin(Fingerprint),
    /// The socket failed, or the server broke the protocol.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {}", what.into()))
}

// ---- key schedule (RFC 8446 7.1), SHA-256 throughout ----

type Secret = [u8; 32];

fn hmac_parts(key: &[u8], parts: &[&[u8]]) -> Secret {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// HKDF-Extract: HMAC(salt, ikm).
fn extract(salt: &Secret, ikm: &Secret) -> Secret {
    hmac_parts(salt, &[ikm])
}

/// HKDF-Expand-Label for outputs of at most one hash (all TLS 1.3 with
/// SHA-256 asks for): T(1) = HMAC(secret, HkdfLabel || 0x01), cut.
fn expand_label(secret: &Secret, label: &str, context: &[u8], out: &mut [u8]) {
    debug_assert!(out.len() <= 32 && label.len() <= 249 && context.len() <= 255);
    let len = (out.len() as u16).to_be_bytes();
    let t = hmac_parts(
        secret,
        &[&len, &[6 + label.len() as u8], b"tls13 ", label.as_bytes(), &[context.len() as u8], context, &[1]],
    );
    out.copy_from_slice(&t[..out.len()]);
}

fn derive_secret(secret: &Secret, label: &str, hash: &[u8]) -> Secret {
    let mut out = [0; 32];
    expand_label(secret, label, hash, &mut out);
    out
}

fn sha256(data: &[u8]) -> Secret {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// The handshake and master secrets from the X25519 shared secret (no PSK).
fn schedule(shared: &Secret) -> (Secret, Secret) {
    let empty = sha256(b"");
    let early = extract(&[0; 32], &[0; 32]);
    let handshake = extract(&derive_secret(&early, "derived", &empty), shared);
    let master = extract(&derive_secret(&handshake, "derived", &empty), &[0; 32]);
    (handshake, master)
}

fn finished_mac(base: &Secret, transcript: &Secret) -> Secret {
    let key = derive_secret(base, "finished", &[]);
    hmac_parts(&key, &[transcript])
}

/// One direction's traffic protection: key, IV and record sequence.
struct Direction {
    suite: Suite,
    secret: Secret,
    key: aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new(suite: Suite, secret: Secret) -> Direction {
        let alg = suite.aead();
        let mut key = [0u8; 32];
        expand_label(&secret, "key", &[], &mut key[..alg.key_len()]);
        let mut iv = [0; 12];
        expand_label(&secret, "iv", &[], &mut iv);
        let unbound = aead::UnboundKey::new(alg, &key[..alg.key_len()]).expect("key length is the algorithm's");
        key.zeroize();
        Direction { suite, secret, key: aead::LessSafeKey::new(unbound), iv, seq: 0 }
    }

    /// The next generation of keys (KeyUpdate, RFC 8446 7.2).
    fn update(&mut self) {
        let next = derive_secret(&self.secret, "traffic upd", &[]);
        *self = Direction::new(self.suite, next);
    }

    fn nonce(&mut self) -> io::Result<aead::Nonce> {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq = self.seq.checked_add(1).ok_or_else(|| bad("record sequence exhausted"))?;
        Ok(aead::Nonce::assume_unique_for_key(n))
    }

    /// Appends `data` to `out` as protected records of content `typ`.
    fn seal(&mut self, typ: u8, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let mut pieces = data.chunks(MAX_PLAIN).peekable();
        if pieces.peek().is_none() {
            return Ok(());
        }
        for piece in pieces {
            let len = piece.len() + 1 + self.key.algorithm().tag_len();
            let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
            out.extend_from_slice(&header);
            let start = out.len();
            out.extend_from_slice(piece);
            out.push(typ);
            let nonce = self.nonce()?;
            let tag = self
                .key
                .seal_in_place_separate_tag(nonce, aead::Aad::from(header), &mut out[start..])
                .map_err(|_| bad("sealing a record"))?;
            out.extend_from_slice(tag.as_ref());
        }
        Ok(())
    }

    /// Opens one protected record in place: (content type, plaintext length).
    fn open(&mut self, header: [u8; 5], body: &mut [u8]) -> io::Result<(u8, usize)> {
        let nonce = self.nonce()?;
        let plain = self
            .key
            .open_in_place(nonce, aead::Aad::from(header), body)
            .map_err(|_| bad("a record from the server failed its authentication (altered on the way?)"))?;
        let end = plain.iter().rposition(|b| *b != 0).ok_or_else(|| bad("a record without a content type"))?;
        if end > MAX_PLAIN {
            return Err(bad("a record longer than TLS allows"));
        }
        Ok((plain[end], end))
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

// ---- messages ----

/// A cursor over bytes; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("a message shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> io::Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> io::Result<usize> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    fn vec8(&mut self) -> io::Result<Reader<'a>> {
        let n = self.u8()?;
        Ok(Reader(self.take(n.into())?))
    }

    fn vec16(&mut self) -> io::Result<Reader<'a>> {
        let n = self.u16()?;
        Ok(Reader(self.take(n.into())?))
    }

    fn vec24(&mut self) -> io::Result<Reader<'a>> {
        let n = self.u24()?;
        Ok(Reader(self.take(n)?))
    }

    fn end(&self, what: &str) -> io::Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("trailing bytes in {what}")))
        }
    }
}

/// The ClientHello handshake message (with its 4-byte header).
fn client_hello(random: &[u8; 32], share: &[u8], suites: &[Suite]) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, typ: u16, body: &[u8]) {
        out.extend_from_slice(&typ.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut exts = Vec::with_capacity(64);
    ext(&mut exts, 43, &[2, 3, 4]); // supported_versions: TLS 1.3
    ext(&mut exts, 10, &[0, 2, 0, 0x1d]); // supported_groups: x25519
    ext(&mut exts, 13, &[0, 2, 8, 7]); // signature_algorithms: ed25519
    let mut ks = vec![0, 36, 0, 0x1d, 0, 32]; // key_share: x25519
    ks.extend_from_slice(share);
    ext(&mut exts, 51, &ks);
    let mut body = vec![3, 3];
    body.extend_from_slice(random);
    body.push(0); // no legacy session id (no middlebox compatibility mode)
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.id().to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut msg = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    msg.extend_from_slice(&body);
    msg
}

/// The suite and the server's X25519 share from a ServerHello body.
fn server_hello(body: &[u8], offered: &[Suite]) -> io::Result<(Suite, [u8; 32])> {
    let mut r = Reader(body);
    if r.u16()? != 0x0303 {
        return Err(bad("the server answered with another TLS version"));
    }
    if r.take(32)? == HRR_RANDOM {
        return Err(bad("the server asked for another key exchange; this client offers X25519 only"));
    }
    if !r.vec8()?.0.is_empty() {
        return Err(bad("the server echoed a session id this client did not send"));
    }
    let id = r.u16()?;
    let suite = *offered.iter().find(|s| s.id() == id).ok_or_else(|| bad("the server chose a suite not offered"))?;
    if r.u8()? != 0 {
        return Err(bad("the server chose compression"));
    }
    let mut exts = r.vec16()?;
    r.end("ServerHello")?;
    let (mut version, mut share) = (false, None);
    while !exts.0.is_empty() {
        let typ = exts.u16()?;
        let mut data = exts.vec16()?;
        match typ {
            43 if !version => {
                if data.u16()? != TLS13 {
                    return Err(bad("the server does not speak TLS 1.3"));
                }
                version = true;
            }
            51 if share.is_none() => {
                if data.u16()? != X25519 {
                    return Err(bad("the server chose a key exchange not offered"));
                }
                let key = data.vec16()?;
                share = Some(<[u8; 32]>::try_from(key.0).map_err(|_| bad("an X25519 share of the wrong length"))?);
            }
            _ => return Err(bad(format!("the server sent extension {typ} in its ServerHello"))),
        }
        data.end("a ServerHello extension")?;
    }
    match (version, share) {
        (true, Some(share)) => Ok((suite, share)),
        (false, _) => Err(bad("the server does not speak TLS 1.3")),
        (true, None) => Err(bad("the server sent no key share")),
    }
}

/// The first certificate of a Certificate message body.
fn first_certificate(body: &[u8]) -> io::Result<&[u8]> {
    let mut r = Reader(body);
    if !r.vec8()?.0.is_empty() {
        return Err(bad("a certificate request context the client did not ask for"));
    }
    let mut list = r.vec24()?;
    r.end("Certificate")?;
    let cert = list.vec24()?;
    list.vec16()?; // the entry's extensions
    if cert.0.is_empty() {
        return Err(bad("the server sent no certificate"));
    }
    Ok(cert.0)
}

/// One DER element: (tag, contents), and the rest.
fn der(input: &[u8]) -> io::Result<(u8, &[u8], &[u8])> {
    let e = || bad("the certificate is not DER");
    let (&tag, rest) = input.split_first().ok_or_else(e)?;
    let (&first, mut rest) = rest.split_first().ok_or_else(e)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return Err(e());
        }
        let len = rest[..n].iter().fold(0usize, |a, b| a << 8 | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(e());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The Ed25519 public key of an X.509 certificate (RFC 5280, RFC 8410).
pub fn ed25519_key(cert: &[u8]) -> io::Result<[u8; 32]> {
    let (tag, cert, _) = der(cert)?;
    let (tag2, mut tbs, _) = der(cert)?;
    if tag != 0x30 || tag2 != 0x30 {
        return Err(bad("the certificate is not DER"));
    }
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs)?.2; // version
    }
    for _ in 0..5 {
        tbs = der(tbs)?.2; // serial, signature algorithm, issuer, validity, subject
    }
    let (tag, spki, _) = der(tbs)?;
    let (tag_alg, alg, rest) = der(spki)?;
    let (tag_key, key, _) = der(rest)?;
    const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    if tag != 0x30 || tag_alg != 0x30 || alg != ED25519_OID || tag_key != 0x03 || key.len() != 33 || key[0] != 0 {
        return Err(bad("the server's certificate does not hold an Ed25519 key"));
    }
    let mut out = [0; 32];
    out.copy_from_slice(&key[1..]);
    Ok(out)
}

/// Checks a CertificateVerify body against the transcript hash up to the
/// Certificate (RFC 8446 4.4.3).
fn certificate_verify(body: &[u8], key: &[u8; 32], transcript: &Secret) -> io::Result<()> {
    let mut r = Reader(body);
    if r.u16()? != ED25519 {
        return Err(bad("the server signed with a scheme not offered"));
    }
    let sig = r.vec16()?;
    r.end("CertificateVerify")?;
    let mut content = vec![0x20; 64];
    content.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
    content.extend_from_slice(transcript);
    signature::UnparsedPublicKey::new(&signature::ED25519, key)
        .verify(&content, sig.0)
        .map_err(|_| bad("the server's handshake signature is wrong"))
}

// ---- records and the handshake ----

/// The record layer under a handshake or a connection.
struct Records {
    buf: Vec<u8>,
    /// Bytes of handshake messages not yet taken.
    handshake: Vec<u8>,
}

impl Records {
    /// Reads one record: its header, its body into `self.buf`. None at a
    /// clean end of the stream (between records).
    fn read<S: Read>(&mut self, sock: &mut S) -> io::Result<Option<[u8; 5]>> {
        let mut header = [0u8; 5];
        let mut got = 0;
        while got < 5 {
            match sock.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_CIPHERTEXT || header[1] != 3 {
            return Err(bad("not a TLS record"));
        }
        self.buf.resize(len, 0);
        sock.read_exact(&mut self.buf)?;
        Ok(Some(header))
    }

    /// The next whole handshake message (header included), reading
    /// records as needed: plaintext before keys, protected after.
    fn message<S: Read>(&mut self, sock: &mut S, mut keys: Option<&mut Direction>) -> io::Result<Vec<u8>> {
        loop {
            if self.handshake.len() >= 4 {
                let len = Reader(&self.handshake[1..4]).u24()?;
                if len > MAX_MESSAGE {
                    return Err(bad("a handshake message too long"));
                }
                if self.handshake.len() >= 4 + len {
                    return Ok(self.handshake.drain(..4 + len).collect());
                }
            }
            let header = self.read(sock)?.ok_or_else(|| bad("the server closed the connection in the handshake"))?;
            match (header[0], keys.as_deref_mut()) {
                (CHANGE_CIPHER_SPEC, _) if self.buf == [1] => continue,
                (HANDSHAKE, None) => self.handshake.extend_from_slice(&self.buf),
                (ALERT, None) => return Err(alert(&self.buf)),
                (APPLICATION_DATA, Some(k)) => {
                    let (typ, n) = k.open(header, &mut self.buf)?;
                    match typ {
                        HANDSHAKE => self.handshake.extend_from_slice(&self.buf[..n]),
                        ALERT => return Err(alert(&self.buf[..n])),
                        _ => return Err(bad("data before the handshake ended")),
                    }
                }
                _ => return Err(bad(format!("an unexpected record (type {})", header[0]))),
            }
        }
    }
}

fn alert(body: &[u8]) -> io::Error {
    match body {
        [_, 0] => io::Error::new(io::ErrorKind::ConnectionAborted, "TLS: the server closed the connection"),
        [_, d] => bad(format!("the server ended the connection (alert {d})")),
        _ => bad("a malformed alert"),
    }
}

/// Running hash of the handshake messages.
struct Transcript(digest::Context);

impl Transcript {
    fn add(&mut self, msg: &[u8]) {
        self.0.update(msg);
    }

    fn now(&self) -> Secret {
        let mut out = [0; 32];
        out.copy_from_slice(self.0.clone().finish().as_ref());
        out
    }
}

/// Runs the handshake on `sock` with a server pinned to `pin`.
pub fn connect<S: Read + Write>(mut sock: S, pin: &Fingerprint, suites: &[Suite]) -> Result<Tls<S>, Failure> {
    let rng = rand::SystemRandom::new();
    let random: [u8; 32] = rand::generate(&rng).map_err(|_| bad("no random numbers"))?.expose();
    let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).map_err(|_| bad("no key"))?;
    let public = private.compute_public_key().map_err(|_| bad("no key"))?;
    let hello = client_hello(&random, public.as_ref(), suites);
    let mut record = vec![HANDSHAKE, 3, 1, (hello.len() >> 8) as u8, hello.len() as u8];
    record.extend_from_slice(&hello);
    sock.write_all(&record)?;
    sock.flush()?;
    let mut transcript = Transcript(digest::Context::new(&digest::SHA256));
    transcript.add(&hello);
    let mut records = Records { buf: Vec::with_capacity(MAX_CIPHERTEXT), handshake: Vec::new() };

    let sh = records.message(&mut sock, None)?;
    if sh[0] != SERVER_HELLO {
        return Err(bad("the server did not answer with a ServerHello").into());
    }
    let (suite, share) = server_hello(&sh[4..], suites)?;
    transcript.add(&sh);
    if !records.handshake.is_empty() {
        return Err(bad("handshake bytes across a key change").into());
    }
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, share);
    let mut shared = agreement::agree_ephemeral(private, &peer, |s| {
        let mut a = [0u8; 32];
        a.copy_from_slice(s);
        a
    })
    .map_err(|_| bad("the server's X25519 share is invalid"))?;
    let (mut hs_secret, mut master) = schedule(&shared);
    shared.zeroize();
    let hash = transcript.now();
    let client_hs = derive_secret(&hs_secret, "c hs traffic", &hash);
    let server_hs = derive_secret(&hs_secret, "s hs traffic", &hash);
    hs_secret.zeroize();
    let mut read = Direction::new(suite, server_hs);

    let ee = records.message(&mut sock, Some(&mut read))?;
    if ee[0] != ENCRYPTED_EXTENSIONS {
        return Err(bad("no EncryptedExtensions").into());
    }
    let mut r = Reader(&ee[4..]);
    r.vec16()?;
    r.end("EncryptedExtensions")?;
    transcript.add(&ee);

    let cert = records.message(&mut sock, Some(&mut read))?;
    if cert[0] != CERTIFICATE {
        return Err(bad(format!("handshake message {} where the certificate belongs", cert[0])).into());
    }
    let der = first_certificate(&cert[4..])?;
    let seen = Fingerprint::of_der(der);
    if seen != *pin {
        return Err(Failure::Pin(seen));
    }
    let key = ed25519_key(der)?;
    transcript.add(&cert);

    let cv = records.message(&mut sock, Some(&mut read))?;
    if cv[0] != CERTIFICATE_VERIFY {
        return Err(bad("no CertificateVerify").into());
    }
    certificate_verify(&cv[4..], &key, &transcript.now())?;
    transcript.add(&cv);

    let fin = records.message(&mut sock, Some(&mut read))?;
    if fin[0] != FINISHED {
        return Err(bad("no Finished").into());
    }
    // verify_data = HMAC(finished_key, transcript), compared by ring in
    // constant time.
    let key = hmac::Key::new(hmac::HMAC_SHA256, &derive_secret(&read.secret, "finished", &[]));
    if hmac::verify(&key, &transcript.now(), &fin[4..]).is_err() {
        return Err(bad("the server's Finished is wrong").into());
    }
    transcript.add(&fin);
    if !records.handshake.is_empty() {
        return Err(bad("handshake bytes across a key change").into());
    }

    let hash = transcript.now();
    let client_ap = derive_secret(&master, "c ap traffic", &hash);
    let server_ap = derive_secret(&master, "s ap traffic", &hash);
    master.zeroize();
    let mut finished = vec![FINISHED, 0, 0, 32];
    finished.extend_from_slice(&finished_mac(&client_hs, &hash));
    let mut write = Direction::new(suite, client_hs);
    let mut out = Vec::with_capacity(64);
    write.seal(HANDSHAKE, &finished, &mut out)?;
    sock.write_all(&out)?;
    sock.flush()?;

    Ok(Tls {
        sock,
        read: Direction::new(suite, server_ap),
        write: Direction::new(suite, client_ap),
        records,
        plain: 0..0,
        out,
        closed: false,
    })
}

/// An established connection: application data over `sock`.
pub struct Tls<S> {
    sock: S,
    read: Direction,
    write: Direction,
    records: Records,
    /// Unread plaintext in `records.buf`.
    plain: std::ops::Range<usize>,
    out: Vec<u8>,
    closed: bool,
}

impl<S> Tls<S> {
    /// The socket under the connection.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.sock
    }

    /// The negotiated suite.
    pub fn suite(&self) -> Suite {
        self.read.suite
    }
}

impl<S: Read + Write> Tls<S> {
    /// Handles post-handshake messages: session tickets (ignored, this
    /// client never resumes) and key updates.
    fn post_handshake(&mut self) -> io::Result<()> {
        while self.records.handshake.len() >= 4 {
            let len = Reader(&self.records.handshake[1..4]).u24()?;
            if len > MAX_MESSAGE {
                return Err(bad("a handshake message too long"));
            }
            if self.records.handshake.len() < 4 + len {
                return Ok(());
            }
            let msg: Vec<u8> = self.records.handshake.drain(..4 + len).collect();
            match (msg[0], &msg[4..]) {
                (NEW_SESSION_TICKET, _) => {}
                (KEY_UPDATE, [requested @ (0 | 1)]) => {
                    if !self.records.handshake.is_empty() {
                        return Err(bad("handshake bytes across a key change"));
                    }
                    self.read.update();
                    if *requested == 1 {
                        let mut out = std::mem::take(&mut self.out);
                        out.clear();
                        self.write.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], &mut out)?;
                        self.write.update();
                        let sent = self.sock.write_all(&out);
                        self.out = out;
                        sent?;
                    }
                }
                (t, _) => return Err(bad(format!("an unexpected handshake message ({t}) after the handshake"))),
            }
        }
        Ok(())
    }
}

impl<S: Read + Write> Read for Tls<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.plain.is_empty() {
            if self.closed {
                return Ok(0);
            }
            let Some(header) = self.records.read(&mut self.sock)? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TLS: the server closed without close_notify",
                ));
            };
            if header[0] != APPLICATION_DATA {
                return Err(bad(format!("an unprotected record (type {}) after the handshake", header[0])));
            }
            let (typ, n) = self.read.open(header, &mut self.records.buf)?;
            match typ {
                APPLICATION_DATA => self.plain = 0..n,
                HANDSHAKE => {
                    let Records { buf, handshake } = &mut self.records;
                    handshake.extend_from_slice(&buf[..n]);
                    self.post_handshake()?;
                }
                ALERT => match alert(&self.records.buf[..n]) {
                    e if e.kind() == io::ErrorKind::ConnectionAborted => self.closed = true,
                    e => return Err(e),
                },
                t => return Err(bad(format!("a record of unknown type {t}"))),
            }
        }
        let n = out.len().min(self.plain.len());
        out[..n].copy_from_slice(&self.records.buf[self.plain.start..self.plain.start + n]);
        self.plain.start += n;
        Ok(n)
    }
}

impl<S: Read + Write> Write for Tls<S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.out.clear();
        self.write.seal(APPLICATION_DATA, data, &mut self.out)?;
        self.sock.write_all(&self.out)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn arr(s: &str) -> Secret {
        Secret::try_from(unhex(s).as_slice()).expect("32 bytes")
    }

    /// OpenSSL's key schedule for one handshake (the vectors rustls
    /// tests its own against): traffic secrets, keys and IVs.
    #[test]
    fn key_schedule_matches_openssl() {
        let shared = arr("e7b8fef8903b520cb9a18971b69dd45dca53ce2f12bf3bef9315e31271df4b40");
        let start = arr("ec147a06dea3c8846c02b2238e41bddc9d89f9aea17b5efd4d7482af75881c0a");
        let full = arr("751a3d4a14dfabeb68e92ca5918e2408b9bcb0748982ec9c3230ac30bbeb23e2");
        let (hs, master) = schedule(&shared);
        let check = |secret: Secret, want: &str, key: &str, iv: &str| {
            assert_eq!(secret.to_vec(), unhex(want));
            let mut k = [0; 16];
            expand_label(&secret, "key", &[], &mut k);
            assert_eq!(k.to_vec(), unhex(key));
            let mut v = [0; 12];
            expand_label(&secret, "iv", &[], &mut v);
            assert_eq!(v.to_vec(), unhex(iv));
        };
        check(
            derive_secret(&hs, "c hs traffic", &start),
            "617b35076b9d0e08cf731d94a86614784109ef255551921dd46e040135cf46ab",
            "62d0dd00f69619d3b8193ab4a09585a7",
            "fff75df5ad35d5cb3c53f3a9",
        );
        check(
            derive_secret(&hs, "s hs traffic", &start),
            "fcf7dfe64fa2c04f6235387f434e01422336d9c039de6847a0b9ddcf29a88759",
            "0467f316a805b8c497ee67047bbcbc54",
            "de83a73e9d814b04c48b7809",
        );
        check(
            derive_secret(&master, "c ap traffic", &full),
            "c14a6d7976d8102b5a0c9951493fee87dcaff82c24cab214e8be71a8206dbda5",
            "cc9f5f980b5f10306cbad7be98d7572e",
            "b80929e8d02c70f61162ed6b",
        );
        check(
            derive_secret(&master, "s ap traffic", &full),
            "2c907738d3f83702d1e4598f4848531d9f9365491b9f7f52c822290d4c232192",
            "0cb29562d8d88f48b02cbfbed7e62bb3",
            "0db28f988586a1b7e4d5c69c",
        );
    }

    fn hello(random: [u8; 32], suite: u16, exts: &[u8]) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&random);
        b.push(0);
        b.extend_from_slice(&suite.to_be_bytes());
        b.push(0);
        b.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        b.extend_from_slice(exts);
        b
    }

    const GOOD_EXTS: &[u8] = &[
        0, 43, 0, 2, 3, 4, 0, 51, 0, 36, 0, 0x1d, 0, 32, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
        9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
    ];

    #[test]
    fn server_hellos_outside_what_was_offered_are_refused() {
        let chacha = &[Suite::Chacha20Poly1305];
        assert_eq!(server_hello(&hello([1; 32], 0x1303, GOOD_EXTS), chacha).expect("good").1, [9; 32]);
        let refused = |b: Vec<u8>, what: &str| {
            let e = server_hello(&b, chacha).expect_err(what).to_string();
            assert!(e.contains(what), "{e}");
        };
        refused(hello(HRR_RANDOM, 0x1303, GOOD_EXTS), "another key exchange");
        refused(hello([1; 32], 0x1301, GOOD_EXTS), "suite not offered");
        refused(hello([1; 32], 0x1303, &GOOD_EXTS[6..]), "TLS 1.3");
        refused(hello([1; 32], 0x1303, &GOOD_EXTS[..6]), "no key share");
        refused(hello([1; 32], 0x1303, &[GOOD_EXTS, &[0, 0, 0, 0]].concat()), "extension 0");
        let mut short = hello([1; 32], 0x1303, GOOD_EXTS);
        short.pop();
        refused(short, "shorter");
        let mut p256 = GOOD_EXTS.to_vec();
        p256[11] = 0x17;
        refused(hello([1; 32], 0x1303, &p256), "key exchange not offered");
    }

    #[test]
    fn the_client_hello_offers_only_what_it_takes() {
        let m = client_hello(&[7; 32], &[5; 32], &[Suite::Aes128Gcm, Suite::Chacha20Poly1305]);
        assert_eq!(m[0], 1);
        assert_eq!(Reader(&m[1..4]).u24().expect("len"), m.len() - 4);
        let mut r = Reader(&m[4..]);
        assert_eq!(r.u16().expect("version"), 0x0303);
        assert_eq!(r.take(32).expect("random"), [7; 32]);
        assert!(r.vec8().expect("session").0.is_empty());
        assert_eq!(r.vec16().expect("suites").0, [0x13, 0x01, 0x13, 0x03]);
        assert_eq!(r.vec8().expect("compression").0, [0]);
        let exts = r.vec16().expect("extensions").0;
        r.end("hello").expect("end");
        assert!(exts.windows(2).any(|w| w == [8, 7]), "ed25519 offered");
        assert!(exts.ends_with(&[5; 32]), "the key share last");
    }

    #[test]
    fn der_walking_refuses_what_it_cannot_read() {
        assert!(ed25519_key(&[]).is_err());
        assert!(ed25519_key(&[0x30, 0x84, 0, 0, 0, 1, 0]).is_err());
        assert!(ed25519_key(&[0x30, 0x05, 0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
    }
}
