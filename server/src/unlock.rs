//! Restore passwords, the server's side: a locked backup's lock (Argon2id
//! parameters, salt and key, never the password), challenges, tickets and
//! the limit on wrong passwords.
//!
//! Unlocking is challenge–response: one-time nonces, the tickets they
//! earn (kept by the hash of their secret) and wrong-password counts are
//! rows of the database, so a PC may ask one server for a challenge,
//! answer it through another and read through a third (servers sharing
//! PostgreSQL); a restart keeps them. A ticket found valid is remembered
//! in memory until it expires (tickets are never revoked early), which
//! spares a database read per chunk of a protected restore. Time is a
//! parameter (`now`), so the waits are tested without sleeping. Owns the
//! rules and the ticket cache; the lock, the challenges, the tickets and
//! the counts are rows of [`crate::db`].

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use anyhow::{anyhow, Result};
use bootvault_common::wire::{self, Kdf, LockParams, LOCK_SALT_BYTES};

use crate::db::Database;
use crate::secrets::{ct_eq, random_32};

/// Wrong passwords allowed per (PC, backup) before each try must wait.
pub const UNLOCK_FREE_TRIES: i64 = 5;
/// The first wait, doubled with each further wrong password...
pub const UNLOCK_FIRST_WAIT: i64 = 30;
/// ...up to this.
pub const UNLOCK_MAX_WAIT: i64 = 3600;
/// How long a challenge's nonce may be answered (deriving the key takes
/// a second or two on an old PC).
pub const CHALLENGE_SECONDS: i64 = 300;
/// How long an unlock ticket lets a PC read the backup.
pub const TICKET_SECONDS: i64 = 24 * 3600;

/// Seconds a try must wait after the last of `failures` wrong passwords.
pub fn unlock_wait(failures: i64) -> i64 {
    if failures < UNLOCK_FREE_TRIES {
        return 0;
    }
    let doublings = (failures - UNLOCK_FREE_TRIES).min(20) as u32;
    (UNLOCK_FIRST_WAIT << doublings).min(UNLOCK_MAX_WAIT)
}

/// A locked backup's Argon2id parameters, salt and key (the key is what
/// the PC derived from the password; the password is never sent).
#[derive(Clone, PartialEq, Eq)]
pub struct BackupLock {
    pub kdf: Kdf,
    pub params: LockParams,
    pub salt: [u8; LOCK_SALT_BYTES],
    pub key: [u8; 32],
}

impl std::fmt::Debug for BackupLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupLock").field("params", &self.params).field("salt", &wire::to_hex(&self.salt)).finish()
    }
}

impl BackupLock {
    /// Parses and checks the lock text (`wire::lock_text`).
    pub fn from_text(text: &str) -> Result<BackupLock> {
        let mut key = [0u8; 32];
        let (kdf, params, salt) = wire::parse_lock_text(text.trim(), &mut key).map_err(|e| anyhow!("{e}"))?;
        Ok(BackupLock { kdf, params, salt, key })
    }

    pub fn to_text(&self) -> String {
        wire::lock_text(self.kdf, &self.params, &self.salt, &self.key)
    }
}

/// What a PC must answer to unlock a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub kdf: Kdf,
    pub params: LockParams,
    pub salt: [u8; LOCK_SALT_BYTES],
    pub nonce: [u8; 32],
}

/// Why an unlock (or a challenge) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockRefused {
    /// The proof does not match: a wrong password (HTTP 403).
    Wrong,
    /// Too many wrong passwords; the proof was not even checked (429).
    Wait,
    /// No open challenge: never asked, used, or expired (409).
    NoChallenge,
    /// The backup has no password (409).
    NotLocked,
    /// No such backup (404).
    NoBackup,
    /// The database failed (500).
    Internal,
}

/// A refusal and its one-line reason, which the PC's console shows as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlockError {
    pub kind: UnlockRefused,
    pub message: String,
}

impl std::fmt::Display for UnlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UnlockError {}

fn internal(e: impl std::fmt::Display) -> UnlockError {
    UnlockError { kind: UnlockRefused::Internal, message: e.to_string() }
}

/// Tickets remembered at most (valid ones only; the oldest to expire go first).
const TICKET_CACHE: usize = 4096;

/// The ticket cache (see the module doc): hash → (pc, backup, expires).
#[derive(Default)]
pub struct Unlocks {
    valid: Mutex<HashMap<String, (String, i64, i64)>>,
}

/// What the database keeps of a ticket: the BLAKE3 of its secret.
fn ticket_hash(ticket: &str) -> String {
    blake3::hash(ticket.as_bytes()).to_hex().to_string()
}

