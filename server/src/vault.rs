//! The server's data directory: the management database and the
//! content-addressed chunk store.
//!
//! ```text
//! DATA/bootvault.db          SQLite (WAL): pcs, backups, jobs, results
//! DATA/chunks/XX/HEX         blobs, named by the BLAKE3 of their plain bytes
//! DATA/manifests/ID.bvm      manifests of complete backups
//! DATA/tmp/                  files being written (renamed into place)
//! ```
//!
//! Promises: a chunk file exists only if its blob decoded and hashed to its
//! name; a backup is `complete` only after every chunk its manifest names
//! is in the store and the manifest itself is fsync'ed and renamed into
//! place. Both the HTTP API and the admin CLI go through this type.
//!
//! Restore passwords: a locked backup's row holds the Argon2id parameters,
//! salt and key (never the password). Unlocking is challenge–response:
//! one-time nonces and the tickets they earn live in this process's memory
//! (a restart drops them; PCs ask again), wrong-password counts live in the
//! database (a restart does not reset them). Time is a parameter (`now`),
//! so the waits are tested without sleeping.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bootvault_common::image::{self, ChunkId, ImageReader, ImageWriter, Manifest, Record};
use bootvault_common::wire::{self, LockParams, LOCK_SALT_BYTES};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

mod gc;
mod rights;

pub use gc::{margins as gc_margins, GcPhase, GcReport, OpenUpload, GC_MARGIN, TOUCH_SKIP};
pub use rights::Rights;

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pcs (name TEXT PRIMARY KEY, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    last_mac TEXT NOT NULL DEFAULT '', last_addr TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS backups (id INTEGER PRIMARY KEY AUTOINCREMENT, pc TEXT NOT NULL, name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('uploading','complete','failed')),
    created INTEGER NOT NULL, finished INTEGER, disk_bytes INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
    chunks INTEGER NOT NULL DEFAULT 0, zero_chunks INTEGER NOT NULL DEFAULT 0, blob_bytes INTEGER NOT NULL DEFAULT 0,
    received_bytes INTEGER NOT NULL DEFAULT 0, received_chunks INTEGER NOT NULL DEFAULT 0,
    digest TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, pc TEXT NOT NULL, action TEXT NOT NULL,
    disk TEXT NOT NULL, name TEXT NOT NULL, backup INTEGER,
    state TEXT NOT NULL CHECK (state IN ('queued','running','done','failed')),
    created INTEGER NOT NULL, started INTEGER, finished INTEGER);
CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY AUTOINCREMENT, pc TEXT NOT NULL, job INTEGER,
    action TEXT NOT NULL, disk TEXT NOT NULL, backup INTEGER, ok INTEGER NOT NULL, message TEXT NOT NULL,
    bytes INTEGER NOT NULL, sent INTEGER NOT NULL, seconds REAL NOT NULL, at INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '1');
";

#[derive(Debug, Clone, Serialize, PartialEq)]
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

#[derive(Debug, Clone, Serialize, PartialEq)]
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
}

#[derive(Debug, Clone, Serialize, PartialEq)]
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

/// Why finishing a backup was refused; `conflict` = a chunk is missing
/// (HTTP 409), `forbidden` = the manifest names a chunk the PC has no
/// right to (403), otherwise the manifest itself is bad (422).
#[derive(Debug)]
pub struct FinishError {
    pub conflict: bool,
    pub forbidden: bool,
    pub message: String,
}

/// Why a chunk was not stored.
#[derive(Debug)]
pub enum PutError {
    /// The blob does not decode or hash to its id (HTTP 422).
    Bad(String),
    /// The backup is not being uploaded (409).
    Closed(String),
    /// The PC's quota would be exceeded (507).
    Quota(String),
    /// Writing failed: the disk is full (507) or another I/O error (500).
    Storage(anyhow::Error),
}

impl std::fmt::Display for PutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Bad(m) | PutError::Closed(m) | PutError::Quota(m) => f.write_str(m),
            PutError::Storage(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for PutError {}

/// Whether an error comes from a full disk or an exhausted disk quota
/// (ENOSPC, EDQUOT) anywhere in its chain.
pub fn is_storage_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull || matches!(io.raw_os_error(), Some(28) | Some(122))
        }) || c
            .downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error_code)
            .is_some_and(|code| code == rusqlite::ErrorCode::DiskFull)
    })
}

pub struct Vault {
    dir: PathBuf,
    db: Mutex<Connection>,
    tmp_seq: AtomicU64,
    unlocks: Mutex<Unlocks>,
    manifests: Mutex<rights::ManifestIds>,
    /// When each upload's `last_active` was last written (see `note_active`).
    active: Mutex<HashMap<i64, i64>>,
}

/// Seconds between two writes of an upload's `last_active` (far below any
/// sensible `gc --max-age`).
const ACTIVE_EVERY: i64 = 2;

/// Open challenges and tickets (in memory, see the module doc).
#[derive(Default)]
struct Unlocks {
    /// (pc, backup) → (nonce, expires): one open challenge each, single use.
    challenges: HashMap<(String, i64), ([u8; 32], i64)>,
    /// ticket → (pc, backup, expires).
    tickets: HashMap<String, (String, i64, i64)>,
}

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
        let (params, salt) = wire::parse_lock_text(text.trim(), &mut key).map_err(|e| anyhow!("{e}"))?;
        Ok(BackupLock { params, salt, key })
    }

    pub fn to_text(&self) -> String {
        wire::lock_text(&self.params, &self.salt, &self.key)
    }
}

/// What a PC must answer to unlock a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
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

fn internal_unlock(e: impl std::fmt::Display) -> UnlockError {
    UnlockError { kind: UnlockRefused::Internal, message: e.to_string() }
}

const BACKUP_COLS: &str = "id, pc, name, state, created, finished, disk_bytes, chunk_size, chunks, zero_chunks, \
    blob_bytes, received_bytes, received_chunks, digest, reason, lock_key IS NOT NULL, model";

const JOB_COLS: &str = "id, pc, action, disk, name, backup, state, created, started, finished, lock, unlocked";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        pc: r.get(1)?,
        action: r.get(2)?,
        disk: r.get(3)?,
        name: r.get(4)?,
        backup: r.get(5)?,
        state: r.get(6)?,
        created: r.get(7)?,
        started: r.get(8)?,
        finished: r.get(9)?,
        lock: r.get(10)?,
        unlocked: r.get(11)?,
    })
}

fn backup_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BackupRow> {
    Ok(BackupRow {
        id: r.get(0)?,
        pc: r.get(1)?,
        name: r.get(2)?,
        state: r.get(3)?,
        created: r.get(4)?,
        finished: r.get(5)?,
        disk_bytes: r.get::<_, i64>(6)? as u64,
        chunk_size: r.get::<_, i64>(7)? as u32,
        chunks: r.get::<_, i64>(8)? as u64,
        zero_chunks: r.get::<_, i64>(9)? as u64,
        blob_bytes: r.get::<_, i64>(10)? as u64,
        received_bytes: r.get::<_, i64>(11)? as u64,
        received_chunks: r.get::<_, i64>(12)? as u64,
        digest: r.get(13)?,
        reason: r.get(14)?,
        locked: r.get(15)?,
        model: r.get(16)?,
    })
}

