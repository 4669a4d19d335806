//! The bootvault image format (docs/FORMAT.md): chunk ids, blobs, the
//! manifest, and the single-file form.
//!
//! Pure: bytes in, values out (the single-file form streams through
//! `Read`/`Write` and nothing else). Every length read from input is
//! checked before it is used or allocated; damage is reported with the
//! byte offset where it was found.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Write};

pub type ChunkId = [u8; 32];

/// The single-file form's version.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest version written when a manifest needs what version 1
/// cannot say (partition records, unused chunks); version 1 manifests are
/// still read and written unchanged, so their digests stay the same.
pub const MANIFEST_VERSION: u32 = 2;
/// The version of an encrypted backup's public manifest: the chunk index
/// the server needs, and the whole manifest sealed ([`Manifest::sealed`]).
pub const MANIFEST_VERSION_SEALED: u32 = 3;
/// The most a sealed manifest may weigh.
const MAX_SEALED_BYTES: usize = 256 << 20;
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Smallest chunk size of a new backup. The format reads any size from 1,
/// but chunks below the largest sector size in use (4 KiB) only make
/// manifests longer and every request smaller.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest disk a new backup may cover: 64 PiB, beyond any disk made, and
/// far inside SQLite's `i64` and a `u64` offset plus a chunk.
pub const MAX_DISK_BYTES: u64 = 1 << 56;
/// zstd level 1: at most `pigz -1`'s size on installed systems and on
/// disks of already-compressed files, and with the server's checks about
/// as fast as `dd | zstd -1 -T2` on two cores; level 2 stores 5 % less
/// for 25 % more CPU (BENCHMARKS.md "Chunk codec"). 0 stores chunks
/// uncompressed.
pub const DEFAULT_LEVEL: u8 = 1;
/// Highest level a backup may ask for (zstd's levels above this cost far
/// more time than they save).
pub const MAX_LEVEL: u8 = 19;

const MANIFEST_MAGIC: &[u8; 8] = b"BVMANIF1";
const IMAGE_MAGIC: &[u8; 8] = b"BVIMAGE1";
const END_MAGIC: &[u8; 8] = b"BVEND001";
const MAX_EXTENT_BYTES: u64 = 16 << 20;
const TAG_DEFLATE: u8 = 0;
const TAG_RAW: u8 = 1;
const TAG_ZSTD: u8 = 2;

/// The sizes of a new backup, checked as given (never cut to fit); the
/// error starts with the field's name, as the open request spells it, and
/// gives its range.
pub fn check_new_backup(disk_bytes: u64, chunk_size: u32) -> Result<(), String> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(format!("chunk_size={chunk_size}: out of range {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"));
    }
    if !(1..=MAX_DISK_BYTES).contains(&disk_bytes) {
        return Err(format!("disk_bytes={disk_bytes}: out of range 1..={MAX_DISK_BYTES}"));
    }
    Ok(())
}

pub fn chunk_id(plain: &[u8]) -> ChunkId {
    *blake3::hash(plain).as_bytes()
}

pub fn hex(id: &ChunkId) -> String {
    crate::wire::to_hex(id)
}

/// 64 hex digits (either case) to an id; nothing else, not even a sign
/// (`u8::from_str_radix` takes one), so every id has one spelling.
pub fn parse_hex(s: &str) -> Option<ChunkId> {
    let mut id = [0u8; 32];
    crate::wire::hex_into(s, &mut id).ok()?;
    Some(id)
}

/// Whether every byte is zero (word at a time).
pub fn is_zero(plain: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u128 has no invalid bit patterns; align_to only splits.
        unsafe { plain.align_to::<u128>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobError {
    Empty,
    UnknownTag(u8),
    Inflate(String),
    TooLarge {
        max: usize,
    },
    WrongLength {
        expected: usize,
        got: usize,
    },
    WrongHash {
        expected: ChunkId,
        got: ChunkId,
    },
    /// An encrypted blob that could not be opened.
    Sealed(String),
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobError::Empty => write!(f, "empty blob"),
            BlobError::UnknownTag(t) => write!(f, "unknown blob tag {t}"),
            BlobError::Inflate(e) => write!(f, "blob does not inflate: {e}"),
            BlobError::TooLarge { max } => write!(f, "blob inflates to more than {max} bytes"),
            BlobError::WrongLength { expected, got } => {
                write!(f, "blob holds {got} bytes, the chunk has {expected}")
            }
            BlobError::Sealed(e) => write!(f, "{e}"),
            BlobError::WrongHash { expected, got } => {
                write!(f, "blob content hash {} does not match chunk id {}", hex(got), hex(expected))
            }
        }
    }
}

impl std::error::Error for BlobError {}

thread_local! {
    // One compression and one decompression context per thread: a context
    // holds about a megabyte of tables, made once instead of per chunk.
    static ZSTD_ENCODER: std::cell::RefCell<Option<(u8, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static ZSTD_DECODER: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Tag 2 + a zstd frame at `level` (1..=[`MAX_LEVEL`]), or tag 1 + the
/// plain bytes when that is not smaller (or `level` is 0). Tag 0 (raw
/// deflate, the codec of the first images) is still decoded, never written.
pub fn encode_blob(plain: &[u8], level: u8) -> Vec<u8> {
    let level = level.min(MAX_LEVEL);
    let packed = if level == 0 {
        None
    } else {
        ZSTD_ENCODER.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                *slot = zstd::bulk::Compressor::new(i32::from(level)).ok().map(|c| (level, c));
            }
            let (_, c) = slot.as_mut()?;
            // A frame that would not be smaller is not wanted: capacity = plain size.
            let mut out = vec![0u8; plain.len() + 1];
            out[0] = TAG_ZSTD;
            let n = c.compress_to_buffer(plain, &mut out[1..plain.len().max(1)]).ok()?;
            out.truncate(n + 1);
            Some(out)
        })
    };
    packed.filter(|p| p.len() - 1 < plain.len()).unwrap_or_else(|| {
        let mut out = Vec::with_capacity(plain.len() + 1);
        out.push(TAG_RAW);
        out.extend_from_slice(plain);
        out
    })
}

pub fn decode_blob(blob: &[u8], max_len: usize) -> Result<Vec<u8>, BlobError> {
    let (&tag, payload) = blob.split_first().ok_or(BlobError::Empty)?;
    match tag {
        TAG_ZSTD => decode_zstd(payload, max_len),
        TAG_DEFLATE => miniz_oxide::inflate::decompress_to_vec_with_limit(payload, max_len).map_err(|e| {
            if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput {
                BlobError::TooLarge { max: max_len }
            } else {
                BlobError::Inflate(format!("{:?}", e.status))
            }
        }),
        TAG_RAW if payload.len() <= max_len => Ok(payload.to_vec()),
        TAG_RAW => Err(BlobError::TooLarge { max: max_len }),
        t => Err(BlobError::UnknownTag(t)),
    }
}

