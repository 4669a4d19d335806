//! The backup pipeline.
//!
//! Worker threads take groups of consecutive chunks. For each group a
//! worker reads the chunks, sets the all-zero ones aside, hashes the rest,
//! asks the server in one request which of those it lacks, compresses only
//! those and uploads them (keep-alive connections). Several workers run at
//! once, so reading, hashing, compressing and sending overlap and use all
//! cores; memory stays at `threads × group` chunks. The manifest is
//! assembled in disk order and sent last; until the server has verified it
//! against its store, the backup is not complete.
//!
//! Before any chunk, the disk's plan is made ([`usedmap::disk::plan`]):
//! each partition's filesystem and, unless `raw`, its allocation map. A
//! chunk that lies wholly in free space is recorded `Unused` and never
//! read; one partly free is read and its free ranges zeroed before it is
//! hashed, so deleted files are neither sent nor stored. The partition
//! table copy kept in the manifest is masked the same way.
//!
//! Cancelling (`BackupOptions::cancel`, set by the console) stops the
//! workers at their next chunk; the backup then fails like any other, so
//! the server marks it failed and never complete.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bootvault_common::image::{self, Chunk, ChunkId, Extent, Manifest, PartitionRecord, TableKind};
use bootvault_common::partition;
use bootvault_common::seal::{self, DataKey};
use bootvault_common::usedmap::disk::{self as plan, ChunkUse, DiskPlan};

use crate::device::Device;
use crate::lock::Lock;
use crate::memory::{self, Fit};
use crate::progress::Progress;
use crate::store::Store;
use crate::EngineError;

/// Why a cancelled backup failed: the error's text and the reason the
/// server records.
pub const CANCELLED: &str = "cancelled at the console";

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub pc: String,
    pub name: String,
    pub chunk_size: u32,
    pub level: u8,
    pub threads: usize,
    /// Chunks per missing-query (and per worker in memory).
    pub group: usize,
    /// Bytes of memory the backup may size itself from (a third of it, see
    /// [`crate::memory`]); None: what the machine has available at the
    /// start. Fewer workers and chunks in flight than `threads` and
    /// `group` are used where those do not fit.
    pub available: Option<u64>,
    pub model: String,
    pub serial: String,
    /// The restore password's lock, sent when the backup is opened.
    pub lock: Option<Lock>,
    /// Every byte of every partition (`mode=raw`, forensic copies);
    /// otherwise free space of the filesystems it can read is left out.
    pub raw: bool,
    /// Set from another thread to stop the backup (it then fails).
    pub cancel: Arc<AtomicBool>,
    /// Encrypt the backup on this side with this data key: keyed chunk
    /// ids, sealed blobs, a sealed manifest (docs/DESIGN.md). With a
    /// `lock` that holds its password's wrap key, the backup is sealed
    /// with a random key of its own instead, carried in the manifest
    /// wrapped with the password ("Restore passwords are keys").
    pub key: Option<Arc<DataKey>>,
    /// The admin's escrow public key (X25519): a backup with a key of
    /// its own also carries that key wrapped for it, so the admin can
    /// recover it without the password (docs/DESIGN.md).
    pub escrow: Option<[u8; 32]>,
    /// Set by [`backup`] for a backup with a key of its own: the key,
    /// wrapped with the password, and for the escrow.
    wrapped: Option<Vec<u8>>,
    escrowed: Option<Vec<u8>>,
}

impl BackupOptions {
    pub fn new(pc: &str, name: &str) -> BackupOptions {
        BackupOptions {
            pc: pc.into(),
            name: name.into(),
            chunk_size: image::DEFAULT_CHUNK_SIZE,
            level: image::DEFAULT_LEVEL,
            threads: crate::default_threads(),
            group: 4,
            available: None,
            model: String::new(),
            serial: String::new(),
            lock: None,
            raw: false,
            cancel: Arc::new(AtomicBool::new(false)),
            key: None,
            escrow: None,
            wrapped: None,
            escrowed: None,
        }
    }

    /// Whether this backup gets a key of its own (see [`BackupOptions::key`]).
    pub fn own_key(&self) -> bool {
        self.key.is_some() && self.lock.as_ref().is_some_and(|l| l.wrap.is_some())
    }

