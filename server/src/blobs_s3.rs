//! [`BlobStore`] on S3-compatible object storage (`bootvault serve
//! --store s3://bucket/prefix`), over the small client in `s3.rs`. The
//! layout is the data directory's:
//!
//! ```text
//! PREFIX/chunks/XX/HEX        blobs (XX: the first two hex digits)
//! PREFIX/manifests/ID.bvm     manifests of complete backups
//! ```
//!
//! A PUT is atomic in S3 (readers see a whole object or none), so there
//! are no temporary objects. A chunk's mark for gc is its LastModified:
//! [`BlobStore::touch`] renews it by copying the object onto itself. gc
//! compares LastModified (the store's clock) with its cutoff (this
//! server's clock): the margin (`vault/gc.rs`, 15 minutes) covers their
//! skew, as S3 refuses requests signed more than 15 minutes off anyway.
//!
//! Requests per operation: `len` 1 HEAD; `touch` 1 HEAD, plus 1 COPY
//! when the mark is older than `skip`; `put` 1 PUT; `get` 1 GET;
//! `delete` HEAD + DELETE; `list` 1 GET per 1000 keys; `remove` 1
//! DELETE; manifests 1 PUT, GET or DELETE.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bootvault_common::image::{self, ChunkId};

use crate::blobs::{BlobLock, BlobStore, StoredBlob, VerifiedBlob};
use crate::s3::{S3Client, S3Config};

/// The largest manifest read back (a 2^56-byte disk in 64 KiB chunks
/// would need more; no disk that fits this server does).
const MAX_MANIFEST: u64 = 1 << 30;

/// [`BlobStore`] in a bucket, under a prefix (the module doc).
pub struct S3BlobStore {
    s3: S3Client,
    lock: Arc<StoreLock>,
}

impl S3BlobStore {
    /// The store at `url` (`s3://bucket[/prefix]`), configured from the
    /// environment ([`S3Config::parse`]); checks that the bucket answers.
    pub fn open(url: &str) -> Result<S3BlobStore> {
        S3BlobStore::with_client(S3Client::new(S3Config::from_env(url)?))
    }

    /// The store `s3` reaches; checks that the bucket answers to its
    /// credentials (a wrong key fails here, not at the first backup).
    pub fn with_client(s3: S3Client) -> Result<S3BlobStore> {
        s3.probe().context("opening the chunk store")?;
        Ok(S3BlobStore { s3, lock: Arc::default() })
    }

    pub fn client(&self) -> &S3Client {
        &self.s3
    }

    fn chunks(&self) -> String {
        format!("{}chunks/", self.s3.config().prefix)
    }

    /// `PREFIX/chunks/XX/HEX`.
    pub fn chunk_key(&self, id: &ChunkId) -> String {
        let h = image::hex(id);
        format!("{}{}/{h}", self.chunks(), &h[..2])
    }

    /// `PREFIX/manifests/ID.bvm`.
    pub fn manifest_key(&self, backup: i64) -> String {
        format!("{}manifests/{backup}.bvm", self.s3.config().prefix)
    }
}

