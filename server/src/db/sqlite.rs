//! [`Database`] on SQLite: `DATA/bootvault.db` in WAL mode with
//! `synchronous=FULL`, one connection behind a mutex (SQLite serialises
//! writers anyway; readers are short). The schema and its numbered steps
//! ([`MIGRATIONS`]) live here and nowhere else.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use anyhow::{anyhow, bail, Context, Result};
use bootvault_common::image::ChunkId;
use bootvault_common::wire::{Kdf, LockParams, LOCK_SALT_BYTES};
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    BackupRow, Completion, Database, JobRow, NewBackup, NewJob, NewResult, OpenUpload, PcRow, Pending, PendingRow,
    PendingRules, ResultRow,
};
use crate::unlock::BackupLock;

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
    // Schema 6: how a lock's key comes from its password (`wire::Kdf`;
    // NULL = argon2id, the locks made before).
    // The wrap key a job carries to its PC, sealed with the site's data
    // key (`JobMessage::wrap`).
    (6, "ALTER TABLE backups ADD COLUMN kdf TEXT; ALTER TABLE jobs ADD COLUMN wrap TEXT;"),
    // Schema 7: the web console's admin accounts (Argon2id PHC strings),
    // their sessions (by the hash of the cookie's secret, with the form
    // token), and failed sign-ins per account and per peer.
    (
        7,
        "CREATE TABLE IF NOT EXISTS admins (name TEXT PRIMARY KEY, hash TEXT NOT NULL, created INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, admin TEXT NOT NULL, csrf TEXT NOT NULL,
             created INTEGER NOT NULL, last_used INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS signin_failures (key TEXT NOT NULL, at INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS signin_failures_key ON signin_failures(key, at);",
    ),
    // Schema 8: restore passwords' open challenges and tickets (by the
    // hash of the ticket), kept here rather than in one server's memory.
    (
        8,
        "CREATE TABLE IF NOT EXISTS unlock_challenges (pc TEXT NOT NULL, backup INTEGER NOT NULL,
             nonce BLOB NOT NULL, expires INTEGER NOT NULL, PRIMARY KEY (pc, backup));
         CREATE TABLE IF NOT EXISTS unlock_tickets (hash TEXT PRIMARY KEY, pc TEXT NOT NULL,
             backup INTEGER NOT NULL, expires INTEGER NOT NULL);",
    ),
];

/// Brings an older database up to the current schema: each step of
/// [`MIGRATIONS`] not yet applied runs once, in one transaction with the
/// version it reaches.
fn migrate(db: &Connection) -> Result<()> {
    let version: i64 =
        db.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get::<_, String>(0))?.parse()?;
    let latest = MIGRATIONS.last().map_or(1, |(v, _)| *v);
    if version > latest {
        bail!(
            "the database's schema version {version} is newer than this bootvault knows ({latest}): upgrade bootvault"
        );
    }
    for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > version) {
        db.execute_batch(&format!(
            "BEGIN;\n{sql}\nUPDATE meta SET value = '{to}' WHERE key = 'schema_version';\nCOMMIT;"
        ))?;
    }
    Ok(())
}

/// Whether one error of a chain is SQLite's "database or disk is full".
pub(super) fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|code| code == rusqlite::ErrorCode::DiskFull)
}

const BACKUP_COLS: &str = "id, pc, name, state, created, finished, disk_bytes, chunk_size, chunks, zero_chunks, \
    blob_bytes, received_bytes, received_chunks, digest, reason, lock_key IS NOT NULL, model";

const JOB_COLS: &str = "id, pc, action, disk, name, backup, state, created, started, finished, lock, unlocked, wrap";

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
        wrap: r.get(12)?,
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

fn pc_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PcRow> {
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
}

/// `PRAGMA synchronous = NORMAL` on a connection until dropped, then FULL
/// again (the connection's setting for everything else).
struct RelaxedSync<'a>(&'a Connection);

