//! The management database behind one interface: PCs, backups (their
//! rows, not their bytes), grants, jobs, results, settings, the pending
//! MACs and the wrong-password counts.
//!
//! [`Database`] is what the rest of the server may ask of it: one method
//! per atomic operation, so a transaction never spans two calls and no
//! engine's types (rusqlite's, the PostgreSQL client's) leave the
//! implementation. [`sqlite::SqliteDb`] is the default (`DATA/bootvault.db`,
//! WAL); [`postgres::PgDb`] is one database several servers share. Each
//! keeps its own schema and migrations, under one version numbering.
//!
//! Owns: rows and their consistency. Not chunk or manifest bytes (those
//! are [`crate::blobs`]'), not in-memory unlock state ([`crate::unlock`]),
//! not the rules deciding who may do what ([`crate::vault`]). Time is a
//! parameter: no method reads the clock.

pub mod postgres;
pub mod sqlite;

use anyhow::Result;
use bootvault_common::image::ChunkId;
use serde::{Deserialize, Serialize};

use crate::unlock::BackupLock;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupRow {
    pub id: i64,
    pub pc: String,
    pub name: String,
    pub state: String,
    pub created: i64,
    pub finished: Option<i64>,
    pub disk_bytes: u64,
    pub chunk_size: u32,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub blob_bytes: u64,
    pub received_bytes: u64,
    pub received_chunks: u64,
    pub digest: String,
    pub reason: String,
    /// Restoring it needs its password (the lock itself is never listed).
    pub locked: bool,
    /// The disk's model, from the manifest ('' if the PC did not know it).
    pub model: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRow {
    pub id: i64,
    pub pc: String,
    pub action: String,
    pub disk: String,
    pub name: String,
    pub backup: Option<i64>,
    pub state: String,
    pub created: i64,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    /// A backup job's lock text, sent to the PC with the job (and then
    /// dropped from the job); never listed.
    #[serde(skip)]
    pub lock: Option<String>,
    /// A restore job of a locked backup whose password the admin gave:
    /// the PC gets a ticket with the job.
    pub unlocked: bool,
    /// The password's wrap key sealed for the PC (sent once, like the
    /// lock; the server cannot open it); never listed.
    #[serde(skip)]
    pub wrap: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRow {
    pub id: i64,
    pub pc: String,
    pub job: Option<i64>,
    pub action: String,
    pub disk: String,
    pub backup: Option<i64>,
    pub ok: bool,
    pub message: String,
    pub bytes: u64,
    pub sent: u64,
    pub seconds: f64,
    pub at: i64,
}

/// An unknown MAC that asked for network boot, for the admin to approve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingRow {
    pub mac: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub addr: String,
    pub count: i64,
}

/// What [`Database::note_pending`] did with an unknown MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Newly listed.
    Added,
    /// Already listed; its last contact is now.
    Seen,
    /// Not listed: the list is full.
    Full,
    /// Not listed: the caller did not admit new MACs (rate limit).
    NotAdmitted,
}

/// The rules of the pending list, decided by the vault.
#[derive(Debug, Clone, Copy)]
pub struct PendingRules {
    /// Entries last seen before this are dropped first.
    pub expire_before: i64,
    /// Entries listed at most.
    pub max: usize,
    /// Whether a new MAC may be listed at all.
    pub admit_new: bool,
}

/// A PC the admin registered: how it boots and what it does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PcRow {
    pub name: String,
    pub mac: String,
    /// `dhcp` or `ADDR/PREFIX`.
    pub ip: String,
    pub gateway: String,
    pub dns: String,
    /// `network` (boots from the server) or `local` (boots from its media).
    pub mode: String,
    pub disk: String,
    /// `menu`, `backup` or `restore`.
    pub default_action: String,
    /// The PC's secret; sent with every request it makes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    pub last_seen: Option<i64>,
    pub last_addr: String,
}

