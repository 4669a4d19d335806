//! The content-addressed chunk store (and the manifests of complete
//! backups) behind one interface.
//!
//! A chunk is a blob (`bootvault_common::image`'s encoding) named by the
//! BLAKE3 of its plain bytes. [`BlobStore::put`] takes only a
//! [`VerifiedBlob`], which [`verify`] makes after decoding and hashing:
//! a stored chunk always decoded and hashed to its name. Writes are
//! atomic (a reader sees a whole blob or none). [`FsBlobStore`] is the
//! local implementation, the layout `bootvault backup --to` also writes:
//!
//! ```text
//! DATA/chunks/XX/HEX        blobs (XX: the first two hex digits)
//! DATA/manifests/ID.bvm     manifests of complete backups
//! DATA/chunks.lock          shared by writers, exclusive by gc's sweep
//! DATA/tmp/                 files being written (renamed into place)
//! ```
//!
//! Writers mark the chunks they ask about, send or name ([`BlobStore::touch`])
//! so gc keeps them (see `vault/gc.rs` for why that is safe). Owns bytes
//! and their marks; not which backup needs which chunk (the manifests'
//! content and the database are the vault's).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bootvault_common::image::{self, ChunkId};

use crate::durable::DurableWriter;

/// A blob that decoded and hashed to its id ([`verify`]).
pub struct VerifiedBlob<'a> {
    id: ChunkId,
    bytes: &'a [u8],
}

impl VerifiedBlob<'_> {
    pub fn id(&self) -> &ChunkId {
        &self.id
    }

    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

/// Decodes `blob` and checks that its plain bytes hash to `id` (an
/// encrypted blob: its shape only); the error names the chunk.
pub fn verify<'a>(id: &ChunkId, blob: &'a [u8]) -> Result<VerifiedBlob<'a>, String> {
    // Encrypted on the PC: the server holds no key, so it checks the shape
    // only; the PCs check the rest before writing a byte (docs/DESIGN.md).
    if blob.first() == Some(&bootvault_common::seal::TAG_SEALED) {
        image::check_sealed_shape(blob).map_err(|e| format!("chunk {}: {e}", image::hex(id)))?;
        return Ok(VerifiedBlob { id: *id, bytes: blob });
    }
    let plain = image::decode_blob(blob, image::MAX_CHUNK_SIZE as usize)
        .map_err(|e| format!("chunk {}: {e}", image::hex(id)))?;
    let got = image::chunk_id(&plain);
    if got != *id {
        return Err(format!("chunk {}: content hashes to {}", image::hex(id), image::hex(&got)));
    }
    Ok(VerifiedBlob { id: *id, bytes: blob })
}

/// A held store lock (released when dropped): shared by writers while
/// they touch and write, exclusive by gc while it removes.
pub struct BlobLock {
    _held: Box<dyn Send>,
}

impl BlobLock {
    /// A lock held while `held` lives (a store's own guard: a file lock,
    /// an in-process lock; see `blobs_s3.rs`).
    pub fn holding(held: Box<dyn Send>) -> BlobLock {
        BlobLock { _held: held }
    }
}

/// One stored chunk as gc sees it.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    /// None: a file whose name is no chunk id (left by hand; gc removes it).
    pub id: Option<ChunkId>,
    /// The store's own name for it (for [`BlobStore::remove`]).
    pub key: String,
    pub len: u64,
    /// When it was last written or touched (unix seconds).
    pub touched: i64,
}

