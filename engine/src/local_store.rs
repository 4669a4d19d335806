//! A [`Store`] in a directory of a mounted filesystem (a USB drive, a
//! second disk): backups without a server. The layout and the rules are
//! the server's (server/src/vault.rs), so a directory can be moved into a
//! server's store and back:
//!
//! ```text
//! ROOT/chunks/XX/HEX      blobs, named by the BLAKE3 of their plain bytes
//! ROOT/manifests/ID.bvm   manifests of complete backups
//! ROOT/uploads/ID.open    a backup being written: name, sizes, start time
//! ROOT/failed/ID.txt      a backup that failed, and why
//! ROOT/tmp/               files being written (renamed into place)
//! ```
//!
//! Promises, as the server's: a chunk file exists only if its blob
//! decoded and hashed to its name; a manifest exists only once every
//! chunk it names is in the store, and it is written last (synced, then
//! renamed), so a power cut leaves a backup complete or absent, never
//! half. The one index is the directory itself: no database.
//!
//! Not yet: restore passwords (they are challenge–response with a server;
//! a locked local backup is refused when opened).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bootvault_common::image::{self, ChunkId, Manifest};

use crate::client::BackupInfo;
use crate::lock::Lock;
use crate::store::Store;
use crate::EngineError;

pub struct LocalStore {
    root: PathBuf,
    tmp_seq: AtomicU64,
}

fn io_err(what: impl std::fmt::Display, e: io::Error) -> EngineError {
    EngineError::new(format!("{what}: {e}"))
}

impl LocalStore {
    /// Opens (creating its directories) the store at `root`.
    pub fn open(root: &Path) -> Result<LocalStore, EngineError> {
        for sub in ["chunks", "manifests", "uploads", "failed", "tmp"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| io_err(format!("creating {}", d.display()), e))?;
        }
        Ok(LocalStore { root: root.to_owned(), tmp_seq: AtomicU64::new(0) })
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let h = image::hex(id);
        self.root.join("chunks").join(&h[..2]).join(h)
    }

    fn manifest_path(&self, id: i64) -> PathBuf {
        self.root.join("manifests").join(format!("{id}.bvm"))
    }

    fn upload_path(&self, id: i64) -> PathBuf {
        self.root.join("uploads").join(format!("{id}.open"))
    }

    /// Writes `bytes` to a temporary file, syncs it and renames it to `dest`.
    fn durable_write(&self, dest: &Path, bytes: &[u8]) -> Result<(), EngineError> {
        let tmp = self.root.join("tmp").join(format!(
            "{}-{}.tmp",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| io_err(format!("creating {}", parent.display()), e))?;
        }
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
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

    /// Every backup id in use (complete, open or failed).
    fn ids(&self) -> Vec<i64> {
        let mut ids = Vec::new();
        for sub in ["manifests", "uploads", "failed"] {
            for e in fs::read_dir(self.root.join(sub)).into_iter().flatten().flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if let Some(id) = name.split('.').next().and_then(|n| n.parse::<i64>().ok()) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    fn complete_manifest(&self, id: i64) -> Result<Manifest, EngineError> {
        let p = self.manifest_path(id);
        let bytes = fs::read(&p).map_err(|e| io_err(format!("backup {id} ({})", p.display()), e))?;
        Manifest::decode(&bytes).map_err(|e| EngineError::new(format!("manifest of backup {id} is damaged: {e}")))
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
        if lock.is_some() {
            return Err(EngineError::new(
                "a restore password needs the server; a backup on a local drive cannot have one yet",
            ));
        }
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
        let plain = image::decode_blob(blob, image::MAX_CHUNK_SIZE as usize)
            .map_err(|e| EngineError::new(format!("chunk {}: {e}", image::hex(id))))?;
        if image::chunk_id(&plain) != *id {
            return Err(EngineError::new(format!("chunk {}: its bytes do not match its name", image::hex(id))));
        }
        let p = self.chunk_path(id);
        if p.exists() {
            return Ok(());
        }
        self.durable_write(&p, blob)
    }

    fn finish(&self, backup: i64, manifest: &[u8]) -> Result<(), EngineError> {
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
        self.durable_write(&self.manifest_path(backup), manifest)?;
        let _ = fs::remove_file(&upload);
        self.sync_all()
    }

    fn fail(&self, backup: i64, reason: &str) -> Result<(), EngineError> {
        let reason: String = reason.lines().next().unwrap_or("").chars().take(500).collect();
        self.durable_write(&self.root.join("failed").join(format!("{backup}.txt")), reason.as_bytes())?;
        let _ = fs::remove_file(self.upload_path(backup));
        Ok(())
    }

    fn manifest(&self, backup: i64) -> Result<Vec<u8>, EngineError> {
        let p = self.manifest_path(backup);
        fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => EngineError::new(format!("no complete backup {backup} in {}", self.location())),
            _ => io_err(format!("reading {}", p.display()), e),
        })
    }

    fn chunk(&self, _backup: i64, id: &ChunkId, limit: u64) -> Result<Vec<u8>, EngineError> {
        let p = self.chunk_path(id);
        let len = fs::metadata(&p).map_err(|e| io_err(format!("chunk {}", image::hex(id)), e))?.len();
        if len > limit {
            return Err(EngineError::new(format!("chunk {} is {len} bytes, over {limit}", image::hex(id))));
        }
        fs::read(&p).map_err(|e| io_err(format!("reading {}", p.display()), e))
    }

    fn backups(&self) -> Result<Vec<BackupInfo>, EngineError> {
        let mut out = Vec::new();
        let mut ids: Vec<i64> = fs::read_dir(self.root.join("manifests"))
            .map_err(|e| io_err(format!("listing {}", self.location()), e))?
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".bvm").and_then(|n| n.parse().ok()))
            .collect();
        ids.sort_unstable();
        for id in ids {
            // A damaged manifest is left out of the list, not fatal to it.
            let Ok(m) = self.complete_manifest(id) else { continue };
            out.push(BackupInfo {
                id,
                pc: m.pc.clone(),
                name: m.name.clone(),
                created: i64::try_from(m.created).unwrap_or(i64::MAX),
                disk_bytes: m.disk_bytes,
                stored_bytes: m.blob_bytes(),
                locked: false,
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
}