/// The schema steps after version 1: (version reached, its SQL).
const MIGRATIONS: &[(i64, &str)] = &[
    // Schema 2: PCs registered by an admin (`bootvault pc add`), beside
    // the ones merely seen.
    (
        2,
        "ALTER TABLE pcs ADD COLUMN registered INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE pcs ADD COLUMN mac TEXT NOT NULL DEFAULT '';
         ALTER TABLE pcs ADD COLUMN ip TEXT NOT NULL DEFAULT 'dhcp';
         ALTER TABLE pcs ADD COLUMN gateway TEXT NOT NULL DEFAULT '';
         ALTER TABLE pcs ADD COLUMN dns TEXT NOT NULL DEFAULT '';
         ALTER TABLE pcs ADD COLUMN mode TEXT NOT NULL DEFAULT 'network';
         ALTER TABLE pcs ADD COLUMN disk TEXT NOT NULL DEFAULT 'auto';
         ALTER TABLE pcs ADD COLUMN default_action TEXT NOT NULL DEFAULT 'menu';
         ALTER TABLE pcs ADD COLUMN token TEXT NOT NULL DEFAULT '';
         CREATE UNIQUE INDEX IF NOT EXISTS pcs_mac ON pcs(mac) WHERE mac != '';",
    ),
    // Schema 3: grants (which PCs may restore a backup besides its owner;
    // '*' = every registered PC), pending (unknown MACs that
    // network-booted), settings (the server's own addresses and other
    // admin choices).
    (
        3,
        "CREATE TABLE IF NOT EXISTS grants (backup INTEGER NOT NULL, pc TEXT NOT NULL, created INTEGER NOT NULL,
             PRIMARY KEY (backup, pc));
         CREATE TABLE IF NOT EXISTS pending (mac TEXT PRIMARY KEY, first_seen INTEGER NOT NULL,
             last_seen INTEGER NOT NULL, addr TEXT NOT NULL DEFAULT '', count INTEGER NOT NULL DEFAULT 1);
         CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    ),
    // Schema 4: restore passwords: the lock of a backup (all NULL = none),
    // the lock a backup job carries to its PC, restore jobs the admin
    // unlocked, and wrong-password counts per (PC, backup). The disk
    // model, for the PCs' backup lists.
    (
        4,
        "ALTER TABLE backups ADD COLUMN kdf_m INTEGER;
         ALTER TABLE backups ADD COLUMN kdf_t INTEGER;
         ALTER TABLE backups ADD COLUMN kdf_p INTEGER;
         ALTER TABLE backups ADD COLUMN salt BLOB;
         ALTER TABLE backups ADD COLUMN lock_key BLOB;
         ALTER TABLE backups ADD COLUMN model TEXT NOT NULL DEFAULT '';
         ALTER TABLE jobs ADD COLUMN lock TEXT;
         ALTER TABLE jobs ADD COLUMN unlocked INTEGER NOT NULL DEFAULT 0;
         CREATE TABLE IF NOT EXISTS unlock_failures (pc TEXT NOT NULL, backup INTEGER NOT NULL,
             count INTEGER NOT NULL, last INTEGER NOT NULL, PRIMARY KEY (pc, backup));",
    ),
    // Schema 5: gc ages uploads by their last activity; the chunks each
    // open upload sent (what its PC may name besides readable backups);
    // per-PC storage quotas (NULL = none).
    (
        5,
        "ALTER TABLE backups ADD COLUMN last_active INTEGER NOT NULL DEFAULT 0;
         UPDATE backups SET last_active = created;
         CREATE TABLE IF NOT EXISTS upload_chunks (backup INTEGER NOT NULL, chunk BLOB NOT NULL,
             PRIMARY KEY (backup, chunk)) WITHOUT ROWID;
         ALTER TABLE pcs ADD COLUMN quota INTEGER;",
    ),
];

/// Brings an older database up to the current schema: each step of
/// [`MIGRATIONS`] not yet applied runs once, in one transaction with the
/// version it reaches.
fn migrate(db: &Connection) -> Result<()> {
    let version: i64 =
        db.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get::<_, String>(0))?.parse()?;
    for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > version) {
        db.execute_batch(&format!(
            "BEGIN;\n{sql}\nUPDATE meta SET value = '{to}' WHERE key = 'schema_version';\nCOMMIT;"
        ))?;
    }
    Ok(())
}

/// Constant-time equality of two secrets (no early exit on the first
/// differing byte, so timing tells nothing about how much matched).
pub fn secret_eq(a: &str, b: &str) -> bool {
    !a.is_empty() && ct_eq(a.as_bytes(), b.as_bytes())
}

/// Constant-time equality of two byte strings of the same length (the
/// lengths themselves are not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A MAC address in the canonical form the database keeps
/// (`aa:bb:cc:dd:ee:ff`, lower case).
pub fn normalize_mac(v: &str) -> Option<String> {
    bootvault_common::units::parse_mac(v.trim()).map(bootvault_common::units::mac_string)
}

/// Setting: the server's own URLs as PCs reach it, comma-separated
/// (`bootvault settings server-urls`); builds without `--server` use the first.
pub const SERVER_URLS: &str = "server_urls";
/// Setting: `yes` lists unknown MACs that network-boot (`bootvault pc pending`).
pub const REGISTER_UNKNOWN: &str = "register_unknown";

/// An unknown MAC that asked for network boot, for the admin to approve.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PendingRow {
    pub mac: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub addr: String,
    pub count: i64,
}

/// What [`Vault::note_pending`] did with an unknown MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Newly listed.
    Added,
    /// Already listed; its last contact is now.
    Seen,
    /// Not listed: the list holds [`Vault::PENDING_MAX`] MACs.
    Full,
    /// Not listed: the caller did not admit new MACs (rate limit).
    NotAdmitted,
}

/// A PC the admin registered: how it boots and what it does.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token: String,
    pub last_seen: Option<i64>,
    pub last_addr: String,
}

impl PcRow {
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

/// A new secret: 32 random bytes from the kernel, as hex.
pub fn new_token() -> Result<String> {
    Ok(wire::to_hex(&random_32()?))
}

/// 32 random bytes from the kernel (tokens, nonces, tickets).
fn random_32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).context("reading /dev/urandom")?;
    Ok(b)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))
}

