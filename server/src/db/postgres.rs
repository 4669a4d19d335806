//! [`Database`] on PostgreSQL (`bootvault serve --db postgres://…`), for
//! several servers sharing one database at the same time. Owns the
//! PostgreSQL schema, its steps (numbered as SQLite's, `MIGRATIONS`) and
//! a small pool of connections; not the rules (the vault's), not the
//! clock. TLS to the database is not done yet (`NoTls`): keep it on a
//! trusted network or a local socket.
//!
//! The client is the synchronous `postgres` crate, which runs a small
//! tokio runtime of its own: fine on the blocking threads and in the CLI
//! that call [`Database`], never from async code. [`POOL_SIZE`] connections
//! are taken first-free, so concurrent requests do not queue behind one;
//! one found closed is opened again before use.
//!
//! Every method is one transaction at READ COMMITTED. SQLite has a single
//! writer, so its read-then-write sequences are safe by construction; here
//! another server may write between any two statements, so each guarantee
//! is kept by the statement or lock that makes it hold across servers:
//!
//! * job hand-out ([`Database::next_job`]): one `UPDATE … FROM (SELECT …
//!   FOR UPDATE SKIP LOCKED)`: a queued job is locked by one caller and
//!   marked running before any other can see it queued, so each job goes
//!   out once; its lock and wrap key are returned from the row as locked
//!   and cleared by the same statement. [`Database::cancel_job`] is an
//!   `UPDATE … WHERE state = 'queued' RETURNING`, so a job is either
//!   cancelled or handed out, never both;
//! * PC registration (`add_pc`, `edit_pc`): a transaction-level advisory
//!   lock serialises them across servers, so the name/MAC check and the
//!   write are one step as on SQLite; the unique indexes back it up, and
//!   their violations read as the same refusals;
//! * the pending list's cap (`note_pending`): the same advisory-lock
//!   scheme, so two servers cannot both take the last free place;
//! * unlock-failure counts: one `INSERT … ON CONFLICT DO UPDATE SET count
//!   = count + 1 RETURNING count`, so no wrong password is lost or counted
//!   twice;
//! * sign-in failures: one row per failure (appends never conflict), so
//!   the count is exact whichever server saw them;
//! * sessions: the use is an `UPDATE … WHERE` both limits still hold
//!   `RETURNING`, so a session expired or ended by another server is
//!   never returned; expired rows are swept with `SKIP LOCKED` so servers
//!   do not wait on each other for them;
//! * schema creation: under `pg_advisory_xact_lock`, so servers starting
//!   at once on a fresh database create it once.
//!
//! Deadlocks and serialization failures (SQLSTATE 40P01, 40001) roll the
//! transaction back; it is run again a few times before the error is
//! returned.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bootvault_common::image::ChunkId;
use bootvault_common::wire::{Kdf, LockParams, LOCK_SALT_BYTES};
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls, Row, Transaction};

use super::{
    BackupRow, Completion, Database, JobRow, NewBackup, NewJob, NewResult, OpenUpload, PcRow, Pending, PendingRow,
    PendingRules, ResultRow,
};
use crate::unlock::BackupLock;

/// Connections kept open per server.
pub const POOL_SIZE: usize = 4;

/// The schema version [`SCHEMA`] creates: SQLite's numbering
/// (`sqlite::MIGRATIONS`), whose latest step PostgreSQL starts from.
const SCHEMA_BASE: i64 = 7;

/// The current schema, created at once on a fresh database. The same
/// tables, checks and unique indexes as SQLite at [`SCHEMA_BASE`], in
/// PostgreSQL's types; one more index, for the job hand-out.
const SCHEMA: &str = "
CREATE TABLE pcs (name TEXT PRIMARY KEY, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL,
    last_mac TEXT NOT NULL DEFAULT '', last_addr TEXT NOT NULL DEFAULT '',
    registered BOOLEAN NOT NULL DEFAULT FALSE, mac TEXT NOT NULL DEFAULT '', ip TEXT NOT NULL DEFAULT 'dhcp',
    gateway TEXT NOT NULL DEFAULT '', dns TEXT NOT NULL DEFAULT '', mode TEXT NOT NULL DEFAULT 'network',
    disk TEXT NOT NULL DEFAULT 'auto', default_action TEXT NOT NULL DEFAULT 'menu', token TEXT NOT NULL DEFAULT '',
    quota BIGINT);
CREATE UNIQUE INDEX pcs_mac ON pcs(mac) WHERE mac <> '';
CREATE TABLE backups (id BIGSERIAL PRIMARY KEY, pc TEXT NOT NULL, name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('uploading','complete','failed')),
    created BIGINT NOT NULL, finished BIGINT, disk_bytes BIGINT NOT NULL, chunk_size BIGINT NOT NULL,
    chunks BIGINT NOT NULL DEFAULT 0, zero_chunks BIGINT NOT NULL DEFAULT 0, blob_bytes BIGINT NOT NULL DEFAULT 0,
    received_bytes BIGINT NOT NULL DEFAULT 0, received_chunks BIGINT NOT NULL DEFAULT 0,
    digest TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
    kdf_m BIGINT, kdf_t BIGINT, kdf_p BIGINT, salt BYTEA, lock_key BYTEA, model TEXT NOT NULL DEFAULT '',
    last_active BIGINT NOT NULL DEFAULT 0, kdf TEXT);
CREATE TABLE jobs (id BIGSERIAL PRIMARY KEY, pc TEXT NOT NULL, action TEXT NOT NULL,
    disk TEXT NOT NULL, name TEXT NOT NULL, backup BIGINT,
    state TEXT NOT NULL CHECK (state IN ('queued','running','done','failed')),
    created BIGINT NOT NULL, started BIGINT, finished BIGINT,
    lock TEXT, unlocked BOOLEAN NOT NULL DEFAULT FALSE, wrap TEXT);
CREATE INDEX jobs_queued ON jobs(pc, id) WHERE state = 'queued';
CREATE TABLE results (id BIGSERIAL PRIMARY KEY, pc TEXT NOT NULL, job BIGINT,
    action TEXT NOT NULL, disk TEXT NOT NULL, backup BIGINT, ok BOOLEAN NOT NULL, message TEXT NOT NULL,
    bytes BIGINT NOT NULL, sent BIGINT NOT NULL, seconds DOUBLE PRECISION NOT NULL, at BIGINT NOT NULL);
CREATE TABLE grants (backup BIGINT NOT NULL, pc TEXT NOT NULL, created BIGINT NOT NULL, PRIMARY KEY (backup, pc));
CREATE TABLE pending (mac TEXT PRIMARY KEY, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL,
    addr TEXT NOT NULL DEFAULT '', count BIGINT NOT NULL DEFAULT 1);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE unlock_failures (pc TEXT NOT NULL, backup BIGINT NOT NULL, count BIGINT NOT NULL, last BIGINT NOT NULL,
    PRIMARY KEY (pc, backup));
