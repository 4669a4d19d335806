//! A [`Store`] in a directory of a mounted filesystem (a USB drive, a
//! second disk): backups without a server. The layout and the rules are
//! the server's (server/src/blobs.rs), so a directory can be moved into a
//! server's store and back (`bootvault backups import-dir / export-dir`).
//! On a drive the store is the directory [`DRIVE_DIR`] at the root of
//! the filesystem.
//!
//! ```text
//! ROOT/chunks/XX/HEX      blobs, named by the BLAKE3 of their plain bytes
//! ROOT/manifests/ID.bvm   manifests of complete backups
//! ROOT/locks/ID.lock      a backup's restore-password lock (optional)
//! ROOT/uploads/ID.open    a backup being written: name, sizes, start time
//! ROOT/failed/ID.txt      a backup that failed, and why
//! ROOT/tmp/               files being written (renamed into place)
//! ROOT/writer.lock        held (flock) by the one process writing
//! ```
//!
//! Promises, as the server's: a chunk file is written only once its blob
//! decoded and hashed to its name; a manifest exists only once every
//! chunk it names is in the store and durable (one `syncfs` before the
//! manifest is written, synced and renamed into place), so a power cut
//! leaves a backup complete or absent, never half. The one index is the
//! directory itself: no database.
//!
//! One writer at a time ([`LocalStore::open`] takes an exclusive lock;
//! readers take a shared one). A writer that finds the traces of a backup
//! that never finished (the PC lost power, the drive was pulled) records
//! it as failed and deletes every chunk no complete backup names, the
//! unfinished backup's included: chunks written since the last complete
//! backup were never synced on purpose, so none of them is trusted. A
//! failed backup cleans up the same way at once, which gives the space
//! back on a drive that filled up.
//!
//! Restore passwords: the lock is kept next to the manifest, in the
//! server's form, and [`Store::unlock`] checks a password against it
//! before the manifest or a chunk of that backup is given out. The data
//! itself is not encrypted yet, so this stops a restore with bootvault,
//! not someone reading the drive (docs/DESIGN.md).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use bootvault_common::image::{self, ChunkId, Manifest};

use crate::client::BackupInfo;
use crate::lock::{self, Lock};
use crate::store::Store;
use crate::EngineError;

/// The store's directory at the root of a drive's filesystem.
pub const DRIVE_DIR: &str = "bootvault";

const SUBDIRS: [&str; 6] = ["chunks", "manifests", "locks", "uploads", "failed", "tmp"];

pub struct LocalStore {
    root: PathBuf,
    tmp_seq: AtomicU64,
    /// The flock on `writer.lock` (exclusive for a writer), held while
    /// the store is open.
    _lock: File,
    writer: bool,
    cleaned: Cleanup,
    unlocked: Mutex<HashSet<i64>>,
    /// The wrap keys of the passwords backups were unlocked with.
    wraps: Mutex<HashMap<i64, lock::WrapKey>>,
}

/// What opening a store for writing cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Backups found unfinished (a power cut, a pulled drive), now
    /// recorded as failed.
    pub interrupted: Vec<i64>,
    /// Chunks no complete backup names, deleted, and their bytes.
    pub chunks: u64,
    pub bytes: u64,
}

impl Cleanup {
    pub fn is_empty(&self) -> bool {
        self.interrupted.is_empty() && self.chunks == 0
    }

    /// `removed the unfinished backup 3 (12 chunks, 40.0 MiB)`.
    pub fn line(&self) -> String {
        let ids = self.interrupted.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let what = if self.interrupted.is_empty() {
            "removed leftovers".to_owned()
        } else {
            format!("removed the unfinished backup{} {ids}", if self.interrupted.len() > 1 { "s" } else { "" })
        };
        format!("{what} ({} chunks, {})", self.chunks, bootvault_common::units::human_bytes(self.bytes))
    }
}

fn io_err(what: impl std::fmt::Display, e: io::Error) -> EngineError {
    EngineError::new(format!("{what}: {e}"))
}