fn blob_len(len: u64, key: &str) -> Result<u32> {
    u32::try_from(len).map_err(|_| anyhow!("{key} is {len} bytes: no chunk is that large"))
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl BlobStore for S3BlobStore {
    fn len(&self, id: &ChunkId) -> Result<Option<u32>> {
        let key = self.chunk_key(id);
        self.s3.head_object(&key)?.map(|h| blob_len(h.len, &key)).transpose()
    }

    fn touch(&self, id: &ChunkId, skip: i64) -> Result<Option<u32>> {
        let key = self.chunk_key(id);
        let Some(head) = self.s3.head_object(&key)? else { return Ok(None) };
        // Copied onto itself: a new LastModified, the same bytes. Gone
        // meanwhile (removed by hand; gc waits for the lock): not stored.
        if head.last_modified + skip <= unix_now() && self.s3.copy_onto_itself(&key)?.is_none() {
            return Ok(None);
        }
        Ok(Some(blob_len(head.len, &key)?))
    }

    fn put(&self, blob: &VerifiedBlob<'_>) -> Result<()> {
        Ok(self.s3.put_object(&self.chunk_key(blob.id()), blob.bytes())?)
    }

    fn get(&self, id: &ChunkId, limit: u64) -> Result<Vec<u8>> {
        match self.s3.get_object(&self.chunk_key(id), limit)? {
            Some(blob) => Ok(blob),
            None => bail!("chunk {} is not in the store", image::hex(id)),
        }
    }

    fn delete(&self, id: &ChunkId) -> Result<bool> {
        // S3 deletes a missing key without a word: asked first.
        let key = self.chunk_key(id);
        if self.s3.head_object(&key)?.is_none() {
            return Ok(false);
        }
        self.s3.delete_object(&key)?;
        Ok(true)
    }

    fn lock(&self, exclusive: bool) -> Result<BlobLock> {
        Ok(BlobLock::holding(Box::new(StoreLock::take(&self.lock, exclusive))))
    }

    /// The 256 first-byte groups, listed or not (listing the bucket to
    /// find them would cost as much as the sweep).
    fn groups(&self) -> Result<Vec<String>> {
        Ok((0..=255u8).map(|b| format!("{b:02x}")).collect())
    }

    fn list(&self, group: &str) -> Result<Vec<StoredBlob>> {
        if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("no chunk group {group:?}");
        }
        let prefix = format!("{}{group}/", self.chunks());
        let listed = self.s3.list(&prefix)?;
        Ok(listed
            .into_iter()
            .map(|o| StoredBlob {
                // A key that is no chunk id (left by hand, or deeper): gc removes it.
                id: o.key.strip_prefix(&prefix).and_then(image::parse_hex),
                len: o.size,
                touched: o.last_modified,
                key: o.key,
            })
            .collect())
    }

    fn remove(&self, entry: &StoredBlob) -> Result<()> {
        // Only what `list` returned: keys under PREFIX/chunks/.
        if !entry.key.starts_with(&self.chunks()) {
            bail!("refusing to remove {}: not under {}", entry.key, self.chunks());
        }
        Ok(self.s3.delete_object(&entry.key)?)
    }

    /// Nothing to clean: a PUT leaves a whole object or none.
    fn clean_temp(&self, _before: i64) {}

    fn put_manifest(&self, backup: i64, bytes: &[u8]) -> Result<()> {
        Ok(self.s3.put_object(&self.manifest_key(backup), bytes)?)
    }

    fn manifest(&self, backup: i64) -> Result<Vec<u8>> {
        let key = self.manifest_key(backup);
        self.s3.get_object(&key, MAX_MANIFEST)?.ok_or_else(|| {
            anyhow!(
                "the manifest of backup {backup} is not in the store ({})",
                self.s3.config().object_name(Some(&key))
            )
        })
    }

    fn delete_manifest(&self, backup: i64) {
        let _ = self.s3.delete_object(&self.manifest_key(backup));
    }
}

/// The store lock, in this process only: shared by writers, exclusive by
/// gc's sweep (a std `RwLock` guard cannot travel in a [`BlobLock`]: it
/// is not `Send`). It excludes this server's writers from its own gc;
/// other servers on the bucket are kept out by the database's lock
/// (`Database::store_lock`, PostgreSQL's advisory lock), which the vault
/// takes before this one.
#[derive(Default)]
struct StoreLock {
    holders: Mutex<Holders>,
    changed: Condvar,
}

#[derive(Default)]
struct Holders {
    shared: usize,
    exclusive: bool,
}

/// A held [`StoreLock`], released when dropped.
struct Held {
    lock: Arc<StoreLock>,
    exclusive: bool,
}

impl StoreLock {
    fn take(lock: &Arc<StoreLock>, exclusive: bool) -> Held {
        let mut h = lock.holders.lock().unwrap_or_else(PoisonError::into_inner);
        while h.exclusive || (exclusive && h.shared > 0) {
            h = lock.changed.wait(h).unwrap_or_else(PoisonError::into_inner);
        }
        if exclusive {
            h.exclusive = true;
        } else {
            h.shared += 1;
        }
        Held { lock: lock.clone(), exclusive }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut h = self.lock.holders.lock().unwrap_or_else(PoisonError::into_inner);
        if self.exclusive {
            h.exclusive = false;
        } else {
            h.shared -= 1;
        }
        self.lock.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn the_lock_is_shared_by_writers_and_exclusive_for_gc() {
        let lock = Arc::new(StoreLock::default());
        let a = StoreLock::take(&lock, false);
        let b = StoreLock::take(&lock, false);
        let (tx, rx) = mpsc::channel();
        let l = lock.clone();
        let gc = std::thread::spawn(move || {
            let held = StoreLock::take(&l, true);
            tx.send(()).unwrap();
            // A writer waits for gc in turn.
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
        });
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "gc waits for both writers");
        drop(a);
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "and for the second");
        drop(b);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let t = std::time::Instant::now();
        let _c = StoreLock::take(&lock, false);
        assert!(t.elapsed() >= Duration::from_millis(50), "the writer waited for gc");
        gc.join().unwrap();
    }
}
