//! Client-side encryption, the pure part (issue 13; docs/DESIGN.md
//! "Encryption on the PC"): the keys a data key derives, keyed chunk ids,
//! and sealed chunk and manifest blobs. Randomness (nonces, new keys) is
//! the caller's: everything here takes it as a parameter.
//!
//! Not yet wired into the pipelines: backups are still stored as before.
//!
//! - A **data key** (32 random bytes) is what a key domain shares. From it,
//!   BLAKE3's `derive_key` makes three independent subkeys: one that names
//!   chunks, one that seals chunks, one that seals manifests.
//! - A **chunk id** under a data key is BLAKE3 keyed with the id subkey over
//!   the plain chunk: the same data gives the same id inside the domain (so
//!   deduplication keeps working), and ids say nothing across domains.
//! - A **sealed blob** is `TAG_SEALED ‖ nonce (24) ‖ XChaCha20-Poly1305(
//!   inner blob)`, the inner blob being the usual compressed or raw one,
//!   with the chunk id as associated data: a blob cannot be moved to
//!   another name, altered, or opened with another key without being
//!   detected. Random 192-bit nonces never repeat in practice.
//! - A **sealed manifest** is the same construction with the manifest
//!   subkey and its own associated data.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroizing;

use crate::image::ChunkId;

/// The first byte of a sealed blob (after raw 1, zstd 2, deflate 0).
pub const TAG_SEALED: u8 = 3;
pub const NONCE_BYTES: usize = 24;
/// What sealing adds to a blob: tag, nonce, Poly1305 tag.
pub const OVERHEAD: usize = 1 + NONCE_BYTES + 16;

const ID_CONTEXT: &str = "bootvault 2026-12 chunk id v1";
const CHUNK_CONTEXT: &str = "bootvault 2026-12 chunk seal v1";
const MANIFEST_CONTEXT: &str = "bootvault 2026-12 manifest seal v1";
const FINGERPRINT_CONTEXT: &str = "bootvault 2026-12 key fingerprint v1";
const SECRET_CONTEXT: &str = "bootvault 2026-12 secret seal v1";
const SECRET_AD: &[u8] = b"bootvault-secret-v1";
/// A 32-byte secret sealed with [`DataKey::seal_secret`].
pub const SEALED_SECRET_BYTES: usize = OVERHEAD + 32;
const CHUNK_AD: &[u8] = b"bootvault-chunk-v1";
const MANIFEST_AD: &[u8] = b"bootvault-manifest-v1";
/// The text form of a data key: `bootvault-key-v1 HEX`.
const KEY_TEXT_PREFIX: &str = "bootvault-key-v1 ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    /// Not a sealed blob (an unencrypted one, or garbage).
    NotSealed,
    /// Too short to hold a nonce and a tag.
    Truncated,
    /// The tag does not verify: altered, moved to another name, or
    /// sealed with another key.
    Forged,
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealError::NotSealed => "not an encrypted blob",
            SealError::Truncated => "encrypted blob too short",
            SealError::Forged => "encrypted blob does not verify (altered, misplaced, or another key)",
        })
    }
}

impl std::error::Error for SealError {}

/// The subkeys of one data key, wiped when dropped.
#[derive(Clone)]
pub struct DataKey {
    id: Zeroizing<[u8; 32]>,
    chunk: Zeroizing<[u8; 32]>,
    manifest: Zeroizing<[u8; 32]>,
    secret: Zeroizing<[u8; 32]>,
    fingerprint: [u8; 8],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.fingerprint())
    }
}