pub trait BlobStore: Send + Sync {
    /// The stored blob's length (None: not stored).
    fn len(&self, id: &ChunkId) -> Result<Option<u32>>;
    /// [`BlobStore::len`], marking the chunk in use now unless it was
    /// marked within `skip` seconds. Call with the lock held shared.
    fn touch(&self, id: &ChunkId, skip: i64) -> Result<Option<u32>>;
    /// Stores a verified blob atomically (replacing an equal one is harmless).
    fn put(&self, blob: &VerifiedBlob<'_>) -> Result<()>;
    /// The blob of chunk `id`, refused when over `limit` bytes.
    fn get(&self, id: &ChunkId, limit: u64) -> Result<Vec<u8>>;
    /// Removes a chunk; false if it was not stored.
    fn delete(&self, id: &ChunkId) -> Result<bool>;
    /// Takes the store lock, shared or exclusive.
    fn lock(&self, exclusive: bool) -> Result<BlobLock>;
    /// The groups the store is swept by (gc holds the lock exclusive for
    /// one group at a time).
    fn groups(&self) -> Result<Vec<String>>;
    /// The chunks of one group.
    fn list(&self, group: &str) -> Result<Vec<StoredBlob>>;
    /// Removes a listed entry.
    fn remove(&self, entry: &StoredBlob) -> Result<()>;
    /// Removes temporary files older than `before` (writes that died).
    fn clean_temp(&self, before: i64);

    /// Stores a complete backup's manifest durably.
    fn put_manifest(&self, backup: i64, bytes: &[u8]) -> Result<()>;
    fn manifest(&self, backup: i64) -> Result<Vec<u8>>;
    fn delete_manifest(&self, backup: i64);
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// [`BlobStore`] in a data directory (the layout in the module doc).
pub struct FsBlobStore {
    dir: PathBuf,
    writer: DurableWriter,
}

impl FsBlobStore {
    /// Opens the store in `dir`, creating its directories.
    pub fn open(dir: &Path) -> Result<FsBlobStore> {
        for sub in ["chunks", "manifests", "tmp"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        Ok(FsBlobStore { dir: dir.to_owned(), writer: DurableWriter::new(&dir.join("tmp")) })
    }

    /// `DIR/chunks/XX/HEX`: where chunk `id` lives in a store rooted at `dir`
    /// (the server's data directory or a local store).
    pub fn chunk_path_in(dir: &Path, id: &ChunkId) -> PathBuf {
        let h = image::hex(id);
        dir.join("chunks").join(&h[..2]).join(h)
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        Self::chunk_path_in(&self.dir, id)
    }

    fn manifest_path(&self, backup: i64) -> PathBuf {
        self.dir.join("manifests").join(format!("{backup}.bvm"))
    }
}

impl BlobStore for FsBlobStore {
    fn len(&self, id: &ChunkId) -> Result<Option<u32>> {
        match fs::metadata(self.chunk_path(id)) {
            Ok(m) => Ok(Some(m.len() as u32)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.chunk_path(id).display())),
        }
    }

    fn touch(&self, id: &ChunkId, skip: i64) -> Result<Option<u32>> {
        let p = self.chunk_path(id);
        let meta = match fs::metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        let now = SystemTime::now();
        let touched = meta.modified().map(unix).unwrap_or(0);
        if touched + skip <= unix(now) {
            fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(now))
                .with_context(|| format!("marking {} in use", p.display()))?;
        }
        Ok(Some(meta.len() as u32))
    }

    fn put(&self, blob: &VerifiedBlob<'_>) -> Result<()> {
        self.writer.write(&self.chunk_path(blob.id()), blob.bytes())
    }

    fn get(&self, id: &ChunkId, limit: u64) -> Result<Vec<u8>> {
        let p = self.chunk_path(id);
        let len = fs::metadata(&p).with_context(|| format!("chunk {} is not in the store", image::hex(id)))?.len();
        if len > limit {
            bail!("chunk {} is {len} bytes, over {limit}", image::hex(id));
        }
        fs::read(&p).with_context(|| format!("chunk {} is not in the store", image::hex(id)))
    }

    fn delete(&self, id: &ChunkId) -> Result<bool> {
        match fs::remove_file(self.chunk_path(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.chunk_path(id).display())),
        }
    }

    fn lock(&self, exclusive: bool) -> Result<BlobLock> {
        let p = self.dir.join("chunks.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        if exclusive { f.lock() } else { f.lock_shared() }.with_context(|| format!("locking {}", p.display()))?;
        Ok(BlobLock { _held: Box::new(f) })
    }

    fn groups(&self) -> Result<Vec<String>> {
        let chunks = self.dir.join("chunks");
        let mut dirs: Vec<String> = fs::read_dir(&chunks)
            .with_context(|| format!("reading {}", chunks.display()))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    fn list(&self, group: &str) -> Result<Vec<StoredBlob>> {
        let dir = self.dir.join("chunks").join(group);
        let mut out = Vec::new();
        for f in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
            let name = f.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(meta) = f.metadata() else { continue };
            out.push(StoredBlob {
                id: image::parse_hex(name),
                key: format!("{group}/{name}"),
                len: meta.len(),
                touched: meta.modified().map(unix).unwrap_or(0),
            });
        }
        Ok(out)
    }

    fn remove(&self, entry: &StoredBlob) -> Result<()> {
        let p = self.dir.join("chunks").join(&entry.key);
        fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))
    }

    fn clean_temp(&self, before: i64) {
        for f in fs::read_dir(self.writer.tmp_dir()).into_iter().flatten().flatten() {
            if f.metadata().and_then(|m| m.modified()).is_ok_and(|t| unix(t) < before) {
                let _ = fs::remove_file(f.path());
            }
        }
    }

    fn put_manifest(&self, backup: i64, bytes: &[u8]) -> Result<()> {
        self.writer.write(&self.manifest_path(backup), bytes)
    }

    fn manifest(&self, backup: i64) -> Result<Vec<u8>> {
        let p = self.manifest_path(backup);
        fs::read(&p).with_context(|| format!("reading {}", p.display()))
    }

    fn delete_manifest(&self, backup: i64) {
        let _ = fs::remove_file(self.manifest_path(backup));
    }
}
