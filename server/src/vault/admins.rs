//! The web console's admin accounts: passwords (Argon2id, PHC strings),
//! sessions and sign-in limits. The rules live here; the rows in
//! [`crate::db`]; the cookies and forms in [`crate::web`].
//!
//! * A session's cookie carries a 32-byte secret; the database keeps only
//!   its BLAKE3 hash, so a copy of the database signs no one in. Each
//!   session has its own form token (CSRF), checked on every POST.
//! * A session ends after [`SESSION_IDLE`] unused or [`SESSION_MAX`] in
//!   all, at sign-out, and when its account's password changes or the
//!   account is removed.
//! * Failed sign-ins are counted per account and per peer address over
//!   [`SIGNIN_WINDOW`]: past [`SIGNIN_ACCOUNT_TRIES`] for an account or
//!   [`SIGNIN_PEER_TRIES`] from a peer, sign-ins are refused (before the
//!   password is looked at) until the oldest failure leaves the window.
//!   The counts are in the database, so they hold for every server on it.

use anyhow::{bail, Result};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::Vault;
use crate::secrets;

/// A session unused this long ends.
pub const SESSION_IDLE: i64 = 12 * 3600;
/// A session ends this long after sign-in, used or not.
pub const SESSION_MAX: i64 = 7 * 24 * 3600;
/// Failed sign-ins count for this long.
pub const SIGNIN_WINDOW: i64 = 15 * 60;
/// Failures an account may have within [`SIGNIN_WINDOW`].
pub const SIGNIN_ACCOUNT_TRIES: i64 = 5;
/// Failures a peer address may have within [`SIGNIN_WINDOW`].
pub const SIGNIN_PEER_TRIES: i64 = 20;
/// The shortest password an account may have.
pub const MIN_PASSWORD: usize = 10;

/// Argon2id at OWASP's first recommendation (19 MiB, 2 passes, 1 lane):
/// about 50 ms here per sign-in.
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) of `password`.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))
}

/// Whether `password` matches a PHC string (its own parameters, so hashes
/// made with other costs still verify).
pub fn password_matches(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| hasher().verify_password(password.as_bytes(), &h).is_ok())
}

/// An admin name: 1 to 64 of `a-z A-Z 0-9 . _ - @`.
pub fn check_admin_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b)) {
        bail!("an admin name is 1 to 64 letters, digits or . _ - @ (not {name:?})");
    }
    Ok(())
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD {
        bail!("a password needs at least {MIN_PASSWORD} characters");
    }
    Ok(())
}

/// A signed-in admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub admin: String,
    /// The form token every POST of this session must carry.
    pub csrf: String,
}

/// Why a sign-in was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInError {
    /// Wrong name or password (which, is not said).
    Wrong,
    /// Too many failures: try again in this many seconds.
    Limited { retry_after: i64 },
}

