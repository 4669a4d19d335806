//! `bootvault backups import-dir` and `export-dir`: moving complete
//! backups between a local store (a directory `bootvault backup --to`
//! wrote, or a drive with one in `bootvault/`; see
//! `bootvault_engine::local_store`) and a server's vault.
//!
//! Both ways keep the stores' rules: a chunk is verified (decoded, hashed
//! to its name) before it is written, and only copied when the other side
//! lacks it; a backup becomes complete only once every chunk it names is
//! stored; its restore-password lock goes with it. A backup already on
//! the other side (same PC, name, creation time and manifest digest) is
//! skipped, so running either twice copies nothing.
//!
//! Import reads the local store's files itself (it may be on a read-only
//! drive; locked backups are copied, not opened): only `manifests/` and
//! `locks/` and the chunks they name, never `uploads/` or `failed/`.
//! Export writes through `LocalStore`, its one writer.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bootvault_common::image::{self, ChunkId, Manifest};
use bootvault_common::units::human_bytes;
use bootvault_engine::local_store::{LocalStore, DRIVE_DIR};
use bootvault_engine::store::Store;
use bootvault_server::vault::{BackupLock, Vault};

/// Chunk ids asked about at once.
const BATCH: usize = 1024;

/// The store at `path`, or in `path/bootvault/` (a drive's root).
pub fn store_root(path: &Path) -> Result<PathBuf> {
    if LocalStore::exists(path) {
        return Ok(path.to_owned());
    }
    let on_drive = path.join(DRIVE_DIR);
    if LocalStore::exists(&on_drive) {
        return Ok(on_drive);
    }
    bail!("{} holds no local store (neither manifests/ and chunks/ nor {DRIVE_DIR}/ with them)", path.display())
}