impl DataKey {
    pub fn new(master: &[u8; 32]) -> DataKey {
        let derive = |ctx: &str| Zeroizing::new(blake3::derive_key(ctx, master));
        let fp = blake3::derive_key(FINGERPRINT_CONTEXT, master);
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&fp[..8]);
        DataKey {
            id: derive(ID_CONTEXT),
            chunk: derive(CHUNK_CONTEXT),
            manifest: derive(MANIFEST_CONTEXT),
            secret: derive(SECRET_CONTEXT),
            fingerprint,
        }
    }

    /// 16 hex digits naming the key (not secret): what a backup records,
    /// so a restore with another key says which one it needs.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn fingerprint_bytes(&self) -> [u8; 8] {
        self.fingerprint
    }

    /// The id of a plain chunk inside this key domain.
    pub fn chunk_id(&self, plain: &[u8]) -> ChunkId {
        *blake3::keyed_hash(&self.id, plain).as_bytes()
    }

    /// Seals an inner blob under the name `id`.
    pub fn seal_chunk(&self, id: &ChunkId, inner: &[u8], nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
        seal(&self.chunk, &[CHUNK_AD, id].concat(), inner, nonce)
    }

    /// The inner blob of a sealed chunk blob named `id`.
    pub fn open_chunk(&self, id: &ChunkId, blob: &[u8]) -> Result<Vec<u8>, SealError> {
        open(&self.chunk, &[CHUNK_AD, id].concat(), blob)
    }

    /// [`DataKey::open_chunk`] without a copy: decrypts `blob` in place
    /// and returns the inner blob inside it.
    pub fn open_chunk_in_place<'a>(&self, id: &ChunkId, blob: &'a mut [u8]) -> Result<&'a [u8], SealError> {
        let (&mut tag, rest) = blob.split_first_mut().ok_or(SealError::NotSealed)?;
        if tag != TAG_SEALED {
            return Err(SealError::NotSealed);
        }
        if rest.len() < NONCE_BYTES + 16 {
            return Err(SealError::Truncated);
        }
        let (nonce, body) = rest.split_at_mut(NONCE_BYTES);
        let at = body.len() - 16;
        let (ct, mac) = body.split_at_mut(at);
        let (cipher, n) = xchacha(&self.chunk, nonce)?;
        let tag = Tag::try_from(&*mac).map_err(|_| SealError::Truncated)?;
        cipher
            .open_in_place_separate_tag(n, Aad::from(&[CHUNK_AD, id].concat()), tag, ct, 0..)
            .map_err(|_| SealError::Forged)?;
        Ok(&*ct)
    }

    /// Seals a manifest's bytes.
    pub fn seal_manifest(&self, bytes: &[u8], nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
        seal(&self.manifest, MANIFEST_AD, bytes, nonce)
    }

    pub fn open_manifest(&self, blob: &[u8]) -> Result<Vec<u8>, SealError> {
        open(&self.manifest, MANIFEST_AD, blob)
    }

    /// Seals a 32-byte secret for the PCs of this key (a job's password
    /// wrap key, which the server carries but cannot open).
    pub fn seal_secret(&self, secret: &[u8; 32], nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
        seal(&self.secret, SECRET_AD, secret, nonce)
    }

    pub fn open_secret(&self, blob: &[u8]) -> Result<Zeroizing<[u8; 32]>, SealError> {
        open_32(&self.secret, SECRET_AD, blob)
    }
}

/// XChaCha20-Poly1305 as its draft defines it: HChaCha20 of the key and
/// the nonce's first 16 bytes is the ChaCha20-Poly1305 key, the last 8
/// bytes (after four zero bytes) its nonce. HChaCha20 is RustCrypto's;
/// the bulk cipher is ring's, twice as fast as RustCrypto's and already
/// in the init for TLS (BENCHMARKS.md "Sealing").
fn xchacha(key: &[u8; 32], nonce: &[u8]) -> Result<(LessSafeKey, Nonce), SealError> {
    use chacha20::cipher::consts::U10;
    let (head, tail) = nonce.split_at(16);
    let mut sub = Zeroizing::new([0u8; 32]);
    sub.copy_from_slice(&chacha20::hchacha::<U10>(key.into(), head.into()));
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &sub[..]).map_err(|_| SealError::Truncated)?;
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(tail);
    Ok((LessSafeKey::new(unbound), Nonce::assume_unique_for_key(n)))
}

fn seal(key: &[u8; 32], ad: &[u8], msg: &[u8], nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
    // Encrypted in place in the one output buffer: no second copy of a chunk.
    let mut out = Vec::with_capacity(OVERHEAD + msg.len());
    out.push(TAG_SEALED);
    out.extend_from_slice(nonce);
    out.extend_from_slice(msg);
    let Ok((cipher, n)) = xchacha(key, nonce) else {
        // Never: the key is 32 bytes. A truncated blob never opens.
        out.truncate(1 + NONCE_BYTES);
        return out;
    };
    let body = &mut out[1 + NONCE_BYTES..];
    // Fails only past 256 GiB per message; chunks are at most 16 MiB.
    match cipher.seal_in_place_separate_tag(n, Aad::from(ad), body) {
        Ok(tag) => out.extend_from_slice(tag.as_ref()),
        Err(_) => out.truncate(1 + NONCE_BYTES),
    }
    out
}