    /// These options with the backup's own key in place of the data key,
    /// and that key wrapped with the lock's password.
    fn with_own_key(&self) -> Result<Option<BackupOptions>, EngineError> {
        let Some(wrap) = self.lock.as_ref().and_then(|l| l.wrap.as_ref()).filter(|_| self.key.is_some()) else {
            return Ok(None);
        };
        let mut own = crate::lock::Zeroizing::new([0u8; 32]);
        crate::lock::random_bytes(&mut own[..])?;
        let mut nonce = [0u8; seal::NONCE_BYTES];
        crate::lock::random_bytes(&mut nonce)?;
        let escrowed = match &self.escrow {
            Some(public) => Some(escrow_wrap(public, &own)?),
            None => None,
        };
        Ok(Some(BackupOptions {
            key: Some(Arc::new(DataKey::new(&own))),
            wrapped: Some(seal::wrap_key(wrap, &own, &nonce)),
            escrowed,
            ..self.clone()
        }))
    }
}

/// `own` wrapped for the escrow public key `public`: X25519 with a fresh
/// ephemeral key (ring), then `seal::escrow_wrap`.
fn escrow_wrap(public: &[u8; 32], own: &[u8; 32]) -> Result<Vec<u8>, EngineError> {
    use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, X25519};
    let rng = ring::rand::SystemRandom::new();
    let fail = || EngineError::new("wrapping the backup's key for the escrow: no randomness".to_owned());
    let private = EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| fail())?;
    let ephemeral: [u8; 32] =
        private.compute_public_key().map_err(|_| fail())?.as_ref().try_into().map_err(|_| fail())?;
    let mut nonce = [0u8; seal::NONCE_BYTES];
    crate::lock::random_bytes(&mut nonce)?;
    agree_ephemeral(private, &UnparsedPublicKey::new(&X25519, public), |shared| {
        let shared: [u8; 32] = shared.try_into().map_err(|_| ())?;
        Ok::<_, ()>(seal::escrow_wrap(&shared, &ephemeral, public, own, &nonce))
    })
    .map_err(|_| EngineError::new("the escrow public key is not a valid X25519 key".to_owned()))?
    .map_err(|()| EngineError::new("the escrow's shared secret is not 32 bytes".to_owned()))
}

#[derive(Debug, Clone)]
pub struct BackupReport {
    pub id: i64,
    pub disk_bytes: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    /// Chunks wholly in free space: not read, not stored.
    pub unused_chunks: u64,
    /// Free bytes left out (read as zeros by a restore, or left as they are).
    pub unused_bytes: u64,
    /// How each partition was taken.
    pub partitions: Vec<PartitionRecord>,
    /// Chunks the server did not have, uploaded now.
    pub new_chunks: u64,
    /// Blob bytes uploaded.
    pub sent_bytes: u64,
    /// Blob bytes of the whole backup (as stored, deduplicated).
    pub blob_bytes: u64,
    pub elapsed: Duration,
    /// The workers and chunks in flight the memory allowed.
    pub fit: Fit,
}

impl BackupReport {
    /// The one-line outcome the console, the CLI and the server's result
    /// show, ending with how each partition was taken.
    pub fn summary(&self) -> String {
        let free = if self.unused_bytes > 0 {
            format!(", {} of free space left out", bootvault_common::units::human_bytes(self.unused_bytes))
        } else {
            String::new()
        };
        format!(
            "backup {} complete: {} in {} chunks ({} all-zero{free}), {} new chunks, {} sent, {} stored for this backup, {:.1} s ({:.1} MB/s)",
            self.id,
            bootvault_common::units::human_bytes(self.disk_bytes),
            self.chunks,
            self.zero_chunks,
            self.new_chunks,
            bootvault_common::units::human_bytes(self.sent_bytes),
            bootvault_common::units::human_bytes(self.blob_bytes),
            self.elapsed.as_secs_f64(),
            self.disk_bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
        ) + &self.partition_lines().iter().map(|l| format!("; {l}")).collect::<String>()
    }

    /// One line per partition: `partition 2 (ext4): used only, ...`.
    pub fn partition_lines(&self) -> Vec<String> {
        self.partitions.iter().map(PartitionRecord::describe).collect()
    }
}

/// The raw partition table copy: the first MiB (MBR, the gap after it,
/// the primary GPT) and, for GPT, the backup header and entries at the end.
pub fn table_extents(dev: &Device) -> Result<(TableKind, Vec<Extent>), EngineError> {
    table_extents_masked(dev, &DiskPlan::default())
}