impl PcRow {
    /// The init settings (`KEY=VALUE`) this record stands for: its token,
    /// network, disk and what it does at boot. What `bootvault build`
    /// writes into the PC's initramfs, and what the network-boot overlay
    /// of an approved PC holds ([`crate::netboot`]).
    pub fn settings(&self) -> Vec<String> {
        let action = match self.default_action.as_str() {
            "backup" => "backup",
            "restore" => "restore",
            _ => "menu",
        };
        let mut out = vec![
            format!("token={}", self.token),
            format!("ip={}", self.ip),
            format!("disk={}", self.disk),
            format!("action={action}"),
        ];
        if !self.gateway.is_empty() {
            out.push(format!("gateway={}", self.gateway));
        }
        if !self.dns.is_empty() {
            out.push(format!("dns={}", self.dns));
        }
        out
    }

    /// A PC with the defaults: DHCP, network mode, first fixed disk, menu.
    pub fn new(name: &str, mac: &str) -> PcRow {
        PcRow {
            name: name.to_owned(),
            mac: mac.to_owned(),
            ip: "dhcp".into(),
            gateway: String::new(),
            dns: String::new(),
            mode: "network".into(),
            disk: "auto".into(),
            default_action: "menu".into(),
            token: String::new(),
            last_seen: None,
            last_addr: String::new(),
        }
    }
}

/// An upload that was open while gc ran, holding back what it may remove.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenUpload {
    pub id: i64,
    pub pc: String,
    pub created: i64,
    pub last_active: i64,
}

/// A new upload's row (state `uploading`).
#[derive(Debug, Clone)]
pub struct NewBackup<'a> {
    pub pc: &'a str,
    pub name: &'a str,
    /// When the backup was made (now, or the manifest's time for an import).
    pub created: i64,
    /// The upload's last activity so far, for gc's idle check (0: none
    /// yet, its creation counts).
    pub last_active: i64,
    pub disk_bytes: u64,
    pub chunk_size: u32,
    pub lock: Option<&'a BackupLock>,
}

/// What completing a backup records, from its manifest.
#[derive(Debug, Clone)]
pub struct Completion<'a> {
    pub chunks: u64,
    pub zero_chunks: u64,
    pub blob_bytes: u64,
    pub digest: &'a str,
    pub model: &'a str,
}

/// A new job (state `queued`), checked by the vault.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub pc: &'a str,
    pub action: &'a str,
    pub disk: &'a str,
    pub name: &'a str,
    pub backup: Option<i64>,
    /// A backup job's lock text.
    pub lock: Option<String>,
    pub unlocked: bool,
    /// The password's wrap key sealed for the PC (hex; `JobMessage::wrap`).
    pub wrap: Option<String>,
}

/// A result a PC reported (the job it ends, if any).
#[derive(Debug, Clone)]
pub struct NewResult<'a> {
    pub pc: &'a str,
    pub job: Option<i64>,
    pub action: &'a str,
    pub disk: &'a str,
    pub backup: Option<i64>,
    pub ok: bool,
    pub message: &'a str,
    pub bytes: u64,
    pub sent: u64,
    pub seconds: f64,
}

/// The management database (see the module doc). Every method is one
/// transaction; errors carry the operation.
pub trait Database: Send + Sync {
    // PCs.
    /// The token of a registered PC (None: not registered).
    fn pc_token(&self, name: &str) -> Result<Option<String>>;
    /// Registers `pc` with `token`; refuses a name or MAC already registered.
    fn add_pc(&self, pc: &PcRow, token: &str, now: i64) -> Result<()>;
    /// Replaces a registered PC's settings (not its token); refuses a MAC
    /// registered to another PC and an unregistered name.
    fn edit_pc(&self, pc: &PcRow) -> Result<()>;
    /// Registered PCs, by name.
    fn list_pcs(&self) -> Result<Vec<PcRow>>;
    /// Replaces a registered PC's token; false if there is no such PC.
    fn set_pc_token(&self, name: &str, token: &str) -> Result<bool>;
    /// Unregisters a PC and drops its grants (its backups are the caller's).
    fn remove_pc(&self, name: &str) -> Result<()>;
    /// Notes a contact from `pc` (registered or not).
    fn seen_pc(&self, pc: &str, mac: &str, addr: &str, now: i64) -> Result<()>;
    fn pc_quota(&self, pc: &str) -> Result<Option<u64>>;
    /// Sets or clears a registered PC's quota; false if not registered.
    fn set_pc_quota(&self, pc: &str, quota: Option<u64>) -> Result<bool>;
    /// Bytes `pc`'s uploads sent that were new to the store: complete and
    /// running ones, and failed ones active at or after `failed_since`.
    fn pc_usage(&self, pc: &str, failed_since: i64) -> Result<u64>;