/// [`open`] of a sealed 32-byte secret (a key), kept wiped.
fn open_32(key: &[u8; 32], ad: &[u8], blob: &[u8]) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let plain = Zeroizing::new(open(key, ad, blob)?);
    let mut out = Zeroizing::new([0u8; 32]);
    if plain.len() != 32 {
        return Err(SealError::Forged);
    }
    out.copy_from_slice(&plain);
    Ok(out)
}

fn open(key: &[u8; 32], ad: &[u8], blob: &[u8]) -> Result<Vec<u8>, SealError> {
    let (&tag, rest) = blob.split_first().ok_or(SealError::NotSealed)?;
    if tag != TAG_SEALED {
        return Err(SealError::NotSealed);
    }
    if rest.len() < NONCE_BYTES + 16 {
        return Err(SealError::Truncated);
    }
    let (nonce, body) = rest.split_at(NONCE_BYTES);
    let (ct, mac) = body.split_at(body.len() - 16);
    let (cipher, n) = xchacha(key, nonce)?;
    let tag = Tag::try_from(mac).map_err(|_| SealError::Truncated)?;
    let mut plain = ct.to_vec();
    cipher.open_in_place_separate_tag(n, Aad::from(ad), tag, &mut plain, 0..).map_err(|_| SealError::Forged)?;
    Ok(plain)
}

const AUTH_CONTEXT: &str = "bootvault 2026-12 password auth v2";
const WRAP_CONTEXT: &str = "bootvault 2026-12 password wrap v2";
const WRAP_AD: &[u8] = b"bootvault-wrapped-key-v1";
/// A wrapped backup key: tag, nonce, 32 bytes, Poly1305 tag.
pub const WRAPPED_BYTES: usize = OVERHEAD + 32;

/// What a restore password's Argon2id output `p` is split into: the
/// `auth` key the store checks (what a lock holds and unlock proofs
/// use), and the `wrap` key that seals the backup's own key, which never
/// leaves the PC (docs/DESIGN.md "Restore passwords are keys").
pub fn split_password_key(p: &[u8; 32]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    (Zeroizing::new(blake3::derive_key(AUTH_CONTEXT, p)), Zeroizing::new(blake3::derive_key(WRAP_CONTEXT, p)))
}

/// Seals the master key `backup_key` of a locked backup with a
/// password's `wrap` key; bound to the fingerprint of the key it holds, so
/// a wrapped key moved to another backup does not open.
pub fn wrap_key(wrap: &[u8; 32], backup_key: &[u8; 32], nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
    let fp = DataKey::new(backup_key).fingerprint_bytes();
    seal(wrap, &[WRAP_AD, &fp].concat(), backup_key, nonce)
}

/// Opens [`wrap_key`]'s output for a backup sealed with key `fingerprint`.
pub fn unwrap_key(wrap: &[u8; 32], wrapped: &[u8], fingerprint: &[u8; 8]) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let key = open_32(wrap, &[WRAP_AD, fingerprint].concat(), wrapped)?;
    if DataKey::new(&key).fingerprint_bytes() != *fingerprint {
        return Err(SealError::Forged);
    }
    Ok(key)
}

const ESCROW_CONTEXT: &str = "bootvault 2026-12 escrow wrap v1";
/// A backup key wrapped for the escrow: the ephemeral X25519 public key,
/// then the sealed key.
pub const ESCROWED_BYTES: usize = 32 + WRAPPED_BYTES;
const ESCROW_TEXT: &str = "bootvault-escrow-v1 ";
const ESCROW_PUB_TEXT: &str = "bootvault-escrow-pub-v1 ";

/// The key that wraps a backup key for the escrow, from the X25519
/// shared secret and both public keys (so a wrap made for one escrow key
/// never opens under another).
fn escrow_key(shared: &[u8; 32], ephemeral: &[u8; 32], escrow: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut h = blake3::Hasher::new_derive_key(ESCROW_CONTEXT);
    h.update(shared);
    h.update(ephemeral);
    h.update(escrow);
    Zeroizing::new(*h.finalize().as_bytes())
}