/// [`table_extents`] with the plan's free space zeroed (a partition that
/// starts inside the first MiB, as on old MBR disks, is masked there too).
fn table_extents_masked(dev: &Device, plan: &DiskPlan) -> Result<(TableKind, Vec<Extent>), EngineError> {
    let mut read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; len];
        dev.read_at(&mut b, off).map_err(|e| e.to_string())?;
        Ok(b)
    };
    let kind = match partition::parse(&mut read, dev.logical, dev.bytes) {
        Ok(Some(t)) if t.kind == partition::TableKind::Gpt => TableKind::Gpt,
        Ok(Some(_)) => TableKind::Mbr,
        // An unreadable table is still backed up, byte for byte.
        Ok(None) | Err(_) => TableKind::None,
    };
    let head = dev.bytes.min(1 << 20);
    let mut extents = vec![Extent { offset: 0, data: read(0, head as usize).map_err(EngineError::new)? }];
    if kind == TableKind::Gpt {
        let tail = (33 * u64::from(dev.logical)).min(dev.bytes.saturating_sub(head));
        if tail > 0 {
            let off = dev.bytes - tail;
            extents.push(Extent { offset: off, data: read(off, tail as usize).map_err(EngineError::new)? });
        }
    }
    for e in &mut extents {
        plan.mask(e.offset, &mut e.data);
    }
    Ok((kind, extents))
}

/// The disk's plan: its partitions, their filesystems and (unless `raw`)
/// their free space, read through the device.
pub fn disk_plan(dev: &Device, raw: bool) -> DiskPlan {
    let mut read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; len];
        dev.read_at(&mut b, off).map_err(|e| e.to_string())?;
        Ok(b)
    };
    plan::plan(&mut read, dev.bytes, dev.logical, raw)
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One chunk of a group once read.
#[derive(Clone, Copy)]
enum Slot {
    Zero,
    Unused,
    Data(ChunkId, u128),
}

struct Shared<'a> {
    dev: &'a Device,
    client: &'a dyn Store,
    opts: &'a BackupOptions,
    plan: &'a DiskPlan,
    backup: i64,
    count: usize,
    next_group: AtomicUsize,
    abort: AtomicBool,
    done: AtomicU64,
    sent: AtomicU64,
    new_chunks: AtomicU64,
    /// Chunks this backup uploads: `None` while a worker is sending one,
    /// then its blob length. A chunk repeated on the disk is sent once.
    claimed: Mutex<HashMap<ChunkId, Option<u32>>>,
}