impl Unlocks {
    fn valid(&self) -> MutexGuard<'_, HashMap<String, (String, i64, i64)>> {
        self.valid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses while (pc, backup) must wait after too many wrong passwords.
    fn check_wait(db: &dyn Database, pc: &str, backup: i64, now: i64) -> Result<(), UnlockError> {
        let (count, last) = db.unlock_failures(pc, backup).map_err(internal)?;
        let until = last + unlock_wait(count);
        if count >= UNLOCK_FREE_TRIES && now < until {
            return Err(UnlockError {
                kind: UnlockRefused::Wait,
                message: format!(
                    "too many wrong passwords for backup {backup} from {pc}; try again in {} s",
                    until - now
                ),
            });
        }
        Ok(())
    }

    /// A challenge for `pc` to unlock `backup` (None: it has no password).
    /// It replaces any open one for the same pair.
    pub fn challenge(
        &self,
        db: &dyn Database,
        pc: &str,
        backup: i64,
        now: i64,
    ) -> Result<Option<Challenge>, UnlockError> {
        let Some(lock) = db.backup_lock(backup).map_err(internal)? else {
            // Only then: whether there is such a backup at all.
            if db.backup(backup).map_err(internal)?.is_none() {
                return Err(UnlockError { kind: UnlockRefused::NoBackup, message: format!("no backup {backup}") });
            }
            return Ok(None);
        };
        Self::check_wait(db, pc, backup, now)?;
        let nonce = random_32().map_err(internal)?;
        db.put_challenge(pc, backup, &nonce, now + CHALLENGE_SECONDS, now).map_err(internal)?;
        Ok(Some(Challenge { kdf: lock.kdf, params: lock.params, salt: lock.salt, nonce }))
    }

    /// Checks `proof` against the open challenge of (pc, backup), counting
    /// a wrong one towards the wait. The challenge is used up either way.
    pub fn verify(
        &self,
        db: &dyn Database,
        pc: &str,
        backup: i64,
        nonce: &[u8; 32],
        proof: &[u8; 32],
        now: i64,
    ) -> Result<(), UnlockError> {
        let open = db.take_challenge(pc, backup).map_err(internal)?;
        Self::check_wait(db, pc, backup, now)?;
        let Some(lock) = db.backup_lock(backup).map_err(internal)? else {
            return Err(UnlockError {
                kind: UnlockRefused::NotLocked,
                message: format!("backup {backup} has no password"),
            });
        };
        match open {
            Some((n, expires)) if ct_eq(&n, nonce) && now < expires => {}
            _ => {
                return Err(UnlockError {
                    kind: UnlockRefused::NoChallenge,
                    message: format!(
                        "no open challenge for backup {backup} from {pc} (it expired or was used); ask for a new one"
                    ),
                })
            }
        }
        let expected = wire::unlock_proof(&lock.key, nonce, pc, backup);
        if ct_eq(&expected, proof) {
            db.clear_unlock_failures(pc, backup).map_err(internal)?;
            return Ok(());
        }
        let count = db.add_unlock_failure(pc, backup, now).map_err(internal)?;
        let left = UNLOCK_FREE_TRIES - count;
        let message = match left {
            1 => format!("wrong password for backup {backup} (1 try left before a wait)"),
            l if l > 1 => format!("wrong password for backup {backup} ({l} tries left before a wait)"),
            _ => format!("wrong password for backup {backup} (try again in {} s)", unlock_wait(count)),
        };
        Err(UnlockError { kind: UnlockRefused::Wrong, message })
    }

    /// A ticket letting `pc` read locked backup `backup` for a day.
    pub fn issue_ticket(&self, db: &dyn Database, pc: &str, backup: i64, now: i64) -> Result<String> {
        let ticket = wire::to_hex(&random_32()?);
        db.add_ticket(&ticket_hash(&ticket), pc, backup, now + TICKET_SECONDS, now)?;
        Ok(ticket)
    }

    /// Whether `ticket` lets `pc` read `backup` now (issued by any server
    /// on the database). A database error refuses.
    pub fn ticket_ok(&self, db: &dyn Database, pc: &str, backup: i64, ticket: &str, now: i64) -> bool {
        // Looked up by the ticket's hash (not a constant-time compare):
        // tickets are 256 random bits, so nothing timing might tell helps
        // anyone guess one.
        let hash = ticket_hash(ticket);
        let ok = |(p, b, expires): &(String, i64, i64)| p == pc && *b == backup && now < *expires;
        if let Some(known) = self.valid().get(&hash) {
            return ok(known);
        }
        let Ok(Some(row)) = db.ticket(&hash) else { return false };
        if !ok(&row) {
            return false;
        }
        let mut valid = self.valid();
        valid.retain(|_, (_, _, expires)| *expires > now);
        if valid.len() >= TICKET_CACHE {
            if let Some(first) = valid.iter().min_by_key(|(_, (_, _, e))| *e).map(|(k, _)| k.clone()) {
                valid.remove(&first);
            }
        }
        valid.insert(hash, row);
        true
    }
}