/// The complete backups of a local store: (local id, manifest path), by id.
fn local_manifests(root: &Path) -> Result<Vec<(i64, PathBuf)>> {
    let dir = root.join("manifests");
    let mut out: Vec<(i64, PathBuf)> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.strip_suffix(".bvm")?.parse().ok()?;
            Some((id, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Ids in `root/sub/` (unfinished or failed backups), for the report.
fn ids_in(root: &Path, sub: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = fs::read_dir(root.join(sub))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.split('.').next()?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// The data chunk ids a manifest names, each once, in order.
fn unique_ids(m: &Manifest) -> Vec<ChunkId> {
    let mut seen = HashSet::new();
    m.data_ids().into_iter().filter(|id| seen.insert(*id)).collect()
}

/// What happened to one backup.
#[derive(Debug, serde::Serialize)]
pub struct Moved {
    pub from: i64,
    /// Its id on the other side (None: it failed).
    pub to: Option<i64>,
    pub pc: String,
    pub name: String,
    pub skipped: bool,
    pub locked: bool,
    pub chunks: u64,
    pub copied_bytes: u64,
    pub present_bytes: u64,
    pub error: Option<String>,
}

impl Moved {
    fn new(from: i64, pc: &str, name: &str) -> Moved {
        Moved {
            from,
            to: None,
            pc: pc.to_owned(),
            name: name.to_owned(),
            skipped: false,
            locked: false,
            chunks: 0,
            copied_bytes: 0,
            present_bytes: 0,
            error: None,
        }
    }

    /// One line: `local backup 1 → server backup 7 (lab-1 "full"): ...`.
    fn line(&self, from: &str, to: &str) -> String {
        let head = format!("{from} backup {} → {to} backup", self.from);
        let who = format!("({} {:?}{})", self.pc, self.name, if self.locked { ", locked" } else { "" });
        match (&self.error, self.to, self.skipped) {
            (Some(e), _, _) => format!("{from} backup {}: not copied: {e}", self.from),
            (None, Some(to_id), true) => format!("{head} {to_id} {who}: already there, skipped"),
            (None, to_id, _) => format!(
                "{head} {} {who}: {} chunks, {} copied, {} already there",
                to_id.map(|i| i.to_string()).unwrap_or_else(|| "?".into()),
                self.chunks,
                human_bytes(self.copied_bytes),
                human_bytes(self.present_bytes)
            ),
        }
    }
}

/// Prints the lines and a summary; an error if any backup failed.
fn report(moved: &[Moved], from: &str, to: &str, notes: &[String], as_json: bool) -> Result<()> {
    let failed = moved.iter().filter(|m| m.error.is_some()).count();
    let skipped = moved.iter().filter(|m| m.skipped).count();
    let copied = moved.len() - failed - skipped;
    let bytes: u64 = moved.iter().map(|m| m.copied_bytes).sum();
    let present: u64 = moved.iter().map(|m| m.present_bytes).sum();
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "backups": moved, "copied": copied, "skipped": skipped, "failed": failed,
                "copied_bytes": bytes, "present_bytes": present, "notes": notes,
            }))?
        );
    } else {
        for m in moved {
            let line = m.line(from, to);
            if m.error.is_some() {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
        for n in notes {
            println!("{n}");
        }
        println!(
            "{copied} backups copied, {skipped} already there, {failed} failed; {} copied, {} already there",
            human_bytes(bytes),
            human_bytes(present)
        );
    }
    if failed > 0 {
        bail!("{failed} of {} backups were not copied (see above)", moved.len());
    }
    Ok(())
}

/// `backups import-dir PATH [--pc NAME]`.
pub fn import_dir(v: &Vault, path: &Path, pc: Option<&str>, as_json: bool) -> Result<()> {
    let root = store_root(path)?;
    // Shared: no writer cleans up while we read (readers may be many).
    let _reading = LocalStore::open_read(&root)?;
    if let Some(p) = pc {
        if v.pc(p)?.is_none() {
            bail!("--pc {p}: no registered PC {p} (bootvault pc add {p} --mac ...)");
        }
    }
    let mut moved = Vec::new();
    for (id, file) in local_manifests(&root)? {
        let mut m = Moved::new(id, pc.unwrap_or("?"), "?");
        if let Err(e) = import_one(v, &root, id, &file, pc, &mut m) {
            m.error = Some(format!("{e:#}"));
        }
        moved.push(m);
    }
    let mut notes = Vec::new();
    for (sub, what) in [("uploads", "unfinished"), ("failed", "failed")] {
        let ids = ids_in(&root, sub);
        if !ids.is_empty() {
            let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
            notes.push(format!("not imported: {what} local backup(s) {list} ({sub}/)"));
        }
    }
    report(&moved, "local", "server", &notes, as_json)
}

fn import_one(v: &Vault, root: &Path, id: i64, file: &Path, pc: Option<&str>, out: &mut Moved) -> Result<()> {
    let bytes = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let m = Manifest::decode(&bytes).map_err(|e| anyhow!("{}: the manifest is damaged: {e}", file.display()))?;
    let owner = pc.unwrap_or(&m.pc).to_owned();
    (out.pc, out.name) = (owner.clone(), m.name.clone());
    if v.pc(&owner)?.is_none() {
        bail!(
            "it is a backup of PC {owner}, which is not registered with this server: register it \
             (bootvault pc add {owner} --mac ...) or pass --pc NAME"
        );
    }
    let created = i64::try_from(m.created).map_err(|_| anyhow!("{}: creation time out of range", file.display()))?;
    let lock_file = root.join("locks").join(format!("{id}.lock"));
    let lock = match fs::read_to_string(&lock_file) {
        Ok(text) => Some(BackupLock::from_text(&text).with_context(|| format!("{}", lock_file.display()))?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", lock_file.display())),
    };
    out.locked = lock.is_some();
    let digest = image::hex(&m.digest());
    if let Some(existing) = v.find_complete(&owner, &m.name, created, &digest)? {
        (out.to, out.skipped) = (Some(existing), true);
        return Ok(());
    }
    // An open upload while chunks arrive, so gc keeps them (as a PC's backup).
    let upload = v.create_backup_at(&owner, &m.name, created, m.disk_bytes, m.chunk_size, lock.as_ref())?;
    out.to = Some(upload);
    let copied = copy_in(v, root, upload, &m, out)
        .and_then(|()| v.finish_backup(upload, &owner, &bytes).map(|_| ()).map_err(|e| anyhow!("{}", e.message)));
    if let Err(e) = copied {
        let reason: String = format!("import-dir failed: {e:#}").chars().take(500).collect();
        let _ = v.fail_backup(upload, &reason);
        out.to = None;
        return Err(e.context(format!("server upload {upload} failed")));
    }
    Ok(())
}

/// Sends the chunks the vault lacks (verified on the way in).
fn copy_in(v: &Vault, root: &Path, upload: i64, m: &Manifest, out: &mut Moved) -> Result<()> {
    let ids = unique_ids(m);
    out.chunks = ids.len() as u64;
    for batch in ids.chunks(BATCH) {
        let lens = v.missing(upload, None, batch)?;
        for (id, len) in batch.iter().zip(lens) {
            if len > 0 {
                out.present_bytes += u64::from(len);
                continue;
            }
            let p = bootvault_server::blobs::FsBlobStore::chunk_path_in(root, id);
            let size = fs::metadata(&p)
                .with_context(|| format!("chunk {} is missing from the local store ({})", image::hex(id), p.display()))?
                .len();
            if size > u64::from(image::MAX_CHUNK_SIZE) + 1024 {
                bail!("chunk {} is damaged: {size} bytes ({})", image::hex(id), p.display());
            }
            let blob = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            v.put_chunk(id, &blob, Some(upload))
                .map_err(|e| anyhow!("{e:#} ({}): the local store is damaged", p.display()))?;
            out.copied_bytes += blob.len() as u64;
        }
    }
    Ok(())
}

/// Which server backups `export-dir` writes.
pub enum Selection {
    Ids(Vec<i64>),
    Pc(String),
    All,
}

/// `backups export-dir PATH (--backup ID... | --pc NAME | --all)`.
pub fn export_dir(v: &Vault, path: &Path, which: Selection, as_json: bool) -> Result<()> {
    let ids: Vec<i64> = match which {
        Selection::Ids(ids) => ids,
        Selection::Pc(pc) => v.list_backups(Some(&pc), false)?.iter().map(|b| b.id).collect(),
        Selection::All => v.list_backups(None, false)?.iter().map(|b| b.id).collect(),
    };
    if ids.is_empty() {
        bail!("no complete backups to export");
    }
    let root = store_root(path).unwrap_or_else(|_| path.to_owned());
    let store = LocalStore::open(&root)?;
    let mut notes = Vec::new();
    if !store.cleaned().is_empty() {
        notes.push(format!("{}: {}", root.display(), store.cleaned().line()));
    }
    // What the local store holds already: manifest digests.
    let mut present: Vec<(i64, String)> = Vec::new();
    for (id, file) in local_manifests(&root)? {
        if let Ok(m) = fs::read(&file).map_err(anyhow::Error::from).and_then(|b| Ok(Manifest::decode(&b)?)) {
            present.push((id, image::hex(&m.digest())));
        }
    }
    let mut moved = Vec::new();
    for id in ids {
        let mut m = Moved::new(id, "?", "?");
        if let Err(e) = export_one(v, &store, id, &present, &mut m) {
            m.error = Some(format!("{e:#}"));
        }
        moved.push(m);
    }
    report(&moved, "server", "local", &notes, as_json)
}

fn export_one(v: &Vault, store: &LocalStore, id: i64, present: &[(i64, String)], out: &mut Moved) -> Result<()> {
    let row = v.backup(id)?.ok_or_else(|| anyhow!("no backup {id}"))?;
    (out.pc, out.name, out.locked) = (row.pc.clone(), row.name.clone(), row.locked);
    let bytes = v.manifest(id)?;
    let m = Manifest::decode(&bytes).map_err(|e| anyhow!("the manifest of backup {id} is damaged: {e}"))?;
    let digest = image::hex(&m.digest());
    if let Some((local, _)) = present.iter().find(|(_, d)| *d == digest) {
        (out.to, out.skipped) = (Some(*local), true);
        return Ok(());
    }
    let lock = v
        .backup_lock(id)?
        .map(|l| bootvault_engine::lock::Lock::from_text(&bootvault_engine::lock::Zeroizing::new(l.to_text())))
        .transpose()?;
    let local = store.open_backup(&m.name, m.disk_bytes, m.chunk_size, lock.as_ref())?;
    out.to = Some(local);
    let ids = unique_ids(&m);
    out.chunks = ids.len() as u64;
    let copied = (|| -> Result<()> {
        for batch in ids.chunks(BATCH) {
            let lens = store.missing(local, batch)?;
            for (cid, len) in batch.iter().zip(lens) {
                if len > 0 {
                    out.present_bytes += u64::from(len);
                    continue;
                }
                let blob = v.chunk(cid).with_context(|| format!("backup {id} is damaged"))?;
                store.put_chunk(local, cid, &blob)?;
                out.copied_bytes += blob.len() as u64;
            }
        }
        store.finish(local, &bytes)?;
        Ok(())
    })();
    if let Err(e) = copied {
        let _ = store.fail(local, &format!("export-dir failed: {e:#}"));
        out.to = None;
        return Err(e);
    }
    Ok(())
}
