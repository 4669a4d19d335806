//! The server's data directory as one coordinator: the HTTP API and the
//! admin CLI call [`Vault`], which keeps the rules (who may do what, when
//! a backup is complete) and delegates the keeping:
//!
//! * [`crate::db`] — the management database (`DATA/bootvault.db`);
//! * [`crate::blobs`] — chunks and manifests (`DATA/chunks/`, `DATA/manifests/`);
//! * [`crate::unlock`] — challenges, tickets, wrong-password waits;
//! * [`crate::netboot`] — the published boot files (`DATA/boot/`);
//! * `DATA/admin.token` — the admin's secret, here.
//!
//! Promises: a chunk exists only if its blob decoded and hashed to its
//! name; a backup is `complete` only after every chunk its manifest names
//! is in the store and the manifest itself is stored durably. `gc` keeps
//! what running backups use (see [`gc`]); `rights` keeps what a PC may
//! name in a manifest to what it sent or may read.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bootvault_common::image::{self, ChunkId, ImageReader, ImageWriter, Manifest, Record};

use crate::blobs::{self, BlobStore, FsBlobStore};
use crate::db::sqlite::SqliteDb;
use crate::db::{Completion, Database, NewBackup, NewJob, NewResult, PendingRules};
use crate::durable::DurableWriter;
use crate::netboot::BootFiles;
use crate::unlock::Unlocks;

pub mod admins;
mod gc;
pub mod migrate;
mod pcs;
mod rights;

pub use crate::db::{is_storage_full, BackupRow, JobRow, OpenUpload, PcRow, Pending, PendingRow, ResultRow};
pub use crate::secrets::{new_token, secret_eq};
pub use crate::unlock::{
    unlock_wait, BackupLock, Challenge, UnlockError, UnlockRefused, CHALLENGE_SECONDS, TICKET_SECONDS,
    UNLOCK_FIRST_WAIT, UNLOCK_FREE_TRIES, UNLOCK_MAX_WAIT,
};
pub use gc::{margins as gc_margins, GcPhase, GcReport, GC_MARGIN, TOUCH_SKIP};
pub use pcs::{PcChanges, PcView};
pub use rights::Rights;

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
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

/// A MAC address in the canonical form the database keeps
/// (`aa:bb:cc:dd:ee:ff`, lower case).
pub fn normalize_mac(v: &str) -> Option<String> {
    bootvault_common::units::parse_mac(v.trim()).map(bootvault_common::units::mac_string)
}

/// Setting: the server's own URLs as PCs reach it, comma-separated
/// (`bootvault settings server-urls`); builds without `--server` give the
/// PC all of them, and it goes on with the next when one does not answer.
pub const SERVER_URLS: &str = "server_urls";
/// Setting: `yes` lists unknown MACs that network-boot (`bootvault pc pending`).
pub const REGISTER_UNKNOWN: &str = "register_unknown";

/// Seconds between two writes of an upload's `last_active` (far below any
/// sensible `gc --max-age`).
const ACTIVE_EVERY: i64 = 2;

pub struct Vault {
    dir: PathBuf,
    db: Box<dyn Database>,
    blobs: Box<dyn BlobStore>,
    unlocks: Unlocks,
    boot: BootFiles,
    manifests: Mutex<rights::ManifestIds>,
    /// When each upload's `last_active` was last written (see `note_active`).
    active: Mutex<HashMap<i64, i64>>,
    /// Held from a quota check to the stored chunk's note, so two chunks
    /// of one PC sent at once cannot both fit the room left for one.
    quota: Mutex<()>,
}

