//! Where backups live, as the pipelines see it: exactly what
//! [`crate::backup`] and [`crate::restore`] need and nothing else (which
//! chunks are missing, put and get a chunk, open / finish / fail a backup
//! with its manifest, find backups). The pipelines take a `&dyn Store`;
//! [`crate::client::Client`] implements it with the HTTP protocol of
//! docs/PROTOCOL.md, unchanged on the wire. A store on a local disk or an
//! object store plugs in here, as Proxmox Backup Server keeps its
//! datastore apart from its API.
//!
//! The rules every store keeps (docs/DESIGN.md): chunks are named by the
//! BLAKE3 of their plain bytes and checked against it before they are
//! kept; a backup is complete only once its manifest is stored and every
//! chunk it names is in the store; a failed or unfinished backup never
//! looks complete.

use bootvault_common::image::ChunkId;

use crate::client::{BackupInfo, Client};
use crate::lock::Lock;
use crate::EngineError;

pub trait Store: Sync {
    /// Where the backups go, for messages: `http://10.0.2.2:8080`.
    fn location(&self) -> String;
    /// Opens a backup of a `disk_bytes` disk in `chunk_size` chunks (with
    /// its restore password's lock); its id.
    fn open_backup(
        &self,
        name: &str,
        disk_bytes: u64,
        chunk_size: u32,
        lock: Option<&Lock>,
    ) -> Result<i64, EngineError>;
    /// For each id, the stored blob's length, or 0 when the store needs it.
    fn missing(&self, backup: i64, ids: &[ChunkId]) -> Result<Vec<u32>, EngineError>;
    fn put_chunk(&self, backup: i64, id: &ChunkId, blob: &[u8]) -> Result<(), EngineError>;
    /// Completes the backup with its manifest, once the store holds every
    /// chunk it names.
    fn finish(&self, backup: i64, manifest: &[u8]) -> Result<(), EngineError>;
    /// Marks the backup failed, with why (best effort by the caller).
    fn fail(&self, backup: i64, reason: &str) -> Result<(), EngineError>;
    /// The manifest of a complete backup.
    fn manifest(&self, backup: i64) -> Result<Vec<u8>, EngineError>;
    /// The blob of chunk `id` of `backup`, at most `limit` bytes.
    fn chunk(&self, backup: i64, id: &ChunkId, limit: u64) -> Result<Vec<u8>, EngineError>;
    /// The complete backups this PC may restore.
    fn backups(&self) -> Result<Vec<BackupInfo>, EngineError>;
    /// The newest complete backup of `pc` (named `name`, if given).
    fn latest(&self, pc: &str, name: Option<&str>) -> Result<i64, EngineError>;
    /// Gives the restore password of a locked backup, so its manifest and
    /// chunks may be read. Ok(false): the backup has no password. A wrong
    /// password is an error saying so.
    fn unlock(&self, backup: i64, password: &[u8]) -> Result<bool, EngineError>;
    /// The wrap key of the password `backup` was unlocked with here (it
    /// opens a locked backup's own key; docs/DESIGN.md).
    fn wrap_key(&self, _backup: i64) -> Option<crate::lock::WrapKey> {
        None
    }
}

impl Store for Client {
    fn location(&self) -> String {
        self.base().to_owned()
    }
    fn open_backup(
        &self,
        name: &str,
        disk_bytes: u64,
        chunk_size: u32,
        lock: Option<&Lock>,
    ) -> Result<i64, EngineError> {
        Client::open_backup(self, name, disk_bytes, chunk_size, lock)
    }
    fn missing(&self, backup: i64, ids: &[ChunkId]) -> Result<Vec<u32>, EngineError> {
        Client::missing(self, backup, ids)
    }
    fn put_chunk(&self, backup: i64, id: &ChunkId, blob: &[u8]) -> Result<(), EngineError> {
        Client::put_chunk(self, backup, id, blob)
    }
    fn finish(&self, backup: i64, manifest: &[u8]) -> Result<(), EngineError> {
        Client::finish(self, backup, manifest)
    }
    fn fail(&self, backup: i64, reason: &str) -> Result<(), EngineError> {
        Client::fail(self, backup, reason)
    }
    fn manifest(&self, backup: i64) -> Result<Vec<u8>, EngineError> {
        Client::manifest(self, backup)
    }
    fn chunk(&self, backup: i64, id: &ChunkId, limit: u64) -> Result<Vec<u8>, EngineError> {
        Client::chunk(self, backup, id, limit)
    }
    fn backups(&self) -> Result<Vec<BackupInfo>, EngineError> {
        Client::backups(self)
    }
    fn latest(&self, pc: &str, name: Option<&str>) -> Result<i64, EngineError> {
        Client::latest(self, pc, name)
    }
    fn unlock(&self, backup: i64, password: &[u8]) -> Result<bool, EngineError> {
        crate::lock::unlock(self, backup, password)
    }
    fn wrap_key(&self, backup: i64) -> Option<crate::lock::WrapKey> {
        self.wrap(backup)
    }
}
