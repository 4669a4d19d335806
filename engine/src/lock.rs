//! Restore passwords: a backup made at a PC's console can be locked, so
//! restoring it needs the password again (at a PC's console) or a server
//! job made with `--password-file`.
//!
//! The password never leaves the PC and is never stored: Argon2id turns it
//! into a 32-byte key, sent once when the backup is opened. To restore, the
//! PC asks for a challenge (the lock's parameters, its salt, a one-time
//! nonce), derives the key again and sends only a proof bound to that
//! nonce, the PC and the backup ([`proof`]); the server answers with a
//! ticket the client sends on manifest and chunk requests. The wire format
//! of the lock and of the proof lives in `bootvault_common::wire`, shared
//! with the server. Every buffer holding a password or a key is zeroed when
//! dropped.
//!
//! Owns: key derivation, the lock's text form, randomness. Not the HTTP
//! requests (those are [`crate::client`]'s).

use std::fmt;

use bootvault_common::wire::{self, Kdf, LOCK_SALT_BYTES};
/// Re-exported so callers keep passwords in the same wrapper.
pub use zeroize::Zeroizing;

use crate::client::Client;
use crate::EngineError;

/// Argon2id costs: memory in KiB, passes, lanes. `Params::DEFAULT` is
/// OWASP's minimum for Argon2id (19 MiB, 2 passes, 1 lane), which fits
/// old PCs with little memory.
pub use bootvault_common::wire::LockParams as Params;

