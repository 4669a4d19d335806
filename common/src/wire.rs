//! What the init and the server say to each other over HTTP.
//!
//! The endpoints live under [`API`]; every request names the PC with the
//! [`PC_HEADER`] header and proves it with its token ([`AUTHORIZATION`]).

/// Version prefix of every endpoint.
pub const API: &str = "/api/v1";
/// `GET {API}/hello`: the PC announces itself; the answer is one line of text.
pub const HELLO: &str = "/api/v1/hello";
/// A PC's report of how far its backup or restore is (`key=value` lines:
/// action, job, step, done, total, moved, rate, eta), for the web console.
pub const PROGRESS: &str = "/api/v1/progress";
/// Request header carrying the PC name.
pub const PC_HEADER: &str = "x-bootvault-pc";
/// Request header carrying the PC's MAC address (`aa:bb:cc:dd:ee:ff`).
pub const MAC_HEADER: &str = "x-bootvault-mac";
/// Request header carrying the PC's IPv4 address as it configured it.
pub const ADDR_HEADER: &str = "x-bootvault-addr";

/// The hello answer's first word, so the init can tell our server from
/// some other web server at the same address.
pub const HELLO_PREFIX: &str = "bootvault-server";

/// Request header carrying the secret: `Authorization: Bearer TOKEN`, the
/// PC's token (with [`PC_HEADER`]) or the server's admin token.
pub const AUTHORIZATION: &str = "authorization";
/// Scheme word before the token in [`AUTHORIZATION`].
pub const BEARER: &str = "Bearer ";

/// Network boot (no token: firmware cannot carry one): the iPXE entry
/// script, which chains to the per-MAC script.
pub const BOOT_IPXE: &str = "/boot/ipxe";

/// Request header carrying an unlock ticket (`POST .../unlock` hands it
/// out) on manifest and chunk requests for a password-protected backup.
pub const UNLOCK_HEADER: &str = "x-bootvault-unlock";

/// Domain separation of the unlock proof: a key derived for a restore
/// password proves nothing else, and a later scheme gets a new tag.
pub const UNLOCK_DOMAIN: &[u8] = b"bootvault-unlock-v1";

/// Argon2id cost parameters of a backup's restore password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes over the memory.
    pub t_cost: u32,
    /// Lanes.
    pub p: u32,
}

/// Largest memory cost a PC accepts from the wire: a server (or a lock
/// text) asking for more is refused, not obeyed. A PC may have 128 MiB.
pub const LOCK_MAX_M_KIB: u32 = 64 * 1024;
/// Largest number of passes accepted from the wire.
pub const LOCK_MAX_T_COST: u32 = 16;
/// Largest number of lanes accepted from the wire.
pub const LOCK_MAX_P: u32 = 4;
/// Salt length of a lock made by bootvault.
pub const LOCK_SALT_BYTES: usize = 16;

impl LockParams {
    /// OWASP's minimum for Argon2id (19 MiB, 2 passes, 1 lane): about a
    /// tenth of a second on a PC, and it fits PCs with little memory.
    pub const DEFAULT: LockParams = LockParams { m_kib: 19456, t_cost: 2, p: 1 };

    /// Refuses what no honest lock uses, so parameters read from the wire
    /// cannot make a PC allocate gigabytes or spin for minutes.
    pub fn check(&self) -> Result<(), String> {
        if self.p == 0 || self.p > LOCK_MAX_P {
            return Err(format!("argon2id lanes p={} out of range 1..={LOCK_MAX_P}", self.p));
        }
        if self.t_cost == 0 || self.t_cost > LOCK_MAX_T_COST {
            return Err(format!("argon2id passes t={} out of range 1..={LOCK_MAX_T_COST}", self.t_cost));
        }
        if self.m_kib < 8 * self.p || self.m_kib > LOCK_MAX_M_KIB {
            return Err(format!("argon2id memory m={} KiB out of range {}..={LOCK_MAX_M_KIB}", self.m_kib, 8 * self.p));
        }
        Ok(())
    }
}

