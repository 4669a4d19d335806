//! The pipelines run against any `Store`, not only the HTTP client: a
//! store in memory that keeps the store rules (chunks checked against
//! their id before they are kept, complete only with every chunk, failed
//! backups never restorable) backs up and restores a disk image with no
//! server at all, and a store that refuses a chunk fails the backup.

use std::collections::HashMap;
use std::fs;
use std::sync::Mutex;

use bootvault_common::image::{self, ChunkId, Manifest};
use bootvault_common::testdata::noise;
use bootvault_engine::backup::{backup, BackupOptions};
use bootvault_engine::client::BackupInfo;
use bootvault_engine::device::Device;
use bootvault_engine::local_store::LocalStore;
use bootvault_engine::lock::Lock;
use bootvault_engine::restore::{restore, RestoreOptions};
use bootvault_engine::store::Store;
use bootvault_engine::EngineError;

#[derive(Default)]
struct MemStore {
    chunks: Mutex<HashMap<ChunkId, Vec<u8>>>,
    /// id -> (state, manifest)
    backups: Mutex<Vec<(String, Vec<u8>)>>,
    refuse_puts: bool,
}

fn err(s: impl Into<String>) -> EngineError {
    EngineError::new(s)
}

impl Store for MemStore {
    fn location(&self) -> String {
        "memory".into()
    }
    fn open_backup(&self, _: &str, _: u64, _: u32, _: Option<&Lock>) -> Result<i64, EngineError> {
        let mut b = self.backups.lock().expect("lock");
        b.push(("uploading".into(), Vec::new()));
        Ok(b.len() as i64)
    }
    fn missing(&self, _: i64, ids: &[ChunkId]) -> Result<Vec<u32>, EngineError> {
        let c = self.chunks.lock().expect("lock");
        Ok(ids.iter().map(|id| c.get(id).map_or(0, |b| b.len() as u32)).collect())
    }
    fn put_chunk(&self, _: i64, id: &ChunkId, blob: &[u8]) -> Result<(), EngineError> {
        if self.refuse_puts {
            return Err(err("store full"));
        }
        let plain = image::decode_blob(blob, image::MAX_CHUNK_SIZE as usize).map_err(|e| err(e.to_string()))?;
        if image::chunk_id(&plain) != *id {
            return Err(err("chunk does not match its id"));
        }
        self.chunks.lock().expect("lock").insert(*id, blob.to_vec());
        Ok(())
    }
    fn finish(&self, backup: i64, manifest: &[u8]) -> Result<(), EngineError> {
        let m = Manifest::decode(manifest).map_err(|e| err(e.to_string()))?;
        let c = self.chunks.lock().expect("lock");
        if let Some(id) = m.data_ids().iter().find(|id| !c.contains_key(*id)) {
            return Err(err(format!("chunk {} is not in the store", image::hex(id))));
        }
        self.backups.lock().expect("lock")[backup as usize - 1] = ("complete".into(), manifest.to_vec());
        Ok(())
    }
    fn fail(&self, backup: i64, _: &str) -> Result<(), EngineError> {
        self.backups.lock().expect("lock")[backup as usize - 1].0 = "failed".into();
        Ok(())
    }
    fn manifest(&self, backup: i64) -> Result<Vec<u8>, EngineError> {
        match self.backups.lock().expect("lock").get(backup as usize - 1) {
            Some((state, m)) if state == "complete" => Ok(m.clone()),
            Some((state, _)) => Err(err(format!("backup {backup} is {state}"))),
            None => Err(err(format!("no backup {backup}"))),
        }
    }
    fn chunk(&self, _: i64, id: &ChunkId, limit: u64) -> Result<Vec<u8>, EngineError> {
        let c = self.chunks.lock().expect("lock");
        let blob = c.get(id).ok_or_else(|| err("no such chunk"))?;
        if blob.len() as u64 > limit {
            return Err(err("chunk over the limit"));
        }
        Ok(blob.clone())
    }
    fn backups(&self) -> Result<Vec<BackupInfo>, EngineError> {
        Ok(Vec::new())
    }
    fn latest(&self, _: &str, _: Option<&str>) -> Result<i64, EngineError> {
        let b = self.backups.lock().expect("lock");
        b.iter().rposition(|(s, _)| s == "complete").map(|i| i as i64 + 1).ok_or_else(|| err("no backups"))
    }
    fn unlock(&self, _: i64, _: &[u8]) -> Result<bool, EngineError> {
        Ok(false)
    }
}