impl Shared<'_> {
    /// Claims `id` for upload; Err(known length) if it is taken, Err(None)
    /// if another worker is sending it right now.
    fn claim(&self, id: ChunkId) -> Result<(), Option<u32>> {
        let mut c = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        match c.get(&id) {
            Some(state) => Err(*state),
            None => {
                c.insert(id, None);
                Ok(())
            }
        }
    }

    fn range(&self, i: usize) -> (u64, usize) {
        let cs = u64::from(self.opts.chunk_size);
        let off = i as u64 * cs;
        (off, (self.dev.bytes - off).min(cs) as usize)
    }

    /// A chunk's id: BLAKE3, keyed with the data key's id key when the
    /// backup is encrypted.
    fn chunk_id(&self, plain: &[u8]) -> ChunkId {
        match &self.opts.key {
            Some(k) => k.chunk_id(plain),
            None => image::chunk_id(plain),
        }
    }

    /// The blob stored for a chunk: compressed, and sealed under its name
    /// with a fresh random nonce when the backup is encrypted.
    fn blob(&self, id: &ChunkId, plain: &[u8]) -> Result<Vec<u8>, EngineError> {
        let inner = image::encode_blob(plain, self.opts.level);
        let Some(k) = &self.opts.key else { return Ok(inner) };
        let mut nonce = [0u8; seal::NONCE_BYTES];
        crate::lock::random_bytes(&mut nonce)?;
        Ok(k.seal_chunk(id, &inner, &nonce))
    }

    /// The length [`Shared::blob`] gives (compression is deterministic).
    fn blob_len(&self, plain: &[u8]) -> u32 {
        let sealing = if self.opts.key.is_some() { seal::OVERHEAD } else { 0 };
        (image::encode_blob(plain, self.opts.level).len() + sealing) as u32
    }

    /// Whether the workers should stop: a failure, or the console cancelled.
    fn stopping(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || self.opts.cancel.load(Ordering::Relaxed)
    }

    /// One worker: groups of chunks until none are left or one failed.
    fn work(&self, out: &mpsc::Sender<Result<(usize, Chunk, u128), EngineError>>) {
        let group = self.opts.group.max(1);
        let mut bufs: Vec<Vec<u8>> = (0..group).map(|_| vec![0u8; self.opts.chunk_size as usize]).collect();
        while !self.stopping() {
            let first = self.next_group.fetch_add(1, Ordering::Relaxed) * group;
            if first >= self.count {
                return;
            }
            let last = (first + group).min(self.count);
            if let Err(e) = self.group(first, last, &mut bufs, out) {
                self.abort.store(true, Ordering::Relaxed);
                let _ = out.send(Err(e));
                return;
            }
        }
    }

    fn group(
        &self,
        first: usize,
        last: usize,
        bufs: &mut [Vec<u8>],
        out: &mpsc::Sender<Result<(usize, Chunk, u128), EngineError>>,
    ) -> Result<(), EngineError> {
        let mut ids: Vec<Slot> = Vec::with_capacity(last - first);
        for (k, i) in (first..last).enumerate() {
            if self.stopping() {
                return Ok(());
            }
            let (off, len) = self.range(i);
            let buf = &mut bufs[k][..len];
            let holes = match self.plan.chunk(off, len) {
                ChunkUse::Unused => {
                    ids.push(Slot::Unused);
                    continue;
                }
                ChunkUse::Used => Vec::new(),
                ChunkUse::Partly(holes) => holes,
            };
            self.dev.read_at(buf, off)?;
            for (s, e) in holes {
                buf[s..e].fill(0);
            }
            ids.push(if image::is_zero(buf) {
                Slot::Zero
            } else {
                Slot::Data(self.chunk_id(buf), image::quick_id(buf))
            });
        }
        let asked: Vec<ChunkId> =
            ids.iter().filter_map(|s| if let Slot::Data(id, _) = s { Some(*id) } else { None }).collect();
        let stored = if asked.is_empty() { Vec::new() } else { self.client.missing(self.backup, &asked)? };
        let mut answers = stored.into_iter();
        for (k, i) in (first..last).enumerate() {
            if self.stopping() {
                return Ok(());
            }
            let (off, len) = self.range(i);
            let quick = if let Slot::Data(_, q) = ids[k] { q } else { 0 };
            let chunk = match ids[k] {
                Slot::Zero => Chunk::Zero,
                Slot::Unused => Chunk::Unused,
                Slot::Data(id, _) => {
                    let mut blob_len = answers.next().unwrap_or(0);
                    if blob_len == 0 {
                        let plain = &bufs[k][..len];
                        blob_len = match self.claim(id) {
                            Err(Some(l)) => l,
                            // Being sent by another worker: same bytes, same blob length.
                            Err(None) => self.blob_len(plain),
                            Ok(()) => {
                                let blob = self.blob(&id, plain)?;
                                self.client
                                    .put_chunk(self.backup, &id, &blob)
                                    .map_err(|e| EngineError::new(format!("chunk {i} at offset {off}: {e}")))?;
                                self.claimed
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(id, Some(blob.len() as u32));
                                self.sent.fetch_add(blob.len() as u64, Ordering::Relaxed);
                                self.new_chunks.fetch_add(1, Ordering::Relaxed);
                                blob.len() as u32
                            }
                        };
                    }
                    Chunk::Data { id, blob_len }
                }
            };
            self.done.fetch_add(len as u64, Ordering::Relaxed);
            if out.send(Ok((i, chunk, quick))).is_err() {
                return Err(EngineError::new("backup collector stopped"));
            }
        }
        Ok(())
    }

    fn progress(&self, start: Instant) -> Progress {
        Progress {
            action: "backup",
            done: self.done.load(Ordering::Relaxed),
            total: self.dev.bytes,
            sent: self.sent.load(Ordering::Relaxed),
            elapsed: start.elapsed(),
        }
    }
}