impl<'a> RelaxedSync<'a> {
    fn new(db: &'a Connection) -> rusqlite::Result<RelaxedSync<'a>> {
        db.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(RelaxedSync(db))
    }
}

impl Drop for RelaxedSync<'_> {
    fn drop(&mut self) {
        let _ = self.0.pragma_update(None, "synchronous", "FULL");
    }
}

/// Whether `path` is a SQLite database with backups in it (read only; a
/// missing or foreign file holds none).
pub fn holds_backups(path: &Path) -> bool {
    let Ok(conn) = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return false;
    };
    conn.query_row("SELECT count(*) FROM backups", [], |r| r.get::<_, i64>(0)).is_ok_and(|n| n > 0)
}

pub struct SqliteDb {
    conn: Mutex<Connection>,
}

impl SqliteDb {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteDb> {
        let db = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(SCHEMA).with_context(|| format!("creating the schema in {}", path.display()))?;
        migrate(&db).with_context(|| format!("migrating the schema of {}", path.display()))?;
        Ok(SqliteDb { conn: Mutex::new(db) })
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Database for SqliteDb {
    fn pc_token(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .db()
            .query_row("SELECT token FROM pcs WHERE name = ?1 AND registered = 1", [name], |r| r.get(0))
            .optional()?)
    }