/// One zstd frame, inflating to at most `max_len` bytes (the frame's own
/// size field is checked before anything is allocated for it).
fn decode_zstd(payload: &[u8], max_len: usize) -> Result<Vec<u8>, BlobError> {
    // The buffer is what the frame says it holds (our frames always say),
    // not `max_len`: zeroing 16 MiB per chunk cost more than inflating it.
    let cap = match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) if n > max_len as u64 => return Err(BlobError::TooLarge { max: max_len }),
        Ok(Some(n)) => n as usize,
        Ok(None) => max_len,
        Err(_) => return Err(BlobError::Inflate("not a zstd frame".into())),
    };
    ZSTD_DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        let d = slot.as_mut().ok_or_else(|| BlobError::Inflate("no zstd context (out of memory?)".into()))?;
        // Into the vector's spare capacity: nothing is zeroed first.
        let mut out = Vec::with_capacity(cap);
        match d.decompress_to_buffer(payload, &mut out) {
            Ok(n) => {
                debug_assert_eq!(n, out.len());
                Ok(out)
            }
            Err(e) if e.to_string().contains("Destination buffer is too small") => {
                Err(BlobError::TooLarge { max: max_len })
            }
            Err(e) => Err(BlobError::Inflate(e.to_string())),
        }
    })
}

/// What a store can check of an encrypted blob without the key: its tag
/// and that its size is one a chunk can have. The rest (that it opens,
/// and hashes to its name) only the key's holders can check, and do,
/// before any byte of it reaches a disk.
pub fn check_sealed_shape(blob: &[u8]) -> Result<(), BlobError> {
    if blob.first() != Some(&crate::seal::TAG_SEALED) {
        return Err(BlobError::Sealed("not an encrypted blob".into()));
    }
    let max = MAX_CHUNK_SIZE as usize + 1 + crate::seal::OVERHEAD;
    if blob.len() < crate::seal::OVERHEAD + 1 || blob.len() > max {
        return Err(BlobError::Sealed(format!("an encrypted blob of {} bytes, not a chunk's size", blob.len())));
    }
    Ok(())
}

/// A chunk's plain bytes from its blob, checked against its id: under a
/// data key (an encrypted backup), opened, decoded and named with the
/// key; without one, as [`decode_verified`].
/// An encrypted blob is decrypted in place (its buffer is the caller's).
pub fn decode_with(
    blob: &mut [u8],
    len: usize,
    id: &ChunkId,
    key: Option<&crate::seal::DataKey>,
) -> Result<Vec<u8>, BlobError> {
    let Some(key) = key else {
        if blob.first() == Some(&crate::seal::TAG_SEALED) {
            return Err(BlobError::Sealed("an encrypted chunk, and no key to open it".into()));
        }
        return decode_verified(blob, len, id);
    };
    let inner = key.open_chunk_in_place(id, blob).map_err(|e| BlobError::Sealed(e.to_string()))?;
    let plain = decode_blob(inner, len)?;
    if plain.len() != len {
        return Err(BlobError::WrongLength { expected: len, got: plain.len() });
    }
    let got = key.chunk_id(&plain);
    if got != *id {
        return Err(BlobError::WrongHash { expected: *id, got });
    }
    Ok(plain)
}

pub fn decode_verified(blob: &[u8], len: usize, id: &ChunkId) -> Result<Vec<u8>, BlobError> {
    let plain = decode_blob(blob, len)?;
    if plain.len() != len {
        return Err(BlobError::WrongLength { expected: len, got: plain.len() });
    }
    let got = chunk_id(&plain);
    if got != *id {
        return Err(BlobError::WrongHash { expected: *id, got });
    }
    Ok(plain)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    None,
    Mbr,
    Gpt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// All zeros on the disk.
    Zero,
    Data {
        id: ChunkId,
        blob_len: u32,
    },
    /// Free space of a filesystem taken used-only: nothing was read or
    /// stored, and a restore may leave or discard whatever the target
    /// holds there (manifest version 2).
    Unused,
}

/// How one partition was taken (manifest version 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRecord {
    /// As Linux numbers it; 0 for a filesystem on a disk without a table.
    pub number: u32,
    /// Byte offset and length on the disk.
    pub start: u64,
    pub bytes: u64,
    /// fsprobe's `TYPE` (`ext4`, `ntfs`, ...); empty when not recognised.
    pub fs: String,
    /// Only the bytes the filesystem uses were read; the rest was zeroed.
    pub used_only: bool,
    /// Bytes taken: the used bytes, or `bytes` when taken whole.
    pub used_bytes: u64,
    /// Why the partition was taken whole; empty when used-only.
    pub note: String,
}

impl PartitionRecord {
    /// `partition 2 (ext4): used only, 1.2 GiB of 20.0 GiB` or `partition
    /// 3 (ntfs): whole, NTFS volume is dirty`.
    pub fn describe(&self) -> String {
        let fs = if self.fs.is_empty() { "unknown" } else { &self.fs };
        if self.used_only {
            format!(
                "partition {} ({fs}): used only, {} of {}",
                self.number,
                crate::units::human_bytes(self.used_bytes),
                crate::units::human_bytes(self.bytes)
            )
        } else {
            format!("partition {} ({fs}): whole, {}", self.number, self.note)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub created: u64,
    pub chunk_size: u32,
    pub disk_bytes: u64,
    pub logical: u32,
    pub physical: u32,
    pub table: TableKind,
    pub pc: String,
    pub name: String,
    pub model: String,
    pub serial: String,
    pub extents: Vec<Extent>,
    /// Empty in version 1 manifests.
    pub partitions: Vec<PartitionRecord>,
    pub chunks: Vec<Chunk>,
    /// Version 2: per chunk, the XXH3-128 of its bytes (0 for chunks that
    /// are not data), or empty. A differential restore compares the
    /// target with these: several times faster to compute than BLAKE3, and
    /// a match is still checked against nothing weaker than 128 bits.
    pub quick: Vec<u128>,
    /// Version 3, an encrypted backup: the whole manifest sealed with the
    /// backup's data key. The manifest around it is the public index the
    /// server keeps (chunk ids and sizes, for completion and gc), without
    /// the table, disk identity, partitions or fingerprints.
    pub sealed: Option<Sealed>,
}

/// An encrypted backup's real manifest, as its public one carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Which data key sealed it (`DataKey::fingerprint_bytes`; not secret).
    pub key: [u8; 8],
    pub blob: Vec<u8>,
    /// A password-locked backup's own key, wrapped with the password
    /// (`seal::wrap_key`, [`crate::seal::WRAPPED_BYTES`]); absent when the
    /// backup is sealed with the site's data key.
    pub wrapped: Option<Vec<u8>>,
    /// The same key wrapped for the admin's escrow key
    /// (`seal::escrow_wrap`, [`crate::seal::ESCROWED_BYTES`]).
    pub escrowed: Option<Vec<u8>>,
}

/// The quick fingerprint of a chunk's plain bytes ([`Manifest::quick`]).
pub fn quick_id(plain: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(plain)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    pub offset: u64,
    pub what: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.what)
    }
}