#[test]
fn backup_and_restore_through_a_store_in_memory() {
    let dir = std::env::temp_dir().join(format!("bv-store-seam-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("test step");
    let src = dir.join("src.img");
    let mut data = noise(4, 3 << 20);
    data.extend(vec![0u8; 2 << 20]);
    data.extend(noise(4, 1 << 20)); // a repeat
    fs::write(&src, &data).expect("test step");

    let store = MemStore::default();
    let dev = Device::open(&src, false).expect("test step");
    let r = backup(&dev, &store, &BackupOptions::new("pc", "mem"), &mut |_| {}).expect("backup into memory");
    assert_eq!((r.chunks, r.zero_chunks, r.new_chunks), (6, 2, 3));
    assert_eq!(store.latest("pc", None).expect("test step"), r.id);

    let target = dir.join("target.img");
    fs::write(&target, noise(5, data.len())).expect("test step");
    let tdev = Device::open(&target, true).expect("test step");
    let opts = RestoreOptions { verify: true, ..Default::default() };
    restore(&tdev, &store, r.id, &opts, &mut |_| {}).expect("restore from memory");
    assert!(fs::read(&target).expect("test step") == data, "restored through the seam, byte for byte");

    // A store that refuses chunks: the backup fails and is never complete.
    let full = MemStore { refuse_puts: true, ..Default::default() };
    let e = backup(&dev, &full, &BackupOptions::new("pc", "mem"), &mut |_| {}).expect_err("must fail").to_string();
    assert!(e.contains("store full"), "{e}");
    assert_eq!(full.backups.lock().expect("lock")[0].0, "failed");
    assert!(full.manifest(1).is_err());
    let _ = fs::remove_dir_all(&dir);
}

/// A store in a directory (a local drive): the server's layout, complete
/// only once the manifest is written last, refusals that write nothing.
#[test]
fn backup_and_restore_through_a_local_directory() {
    let dir = std::env::temp_dir().join(format!("bv-local-store-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("dir");
    let src = dir.join("src.img");
    let mut data = noise(6, 2 << 20);
    data.extend(vec![0u8; 1 << 20]);
    data.extend(noise(7, (1 << 20) + 4096));
    fs::write(&src, &data).expect("source");
    let root = dir.join("usb/bootvault");
    let store = LocalStore::open(&root).expect("store");
    let dev = Device::open(&src, false).expect("open");
    let r = backup(&dev, &store, &BackupOptions::new("pc-l", "stick"), &mut |_| {}).expect("backup to a directory");
    assert_eq!(r.id, 1);
    assert!(root.join("manifests/1.bvm").is_file(), "the manifest, where the server keeps it");
    assert!(!root.join("uploads/1.open").exists(), "the upload is closed");
    let chunk_files = fs::read_dir(root.join("chunks")).expect("chunks").count();
    assert!(chunk_files >= 2, "chunks under chunks/XX/");
    let listed = store.backups().expect("list");
    assert_eq!((listed.len(), listed[0].pc.as_str(), listed[0].name.as_str()), (1, "pc-l", "stick"));
    assert_eq!(store.latest("pc-l", Some("stick")).expect("latest"), 1);

    // Unchanged: nothing new written; a second backup gets the next id.
    let again = backup(&dev, &store, &BackupOptions::new("pc-l", "stick"), &mut |_| {}).expect("again");
    assert_eq!((again.id, again.new_chunks), (2, 0));

    let target = dir.join("target.img");
    fs::write(&target, noise(8, data.len())).expect("target");
    let tdev = Device::open(&target, true).expect("open target");
    let opts = RestoreOptions { verify: true, ..Default::default() };
    restore(&tdev, &store, 2, &opts, &mut |_| {}).expect("restore from the directory");
    assert!(fs::read(&target).expect("read") == data, "byte for byte");

    // An open backup (a power cut mid-way) is listed nowhere and cannot be restored.
    let open = store.open_backup("cut", 1 << 20, 1 << 20, None).expect("open");
    assert_eq!(open, 3);
    assert!(store.manifest(open).is_err());
    assert_eq!(store.backups().expect("list").len(), 2);
    // A finish that names a chunk the store lacks is refused; nothing completes.
    let mut m = bootvault_common::image::Manifest::decode(&store.manifest(1).expect("manifest")).expect("decode");
    m.chunks[0] = bootvault_common::image::Chunk::Data { id: [7; 32], blob_len: 10 };
    let e = store.finish(open, &m.encode()).expect_err("refused").to_string();
    assert!(e.contains("is not in the store"), "{e}");
    assert!(!root.join(format!("manifests/{open}.bvm")).exists());
    // A blob that does not hash to its name is never kept.
    let e = store.put_chunk(open, &[9; 32], &image::encode_blob(b"hello", 1)).expect_err("refused").to_string();
    assert!(e.contains("do not match"), "{e}");
    store.fail(open, "power cut").expect("fail");
    assert!(root.join("failed/3.txt").is_file() && !root.join("uploads/3.open").exists());
    // One writer at a time; readers wait for no one but cannot write.
    let e = LocalStore::open(&root).err().expect("a second writer is refused").to_string();
    assert!(e.contains("another bootvault is using this store"), "{e}");
    drop(store);

    // A power cut mid-backup: new chunks written, no manifest. The next
    // writer records it failed and deletes what no complete backup names.
    let store = LocalStore::open(&root).expect("reopen");
    assert!(store.cleaned().is_empty(), "nothing to clean: {:?}", store.cleaned());
    let cut = store.open_backup("cut", 1 << 20, 1 << 20, None).expect("open");
    let plain = noise(9, 1 << 20);
    let id = image::chunk_id(&plain);
    store.put_chunk(cut, &id, &image::encode_blob(&plain, 1)).expect("put");
    let chunk_files = || -> usize {
        let dirs = fs::read_dir(root.join("chunks")).expect("chunks").flatten();
        dirs.map(|d| fs::read_dir(d.path()).expect("chunk dir").count()).sum()
    };
    let before = chunk_files();
    drop(store);
    let store = LocalStore::open(&root).expect("reopen after the cut");
    assert_eq!(store.cleaned().interrupted, vec![cut], "{:?}", store.cleaned());
    assert_eq!(store.cleaned().chunks, 1, "only the unfinished backup's own chunk goes");
    assert!(store.cleaned().line().starts_with(&format!("removed the unfinished backup {cut} (1 chunks")));
    assert!(root.join(format!("failed/{cut}.txt")).is_file() && !root.join(format!("uploads/{cut}.open")).exists());
    assert_eq!(store.missing(0, &[id]).expect("missing"), vec![0]);
    assert_eq!(chunk_files(), before - 1, "the cut backup's chunk is deleted, no other");
    assert_eq!(store.backups().expect("list").len(), 2, "the complete ones stay");
    // Cut between the manifest and removing the marker: complete, kept whole.
    drop(store);
    fs::write(root.join("uploads/2.open"), "name=stick\n").expect("stale marker");
    let store = LocalStore::open(&root).expect("reopen");
    assert!(store.cleaned().is_empty(), "{:?}", store.cleaned());
    assert!(!root.join("uploads/2.open").exists() && !root.join("failed/2.txt").exists());
    assert_eq!(store.backups().expect("list").len(), 2);
    restore(&tdev, &store, 1, &RestoreOptions::default(), &mut |_| {}).expect("still restores");

    // Restore passwords: the lock is kept with the backup; its manifest
    // and chunks are given out only after the password.
    let lock = Lock::new(b"a long enough password").expect("lock");
    let mut opts = BackupOptions::new("pc-l", "locked");
    opts.lock = Some(lock);
    let locked = backup(&dev, &store, &opts, &mut |_| {}).expect("locked backup").id;
    assert!(store.backups().expect("list").iter().any(|b| b.id == locked && b.locked));
    drop(store);
    let reader = LocalStore::open_read(&root).expect("reader");
    let e = reader.manifest(locked).expect_err("locked").to_string();
    assert!(e.contains("protected by a password"), "{e}");
    assert!(restore(&tdev, &reader, locked, &RestoreOptions::default(), &mut |_| {}).is_err());
    let e = reader.unlock(locked, b"not the password").expect_err("wrong").to_string();
    assert_eq!(e, format!("wrong password for backup {locked}"));
    assert!(!reader.unlock(1, b"anything").expect("no password on backup 1"));
    assert!(reader.unlock(locked, b"a long enough password").expect("right password"));
    restore(&tdev, &reader, locked, &RestoreOptions::default(), &mut |_| {}).expect("unlocked restore");
    assert!(fs::read(&target).expect("read") == data);
    let e = reader.open_backup("x", 1 << 20, 1 << 20, None).expect_err("read only").to_string();
    assert!(e.contains("open for reading only"), "{e}");
    assert!(LocalStore::open_read(&dir).is_err(), "not a store");
    let _ = fs::remove_dir_all(&dir);
}

/// The pipelines size themselves from the memory given: too little for
/// one chunk in flight is refused before the store is touched; a little
/// more runs with one worker and one chunk, and restores byte for byte.
#[test]
fn memory_sizes_the_pipelines_and_too_little_is_refused_first() {
    let dir = std::env::temp_dir().join(format!("bv-store-memory-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("dir");
    let src = dir.join("src.img");
    let data = noise(12, 5 << 20);
    fs::write(&src, &data).expect("source");
    let dev = Device::open(&src, false).expect("open");
    let store = MemStore::default();
    const MIB: u64 = 1 << 20;

    let mut tight = BackupOptions::new("pc", "small");
    tight.available = Some(5 * MIB);
    let e = backup(&dev, &store, &tight, &mut |_| {}).expect_err("too little memory").to_string();
    assert!(e.starts_with("this PC has 5.0 MiB of memory available; a backup of 1.0 MiB chunks needs"), "{e}");
    assert!(e.ends_with("; nothing was sent"), "{e}");
    assert!(store.backups.lock().expect("lock").is_empty(), "the store was never asked to open a backup");

    let mut small = BackupOptions::new("pc", "small");
    small.available = Some(12 * MIB);
    let r = backup(&dev, &store, &small, &mut |_| {}).expect("one worker, one chunk");
    assert_eq!((r.fit.threads, r.fit.group, r.fit.chunk_size), (1, 1, 1 << 20), "{}", r.fit.describe());
    assert!(r.fit.bytes <= 6 * MIB, "{}", r.fit.describe());
    let roomy = backup(&dev, &store, &BackupOptions::new("pc", "roomy"), &mut |_| {}).expect("roomy");
    assert!(roomy.fit.threads >= 4 && roomy.fit.group == 4, "{}", roomy.fit.describe());

    let target = dir.join("target.img");
    fs::write(&target, vec![0u8; data.len()]).expect("target");
    let tdev = Device::open(&target, true).expect("open target");
    let e =
        restore(&tdev, &store, r.id, &RestoreOptions { available: Some(7 * MIB), ..Default::default() }, &mut |_| {})
            .expect_err("too little")
            .to_string();
    assert!(e.starts_with("this PC has 7.0 MiB of memory available; a restore of 1.0 MiB chunks needs"), "{e}");
    assert!(e.ends_with("; nothing was written"), "{e}");
    let opts = RestoreOptions { available: Some(12 * MIB), verify: true, ..Default::default() };
    let done = restore(&tdev, &store, r.id, &opts, &mut |_| {}).expect("restore in 12 MiB");
    assert_eq!(done.fit.threads, 1, "{}", done.fit.describe());
    assert!(fs::read(&target).expect("read") == data, "byte for byte");
    let _ = fs::remove_dir_all(&dir);
}

/// A PC too small for one 1 MiB chunk in flight backs up in 256 KiB
/// chunks, which restore as any backup does.
#[test]
fn a_small_pc_backs_up_in_smaller_chunks() {
    let dir = std::env::temp_dir().join(format!("bv-store-small-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("dir");
    let src = dir.join("src.img");
    let data = noise(13, 3 << 20);
    fs::write(&src, &data).expect("source");
    let dev = Device::open(&src, false).expect("open");
    let store = MemStore::default();
    let mut small = BackupOptions::new("pc", "small");
    small.available = Some(15 << 19);
    let r = backup(&dev, &store, &small, &mut |_| {}).expect("smaller chunks");
    assert_eq!((r.fit.chunk_size, r.chunks), (256 << 10, 12), "{}", r.fit.describe());
    let target = dir.join("target.img");
    fs::write(&target, vec![0u8; data.len()]).expect("target");
    let tdev = Device::open(&target, true).expect("open target");
    let opts = RestoreOptions { verify: true, ..Default::default() };
    restore(&tdev, &store, r.id, &opts, &mut |_| {}).expect("restore");
    assert!(fs::read(&target).expect("read") == data, "byte for byte");
    let _ = fs::remove_dir_all(&dir);
}