fn session_id(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

fn peer_key(peer: &str) -> String {
    format!("peer:{peer}")
}

fn account_key(name: &str) -> String {
    format!("admin:{name}")
}

impl Vault {
    pub fn add_admin(&self, name: &str, password: &str) -> Result<()> {
        check_admin_name(name)?;
        check_password(password)?;
        self.db.add_admin(name, &hash_password(password)?, super::now())
    }

    /// A new password; the account's sessions end.
    pub fn set_admin_password(&self, name: &str, password: &str) -> Result<()> {
        check_password(password)?;
        if !self.db.set_admin_hash(name, &hash_password(password)?)? {
            bail!("no admin named {name}");
        }
        Ok(())
    }

    pub fn remove_admin(&self, name: &str) -> Result<()> {
        if !self.db.remove_admin(name)? {
            bail!("no admin named {name}");
        }
        Ok(())
    }

    /// (name, created), by name.
    pub fn list_admins(&self) -> Result<Vec<(String, i64)>> {
        self.db.list_admins()
    }

    /// Checks a sign-in from `peer` at `now`; on success the cookie's
    /// secret and the session.
    pub fn sign_in(
        &self,
        name: &str,
        password: &str,
        peer: &str,
        now: i64,
    ) -> Result<Result<(String, Session), SignInError>> {
        let since = now - SIGNIN_WINDOW;
        let (account, from) = (account_key(name), peer_key(peer));
        let account_failures = self.db.signin_failures(&account, since)?;
        let peer_failures = self.db.signin_failures(&from, since)?;
        if account_failures >= SIGNIN_ACCOUNT_TRIES || peer_failures >= SIGNIN_PEER_TRIES {
            // The window is short: waiting it out is a bound, not an estimate.
            return Ok(Err(SignInError::Limited { retry_after: SIGNIN_WINDOW }));
        }
        let hash = self.db.admin_hash(name)?;
        // An unknown name costs the same hashing as a wrong password.
        let ok = match &hash {
            Some(h) => password_matches(h, password),
            None => {
                let _ = password_matches(DUMMY_HASH, password);
                false
            }
        };
        if !ok {
            self.db.add_signin_failure(&[&account, &from], now, since)?;
            return Ok(Err(SignInError::Wrong));
        }
        self.db.clear_signin_failures(&account)?;
        let secret = secrets::new_token()?;
        let csrf = secrets::new_token()?;
        self.db.add_session(&session_id(&secret), name, &csrf, now)?;
        Ok(Ok((secret, Session { admin: name.to_owned(), csrf })))
    }

    /// The session a cookie's secret belongs to, if it is still open.
    pub fn session(&self, secret: &str, now: i64) -> Result<Option<Session>> {
        if secret.len() != 64 {
            return Ok(None);
        }
        let row = self.db.session(&session_id(secret), now - SESSION_IDLE, now - SESSION_MAX, now)?;
        Ok(row.map(|(admin, csrf)| Session { admin, csrf }))
    }

    pub fn sign_out(&self, secret: &str) -> Result<()> {
        self.db.end_session(&session_id(secret))
    }
}

/// A valid hash of a password no one has, verified for unknown names.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0Wq0sPDxtaZxGOwjL9X6YpRcBvl1Xc4Zgq0g6Nn1nAs";

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(tag: &str) -> Vault {
        let d = std::env::temp_dir().join(format!("bv-admins-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Vault::open(&d).expect("vault")
    }

    #[test]
    fn the_dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!password_matches(DUMMY_HASH, "anything at all"));
    }

    #[test]
    fn sign_in_session_sign_out() {
        let v = vault("session");
        assert!(v.add_admin("ann", "short").is_err_and(|e| e.to_string().contains("at least 10")));
        assert!(v.add_admin("a b", "long enough password").is_err());
        v.add_admin("ann", "correct horse battery").expect("add");
        assert!(v.add_admin("ann", "another password").is_err_and(|e| e.to_string().contains("exists")));
        let hash = v.db.admin_hash("ann").expect("db").expect("row");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");

        assert_eq!(v.sign_in("ann", "wrong password", "10.0.0.1", 1000).expect("db"), Err(SignInError::Wrong));
        assert_eq!(v.sign_in("bob", "correct horse battery", "10.0.0.1", 1000).expect("db"), Err(SignInError::Wrong));
        let (secret, s) = v.sign_in("ann", "correct horse battery", "10.0.0.1", 1000).expect("db").expect("signed in");
        assert_eq!(s.admin, "ann");
        assert_eq!(v.session(&secret, 1001).expect("db"), Some(s.clone()));
        // The database holds the hash of the secret, not the secret.
        assert!(v.db.session(&secret, 0, 0, 1001).expect("db").is_none());
        assert_eq!(v.session(&"0".repeat(64), 1001).expect("db"), None);
        // Idle too long: gone.
        assert_eq!(v.session(&secret, 1001 + SESSION_IDLE + 1).expect("db"), None);

        let (secret, _) = v.sign_in("ann", "correct horse battery", "10.0.0.1", 5000).expect("db").expect("again");
        v.sign_out(&secret).expect("out");
        assert_eq!(v.session(&secret, 5001).expect("db"), None);
        // A new password ends the sessions.
        let (secret, _) = v.sign_in("ann", "correct horse battery", "10.0.0.1", 6000).expect("db").expect("again");
        v.set_admin_password("ann", "a new long password").expect("set");
        assert_eq!(v.session(&secret, 6001).expect("db"), None);
        assert!(v.sign_in("ann", "a new long password", "10.0.0.1", 6002).expect("db").is_ok());
    }

    #[test]
    fn failed_sign_ins_are_limited_per_account_and_per_peer() {
        let v = vault("limits");
        v.add_admin("ann", "correct horse battery").expect("add");
        for i in 0..SIGNIN_ACCOUNT_TRIES {
            assert_eq!(
                v.sign_in("ann", "nope nope nope", &format!("10.0.0.{i}"), 100).expect("db"),
                Err(SignInError::Wrong)
            );
        }
        // Even the right password waits now, from anywhere.
        let limited = Err(SignInError::Limited { retry_after: SIGNIN_WINDOW });
        assert_eq!(v.sign_in("ann", "correct horse battery", "10.9.9.9", 101).expect("db"), limited);
        // Once the failures leave the window, it signs in.
        assert!(v.sign_in("ann", "correct horse battery", "10.9.9.9", 100 + SIGNIN_WINDOW + 1).expect("db").is_ok());

        // One peer guessing at many names is stopped too.
        for i in 0..SIGNIN_PEER_TRIES {
            let _ = v.sign_in(&format!("user{i}"), "guess guess guess", "192.0.2.7", 10_000).expect("db");
        }
        assert_eq!(v.sign_in("ann", "correct horse battery", "192.0.2.7", 10_001).expect("db"), limited);
        assert!(v.sign_in("ann", "correct horse battery", "192.0.2.8", 10_001).expect("db").is_ok());
    }
}
