//! A server certificate's SHA-256 fingerprint: what `bootvault serve`
//! prints, the builder pins into each PC and the init and the host CLI
//! check before they send anything (docs/DESIGN.md "Transport").
//!
//! Text handling, and the hash of a certificate (ring's SHA-256, which
//! the engine and the server carry for TLS anyway).

use std::fmt;

/// SHA-256 of a certificate's DER bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// SHA-256 of a certificate's DER bytes.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        let d = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }

    /// Reads `ab:cd:…` (32 bytes, as [`Fingerprint`]'s `Display` and
    /// `openssl x509 -fingerprint -sha256` write them, either case), with
    /// or without the colons, with or without a `sha256:` prefix.
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let t = text.trim();
        let t = t.get(..7).filter(|p| p.eq_ignore_ascii_case("sha256:")).map_or(t, |_| &t[7..]);
        let t = t.get(..19).filter(|p| p.eq_ignore_ascii_case("sha256 fingerprint=")).map_or(t, |_| &t[19..]);
        let digits: Vec<u8> = t.bytes().filter(|b| *b != b':').collect();
        let bad = || {
            format!(
                "{:?} is not a certificate fingerprint (32 bytes of hex like ab:cd:…, as `bootvault serve` prints it)",
                text.trim()
            )
        };
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    /// `ab:cd:…:ef`, 95 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes_and_what_openssl_writes() {
        let fp = Fingerprint(std::array::from_fn(|i| (i * 7) as u8));
        let text = fp.to_string();
        assert_eq!(text.len(), 95);
        assert_eq!(Fingerprint::parse(&text), Ok(fp));
        assert_eq!(Fingerprint::parse(&text.to_uppercase()), Ok(fp));
        assert_eq!(Fingerprint::parse(&format!("sha256:{}", text.replace(':', ""))), Ok(fp));
        assert_eq!(Fingerprint::parse(&format!("SHA256 Fingerprint={}\n", text.to_uppercase())), Ok(fp));
    }

    #[test]
    fn refuses_what_is_not_32_bytes_of_hex() {
        for bad in ["", "ab:cd", &"zz".repeat(32), &"ab".repeat(33), "sha256:"] {
            let e = Fingerprint::parse(bad).expect_err(bad);
            assert!(e.contains("not a certificate fingerprint"), "{e}");
        }
    }
}