/// Argon2id(password, salt) → a 32-byte key. Parameters out of the bounds
/// the wire allows are refused before anything is allocated.
pub fn derive(password: &[u8], salt: &[u8], params: &Params) -> Result<Zeroizing<[u8; 32]>, EngineError> {
    params.check().map_err(EngineError::new)?;
    let p = argon2::Params::new(params.m_kib, params.t_cost, params.p, Some(32))
        .map_err(|e| EngineError::new(format!("argon2id parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut key = Zeroizing::new([0u8; 32]);
    a.hash_password_into(password, salt, &mut key[..])
        .map_err(|e| EngineError::new(format!("deriving the key from the password: {e}")))?;
    Ok(key)
}

/// A password's wrap key (`seal::split_password_key`): opens a locked
/// backup's own key; never leaves the PC.
pub type WrapKey = Zeroizing<[u8; 32]>;

/// What a backup is locked with; sent once when the backup is opened.
#[derive(Clone, PartialEq, Eq)]
pub struct Lock {
    pub kdf: Kdf,
    pub params: Params,
    pub salt: [u8; 16],
    /// What the store checks: the auth key ([`Kdf::Argon2idSplit`]) or
    /// Argon2id's output itself (older locks).
    pub key: Zeroizing<[u8; 32]>,
    /// The wrap key, when this lock was made here from the password (or
    /// handed over by a job): never sent, never in [`Lock::to_text`].
    pub wrap: Option<WrapKey>,
}

/// The store's key and the wrap key for `password` under a lock's `kdf`,
/// `salt` and `params`.
pub fn keys(
    password: &[u8],
    kdf: Kdf,
    salt: &[u8],
    params: &Params,
) -> Result<(Zeroizing<[u8; 32]>, WrapKey), EngineError> {
    let p = derive(password, salt, params)?;
    let (auth, wrap) = bootvault_common::seal::split_password_key(&p);
    Ok(match kdf {
        Kdf::Argon2id => (p, wrap),
        Kdf::Argon2idSplit => (auth, wrap),
    })
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock").field("params", &self.params).field("salt", &wire::to_hex(&self.salt)).finish()
    }
}

impl Lock {
    /// A new lock for `password`: a random salt and the default costs.
    pub fn new(password: &[u8]) -> Result<Lock, EngineError> {
        let mut salt = [0u8; LOCK_SALT_BYTES];
        random_bytes(&mut salt)?;
        let (key, wrap) = keys(password, Kdf::Argon2idSplit, &salt, &Params::DEFAULT)?;
        Ok(Lock { kdf: Kdf::Argon2idSplit, params: Params::DEFAULT, salt, key, wrap: Some(wrap) })
    }

    /// One line: `argon2id-split m=19456 t=2 p=1 salt=HEX key=HEX`. It
    /// holds the store's key (never the wrap key): callers keep it in a
    /// `Zeroizing` and send it only where the protocol says (opening a
    /// backup, a backup job).
    pub fn to_text(&self) -> String {
        wire::lock_text(self.kdf, &self.params, &self.salt, &self.key)
    }

    /// Parses [`Lock::to_text`], checking the parameters' bounds.
    pub fn from_text(s: &str) -> Result<Lock, EngineError> {
        let mut key = Zeroizing::new([0u8; 32]);
        let (kdf, params, salt) = wire::parse_lock_text(s.trim(), &mut key).map_err(EngineError::new)?;
        Ok(Lock { kdf, params, salt, key, wrap: None })
    }
}

/// What the server sends to a PC that wants to restore a locked backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub kdf: Kdf,
    pub params: Params,
    pub salt: Vec<u8>,
    pub nonce: [u8; 32],
}

/// The proof a PC sends: keyed BLAKE3 (the key from the password) over
/// `bootvault-unlock-v1`, the nonce, the PC name and the backup id.
pub fn proof(key: &[u8; 32], nonce: &[u8; 32], pc: &str, backup: i64) -> [u8; 32] {
    wire::unlock_proof(key, nonce, pc, backup)
}

/// Challenge → derive → proof → unlock; the client keeps the ticket for
/// the restore that follows. Ok(false) if the backup has no password.
/// A wrong password is an error whose text is the server's one-line
/// reason (`wrong password for backup 7 (3 tries left before a wait)`).
/// The password's wrap key stays in the client for the restore (it opens
/// the backup's own key; it is never sent).
pub fn unlock(client: &Client, backup: i64, password: &[u8]) -> Result<bool, EngineError> {
    let Some(ch) = client.challenge(backup)? else { return Ok(false) };
    let (key, wrap) = keys(password, ch.kdf, &ch.salt, &ch.params)?;
    let p = proof(&key, &ch.nonce, client.pc(), backup);
    client.unlock(backup, &p)?;
    client.set_wrap(backup, wrap);
    Ok(true)
}

/// Fills `out` from the kernel's CSPRNG (`getrandom(2)`, which waits
/// until the kernel's pool is initialised, once, early in boot).
pub fn random_bytes(out: &mut [u8]) -> Result<(), EngineError> {
    let mut filled = 0;
    while filled < out.len() {
        let rest = &mut out[filled..];
        // SAFETY: the pointer and length describe `rest`, memory we own and may write.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(EngineError::new(format!("getrandom: {e}")));
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small costs so the tests stay fast in debug builds.
    const CHEAP: Params = Params { m_kib: 64, t_cost: 1, p: 1 };

    #[test]
    fn derive_matches_the_reference_implementation() {
        // Vectors from libargon2 (Python's argon2-cffi, hash_secret_raw,
        // Type.ID, version 0x13), not from this crate.
        let salt: [u8; 16] = core::array::from_fn(|i| i as u8);
        let key = derive(b"correct horse", &salt, &CHEAP).unwrap();
        assert_eq!(wire::to_hex(&key[..]), "25ce5233cc1e4d37e9bca31bfef41710e40446cd1cb575932791c5fd3780bd3c");
        let key = derive(b"correct horse", &salt, &Params::DEFAULT).unwrap();
        assert_eq!(wire::to_hex(&key[..]), "d00b90c40f918cf889780d7d3a9ec3c2b1719df87dc5e4d4d93ea6163db04e17");
        assert_ne!(
            *derive(b"correct horsf", &salt, &CHEAP).unwrap(),
            *derive(b"correct horse", &salt, &CHEAP).unwrap()
        );
    }

    #[test]
    fn absurd_params_are_refused_before_allocating() {
        for (p, why) in [
            (Params { m_kib: 4 << 20, t_cost: 2, p: 1 }, "memory m=4194304 KiB"),
            (Params { m_kib: 19456, t_cost: 1000, p: 1 }, "passes t=1000"),
            (Params { m_kib: 19456, t_cost: 2, p: 0 }, "lanes p=0"),
        ] {
            let e = derive(b"pw", &[0u8; 16], &p).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let e = derive(b"pw", &[0u8; 4], &CHEAP).unwrap_err().to_string();
        assert!(e.contains("salt"), "{e}");
    }

    #[test]
    fn lock_text_round_trip_and_debug_hides_the_key() {
        let lock = Lock::new(b"secret").unwrap();
        assert_eq!(lock.params, Params::DEFAULT);
        assert_ne!(lock.salt, [0u8; 16], "a random salt");
        // What the store checks is the auth half; the wrap half stays here.
        let p = derive(b"secret", &lock.salt, &Params::DEFAULT).unwrap();
        let (auth, wrap) = bootvault_common::seal::split_password_key(&p);
        assert_eq!((*lock.key, lock.wrap.as_deref().copied()), (*auth, Some(*wrap)));
        assert_ne!(*lock.key, *p, "the Argon2id output itself is never sent");
        let text = lock.to_text();
        assert!(text.starts_with("argon2id-split m=19456 t=2 p=1 salt="), "{text}");
        assert!(!text.contains(&wire::to_hex(&wrap[..])), "the wrap key is never in the text");
        let back = Lock::from_text(&format!(" {text}\n")).unwrap();
        assert_eq!(back, Lock { wrap: None, ..lock.clone() });
        let debug = format!("{lock:?}");
        assert!(!debug.contains(&wire::to_hex(&lock.key[..])) && debug.contains("19456"), "{debug}");
        assert!(Lock::from_text(&text.replace("m=19456", "m=999999999")).is_err());
        assert!(Lock::new(b"secret").unwrap().salt != lock.salt, "salts differ");
    }

    #[test]
    fn proof_is_the_wire_proof() {
        let (key, nonce) = ([1u8; 32], [2u8; 32]);
        assert_eq!(proof(&key, &nonce, "pc", 3), wire::unlock_proof(&key, &nonce, "pc", 3));
        assert_ne!(proof(&key, &nonce, "pc", 3), proof(&key, &nonce, "pc", 4));
    }
}