CREATE TABLE upload_chunks (backup BIGINT NOT NULL, chunk BYTEA NOT NULL, PRIMARY KEY (backup, chunk));
CREATE TABLE admins (name TEXT PRIMARY KEY, hash TEXT NOT NULL, created BIGINT NOT NULL);
CREATE TABLE sessions (id TEXT PRIMARY KEY, admin TEXT NOT NULL, csrf TEXT NOT NULL,
    created BIGINT NOT NULL, last_used BIGINT NOT NULL);
CREATE TABLE signin_failures (key TEXT NOT NULL, at BIGINT NOT NULL);
CREATE INDEX signin_failures_key ON signin_failures(key, at);
";

/// The schema steps after [`SCHEMA_BASE`]: (version reached, its SQL),
/// numbered as SQLite's, so one version means one schema on both.
const MIGRATIONS: &[(i64, &str)] = &[
    // Schema 8: restore passwords' open challenges and tickets (by the
    // hash of the ticket), shared by every server.
    (
        8,
        "CREATE TABLE unlock_challenges (pc TEXT NOT NULL, backup BIGINT NOT NULL, nonce BYTEA NOT NULL,
             expires BIGINT NOT NULL, PRIMARY KEY (pc, backup));
         CREATE TABLE unlock_tickets (hash TEXT PRIMARY KEY, pc TEXT NOT NULL, backup BIGINT NOT NULL,
             expires BIGINT NOT NULL);",
    ),
];

/// The schema version this build creates and understands.
fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(SCHEMA_BASE, |(v, _)| *v)
}

/// Transaction-level advisory locks: (bootvault's namespace, what).
const LOCK_SPACE: i32 = 0x6276; // "bv"
const LOCK_SCHEMA: i32 = 1;
const LOCK_PCS: i32 = 2;
const LOCK_PENDING: i32 = 3;
/// The chunk store's lock, session-level (held across calls by a
/// connection of its own, see [`PgDb::store_lock`]).
const LOCK_STORE: i32 = 4;
/// Connections kept for the store lock (more are opened while more
/// writers hold it at once, and closed when they let go).
const LOCK_POOL: usize = 8;

/// Runs of one transaction when it deadlocks or fails to serialize.
const TRIES: u32 = 5;

/// Whether one error of a chain is PostgreSQL's disk_full (53100).
pub(super) fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<postgres::Error>().and_then(postgres::Error::code).is_some_and(|c| *c == SqlState::DISK_FULL)
}

/// Whether running the transaction again may succeed.
fn is_retryable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<postgres::Error>()
        .and_then(postgres::Error::code)
        .is_some_and(|c| *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// The unique index or key a statement would have violated.
fn unique_violation(e: &postgres::Error) -> Option<&str> {
    let db = e.as_db_error()?;
    (*db.code() == SqlState::UNIQUE_VIOLATION).then(|| db.constraint().unwrap_or(""))
}

/// A PC's registration refused by an index another server's write got
/// to first (the advisory lock makes this a backstop): the same words as
/// the check before the write.
fn pc_clash(e: postgres::Error, pc: &PcRow) -> anyhow::Error {
    match unique_violation(&e) {
        Some("pcs_mac") => anyhow!("MAC {} is already registered to another PC", pc.mac),
        Some("pcs_pkey") => anyhow!("PC {} is already registered", pc.name),
        _ => e.into(),
    }
}

fn lock(tx: &mut Transaction<'_>, what: i32) -> Result<(), postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_SPACE, &what])?;
    Ok(())
}

/// A count or size for a BIGINT column.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A BIGINT column read as a count or size.
fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

const BACKUP_COLS: &str = "id, pc, name, state, created, finished, disk_bytes, chunk_size, chunks, zero_chunks, \
    blob_bytes, received_bytes, received_chunks, digest, reason, lock_key IS NOT NULL, model";

const JOB_COLS: &str = "id, pc, action, disk, name, backup, state, created, started, finished, lock, unlocked, wrap";

const PC_COLS: &str = "name, mac, ip, gateway, dns, mode, disk, default_action, token, last_seen, last_addr";

fn job_row(r: &Row) -> Result<JobRow, postgres::Error> {
    Ok(JobRow {
        id: r.try_get(0)?,
        pc: r.try_get(1)?,
        action: r.try_get(2)?,
        disk: r.try_get(3)?,
        name: r.try_get(4)?,
        backup: r.try_get(5)?,
        state: r.try_get(6)?,
        created: r.try_get(7)?,
        started: r.try_get(8)?,
        finished: r.try_get(9)?,
        lock: r.try_get(10)?,
        unlocked: r.try_get(11)?,
        wrap: r.try_get(12)?,
    })
}

fn backup_row(r: &Row) -> Result<BackupRow, postgres::Error> {
    Ok(BackupRow {
        id: r.try_get(0)?,
        pc: r.try_get(1)?,
        name: r.try_get(2)?,
        state: r.try_get(3)?,
        created: r.try_get(4)?,
        finished: r.try_get(5)?,
        disk_bytes: uint(r.try_get(6)?),
        chunk_size: u32::try_from(r.try_get::<_, i64>(7)?).unwrap_or(u32::MAX),
        chunks: uint(r.try_get(8)?),
        zero_chunks: uint(r.try_get(9)?),
        blob_bytes: uint(r.try_get(10)?),
        received_bytes: uint(r.try_get(11)?),
        received_chunks: uint(r.try_get(12)?),
        digest: r.try_get(13)?,
        reason: r.try_get(14)?,
        locked: r.try_get(15)?,
        model: r.try_get(16)?,
    })
}

fn pc_row(r: &Row) -> Result<PcRow, postgres::Error> {
    let seen: i64 = r.try_get(9)?;
    Ok(PcRow {
        name: r.try_get(0)?,
        mac: r.try_get(1)?,
        ip: r.try_get(2)?,
        gateway: r.try_get(3)?,
        dns: r.try_get(4)?,
        mode: r.try_get(5)?,
        disk: r.try_get(6)?,
        default_action: r.try_get(7)?,
        token: r.try_get(8)?,
        last_seen: (seen > 0).then_some(seen),
        last_addr: r.try_get(10)?,
    })
}

fn result_row(r: &Row) -> Result<ResultRow, postgres::Error> {
    Ok(ResultRow {
        id: r.try_get(0)?,
        pc: r.try_get(1)?,
        job: r.try_get(2)?,
        action: r.try_get(3)?,
        disk: r.try_get(4)?,
        backup: r.try_get(5)?,
        ok: r.try_get(6)?,
        message: r.try_get(7)?,
        bytes: uint(r.try_get(8)?),
        sent: uint(r.try_get(9)?),
        seconds: r.try_get(10)?,
        at: r.try_get(11)?,
    })
}

fn rows<T>(rows: Vec<Row>, f: fn(&Row) -> Result<T, postgres::Error>) -> Result<Vec<T>> {
    Ok(rows.iter().map(f).collect::<Result<Vec<_>, _>>()?)
}

/// Creates the schema on a fresh database or brings an older one up to
/// [`latest_version`], under an advisory lock so that servers starting at
/// once do it once; refuses a schema newer than this build.
fn prepare_schema(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction()?;
    lock(&mut tx, LOCK_SCHEMA)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")?;
    let found: Option<String> =
        tx.query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])?.map(|r| r.try_get(0)).transpose()?;
    let latest = latest_version();
    match found {
        None => {
            tx.batch_execute(SCHEMA)?;
            for (_, sql) in MIGRATIONS {
                tx.batch_execute(sql)?;
            }
            tx.execute("INSERT INTO meta (key, value) VALUES ('schema_version', $1)", &[&latest.to_string()])?;
        }
        Some(v) => {
            let v: i64 = v.parse().with_context(|| format!("the stored schema_version {v:?} is not a number"))?;
            if v > latest {
                bail!("the database's schema version {v} is newer than this bootvault knows ({latest}): upgrade bootvault");
            }
            if v < SCHEMA_BASE {
                bail!("the database's schema version {v} predates PostgreSQL support ({SCHEMA_BASE})");
            }
            for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > v) {
                tx.batch_execute(sql)?;
                tx.execute("UPDATE meta SET value = $1 WHERE key = 'schema_version'", &[&to.to_string()])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// `host:port/dbname` of a connection string, for messages (never its
/// password).
fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or(""))
}

