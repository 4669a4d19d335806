//! `bootvault migrate`: everything one vault's database and chunk store
//! hold, copied into another vault's (SQLite and chunk files ⇄ PostgreSQL
//! and a bucket), so that the data directory can switch to it.
//!
//! Moves: registered PCs (settings, tokens, quotas, last contact), the
//! settings, the web console's accounts (their Argon2id hashes as
//! stored), every complete backup (its row, restore-password lock,
//! manifest and each chunk it names, verified as an upload's chunk is
//! before it is written), grants, wrong-password counts, queued jobs and
//! the results history. Not moved: uploads in progress or failed, jobs a
//! PC is running or finished (their results move), the pending-MAC list,
//! sign-in sessions and failures, open unlock challenges and tickets.
//!
//! Backup ids: [`crate::db::Database`] numbers new rows itself and has no
//! insert with a given id, so the target's ids may differ; grants, jobs,
//! results and wrong-password counts follow the map old → new that
//! [`Migration::backups`] reports.
//!
//! Re-runs: a target backup that is the same backup (PC, name, creation
//! time and manifest digest, as `find_complete`) is kept; an unfinished
//! one that a stopped run left is removed and done again; every other row
//! is written only where it is missing or differs. So running it again
//! after an interruption finishes the job and duplicates nothing. A
//! target that holds anything else (backups, PCs, accounts the source
//! does not have) is refused.
//!
//! Owns the copy and its check; never writes to the source, and does not
//! switch the data directory (`storage.conf` is the caller's).

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Context, Result};
use bootvault_common::image::{self, ChunkId, Manifest};
use serde::Serialize;

use super::{gc, now, BackupRow, Vault, REGISTER_UNKNOWN, SERVER_URLS};
use crate::blobs;
use crate::db::{Completion, NewBackup, NewJob, NewResult};

/// The largest blob read from the source: a chunk's bytes and its
/// encoding's overhead (a larger file is damage, not a chunk).
const BLOB_LIMIT: u64 = image::MAX_CHUNK_SIZE as u64 + 1024;

/// Items named at most in one refusal.
const NAMED_MAX: usize = 6;

/// What a migration did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Migration {
    /// Registered PCs in the target now.
    pub pcs: u64,
    pub admins: u64,
    /// Every complete backup of the source, in id order.
    pub backups: Vec<MovedBackup>,
    pub chunks_copied: u64,
    pub bytes_copied: u64,
    /// Chunks the target store had already (an earlier run, or shared).
    pub chunks_present: u64,
    pub bytes_present: u64,
    pub grants: u64,
    pub queued_jobs: u64,
    pub results: u64,
    /// Unfinished target backups a stopped run left, removed.
    pub leftovers_removed: u64,
    /// What was not moved, one line each.
    pub left_out: Vec<String>,
}

/// One complete backup: its id in the source and in the target.
#[derive(Debug, Clone, Serialize)]
pub struct MovedBackup {
    pub from: i64,
    pub to: i64,
    pub pc: String,
    pub name: String,
    pub locked: bool,
    /// Already complete in the target (an earlier run): only what the
    /// target store lost since is copied.
    pub present: bool,
    /// Distinct data chunks its manifest names.
    pub chunks: u64,
    /// Blob bytes this backup brought to the target store.
    pub copied_bytes: u64,
}

impl MovedBackup {
    /// `row` as `to` in the target, nothing copied yet.
    fn of(row: &BackupRow, to: i64, present: bool) -> MovedBackup {
        MovedBackup {
            from: row.id,
            to,
            pc: row.pc.clone(),
            name: row.name.clone(),
            locked: row.locked,
            present,
            chunks: 0,
            copied_bytes: 0,
        }
    }
}

/// A backup as the same backup in two databases.
type Key = (String, String, i64, String);

fn key(b: &BackupRow) -> Key {
    (b.pc.clone(), b.name.clone(), b.created, b.digest.clone())
}

fn describe(b: &BackupRow) -> String {
    format!(
        "backup {} ({} {:?} of {}, {})",
        b.id,
        b.pc,
        b.name,
        bootvault_common::units::utc_datetime(b.created),
        b.state
    )
}