/// A locked backup's key sealed for the escrow, given the X25519 shared
/// secret of a fresh ephemeral key (`ephemeral`, its public half) with the
/// escrow's public key `escrow` (the PC's side; the arithmetic is the
/// caller's, ring in the engine).
pub fn escrow_wrap(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    escrow: &[u8; 32],
    backup_key: &[u8; 32],
    nonce: &[u8; NONCE_BYTES],
) -> Vec<u8> {
    let k = escrow_key(shared, ephemeral, escrow);
    let mut out = ephemeral.to_vec();
    out.extend(wrap_key(&k, backup_key, nonce));
    out
}

/// The ephemeral public key of an [`escrow_wrap`]ped key.
pub fn escrow_ephemeral(escrowed: &[u8]) -> Option<[u8; 32]> {
    escrowed.get(..32).and_then(|e| e.try_into().ok())
}

/// Opens [`escrow_wrap`]'s output with the shared secret the escrow's
/// private key makes with its ephemeral key (the admin's side).
pub fn escrow_unwrap(
    shared: &[u8; 32],
    escrow: &[u8; 32],
    escrowed: &[u8],
    fingerprint: &[u8; 8],
) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let ephemeral = escrow_ephemeral(escrowed).ok_or(SealError::Truncated)?;
    unwrap_key(&escrow_key(shared, &ephemeral, escrow), &escrowed[32..], fingerprint)
}

/// `bootvault-escrow-v1 HEX` (the private key, kept offline) and
/// `bootvault-escrow-pub-v1 HEX` (what PCs carry).
pub fn escrow_text(private: &[u8; 32]) -> Zeroizing<String> {
    Zeroizing::new(format!("{ESCROW_TEXT}{}", crate::wire::to_hex(private)))
}

pub fn escrow_pub_text(public: &[u8; 32]) -> String {
    format!("{ESCROW_PUB_TEXT}{}", crate::wire::to_hex(public))
}

pub fn parse_escrow_text(text: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let hex = text.trim().strip_prefix(ESCROW_TEXT).ok_or("not a bootvault escrow key (bootvault-escrow-v1 HEX)")?;
    let mut key = Zeroizing::new([0u8; 32]);
    crate::wire::hex_into(hex.trim(), &mut key[..]).map_err(|e| format!("escrow key: {e}"))?;
    Ok(key)
}

/// Reads an escrow public key: its text form, or bare hex (the PC's
/// `escrow=` setting).
pub fn parse_escrow_pub(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    let hex = t.strip_prefix(ESCROW_PUB_TEXT).unwrap_or(t);
    let mut key = [0u8; 32];
    crate::wire::hex_into(hex.trim(), &mut key).map_err(|e| format!("escrow public key: {e}"))?;
    Ok(key)
}