pub struct PgDb {
    config: Config,
    /// Where messages say the database is (no password).
    place: String,
    slots: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
    /// Idle connections for the store lock.
    lockers: std::sync::Arc<Mutex<Vec<Client>>>,
}

/// The store lock held by one connection: let go (and the connection
/// kept for the next) when dropped. A server that dies lets go with its
/// session.
struct StoreLock {
    client: Option<Client>,
    exclusive: bool,
    pool: std::sync::Arc<Mutex<Vec<Client>>>,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let Some(mut client) = self.client.take() else { return };
        let unlock = if self.exclusive { "pg_advisory_unlock" } else { "pg_advisory_unlock_shared" };
        let sql = format!("SELECT {unlock}($1, $2)");
        if client.execute(sql.as_str(), &[&LOCK_SPACE, &LOCK_STORE]).is_ok() {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < LOCK_POOL {
                pool.push(client);
                return;
            }
        }
        // Not kept: closed (ending its session lets go of anything held).
        drop(client);
    }
}

impl PgDb {
    /// Connects to `url` (`postgres://user@host:port/dbname`) and creates
    /// or upgrades the schema.
    pub fn connect(url: &str) -> Result<PgDb> {
        let mut config = Config::from_str(url).context("reading the PostgreSQL connection string")?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("bootvault");
        }
        let place = describe(&config);
        let db = PgDb {
            config,
            place,
            slots: (0..POOL_SIZE).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            lockers: Default::default(),
        };
        let mut client = db.open_one()?;
        prepare_schema(&mut client).with_context(|| format!("preparing the schema in {}", db.place))?;
        *db.slot() = Some(client);
        Ok(db)
    }

    fn open_one(&self) -> Result<Client> {
        self.config.connect(NoTls).with_context(|| format!("connecting to PostgreSQL at {}", self.place))
    }

    /// The first free connection slot (a quiet server keeps to one
    /// connection), or the next one in turn if all are busy.
    fn slot(&self) -> MutexGuard<'_, Option<Client>> {
        for slot in &self.slots {
            match slot.try_lock() {
                Ok(g) => return g,
                Err(TryLockError::Poisoned(p)) => return Self::unpoison(p.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % POOL_SIZE;
        self.slots[turn].lock().unwrap_or_else(|p| Self::unpoison(p.into_inner()))
    }

    /// A slot whose user panicked: its connection may be mid-way; drop it.
    fn unpoison(mut g: MutexGuard<'_, Option<Client>>) -> MutexGuard<'_, Option<Client>> {
        *g = None;
        g
    }

    /// Runs `f` as one transaction on a pooled connection, again if it
    /// deadlocked or failed to serialize. Database errors get `op` as
    /// context; refusals `f` makes are returned as they are.
    fn tx<T>(&self, op: &str, mut f: impl FnMut(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut slot = self.slot();
        let mut tries = 1;
        let mut reopened = false;
        loop {
            if slot.as_ref().is_none_or(Client::is_closed) {
                *slot = None;
                *slot = Some(self.open_one()?);
            }
            let Some(client) = slot.as_mut() else { bail!("no connection to PostgreSQL at {}", self.place) };
            let result = match run_once(client, &mut f) {
                Attempt::Ran(result) => result,
                // Nothing ran: a connection found dead here (the database
                // restarted, or ended it) is opened again, once.
                Attempt::NotBegun(_) if !reopened => {
                    *slot = None;
                    reopened = true;
                    continue;
                }
                Attempt::NotBegun(e) => Err(e.into()),
            };
            match result {
                Err(e) if tries < TRIES && is_retryable(&e) => {
                    std::thread::sleep(Duration::from_millis(2 << tries));
                    tries += 1;
                }
                Err(e) => return Err(self.in_op(e, op)),
                Ok(v) => return Ok(v),
            }
        }
    }

    /// A database error with the operation and the database named; a
    /// refusal (not from the database) as it is.
    fn in_op(&self, e: anyhow::Error, op: &str) -> anyhow::Error {
        if e.downcast_ref::<postgres::Error>().is_some() {
            e.context(format!("database {}: {op}", self.place))
        } else {
            e
        }
    }
}

/// One run of a transaction.
enum Attempt<T> {
    /// It began; how it ended.
    Ran(Result<T>),
    /// BEGIN failed (mostly: the connection is dead): nothing ran.
    NotBegun(postgres::Error),
}

fn run_once<T>(client: &mut Client, f: &mut impl FnMut(&mut Transaction<'_>) -> Result<T>) -> Attempt<T> {
    let mut tx = match client.transaction() {
        Ok(tx) => tx,
        Err(e) => return Attempt::NotBegun(e),
    };
    Attempt::Ran(match f(&mut tx) {
        Ok(v) => tx.commit().map(|()| v).map_err(anyhow::Error::from),
        Err(e) => Err(e),
    })
}

impl Drop for PgDb {
    /// Each client owns a tokio runtime, and dropping one on a thread of
    /// an async runtime panics; a thread of their own closes them.
    fn drop(&mut self) {
        let mut clients: Vec<Client> =
            self.slots.iter_mut().filter_map(|s| s.get_mut().unwrap_or_else(|p| p.into_inner()).take()).collect();
        clients.extend(self.lockers.lock().unwrap_or_else(|p| p.into_inner()).drain(..));
        if !clients.is_empty() {
            let _ = std::thread::spawn(move || drop(clients)).join();
        }
    }
}

impl Database for PgDb {
    fn pc_token(&self, name: &str) -> Result<Option<String>> {
        self.tx("pc_token", |tx| {
            Ok(tx
                .query_opt("SELECT token FROM pcs WHERE name = $1 AND registered", &[&name])?
                .map(|r| r.try_get(0))
                .transpose()?)
        })
    }

    fn add_pc(&self, pc: &PcRow, token: &str, now: i64) -> Result<()> {
        self.tx("add_pc", |tx| {
            lock(tx, LOCK_PCS)?;
            let taken: Option<String> = tx
                .query_opt(
                    "SELECT name FROM pcs WHERE registered AND (name = $1 OR (mac = $2 AND $2 <> ''))",
                    &[&pc.name, &pc.mac],
                )?
                .map(|r| r.try_get(0))
                .transpose()?;
            if let Some(other) = taken {
                if other == pc.name {
                    bail!("PC {} is already registered", pc.name);
                }
                bail!("MAC {} is already registered to PC {other}", pc.mac);
            }
            // Only an unregistered row (a PC merely seen) is taken over.
            let n = tx
                .execute(
                    "INSERT INTO pcs (name, first_seen, last_seen, registered, mac, ip, gateway, dns, mode, disk,
                       default_action, token)
                     VALUES ($1, $2, 0, TRUE, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (name) DO UPDATE SET registered = TRUE, mac = EXCLUDED.mac, ip = EXCLUDED.ip,
                       gateway = EXCLUDED.gateway, dns = EXCLUDED.dns, mode = EXCLUDED.mode, disk = EXCLUDED.disk,
                       default_action = EXCLUDED.default_action, token = EXCLUDED.token
                     WHERE NOT pcs.registered",
                    &[
                        &pc.name,
                        &now,
                        &pc.mac,
                        &pc.ip,
                        &pc.gateway,
                        &pc.dns,
                        &pc.mode,
                        &pc.disk,
                        &pc.default_action,
                        &token,
                    ],
                )
                .map_err(|e| pc_clash(e, pc))?;
            if n == 0 {
                bail!("PC {} is already registered", pc.name);
            }
            Ok(())
        })
    }

    fn edit_pc(&self, pc: &PcRow) -> Result<()> {
        self.tx("edit_pc", |tx| {
            lock(tx, LOCK_PCS)?;
            let clash: Option<String> = tx
                .query_opt(
                    "SELECT name FROM pcs WHERE registered AND mac = $2 AND $2 <> '' AND name <> $1",
                    &[&pc.name, &pc.mac],
                )?
                .map(|r| r.try_get(0))
                .transpose()?;
            if let Some(other) = clash {
                bail!("MAC {} is already registered to PC {other}", pc.mac);
            }
            let n = tx
                .execute(
                    "UPDATE pcs SET mac = $2, ip = $3, gateway = $4, dns = $5, mode = $6, disk = $7,
                       default_action = $8
                     WHERE name = $1 AND registered",
                    &[&pc.name, &pc.mac, &pc.ip, &pc.gateway, &pc.dns, &pc.mode, &pc.disk, &pc.default_action],
                )
                .map_err(|e| pc_clash(e, pc))?;
            if n == 0 {
                bail!("no registered PC {}", pc.name);
            }
            Ok(())
        })
    }

    fn list_pcs(&self) -> Result<Vec<PcRow>> {
        self.tx("list_pcs", |tx| {
            rows(tx.query(&format!("SELECT {PC_COLS} FROM pcs WHERE registered ORDER BY name"), &[])?, pc_row)
        })
    }

    fn set_pc_token(&self, name: &str, token: &str) -> Result<bool> {
        self.tx("set_pc_token", |tx| {
            Ok(tx.execute("UPDATE pcs SET token = $2 WHERE name = $1 AND registered", &[&name, &token])? > 0)
        })
    }

    fn remove_pc(&self, name: &str) -> Result<()> {
        self.tx("remove_pc", |tx| {
            tx.execute("DELETE FROM grants WHERE pc = $1", &[&name])?;
            tx.execute("DELETE FROM pcs WHERE name = $1", &[&name])?;
            Ok(())
        })
    }

    fn seen_pc(&self, pc: &str, mac: &str, addr: &str, now: i64) -> Result<()> {
        self.tx("seen_pc", |tx| {
            tx.execute(
                "INSERT INTO pcs (name, first_seen, last_seen, last_mac, last_addr) VALUES ($1, $2, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET last_seen = EXCLUDED.last_seen,
                   last_mac = CASE WHEN EXCLUDED.last_mac = '' THEN pcs.last_mac ELSE EXCLUDED.last_mac END,
                   last_addr = CASE WHEN EXCLUDED.last_addr = '' THEN pcs.last_addr ELSE EXCLUDED.last_addr END",
                &[&pc, &now, &mac, &addr],
            )?;
            Ok(())
        })
    }

    fn pc_quota(&self, pc: &str) -> Result<Option<u64>> {
        self.tx("pc_quota", |tx| {
            let q: Option<Option<i64>> =
                tx.query_opt("SELECT quota FROM pcs WHERE name = $1", &[&pc])?.map(|r| r.try_get(0)).transpose()?;
            Ok(q.flatten().map(uint))
        })
    }

    fn set_pc_quota(&self, pc: &str, quota: Option<u64>) -> Result<bool> {
        let q = quota.map(int);
        self.tx("set_pc_quota", |tx| {
            Ok(tx.execute("UPDATE pcs SET quota = $2 WHERE name = $1 AND registered", &[&pc, &q])? > 0)
        })
    }

    fn pc_usage(&self, pc: &str, failed_since: i64) -> Result<u64> {
        self.tx("pc_usage", |tx| {
            let used: i64 = tx
                .query_one(
                    "SELECT COALESCE(SUM(received_bytes), 0)::BIGINT FROM backups WHERE pc = $1
                     AND (state <> 'failed' OR GREATEST(last_active, created) >= $2)",
                    &[&pc, &failed_since],
                )?
                .try_get(0)?;
            Ok(uint(used))
        })
    }

    fn note_pending(&self, mac: &str, addr: &str, now: i64, rules: PendingRules) -> Result<Pending> {
        self.tx("note_pending", |tx| {
            // The count and the insert must be one step across servers.
            lock(tx, LOCK_PENDING)?;
            tx.execute("DELETE FROM pending WHERE last_seen < $1", &[&rules.expire_before])?;
            let seen = tx.execute(
                "UPDATE pending SET last_seen = $2, addr = $3, count = count + 1 WHERE mac = $1",
                &[&mac, &now, &addr],
            )?;
            let listed: i64 = tx.query_one("SELECT COUNT(*) FROM pending", &[])?.try_get(0)?;
            Ok(if seen > 0 {
                Pending::Seen
            } else if !rules.admit_new {
                Pending::NotAdmitted
            } else if usize::try_from(listed).unwrap_or(usize::MAX) >= rules.max {
                Pending::Full
            } else {
                tx.execute(
                    "INSERT INTO pending (mac, first_seen, last_seen, addr) VALUES ($1, $2, $2, $3)",
                    &[&mac, &now, &addr],
                )?;
                Pending::Added
            })
        })
    }

    fn list_pending(&self, since: i64) -> Result<Vec<PendingRow>> {
        self.tx("list_pending", |tx| {
            let found = tx.query(
                "SELECT mac, first_seen, last_seen, addr, count FROM pending WHERE last_seen >= $1
                 ORDER BY first_seen, mac",
                &[&since],
            )?;
            rows(found, |r| {
                Ok(PendingRow {
                    mac: r.try_get(0)?,
                    first_seen: r.try_get(1)?,
                    last_seen: r.try_get(2)?,
                    addr: r.try_get(3)?,
                    count: r.try_get(4)?,
                })
            })
        })
    }

    fn forget_pending(&self, mac: &str) -> Result<bool> {
        self.tx("forget_pending", |tx| Ok(tx.execute("DELETE FROM pending WHERE mac = $1", &[&mac])? > 0))
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        self.tx("setting", |tx| {
            Ok(tx.query_opt("SELECT value FROM settings WHERE key = $1", &[&key])?.map(|r| r.try_get(0)).transpose()?)
        })
    }

    fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        self.tx("set_setting", |tx| {
            match value {
                Some(v) => tx.execute(
                    "INSERT INTO settings (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&key, &v],
                )?,
                None => tx.execute("DELETE FROM settings WHERE key = $1", &[&key])?,
            };
            Ok(())
        })
    }

    fn last_gc(&self) -> Result<i64> {
        self.tx("last_gc", |tx| {
            let v: Option<String> =
                tx.query_opt("SELECT value FROM meta WHERE key = 'last_gc'", &[])?.map(|r| r.try_get(0)).transpose()?;
            Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
        })
    }

    fn set_last_gc(&self, start: i64) -> Result<()> {
        self.tx("set_last_gc", |tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('last_gc', $1) ON CONFLICT (key) DO UPDATE SET value = $1",
                &[&start.to_string()],
            )?;
            Ok(())
        })
    }

    fn grant(&self, backup: i64, pc: &str, now: i64) -> Result<()> {
        self.tx("grant", |tx| {
            tx.execute(
                "INSERT INTO grants (backup, pc, created) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&backup, &pc, &now],
            )?;
            Ok(())
        })
    }

    fn revoke(&self, backup: i64, pc: &str) -> Result<bool> {
        self.tx("revoke", |tx| Ok(tx.execute("DELETE FROM grants WHERE backup = $1 AND pc = $2", &[&backup, &pc])? > 0))
    }

    fn grants(&self, backup: i64) -> Result<Vec<String>> {
        self.tx("grants", |tx| {
            rows(tx.query("SELECT pc FROM grants WHERE backup = $1 ORDER BY pc", &[&backup])?, |r| r.try_get(0))
        })
    }

    fn granted(&self, backup: i64, pc: &str) -> Result<bool> {
        self.tx("granted", |tx| {
            let n: i64 = tx
                .query_one("SELECT COUNT(*) FROM grants WHERE backup = $1 AND (pc = $2 OR pc = '*')", &[&backup, &pc])?
                .try_get(0)?;
            Ok(n > 0)
        })
    }

    fn create_backup(&self, b: &NewBackup<'_>) -> Result<i64> {
        let disk_bytes =
            i64::try_from(b.disk_bytes).map_err(|_| anyhow!("disk_bytes {} is too large", b.disk_bytes))?;
        let lock = b.lock;
        let (m, t, p) = (
            lock.map(|l| i64::from(l.params.m_kib)),
            lock.map(|l| i64::from(l.params.t_cost)),
            lock.map(|l| i64::from(l.params.p)),
        );
        let (salt, key, kdf) = (lock.map(|l| &l.salt[..]), lock.map(|l| &l.key[..]), lock.map(|l| l.kdf.as_str()));
        self.tx("create_backup", |tx| {
            Ok(tx
                .query_one(
                    "INSERT INTO backups (pc, name, state, created, last_active, disk_bytes, chunk_size, kdf_m, kdf_t,
                       kdf_p, salt, lock_key, kdf)
                     VALUES ($1, $2, 'uploading', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
                    &[
                        &b.pc,
                        &b.name,
                        &b.created,
                        &b.last_active,
                        &disk_bytes,
                        &i64::from(b.chunk_size),
                        &m,
                        &t,
                        &p,
                        &salt,
                        &key,
                        &kdf,
                    ],
                )?
                .try_get(0)?)
        })
    }

    fn backup(&self, id: i64) -> Result<Option<BackupRow>> {
        self.tx("backup", |tx| {
            Ok(tx
                .query_opt(&format!("SELECT {BACKUP_COLS} FROM backups WHERE id = $1"), &[&id])?
                .map(|r| backup_row(&r))
                .transpose()?)
        })
    }

    fn backup_lock(&self, id: i64) -> Result<Option<BackupLock>> {
        type Cols = (Option<i64>, Option<i64>, Option<i64>, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);
        let cols: Option<Cols> = self.tx("backup_lock", |tx| {
            Ok(tx
                .query_opt("SELECT kdf_m, kdf_t, kdf_p, salt, lock_key, kdf FROM backups WHERE id = $1", &[&id])?
                .map(|r| -> Result<Cols, postgres::Error> {
                    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?, r.try_get(5)?))
                })
                .transpose()?)
        })?;
        let Some((Some(m_kib), Some(t_cost), Some(p), Some(salt), Some(key), kdf)) = cols else { return Ok(None) };
        let kdf = match kdf.as_deref() {
            None => Kdf::Argon2id,
            Some(k) => Kdf::parse(k).ok_or_else(|| anyhow!("backup {id}: stored kdf {k:?} is unknown"))?,
        };
        let param =
            |v: i64| u32::try_from(v).map_err(|_| anyhow!("backup {id}: stored lock parameter {v} is out of range"));
        let params = LockParams { m_kib: param(m_kib)?, t_cost: param(t_cost)?, p: param(p)? };
        let salt = salt.try_into().map_err(|_| anyhow!("backup {id}: stored salt is not {LOCK_SALT_BYTES} bytes"))?;
        let key = key.try_into().map_err(|_| anyhow!("backup {id}: stored key is not 32 bytes"))?;
        Ok(Some(BackupLock { kdf, params, salt, key }))
    }

    fn list_backups(&self, pc: Option<&str>, all: bool) -> Result<Vec<BackupRow>> {
        self.tx("list_backups", |tx| {
            let found = tx.query(
                &format!(
                    "SELECT {BACKUP_COLS} FROM backups WHERE ($1::TEXT IS NULL OR pc = $1)
                     AND ($2::BOOLEAN OR state = 'complete') ORDER BY id"
                ),
                &[&pc, &all],
            )?;
            rows(found, backup_row)
        })
    }

    fn visible_backups(&self, pc: &str) -> Result<Vec<BackupRow>> {
        self.tx("visible_backups", |tx| {
            let found = tx.query(
                &format!(
                    "SELECT {BACKUP_COLS} FROM backups WHERE state = 'complete' AND (pc = $1 OR id IN
                       (SELECT backup FROM grants WHERE pc = $1 OR pc = '*')) ORDER BY id"
                ),
                &[&pc],
            )?;
            rows(found, backup_row)
        })
    }

    fn latest(&self, pc: &str, name: Option<&str>) -> Result<Option<i64>> {
        self.tx("latest", |tx| {
            Ok(tx
                .query_opt(
                    "SELECT id FROM backups WHERE pc = $1 AND state = 'complete' AND ($2::TEXT IS NULL OR name = $2)
                     ORDER BY id DESC LIMIT 1",
                    &[&pc, &name],
                )?
                .map(|r| r.try_get(0))
                .transpose()?)
        })
    }

    fn find_complete(&self, pc: &str, name: &str, created: i64, digest: &str) -> Result<Option<i64>> {
        self.tx("find_complete", |tx| {
            Ok(tx
                .query_opt(
                    "SELECT id FROM backups WHERE pc = $1 AND name = $2 AND created = $3 AND digest = $4
                     AND state = 'complete' ORDER BY id LIMIT 1",
                    &[&pc, &name, &created, &digest],
                )?
                .map(|r| r.try_get(0))
                .transpose()?)
        })
    }

    fn note_chunk(&self, backup: i64, id: &ChunkId, new_bytes: Option<u64>, now: i64) -> Result<()> {
        let (bytes, chunks) = match new_bytes {
            Some(b) => (int(b), 1i64),
            None => (0, 0),
        };
        self.tx("note_chunk", |tx| {
            // Not waited for on its own, as on SQLite: the chunk file is
            // already durable, and losing these rows can only make the
            // upload fail at finish, never complete.
            tx.batch_execute("SET LOCAL synchronous_commit = off")?;
            tx.execute(
                "INSERT INTO upload_chunks (backup, chunk) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&backup, &&id[..]],
            )?;
            tx.execute(
                "UPDATE backups SET received_bytes = received_bytes + $2, received_chunks = received_chunks + $3,
                 last_active = $4 WHERE id = $1",
                &[&backup, &bytes, &chunks, &now],
            )?;
            Ok(())
        })
    }

    fn upload_has_chunk(&self, backup: i64, id: &ChunkId) -> Result<bool> {
        self.tx("upload_has_chunk", |tx| {
            Ok(tx
                .query_opt("SELECT 1 FROM upload_chunks WHERE backup = $1 AND chunk = $2", &[&backup, &&id[..]])?
                .is_some())
        })
    }

    fn note_active(&self, backup: i64, now: i64) -> Result<()> {
        self.tx("note_active", |tx| {
            tx.execute("UPDATE backups SET last_active = $2 WHERE id = $1", &[&backup, &now])?;
            Ok(())
        })
    }

    fn set_origin(&self, id: i64, pc: &str, name: &str, disk_bytes: u64, chunk_size: u32) -> Result<()> {
        self.tx("set_origin", |tx| {
            tx.execute(
                "UPDATE backups SET pc = $2, name = $3, disk_bytes = $4, chunk_size = $5 WHERE id = $1",
                &[&id, &pc, &name, &int(disk_bytes), &i64::from(chunk_size)],
            )?;
            Ok(())
        })
    }

    fn complete_backup(&self, id: i64, c: &Completion<'_>, now: i64) -> Result<()> {
        self.tx("complete_backup", |tx| {
            tx.execute(
                "UPDATE backups SET state = 'complete', finished = $2, chunks = $3, zero_chunks = $4,
                 blob_bytes = $5, digest = $6, model = $7, last_active = $2 WHERE id = $1",
                &[&id, &now, &int(c.chunks), &int(c.zero_chunks), &int(c.blob_bytes), &c.digest, &c.model],
            )?;
            tx.execute("DELETE FROM upload_chunks WHERE backup = $1", &[&id])?;
            Ok(())
        })
    }

    fn fail_backup(&self, id: i64, reason: &str, now: i64) -> Result<bool> {
        self.tx("fail_backup", |tx| {
            let n = tx.execute(
                "UPDATE backups SET state = 'failed', finished = $2, reason = $3 WHERE id = $1 AND state = 'uploading'",
                &[&id, &now, &reason],
            )?;
            if n > 0 {
                tx.execute("DELETE FROM upload_chunks WHERE backup = $1", &[&id])?;
            }
            Ok(n > 0)
        })
    }

    fn delete_backup(&self, id: i64) -> Result<()> {
        self.tx("delete_backup", |tx| {
            tx.execute("DELETE FROM grants WHERE backup = $1", &[&id])?;
            tx.execute("DELETE FROM unlock_failures WHERE backup = $1", &[&id])?;
            tx.execute("DELETE FROM backups WHERE id = $1", &[&id])?;
            tx.execute("DELETE FROM upload_chunks WHERE backup = $1", &[&id])?;
            Ok(())
        })
    }

    fn close_stale_uploads(&self, idle_before: i64, now: i64, max_age: i64) -> Result<(u64, Vec<OpenUpload>)> {
        self.tx("close_stale_uploads", |tx| {
            let stale = tx.execute(
                "UPDATE backups SET state = 'failed', finished = $2,
                   reason = 'abandoned upload: no activity for ' || $3::BIGINT::TEXT || ' s (gc)'
                 WHERE state = 'uploading' AND GREATEST(last_active, created) <= $1",
                &[&idle_before, &now, &max_age],
            )?;
            tx.execute(
                "DELETE FROM upload_chunks WHERE backup NOT IN (SELECT id FROM backups WHERE state = 'uploading')",
                &[],
            )?;
            let found = tx.query(
                "SELECT id, pc, created, GREATEST(last_active, created) FROM backups WHERE state = 'uploading'
                 ORDER BY created, id",
                &[],
            )?;
            let open = rows(found, |r| {
                Ok(OpenUpload {
                    id: r.try_get(0)?,
                    pc: r.try_get(1)?,
                    created: r.try_get(2)?,
                    last_active: r.try_get(3)?,
                })
            })?;
            Ok((stale, open))
        })
    }

    fn unlock_failures(&self, pc: &str, backup: i64) -> Result<(i64, i64)> {
        self.tx("unlock_failures", |tx| {
            let found =
                tx.query_opt("SELECT count, last FROM unlock_failures WHERE pc = $1 AND backup = $2", &[&pc, &backup])?;
            Ok(match found {
                Some(r) => (r.try_get(0)?, r.try_get(1)?),
                None => (0, 0),
            })
        })
    }

    fn clear_unlock_failures(&self, pc: &str, backup: i64) -> Result<()> {
        self.tx("clear_unlock_failures", |tx| {
            tx.execute("DELETE FROM unlock_failures WHERE pc = $1 AND backup = $2", &[&pc, &backup])?;
            Ok(())
        })
    }

    fn add_unlock_failure(&self, pc: &str, backup: i64, now: i64) -> Result<i64> {
        self.tx("add_unlock_failure", |tx| {
            Ok(tx
                .query_one(
                    "INSERT INTO unlock_failures (pc, backup, count, last) VALUES ($1, $2, 1, $3)
                     ON CONFLICT (pc, backup) DO UPDATE SET count = unlock_failures.count + 1, last = EXCLUDED.last
                     RETURNING count",
                    &[&pc, &backup, &now],
                )?
                .try_get(0)?)
        })
    }

    fn add_job(&self, j: &NewJob<'_>, now: i64) -> Result<i64> {
        self.tx("add_job", |tx| {
            Ok(tx
                .query_one(
                    "INSERT INTO jobs (pc, action, disk, name, backup, state, created, lock, unlocked, wrap)
                     VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9) RETURNING id",
                    &[&j.pc, &j.action, &j.disk, &j.name, &j.backup, &now, &j.lock, &j.unlocked, &j.wrap],
                )?
                .try_get(0)?)
        })
    }

    fn next_job(&self, pc: &str, now: i64) -> Result<Option<JobRow>> {
        self.tx("next_job", |tx| {
            // One statement: the oldest queued job no other caller holds is
            // locked, marked running and stripped of its lock and wrap key,
            // which come back from the row as it was when picked.
            Ok(tx
                .query_opt(
                    "WITH picked AS (
                       SELECT id, lock, wrap FROM jobs WHERE pc = $1 AND state = 'queued'
                       ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                     UPDATE jobs SET state = 'running', started = $2, lock = NULL, wrap = NULL
                     FROM picked WHERE jobs.id = picked.id
                     RETURNING jobs.id, jobs.pc, jobs.action, jobs.disk, jobs.name, jobs.backup, jobs.state,
                       jobs.created, jobs.started, jobs.finished, picked.lock, jobs.unlocked, picked.wrap",
                    &[&pc, &now],
                )?
                .map(|r| job_row(&r))
                .transpose()?)
        })
    }

    fn list_jobs(&self, pc: Option<&str>) -> Result<Vec<JobRow>> {
        self.tx("list_jobs", |tx| {
            let found = tx.query(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE ($1::TEXT IS NULL OR pc = $1) ORDER BY id"),
                &[&pc],
            )?;
            rows(found, job_row)
        })
    }

    fn record_result(&self, r: &NewResult<'_>, now: i64) -> Result<()> {
        self.tx("record_result", |tx| {
            tx.execute(
                "INSERT INTO results (pc, job, action, disk, backup, ok, message, bytes, sent, seconds, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &r.pc,
                    &r.job,
                    &r.action,
                    &r.disk,
                    &r.backup,
                    &r.ok,
                    &r.message,
                    &int(r.bytes),
                    &int(r.sent),
                    &r.seconds,
                    &now,
                ],
            )?;
            if let Some(j) = r.job {
                tx.execute(
                    "UPDATE jobs SET state = $2, finished = $3 WHERE id = $1 AND pc = $4",
                    &[&j, &if r.ok { "done" } else { "failed" }, &now, &r.pc],
                )?;
            }
            Ok(())
        })
    }

    fn list_results(&self, pc: Option<&str>) -> Result<Vec<ResultRow>> {
        self.tx("list_results", |tx| {
            let found = tx.query(
                "SELECT id, pc, job, action, disk, backup, ok, message, bytes, sent, seconds, at FROM results
                 WHERE ($1::TEXT IS NULL OR pc = $1) ORDER BY id",
                &[&pc],
            )?;
            rows(found, result_row)
        })
    }

    fn cancel_job(&self, id: i64, message: &str, now: i64) -> Result<bool> {
        self.tx("cancel_job", |tx| {
            // Waits for a next_job holding the row, then sees it running.
            let Some(job) = tx.query_opt(
                "UPDATE jobs SET state = 'failed', finished = $2, lock = NULL, wrap = NULL
                 WHERE id = $1 AND state = 'queued' RETURNING pc, action, disk, backup",
                &[&id, &now],
            )?
            else {
                return Ok(false);
            };
            let (pc, action, disk, backup): (String, String, String, Option<i64>) =
                (job.try_get(0)?, job.try_get(1)?, job.try_get(2)?, job.try_get(3)?);
            tx.execute(
                "INSERT INTO results (pc, job, action, disk, backup, ok, message, bytes, sent, seconds, at)
                 VALUES ($1, $2, $3, $4, $5, FALSE, $6, 0, 0, 0, $7)",
                &[&pc, &id, &action, &disk, &backup, &message, &now],
            )?;
            Ok(true)
        })
    }

    fn add_admin(&self, name: &str, hash: &str, now: i64) -> Result<()> {
        self.tx("add_admin", |tx| {
            let added = tx.execute(
                "INSERT INTO admins (name, hash, created) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&name, &hash, &now],
            )?;
            if added == 0 {
                bail!("an admin named {name} exists already");
            }
            Ok(())
        })
    }

    fn set_admin_hash(&self, name: &str, hash: &str) -> Result<bool> {
        self.tx("set_admin_hash", |tx| {
            let changed = tx.execute("UPDATE admins SET hash = $2 WHERE name = $1", &[&name, &hash])?;
            tx.execute("DELETE FROM sessions WHERE admin = $1", &[&name])?;
            Ok(changed > 0)
        })
    }

    fn admin_hash(&self, name: &str) -> Result<Option<String>> {
        self.tx("admin_hash", |tx| {
            Ok(tx.query_opt("SELECT hash FROM admins WHERE name = $1", &[&name])?.map(|r| r.try_get(0)).transpose()?)
        })
    }

    fn list_admins(&self) -> Result<Vec<(String, i64)>> {
        self.tx("list_admins", |tx| {
            rows(tx.query("SELECT name, created FROM admins ORDER BY name", &[])?, |r| {
                Ok((r.try_get(0)?, r.try_get(1)?))
            })
        })
    }

    fn remove_admin(&self, name: &str) -> Result<bool> {
        self.tx("remove_admin", |tx| {
            let removed = tx.execute("DELETE FROM admins WHERE name = $1", &[&name])?;
            tx.execute("DELETE FROM sessions WHERE admin = $1", &[&name])?;
            Ok(removed > 0)
        })
    }

    fn add_session(&self, id: &str, admin: &str, csrf: &str, now: i64) -> Result<()> {
        self.tx("add_session", |tx| {
            tx.execute(
                "INSERT INTO sessions (id, admin, csrf, created, last_used) VALUES ($1, $2, $3, $4, $4)",
                &[&id, &admin, &csrf, &now],
            )?;
            Ok(())
        })
    }

    fn session(&self, id: &str, idle_since: i64, created_since: i64, now: i64) -> Result<Option<(String, String)>> {
        self.tx("session", |tx| {
            // Rows another server is sweeping or using are left to it.
            tx.execute(
                "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE last_used < $1 OR created < $2
                   FOR UPDATE SKIP LOCKED)",
                &[&idle_since, &created_since],
            )?;
            // The limits again: the sweep may have skipped this one. A
            // server whose clock is behind never moves last_used back.
            let found = tx.query_opt(
                "UPDATE sessions SET last_used = GREATEST(last_used, $4)
                 WHERE id = $1 AND last_used >= $2 AND created >= $3 RETURNING admin, csrf",
                &[&id, &idle_since, &created_since, &now],
            )?;
            Ok(match found {
                Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
                None => None,
            })
        })
    }

    fn end_session(&self, id: &str) -> Result<()> {
        self.tx("end_session", |tx| {
            tx.execute("DELETE FROM sessions WHERE id = $1", &[&id])?;
            Ok(())
        })
    }

    fn signin_failures(&self, key: &str, since: i64) -> Result<i64> {
        self.tx("signin_failures", |tx| {
            Ok(tx
                .query_one("SELECT COUNT(*) FROM signin_failures WHERE key = $1 AND at >= $2", &[&key, &since])?
                .try_get(0)?)
        })
    }

    fn add_signin_failure(&self, keys: &[&str], now: i64, forget_before: i64) -> Result<()> {
        self.tx("add_signin_failure", |tx| {
            tx.execute("DELETE FROM signin_failures WHERE at < $1", &[&forget_before])?;
            for key in keys {
                tx.execute("INSERT INTO signin_failures (key, at) VALUES ($1, $2)", &[key, &now])?;
            }
            Ok(())
        })
    }

    fn clear_signin_failures(&self, key: &str) -> Result<()> {
        self.tx("clear_signin_failures", |tx| {
            tx.execute("DELETE FROM signin_failures WHERE key = $1", &[&key])?;
            Ok(())
        })
    }

    fn put_challenge(&self, pc: &str, backup: i64, nonce: &[u8; 32], expires: i64, now: i64) -> Result<()> {
        self.tx("put_challenge", |tx| {
            tx.execute("DELETE FROM unlock_challenges WHERE expires <= $1", &[&now])?;
            tx.execute(
                "INSERT INTO unlock_challenges (pc, backup, nonce, expires) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (pc, backup) DO UPDATE SET nonce = EXCLUDED.nonce, expires = EXCLUDED.expires",
                &[&pc, &backup, &&nonce[..], &expires],
            )?;
            Ok(())
        })
    }

    fn take_challenge(&self, pc: &str, backup: i64) -> Result<Option<([u8; 32], i64)>> {
        self.tx("take_challenge", |tx| {
            // One statement: two servers taking the same challenge get it once.
            let row = tx.query_opt(
                "DELETE FROM unlock_challenges WHERE pc = $1 AND backup = $2 RETURNING nonce, expires",
                &[&pc, &backup],
            )?;
            let Some(row) = row else { return Ok(None) };
            let nonce: Vec<u8> = row.try_get(0)?;
            let expires: i64 = row.try_get(1)?;
            Ok(<[u8; 32]>::try_from(nonce.as_slice()).ok().map(|n| (n, expires)))
        })
    }

    fn add_ticket(&self, hash: &str, pc: &str, backup: i64, expires: i64, now: i64) -> Result<()> {
        self.tx("add_ticket", |tx| {
            tx.execute("DELETE FROM unlock_tickets WHERE expires <= $1", &[&now])?;
            tx.execute(
                "INSERT INTO unlock_tickets (hash, pc, backup, expires) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (hash) DO UPDATE SET pc = EXCLUDED.pc, backup = EXCLUDED.backup, expires = EXCLUDED.expires",
                &[&hash, &pc, &backup, &expires],
            )?;
            Ok(())
        })
    }

    fn ticket(&self, hash: &str) -> Result<Option<(String, i64, i64)>> {
        self.tx("ticket", |tx| {
            let row = tx.query_opt("SELECT pc, backup, expires FROM unlock_tickets WHERE hash = $1", &[&hash])?;
            row.map(|r| -> Result<_> { Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)) }).transpose()
        })
    }

    /// A session-level advisory lock on a connection of its own, held
    /// until the returned lock is dropped: every server's writers share
    /// it, one server's gc sweep excludes them all.
    fn store_lock(&self, exclusive: bool) -> Result<Option<crate::blobs::BlobLock>> {
        let idle = self.lockers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut client = match idle {
            Some(c) if !c.is_closed() => c,
            _ => self.open_one()?,
        };
        let lock = if exclusive { "pg_advisory_lock" } else { "pg_advisory_lock_shared" };
        client
            .execute(format!("SELECT {lock}($1, $2)").as_str(), &[&LOCK_SPACE, &LOCK_STORE])
            .with_context(|| format!("database {}: taking the chunk store's lock", self.place))?;
        let held = StoreLock { client: Some(client), exclusive, pool: self.lockers.clone() };
        Ok(Some(crate::blobs::BlobLock::holding(Box::new(held))))
    }
}