    // Unknown MACs that network-booted.
    fn note_pending(&self, mac: &str, addr: &str, now: i64, rules: PendingRules) -> Result<Pending>;
    /// Listed MACs seen at or after `since`, oldest first.
    fn list_pending(&self, since: i64) -> Result<Vec<PendingRow>>;
    fn forget_pending(&self, mac: &str) -> Result<bool>;

    // Settings and the server's own notes.
    fn setting(&self, key: &str) -> Result<Option<String>>;
    fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()>;
    /// When the last gc started (0: never).
    fn last_gc(&self) -> Result<i64>;
    fn set_last_gc(&self, start: i64) -> Result<()>;

    // Grants.
    fn grant(&self, backup: i64, pc: &str, now: i64) -> Result<()>;
    fn revoke(&self, backup: i64, pc: &str) -> Result<bool>;
    /// The PCs (or `*`) granted a backup, by name.
    fn grants(&self, backup: i64) -> Result<Vec<String>>;
    /// Whether `backup` is granted to `pc` or to every PC.
    fn granted(&self, backup: i64, pc: &str) -> Result<bool>;

    // Backups.
    fn create_backup(&self, b: &NewBackup<'_>) -> Result<i64>;
    fn backup(&self, id: i64) -> Result<Option<BackupRow>>;
    /// The lock of a backup (None: no password, or no such backup).
    fn backup_lock(&self, id: i64) -> Result<Option<BackupLock>>;
    /// Backups of `pc` (None: every PC), complete ones or `all`, by id.
    fn list_backups(&self, pc: Option<&str>, all: bool) -> Result<Vec<BackupRow>>;
    /// Complete backups `pc` owns or is granted, by id.
    fn visible_backups(&self, pc: &str) -> Result<Vec<BackupRow>>;
    /// The newest complete backup of `pc` (named `name`, if given).
    fn latest(&self, pc: &str, name: Option<&str>) -> Result<Option<i64>>;
    /// A complete backup of `pc` with this name, creation time and
    /// manifest digest (an import already done).
    fn find_complete(&self, pc: &str, name: &str, created: i64, digest: &str) -> Result<Option<i64>>;
    /// Upload `backup` sent chunk `id` (`new_bytes`: the store did not
    /// have it). Not synced on its own: losing it to a power cut can only
    /// make the upload fail at finish, never complete.
    fn note_chunk(&self, backup: i64, id: &ChunkId, new_bytes: Option<u64>, now: i64) -> Result<()>;
    /// Whether upload `backup` sent chunk `id`.
    fn upload_has_chunk(&self, backup: i64, id: &ChunkId) -> Result<bool>;
    /// Upload activity, for gc's idle check.
    fn note_active(&self, backup: i64, now: i64) -> Result<()>;
    /// Where an import's upload came from, once its manifest is read.
    fn set_origin(&self, id: i64, pc: &str, name: &str, disk_bytes: u64, chunk_size: u32) -> Result<()>;
    /// `uploading` → `complete`, forgetting the upload's chunk list.
    fn complete_backup(&self, id: i64, c: &Completion<'_>, now: i64) -> Result<()>;
    /// `uploading` → `failed`; false if it was not being uploaded.
    fn fail_backup(&self, id: i64, reason: &str, now: i64) -> Result<bool>;
    /// The row and everything hanging off it (grants, failure counts).
    fn delete_backup(&self, id: i64) -> Result<()>;
    /// Fails uploads idle since before `idle_before` (gc, `max_age` for
    /// the reason) and lists the uploads still open, oldest first.
    fn close_stale_uploads(&self, idle_before: i64, now: i64, max_age: i64) -> Result<(u64, Vec<OpenUpload>)>;

    // Wrong passwords.
    /// Wrong passwords so far for (pc, backup), and when the last was.
    fn unlock_failures(&self, pc: &str, backup: i64) -> Result<(i64, i64)>;
    fn clear_unlock_failures(&self, pc: &str, backup: i64) -> Result<()>;
    /// One more wrong password; the count now.
    fn add_unlock_failure(&self, pc: &str, backup: i64, now: i64) -> Result<i64>;

    // Jobs and results.
    fn add_job(&self, j: &NewJob<'_>, now: i64) -> Result<i64>;
    /// The oldest queued job of `pc`, now marked running; its lock goes
    /// out once, with this answer.
    fn next_job(&self, pc: &str, now: i64) -> Result<Option<JobRow>>;
    fn list_jobs(&self, pc: Option<&str>) -> Result<Vec<JobRow>>;
    /// Records a result and ends its job (done or failed).
    fn record_result(&self, r: &NewResult<'_>, now: i64) -> Result<()>;
    fn list_results(&self, pc: Option<&str>) -> Result<Vec<ResultRow>>;
    /// Ends a queued job as failed with a result saying `message`; false
    /// if it was not queued (a PC took it, or it ended).
    fn cancel_job(&self, id: i64, message: &str, now: i64) -> Result<bool>;

    // The web console's admin accounts and sessions.
    /// Adds an account; refuses a name already taken.
    fn add_admin(&self, name: &str, hash: &str, now: i64) -> Result<()>;
    /// Replaces an account's password hash and ends its sessions; false if
    /// there is no such account.
    fn set_admin_hash(&self, name: &str, hash: &str) -> Result<bool>;
    fn admin_hash(&self, name: &str) -> Result<Option<String>>;
    /// (name, created), by name.
    fn list_admins(&self) -> Result<Vec<(String, i64)>>;
    /// Removes an account and its sessions; false if there was none.
    fn remove_admin(&self, name: &str) -> Result<bool>;
    /// A session: `id` is the hash of the cookie's secret, never the secret.
    fn add_session(&self, id: &str, admin: &str, csrf: &str, now: i64) -> Result<()>;
    /// The (admin, CSRF token) of a session used at or after `idle_since`
    /// and created at or after `created_since`, marked used at `now`;
    /// sessions past either limit are deleted.
    fn session(&self, id: &str, idle_since: i64, created_since: i64, now: i64) -> Result<Option<(String, String)>>;
    fn end_session(&self, id: &str) -> Result<()>;
    /// Failed sign-ins under `key` (an account or a peer) at or after `since`.
    fn signin_failures(&self, key: &str, since: i64) -> Result<i64>;
    /// Notes a failed sign-in under each of `keys`; failures before
    /// `forget_before` are dropped.
    fn add_signin_failure(&self, keys: &[&str], now: i64, forget_before: i64) -> Result<()>;
    fn clear_signin_failures(&self, key: &str) -> Result<()>;

    // Restore passwords' challenges and tickets: in the database, so a PC
    // may ask one server and answer, or read, through another.
    /// Opens the challenge of (pc, backup) with `nonce` until `expires`,
    /// replacing any; challenges expired at `now` are dropped.
    fn put_challenge(&self, pc: &str, backup: i64, nonce: &[u8; 32], expires: i64, now: i64) -> Result<()>;
    /// Takes the open challenge of (pc, backup), which is then gone
    /// (single use, whichever server asks): its nonce and expiry.
    fn take_challenge(&self, pc: &str, backup: i64) -> Result<Option<([u8; 32], i64)>>;
    /// Keeps a ticket by the hash of its secret (never the secret);
    /// tickets expired at `now` are dropped.
    fn add_ticket(&self, hash: &str, pc: &str, backup: i64, expires: i64, now: i64) -> Result<()>;
    /// (pc, backup, expires) of the ticket whose secret hashes to `hash`.
    fn ticket(&self, hash: &str) -> Result<Option<(String, i64, i64)>>;

    /// The chunk store's lock across every server on this database (gc's
    /// sweep exclusive, writers shared; see vault/gc.rs), taken before the
    /// store's own. None: no other server can share this database
    /// (SQLite, in one data directory), so the store's lock alone does.
    fn store_lock(&self, exclusive: bool) -> Result<Option<crate::blobs::BlobLock>>;
}

/// Whether an error comes from a full disk or an exhausted disk quota
/// (ENOSPC, EDQUOT) anywhere in its chain, the database's included.
pub fn is_storage_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull || matches!(io.raw_os_error(), Some(28) | Some(122))
        }) || sqlite::is_disk_full(c)
            || self::postgres::is_disk_full(c)
    })
}