/// The data chunk ids a manifest names, each once, in order.
fn unique_ids(m: &Manifest) -> Vec<ChunkId> {
    let mut seen = HashSet::new();
    m.data_ids().into_iter().filter(|id| seen.insert(*id)).collect()
}

/// `a, b, c and 4 more`.
fn some_of(items: &[String]) -> String {
    let shown = items.iter().take(NAMED_MAX).cloned().collect::<Vec<_>>().join(", ");
    match items.len().saturating_sub(NAMED_MAX) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// What the target holds of the source's: complete backups already
/// moved, by key (oldest first), and unfinished ones a stopped run left.
struct TargetState {
    present: HashMap<Key, Vec<i64>>,
    leftovers: Vec<i64>,
}

/// What the source looks like, to notice a server writing to it while it
/// is being migrated.
#[derive(PartialEq, Eq)]
struct Snapshot {
    backups: Vec<(i64, String)>,
    pcs: Vec<(String, String)>,
    results: usize,
    jobs: Vec<(i64, String)>,
}

impl Vault {
    /// Copies everything this vault holds into `target` (see the module
    /// doc), verifying each chunk before it is written; `progress` hears
    /// of each backup as it is done. Stops at the first error, leaving
    /// the target for a later run to finish.
    pub fn migrate_into(&self, target: &Vault, progress: &mut dyn FnMut(&MovedBackup)) -> Result<Migration> {
        let before = self.snapshot()?;
        let sources = self.db.list_backups(None, false)?;
        let mut state = self.survey(target, &sources)?;
        let mut out = Migration::default();
        for id in std::mem::take(&mut state.leftovers) {
            target.delete_backup(id).with_context(|| format!("removing the target's unfinished backup {id}"))?;
            out.leftovers_removed += 1;
        }
        self.move_settings(target)?;
        out.admins = self.move_admins(target)?;
        out.pcs = self.move_pcs(target)?;

        let mut map = HashMap::new();
        let mut done = HashSet::new();
        for row in &sources {
            let existing = state.present.get_mut(&key(row)).filter(|ids| !ids.is_empty()).map(|ids| ids.remove(0));
            let moved = match existing {
                Some(to) => self.refill(target, row, to, &mut done, &mut out),
                None => self.move_backup(target, row, &mut done, &mut out),
            }
            .with_context(|| format!("backup {} ({} {:?})", row.id, row.pc, row.name))?;
            map.insert(row.id, moved.to);
            progress(&moved);
            out.backups.push(moved);
        }
        out.grants = self.move_grants(target, &out.backups)?;
        self.move_unlock_failures(target, &out.backups)?;
        out.queued_jobs = self.move_jobs(target, &map, &mut out.left_out)?;
        out.results = self.move_results(target, &map)?;
        let unfinished: Vec<String> = self
            .db
            .list_backups(None, true)?
            .iter()
            .filter(|b| b.state != "complete")
            .map(|b| format!("{} of {}", b.id, b.pc))
            .collect();
        if !unfinished.is_empty() {
            out.left_out.push(format!("unfinished or failed uploads (never moved): {}", some_of(&unfinished)));
        }
        if self.snapshot()? != before {
            bail!(
                "{} changed while it was being migrated (a server still running on it?): stop every server using it \
                 and run migrate again; what was moved stays, the rest follows",
                self.dir.display()
            );
        }
        Ok(out)
    }

    /// Reads back what [`Vault::migrate_into`] wrote: every moved
    /// backup's row and manifest, each chunk it names present in the
    /// target store, and the PCs (tokens, quotas), accounts and grants as
    /// here. Returns the chunks checked.
    pub fn verify_migration(&self, target: &Vault, m: &Migration) -> Result<u64> {
        let mut checked = HashSet::new();
        for b in &m.backups {
            let row = self.backup(b.from)?.ok_or_else(|| anyhow!("backup {} is gone from the source", b.from))?;
            let there = target.backup(b.to)?.ok_or_else(|| anyhow!("backup {} is not in the target", b.to))?;
            if there.state != "complete" || key(&there) != key(&row) || there.locked != row.locked {
                bail!("the target's backup {} is not the source's {}: {}", b.to, b.from, describe(&there));
            }
            let bytes =
                target.blobs.manifest(b.to).with_context(|| format!("the target's manifest of backup {}", b.to))?;
            let man = Manifest::decode(&bytes).map_err(|e| anyhow!("the target's manifest of backup {}: {e}", b.to))?;
            if image::hex(&man.digest()) != row.digest {
                bail!("the target's manifest of backup {} is not the source's", b.to);
            }
            for id in unique_ids(&man) {
                if checked.contains(&id) {
                    continue;
                }
                if target.blobs.len(&id)?.is_none() {
                    bail!("chunk {} of backup {} is not in the target store", image::hex(&id), b.to);
                }
                checked.insert(id);
            }
            let (mut want, mut have) = (self.db.grants(b.from)?, target.db.grants(b.to)?);
            want.sort();
            have.sort();
            if want != have {
                bail!("backup {} is granted to {want:?} here but {have:?} in the target", b.from);
            }
        }
        let theirs: HashMap<String, _> = target.list_pcs()?.into_iter().map(|p| (p.name.clone(), p)).collect();
        for p in self.list_pcs()? {
            let t = theirs.get(&p.name).ok_or_else(|| anyhow!("PC {} is not in the target", p.name))?;
            if t.token != p.token || t.mac != p.mac || self.db.pc_quota(&p.name)? != target.db.pc_quota(&p.name)? {
                bail!("PC {} differs in the target (token, MAC or quota)", p.name);
            }
        }
        for (name, _) in self.db.list_admins()? {
            if self.db.admin_hash(&name)? != target.db.admin_hash(&name)? {
                bail!("admin account {name} differs in the target");
            }
        }
        Ok(checked.len() as u64)
    }

    fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            backups: self.db.list_backups(None, false)?.into_iter().map(|b| (b.id, b.digest)).collect(),
            pcs: self.list_pcs()?.into_iter().map(|p| (p.name, p.token)).collect(),
            results: self.db.list_results(None)?.len(),
            jobs: self.db.list_jobs(None)?.into_iter().map(|j| (j.id, j.state)).collect(),
        })
    }

    /// Sorts the target's backups into this vault's (already moved, or
    /// left unfinished by a stopped run) and refuses a target holding
    /// anything else.
    fn survey(&self, target: &Vault, sources: &[BackupRow]) -> Result<TargetState> {
        let mut wanted: HashMap<Key, usize> = HashMap::new();
        for b in sources {
            *wanted.entry(key(b)).or_default() += 1;
        }
        let started: HashSet<(&str, &str, i64)> =
            sources.iter().map(|b| (b.pc.as_str(), b.name.as_str(), b.created)).collect();
        let mut state = TargetState { present: HashMap::new(), leftovers: Vec::new() };
        let mut foreign = Vec::new();
        for b in target.db.list_backups(None, true)? {
            if b.state == "complete" {
                match wanted.get_mut(&key(&b)) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        state.present.entry(key(&b)).or_default().push(b.id);
                    }
                    _ => foreign.push(describe(&b)),
                }
            } else if started.contains(&(b.pc.as_str(), b.name.as_str(), b.created)) {
                state.leftovers.push(b.id);
            } else {
                foreign.push(describe(&b));
            }
        }
        let pcs: HashSet<String> = self.list_pcs()?.into_iter().map(|p| p.name).collect();
        foreign.extend(
            target.list_pcs()?.into_iter().filter(|p| !pcs.contains(&p.name)).map(|p| format!("PC {}", p.name)),
        );
        let admins: HashSet<String> = self.db.list_admins()?.into_iter().map(|(n, _)| n).collect();
        foreign.extend(
            target
                .db
                .list_admins()?
                .into_iter()
                .filter(|(n, _)| !admins.contains(n))
                .map(|(n, _)| format!("admin account {n}")),
        );
        if !foreign.is_empty() {
            bail!(
                "the target database already holds what {} does not: {}; migrate fills an empty database, or one an \
                 earlier migrate of this directory began",
                self.dir.display(),
                some_of(&foreign)
            );
        }
        Ok(state)
    }

    fn move_settings(&self, target: &Vault) -> Result<()> {
        for k in [SERVER_URLS, REGISTER_UNKNOWN] {
            let v = self.db.setting(k)?;
            if target.db.setting(k)? != v {
                target.db.set_setting(k, v.as_deref())?;
            }
        }
        let last_gc = self.db.last_gc()?;
        if target.db.last_gc()? < last_gc {
            target.db.set_last_gc(last_gc)?;
        }
        Ok(())
    }

    /// The web console's accounts, their password hashes as they are.
    fn move_admins(&self, target: &Vault) -> Result<u64> {
        let admins = self.db.list_admins()?;
        for (name, created) in &admins {
            let hash = self.db.admin_hash(name)?.ok_or_else(|| anyhow!("admin account {name} vanished"))?;
            match target.db.admin_hash(name)? {
                None => target.db.add_admin(name, &hash, *created)?,
                Some(h) if h != hash => {
                    target.db.set_admin_hash(name, &hash)?;
                }
                Some(_) => {}
            }
        }
        Ok(admins.len() as u64)
    }

    /// Registered PCs with their tokens unchanged, so every PC's boot
    /// media keep working.
    fn move_pcs(&self, target: &Vault) -> Result<u64> {
        let theirs: HashMap<String, _> = target.list_pcs()?.into_iter().map(|p| (p.name.clone(), p)).collect();
        let pcs = self.list_pcs()?;
        for p in &pcs {
            match theirs.get(&p.name) {
                None => target.db.add_pc(p, &p.token, now()).with_context(|| format!("PC {}", p.name))?,
                Some(t) => {
                    let settings = |r: &super::PcRow| {
                        (r.mac.clone(), r.ip.clone(), r.gateway.clone(), r.dns.clone(), r.mode.clone(), r.disk.clone())
                    };
                    if settings(t) != settings(p) || t.default_action != p.default_action {
                        target.db.edit_pc(p).with_context(|| format!("PC {}", p.name))?;
                    }
                    if t.token != p.token {
                        target.db.set_pc_token(&p.name, &p.token)?;
                    }
                }
            }
            let quota = self.db.pc_quota(&p.name)?;
            if target.db.pc_quota(&p.name)? != quota {
                target.db.set_pc_quota(&p.name, quota)?;
            }
            let seen = theirs.get(&p.name).and_then(|t| t.last_seen);
            if let Some(t) = p.last_seen.filter(|t| seen != Some(*t)) {
                target.db.seen_pc(&p.name, "", &p.last_addr, t)?;
            }
        }
        Ok(pcs.len() as u64)
    }

    /// A complete backup's manifest here, checked against its row.
    fn source_manifest(&self, row: &BackupRow) -> Result<(Vec<u8>, Manifest)> {
        let bytes = self.blobs.manifest(row.id).context("reading its manifest")?;
        let m = Manifest::decode(&bytes).map_err(|e| anyhow!("its manifest is damaged: {e}"))?;
        if image::hex(&m.digest()) != row.digest {
            bail!(
                "its manifest does not match the database (digest {}, recorded {})",
                image::hex(&m.digest()),
                row.digest
            );
        }
        Ok((bytes, m))
    }

    /// A backup an earlier run moved: whatever the target store lacks of
    /// it (chunks, its manifest) is copied again, nothing else.
    fn refill(
        &self,
        target: &Vault,
        row: &BackupRow,
        to: i64,
        done: &mut HashSet<ChunkId>,
        out: &mut Migration,
    ) -> Result<MovedBackup> {
        let (bytes, m) = self.source_manifest(row)?;
        let mut moved = MovedBackup::of(row, to, true);
        self.copy_chunks(target, &unique_ids(&m), done, out, &mut moved)?;
        put_manifest(target, to, &bytes)?;
        Ok(moved)
    }

    /// One complete backup: an upload in the target (so its gc keeps the
    /// chunks meanwhile), the chunks the target lacks, verified, then the
    /// manifest, then complete; the row as it is here.
    fn move_backup(
        &self,
        target: &Vault,
        row: &BackupRow,
        done: &mut HashSet<ChunkId>,
        out: &mut Migration,
    ) -> Result<MovedBackup> {
        let (bytes, m) = self.source_manifest(row)?;
        let lock = self.db.backup_lock(row.id)?;
        let to = target.db.create_backup(&NewBackup {
            pc: &row.pc,
            name: &row.name,
            created: row.created,
            last_active: now(),
            disk_bytes: row.disk_bytes,
            chunk_size: row.chunk_size,
            lock: lock.as_ref(),
        })?;
        let mut moved = MovedBackup::of(row, to, false);
        let filled = self.fill_backup(target, row, &bytes, &m, done, out, &mut moved);
        if let Err(e) = &filled {
            // Left failed for the admin to see; the next run removes it.
            let reason: String = format!("migrate stopped: {e:#}").chars().take(500).collect();
            let _ = target.db.fail_backup(to, &reason, now());
        }
        filled.map(|()| moved)
    }

    #[allow(clippy::too_many_arguments)]
    fn fill_backup(
        &self,
        target: &Vault,
        row: &BackupRow,
        bytes: &[u8],
        m: &Manifest,
        done: &mut HashSet<ChunkId>,
        out: &mut Migration,
        moved: &mut MovedBackup,
    ) -> Result<()> {
        let ids = unique_ids(m);
        self.copy_chunks(target, &ids, done, out, moved)?;
        self.carry_received(target, row, moved.to, &ids)?;
        put_manifest(target, moved.to, bytes)?;
        let done_row = Completion {
            chunks: row.chunks,
            zero_chunks: row.zero_chunks,
            blob_bytes: row.blob_bytes,
            digest: &row.digest,
            model: &row.model,
        };
        target.db.complete_backup(moved.to, &done_row, row.finished.unwrap_or_else(now))
    }

    /// Copies the chunks of `ids` the target store lacks, each verified
    /// first; those it has are marked in use. `done`: handled in this run.
    fn copy_chunks(
        &self,
        target: &Vault,
        ids: &[ChunkId],
        done: &mut HashSet<ChunkId>,
        out: &mut Migration,
        moved: &mut MovedBackup,
    ) -> Result<()> {
        moved.chunks = ids.len() as u64;
        // Marked in use under the lock, as an upload's chunks are, so a gc
        // on the target keeps them.
        let _lock = target.store_lock(false)?;
        for id in ids {
            if done.contains(id) {
                continue;
            }
            match target.blobs.touch(id, gc::margins().1)? {
                Some(len) => {
                    out.chunks_present += 1;
                    out.bytes_present += u64::from(len);
                }
                None => {
                    let blob = self.blobs.get(id, BLOB_LIMIT)?;
                    let verified = blobs::verify(id, &blob).map_err(|e| anyhow!("{e}: the source store is damaged"))?;
                    target.blobs.put(&verified).with_context(|| format!("writing chunk {}", image::hex(id)))?;
                    out.chunks_copied += 1;
                    out.bytes_copied += blob.len() as u64;
                    moved.copied_bytes += blob.len() as u64;
                }
            }
            done.insert(*id);
        }
        Ok(())
    }

    /// What the upload sent (`received_bytes`, `received_chunks`, which a
    /// PC's quota counts) as recorded here, spread over the backup's chunks.
    fn carry_received(&self, target: &Vault, row: &BackupRow, to: i64, ids: &[ChunkId]) -> Result<()> {
        let n = row.received_chunks;
        if n == 0 {
            return Ok(());
        }
        let (each, rest) = (row.received_bytes / n, row.received_bytes % n);
        let t = now();
        for i in 0..n {
            let id = ids.get(i as usize % ids.len().max(1)).copied().unwrap_or([0u8; 32]);
            target.db.note_chunk(to, &id, Some(each + if i == 0 { rest } else { 0 }), t)?;
        }
        Ok(())
    }

    fn move_grants(&self, target: &Vault, moved: &[MovedBackup]) -> Result<u64> {
        let mut n = 0;
        for b in moved {
            let have = target.db.grants(b.to)?;
            for pc in self.db.grants(b.from)? {
                if !have.contains(&pc) {
                    target.db.grant(b.to, &pc, now())?;
                }
                n += 1;
            }
        }
        Ok(n)
    }

    /// Wrong-password counts of locked backups, so a PC guessing goes on
    /// waiting as long.
    fn move_unlock_failures(&self, target: &Vault, moved: &[MovedBackup]) -> Result<()> {
        let pcs = self.list_pcs()?;
        for b in moved.iter().filter(|b| b.locked) {
            for p in &pcs {
                let (count, last) = self.db.unlock_failures(&p.name, b.from)?;
                let (have, _) = target.db.unlock_failures(&p.name, b.to)?;
                for _ in have..count {
                    target.db.add_unlock_failure(&p.name, b.to, last)?;
                }
            }
        }
        Ok(())
    }

    /// Queued jobs (with their locks and sealed keys, which go to the PC
    /// once); a running one is named in `left_out`.
    fn move_jobs(&self, target: &Vault, map: &HashMap<i64, i64>, left_out: &mut Vec<String>) -> Result<u64> {
        type JobKey = (String, String, String, String, Option<i64>, i64);
        let mut have: HashMap<JobKey, usize> = HashMap::new();
        for j in target.db.list_jobs(None)?.into_iter().filter(|j| j.state == "queued") {
            *have.entry((j.pc, j.action, j.disk, j.name, j.backup, j.created)).or_default() += 1;
        }
        let mut n = 0;
        for j in self.db.list_jobs(None)? {
            if j.state == "running" {
                left_out.push(format!(
                    "job {} of PC {} is running: not moved (its result cannot reach the new database; queue it again)",
                    j.id, j.pc
                ));
                continue;
            }
            if j.state != "queued" {
                continue;
            }
            let backup = match j.backup {
                None => None,
                Some(b) => match map.get(&b) {
                    Some(to) => Some(*to),
                    None => {
                        left_out.push(format!(
                            "queued job {} of PC {}: its backup {b} is not complete, not moved",
                            j.id, j.pc
                        ));
                        continue;
                    }
                },
            };
            n += 1;
            let k = (j.pc.clone(), j.action.clone(), j.disk.clone(), j.name.clone(), backup, j.created);
            if let Some(c) = have.get_mut(&k).filter(|c| **c > 0) {
                *c -= 1;
                continue;
            }
            let job = NewJob {
                pc: &j.pc,
                action: &j.action,
                disk: &j.disk,
                name: &j.name,
                backup,
                lock: j.lock.clone(),
                unlocked: j.unlocked,
                wrap: j.wrap.clone(),
            };
            target.db.add_job(&job, j.created)?;
        }
        Ok(n)
    }

    /// The results history, each at its own time; backup ids mapped (a
    /// backup not moved: none), job ids dropped (the jobs are not moved).
    fn move_results(&self, target: &Vault, map: &HashMap<i64, i64>) -> Result<u64> {
        type ResultKey = (String, String, String, Option<i64>, bool, String, u64, u64, u64, i64);
        let k = |r: &crate::db::ResultRow, backup: Option<i64>| -> ResultKey {
            (
                r.pc.clone(),
                r.action.clone(),
                r.disk.clone(),
                backup,
                r.ok,
                r.message.clone(),
                r.bytes,
                r.sent,
                r.seconds.to_bits(),
                r.at,
            )
        };
        let mut have: HashMap<ResultKey, usize> = HashMap::new();
        for r in target.db.list_results(None)? {
            *have.entry(k(&r, r.backup)).or_default() += 1;
        }
        let results = self.db.list_results(None)?;
        for r in &results {
            let backup = r.backup.and_then(|b| map.get(&b).copied());
            if let Some(c) = have.get_mut(&k(r, backup)).filter(|c| **c > 0) {
                *c -= 1;
                continue;
            }
            let new = NewResult {
                pc: &r.pc,
                job: None,
                action: &r.action,
                disk: &r.disk,
                backup,
                ok: r.ok,
                message: &r.message,
                bytes: r.bytes,
                sent: r.sent,
                seconds: r.seconds,
            };
            target.db.record_result(&new, r.at)?;
        }
        Ok(results.len() as u64)
    }
}

/// Stores a backup's manifest in the target under `to`, unless the same
/// is there. Manifests are stored by id: another database's is never
/// replaced.
fn put_manifest(target: &Vault, to: i64, bytes: &[u8]) -> Result<()> {
    match target.blobs.manifest(to) {
        Ok(there) if there == bytes => Ok(()),
        Ok(_) => bail!(
            "the target store already holds another manifest under backup id {to} (a store another database uses?): \
             migrate into an unused bucket prefix"
        ),
        Err(_) => target.blobs.put_manifest(to, bytes),
    }
}