impl std::error::Error for FormatError {}

fn ferr<T>(offset: u64, what: impl Into<String>) -> Result<T, FormatError> {
    Err(FormatError { offset, what: what.into() })
}

/// A cursor over bytes that checks every read.
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        match self.pos.checked_add(n).and_then(|end| self.b.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => ferr(
                self.base + self.pos as u64,
                format!("truncated: {what} needs {n} bytes, {} left", self.b.len().saturating_sub(self.pos)),
            ),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8, FormatError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, FormatError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn id(&mut self, what: &str) -> Result<ChunkId, FormatError> {
        let mut id = [0u8; 32];
        id.copy_from_slice(self.take(32, what)?);
        Ok(id)
    }
    fn string(&mut self, what: &str) -> Result<String, FormatError> {
        let at = self.base + self.pos as u64;
        let n = self.u16(what)? as usize;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).or_else(|_| ferr(at, format!("{what} is not UTF-8")))
    }
    fn at(&self) -> u64 {
        self.base + self.pos as u64
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    // Longer strings are cut at a character boundary (names, models).
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

impl Manifest {
    pub fn chunk_count(disk_bytes: u64, chunk_size: u32) -> u64 {
        if chunk_size == 0 {
            return 0;
        }
        disk_bytes.div_ceil(u64::from(chunk_size))
    }

    pub fn chunk_range(&self, i: usize) -> (u64, usize) {
        let cs = u64::from(self.chunk_size);
        let off = (i as u64).saturating_mul(cs);
        (off, self.disk_bytes.saturating_sub(off).min(cs) as usize)
    }

    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.chunks.len() * 37);
        let version = self.version();
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&self.created.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.disk_bytes.to_le_bytes());
        out.extend_from_slice(&self.logical.to_le_bytes());
        out.extend_from_slice(&self.physical.to_le_bytes());
        out.push(match self.table {
            TableKind::None => 0,
            TableKind::Mbr => 1,
            TableKind::Gpt => 2,
        });
        for s in [&self.pc, &self.name, &self.model, &self.serial] {
            put_string(&mut out, s);
        }
        out.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        for e in &self.extents {
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.data);
        }
        if version >= 2 {
            out.extend_from_slice(&(self.partitions.len() as u32).to_le_bytes());
            for p in &self.partitions {
                out.extend_from_slice(&p.number.to_le_bytes());
                out.extend_from_slice(&p.start.to_le_bytes());
                out.extend_from_slice(&p.bytes.to_le_bytes());
                put_string(&mut out, &p.fs);
                out.push(u8::from(p.used_only));
                out.extend_from_slice(&p.used_bytes.to_le_bytes());
                put_string(&mut out, &p.note);
            }
        }
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            match c {
                Chunk::Zero => out.push(0),
                Chunk::Data { id, blob_len } => {
                    out.push(1);
                    out.extend_from_slice(id);
                    out.extend_from_slice(&blob_len.to_le_bytes());
                }
                Chunk::Unused => out.push(2),
            }
        }
        if version >= 2 {
            // Quick fingerprints: a flag, then one per chunk.
            let with = !self.quick.is_empty() && self.quick.len() == self.chunks.len();
            out.push(u8::from(with));
            if with {
                for q in &self.quick {
                    out.extend_from_slice(&q.to_le_bytes());
                }
            }
        }
        if let Some(s) = &self.sealed {
            out.extend_from_slice(&s.key);
            out.extend_from_slice(&(s.blob.len() as u32).to_le_bytes());
            out.extend_from_slice(&s.blob);
            // Optional, so version-3 manifests without one read as before.
            if let Some(w) = &s.wrapped {
                out.push(1);
                out.extend_from_slice(w);
            }
            if let Some(e) = &s.escrowed {
                out.push(2);
                out.extend_from_slice(e);
            }
        }
        out
    }

    /// 1 when version 1 can say everything (old manifests keep their
    /// bytes and digest), else [`MANIFEST_VERSION`].
    pub fn version(&self) -> u32 {
        if self.sealed.is_some() {
            MANIFEST_VERSION_SEALED
        } else if self.partitions.is_empty()
            && self.quick.is_empty()
            && !self.chunks.iter().any(|c| matches!(c, Chunk::Unused))
        {
            1
        } else {
            MANIFEST_VERSION
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.body();
        let digest = chunk_id(&out);
        out.extend_from_slice(&digest);
        out
    }

    pub fn digest(&self) -> ChunkId {
        chunk_id(&self.body())
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, FormatError> {
        Self::decode_at(bytes, 0)
    }

    /// Decodes a manifest found at byte `base` of a larger file (offsets in
    /// errors are then file offsets).
    fn decode_at(bytes: &[u8], base: u64) -> Result<Manifest, FormatError> {
        if bytes.len() < 8 + 32 {
            return ferr(base, format!("manifest of {} bytes is too short", bytes.len()));
        }
        let split = bytes.len() - 32;
        let mut c = Cur { b: &bytes[..split], pos: 0, base };
        if c.take(8, "magic")? != MANIFEST_MAGIC {
            return ferr(base, "not a bootvault manifest (bad magic)");
        }
        let version = c.u32("version")?;
        if !(1..=MANIFEST_VERSION_SEALED).contains(&version) {
            return ferr(
                base + 8,
                format!("manifest version {version}, this program reads 1 to {MANIFEST_VERSION_SEALED}"),
            );
        }
        // Check the digest before trusting any field.
        if chunk_id(&bytes[..split]) != bytes[split..] {
            return ferr(base + split as u64, "manifest digest mismatch (the manifest is damaged)");
        }
        let created = c.u64("created")?;
        let at = c.at();
        let chunk_size = c.u32("chunk size")?;
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return ferr(at, format!("chunk size {chunk_size} out of range"));
        }
        let disk_bytes = c.u64("disk size")?;
        let logical = c.u32("logical sector size")?;
        let physical = c.u32("physical sector size")?;
        let at = c.at();
        let table = match c.u8("table kind")? {
            0 => TableKind::None,
            1 => TableKind::Mbr,
            2 => TableKind::Gpt,
            k => return ferr(at, format!("unknown partition table kind {k}")),
        };
        let pc = c.string("pc name")?;
        let name = c.string("backup name")?;
        let model = c.string("disk model")?;
        let serial = c.string("disk serial")?;
        let n_ext = c.u32("extent count")?;
        let mut extents = Vec::new();
        let mut ext_total = 0u64;
        for _ in 0..n_ext {
            let offset = c.u64("extent offset")?;
            let at = c.at();
            let len = c.u32("extent length")?;
            ext_total += u64::from(len);
            if ext_total > MAX_EXTENT_BYTES {
                return ferr(at, "partition table extents exceed 16 MiB");
            }
            extents.push(Extent { offset, data: c.take(len as usize, "extent data")?.to_vec() });
        }
        let mut partitions = Vec::new();
        if version >= 2 {
            let at = c.at();
            let n = c.u32("partition count")?;
            // The table formats hold at most 128 (GPT) or a chain of MBR logicals.
            if n > 4096 {
                return ferr(at, format!("{n} partition records, more than any table holds"));
            }
            for _ in 0..n {
                let number = c.u32("partition number")?;
                let start = c.u64("partition start")?;
                let bytes = c.u64("partition length")?;
                let fs = c.string("partition filesystem")?;
                let at = c.at();
                let used_only = match c.u8("partition mode")? {
                    0 => false,
                    1 => true,
                    k => return ferr(at, format!("unknown partition mode {k}")),
                };
                let used_bytes = c.u64("partition used bytes")?;
                let note = c.string("partition note")?;
                partitions.push(PartitionRecord { number, start, bytes, fs, used_only, used_bytes, note });
            }
        }
        let at = c.at();
        let count = c.u64("chunk count")?;
        let want = Self::chunk_count(disk_bytes, chunk_size);
        if count != want {
            return ferr(at, format!("chunk count {count} does not fit a disk of {disk_bytes} bytes in {chunk_size}-byte chunks ({want})"));
        }
        // Each chunk takes at least one byte: refuse counts the input cannot hold.
        if count > (split - c.pos) as u64 {
            return ferr(at, format!("chunk count {count} exceeds the manifest's size"));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let at = c.at();
            match c.u8("chunk kind")? {
                0 => chunks.push(Chunk::Zero),
                1 => {
                    let id = c.id("chunk id")?;
                    let blob_len = c.u32("blob length")?;
                    chunks.push(Chunk::Data { id, blob_len });
                }
                2 if version >= 2 => chunks.push(Chunk::Unused),
                k => return ferr(at, format!("unknown chunk kind {k}")),
            }
        }
        let mut quick = Vec::new();
        if version >= 2 {
            let at = c.at();
            match c.u8("fingerprint flag")? {
                0 => {}
                1 => {
                    if count.saturating_mul(16) > (split - c.pos) as u64 {
                        return ferr(at, "fingerprints exceed the manifest's size");
                    }
                    quick.reserve(count as usize);
                    for _ in 0..count {
                        let b = c.take(16, "fingerprint")?;
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        quick.push(u128::from_le_bytes(a));
                    }
                }
                k => return ferr(at, format!("unknown fingerprint flag {k}")),
            }
        }
        let mut sealed = None;
        if version >= MANIFEST_VERSION_SEALED {
            let mut key = [0u8; 8];
            key.copy_from_slice(c.take(8, "key fingerprint")?);
            let at = c.at();
            let len = c.u32("sealed manifest length")? as usize;
            if len > MAX_SEALED_BYTES {
                return ferr(at, format!("sealed manifest of {len} bytes, more than {MAX_SEALED_BYTES}"));
            }
            let blob = c.take(len, "sealed manifest")?.to_vec();
            let (mut wrapped, mut escrowed) = (None, None);
            while c.pos < split {
                let at = c.at();
                match c.take(1, "wrapped key flag")?[0] {
                    1 if wrapped.is_none() => {
                        wrapped = Some(c.take(crate::seal::WRAPPED_BYTES, "wrapped key")?.to_vec())
                    }
                    2 if escrowed.is_none() => {
                        escrowed = Some(c.take(crate::seal::ESCROWED_BYTES, "escrowed key")?.to_vec())
                    }
                    k => return ferr(at, format!("unknown or repeated wrapped key flag {k}")),
                }
            }
            sealed = Some(Sealed { key, blob, wrapped, escrowed });
        }
        if c.pos != split {
            return ferr(c.at(), format!("{} unexpected bytes before the digest", split - c.pos));
        }
        Ok(Manifest {
            created,
            chunk_size,
            disk_bytes,
            logical,
            physical,
            table,
            pc,
            name,
            model,
            serial,
            extents,
            partitions,
            chunks,
            quick,
            sealed,
        })
    }

    /// The public manifest of an encrypted backup: this one sealed whole
    /// with `key`, around the index the server needs and nothing else.
    pub fn sealed_with(&self, key: &crate::seal::DataKey, nonce: &[u8; crate::seal::NONCE_BYTES]) -> Manifest {
        self.sealed_wrapped(key, nonce, None, None)
    }

    /// [`Manifest::sealed_with`] a locked backup's own key, carrying it
    /// `wrapped` with the password.
    pub fn sealed_wrapped(
        &self,
        key: &crate::seal::DataKey,
        nonce: &[u8; crate::seal::NONCE_BYTES],
        wrapped: Option<Vec<u8>>,
        escrowed: Option<Vec<u8>>,
    ) -> Manifest {
        Manifest {
            model: String::new(),
            serial: String::new(),
            extents: Vec::new(),
            partitions: Vec::new(),
            quick: Vec::new(),
            sealed: Some(Sealed {
                key: key.fingerprint_bytes(),
                blob: key.seal_manifest(&self.encode(), nonce),
                wrapped,
                escrowed,
            }),
            ..self.clone()
        }
    }

    /// A password-locked backup's own key, unwrapped with the password's
    /// `wrap` key (None: the backup has no key of its own).
    pub fn own_key(&self, wrap: &[u8; 32]) -> Result<Option<crate::seal::DataKey>, String> {
        let Some(s) = &self.sealed else { return Ok(None) };
        let Some(w) = &s.wrapped else { return Ok(None) };
        let key = crate::seal::unwrap_key(wrap, w, &s.key)
            .map_err(|_| "the backup's own key does not open with this password (or was altered)".to_owned())?;
        Ok(Some(crate::seal::DataKey::new(&key)))
    }

    /// The real manifest of a backup: itself when it is not encrypted;
    /// else its sealed copy, opened with `key` and checked against the
    /// public index (a server that altered either is caught here).
    pub fn unsealed(&self, key: Option<&crate::seal::DataKey>) -> Result<Manifest, String> {
        let Some(s) = &self.sealed else { return Ok(self.clone()) };
        let hexfp = |b: &[u8; 8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let own = "the backup is encrypted with a key of its own, which its restore password opens; give the password";
        let Some(key) = key else {
            if s.wrapped.is_some() {
                return Err(own.into());
            }
            return Err(format!("the backup is encrypted (key {}); give its key", hexfp(&s.key)));
        };
        if key.fingerprint_bytes() != s.key && s.wrapped.is_some() {
            return Err(own.into());
        }
        if key.fingerprint_bytes() != s.key {
            return Err(format!(
                "the backup is encrypted with key {}, not with this key ({})",
                hexfp(&s.key),
                key.fingerprint()
            ));
        }
        let bytes = key.open_manifest(&s.blob).map_err(|e| format!("sealed manifest: {e}"))?;
        let m = Manifest::decode(&bytes).map_err(|e| format!("sealed manifest: {e}"))?;
        let same = m.sealed.is_none()
            && m.chunks == self.chunks
            && (m.created, m.chunk_size, m.disk_bytes, &m.pc, &m.name)
                == (self.created, self.chunk_size, self.disk_bytes, &self.pc, &self.name);
        if !same {
            return Err("the manifest's public index differs from its sealed copy: the manifest was altered".into());
        }
        Ok(m)
    }

    pub fn data_ids(&self) -> Vec<ChunkId> {
        let mut seen = HashSet::new();
        self.chunks
            .iter()
            .filter_map(|c| match c {
                Chunk::Data { id, .. } if seen.insert(*id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    pub fn blob_bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        self.chunks
            .iter()
            .map(|c| match c {
                Chunk::Data { id, blob_len } if seen.insert(*id) => u64::from(*blob_len),
                _ => 0,
            })
            .sum()
    }

    pub fn zero_chunks(&self) -> u64 {
        self.chunks.iter().filter(|c| matches!(c, Chunk::Zero)).count() as u64
    }

    /// Chunks of free space that were neither read nor stored.
    pub fn unused_chunks(&self) -> u64 {
        self.chunks.iter().filter(|c| matches!(c, Chunk::Unused)).count() as u64
    }
}

// ---------------------------------------------------------------------------
// Single-file form.

const TAG_CHUNK: u8 = 1;
const TAG_MANIFEST: u8 = 2;

/// Counts and hashes what passes through.
struct Tee<W> {
    inner: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> Tee<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.inner.write_all(b)?;
        self.hasher.update(b);
        self.written += b.len() as u64;
        Ok(())
    }
}

pub struct ImageWriter<W: Write> {
    out: Tee<W>,
    seen: HashSet<ChunkId>,
}

impl<W: Write> ImageWriter<W> {
    pub fn new(out: W, chunk_size: u32) -> io::Result<Self> {
        let mut w =
            ImageWriter { out: Tee { inner: out, hasher: blake3::Hasher::new(), written: 0 }, seen: HashSet::new() };
        w.out.put(IMAGE_MAGIC)?;
        w.out.put(&FORMAT_VERSION.to_le_bytes())?;
        w.out.put(&chunk_size.to_le_bytes())?;
        Ok(w)
    }

    pub fn put(&mut self, id: &ChunkId, blob: &[u8]) -> io::Result<bool> {
        if self.seen.contains(id) {
            return Ok(false);
        }
        let len =
            u32::try_from(blob.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "blob too large"))?;
        self.out.put(&[TAG_CHUNK])?;
        self.out.put(id)?;
        self.out.put(&len.to_le_bytes())?;
        self.out.put(blob)?;
        self.seen.insert(*id);
        Ok(true)
    }

    pub fn finish(mut self, manifest: &Manifest) -> io::Result<W> {
        if let Some(missing) = manifest.data_ids().iter().find(|id| !self.seen.contains(*id)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the manifest names chunk {} which was not written", hex(missing)),
            ));
        }
        let bytes = manifest.encode();
        let at = self.out.written;
        self.out.put(&[TAG_MANIFEST])?;
        self.out.put(&(bytes.len() as u64).to_le_bytes())?;
        self.out.put(&bytes)?;
        let digest = *self.out.hasher.finalize().as_bytes();
        let mut out = self.out.inner;
        out.write_all(END_MAGIC)?;
        out.write_all(&at.to_le_bytes())?;
        out.write_all(&digest)?;
        out.flush()?;
        Ok(out)
    }
}