/// The proof that a PC knows a backup's key, bound to the server's
/// one-time `nonce`, the PC and the backup, so it unlocks nothing else and
/// cannot be replayed: keyed BLAKE3 over the domain tag, the nonce, the
/// PC name (length-prefixed) and the backup id (8 bytes LE).
pub fn unlock_proof(key: &[u8; 32], nonce: &[u8; 32], pc: &str, backup: i64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(UNLOCK_DOMAIN);
    h.update(nonce);
    h.update(&(pc.len() as u64).to_le_bytes());
    h.update(pc.as_bytes());
    h.update(&backup.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Lower-case hex.
/// Constant-time equality of two byte strings of the same length (no
/// early exit on the first differing byte; the lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Decodes hex of exactly `out.len()` bytes into `out` (no other copy is
/// made, so a secret stays in the caller's buffer).
pub fn hex_into(s: &str, out: &mut [u8]) -> Result<(), String> {
    let s = s.as_bytes();
    if s.len() != 2 * out.len() {
        return Err(format!("expected {} hex digits, got {}", 2 * out.len(), s.len()));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err("not a hex digit".to_string()),
    };
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Ok(())
}

/// A backup's lock as one line of text (no `=` before the first space,
/// so it travels as the value of a `lock=` line):
/// `argon2id m=19456 t=2 p=1 salt=HEX32 key=HEX64`.
/// How a lock's key comes from the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// `argon2id`: the key is Argon2id's output itself (locks made before
    /// restore passwords became keys).
    Argon2id,
    /// `argon2id-split`: the key is the auth half of Argon2id's output
    /// (`seal::split_password_key`); the wrap half never leaves the PC.
    Argon2idSplit,
}

impl Kdf {
    pub fn as_str(self) -> &'static str {
        match self {
            Kdf::Argon2id => "argon2id",
            Kdf::Argon2idSplit => "argon2id-split",
        }
    }

    pub fn parse(s: &str) -> Option<Kdf> {
        match s {
            "argon2id" => Some(Kdf::Argon2id),
            "argon2id-split" => Some(Kdf::Argon2idSplit),
            _ => None,
        }
    }
}

pub fn lock_text(kdf: Kdf, params: &LockParams, salt: &[u8; LOCK_SALT_BYTES], key: &[u8; 32]) -> String {
    format!(
        "{} m={} t={} p={} salt={} key={}",
        kdf.as_str(),
        params.m_kib,
        params.t_cost,
        params.p,
        to_hex(salt),
        to_hex(key)
    )
}