impl Vault {
    pub fn open(dir: &Path) -> Result<Vault> {
        for sub in ["chunks", "manifests", "tmp"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let path = dir.join("bootvault.db");
        let db = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(SCHEMA).with_context(|| format!("creating the schema in {}", path.display()))?;
        migrate(&db).with_context(|| format!("migrating the schema of {}", path.display()))?;
        let v = Vault {
            dir: dir.to_owned(),
            db: Mutex::new(db),
            tmp_seq: AtomicU64::new(0),
            unlocks: Mutex::new(Unlocks::default()),
            manifests: Mutex::new(rights::ManifestIds::default()),
            active: Mutex::new(HashMap::new()),
        };
        v.ensure_admin_token()?;
        Ok(v)
    }

    /// Path of the admin token: the secret that admin requests over HTTP
    /// carry. Created on first open, readable by the server's user only.
    pub fn admin_token_path(&self) -> PathBuf {
        self.dir.join("admin.token")
    }

    fn ensure_admin_token(&self) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.admin_token_path();
        if p.exists() {
            return Ok(());
        }
        let token = new_token()?;
        let tmp = self.dir.join("tmp").join(format!("admin-token-{}", std::process::id()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(format!("{token}\n").as_bytes()).and_then(|()| f.sync_all())?;
        // Two processes opening a new data directory at once: the first
        // rename wins and both read the same file afterwards.
        if !p.exists() {
            fs::rename(&tmp, &p).with_context(|| format!("creating {}", p.display()))?;
        } else {
            let _ = fs::remove_file(&tmp);
        }
        fsync_dir(&self.dir)
    }

    pub fn admin_token(&self) -> Result<String> {
        let p = self.admin_token_path();
        Ok(fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_owned())
    }

    /// The token of a registered PC (None: not registered).
    pub fn pc_token(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .db()
            .query_row("SELECT token FROM pcs WHERE name = ?1 AND registered = 1", [name], |r| r.get(0))
            .optional()?)
    }

    /// The registered PC with this MAC, if any.
    pub fn pc_by_mac(&self, mac: &str) -> Result<Option<PcRow>> {
        let Some(mac) = normalize_mac(mac) else { return Ok(None) };
        Ok(self.list_pcs()?.into_iter().find(|p| p.mac == mac))
    }

    /// Unknown MACs listed at most: anyone on the imaging network can
    /// invent MACs, and the admin reads the list by eye. Registered PCs
    /// are never in it, so a full list locks no one out.
    pub const PENDING_MAX: usize = 256;
    /// A listed MAC not seen for this long (seconds) leaves the list.
    pub const PENDING_EXPIRE: i64 = 7 * 86_400;

    /// Notes an unknown MAC that asked for network boot at `now`: updates
    /// it if listed; else lists it if `admit_new` and the list has room.
    /// Entries older than [`Vault::PENDING_EXPIRE`] are dropped first.
    pub fn note_pending(&self, mac: &str, addr: &str, now: i64, admit_new: bool) -> Result<Pending> {
        let mac = normalize_mac(mac).ok_or_else(|| anyhow!("bad MAC {mac:?}"))?;
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM pending WHERE last_seen < ?1", [now - Self::PENDING_EXPIRE])?;
        let seen = tx.execute(
            "UPDATE pending SET last_seen = ?2, addr = ?3, count = count + 1 WHERE mac = ?1",
            params![mac, now, addr],
        )?;
        let listed: i64 = tx.query_row("SELECT COUNT(*) FROM pending", [], |r| r.get(0))?;
        let outcome = if seen > 0 {
            Pending::Seen
        } else if !admit_new {
            Pending::NotAdmitted
        } else if usize::try_from(listed).unwrap_or(usize::MAX) >= Self::PENDING_MAX {
            Pending::Full
        } else {
            tx.execute(
                "INSERT INTO pending (mac, first_seen, last_seen, addr) VALUES (?1, ?2, ?2, ?3)",
                params![mac, now, addr],
            )?;
            Pending::Added
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// The listed unknown MACs seen within [`Vault::PENDING_EXPIRE`] of `now`.
    pub fn list_pending(&self, now: i64) -> Result<Vec<PendingRow>> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT mac, first_seen, last_seen, addr, count FROM pending WHERE last_seen >= ?1 ORDER BY first_seen",
        )?;
        let rows = st
            .query_map([now - Self::PENDING_EXPIRE], |r| {
                Ok(PendingRow {
                    mac: r.get(0)?,
                    first_seen: r.get(1)?,
                    last_seen: r.get(2)?,
                    addr: r.get(3)?,
                    count: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Drops a pending entry (registered, or rejected by the admin).
    pub fn forget_pending(&self, mac: &str) -> Result<bool> {
        let mac = normalize_mac(mac).ok_or_else(|| anyhow!("bad MAC {mac:?}"))?;
        Ok(self.db().execute("DELETE FROM pending WHERE mac = ?1", [mac])? > 0)
    }

    /// An admin setting (e.g. `server_urls`, `register_unknown`).
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.db().query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(v) => self.db().execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                params![key, v],
            )?,
            None => self.db().execute("DELETE FROM settings WHERE key = ?1", [key])?,
        };
        Ok(())
    }

    /// Lets `pc` (or every PC, `*`) restore backup `backup`.
    pub fn grant(&self, backup: i64, pc: &str) -> Result<()> {
        let row = self.backup(backup)?.ok_or_else(|| anyhow!("no backup {backup}"))?;
        if pc != "*" && self.pc(pc)?.is_none() {
            bail!("no registered PC {pc}");
        }
        if row.pc == pc {
            return Ok(());
        }
        self.db().execute(
            "INSERT OR IGNORE INTO grants (backup, pc, created) VALUES (?1, ?2, ?3)",
            params![backup, pc, now()],
        )?;
        Ok(())
    }

    pub fn revoke(&self, backup: i64, pc: &str) -> Result<bool> {
        Ok(self.db().execute("DELETE FROM grants WHERE backup = ?1 AND pc = ?2", params![backup, pc])? > 0)
    }

    /// The PCs (or `*`) granted a backup, besides its owner.
    pub fn grants(&self, backup: i64) -> Result<Vec<String>> {
        let db = self.db();
        let mut st = db.prepare("SELECT pc FROM grants WHERE backup = ?1 ORDER BY pc")?;
        let rows = st.query_map([backup], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(rows)
    }

    /// Whether `pc` may read backup `backup`: its own, or granted to it.
    pub fn can_read(&self, pc: &str, backup: &BackupRow) -> Result<bool> {
        if backup.pc == pc {
            return Ok(true);
        }
        let n: i64 = self.db().query_row(
            "SELECT COUNT(*) FROM grants WHERE backup = ?1 AND (pc = ?2 OR pc = '*')",
            params![backup.id, pc],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Complete backups `pc` may restore: its own and those granted to it.
    pub fn visible_backups(&self, pc: &str) -> Result<Vec<BackupRow>> {
        let db = self.db();
        let mut st = db.prepare(&format!(
            "SELECT {BACKUP_COLS} FROM backups WHERE state = 'complete' AND (pc = ?1 OR id IN
               (SELECT backup FROM grants WHERE pc = ?1 OR pc = '*')) ORDER BY id"
        ))?;
        let rows = st.query_map([pc], backup_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn manifest_cache(&self) -> std::sync::MutexGuard<'_, rights::ManifestIds> {
        self.manifests.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let h = image::hex(id);
        self.dir.join("chunks").join(&h[..2]).join(h)
    }

    fn manifest_path(&self, backup: i64) -> PathBuf {
        self.dir.join("manifests").join(format!("{backup}.bvm"))
    }

    /// Writes `bytes` to a temporary file, fsyncs it, renames it to `dest`
    /// and fsyncs the directory.
    fn durable_write(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.dir.join("tmp").join(format!(
            "{}-{}.tmp",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let parent = dest.parent().ok_or_else(|| anyhow!("{} has no parent", dest.display()))?;
        fs::create_dir_all(parent)?;
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .with_context(|| format!("writing {}", tmp.display()))
            .and_then(|()| fs::rename(&tmp, dest).with_context(|| format!("renaming into {}", dest.display())));
        if written.is_err() {
            // A full disk must not leave half-written files behind.
            let _ = fs::remove_file(&tmp);
        }
        written?;
        fsync_dir(parent)
    }

    /// `DATA/boot/NAME`: the network-boot files published for PC `pc`.
    pub fn boot_dir(&self, pc: &str) -> PathBuf {
        self.dir.join("boot").join(pc)
    }

    /// Publishes a registered PC's network-boot files (`vmlinuz`,
    /// `initrd.img`, `cmdline`), each written durably, so a PC booting
    /// meanwhile gets the old file or the new one, never half of one.
    /// Returns the bytes published.
    pub fn publish_boot_files(&self, pc: &str, files: &[(&str, Vec<u8>)]) -> Result<u64> {
        if self.pc(pc)?.is_none() {
            bail!("no registered PC {pc}");
        }
        let dir = self.boot_dir(pc);
        for (name, bytes) in files {
            self.durable_write(&dir.join(name), bytes)?;
        }
        Ok(files.iter().map(|(_, b)| b.len() as u64).sum())
    }

    /// Registers a PC (the settings are checked by the caller) with a new
    /// token. Refuses a name or MAC already registered.
    pub fn add_pc(&self, pc: &PcRow) -> Result<PcRow> {
        let db = self.db();
        let taken: Option<String> = db
            .query_row(
                "SELECT name FROM pcs WHERE registered = 1 AND (name = ?1 OR (mac = ?2 AND ?2 != ''))",
                params![pc.name, pc.mac],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = taken {
            if other == pc.name {
                bail!("PC {} is already registered", pc.name);
            }
            bail!("MAC {} is already registered to PC {other}", pc.mac);
        }
        let token = new_token()?;
        db.execute(
            "INSERT INTO pcs (name, first_seen, last_seen, registered, mac, ip, gateway, dns, mode, disk, default_action, token)
             VALUES (?1, ?2, 0, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(name) DO UPDATE SET registered = 1, mac = ?3, ip = ?4, gateway = ?5, dns = ?6, mode = ?7,
               disk = ?8, default_action = ?9, token = ?10",
            params![pc.name, now(), pc.mac, pc.ip, pc.gateway, pc.dns, pc.mode, pc.disk, pc.default_action, token],
        )?;
        drop(db);
        self.pc(&pc.name)?.ok_or_else(|| anyhow!("PC {} vanished", pc.name))
    }

    /// Replaces a registered PC's settings (not its token).
    pub fn edit_pc(&self, pc: &PcRow) -> Result<PcRow> {
        let db = self.db();
        let clash: Option<String> = db
            .query_row(
                "SELECT name FROM pcs WHERE registered = 1 AND mac = ?2 AND ?2 != '' AND name != ?1",
                params![pc.name, pc.mac],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = clash {
            bail!("MAC {} is already registered to PC {other}", pc.mac);
        }
        let n = db.execute(
            "UPDATE pcs SET mac = ?2, ip = ?3, gateway = ?4, dns = ?5, mode = ?6, disk = ?7, default_action = ?8
             WHERE name = ?1 AND registered = 1",
            params![pc.name, pc.mac, pc.ip, pc.gateway, pc.dns, pc.mode, pc.disk, pc.default_action],
        )?;
        drop(db);
        if n == 0 {
            bail!("no registered PC {}", pc.name);
        }
        self.pc(&pc.name)?.ok_or_else(|| anyhow!("PC {} vanished", pc.name))
    }

    pub fn pc(&self, name: &str) -> Result<Option<PcRow>> {
        Ok(self.list_pcs()?.into_iter().find(|p| p.name == name))
    }

    pub fn list_pcs(&self) -> Result<Vec<PcRow>> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT name, mac, ip, gateway, dns, mode, disk, default_action, token, last_seen, last_addr
             FROM pcs WHERE registered = 1 ORDER BY name",
        )?;
        let rows = st
            .query_map([], |r| {
                let seen: i64 = r.get(9)?;
                Ok(PcRow {
                    name: r.get(0)?,
                    mac: r.get(1)?,
                    ip: r.get(2)?,
                    gateway: r.get(3)?,
                    dns: r.get(4)?,
                    mode: r.get(5)?,
                    disk: r.get(6)?,
                    default_action: r.get(7)?,
                    token: r.get(8)?,
                    last_seen: (seen > 0).then_some(seen),
                    last_addr: r.get(10)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Unregisters a PC. Refuses while it has backups, unless
    /// `with_backups` (then they go too; their chunks at the next gc).
    pub fn remove_pc(&self, name: &str, with_backups: bool) -> Result<u64> {
        if self.pc(name)?.is_none() {
            bail!("no registered PC {name}");
        }
        let backups = self.list_backups(Some(name), true)?;
        if !backups.is_empty() && !with_backups {
            bail!("PC {name} has {} backups; remove them first or pass --with-backups", backups.len());
        }
        for b in &backups {
            self.delete_backup(b.id)?;
        }
        self.db().execute("DELETE FROM grants WHERE pc = ?1", [name])?;
        self.db().execute("DELETE FROM pcs WHERE name = ?1", [name])?;
        Ok(backups.len() as u64)
    }

    pub fn seen_pc(&self, pc: &str, mac: &str, addr: &str) -> Result<()> {
        let t = now();
        self.db().execute(
            "INSERT INTO pcs (name, first_seen, last_seen, last_mac, last_addr) VALUES (?1, ?2, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET last_seen = ?2,
               last_mac = CASE WHEN ?3 = '' THEN last_mac ELSE ?3 END,
               last_addr = CASE WHEN ?4 = '' THEN last_addr ELSE ?4 END",
            params![pc, t, mac, addr],
        )?;
        Ok(())
    }

    pub fn create_backup(&self, pc: &str, name: &str, disk_bytes: u64, chunk_size: u32) -> Result<i64> {
        self.create_backup_locked(pc, name, disk_bytes, chunk_size, None)
    }

    /// A new upload; with `lock`, restoring it will need its password.
    pub fn create_backup_locked(
        &self,
        pc: &str,
        name: &str,
        disk_bytes: u64,
        chunk_size: u32,
        lock: Option<&BackupLock>,
    ) -> Result<i64> {
        // Also the CLI's and import's way in; `disk_bytes` then fits the i64 column.
        image::check_new_backup(disk_bytes, chunk_size).map_err(|e| anyhow!(e))?;
        if let Some(l) = lock {
            l.params.check().map_err(|e| anyhow!("lock: {e}"))?;
        }
        let db = self.db();
        db.execute(
            "INSERT INTO backups (pc, name, state, created, disk_bytes, chunk_size, kdf_m, kdf_t, kdf_p, salt, lock_key)
             VALUES (?1, ?2, 'uploading', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                pc,
                name,
                now(),
                disk_bytes as i64,
                chunk_size,
                lock.map(|l| l.params.m_kib),
                lock.map(|l| l.params.t_cost),
                lock.map(|l| l.params.p),
                lock.map(|l| l.salt.to_vec()),
                lock.map(|l| l.key.to_vec())
            ],
        )?;
        Ok(db.last_insert_rowid())
    }

    /// The lock of a backup (None: no password, or no such backup).
    pub fn backup_lock(&self, id: i64) -> Result<Option<BackupLock>> {
        type Cols = (Option<u32>, Option<u32>, Option<u32>, Option<Vec<u8>>, Option<Vec<u8>>);
        let cols: Option<Cols> = self
            .db()
            .query_row("SELECT kdf_m, kdf_t, kdf_p, salt, lock_key FROM backups WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let Some((Some(m_kib), Some(t_cost), Some(p), Some(salt), Some(key))) = cols else { return Ok(None) };
        let salt = salt.try_into().map_err(|_| anyhow!("backup {id}: stored salt is not {LOCK_SALT_BYTES} bytes"))?;
        let key = key.try_into().map_err(|_| anyhow!("backup {id}: stored key is not 32 bytes"))?;
        Ok(Some(BackupLock { params: LockParams { m_kib, t_cost, p }, salt, key }))
    }

    fn unlocks(&self) -> std::sync::MutexGuard<'_, Unlocks> {
        self.unlocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wrong passwords so far for (pc, backup), and when the last was.
    pub fn unlock_failures(&self, pc: &str, backup: i64) -> Result<(i64, i64)> {
        Ok(self
            .db()
            .query_row(
                "SELECT count, last FROM unlock_failures WHERE pc = ?1 AND backup = ?2",
                params![pc, backup],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, 0)))
    }

    /// Refuses while (pc, backup) must wait after too many wrong passwords.
    fn check_wait(&self, pc: &str, backup: i64, now: i64) -> std::result::Result<(), UnlockError> {
        let (count, last) = self.unlock_failures(pc, backup).map_err(internal_unlock)?;
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
    pub fn challenge(&self, pc: &str, backup: i64, now: i64) -> std::result::Result<Option<Challenge>, UnlockError> {
        let Some(lock) = self.backup_lock(backup).map_err(internal_unlock)? else {
            // Only then: whether there is such a backup at all.
            if self.backup(backup).map_err(internal_unlock)?.is_none() {
                return Err(UnlockError { kind: UnlockRefused::NoBackup, message: format!("no backup {backup}") });
            }
            return Ok(None);
        };
        self.check_wait(pc, backup, now)?;
        let nonce = random_32().map_err(internal_unlock)?;
        let mut u = self.unlocks();
        u.challenges.retain(|_, (_, expires)| *expires > now);
        u.challenges.insert((pc.to_owned(), backup), (nonce, now + CHALLENGE_SECONDS));
        Ok(Some(Challenge { params: lock.params, salt: lock.salt, nonce }))
    }

    /// Checks `proof` against the open challenge of (pc, backup), counting
    /// a wrong one towards the wait. The challenge is used up either way.
    pub fn verify_unlock(
        &self,
        pc: &str,
        backup: i64,
        nonce: &[u8; 32],
        proof: &[u8; 32],
        now: i64,
    ) -> std::result::Result<(), UnlockError> {
        let open = self.unlocks().challenges.remove(&(pc.to_owned(), backup));
        self.check_wait(pc, backup, now)?;
        let Some(lock) = self.backup_lock(backup).map_err(internal_unlock)? else {
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
            self.db()
                .execute("DELETE FROM unlock_failures WHERE pc = ?1 AND backup = ?2", params![pc, backup])
                .map_err(internal_unlock)?;
            return Ok(());
        }
        let count: i64 = self
            .db()
            .query_row(
                "INSERT INTO unlock_failures (pc, backup, count, last) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT(pc, backup) DO UPDATE SET count = count + 1, last = ?3 RETURNING count",
                params![pc, backup, now],
                |r| r.get(0),
            )
            .map_err(internal_unlock)?;
        let left = UNLOCK_FREE_TRIES - count;
        let message = match left {
            1 => format!("wrong password for backup {backup} (1 try left before a wait)"),
            l if l > 1 => format!("wrong password for backup {backup} ({l} tries left before a wait)"),
            _ => format!("wrong password for backup {backup} (try again in {} s)", unlock_wait(count)),
        };
        Err(UnlockError { kind: UnlockRefused::Wrong, message })
    }

    /// [`Vault::verify_unlock`], then a ticket for (pc, backup).
    pub fn unlock(
        &self,
        pc: &str,
        backup: i64,
        nonce: &[u8; 32],
        proof: &[u8; 32],
        now: i64,
    ) -> std::result::Result<String, UnlockError> {
        self.verify_unlock(pc, backup, nonce, proof, now)?;
        self.issue_ticket(pc, backup, now).map_err(internal_unlock)
    }

    /// A ticket letting `pc` read locked backup `backup` for a day.
    pub fn issue_ticket(&self, pc: &str, backup: i64, now: i64) -> Result<String> {
        let ticket = wire::to_hex(&random_32()?);
        let mut u = self.unlocks();
        u.tickets.retain(|_, (_, _, expires)| *expires > now);
        u.tickets.insert(ticket.clone(), (pc.to_owned(), backup, now + TICKET_SECONDS));
        Ok(ticket)
    }

    /// Whether `ticket` lets `pc` read `backup` now.
    pub fn ticket_ok(&self, pc: &str, backup: i64, ticket: &str, now: i64) -> bool {
        let u = self.unlocks();
        // Looked up by the ticket itself (a keyed hash map, not a
        // constant-time compare): tickets are 256 random bits, so nothing
        // timing might tell helps anyone guess one.
        matches!(u.tickets.get(ticket), Some((p, b, expires)) if p == pc && *b == backup && now < *expires)
    }

    /// Stored blob length, if the chunk is in the store.
    pub fn blob_len(&self, id: &ChunkId) -> Option<u32> {
        fs::metadata(self.chunk_path(id)).ok().map(|m| m.len() as u32)
    }

    /// Verifies and stores a blob, trusted (the admin, an import): as
    /// [`Vault::put_chunk_for`] without a PC.
    pub fn put_chunk(&self, id: &ChunkId, blob: &[u8], backup: Option<i64>) -> Result<bool> {
        self.put_chunk_for(None, id, blob, backup).map_err(|e| match e {
            PutError::Storage(e) => e,
            other => anyhow!("{other}"),
        })
    }

    /// Verifies and stores a blob sent by `pc` (None: the admin) into
    /// upload `backup`. Ok(true) = stored now, Ok(false) = the store had
    /// it (it is then marked in use, and counts as sent by this upload).
    /// A blob the PC has no right to name is verified even when stored, so
    /// the PC proves it holds the data. Nothing is written on an error.
    pub fn put_chunk_for(
        &self,
        pc: Option<&str>,
        id: &ChunkId,
        blob: &[u8],
        backup: Option<i64>,
    ) -> std::result::Result<bool, PutError> {
        let storage = PutError::Storage;
        if let Some(b) = backup {
            let row = self.backup(b).map_err(storage)?.ok_or_else(|| PutError::Closed(format!("no backup {b}")))?;
            if row.state != "uploading" {
                return Err(PutError::Closed(format!("backup {b} is {}, not being uploaded", row.state)));
            }
        }
        let trusted = match (pc, self.blob_len(id)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(p), Some(_)) => {
                let rights = self.rights(p, backup).map_err(storage)?;
                let db = self.db();
                rights.may_name(&db, id).map_err(storage)?
            }
        };
        if !trusted {
            let plain = image::decode_blob(blob, image::MAX_CHUNK_SIZE as usize)
                .map_err(|e| PutError::Bad(format!("chunk {}: {e}", image::hex(id))))?;
            let got = image::chunk_id(&plain);
            if got != *id {
                return Err(PutError::Bad(format!("chunk {}: content hashes to {}", image::hex(id), image::hex(&got))));
            }
        }
        let _lock = self.chunk_lock(false).map_err(storage)?;
        let stored_now = match self.touch_chunk(id).map_err(storage)? {
            Some(_) => false,
            None => {
                if let Some(p) = pc {
                    self.check_quota(p, blob.len() as u64).map_err(PutError::Quota)?;
                }
                self.durable_write(&self.chunk_path(id), blob).map_err(storage)?;
                true
            }
        };
        if let Some(b) = backup {
            // One transaction for both rows, not synced on its own (WAL,
            // synchronous=NORMAL for it): the chunk file is already durable,
            // and losing these rows to a power cut can only make the
            // upload fail at finish (its rights are checked there), never
            // complete. Syncing here held the database lock through an
            // fsync per chunk and serialised every upload behind it.
            let db = self.db();
            let _relaxed = RelaxedSync::new(&db).map_err(|e| storage(e.into()))?;
            let tx = db.unchecked_transaction().map_err(|e| storage(e.into()))?;
            self.note_uploaded(&tx, b, id).map_err(storage)?;
            let (bytes, chunks) = if stored_now { (blob.len() as i64, 1) } else { (0, 0) };
            tx.execute(
                "UPDATE backups SET received_bytes = received_bytes + ?2, received_chunks = received_chunks + ?3,
                 last_active = ?4 WHERE id = ?1",
                params![b, bytes, chunks, now()],
            )
            .map_err(|e| storage(e.into()))?;
            tx.commit().map_err(|e| storage(e.into()))?;
            self.active_written(b, now());
        }
        Ok(stored_now)
    }

    /// For each id: the stored blob's length if the store has the chunk and
    /// `pc` (None: the admin) may name it in upload `backup`, else 0 (send
    /// it). Chunks answered as stored are marked in use (see `gc`).
    pub fn missing(&self, backup: i64, pc: Option<&str>, ids: &[ChunkId]) -> Result<Vec<u32>> {
        let rights = pc.map(|p| self.rights(p, Some(backup))).transpose()?;
        let _lock = self.chunk_lock(false)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let allowed = match &rights {
                None => true,
                Some(r) => {
                    let db = self.db();
                    r.may_name(&db, id)?
                }
            };
            out.push(if allowed { self.touch_chunk(id)?.unwrap_or(0) } else { 0 });
        }
        self.note_active(backup)?;
        Ok(out)
    }

    /// Records activity on an upload for gc's idle check, at most every
    /// [`ACTIVE_EVERY`] seconds per upload (each write is an fsync; a
    /// deduplicated backup asks `missing` hundreds of times a second).
    fn note_active(&self, backup: i64) -> Result<()> {
        let t = now();
        let due =
            self.active.lock().map(|m| m.get(&backup).is_none_or(|last| t - last >= ACTIVE_EVERY)).unwrap_or(true);
        if due {
            self.db().execute("UPDATE backups SET last_active = ?2 WHERE id = ?1", params![backup, t])?;
            self.active_written(backup, t);
        }
        Ok(())
    }

    fn active_written(&self, backup: i64, t: i64) {
        if let Ok(mut m) = self.active.lock() {
            if m.len() > 4096 {
                m.retain(|_, last| t - *last < ACTIVE_EVERY);
            }
            m.insert(backup, t);
        }
    }

    pub fn backup(&self, id: i64) -> Result<Option<BackupRow>> {
        Ok(self
            .db()
            .query_row(&format!("SELECT {BACKUP_COLS} FROM backups WHERE id = ?1"), [id], backup_row)
            .optional()?)
    }

    /// Completes a backup (see the module's promises), trusted (the
    /// admin, an import): any stored chunk may be named.
    pub fn finish_backup(&self, id: i64, pc: &str, bytes: &[u8]) -> std::result::Result<BackupRow, FinishError> {
        self.finish_backup_for(id, pc, bytes, false)
    }

    /// Completes a backup; with `check_rights`, every chunk its manifest
    /// names must be one PC `pc` sent in this upload or may read now
    /// (see `rights`).
    pub fn finish_backup_for(
        &self,
        id: i64,
        pc: &str,
        bytes: &[u8],
        check_rights: bool,
    ) -> std::result::Result<BackupRow, FinishError> {
        let bad = |message: String| FinishError { conflict: false, forbidden: false, message };
        let row = self.backup(id).map_err(|e| bad(e.to_string()))?.ok_or_else(|| bad(format!("no backup {id}")))?;
        if row.pc != pc {
            return Err(bad(format!("backup {id} is not {pc}'s")));
        }
        let m = Manifest::decode(bytes).map_err(|e| bad(format!("bad manifest: {e}")))?;
        // A retried finish whose first answer was lost (the server died
        // after completing it): the same manifest again is a success.
        if row.state == "complete" && row.digest == image::hex(&m.digest()) {
            return Ok(row);
        }
        if row.state != "uploading" {
            return Err(bad(format!("backup {id} is {}", row.state)));
        }
        if m.disk_bytes != row.disk_bytes || m.chunk_size != row.chunk_size {
            return Err(bad("the manifest does not match the backup opened".into()));
        }
        let rights = if check_rights { Some(self.rights(pc, Some(id)).map_err(|e| bad(e.to_string()))?) } else { None };
        {
            // Each chunk named is marked in use under the lock, so a gc
            // running now either removed it already (refused below) or keeps it.
            let _lock = self.chunk_lock(false).map_err(|e| bad(e.to_string()))?;
            for (i, c) in m.chunks.iter().enumerate() {
                let image::Chunk::Data { id: cid, .. } = c else { continue };
                let (off, _) = m.chunk_range(i);
                if let Some(r) = &rights {
                    let db = self.db();
                    if !r.may_name(&db, cid).map_err(|e| bad(e.to_string()))? {
                        return Err(FinishError {
                            conflict: false,
                            forbidden: true,
                            message: format!(
                                "chunk {i} (offset {off}) was not sent by this backup and is in no backup {pc} may read"
                            ),
                        });
                    }
                }
                if self.touch_chunk(cid).map_err(|e| bad(e.to_string()))?.is_none() {
                    return Err(FinishError {
                        conflict: true,
                        forbidden: false,
                        message: format!("chunk {i} (offset {off}) is not in the store"),
                    });
                }
            }
            self.durable_write(&self.manifest_path(id), bytes).map_err(|e| bad(format!("{e:#}")))?;
        }
        {
            let db = self.db();
            db.execute(
                "UPDATE backups SET state = 'complete', finished = ?2, chunks = ?3, zero_chunks = ?4, blob_bytes = ?5,
                 digest = ?6, model = ?7, last_active = ?2 WHERE id = ?1",
                params![
                    id,
                    now(),
                    m.chunks.len() as i64,
                    m.zero_chunks() as i64,
                    m.blob_bytes() as i64,
                    image::hex(&m.digest()),
                    m.model
                ],
            )
            .map_err(|e| bad(e.to_string()))?;
            db.execute("DELETE FROM upload_chunks WHERE backup = ?1", [id]).map_err(|e| bad(e.to_string()))?;
        }
        self.backup(id).map_err(|e| bad(e.to_string()))?.ok_or_else(|| bad(format!("backup {id} vanished")))
    }

    pub fn fail_backup(&self, id: i64, reason: &str) -> Result<()> {
        let n = self.db().execute(
            "UPDATE backups SET state = 'failed', finished = ?2, reason = ?3 WHERE id = ?1 AND state = 'uploading'",
            params![id, now(), reason],
        )?;
        if n == 0 {
            bail!("backup {id} is not being uploaded");
        }
        self.db().execute("DELETE FROM upload_chunks WHERE backup = ?1", [id])?;
        Ok(())
    }

    pub fn list_backups(&self, pc: Option<&str>, all: bool) -> Result<Vec<BackupRow>> {
        let db = self.db();
        let mut st = db.prepare(&format!(
            "SELECT {BACKUP_COLS} FROM backups WHERE (?1 IS NULL OR pc = ?1) AND (?2 OR state = 'complete') ORDER BY id"
        ))?;
        let rows = st.query_map(params![pc, all], backup_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn latest(&self, pc: &str, name: Option<&str>) -> Result<Option<i64>> {
        Ok(self
            .db()
            .query_row(
                "SELECT id FROM backups WHERE pc = ?1 AND state = 'complete' AND (?2 IS NULL OR name = ?2)
                 ORDER BY id DESC LIMIT 1",
                params![pc, name],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The manifest of a complete backup.
    pub fn manifest(&self, id: i64) -> Result<Vec<u8>> {
        match self.backup(id)? {
            Some(r) if r.state == "complete" => {
                let p = self.manifest_path(id);
                fs::read(&p).with_context(|| format!("reading {}", p.display()))
            }
            Some(r) => bail!("backup {id} is {}", r.state),
            None => bail!("no backup {id}"),
        }
    }

    pub fn chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let p = self.chunk_path(id);
        fs::read(&p).with_context(|| format!("chunk {} is not in the store", image::hex(id)))
    }

    pub fn delete_backup(&self, id: i64) -> Result<()> {
        if self.backup(id)?.is_none() {
            bail!("no backup {id}");
        }
        // The row goes first: a gc reading manifests meanwhile then sees
        // the backup gone, not a complete backup without its manifest.
        self.db().execute("DELETE FROM grants WHERE backup = ?1", [id])?;
        self.db().execute("DELETE FROM unlock_failures WHERE backup = ?1", [id])?;
        self.db().execute("DELETE FROM backups WHERE id = ?1", [id])?;
        self.db().execute("DELETE FROM upload_chunks WHERE backup = ?1", [id])?;
        self.manifest_cache().forget(id);
        let _ = fs::remove_file(self.manifest_path(id));
        Ok(())
    }

    /// Re-reads every stored chunk of a backup: decodes, hashes, compares.
    pub fn verify_backup(&self, id: i64) -> Result<u64> {
        let m = Manifest::decode(&self.manifest(id)?).map_err(|e| anyhow!("manifest of backup {id}: {e}"))?;
        let mut checked = 0;
        for (i, c) in m.chunks.iter().enumerate() {
            if let image::Chunk::Data { id: cid, .. } = c {
                let (off, len) = m.chunk_range(i);
                let blob = self.chunk(cid).map_err(|e| anyhow!("chunk {i} at offset {off}: {e}"))?;
                image::decode_verified(&blob, len, cid).map_err(|e| anyhow!("chunk {i} at offset {off}: {e}"))?;
                checked += 1;
            }
        }
        Ok(checked)
    }

    /// Writes the single-file form of a complete backup.
    pub fn export(&self, id: i64, out: impl Write) -> Result<()> {
        let m = Manifest::decode(&self.manifest(id)?).map_err(|e| anyhow!("manifest of backup {id}: {e}"))?;
        let mut w = ImageWriter::new(out, m.chunk_size)?;
        for cid in m.data_ids() {
            w.put(&cid, &self.chunk(&cid)?)?;
        }
        w.finish(&m)?;
        Ok(())
    }

    /// Reads the single-file form (verifying it as it streams) into a new
    /// complete backup of `pc` (default: the manifest's PC). The import is
    /// an open upload while it runs, so gc keeps what it has stored so far;
    /// a bad file fails it, and its chunks go at a later gc.
    pub fn import(&self, input: impl Read, pc: Option<&str>) -> Result<i64> {
        let mut r = ImageReader::new(input).map_err(|e| anyhow!("{e}"))?;
        let upload = {
            let db = self.db();
            db.execute(
                "INSERT INTO backups (pc, name, state, created, last_active, disk_bytes, chunk_size)
                 VALUES (?1, '(import)', 'uploading', ?2, ?2, 0, ?3)",
                params![pc.unwrap_or("(import)"), now(), r.chunk_size()],
            )?;
            db.last_insert_rowid()
        };
        let imported = self.import_into(upload, &mut r, pc);
        if let Err(e) = &imported {
            let reason: String = format!("import failed: {e:#}").chars().take(500).collect();
            let _ = self.fail_backup(upload, &reason);
        }
        imported
    }

    fn import_into<R: Read>(&self, upload: i64, r: &mut ImageReader<R>, pc: Option<&str>) -> Result<i64> {
        loop {
            match r.next_record().map_err(|e| anyhow!("{e}"))? {
                Some(Record::Chunk { id, blob }) => {
                    self.put_chunk(&id, &blob, Some(upload))?;
                }
                Some(Record::Manifest(m)) => {
                    // Drain the trailer check before anything is listed.
                    while r.next_record().map_err(|e| anyhow!("{e}"))?.is_some() {}
                    let pc = pc.unwrap_or(&m.pc).to_owned();
                    self.db().execute(
                        "UPDATE backups SET pc = ?2, name = ?3, disk_bytes = ?4, chunk_size = ?5 WHERE id = ?1",
                        params![upload, pc, m.name, m.disk_bytes as i64, m.chunk_size],
                    )?;
                    // The manifest keeps its original PC; the row says whose copy it is now.
                    self.finish_backup(upload, &pc, &m.encode()).map_err(|e| anyhow!("{}", e.message))?;
                    return Ok(upload);
                }
                None => bail!("the image file ended without a manifest"),
            }
        }
    }

    pub fn add_job(&self, pc: &str, action: &str, disk: &str, name: &str, backup: Option<i64>) -> Result<i64> {
        self.add_job_with(pc, action, disk, name, backup, None, false)
    }

    /// A job with a restore password: `lock` for a backup job (the PC
    /// locks the backup with it), `unlocked` for a restore job whose proof
    /// the caller checked ([`Vault::verify_unlock`]) for this PC. A restore
    /// job of a locked backup without it is refused.
    #[allow(clippy::too_many_arguments)]
    pub fn add_job_with(
        &self,
        pc: &str,
        action: &str,
        disk: &str,
        name: &str,
        backup: Option<i64>,
        lock: Option<&BackupLock>,
        unlocked: bool,
    ) -> Result<i64> {
        if !matches!(action, "backup" | "restore") {
            bail!("action must be backup or restore, not {action:?}");
        }
        // The PC's own rules, so what it would refuse (or read as a second
        // setting) is refused here, naming the field.
        bootvault_common::job::check_fields(disk, name, backup).map_err(|e| anyhow!(e))?;
        if self.pc(pc)?.is_none() {
            bail!("no registered PC {pc}");
        }
        if lock.is_some() && action != "backup" {
            bail!("a lock is for backup jobs; a restore job proves the password instead");
        }
        if unlocked && (action != "restore" || backup.is_none()) {
            bail!("only a restore job of a given backup can be unlocked");
        }
        if let Some(b) = backup {
            let row = self.backup(b)?.ok_or_else(|| anyhow!("no backup {b}"))?;
            if action == "restore" && row.locked && !unlocked {
                bail!("backup {b} is protected by a password: give the job --password-file FILE");
            }
            // The admin asking this PC to restore another PC's backup is the grant.
            if action == "restore" && row.pc != pc {
                self.grant(b, pc)?;
            }
        } else if action == "restore" {
            if let Some(b) = self.latest(pc, (!name.is_empty()).then_some(name))? {
                if self.backup_lock(b)?.is_some() {
                    bail!(
                        "the latest backup of {pc} ({b}) is protected by a password: give the job --backup {b} \
                         --password-file FILE"
                    );
                }
            }
        }
        let db = self.db();
        db.execute(
            "INSERT INTO jobs (pc, action, disk, name, backup, state, created, lock, unlocked)
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?8)",
            params![pc, action, disk, name, backup, now(), lock.map(BackupLock::to_text), unlocked],
        )?;
        Ok(db.last_insert_rowid())
    }

    /// The oldest queued job of `pc`, now marked running.
    pub fn next_job(&self, pc: &str) -> Result<Option<JobRow>> {
        let id: Option<i64> = self
            .db()
            .query_row("SELECT id FROM jobs WHERE pc = ?1 AND state = 'queued' ORDER BY id LIMIT 1", [pc], |r| r.get(0))
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        let db = self.db();
        db.execute("UPDATE jobs SET state = 'running', started = ?2 WHERE id = ?1", params![id, now()])?;
        let job = db.query_row(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"), [id], job_row)?;
        // The lock goes to the PC once, with the job; the backup row keeps it.
        db.execute("UPDATE jobs SET lock = NULL WHERE id = ?1", [id])?;
        Ok(Some(job))
    }

    pub fn list_jobs(&self, pc: Option<&str>) -> Result<Vec<JobRow>> {
        let db = self.db();
        let mut st = db.prepare(&format!("SELECT {JOB_COLS} FROM jobs WHERE (?1 IS NULL OR pc = ?1) ORDER BY id"))?;
        let rows = st.query_map(params![pc], job_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record_result(
        &self,
        pc: &str,
        job: Option<i64>,
        action: &str,
        disk: &str,
        backup: Option<i64>,
        ok: bool,
        message: &str,
        bytes: u64,
        sent: u64,
        seconds: f64,
    ) -> Result<()> {
        let db = self.db();
        db.execute(
            "INSERT INTO results (pc, job, action, disk, backup, ok, message, bytes, sent, seconds, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![pc, job, action, disk, backup, ok, message, bytes as i64, sent as i64, seconds, now()],
        )?;
        if let Some(j) = job {
            db.execute(
                "UPDATE jobs SET state = ?2, finished = ?3 WHERE id = ?1 AND pc = ?4",
                params![j, if ok { "done" } else { "failed" }, now(), pc],
            )?;
        }
        Ok(())
    }

    pub fn list_results(&self, pc: Option<&str>) -> Result<Vec<ResultRow>> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT id, pc, job, action, disk, backup, ok, message, bytes, sent, seconds, at FROM results
             WHERE (?1 IS NULL OR pc = ?1) ORDER BY id",
        )?;
        let rows = st
            .query_map(params![pc], |r| {
                Ok(ResultRow {
                    id: r.get(0)?,
                    pc: r.get(1)?,
                    job: r.get(2)?,
                    action: r.get(3)?,
                    disk: r.get(4)?,
                    backup: r.get(5)?,
                    ok: r.get(6)?,
                    message: r.get(7)?,
                    bytes: r.get::<_, i64>(8)? as u64,
                    sent: r.get::<_, i64>(9)? as u64,
                    seconds: r.get(10)?,
                    at: r.get(11)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

/// `PRAGMA synchronous = NORMAL` on a connection until dropped, then FULL
/// again (the connection's setting for everything else).
struct RelaxedSync<'a>(&'a rusqlite::Connection);

impl<'a> RelaxedSync<'a> {
    fn new(db: &'a rusqlite::Connection) -> rusqlite::Result<RelaxedSync<'a>> {
        db.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(RelaxedSync(db))
    }
}

impl Drop for RelaxedSync<'_> {
    fn drop(&mut self) {
        let _ = self.0.pragma_update(None, "synchronous", "FULL");
    }
}