/// Backs up the whole of `dev` to the server. On any failure after the
/// server opened the backup (cancelling included: the error is then
/// [`CANCELLED`]), it is marked failed there (best effort) and never
/// becomes complete.
pub fn backup(
    dev: &Device,
    client: &dyn Store,
    opts: &BackupOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<BackupReport, EngineError> {
    let start = Instant::now();
    if opts.chunk_size == 0 || opts.chunk_size > image::MAX_CHUNK_SIZE {
        return Err(EngineError::new(format!("chunk size {} out of range", opts.chunk_size)));
    }
    let own = opts.with_own_key()?;
    let opts = own.as_ref().unwrap_or(opts);
    let fit = memory::fit_backup(
        opts.chunk_size,
        opts.level,
        opts.available.or_else(memory::available),
        opts.threads,
        opts.group,
    )
    .map_err(|e| EngineError::new(format!("{e}; nothing was sent")))?;
    let sized = BackupOptions { threads: fit.threads, group: fit.group, chunk_size: fit.chunk_size, ..opts.clone() };
    let opts = &sized;
    let plan = disk_plan(dev, opts.raw);
    let (table, extents) = table_extents_masked(dev, &plan)?;
    let id = client.open_backup(&opts.name, dev.bytes, opts.chunk_size, opts.lock.as_ref())?;
    let result = run(dev, client, opts, fit, &plan, id, table, extents, start, progress);
    if let Err(e) = &result {
        let _ = client.fail(id, &e.0);
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn run(
    dev: &Device,
    client: &dyn Store,
    opts: &BackupOptions,
    fit: Fit,
    plan: &DiskPlan,
    id: i64,
    table: TableKind,
    extents: Vec<Extent>,
    start: Instant,
    progress: &mut dyn FnMut(&Progress),
) -> Result<BackupReport, EngineError> {
    let count = Manifest::chunk_count(dev.bytes, opts.chunk_size) as usize;
    let shared = Shared {
        dev,
        client,
        opts,
        plan,
        backup: id,
        count,
        next_group: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
        done: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        new_chunks: AtomicU64::new(0),
        claimed: Mutex::new(HashMap::new()),
    };
    let mut chunks: Vec<Option<Chunk>> = vec![None; count];
    let mut quick: Vec<u128> = vec![0; count];
    let mut first_error = None;
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..opts.threads.max(1) {
            let tx = tx.clone();
            let shared = &shared;
            s.spawn(move || shared.work(&tx));
        }
        drop(tx);
        let mut last = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok((i, c, q))) => {
                    chunks[i] = Some(c);
                    quick[i] = q;
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                progress(&shared.progress(start));
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    if opts.cancel.load(Ordering::Relaxed) {
        return Err(EngineError::new(CANCELLED));
    }
    progress(&shared.progress(start));
    let chunks: Vec<Chunk> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or_else(|| EngineError::new(format!("chunk {i} was never read"))))
        .collect::<Result<_, _>>()?;
    let manifest = Manifest {
        created: now_unix(),
        chunk_size: opts.chunk_size,
        disk_bytes: dev.bytes,
        logical: dev.logical,
        physical: dev.physical,
        table,
        pc: opts.pc.clone(),
        name: opts.name.clone(),
        model: opts.model.clone(),
        serial: opts.serial.clone(),
        extents,
        partitions: plan.partitions.clone(),
        chunks,
        quick,
        sealed: None,
    };
    let stored = match &opts.key {
        Some(k) => {
            let mut nonce = [0u8; seal::NONCE_BYTES];
            crate::lock::random_bytes(&mut nonce)?;
            manifest.sealed_wrapped(k, &nonce, opts.wrapped.clone(), opts.escrowed.clone())
        }
        None => manifest.clone(),
    };
    client.finish(id, &stored.encode())?;
    Ok(BackupReport {
        id,
        disk_bytes: dev.bytes,
        chunks: count as u64,
        zero_chunks: manifest.zero_chunks(),
        unused_chunks: manifest.unused_chunks(),
        unused_bytes: plan.unused_bytes(),
        partitions: plan.partitions.clone(),
        new_chunks: shared.new_chunks.load(Ordering::Relaxed),
        sent_bytes: shared.sent.load(Ordering::Relaxed),
        blob_bytes: manifest.blob_bytes(),
        elapsed: start.elapsed(),
        fit,
    })
}