    fn add_pc(&self, pc: &PcRow, token: &str, now: i64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let taken: Option<String> = tx
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
        tx.execute(
            "INSERT INTO pcs (name, first_seen, last_seen, registered, mac, ip, gateway, dns, mode, disk, default_action, token)
             VALUES (?1, ?2, 0, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(name) DO UPDATE SET registered = 1, mac = ?3, ip = ?4, gateway = ?5, dns = ?6, mode = ?7,
               disk = ?8, default_action = ?9, token = ?10",
            params![pc.name, now, pc.mac, pc.ip, pc.gateway, pc.dns, pc.mode, pc.disk, pc.default_action, token],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn edit_pc(&self, pc: &PcRow) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let clash: Option<String> = tx
            .query_row(
                "SELECT name FROM pcs WHERE registered = 1 AND mac = ?2 AND ?2 != '' AND name != ?1",
                params![pc.name, pc.mac],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = clash {
            bail!("MAC {} is already registered to PC {other}", pc.mac);
        }
        let n = tx.execute(
            "UPDATE pcs SET mac = ?2, ip = ?3, gateway = ?4, dns = ?5, mode = ?6, disk = ?7, default_action = ?8
             WHERE name = ?1 AND registered = 1",
            params![pc.name, pc.mac, pc.ip, pc.gateway, pc.dns, pc.mode, pc.disk, pc.default_action],
        )?;
        if n == 0 {
            bail!("no registered PC {}", pc.name);
        }
        tx.commit()?;
        Ok(())
    }

    fn list_pcs(&self) -> Result<Vec<PcRow>> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT name, mac, ip, gateway, dns, mode, disk, default_action, token, last_seen, last_addr
             FROM pcs WHERE registered = 1 ORDER BY name",
        )?;
        let rows = st.query_map([], pc_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn remove_pc(&self, name: &str) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM grants WHERE pc = ?1", [name])?;
        tx.execute("DELETE FROM pcs WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    fn seen_pc(&self, pc: &str, mac: &str, addr: &str, now: i64) -> Result<()> {
        self.db().execute(
            "INSERT INTO pcs (name, first_seen, last_seen, last_mac, last_addr) VALUES (?1, ?2, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET last_seen = ?2,
               last_mac = CASE WHEN ?3 = '' THEN last_mac ELSE ?3 END,
               last_addr = CASE WHEN ?4 = '' THEN last_addr ELSE ?4 END",
            params![pc, now, mac, addr],
        )?;
        Ok(())
    }

    fn pc_quota(&self, pc: &str) -> Result<Option<u64>> {
        let q: Option<Option<i64>> =
            self.db().query_row("SELECT quota FROM pcs WHERE name = ?1", [pc], |r| r.get(0)).optional()?;
        Ok(q.flatten().map(|q| q.max(0) as u64))
    }

    fn set_pc_quota(&self, pc: &str, quota: Option<u64>) -> Result<bool> {
        let q = quota.map(|q| i64::try_from(q).unwrap_or(i64::MAX));
        let n = self.db().execute("UPDATE pcs SET quota = ?2 WHERE name = ?1 AND registered = 1", params![pc, q])?;
        Ok(n > 0)
    }

    fn pc_usage(&self, pc: &str, failed_since: i64) -> Result<u64> {
        let used: i64 = self.db().query_row(
            "SELECT COALESCE(SUM(received_bytes), 0) FROM backups WHERE pc = ?1
             AND (state != 'failed' OR MAX(last_active, created) >= ?2)",
            params![pc, failed_since],
            |r| r.get(0),
        )?;
        Ok(used.max(0) as u64)
    }

    fn note_pending(&self, mac: &str, addr: &str, now: i64, rules: PendingRules) -> Result<Pending> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM pending WHERE last_seen < ?1", [rules.expire_before])?;
        let seen = tx.execute(
            "UPDATE pending SET last_seen = ?2, addr = ?3, count = count + 1 WHERE mac = ?1",
            params![mac, now, addr],
        )?;
        let listed: i64 = tx.query_row("SELECT COUNT(*) FROM pending", [], |r| r.get(0))?;
        let outcome = if seen > 0 {
            Pending::Seen
        } else if !rules.admit_new {
            Pending::NotAdmitted
        } else if usize::try_from(listed).unwrap_or(usize::MAX) >= rules.max {
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

    fn list_pending(&self, since: i64) -> Result<Vec<PendingRow>> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT mac, first_seen, last_seen, addr, count FROM pending WHERE last_seen >= ?1 ORDER BY first_seen",
        )?;
        let rows = st
            .query_map([since], |r| {
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

    fn forget_pending(&self, mac: &str) -> Result<bool> {
        Ok(self.db().execute("DELETE FROM pending WHERE mac = ?1", [mac])? > 0)
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.db().query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(v) => self.db().execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                params![key, v],
            )?,
            None => self.db().execute("DELETE FROM settings WHERE key = ?1", [key])?,
        };
        Ok(())
    }

    fn last_gc(&self) -> Result<i64> {
        Ok(self
            .db()
            .query_row("SELECT value FROM meta WHERE key = 'last_gc'", [], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    fn set_last_gc(&self, start: i64) -> Result<()> {
        self.db().execute(
            "INSERT INTO meta (key, value) VALUES ('last_gc', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1",
            [start.to_string()],
        )?;
        Ok(())
    }

    fn grant(&self, backup: i64, pc: &str, now: i64) -> Result<()> {
        self.db().execute(
            "INSERT OR IGNORE INTO grants (backup, pc, created) VALUES (?1, ?2, ?3)",
            params![backup, pc, now],
        )?;
        Ok(())
    }

    fn revoke(&self, backup: i64, pc: &str) -> Result<bool> {
        Ok(self.db().execute("DELETE FROM grants WHERE backup = ?1 AND pc = ?2", params![backup, pc])? > 0)
    }

    fn grants(&self, backup: i64) -> Result<Vec<String>> {
        let db = self.db();
        let mut st = db.prepare("SELECT pc FROM grants WHERE backup = ?1 ORDER BY pc")?;
        let rows = st.query_map([backup], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(rows)
    }

    fn granted(&self, backup: i64, pc: &str) -> Result<bool> {
        let n: i64 = self.db().query_row(
            "SELECT COUNT(*) FROM grants WHERE backup = ?1 AND (pc = ?2 OR pc = '*')",
            params![backup, pc],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    fn create_backup(&self, b: &NewBackup<'_>) -> Result<i64> {
        let db = self.db();
        let lock = b.lock;
        db.execute(
            "INSERT INTO backups (pc, name, state, created, last_active, disk_bytes, chunk_size, kdf_m, kdf_t, kdf_p,
               salt, lock_key, kdf)
             VALUES (?1, ?2, 'uploading', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                b.pc,
                b.name,
                b.created,
                b.last_active,
                i64::try_from(b.disk_bytes).map_err(|_| anyhow!("disk_bytes {} is too large", b.disk_bytes))?,
                b.chunk_size,
                lock.map(|l| l.params.m_kib),
                lock.map(|l| l.params.t_cost),
                lock.map(|l| l.params.p),
                lock.map(|l| l.salt.to_vec()),
                lock.map(|l| l.key.to_vec()),
                lock.map(|l| l.kdf.as_str())
            ],
        )?;
        Ok(db.last_insert_rowid())
    }

    fn backup(&self, id: i64) -> Result<Option<BackupRow>> {
        Ok(self
            .db()
            .query_row(&format!("SELECT {BACKUP_COLS} FROM backups WHERE id = ?1"), [id], backup_row)
            .optional()?)
    }

    fn backup_lock(&self, id: i64) -> Result<Option<BackupLock>> {
        type Cols = (Option<u32>, Option<u32>, Option<u32>, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);
        let cols: Option<Cols> = self
            .db()
            .query_row("SELECT kdf_m, kdf_t, kdf_p, salt, lock_key, kdf FROM backups WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .optional()?;
        let Some((Some(m_kib), Some(t_cost), Some(p), Some(salt), Some(key), kdf)) = cols else { return Ok(None) };
        let kdf = match kdf.as_deref() {
            None => Kdf::Argon2id,
            Some(k) => Kdf::parse(k).ok_or_else(|| anyhow!("backup {id}: stored kdf {k:?} is unknown"))?,
        };
        let salt = salt.try_into().map_err(|_| anyhow!("backup {id}: stored salt is not {LOCK_SALT_BYTES} bytes"))?;
        let key = key.try_into().map_err(|_| anyhow!("backup {id}: stored key is not 32 bytes"))?;
        Ok(Some(BackupLock { kdf, params: LockParams { m_kib, t_cost, p }, salt, key }))
    }

    fn list_backups(&self, pc: Option<&str>, all: bool) -> Result<Vec<BackupRow>> {
        let db = self.db();
        let mut st = db.prepare(&format!(
            "SELECT {BACKUP_COLS} FROM backups WHERE (?1 IS NULL OR pc = ?1) AND (?2 OR state = 'complete') ORDER BY id"
        ))?;
        let rows = st.query_map(params![pc, all], backup_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn visible_backups(&self, pc: &str) -> Result<Vec<BackupRow>> {
        let db = self.db();
        let mut st = db.prepare(&format!(
            "SELECT {BACKUP_COLS} FROM backups WHERE state = 'complete' AND (pc = ?1 OR id IN
               (SELECT backup FROM grants WHERE pc = ?1 OR pc = '*')) ORDER BY id"
        ))?;
        let rows = st.query_map([pc], backup_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn latest(&self, pc: &str, name: Option<&str>) -> Result<Option<i64>> {
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

    fn find_complete(&self, pc: &str, name: &str, created: i64, digest: &str) -> Result<Option<i64>> {
        Ok(self
            .db()
            .query_row(
                "SELECT id FROM backups WHERE pc = ?1 AND name = ?2 AND created = ?3 AND digest = ?4
                 AND state = 'complete' ORDER BY id LIMIT 1",
                params![pc, name, created, digest],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn note_chunk(&self, backup: i64, id: &ChunkId, new_bytes: Option<u64>, now: i64) -> Result<()> {
        // One transaction for both rows, not synced on its own (WAL,
        // synchronous=NORMAL for it): the chunk file is already durable,
        // and losing these rows to a power cut can only make the upload
        // fail at finish (its rights are checked there), never complete.
        // Syncing here held the database lock through an fsync per chunk
        // and serialised every upload behind it.
        let db = self.db();
        let _relaxed = RelaxedSync::new(&db)?;
        let tx = db.unchecked_transaction()?;
        tx.prepare_cached("INSERT OR IGNORE INTO upload_chunks (backup, chunk) VALUES (?1, ?2)")?
            .execute(params![backup, &id[..]])?;
        let (bytes, chunks) = match new_bytes {
            Some(b) => (i64::try_from(b).unwrap_or(i64::MAX), 1),
            None => (0, 0),
        };
        tx.execute(
            "UPDATE backups SET received_bytes = received_bytes + ?2, received_chunks = received_chunks + ?3,
             last_active = ?4 WHERE id = ?1",
            params![backup, bytes, chunks, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn upload_has_chunk(&self, backup: i64, id: &ChunkId) -> Result<bool> {
        Ok(self
            .db()
            .prepare_cached("SELECT 1 FROM upload_chunks WHERE backup = ?1 AND chunk = ?2")?
            .query_row(params![backup, &id[..]], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn note_active(&self, backup: i64, now: i64) -> Result<()> {
        self.db().execute("UPDATE backups SET last_active = ?2 WHERE id = ?1", params![backup, now])?;
        Ok(())
    }

    fn set_origin(&self, id: i64, pc: &str, name: &str, disk_bytes: u64, chunk_size: u32) -> Result<()> {
        self.db().execute(
            "UPDATE backups SET pc = ?2, name = ?3, disk_bytes = ?4, chunk_size = ?5 WHERE id = ?1",
            params![id, pc, name, i64::try_from(disk_bytes).unwrap_or(i64::MAX), chunk_size],
        )?;
        Ok(())
    }

    fn complete_backup(&self, id: i64, c: &Completion<'_>, now: i64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "UPDATE backups SET state = 'complete', finished = ?2, chunks = ?3, zero_chunks = ?4, blob_bytes = ?5,
             digest = ?6, model = ?7, last_active = ?2 WHERE id = ?1",
            params![id, now, c.chunks as i64, c.zero_chunks as i64, c.blob_bytes as i64, c.digest, c.model],
        )?;
        tx.execute("DELETE FROM upload_chunks WHERE backup = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    fn fail_backup(&self, id: i64, reason: &str, now: i64) -> Result<bool> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let n = tx.execute(
            "UPDATE backups SET state = 'failed', finished = ?2, reason = ?3 WHERE id = ?1 AND state = 'uploading'",
            params![id, now, reason],
        )?;
        if n > 0 {
            tx.execute("DELETE FROM upload_chunks WHERE backup = ?1", [id])?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    fn delete_backup(&self, id: i64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM grants WHERE backup = ?1", [id])?;
        tx.execute("DELETE FROM unlock_failures WHERE backup = ?1", [id])?;
        tx.execute("DELETE FROM backups WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM upload_chunks WHERE backup = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    fn close_stale_uploads(&self, idle_before: i64, now: i64, max_age: i64) -> Result<(u64, Vec<OpenUpload>)> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let stale = tx.execute(
            "UPDATE backups SET state = 'failed', finished = ?2,
               reason = 'abandoned upload: no activity for ' || ?3 || ' s (gc)'
             WHERE state = 'uploading' AND MAX(last_active, created) <= ?1",
            params![idle_before, now, max_age],
        )? as u64;
        tx.execute(
            "DELETE FROM upload_chunks WHERE backup NOT IN (SELECT id FROM backups WHERE state = 'uploading')",
            [],
        )?;
        let open = {
            let mut st = tx.prepare(
                "SELECT id, pc, created, MAX(last_active, created) FROM backups WHERE state = 'uploading' ORDER BY created",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok(OpenUpload { id: r.get(0)?, pc: r.get(1)?, created: r.get(2)?, last_active: r.get(3)? })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        tx.commit()?;
        Ok((stale, open))
    }

    fn unlock_failures(&self, pc: &str, backup: i64) -> Result<(i64, i64)> {
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

    fn clear_unlock_failures(&self, pc: &str, backup: i64) -> Result<()> {
        self.db().execute("DELETE FROM unlock_failures WHERE pc = ?1 AND backup = ?2", params![pc, backup])?;
        Ok(())
    }

    fn add_unlock_failure(&self, pc: &str, backup: i64, now: i64) -> Result<i64> {
        Ok(self.db().query_row(
            "INSERT INTO unlock_failures (pc, backup, count, last) VALUES (?1, ?2, 1, ?3)
             ON CONFLICT(pc, backup) DO UPDATE SET count = count + 1, last = ?3 RETURNING count",
            params![pc, backup, now],
            |r| r.get(0),
        )?)
    }

    fn add_job(&self, j: &NewJob<'_>, now: i64) -> Result<i64> {
        let db = self.db();
        db.execute(
            "INSERT INTO jobs (pc, action, disk, name, backup, state, created, lock, unlocked, wrap)
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?8, ?9)",
            params![j.pc, j.action, j.disk, j.name, j.backup, now, j.lock, j.unlocked, j.wrap],
        )?;
        Ok(db.last_insert_rowid())
    }

    fn next_job(&self, pc: &str, now: i64) -> Result<Option<JobRow>> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let id: Option<i64> = tx
            .query_row("SELECT id FROM jobs WHERE pc = ?1 AND state = 'queued' ORDER BY id LIMIT 1", [pc], |r| r.get(0))
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        tx.execute("UPDATE jobs SET state = 'running', started = ?2 WHERE id = ?1", params![id, now])?;
        let job = tx.query_row(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"), [id], job_row)?;
        // The lock goes to the PC once, with the job; the backup row keeps it.
        tx.execute("UPDATE jobs SET lock = NULL, wrap = NULL WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(Some(job))
    }

    fn list_jobs(&self, pc: Option<&str>) -> Result<Vec<JobRow>> {
        let db = self.db();
        let mut st = db.prepare(&format!("SELECT {JOB_COLS} FROM jobs WHERE (?1 IS NULL OR pc = ?1) ORDER BY id"))?;
        let rows = st.query_map(params![pc], job_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn record_result(&self, r: &NewResult<'_>, now: i64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO results (pc, job, action, disk, backup, ok, message, bytes, sent, seconds, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                r.pc,
                r.job,
                r.action,
                r.disk,
                r.backup,
                r.ok,
                r.message,
                r.bytes as i64,
                r.sent as i64,
                r.seconds,
                now
            ],
        )?;
        if let Some(j) = r.job {
            tx.execute(
                "UPDATE jobs SET state = ?2, finished = ?3 WHERE id = ?1 AND pc = ?4",
                params![j, if r.ok { "done" } else { "failed" }, now, r.pc],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn list_results(&self, pc: Option<&str>) -> Result<Vec<ResultRow>> {
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

    fn set_pc_token(&self, name: &str, token: &str) -> Result<bool> {
        Ok(self.db().execute("UPDATE pcs SET token = ?2 WHERE name = ?1 AND registered = 1", params![name, token])? > 0)
    }

    fn cancel_job(&self, id: i64, message: &str, now: i64) -> Result<bool> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let job = tx
            .query_row(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1 AND state = 'queued'"), [id], job_row)
            .optional()?;
        let Some(job) = job else { return Ok(false) };
        tx.execute(
            "UPDATE jobs SET state = 'failed', finished = ?2, lock = NULL, wrap = NULL WHERE id = ?1",
            params![id, now],
        )?;
        tx.execute(
            "INSERT INTO results (pc, job, action, disk, backup, ok, message, bytes, sent, seconds, at)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, 0, 0, 0, ?7)",
            params![job.pc, id, job.action, job.disk, job.backup, message, now],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn add_admin(&self, name: &str, hash: &str, now: i64) -> Result<()> {
        let added = self.db().execute(
            "INSERT OR IGNORE INTO admins (name, hash, created) VALUES (?1, ?2, ?3)",
            params![name, hash, now],
        )?;
        if added == 0 {
            anyhow::bail!("an admin named {name} exists already");
        }
        Ok(())
    }

    fn set_admin_hash(&self, name: &str, hash: &str) -> Result<bool> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let changed = tx.execute("UPDATE admins SET hash = ?2 WHERE name = ?1", params![name, hash])?;
        tx.execute("DELETE FROM sessions WHERE admin = ?1", [name])?;
        tx.commit()?;
        Ok(changed > 0)
    }

    fn admin_hash(&self, name: &str) -> Result<Option<String>> {
        Ok(self.db().query_row("SELECT hash FROM admins WHERE name = ?1", [name], |r| r.get(0)).optional()?)
    }

    fn list_admins(&self) -> Result<Vec<(String, i64)>> {
        let db = self.db();
        let mut st = db.prepare("SELECT name, created FROM admins ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn remove_admin(&self, name: &str) -> Result<bool> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let removed = tx.execute("DELETE FROM admins WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM sessions WHERE admin = ?1", [name])?;
        tx.commit()?;
        Ok(removed > 0)
    }

    fn add_session(&self, id: &str, admin: &str, csrf: &str, now: i64) -> Result<()> {
        self.db().execute(
            "INSERT INTO sessions (id, admin, csrf, created, last_used) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![id, admin, csrf, now],
        )?;
        Ok(())
    }

    fn session(&self, id: &str, idle_since: i64, created_since: i64, now: i64) -> Result<Option<(String, String)>> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM sessions WHERE last_used < ?1 OR created < ?2", params![idle_since, created_since])?;
        let row = tx
            .query_row("SELECT admin, csrf FROM sessions WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if row.is_some() {
            tx.execute("UPDATE sessions SET last_used = ?2 WHERE id = ?1", params![id, now])?;
        }
        tx.commit()?;
        Ok(row)
    }

    fn end_session(&self, id: &str) -> Result<()> {
        self.db().execute("DELETE FROM sessions WHERE id = ?1", [id])?;
        Ok(())
    }

    fn signin_failures(&self, key: &str, since: i64) -> Result<i64> {
        Ok(self.db().query_row(
            "SELECT COUNT(*) FROM signin_failures WHERE key = ?1 AND at >= ?2",
            params![key, since],
            |r| r.get(0),
        )?)
    }

    fn add_signin_failure(&self, keys: &[&str], now: i64, forget_before: i64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM signin_failures WHERE at < ?1", [forget_before])?;
        for key in keys {
            tx.execute("INSERT INTO signin_failures (key, at) VALUES (?1, ?2)", params![key, now])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn clear_signin_failures(&self, key: &str) -> Result<()> {
        self.db().execute("DELETE FROM signin_failures WHERE key = ?1", [key])?;
        Ok(())
    }

    fn put_challenge(&self, pc: &str, backup: i64, nonce: &[u8; 32], expires: i64, now: i64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM unlock_challenges WHERE expires <= ?1", [now])?;
        tx.execute(
            "INSERT OR REPLACE INTO unlock_challenges (pc, backup, nonce, expires) VALUES (?1, ?2, ?3, ?4)",
            params![pc, backup, &nonce[..], expires],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn take_challenge(&self, pc: &str, backup: i64) -> Result<Option<([u8; 32], i64)>> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let row: Option<(Vec<u8>, i64)> = tx
            .query_row(
                "SELECT nonce, expires FROM unlock_challenges WHERE pc = ?1 AND backup = ?2",
                params![pc, backup],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        tx.execute("DELETE FROM unlock_challenges WHERE pc = ?1 AND backup = ?2", params![pc, backup])?;
        tx.commit()?;
        Ok(row.and_then(|(n, e)| Some((<[u8; 32]>::try_from(n.as_slice()).ok()?, e))))
    }

    fn add_ticket(&self, hash: &str, pc: &str, backup: i64, expires: i64, now: i64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM unlock_tickets WHERE expires <= ?1", [now])?;
        tx.execute(
            "INSERT OR REPLACE INTO unlock_tickets (hash, pc, backup, expires) VALUES (?1, ?2, ?3, ?4)",
            params![hash, pc, backup, expires],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn ticket(&self, hash: &str) -> Result<Option<(String, i64, i64)>> {
        Ok(self
            .db()
            .query_row("SELECT pc, backup, expires FROM unlock_tickets WHERE hash = ?1", [hash], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?)
    }

    fn store_lock(&self, _exclusive: bool) -> Result<Option<crate::blobs::BlobLock>> {
        Ok(None)
    }
}