#[derive(Debug)]
pub enum Record {
    Chunk {
        id: ChunkId,
        blob: Vec<u8>,
    },
    /// Boxed: a manifest is much larger than a chunk record's head.
    Manifest(Box<Manifest>),
}

pub struct ImageReader<R: Read> {
    input: R,
    hasher: blake3::Hasher,
    pos: u64,
    chunk_size: u32,
    seen: HashSet<ChunkId>,
    done: bool,
}

impl<R: Read> ImageReader<R> {
    pub fn new(input: R) -> Result<Self, FormatError> {
        let mut r = ImageReader {
            input,
            hasher: blake3::Hasher::new(),
            pos: 0,
            chunk_size: 0,
            seen: HashSet::new(),
            done: false,
        };
        let mut head = [0u8; 16];
        r.read(&mut head, "header", true)?;
        if &head[..8] != IMAGE_MAGIC {
            return ferr(0, "not a bootvault image file (bad magic)");
        }
        let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if version != FORMAT_VERSION {
            return ferr(8, format!("image version {version}, this program reads {FORMAT_VERSION}"));
        }
        r.chunk_size = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
        if r.chunk_size == 0 || r.chunk_size > MAX_CHUNK_SIZE {
            return ferr(12, format!("chunk size {} out of range", r.chunk_size));
        }
        Ok(r)
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    fn read(&mut self, buf: &mut [u8], what: &str, hash: bool) -> Result<(), FormatError> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => return ferr(self.pos + got as u64, format!("truncated: {what} ends early")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ferr(self.pos + got as u64, format!("reading {what}: {e}")),
            }
        }
        if hash {
            self.hasher.update(buf);
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    pub fn next_record(&mut self) -> Result<Option<Record>, FormatError> {
        if self.done {
            return Ok(None);
        }
        let at = self.pos;
        let mut tag = [0u8; 1];
        self.read(&mut tag, "record tag", true)?;
        match tag[0] {
            TAG_CHUNK => {
                let mut head = [0u8; 36];
                self.read(&mut head, "chunk record", true)?;
                let mut id = [0u8; 32];
                id.copy_from_slice(&head[..32]);
                let len = u32::from_le_bytes([head[32], head[33], head[34], head[35]]);
                if len == 0 || len > self.chunk_size.saturating_add(64) {
                    return ferr(at, format!("chunk record with blob length {len}"));
                }
                let mut blob = vec![0u8; len as usize];
                self.read(&mut blob, "chunk blob", true)?;
                let damaged = |e: BlobError| FormatError { offset: at, what: format!("chunk {}: {e}", hex(&id)) };
                if blob[0] == crate::seal::TAG_SEALED {
                    // An encrypted backup's: its shape only, as a store
                    // checks it; the restore that opens it checks the rest.
                    check_sealed_shape(&blob).map_err(damaged)?;
                } else {
                    let plain = decode_blob(&blob, self.chunk_size as usize).map_err(damaged)?;
                    if chunk_id(&plain) != id {
                        return ferr(at, format!("chunk {}: content does not match its id (damaged)", hex(&id)));
                    }
                }
                self.seen.insert(id);
                Ok(Some(Record::Chunk { id, blob }))
            }
            TAG_MANIFEST => {
                let mut len = [0u8; 8];
                self.read(&mut len, "manifest length", true)?;
                let len = u64::from_le_bytes(len);
                if len > 256 << 20 {
                    return ferr(at, format!("manifest length {len} is absurd"));
                }
                let mut bytes = vec![0u8; len as usize];
                let body_at = self.pos;
                self.read(&mut bytes, "manifest", true)?;
                let m = Manifest::decode_at(&bytes, body_at)?;
                if let Some(missing) = m.data_ids().iter().find(|id| !self.seen.contains(*id)) {
                    return ferr(at, format!("the manifest names chunk {} which the file does not hold", hex(missing)));
                }
                self.trailer(at)?;
                self.done = true;
                Ok(Some(Record::Manifest(Box::new(m))))
            }
            t => ferr(at, format!("unknown record tag {t}")),
        }
    }

    fn trailer(&mut self, manifest_at: u64) -> Result<(), FormatError> {
        let digest = *self.hasher.finalize().as_bytes();
        let at = self.pos;
        let mut t = [0u8; 48];
        self.read(&mut t, "trailer", false)?;
        if &t[..8] != END_MAGIC {
            return ferr(at, "bad trailer magic");
        }
        let stated = u64::from_le_bytes([t[8], t[9], t[10], t[11], t[12], t[13], t[14], t[15]]);
        if stated != manifest_at {
            return ferr(at + 8, format!("trailer points at {stated}, the manifest is at {manifest_at}"));
        }
        if t[16..] != digest {
            return ferr(at + 16, "file digest mismatch (the file is damaged)");
        }
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra) {
            Ok(0) => Ok(()),
            _ => ferr(self.pos, "unexpected bytes after the trailer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::noise;

    /// A locked backup's manifest carries its own key wrapped twice; both
    /// survive encoding, the key opens with the password's wrap key, and
    /// only then does the sealed copy open.
    #[test]
    fn a_manifest_with_its_own_key_round_trips() {
        use crate::seal::{split_password_key, wrap_key, DataKey, ESCROWED_BYTES, NONCE_BYTES};
        let m = crate::testdata::manifest_of("pc", vec![Chunk::Data { id: [5; 32], blob_len: 9 }, Chunk::Zero]);
        let own = [77u8; 32];
        let key = DataKey::new(&own);
        let (_, wrap) = split_password_key(&[1; 32]);
        let wrapped = wrap_key(&wrap, &own, &[3; NONCE_BYTES]);
        let sealed = m.sealed_wrapped(&key, &[4; NONCE_BYTES], Some(wrapped.clone()), Some(vec![6; ESCROWED_BYTES]));
        let back = Manifest::decode(&sealed.encode()).expect("decodes");
        assert_eq!(back, sealed);
        let s = back.sealed.as_ref().expect("sealed");
        assert_eq!(
            (s.wrapped.as_deref(), s.escrowed.as_ref().map(Vec::len)),
            (Some(&wrapped[..]), Some(ESCROWED_BYTES))
        );
        let e = back.unsealed(Some(&DataKey::new(&[1; 32]))).expect_err("another key");
        assert!(e.contains("a key of its own"), "{e}");
        let opened = back.own_key(&wrap).expect("opens").expect("has one");
        assert_eq!(back.unsealed(Some(&opened)).expect("unseals"), m);
        let (_, other) = split_password_key(&[2; 32]);
        assert!(back.own_key(&other).is_err(), "another password");
        // A version-3 manifest without wrapped keys reads as before.
        let plain = m.sealed_with(&key, &[4; NONCE_BYTES]);
        assert_eq!(Manifest::decode(&plain.encode()).expect("decodes").sealed.and_then(|s| s.wrapped), None);
    }

    /// Chunk ids name files and URL paths: one spelling per id. Before,
    /// `u8::from_str_radix` took a sign, so `+f` passed as a byte (found by
    /// fuzzing `units::parse_mac`, which had the same fault; fuzz target
    /// `blob` checks this one).
    #[test]
    fn chunk_ids_parse_only_as_hex_digits() {
        let id = [0xabu8; 32];
        assert_eq!(parse_hex(&hex(&id)), Some(id));
        assert_eq!(parse_hex(&"AB".repeat(32)), Some(id));
        assert_eq!(parse_hex(&"+f".repeat(32)), None);
        assert_eq!(parse_hex(&format!("+{}", &hex(&id)[1..])), None);
        assert_eq!(parse_hex(&"ab".repeat(31)), None);
    }
    use std::io::Cursor;

    fn sample() -> (Manifest, Vec<(ChunkId, Vec<u8>)>) {
        let a = b"hello hello hello hello hello hello".repeat(200);
        let b = noise(3, 4096);
        let mut tail = noise(4, 1808);
        tail[0] = 1;
        let blobs: Vec<(ChunkId, Vec<u8>)> =
            [&a[..4096], &b[..], &tail[..]].iter().map(|p| (chunk_id(p), encode_blob(p, 1))).collect();
        let m = Manifest {
            created: 1_700_000_000,
            chunk_size: 4096,
            disk_bytes: 4 * 4096 + 1808,
            logical: 512,
            physical: 4096,
            table: TableKind::Gpt,
            pc: "lab-3".into(),
            name: "nächtlich".into(),
            model: "QEMU HARDDISK".into(),
            serial: "S1".into(),
            extents: vec![Extent { offset: 0, data: vec![0xAB; 512] }, Extent { offset: 16384, data: vec![1; 33] }],
            partitions: Vec::new(),
            quick: Vec::new(),
            sealed: None,
            chunks: vec![
                Chunk::Data { id: blobs[0].0, blob_len: blobs[0].1.len() as u32 },
                Chunk::Zero,
                Chunk::Data { id: blobs[1].0, blob_len: blobs[1].1.len() as u32 },
                Chunk::Data { id: blobs[0].0, blob_len: blobs[0].1.len() as u32 },
                Chunk::Data { id: blobs[2].0, blob_len: blobs[2].1.len() as u32 },
            ],
        };
        (m, blobs)
    }

    #[test]
    fn version_2_round_trip_and_version_1_unchanged() {
        let (mut m, _) = sample();
        assert_eq!(m.version(), 1);
        let v1 = m.encode();
        assert_eq!(&v1[8..12], &1u32.to_le_bytes());
        m.partitions.push(PartitionRecord {
            number: 1,
            start: 1 << 20,
            bytes: 64 << 20,
            fs: "ext4".into(),
            used_only: true,
            used_bytes: 5 << 20,
            note: String::new(),
        });
        m.chunks[1] = Chunk::Unused;
        m.quick = (0..m.chunks.len() as u128).map(|i| i * 7 + 1).collect();
        let v2 = m.encode();
        assert_eq!(&v2[8..12], &2u32.to_le_bytes());
        assert_eq!(Manifest::decode(&v2).unwrap(), m);
        assert_eq!(m.unused_chunks(), 1);
        // Without fingerprints, still version 2, and still round trips.
        m.quick.clear();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        // Unused is not a version 1 chunk kind.
        let mut bad = v1.clone();
        let kinds_at = bad.len() - 32 - (1 + 32 + 4) * 3 - 1;
        assert_eq!(bad[kinds_at], 0, "the Zero chunk's kind byte");
        bad[kinds_at] = 2;
        let n = bad.len() - 32;
        let digest = chunk_id(&bad[..n]);
        bad[n..].copy_from_slice(&digest);
        assert!(Manifest::decode(&bad).unwrap_err().what.contains("unknown chunk kind 2"));
    }

    #[test]
    fn blobs() {
        let text = b"abcabcabc".repeat(1000);
        let blob = encode_blob(&text, 1);
        assert_eq!(blob[0], TAG_ZSTD);
        assert!(blob.len() < text.len() / 10);
        assert_eq!(encode_blob(&text, 0)[0], TAG_RAW, "level 0 stores");
        assert_eq!(encode_blob(&text, 200)[0], TAG_ZSTD, "levels above MAX_LEVEL are capped");
        // Blobs of the first images (raw deflate) still decode.
        let mut old = vec![TAG_DEFLATE];
        old.extend(miniz_oxide::deflate::compress_to_vec(&text, 1));
        assert_eq!(decode_verified(&old, text.len(), &chunk_id(&text)).unwrap(), text);
        let id = chunk_id(&text);
        assert_eq!(decode_verified(&blob, text.len(), &id).unwrap(), text);
        let rnd = noise(1, 5000);
        let blob = encode_blob(&rnd, 1);
        assert_eq!((blob[0], blob.len()), (TAG_RAW, rnd.len() + 1));
        assert_eq!(decode_verified(&blob, 5000, &chunk_id(&rnd)).unwrap(), rnd);
        assert_eq!(decode_verified(&blob, 4999, &chunk_id(&rnd)).unwrap_err(), BlobError::TooLarge { max: 4999 });
        assert!(matches!(decode_verified(&blob, 5000, &id), Err(BlobError::WrongHash { .. })));
        assert!(matches!(decode_verified(&encode_blob(&text, 1), 9001, &id), Err(BlobError::WrongLength { .. })));
        assert_eq!(decode_blob(&[], 10).unwrap_err(), BlobError::Empty);
        assert_eq!(decode_blob(&[7, 1], 10).unwrap_err(), BlobError::UnknownTag(7));
        // Bombs: 1 MiB of zeros refused at a 4 KiB limit, by the frame's
        // size field, and without it (a streamed frame), and as deflate.
        let bomb = encode_blob(&vec![0u8; 1 << 20], 1);
        assert_eq!(decode_blob(&bomb, 4096).unwrap_err(), BlobError::TooLarge { max: 4096 });
        let mut streamed = vec![TAG_ZSTD];
        let mut enc = zstd::stream::Encoder::new(&mut streamed, 1).unwrap();
        std::io::Write::write_all(&mut enc, &vec![0u8; 1 << 20]).unwrap();
        enc.finish().unwrap();
        assert_eq!(decode_blob(&streamed, 4096).unwrap_err(), BlobError::TooLarge { max: 4096 });
        assert_eq!(decode_blob(&streamed, 1 << 20).unwrap().len(), 1 << 20);
        let mut deflate_bomb = vec![TAG_DEFLATE];
        deflate_bomb.extend(miniz_oxide::deflate::compress_to_vec(&vec![0u8; 1 << 20], 1));
        assert_eq!(decode_blob(&deflate_bomb, 4096).unwrap_err(), BlobError::TooLarge { max: 4096 });
        assert!(matches!(decode_blob(&[0, 0xFF, 0xFF, 0xFF], 100), Err(BlobError::Inflate(_))));
        assert!(matches!(decode_blob(&[TAG_ZSTD, 0xFF, 0xFF, 0xFF], 100), Err(BlobError::Inflate(_))));
        // A damaged frame is an error, never a panic.
        let mut broken = encode_blob(&text, 2);
        let at = broken.len() / 2;
        broken[at] ^= 0x55;
        assert!(decode_verified(&broken, text.len(), &id).is_err());
        assert!(BlobError::WrongHash { expected: [0; 32], got: [1; 32] }.to_string().contains(&"01".repeat(32)));
    }

    #[test]
    fn new_backup_sizes() {
        assert_eq!(check_new_backup(1, MIN_CHUNK_SIZE), Ok(()));
        assert_eq!(check_new_backup(MAX_DISK_BYTES, MAX_CHUNK_SIZE), Ok(()));
        assert!(i64::try_from(MAX_DISK_BYTES + u64::from(MAX_CHUNK_SIZE)).is_ok());
        for (disk, chunk, why) in [
            (4096, 0, "chunk_size=0: out of range 4096..=16777216"),
            (4096, 4095, "chunk_size=4095"),
            (4096, MAX_CHUNK_SIZE + 1, "chunk_size=16777217"),
            (0, 4096, "disk_bytes=0: out of range 1..=72057594037927936"),
            (MAX_DISK_BYTES + 1, 4096, "disk_bytes=72057594037927937"),
            (u64::MAX, 4096, "disk_bytes=18446744073709551615"),
        ] {
            let e = check_new_backup(disk, chunk).unwrap_err();
            assert!(e.starts_with(why), "{disk} {chunk}: {e}");
        }
    }

    #[test]
    fn zero_detection_and_hex() {
        for n in [0usize, 1, 15, 16, 17, 4095, 4096, 4097] {
            let mut v = vec![0u8; n + 3];
            let s = &mut v[3..];
            assert!(is_zero(s), "{n}");
            if n > 0 {
                s[n - 1] = 1;
                assert!(!is_zero(s), "{n}");
                s[n - 1] = 0;
                s[0] = 1;
                assert!(!is_zero(s), "{n}");
            }
        }
        let id = chunk_id(b"x");
        assert_eq!(parse_hex(&hex(&id)), Some(id));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(&"g".repeat(64)), None);
        assert_eq!(
            hex(&chunk_id(b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            "BLAKE3 of the empty input"
        );
    }

    #[test]
    fn manifest_round_trip_and_maths() {
        let (m, _) = sample();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(&bytes[bytes.len() - 32..], &m.digest());
        assert_eq!(m.chunk_range(0), (0, 4096));
        assert_eq!(m.chunk_range(4), (16384, 1808));
        assert_eq!(Manifest::chunk_count(0, 4096), 0);
        assert_eq!(Manifest::chunk_count(4096, 4096), 1);
        assert_eq!(Manifest::chunk_count(4097, 4096), 2);
        assert_eq!(m.data_ids().len(), 3);
        assert_eq!(m.zero_chunks(), 1);
        let (_, blobs) = sample();
        assert_eq!(m.blob_bytes(), blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
    }

    /// The header layout of FORMAT.md, byte for byte.
    #[test]
    fn golden_header() {
        let m = Manifest {
            created: 0x0102030405060708,
            chunk_size: 4096,
            disk_bytes: 10000,
            logical: 512,
            physical: 4096,
            table: TableKind::Mbr,
            pc: "pc".into(),
            name: "n".into(),
            model: String::new(),
            serial: String::new(),
            extents: vec![],
            partitions: Vec::new(),
            quick: Vec::new(),
            sealed: None,
            chunks: vec![Chunk::Zero, Chunk::Zero, Chunk::Data { id: [0x11; 32], blob_len: 7 }],
        };
        let b = m.encode();
        let want: Vec<u8> = [
            &b"BVMANIF1"[..],
            &[1, 0, 0, 0],
            &[8, 7, 6, 5, 4, 3, 2, 1],
            &[0, 0x10, 0, 0],
            &[0x10, 0x27, 0, 0, 0, 0, 0, 0],
            &[0, 2, 0, 0],
            &[0, 0x10, 0, 0],
            &[1],
            &[2, 0, b'p', b'c', 1, 0, b'n', 0, 0, 0, 0],
            &[0, 0, 0, 0],
            &[3, 0, 0, 0, 0, 0, 0, 0],
            &[0, 0, 1],
            &[0x11; 32],
            &[7, 0, 0, 0],
        ]
        .concat();
        assert_eq!(&b[..want.len()], &want[..]);
        assert_eq!(b.len(), want.len() + 32);
        assert_eq!(&b[want.len()..], chunk_id(&want).as_slice());
    }

    #[test]
    fn damaged_manifests_are_refused() {
        let (m, _) = sample();
        let bytes = m.encode();
        for i in 0..bytes.len() {
            let mut d = bytes.clone();
            d[i] ^= 0x01;
            assert!(Manifest::decode(&d).is_err(), "flip at {i} accepted");
        }
        for n in 0..bytes.len() {
            let e = Manifest::decode(&bytes[..n]).unwrap_err();
            assert!(e.offset <= n as u64, "{e} for length {n}");
        }
        // A consistent digest over a wrong chunk count still fails, by name.
        let mut m2 = m.clone();
        m2.disk_bytes += 4096;
        let e = Manifest::decode(&m2.encode()).unwrap_err();
        assert!(e.what.contains("chunk count 5 does not fit"), "{e}");
    }

    fn image(m: &Manifest, blobs: &[(ChunkId, Vec<u8>)]) -> Vec<u8> {
        let mut w = ImageWriter::new(Vec::new(), m.chunk_size).unwrap();
        for (id, b) in blobs {
            assert!(w.put(id, b).unwrap());
        }
        assert!(!w.put(&blobs[0].0, &blobs[0].1).unwrap(), "a duplicate is written once");
        w.finish(m).unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Record>, FormatError> {
        let mut r = ImageReader::new(Cursor::new(bytes))?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn single_file_round_trip_and_damage() {
        let (m, blobs) = sample();
        let file = image(&m, &blobs);
        let recs = read_all(&file).unwrap();
        assert_eq!(recs.len(), 4);
        for (r, (id, b)) in recs.iter().zip(&blobs) {
            match r {
                Record::Chunk { id: i, blob } => assert_eq!((i, blob), (id, b)),
                Record::Manifest(_) => panic!("manifest too early"),
            }
        }
        assert!(matches!(&recs[3], Record::Manifest(x) if **x == m));

        // Damage inside the third blob names that record's offset.
        let third_at = 16 + (37 + blobs[0].1.len()) + (37 + blobs[1].1.len());
        let mut d = file.clone();
        d[third_at + 37 + 5] ^= 0x40;
        let e = read_all(&d).expect_err("damage detected");
        assert_eq!(e.offset, third_at as u64, "{e}");
        // Truncation and trailing junk.
        assert!(read_all(&file[..file.len() - 1]).is_err());
        let mut longer = file.clone();
        longer.push(0);
        assert!(read_all(&longer).unwrap_err().what.contains("after the trailer"));
        // A manifest naming a chunk never written.
        let w = ImageWriter::new(Vec::new(), 4096).unwrap();
        assert!(w.finish(&m).is_err());
    }

    #[test]
    fn random_inputs_never_panic() {
        let (m, blobs) = sample();
        let man = m.encode();
        let file = image(&m, &blobs);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let base = match round % 3 {
                0 => man.clone(),
                1 => file.clone(),
                _ => (0..(next() % 600) as usize).map(|_| next() as u8).collect(),
            };
            let mut d = base;
            if !d.is_empty() {
                for _ in 0..(next() % 8) {
                    let i = (next() % d.len() as u64) as usize;
                    d[i] = next() as u8;
                }
            }
            let _ = Manifest::decode(&d);
            let _ = read_all(&d);
        }
    }
}