impl Vault {
    /// The data directory, with the database and chunk store its
    /// `storage.conf` names (SQLite and chunk files in it by default).
    pub fn open(dir: &Path) -> Result<Vault> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let storage = crate::storage::Storage::load(dir)?;
        let db: Box<dyn Database> = match &storage.db {
            None => Box::new(SqliteDb::open(&dir.join("bootvault.db"))?),
            Some(url) => Box::new(
                crate::db::postgres::PgDb::connect(url)
                    .with_context(|| format!("the database {}", crate::storage::redact(url)))?,
            ),
        };
        let blobs: Box<dyn BlobStore> = match &storage.store {
            None => Box::new(FsBlobStore::open(dir)?),
            Some(url) => {
                Box::new(crate::blobs_s3::S3BlobStore::open(url).with_context(|| format!("the chunk store {url}"))?)
            }
        };
        Vault::with(dir, db, blobs)
    }

    /// A vault over any database and chunk store; `dir` holds the admin
    /// token, the boot files and `events.log`.
    pub fn with(dir: &Path, db: Box<dyn Database>, blobs: Box<dyn BlobStore>) -> Result<Vault> {
        fs::create_dir_all(dir.join("tmp")).with_context(|| format!("creating {}", dir.join("tmp").display()))?;
        let v = Vault {
            dir: dir.to_owned(),
            db,
            blobs,
            unlocks: Unlocks::default(),
            boot: BootFiles::new(dir),
            manifests: Mutex::new(rights::ManifestIds::default()),
            active: Mutex::new(HashMap::new()),
            quota: Mutex::new(()),
        };
        v.ensure_admin_token()?;
        Ok(v)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the admin token: the secret that admin requests over HTTP
    /// carry. Created on first open, readable by the server's user only.
    pub fn admin_token_path(&self) -> PathBuf {
        self.dir.join("admin.token")
    }

    fn ensure_admin_token(&self) -> Result<()> {
        let p = self.admin_token_path();
        if p.exists() {
            return Ok(());
        }
        // Two processes opening a new data directory at once: the first
        // one's token stays and both read it.
        let token = new_token()?;
        DurableWriter::new(&self.dir.join("tmp")).write_private(&p, format!("{token}\n").as_bytes(), false).map(|_| ())
    }

    pub fn admin_token(&self) -> Result<String> {
        let p = self.admin_token_path();
        Ok(fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_owned())
    }

    /// The chunk store's lock: the database's across servers (if it has
    /// one), then the store's own; shared by writers, exclusive by gc.
    fn store_lock(&self, exclusive: bool) -> Result<blobs::BlobLock> {
        let across = self.db.store_lock(exclusive)?;
        let here = self.blobs.lock(exclusive)?;
        Ok(match across {
            Some(across) => blobs::BlobLock::holding(Box::new((across, here))),
            None => here,
        })
    }

    fn manifest_cache(&self) -> std::sync::MutexGuard<'_, rights::ManifestIds> {
        self.manifests.lock().unwrap_or_else(|p| p.into_inner())
    }

    // PCs.

    /// The token of a registered PC (None: not registered).
    pub fn pc_token(&self, name: &str) -> Result<Option<String>> {
        self.db.pc_token(name)
    }

    /// The registered PC with this MAC, if any.
    pub fn pc_by_mac(&self, mac: &str) -> Result<Option<PcRow>> {
        let Some(mac) = normalize_mac(mac) else { return Ok(None) };
        Ok(self.list_pcs()?.into_iter().find(|p| p.mac == mac))
    }

    /// Registers a PC (the settings are checked by the caller) with a new
    /// token. Refuses a name or MAC already registered.
    pub fn add_pc(&self, pc: &PcRow) -> Result<PcRow> {
        self.db.add_pc(pc, &new_token()?, now())?;
        self.pc(&pc.name)?.ok_or_else(|| anyhow!("PC {} vanished", pc.name))
    }

    /// Replaces a registered PC's settings (not its token).
    pub fn edit_pc(&self, pc: &PcRow) -> Result<PcRow> {
        self.db.edit_pc(pc)?;
        self.pc(&pc.name)?.ok_or_else(|| anyhow!("PC {} vanished", pc.name))
    }

    pub fn pc(&self, name: &str) -> Result<Option<PcRow>> {
        Ok(self.list_pcs()?.into_iter().find(|p| p.name == name))
    }

    pub fn list_pcs(&self) -> Result<Vec<PcRow>> {
        self.db.list_pcs()
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
        self.db.remove_pc(name)?;
        Ok(backups.len() as u64)
    }

    pub fn seen_pc(&self, pc: &str, mac: &str, addr: &str) -> Result<()> {
        self.db.seen_pc(pc, mac, addr, now())
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
        let rules = PendingRules { expire_before: now - Self::PENDING_EXPIRE, max: Self::PENDING_MAX, admit_new };
        self.db.note_pending(&mac, addr, now, rules)
    }

    /// [`Vault::note_pending`] for a network boot from `peer`, which may
    /// list [`NEW_PENDING_PER_PEER`](crate::netboot::NEW_PENDING_PER_PEER)
    /// new MACs per window. The count is kept in the database (beside the
    /// failed sign-ins, under `pending-peer:ADDR`), so it holds across
    /// servers sharing it; two servers admitting at the same instant may
    /// pass it by one each, the list's own cap never.
    pub fn note_pending_from(&self, mac: &str, peer: &str, now: i64) -> Result<Pending> {
        let key = format!("pending-peer:{peer}");
        let window = crate::netboot::NEW_PENDING_WINDOW.as_secs() as i64;
        let admit = self.db.signin_failures(&key, now - window)? < crate::netboot::NEW_PENDING_PER_PEER;
        let noted = self.note_pending(mac, peer, now, admit)?;
        if noted == Pending::Added {
            // Pruned at the longer of the two windows, so neither kind
            // of count drops the other's.
            self.db.add_signin_failure(&[&key], now, now - window.max(admins::SIGNIN_WINDOW))?;
        }
        Ok(noted)
    }

    /// The listed unknown MACs seen within [`Vault::PENDING_EXPIRE`] of `now`.
    pub fn list_pending(&self, now: i64) -> Result<Vec<PendingRow>> {
        self.db.list_pending(now - Self::PENDING_EXPIRE)
    }

    /// Drops a pending entry (registered, or rejected by the admin).
    pub fn forget_pending(&self, mac: &str) -> Result<bool> {
        let mac = normalize_mac(mac).ok_or_else(|| anyhow!("bad MAC {mac:?}"))?;
        self.db.forget_pending(&mac)
    }

    /// An admin setting (e.g. `server_urls`, `register_unknown`).
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        self.db.setting(key)
    }

    pub fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        self.db.set_setting(key, value)
    }

    // Network boot.

    /// `DATA/boot/NAME`: the network-boot files published for PC `pc`.
    pub fn boot_dir(&self, pc: &str) -> PathBuf {
        self.boot.dir(pc)
    }

    /// The published boot files.
    pub fn boot_files(&self) -> &BootFiles {
        &self.boot
    }

    /// Publishes a registered PC's network-boot files (`vmlinuz`,
    /// `initrd.img`, `cmdline`), each written durably, so a PC booting
    /// meanwhile gets the old file or the new one, never half of one.
    /// Returns the bytes published.
    pub fn publish_boot_files(&self, pc: &str, files: &[(&str, Vec<u8>)]) -> Result<u64> {
        if self.pc(pc)?.is_none() {
            bail!("no registered PC {pc}");
        }
        self.boot.publish(pc, files)
    }

    /// Publishes the site's network-boot template (see [`crate::netboot`]).
    pub fn publish_site_template(&self, files: &[(&str, Vec<u8>)]) -> Result<()> {
        self.boot.publish_site(files)
    }

    /// Publishes registered PC `pc`'s boot files made from the site's
    /// template; false if there is no template (a `bootvault build ...
    /// --media pxe` publishes one).
    pub fn publish_from_site(&self, pc: &str) -> Result<bool> {
        let row = self.pc(pc)?.ok_or_else(|| anyhow!("no registered PC {pc}"))?;
        let Some(template) = self.boot.site() else { return Ok(false) };
        let files = crate::netboot::overlay_initrd(&template, &row)?;
        self.boot.publish(pc, &files)?;
        Ok(true)
    }

    // Grants.

    /// Lets `pc` (or every PC, `*`) restore backup `backup`.
    pub fn grant(&self, backup: i64, pc: &str) -> Result<()> {
        let row = self.backup(backup)?.ok_or_else(|| anyhow!("no backup {backup}"))?;
        if pc != "*" && self.pc(pc)?.is_none() {
            bail!("no registered PC {pc}");
        }
        if row.pc == pc {
            return Ok(());
        }
        self.db.grant(backup, pc, now())
    }

    pub fn revoke(&self, backup: i64, pc: &str) -> Result<bool> {
        self.db.revoke(backup, pc)
    }

    /// The PCs (or `*`) granted a backup, besides its owner.
    pub fn grants(&self, backup: i64) -> Result<Vec<String>> {
        self.db.grants(backup)
    }

    /// Whether `pc` may read backup `backup`: its own, or granted to it.
    pub fn can_read(&self, pc: &str, backup: &BackupRow) -> Result<bool> {
        if backup.pc == pc {
            return Ok(true);
        }
        self.db.granted(backup.id, pc)
    }

    /// Complete backups `pc` may restore: its own and those granted to it.
    pub fn visible_backups(&self, pc: &str) -> Result<Vec<BackupRow>> {
        self.db.visible_backups(pc)
    }

    // Restore passwords.

    /// The lock of a backup (None: no password, or no such backup).
    pub fn backup_lock(&self, id: i64) -> Result<Option<BackupLock>> {
        self.db.backup_lock(id)
    }

    /// Wrong passwords so far for (pc, backup), and when the last was.
    pub fn unlock_failures(&self, pc: &str, backup: i64) -> Result<(i64, i64)> {
        self.db.unlock_failures(pc, backup)
    }

    /// A challenge for `pc` to unlock `backup` (None: it has no password).
    /// It replaces any open one for the same pair.
    pub fn challenge(&self, pc: &str, backup: i64, now: i64) -> Result<Option<Challenge>, UnlockError> {
        self.unlocks.challenge(self.db.as_ref(), pc, backup, now)
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
    ) -> Result<(), UnlockError> {
        self.unlocks.verify(self.db.as_ref(), pc, backup, nonce, proof, now)
    }

    /// [`Vault::verify_unlock`], then a ticket for (pc, backup).
    pub fn unlock(
        &self,
        pc: &str,
        backup: i64,
        nonce: &[u8; 32],
        proof: &[u8; 32],
        now: i64,
    ) -> Result<String, UnlockError> {
        self.verify_unlock(pc, backup, nonce, proof, now)?;
        self.issue_ticket(pc, backup, now)
            .map_err(|e| UnlockError { kind: UnlockRefused::Internal, message: e.to_string() })
    }

    /// A ticket letting `pc` read locked backup `backup` for a day.
    pub fn issue_ticket(&self, pc: &str, backup: i64, now: i64) -> Result<String> {
        self.unlocks.issue_ticket(self.db.as_ref(), pc, backup, now)
    }

    /// Whether `ticket` lets `pc` read `backup` now.
    pub fn ticket_ok(&self, pc: &str, backup: i64, ticket: &str, now: i64) -> bool {
        self.unlocks.ticket_ok(self.db.as_ref(), pc, backup, ticket, now)
    }

    // Backups.

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
        self.create_backup_at(pc, name, now(), disk_bytes, chunk_size, lock)
    }

    /// [`Vault::create_backup_locked`] of a backup made at `created` (an
    /// import keeps the time the backup was taken).
    pub fn create_backup_at(
        &self,
        pc: &str,
        name: &str,
        created: i64,
        disk_bytes: u64,
        chunk_size: u32,
        lock: Option<&BackupLock>,
    ) -> Result<i64> {
        // Also the CLI's and import's way in; `disk_bytes` then fits the i64 column.
        image::check_new_backup(disk_bytes, chunk_size).map_err(|e| anyhow!(e))?;
        if let Some(l) = lock {
            l.params.check().map_err(|e| anyhow!("lock: {e}"))?;
        }
        // A backup made earlier (an import) is active now, not at its creation.
        let last_active = if created < now() { now() } else { 0 };
        self.db.create_backup(&NewBackup { pc, name, created, last_active, disk_bytes, chunk_size, lock })
    }

    /// A complete backup of `pc` with this name, creation time and
    /// manifest digest (hex), if the vault has one.
    pub fn find_complete(&self, pc: &str, name: &str, created: i64, digest: &str) -> Result<Option<i64>> {
        self.db.find_complete(pc, name, created, digest)
    }

    pub fn backup(&self, id: i64) -> Result<Option<BackupRow>> {
        self.db.backup(id)
    }

    pub fn list_backups(&self, pc: Option<&str>, all: bool) -> Result<Vec<BackupRow>> {
        self.db.list_backups(pc, all)
    }

    pub fn latest(&self, pc: &str, name: Option<&str>) -> Result<Option<i64>> {
        self.db.latest(pc, name)
    }

    /// Stored blob length, if the chunk is in the store.
    pub fn blob_len(&self, id: &ChunkId) -> Option<u32> {
        self.blobs.len(id).ok().flatten()
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
    ) -> Result<bool, PutError> {
        let storage = PutError::Storage;
        if let Some(b) = backup {
            let row = self.backup(b).map_err(storage)?.ok_or_else(|| PutError::Closed(format!("no backup {b}")))?;
            if row.state != "uploading" {
                return Err(PutError::Closed(format!("backup {b} is {}, not being uploaded", row.state)));
            }
        }
        let stored = self.blobs.len(id).map_err(storage)?;
        let trusted = match (pc, stored) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(p), Some(_)) => {
                self.rights(p, backup).map_err(storage)?.may_name(self.db.as_ref(), id).map_err(storage)?
            }
        };
        let verified = if trusted { None } else { Some(blobs::verify(id, blob).map_err(PutError::Bad)?) };
        let _lock = self.store_lock(false).map_err(storage)?;
        let mut _quota = None;
        let stored_now = match self.blobs.touch(id, gc::margins().1).map_err(storage)? {
            // A plain blob proves itself (its BLAKE3 is its name); an
            // encrypted one cannot, so a proven plain blob replaces an
            // encrypted one stored under the same name: no PC can squat a
            // plain chunk's name with bytes that are not that chunk.
            Some(_) => {
                if let Some(v) = &verified {
                    let sealed = |b: &[u8]| b.first() == Some(&bootvault_common::seal::TAG_SEALED);
                    if !sealed(blob) && sealed(&self.blobs.get(id, u64::MAX).map_err(storage)?) {
                        self.blobs.put(v).map_err(storage)?;
                    }
                }
                false
            }
            None => {
                if let Some(p) = pc {
                    if let Some(quota) = self.quota_of(p).map_err(PutError::Quota)? {
                        _quota = Some(self.quota.lock().unwrap_or_else(|e| e.into_inner()));
                        self.fits_quota(p, quota, blob.len() as u64).map_err(PutError::Quota)?;
                    }
                }
                let verified = match verified {
                    Some(v) => v,
                    // Trusted because stored, and removed since: check it now.
                    None => blobs::verify(id, blob).map_err(PutError::Bad)?,
                };
                self.blobs.put(&verified).map_err(storage)?;
                true
            }
        };
        if let Some(b) = backup {
            let t = now();
            self.db.note_chunk(b, id, stored_now.then_some(blob.len() as u64), t).map_err(storage)?;
            self.active_written(b, t);
        }
        Ok(stored_now)
    }

    /// For each id: the stored blob's length if the store has the chunk and
    /// `pc` (None: the admin) may name it in upload `backup`, else 0 (send
    /// it). Chunks answered as stored are marked in use (see `gc`).
    pub fn missing(&self, backup: i64, pc: Option<&str>, ids: &[ChunkId]) -> Result<Vec<u32>> {
        let rights = pc.map(|p| self.rights(p, Some(backup))).transpose()?;
        let _lock = self.store_lock(false)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let allowed = match &rights {
                None => true,
                Some(r) => r.may_name(self.db.as_ref(), id)?,
            };
            out.push(if allowed { self.blobs.touch(id, gc::margins().1)?.unwrap_or(0) } else { 0 });
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
            self.db.note_active(backup, t)?;
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

    /// Completes a backup (see the module's promises), trusted (the
    /// admin, an import): any stored chunk may be named.
    pub fn finish_backup(&self, id: i64, pc: &str, bytes: &[u8]) -> Result<BackupRow, FinishError> {
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
    ) -> Result<BackupRow, FinishError> {
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
            let _lock = self.store_lock(false).map_err(|e| bad(e.to_string()))?;
            for (i, c) in m.chunks.iter().enumerate() {
                let image::Chunk::Data { id: cid, .. } = c else { continue };
                let (off, _) = m.chunk_range(i);
                if let Some(r) = &rights {
                    if !r.may_name(self.db.as_ref(), cid).map_err(|e| bad(e.to_string()))? {
                        return Err(FinishError {
                            conflict: false,
                            forbidden: true,
                            message: format!(
                                "chunk {i} (offset {off}) was not sent by this backup and is in no backup {pc} may read"
                            ),
                        });
                    }
                }
                if self.blobs.touch(cid, gc::margins().1).map_err(|e| bad(e.to_string()))?.is_none() {
                    return Err(FinishError {
                        conflict: true,
                        forbidden: false,
                        message: format!("chunk {i} (offset {off}) is not in the store"),
                    });
                }
            }
            self.blobs.put_manifest(id, bytes).map_err(|e| bad(format!("{e:#}")))?;
        }
        let digest = image::hex(&m.digest());
        let done = Completion {
            chunks: m.chunks.len() as u64,
            zero_chunks: m.zero_chunks(),
            blob_bytes: m.blob_bytes(),
            digest: &digest,
            model: &m.model,
        };
        self.db.complete_backup(id, &done, now()).map_err(|e| bad(e.to_string()))?;
        self.backup(id).map_err(|e| bad(e.to_string()))?.ok_or_else(|| bad(format!("backup {id} vanished")))
    }

    pub fn fail_backup(&self, id: i64, reason: &str) -> Result<()> {
        if !self.db.fail_backup(id, reason, now())? {
            bail!("backup {id} is not being uploaded");
        }
        Ok(())
    }

    /// The manifest of a complete backup.
    pub fn manifest(&self, id: i64) -> Result<Vec<u8>> {
        match self.backup(id)? {
            Some(r) if r.state == "complete" => self.blobs.manifest(id),
            Some(r) => bail!("backup {id} is {}", r.state),
            None => bail!("no backup {id}"),
        }
    }

    pub fn chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.blobs.get(id, u64::MAX)
    }

    pub fn delete_backup(&self, id: i64) -> Result<()> {
        if self.backup(id)?.is_none() {
            bail!("no backup {id}");
        }
        // The row goes first: a gc reading manifests meanwhile then sees
        // the backup gone, not a complete backup without its manifest.
        self.db.delete_backup(id)?;
        self.manifest_cache().forget(id);
        self.blobs.delete_manifest(id);
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
                if m.sealed.is_some() {
                    // Encrypted: the key is not here; the shape and size are.
                    image::check_sealed_shape(&blob).map_err(|e| anyhow!("chunk {i} at offset {off}: {e}"))?;
                } else {
                    image::decode_verified(&blob, len, cid).map_err(|e| anyhow!("chunk {i} at offset {off}: {e}"))?;
                }
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
        let t = now();
        let upload = self.db.create_backup(&NewBackup {
            pc: pc.unwrap_or("(import)"),
            name: "(import)",
            created: t,
            last_active: t,
            disk_bytes: 0,
            chunk_size: r.chunk_size(),
            lock: None,
        })?;
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
                    self.db.set_origin(upload, &pc, &m.name, m.disk_bytes, m.chunk_size)?;
                    // The manifest keeps its original PC; the row says whose copy it is now.
                    self.finish_backup(upload, &pc, &m.encode()).map_err(|e| anyhow!("{}", e.message))?;
                    return Ok(upload);
                }
                None => bail!("the image file ended without a manifest"),
            }
        }
    }

    // Jobs and results.

    pub fn add_job(&self, pc: &str, action: &str, disk: &str, name: &str, backup: Option<i64>) -> Result<i64> {
        self.add_job_with(pc, action, disk, name, backup, None, false, None)
    }

    /// A job with a restore password: `lock` for a backup job (the PC
    /// locks the backup with it), `unlocked` for a restore job whose proof
    /// the caller checked ([`Vault::verify_unlock`]) for this PC. A restore
    /// job of a locked backup without it is refused.
    /// `wrap` goes to the PC with the job: the password's wrap key sealed
    /// with the site's data key (hex), which opens (or, for a backup job,
    /// makes) a locked backup's own key; the server cannot open it.
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
        wrap: Option<&str>,
    ) -> Result<i64> {
        let sealed = 2 * bootvault_common::seal::SEALED_SECRET_BYTES;
        if wrap.is_some_and(|w| w.len() != sealed || !w.bytes().all(|b| b.is_ascii_hexdigit())) {
            bail!("wrap: expected {sealed} hex digits");
        }
        if wrap.is_some() && lock.is_none() && !unlocked {
            bail!("a sealed wrap key goes with a password (a backup job's lock, or a restore job's proof)");
        }
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
        let wrap = wrap.map(str::to_owned);
        let job = NewJob { pc, action, disk, name, backup, lock: lock.map(BackupLock::to_text), unlocked, wrap };
        self.db.add_job(&job, now())
    }

    /// The oldest queued job of `pc`, now marked running.
    pub fn next_job(&self, pc: &str) -> Result<Option<JobRow>> {
        self.db.next_job(pc, now())
    }

    pub fn list_jobs(&self, pc: Option<&str>) -> Result<Vec<JobRow>> {
        self.db.list_jobs(pc)
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
        let r = NewResult { pc, job, action, disk, backup, ok, message, bytes, sent, seconds };
        self.db.record_result(&r, now())
    }

    /// When the last gc started (0: never).
    pub fn last_gc(&self) -> Result<i64> {
        self.db.last_gc()
    }

    /// Ends a queued job before a PC takes it, saying so in its result;
    /// false if it was not waiting any more.
    pub fn cancel_job(&self, id: i64, message: &str) -> Result<bool> {
        self.db.cancel_job(id, message, now())
    }

    pub fn list_results(&self, pc: Option<&str>) -> Result<Vec<ResultRow>> {
        self.db.list_results(pc)
    }
}