fn flock(f: &File, exclusive: bool) -> io::Result<()> {
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
    // SAFETY: flock on an open descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl LocalStore {
    /// Opens the store at `root` for backups (creating it), as its one
    /// writer, and cleans up what an unfinished backup left.
    pub fn open(root: &Path) -> Result<LocalStore, EngineError> {
        for sub in SUBDIRS {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| io_err(format!("creating {}", d.display()), e))?;
        }
        let mut store = Self::locked(root, true)?;
        store.cleaned = store.clean_up()?;
        Ok(store)
    }

    /// Opens an existing store to restore from; it is only read.
    pub fn open_read(root: &Path) -> Result<LocalStore, EngineError> {
        if !Self::exists(root) {
            return Err(EngineError::new(format!("{} holds no bootvault backups", root.display())));
        }
        Self::locked(root, false)
    }

    /// Marks every backup unlocked: for the holder of the escrow key, who
    /// opens a locked backup's own key without its password (the gate is
    /// this program's courtesy; the key is the protection).
    pub fn ungated(self) -> LocalStore {
        if let Ok(mut u) = self.unlocked.lock() {
            u.extend(self.lock_ids());
        }
        self
    }

    /// The backups that have a lock file.
    fn lock_ids(&self) -> Vec<i64> {
        let Ok(dir) = fs::read_dir(self.root.join("locks")) else { return Vec::new() };
        dir.flatten().filter_map(|e| e.file_name().to_str()?.strip_suffix(".lock")?.parse().ok()).collect()
    }

    /// Whether `root` looks like a store.
    pub fn exists(root: &Path) -> bool {
        root.join("manifests").is_dir() && root.join("chunks").is_dir()
    }

    fn locked(root: &Path, writer: bool) -> Result<LocalStore, EngineError> {
        let path = root.join("writer.lock");
        let f = if writer {
            OpenOptions::new().create(true).truncate(false).write(true).open(&path)
        } else {
            // A read-only filesystem, or a store made before the lock file.
            File::open(&path).or_else(|_| File::open(root.join("manifests")))
        }
        .map_err(|e| io_err(format!("opening {}", path.display()), e))?;
        flock(&f, writer).map_err(|e| match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => EngineError::new(format!(
                "{}: another bootvault is {} this store",
                root.display(),
                if writer { "using" } else { "writing to" }
            )),
            _ => io_err(format!("locking {}", path.display()), e),
        })?;
        Ok(LocalStore {
            root: root.to_owned(),
            tmp_seq: AtomicU64::new(0),
            _lock: f,
            writer,
            cleaned: Cleanup::default(),
            unlocked: Mutex::new(HashSet::new()),
            wraps: Mutex::new(HashMap::new()),
        })
    }

    /// What [`LocalStore::open`] cleaned up.
    pub fn cleaned(&self) -> &Cleanup {
        &self.cleaned
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let h = image::hex(id);
        self.root.join("chunks").join(&h[..2]).join(h)
    }

    fn manifest_path(&self, id: i64) -> PathBuf {
        self.root.join("manifests").join(format!("{id}.bvm"))
    }

    fn lock_path(&self, id: i64) -> PathBuf {
        self.root.join("locks").join(format!("{id}.lock"))
    }

    fn upload_path(&self, id: i64) -> PathBuf {
        self.root.join("uploads").join(format!("{id}.open"))
    }

    fn check_writer(&self) -> Result<(), EngineError> {
        if self.writer {
            Ok(())
        } else {
            Err(EngineError::new(format!("{} is open for reading only", self.root.display())))
        }
    }

    fn tmp_path(&self) -> PathBuf {
        self.root.join("tmp").join(format!(
            "{}-{}.tmp",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Writes `bytes` to a temporary file and renames it to `dest`;
    /// with `sync`, the file is flushed before the rename.
    fn write_file(&self, dest: &Path, bytes: &[u8], sync: bool) -> Result<(), EngineError> {
        let tmp = self.tmp_path();
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| io_err(format!("creating {}", parent.display()), e))?;
        }
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| if sync { f.sync_all() } else { Ok(()) }))
            .and_then(|()| fs::rename(&tmp, dest));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(format!("writing {}", dest.display()), e));
        }
        Ok(())
    }

    /// Flushes everything written to the store's filesystem (the
    /// directory entries of the chunks renamed into place included).
    fn sync_all(&self) -> Result<(), EngineError> {
        let f = File::open(&self.root).map_err(|e| io_err(format!("opening {}", self.root.display()), e))?;
        // SAFETY: syncfs on an open descriptor.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io_err(format!("flushing {}", self.root.display()), io::Error::last_os_error()));
        }
        Ok(())
    }

    fn ids_in(&self, sub: &str) -> Vec<i64> {
        let mut ids: Vec<i64> = fs::read_dir(self.root.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.split('.').next()?.parse().ok()))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Every backup id in use (complete, open or failed).
    fn ids(&self) -> Vec<i64> {
        ["manifests", "uploads", "failed"].iter().flat_map(|s| self.ids_in(s)).collect()
    }

    fn complete_manifest(&self, id: i64) -> Result<Manifest, EngineError> {
        let p = self.manifest_path(id);
        let bytes = fs::read(&p).map_err(|e| io_err(format!("backup {id} ({})", p.display()), e))?;
        Manifest::decode(&bytes).map_err(|e| EngineError::new(format!("manifest of backup {id} is damaged: {e}")))
    }

    /// Records unfinished backups as failed and deletes what no complete
    /// backup needs. Only a writer (holding the exclusive lock) calls it.
    fn clean_up(&self) -> Result<Cleanup, EngineError> {
        // Cut after its manifest was written: complete; only the marker is left.
        let (done, interrupted): (Vec<i64>, Vec<i64>) =
            self.ids_in("uploads").into_iter().partition(|&id| self.manifest_path(id).exists());
        for id in done {
            let _ = fs::remove_file(self.upload_path(id));
        }
        let tmp: Vec<PathBuf> =
            fs::read_dir(self.root.join("tmp")).into_iter().flatten().flatten().map(|e| e.path()).collect();
        if interrupted.is_empty() && tmp.is_empty() {
            return Ok(Cleanup::default());
        }
        for p in &tmp {
            let _ = fs::remove_file(p);
        }
        for &id in &interrupted {
            let why = format!("interrupted: the backup never finished (power cut or drive removed?); found {}", now());
            self.write_file(&self.root.join("failed").join(format!("{id}.txt")), why.as_bytes(), false)?;
            let _ = fs::remove_file(self.lock_path(id));
            let _ = fs::remove_file(self.upload_path(id));
        }
        let (chunks, bytes) = self.delete_unreferenced()?;
        self.sync_all()?;
        Ok(Cleanup { interrupted, chunks, bytes })
    }

    /// Deletes every chunk no complete manifest names. A manifest that
    /// cannot be read stops it: its chunks must not go.
    fn delete_unreferenced(&self) -> Result<(u64, u64), EngineError> {
        let mut keep: HashSet<ChunkId> = HashSet::new();
        for id in self.ids_in("manifests") {
            let m = self.complete_manifest(id)?;
            keep.extend(m.data_ids());
        }
        let (mut chunks, mut bytes) = (0u64, 0u64);
        for dir in fs::read_dir(self.root.join("chunks")).into_iter().flatten().flatten() {
            for e in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                let name = e.file_name();
                let known = name.to_str().and_then(image::parse_hex).is_some_and(|id| keep.contains(&id));
                if !known {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    if fs::remove_file(e.path()).is_ok() {
                        chunks += 1;
                        bytes += len;
                    }
                }
            }
        }
        Ok((chunks, bytes))
    }

    /// Whether the manifest and chunks of `backup` may be given out.
    fn check_unlocked(&self, backup: i64) -> Result<(), EngineError> {
        if !self.lock_path(backup).exists() {
            return Ok(());
        }
        let open = self.unlocked.lock().map(|u| u.contains(&backup)).unwrap_or(false);
        if open {
            Ok(())
        } else {
            Err(EngineError::new(format!(
                "backup {backup} is protected by a password: restore it at the console, or with --password-file"
            )))
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn open_backup(
        &self,
        name: &str,
        disk_bytes: u64,
        chunk_size: u32,
        lock: Option<&Lock>,
    ) -> Result<i64, EngineError> {
        self.check_writer()?;
        image::check_new_backup(disk_bytes, chunk_size).map_err(EngineError::new)?;
        // The next free id, claimed with O_EXCL (two writers never share one).
        let mut id = self.ids().into_iter().max().unwrap_or(0) + 1;
        loop {
            let p = self.upload_path(id);
            match OpenOptions::new().write(true).create_new(true).open(&p) {
                Ok(mut f) => {
                    let text = format!(
                        "name={}\ndisk_bytes={disk_bytes}\nchunk_size={chunk_size}\nstarted={}\n",
                        name.replace('\n', " "),
                        now()
                    );
                    f.write_all(text.as_bytes()).map_err(|e| io_err(format!("writing {}", p.display()), e))?;
                    if let Some(l) = lock {
                        let text = zeroize::Zeroizing::new(l.to_text() + "\n");
                        self.write_file(&self.lock_path(id), text.as_bytes(), true)?;
                    }
                    return Ok(id);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => id += 1,
                Err(e) => return Err(io_err(format!("creating {}", p.display()), e)),
            }
        }
    }

    fn missing(&self, _backup: i64, ids: &[ChunkId]) -> Result<Vec<u32>, EngineError> {
        Ok(ids
            .iter()
            .map(|id| fs::metadata(self.chunk_path(id)).map_or(0, |m| u32::try_from(m.len()).unwrap_or(0)))
            .collect())
    }

    fn put_chunk(&self, _backup: i64, id: &ChunkId, blob: &[u8]) -> Result<(), EngineError> {
        self.check_writer()?;
        if blob.first() == Some(&bootvault_common::seal::TAG_SEALED) {
            // Encrypted: checked in full by whoever holds the key, when restoring.
            image::check_sealed_shape(blob).map_err(|e| EngineError::new(format!("chunk {}: {e}", image::hex(id))))?;
        } else {
            let plain = image::decode_blob(blob, image::MAX_CHUNK_SIZE as usize)
                .map_err(|e| EngineError::new(format!("chunk {}: {e}", image::hex(id))))?;
            if image::chunk_id(&plain) != *id {
                return Err(EngineError::new(format!("chunk {}: its bytes do not match its name", image::hex(id))));
            }
        }
        let p = self.chunk_path(id);
        if p.exists() {
            return Ok(());
        }
        // Not synced one by one: `finish` syncs the filesystem once before
        // the manifest names them, and a backup that never finishes has
        // its chunks deleted (`clean_up`).
        self.write_file(&p, blob, false)
    }

    fn finish(&self, backup: i64, manifest: &[u8]) -> Result<(), EngineError> {
        self.check_writer()?;
        let upload = self.upload_path(backup);
        if !upload.exists() {
            return Err(EngineError::new(format!("backup {backup} is not being written")));
        }
        let m = Manifest::decode(manifest).map_err(|e| EngineError::new(format!("manifest: {e}")))?;
        if let Some(id) = m.data_ids().iter().find(|id| !self.chunk_path(id).exists()) {
            return Err(EngineError::new(format!("chunk {} is not in the store", image::hex(id))));
        }
        // Chunks (and their directory entries) durable before the manifest names them.
        self.sync_all()?;
        self.write_file(&self.manifest_path(backup), manifest, true)?;
        let _ = fs::remove_file(&upload);
        self.sync_all()
    }

    fn fail(&self, backup: i64, reason: &str) -> Result<(), EngineError> {
        self.check_writer()?;
        let reason: String = reason.lines().next().unwrap_or("").chars().take(500).collect();
        let _ = fs::remove_file(self.upload_path(backup));
        let _ = fs::remove_file(self.lock_path(backup));
        // Space first (the drive may be full), then the record.
        let cleaned = self.delete_unreferenced();
        self.write_file(&self.root.join("failed").join(format!("{backup}.txt")), reason.as_bytes(), false)?;
        cleaned?;
        self.sync_all()
    }

    fn manifest(&self, backup: i64) -> Result<Vec<u8>, EngineError> {
        let p = self.manifest_path(backup);
        if !p.exists() {
            return Err(EngineError::new(format!("no complete backup {backup} in {}", self.location())));
        }
        self.check_unlocked(backup)?;
        fs::read(&p).map_err(|e| io_err(format!("reading {}", p.display()), e))
    }

    fn chunk(&self, backup: i64, id: &ChunkId, limit: u64) -> Result<Vec<u8>, EngineError> {
        self.check_unlocked(backup)?;
        let p = self.chunk_path(id);
        let len = fs::metadata(&p).map_err(|e| io_err(format!("chunk {}", image::hex(id)), e))?.len();
        if len > limit {
            return Err(EngineError::new(format!("chunk {} is {len} bytes, over {limit}", image::hex(id))));
        }
        fs::read(&p).map_err(|e| io_err(format!("reading {}", p.display()), e))
    }

    fn backups(&self) -> Result<Vec<BackupInfo>, EngineError> {
        let mut out = Vec::new();
        if !self.root.join("manifests").is_dir() {
            return Err(EngineError::new(format!("{} holds no bootvault backups", self.location())));
        }
        for id in self.ids_in("manifests") {
            // A damaged manifest is left out of the list, not fatal to it.
            let Ok(m) = self.complete_manifest(id) else { continue };
            out.push(BackupInfo {
                id,
                pc: m.pc.clone(),
                name: m.name.clone(),
                created: i64::try_from(m.created).unwrap_or(i64::MAX),
                disk_bytes: m.disk_bytes,
                stored_bytes: m.blob_bytes(),
                locked: self.lock_path(id).exists(),
                model: m.model.clone(),
            });
        }
        Ok(out)
    }

    fn latest(&self, pc: &str, name: Option<&str>) -> Result<i64, EngineError> {
        self.backups()?
            .into_iter()
            .filter(|b| b.pc == pc && name.is_none_or(|n| b.name == n))
            .max_by_key(|b| (b.created, b.id))
            .map(|b| b.id)
            .ok_or_else(|| EngineError::new(format!("no complete backup of {pc} in {}", self.location())))
    }

    fn unlock(&self, backup: i64, password: &[u8]) -> Result<bool, EngineError> {
        let p = self.lock_path(backup);
        let text = match fs::read_to_string(&p) {
            Ok(t) => zeroize::Zeroizing::new(t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(format!("reading {}", p.display()), e)),
        };
        let stored = Lock::from_text(&text).map_err(|e| EngineError::new(format!("{}: {e}", p.display())))?;
        let (key, wrap) = lock::keys(password, stored.kdf, &stored.salt, &stored.params)?;
        // Compared in constant time, as the server compares proofs.
        if !bootvault_common::wire::ct_eq(&key[..], &stored.key[..]) {
            return Err(EngineError::new(format!("wrong password for backup {backup}")));
        }
        if let Ok(mut u) = self.unlocked.lock() {
            u.insert(backup);
        }
        if let Ok(mut w) = self.wraps.lock() {
            w.insert(backup, wrap);
        }
        Ok(true)
    }

    fn wrap_key(&self, backup: i64) -> Option<lock::WrapKey> {
        self.wraps.lock().ok()?.get(&backup).cloned()
    }
}