/// `bootvault-key-v1 HEX`: how a data key is written to a file (and
/// printed for the admin's offline copy).
pub fn key_text(master: &[u8; 32]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::from(KEY_TEXT_PREFIX));
    for b in master {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parses [`key_text`] (surrounding whitespace allowed).
pub fn parse_key_text(text: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let hex = text.trim().strip_prefix(KEY_TEXT_PREFIX).ok_or("not a bootvault key (expected bootvault-key-v1 HEX)")?;
    let mut key = Zeroizing::new([0u8; 32]);
    crate::wire::hex_into(hex.trim(), &mut key[..]).map_err(|e| format!("bootvault key: {e}"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::noise;

    const NONCE: [u8; NONCE_BYTES] = [7; NONCE_BYTES];

    /// The ring-based XChaCha20-Poly1305 is the one RustCrypto implements
    /// (and sealed the first encrypted backups with): each opens the
    /// other's output, whatever the length; and the draft's test vector.
    #[test]
    fn xchacha_is_rustcryptos_both_ways() {
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce: [u8; NONCE_BYTES] = std::array::from_fn(|i| 0x40 + i as u8);
        let theirs = XChaCha20Poly1305::new((&key).into());
        for len in [0usize, 1, 63, 64, 65, 1000, 1 << 16, (1 << 20) + 3] {
            let msg = noise(len as u64, len);
            let ours = seal(&key, b"ad", &msg, &nonce);
            let mut buf = msg.clone();
            let tag = theirs.encrypt_in_place_detached(XNonce::from_slice(&nonce), b"ad", &mut buf).expect("seal");
            let rc: Vec<u8> = [&[TAG_SEALED][..], &nonce, &buf, &tag].concat();
            assert_eq!(ours, rc, "length {len}");
            assert_eq!(open(&key, b"ad", &rc).expect("opens"), msg);
        }
        // draft-irtf-cfrg-xchacha-03, A.3.1: the tag of its example.
        let msg = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let aad = hex_bytes("50515253c0c1c2c3c4c5c6c7");
        let k: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let n: [u8; 24] = std::array::from_fn(|i| 0x40 + i as u8);
        let sealed = seal(&k, &aad, msg, &n);
        assert_eq!(crate::wire::to_hex(&sealed[sealed.len() - 16..]), "c0875924c1c7987947deafd8780acf49");
        assert_eq!(crate::wire::to_hex(&sealed[25..29]), "bd6d179d");
    }

    fn hex_bytes(h: &str) -> Vec<u8> {
        let mut v = vec![0u8; h.len() / 2];
        crate::wire::hex_into(h, &mut v).expect("hex");
        v
    }

    #[test]
    fn a_wrapped_backup_key_opens_with_its_password_only() {
        let (auth, wrap) = split_password_key(&[9; 32]);
        assert_ne!(*auth, *wrap, "the key the store checks is not the one that wraps");
        let b = [33u8; 32];
        let fp = DataKey::new(&b).fingerprint_bytes();
        let wrapped = wrap_key(&wrap, &b, &NONCE);
        assert_eq!(wrapped.len(), WRAPPED_BYTES);
        assert_eq!(*unwrap_key(&wrap, &wrapped, &fp).expect("opens"), b);
        let (_, other) = split_password_key(&[8; 32]);
        assert_eq!(unwrap_key(&other, &wrapped, &fp).map(|_| ()), Err(SealError::Forged), "another password");
        let elsewhere = DataKey::new(&[34; 32]).fingerprint_bytes();
        assert_eq!(
            unwrap_key(&wrap, &wrapped, &elsewhere).map(|_| ()),
            Err(SealError::Forged),
            "moved to another backup"
        );
        let mut bad = wrapped.clone();
        bad[30] ^= 1;
        assert_eq!(unwrap_key(&wrap, &bad, &fp).map(|_| ()), Err(SealError::Forged), "altered");
    }

    #[test]
    fn chunks_round_trip_and_every_alteration_is_refused() {
        let k = DataKey::new(&[1; 32]);
        let plain = noise(3, 70_000);
        let id = k.chunk_id(&plain);
        let inner = crate::image::encode_blob(&plain, 1);
        let sealed = k.seal_chunk(&id, &inner, &NONCE);
        assert_eq!(sealed[0], TAG_SEALED);
        assert_eq!(sealed.len(), inner.len() + OVERHEAD);
        assert_eq!(k.open_chunk(&id, &sealed), Ok(inner.clone()));
        let mut in_place = sealed.clone();
        assert_eq!(k.open_chunk_in_place(&id, &mut in_place).map(<[u8]>::to_vec), Ok(inner.clone()));
        // Any flipped byte (tag, nonce, ciphertext, Poly1305 tag) is caught.
        for at in [1, NONCE_BYTES, NONCE_BYTES + 5, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 0x40;
            assert_eq!(k.open_chunk(&id, &bad), Err(SealError::Forged), "byte {at}");
            assert_eq!(k.open_chunk_in_place(&id, &mut bad.clone()), Err(SealError::Forged), "byte {at}");
        }
        let mut bad = sealed.clone();
        bad[0] = 2;
        assert_eq!(k.open_chunk(&id, &bad), Err(SealError::NotSealed));
        assert_eq!(k.open_chunk(&id, &sealed[..OVERHEAD - 1]), Err(SealError::Truncated));
        assert_eq!(k.open_chunk(&id, &[]), Err(SealError::NotSealed));
        // Moved to another name, or opened with another key: refused.
        let other = k.chunk_id(b"another chunk");
        assert_eq!(k.open_chunk(&other, &sealed), Err(SealError::Forged));
        assert_eq!(DataKey::new(&[2; 32]).open_chunk(&id, &sealed), Err(SealError::Forged));
        // A chunk sealed is not a manifest sealed.
        assert_eq!(k.open_manifest(&sealed), Err(SealError::Forged));
    }

    #[test]
    fn sealed_bytes_hide_the_plain_ones() {
        let k = DataKey::new(&[9; 32]);
        let plain = b"the quick brown fox jumps over the lazy dog; ".repeat(100);
        let id = k.chunk_id(&plain);
        let sealed = k.seal_chunk(&id, &crate::image::encode_blob(&plain, 0), &NONCE);
        assert!(!sealed.windows(16).any(|w| plain.windows(16).any(|p| p == w)), "plain text leaked");
        // Another nonce, another ciphertext for the same chunk.
        assert_ne!(sealed, k.seal_chunk(&id, &crate::image::encode_blob(&plain, 0), &[8; NONCE_BYTES]));
    }

    #[test]
    fn ids_are_keyed_and_stable() {
        let (a, b) = (DataKey::new(&[1; 32]), DataKey::new(&[2; 32]));
        let plain = noise(4, 4096);
        assert_eq!(a.chunk_id(&plain), a.chunk_id(&plain), "deduplication inside a domain");
        assert_ne!(a.chunk_id(&plain), b.chunk_id(&plain), "nothing shared across domains");
        assert_ne!(a.chunk_id(&plain), crate::image::chunk_id(&plain), "not the unkeyed id");
        assert_eq!(
            a.chunk_id(&plain),
            *blake3::keyed_hash(&blake3::derive_key(ID_CONTEXT, &[1; 32]), &plain).as_bytes()
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        assert_eq!(format!("{a:?}"), format!("DataKey({})", a.fingerprint()), "Debug shows no secret");
    }

    #[test]
    fn manifests_round_trip() {
        let k = DataKey::new(&[5; 32]);
        let m = b"manifest bytes".to_vec();
        let sealed = k.seal_manifest(&m, &NONCE);
        assert_eq!(k.open_manifest(&sealed), Ok(m));
        assert_eq!(DataKey::new(&[6; 32]).open_manifest(&sealed), Err(SealError::Forged));
    }

    #[test]
    fn a_sealed_manifest_hides_the_private_part_and_catches_changes() {
        use crate::image::{Chunk, Extent, Manifest};
        let k = DataKey::new(&[4; 32]);
        let id = k.chunk_id(b"x");
        let mut full = crate::testdata::manifest_of("pc-1", vec![Chunk::Data { id, blob_len: 99 }, Chunk::Zero]);
        full.model = "SECRET MODEL".into();
        full.extents = vec![Extent { offset: 0, data: b"SECRET TABLE".to_vec() }];
        full.quick = vec![42, 0];
        let public = full.sealed_with(&k, &NONCE);
        let bytes = public.encode();
        assert!(!bytes.windows(6).any(|w| w == b"SECRET"), "private fields in the clear");
        let back = Manifest::decode(&bytes).expect("decodes");
        assert_eq!(back.version(), crate::image::MANIFEST_VERSION_SEALED);
        assert_eq!(back.data_ids(), vec![id], "the server still sees the index");
        assert_eq!(back.unsealed(Some(&k)), Ok(full.clone()));
        assert_eq!(full.unsealed(None), Ok(full.clone()), "not encrypted: itself");
        let e = back.unsealed(None).unwrap_err();
        assert!(e.starts_with("the backup is encrypted (key ") && e.ends_with("); give its key"), "{e}");
        let e = back.unsealed(Some(&DataKey::new(&[5; 32]))).unwrap_err();
        assert!(e.contains("is encrypted with key") && e.contains("not with this key"), "{e}");
        // The server swaps the public index: caught.
        let mut swapped = back.clone();
        swapped.chunks.swap(0, 1);
        assert!(swapped.unsealed(Some(&k)).unwrap_err().contains("was altered"));
        // Or alters the sealed copy.
        let mut bad = back.clone();
        if let Some(s) = bad.sealed.as_mut() {
            s.blob[30] ^= 1;
        }
        assert!(bad.unsealed(Some(&k)).unwrap_err().contains("does not verify"));
    }

    #[test]
    fn key_text_round_trip() {
        let master = [0xab; 32];
        let text = key_text(&master);
        assert!(text.starts_with("bootvault-key-v1 abab"));
        assert_eq!(*parse_key_text(&format!("  {}\n", *text)).expect("parses"), master);
        assert!(parse_key_text("bootvault-key-v1 abcd").is_err(), "short");
        assert!(parse_key_text(&text.replace("v1", "v2")).is_err());
        assert!(parse_key_text(&text.replace('a', "g")).is_err(), "not hex");
    }
}