/// Parses [`lock_text`]: the key goes into `key`, the rest is returned.
/// Every field is required, once, in that order; parameters are checked.
pub fn parse_lock_text(text: &str, key: &mut [u8; 32]) -> Result<(Kdf, LockParams, [u8; LOCK_SALT_BYTES]), String> {
    let mut words = text.split_ascii_whitespace();
    let Some(kdf) = words.next().and_then(Kdf::parse) else {
        return Err("lock: expected `argon2id-split m=.. t=.. p=.. salt=.. key=..`".into());
    };
    let mut field = |name: &str| -> Result<&str, String> {
        let w = words.next().ok_or_else(|| format!("lock: {name}= missing"))?;
        w.strip_prefix(name)
            .and_then(|v| v.strip_prefix('='))
            .ok_or_else(|| format!("lock: expected {name}=, got {w:?}"))
    };
    let num = |name: &str, v: &str| v.parse::<u32>().map_err(|_| format!("lock: {name}={v:?} is not a number"));
    let m = field("m")?;
    let t = field("t")?;
    let p = field("p")?;
    let params = LockParams { m_kib: num("m", m)?, t_cost: num("t", t)?, p: num("p", p)? };
    let salt_hex = field("salt")?;
    let key_hex = field("key")?;
    if let Some(extra) = words.next() {
        return Err(format!("lock: unexpected {extra:?} after the key"));
    }
    params.check().map_err(|e| format!("lock: {e}"))?;
    let mut salt = [0u8; LOCK_SALT_BYTES];
    hex_into(salt_hex, &mut salt).map_err(|e| format!("lock: salt: {e}"))?;
    hex_into(key_hex, key).map_err(|e| format!("lock: key: {e}"))?;
    Ok((kdf, params, salt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_text_round_trip_and_refusals() {
        let salt: [u8; 16] = core::array::from_fn(|i| i as u8);
        let key = [0xabu8; 32];
        let t = lock_text(Kdf::Argon2id, &LockParams::DEFAULT, &salt, &key);
        assert_eq!(
            t,
            "argon2id m=19456 t=2 p=1 salt=000102030405060708090a0b0c0d0e0f \
             key=abababababababababababababababababababababababababababababababab"
        );
        let mut back = [0u8; 32];
        assert_eq!(parse_lock_text(&t, &mut back), Ok((Kdf::Argon2id, LockParams::DEFAULT, salt)));
        assert_eq!(back, key);
        let split = lock_text(Kdf::Argon2idSplit, &LockParams::DEFAULT, &salt, &key);
        assert!(split.starts_with("argon2id-split m=19456 "), "{split}");
        assert_eq!(parse_lock_text(&split, &mut back), Ok((Kdf::Argon2idSplit, LockParams::DEFAULT, salt)));
        let mut k = [0u8; 32];
        for (bad, why) in [
            ("", "expected `argon2id-split"),
            ("scrypt m=1", "expected `argon2id-split"),
            ("argon2id m=19456 t=2 p=1 salt=00", "key= missing"),
            ("argon2id m=19456 p=1 t=2 salt=00 key=00", "expected t="),
            ("argon2id m=lots t=2 p=1 salt=00 key=00", "not a number"),
            (&t.replace("m=19456", "m=4194304"), "memory m=4194304 KiB out of range"),
            (&t.replace("t=2", "t=0"), "passes t=0"),
            (&t.replace("p=1", "p=64"), "lanes p=64"),
            (&t.replace("salt=00", "salt=0"), "salt: expected 32 hex digits"),
            (&t.replace("key=ab", "key=zz"), "key: not a hex digit"),
            (&format!("{t} more"), "unexpected \"more\""),
        ] {
            let e = parse_lock_text(bad, &mut k).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(LockParams { m_kib: 8, t_cost: 1, p: 1 }.check().is_ok());
        assert!(LockParams { m_kib: 15, t_cost: 1, p: 2 }.check().is_err());
    }

    #[test]
    fn proof_is_bound_to_everything_it_names() {
        let key = [7u8; 32];
        let nonce = [9u8; 32];
        let p = unlock_proof(&key, &nonce, "pc-one", 7);
        // Keyed BLAKE3 of the documented message.
        let mut msg = UNLOCK_DOMAIN.to_vec();
        msg.extend_from_slice(&nonce);
        msg.extend_from_slice(&6u64.to_le_bytes());
        msg.extend_from_slice(b"pc-one");
        msg.extend_from_slice(&7i64.to_le_bytes());
        assert_eq!(p, *blake3::keyed_hash(&key, &msg).as_bytes());
        assert_eq!(to_hex(&p), PROOF_VECTOR);
        let others = [
            unlock_proof(&[8u8; 32], &nonce, "pc-one", 7),
            unlock_proof(&key, &[10u8; 32], "pc-one", 7),
            unlock_proof(&key, &nonce, "pc-two", 7),
            unlock_proof(&key, &nonce, "pc-one", 8),
            // The length prefix: a name cannot borrow bytes from the id.
            unlock_proof(&key, &nonce, "pc-one\u{7}", 0),
        ];
        for o in others {
            assert_ne!(o, p);
        }
        let mut out = [0u8; 2];
        assert_eq!(hex_into("0aFf", &mut out), Ok(()));
        assert_eq!(out, [0x0a, 0xff]);
    }

    /// The same message hashed by an independent implementation (Python's
    /// `blake3` package), so a change to the proof's layout fails here.
    const PROOF_VECTOR: &str = "e3e7f1562ffca7490c51a408e17a9546e94374a7b762fe04f77dd4a175eb829f";
}
