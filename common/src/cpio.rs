//! The newc cpio format the kernel unpacks as an initramfs: "070701", and
//! "070702" whose headers carry a checksum of each regular file's data.
//!
//! This module owns the byte layout only: a list of [`Entry`] values in,
//! archive bytes out, and back. It never opens a file or reads the clock,
//! so the same entries always give the same bytes (sorted, owners and
//! times zeroed, inodes numbered in archive order). Gathering the files
//! and compressing the archive belong to the builder's `initramfs` (and
//! to the server's network-boot overlays, `server/src/netboot.rs`).
//!
//! The layout follows Linux `usr/gen_init_cpio.c` (what the kernel's own
//! build writes) and is tested against GNU cpio, which reads and writes
//! the same format. The reader is also what `bootvault inspect` runs on
//! untrusted bytes, so it checks every size before using it and never
//! panics.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};

const MAGIC_NEWC: &[u8; 6] = b"070701";
const MAGIC_NEWC_CRC: &[u8; 6] = b"070702";
/// Magic plus 13 fields of 8 hex digits.
const HEADER_LEN: usize = 110;
/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";
/// Linux PATH_MAX, NUL included. The kernel's unpacker skips longer names
/// and refuses longer symlink targets, so neither side accepts them.
pub const MAX_NAME: usize = 4096;
/// cpio writes whole blocks; the end of the archive is zero-padded to one.
const BLOCK: u64 = 512;

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;
/// Permission, setuid/setgid and sticky bits: what [`Entry::mode`] holds.
const PERM_BITS: u32 = 0o7777;

/// What an entry is, with its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    /// The link target, stored as the entry's data without a NUL.
    Symlink(String),
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the archive root, no leading "/": "lib/modules/x.ko".
    pub path: String,
    /// Permission bits only (at most 0o7777); the file type comes from `kind`.
    pub mode: u32,
    pub kind: Kind,
}

/// Which of the two newc magics to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// "070701": c_check is always 0.
    // The image is written as NewcCrc; the plain form is for readers and
    // tests that want it (and keeps the fuzz target's round trip honest).
    #[allow(dead_code)]
    Newc,
    /// "070702": c_check is the byte sum of each regular file's data, which
    /// the kernel and `cpio --only-verify-crc` verify.
    NewcCrc,
}

/// Why [`read_archive`] refused its input. Every variant carries the byte
/// offset of the offending header, field, name or data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpioError {
    /// The six bytes at `offset` are neither "070701" nor "070702".
    BadMagic { offset: u64, found: Vec<u8> },
    /// A header field is not 8 hex digits.
    BadField { offset: u64, field: &'static str },
    /// c_namesize is 0 (no room for the NUL) or above [`MAX_NAME`].
    BadNameSize { offset: u64, size: u32 },
    /// The name is not NUL-terminated, holds a NUL, or is not UTF-8.
    BadName { offset: u64, problem: &'static str },
    /// The input ends inside the header, name or data that starts at `offset`.
    Truncated { offset: u64, what: String, needed: u64, available: u64 },
    /// A 070702 regular file whose data does not sum to its c_check.
    ChecksumMismatch { offset: u64, path: String, stored: u32, computed: u32 },
    /// A file type this module does not model (fifo, socket, ...).
    UnsupportedType { offset: u64, path: String, mode: u32 },
    /// A directory or device node with a non-zero c_filesize.
    UnexpectedData { offset: u64, path: String, size: u32 },
    /// A symlink target that is empty, too long, holds a NUL or is not UTF-8.
    BadSymlink { offset: u64, path: String, problem: &'static str },
    /// The input ends at an entry boundary before the TRAILER!!! entry.
    MissingTrailer { offset: u64 },
}

impl fmt::Display for CpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpioError::BadMagic { offset, found } => write!(
                f,
                "bad magic at offset {offset}: \"{}\" is not a newc cpio header (070701 or 070702)",
                found.escape_ascii()
            ),
            CpioError::BadField { offset, field } => {
                write!(f, "bad header field {field} at offset {offset}: not 8 hex digits")
            }
            CpioError::BadNameSize { offset, size } => {
                write!(f, "bad name size {size} at offset {offset}: must be 1 to {MAX_NAME}, NUL included")
            }
            CpioError::BadName { offset, problem } => {
                write!(f, "bad name at offset {offset}: {problem}")
            }
            CpioError::Truncated { offset, what, needed, available } => {
                write!(f, "truncated {what} at offset {offset}: {needed} bytes declared, {available} left")
            }
            CpioError::ChecksumMismatch { offset, path, stored, computed } => write!(
                f,
                "checksum mismatch for {path} at offset {offset}: \
                 header says {stored:08X}, data sums to {computed:08X}"
            ),
            CpioError::UnsupportedType { offset, path, mode } => {
                write!(f, "unsupported file type {:06o} for {path} at offset {offset}", mode & S_IFMT)
            }
            CpioError::UnexpectedData { offset, path, size } => write!(
                f,
                "unexpected data for {path} at offset {offset}: \
                 a directory or device with {size} bytes"
            ),
            CpioError::BadSymlink { offset, path, problem } => {
                write!(f, "bad symlink target for {path} at offset {offset}: {problem}")
            }
            CpioError::MissingTrailer { offset } => {
                write!(f, "archive ends at offset {offset} without the {TRAILER} entry")
            }
        }
    }
}

impl std::error::Error for CpioError {}

/// The 13 header fields, in archive order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    devmajor: u32,
    devminor: u32,
    rdevmajor: u32,
    rdevminor: u32,
    namesize: u32,
    check: u32,
}

const FIELD_NAMES: [&str; 13] = [
    "c_ino",
    "c_mode",
    "c_uid",
    "c_gid",
    "c_nlink",
    "c_mtime",
    "c_filesize",
    "c_devmajor",
    "c_devminor",
    "c_rdevmajor",
    "c_rdevminor",
    "c_namesize",
    "c_check",
];

impl Header {
    fn fields(&self) -> [u32; 13] {
        [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            self.devmajor,
            self.devminor,
            self.rdevmajor,
            self.rdevminor,
            self.namesize,
            self.check,
        ]
    }

    fn from_fields(f: [u32; 13]) -> Header {
        Header {
            ino: f[0],
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            filesize: f[6],
            devmajor: f[7],
            devminor: f[8],
            rdevmajor: f[9],
            rdevminor: f[10],
            namesize: f[11],
            check: f[12],
        }
    }

    /// Magic and fields as gen_init_cpio prints them: "%08X" each.
    fn encode(&self, magic: &[u8; 6]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(magic);
        for v in self.fields() {
            out.extend_from_slice(format!("{v:08X}").as_bytes());
        }
        out
    }
}

/// The sum of the data bytes, as GNU cpio and the kernel compute c_check.
fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)))
}

fn invalid(path: &str, problem: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("cpio entry {path:?}: {problem}"))
}

/// Refuses what the kernel would misread or what would make the archive
/// depend on more than the entry list (non-canonical paths could name one
/// file twice).
fn check_entry(e: &Entry) -> io::Result<()> {
    let path = e.path.as_str();
    if path.is_empty() {
        return Err(invalid(path, "empty path"));
    }
    if path.starts_with('/') {
        return Err(invalid(path, "absolute path (paths are relative to the archive root)"));
    }
    if path.contains('\0') {
        return Err(invalid(path, "path contains a NUL byte"));
    }
    for component in path.split('/') {
        match component {
            "" => return Err(invalid(path, "empty path component (doubled or trailing '/')")),
            "." => return Err(invalid(path, "path contains a '.' component")),
            ".." => return Err(invalid(path, "path contains a '..' component")),
            _ => {}
        }
    }
    if path == TRAILER {
        return Err(invalid(path, "this name marks the end of an archive"));
    }
    if path.len() + 1 > MAX_NAME {
        return Err(invalid(path, format_args!("path longer than {} bytes", MAX_NAME - 1)));
    }
    if e.mode & !PERM_BITS != 0 {
        return Err(invalid(path, format_args!("mode {:o} has bits beyond the permission bits 7777", e.mode)));
    }
    match &e.kind {
        Kind::File(data) if u32::try_from(data.len()).is_err() => {
            Err(invalid(path, format_args!("{} bytes is too large for newc (4 GiB - 1 at most)", data.len())))
        }
        Kind::Symlink(target) if target.is_empty() => Err(invalid(path, "empty symlink target")),
        Kind::Symlink(target) if target.contains('\0') => Err(invalid(path, "symlink target contains a NUL byte")),
        Kind::Symlink(target) if target.len() > MAX_NAME => {
            Err(invalid(path, format_args!("symlink target longer than {MAX_NAME} bytes")))
        }
        _ => Ok(()),
    }
}

/// The entries exactly as [`write_archive`] emits them: checked, sorted by
/// path (byte order), with every missing parent directory added as 0o755.
/// Errors name the offending path: an invalid entry, a duplicate path, or a
/// parent that exists but is not a directory.
pub fn normalize(entries: Vec<Entry>) -> io::Result<Vec<Entry>> {
    let mut by_path: BTreeMap<String, Entry> = BTreeMap::new();
    for e in entries {
        check_entry(&e)?;
        match by_path.entry(e.path.clone()) {
            MapEntry::Occupied(_) => return Err(invalid(&e.path, "duplicate path")),
            MapEntry::Vacant(slot) => {
                slot.insert(e);
            }
        }
    }
    let mut missing = Vec::new();
    for path in by_path.keys() {
        for (slash, _) in path.match_indices('/') {
            let parent = &path[..slash];
            match by_path.get(parent) {
                Some(Entry { kind: Kind::Dir, .. }) => {}
                Some(_) => return Err(invalid(path, format_args!("parent {parent:?} is not a directory"))),
                None => missing.push(parent.to_owned()),
            }
        }
    }
    for path in missing {
        by_path.entry(path.clone()).or_insert(Entry { path, mode: 0o755, kind: Kind::Dir });
    }
    // A byte-order sort puts every path after its own prefixes, so parents
    // come before children.
    Ok(by_path.into_values().collect())
}

/// Counts what reaches the writer, for the return value and the padding.
struct Counted<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Counted<W> {
    fn put(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, multiple: u64) -> io::Result<()> {
        const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];
        let n = (multiple - self.written % multiple) % multiple;
        // `multiple` is at most BLOCK, so `n` fits in ZEROS.
        self.put(&ZEROS[..n as usize])
    }

    /// Header, name + NUL padded to 4, data padded to 4.
    fn entry(&mut self, magic: &[u8; 6], header: &Header, name: &str, data: &[u8]) -> io::Result<()> {
        self.put(&header.encode(magic))?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad_to(4)?;
        self.put(data)?;
        self.pad_to(4)
    }
}

/// Writes a reproducible archive: the entries of [`normalize`] (sorted,
/// parents added), mtime, uid, gid and devmajor/minor 0, nlink 2 for
/// directories and 1 otherwise, inode numbers 1, 2, 3... in archive order
/// (never shared, since the kernel's unpacker treats entries with the same
/// inode and nlink > 1 as hard links), then TRAILER!!!, and zeros up to a
/// multiple of 512 bytes. Invalid entries are refused before anything is
/// written. Returns the number of bytes written.
pub fn write_archive<W: Write>(entries: Vec<Entry>, format: Format, out: W) -> io::Result<u64> {
    let entries = normalize(entries)?;
    let magic = match format {
        Format::Newc => MAGIC_NEWC,
        Format::NewcCrc => MAGIC_NEWC_CRC,
    };
    let mut out = Counted { inner: out, written: 0 };
    let mut ino: u32 = 0;
    for e in &entries {
        ino = ino.checked_add(1).ok_or_else(|| invalid(&e.path, "more entries than newc has inode numbers"))?;
        let (file_type, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &e.kind {
            Kind::Dir => (S_IFDIR, 2, &[], (0, 0)),
            Kind::File(data) => (S_IFREG, 1, data, (0, 0)),
            Kind::Symlink(target) => (S_IFLNK, 1, target.as_bytes(), (0, 0)),
            Kind::CharDev { major, minor } => (S_IFCHR, 1, &[], (*major, *minor)),
            Kind::BlockDev { major, minor } => (S_IFBLK, 1, &[], (*major, *minor)),
        };
        let check = match (format, &e.kind) {
            (Format::NewcCrc, Kind::File(data)) => checksum(data),
            _ => 0,
        };
        // normalize() bounded both lengths, so these cannot fail.
        let filesize = u32::try_from(data.len()).map_err(|_| invalid(&e.path, "data too large"))?;
        let namesize = u32::try_from(e.path.len() + 1).map_err(|_| invalid(&e.path, "path too long"))?;
        let header = Header {
            ino,
            mode: file_type | e.mode,
            nlink,
            filesize,
            rdevmajor: rdev.0,
            rdevminor: rdev.1,
            namesize,
            check,
            ..Header::default()
        };
        out.entry(magic, &header, &e.path, data)?;
    }
    let trailer = Header { nlink: 1, namesize: (TRAILER.len() + 1) as u32, ..Header::default() };
    out.entry(magic, &trailer, TRAILER, &[])?;
    out.pad_to(BLOCK)?;
    out.inner.flush()?;
    Ok(out.written)
}

/// `len` bytes of `bytes` from `offset`, if they are all there.
fn slice_at(bytes: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    bytes.get(offset..offset.checked_add(len)?)
}

fn truncated(bytes: &[u8], offset: usize, what: String, needed: usize) -> CpioError {
    CpioError::Truncated {
        offset: offset as u64,
        what,
        needed: needed as u64,
        available: bytes.len().saturating_sub(offset) as u64,
    }
}

/// Eight hex digits, either case (gen_init_cpio writes upper, GNU cpio lower).
fn parse_hex8(digits: &[u8]) -> Option<u32> {
    if digits.len() != 8 {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &b| {
        let d = char::from(b).to_digit(16)?;
        Some(acc << 4 | d)
    })
}

/// Rounds `n` up to a multiple of 4, or None on overflow.
fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

/// Parses an archive in either newc form, verifying 070702 checksums, up
/// to its TRAILER!!! entry (whatever follows, usually block padding, is
/// ignored). Returns the entries in archive order, without the trailer.
///
/// Hard links (regular files sharing c_ino with c_nlink > 1, written by
/// GNU cpio with the data on one of them only) come back as separate
/// files that each carry the data, which is what the kernel unpacks.
pub fn read_archive(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    // (devmajor, devminor, ino) -> indexes of the regular files that share it.
    let mut links: BTreeMap<(u32, u32, u32), Vec<usize>> = BTreeMap::new();
    let mut offset = 0usize;
    loop {
        let start = offset;
        let rest = bytes.get(start..).unwrap_or_default();
        if rest.is_empty() {
            return Err(CpioError::MissingTrailer { offset: start as u64 });
        }
        // The magic first, so that a short file of the wrong kind (gzip, say)
        // is named as such rather than as a truncated header.
        let magic = rest.get(..6).unwrap_or(rest);
        let with_check = if magic == MAGIC_NEWC {
            false
        } else if magic == MAGIC_NEWC_CRC {
            true
        } else if MAGIC_NEWC.starts_with(magic) || MAGIC_NEWC_CRC.starts_with(magic) {
            return Err(truncated(bytes, start, "header".into(), HEADER_LEN));
        } else {
            return Err(CpioError::BadMagic { offset: start as u64, found: magic.to_vec() });
        };
        let raw =
            slice_at(bytes, start, HEADER_LEN).ok_or_else(|| truncated(bytes, start, "header".into(), HEADER_LEN))?;
        let mut fields = [0u32; 13];
        for (i, field) in fields.iter_mut().enumerate() {
            let at = 6 + 8 * i;
            *field = parse_hex8(&raw[at..at + 8])
                .ok_or(CpioError::BadField { offset: (start + at) as u64, field: FIELD_NAMES[i] })?;
        }
        let h = Header::from_fields(fields);

        let name_offset = start + HEADER_LEN;
        let namesize = h.namesize as usize;
        if namesize == 0 || namesize > MAX_NAME {
            return Err(CpioError::BadNameSize { offset: (start + 6 + 8 * 11) as u64, size: h.namesize });
        }
        let name = slice_at(bytes, name_offset, namesize)
            .ok_or_else(|| truncated(bytes, name_offset, "name".into(), namesize))?;
        let bad_name = |problem| CpioError::BadName { offset: name_offset as u64, problem };
        let (name, nul) = name.split_at(namesize - 1);
        if nul != [0] {
            return Err(bad_name("not NUL-terminated"));
        }
        if name.contains(&0) {
            return Err(bad_name("contains a NUL byte before its end"));
        }
        let name = std::str::from_utf8(name).map_err(|_| bad_name("not UTF-8"))?;
        if name == TRAILER {
            break;
        }

        // namesize <= MAX_NAME, so neither sum can overflow near usize::MAX
        // unless `bytes` itself does; checked anyway.
        let data_offset = name_offset
            .checked_add(namesize)
            .and_then(align4)
            .ok_or_else(|| truncated(bytes, name_offset, "name".into(), namesize))?;
        let size = h.filesize as usize;
        let data = slice_at(bytes, data_offset, size)
            .ok_or_else(|| truncated(bytes, data_offset, format!("data for {name}"), size))?;
        offset = data_offset
            .checked_add(size)
            .and_then(align4)
            .ok_or_else(|| truncated(bytes, data_offset, format!("data for {name}"), size))?;

        let at = start as u64;
        let no_data = |kind: Kind| {
            if h.filesize == 0 {
                Ok(kind)
            } else {
                Err(CpioError::UnexpectedData { offset: at, path: name.to_owned(), size: h.filesize })
            }
        };
        let bad_symlink = |problem| CpioError::BadSymlink { offset: at, path: name.to_owned(), problem };
        let kind = match h.mode & S_IFMT {
            S_IFDIR => no_data(Kind::Dir)?,
            S_IFREG => {
                if with_check {
                    let computed = checksum(data);
                    if computed != h.check {
                        return Err(CpioError::ChecksumMismatch {
                            offset: at,
                            path: name.to_owned(),
                            stored: h.check,
                            computed,
                        });
                    }
                }
                if h.nlink > 1 {
                    links.entry((h.devmajor, h.devminor, h.ino)).or_default().push(entries.len());
                }
                Kind::File(data.to_vec())
            }
            S_IFLNK => {
                let target = std::str::from_utf8(data).map_err(|_| bad_symlink("not UTF-8"))?;
                if target.is_empty() {
                    return Err(bad_symlink("empty"));
                }
                if target.len() > MAX_NAME {
                    return Err(bad_symlink("longer than 4096 bytes"));
                }
                if target.contains('\0') {
                    return Err(bad_symlink("contains a NUL byte"));
                }
                Kind::Symlink(target.to_owned())
            }
            S_IFCHR => no_data(Kind::CharDev { major: h.rdevmajor, minor: h.rdevminor })?,
            S_IFBLK => no_data(Kind::BlockDev { major: h.rdevmajor, minor: h.rdevminor })?,
            _ => return Err(CpioError::UnsupportedType { offset: at, path: name.to_owned(), mode: h.mode }),
        };
        entries.push(Entry { path: name.to_owned(), mode: h.mode & PERM_BITS, kind });
    }
    share_hard_link_data(&mut entries, links);
    Ok(entries)
}

/// Gives every member of a hard-link group the data that the archive
/// stored on one of them (the last with any, as the kernel's writes leave it).
fn share_hard_link_data(entries: &mut [Entry], links: BTreeMap<(u32, u32, u32), Vec<usize>>) {
    for group in links.values().filter(|g| g.len() > 1) {
        let data = group.iter().rev().find_map(|&i| match entries.get(i).map(|e| &e.kind) {
            Some(Kind::File(d)) if !d.is_empty() => Some(d.clone()),
            _ => None,
        });
        let Some(data) = data else { continue };
        for &i in group {
            if let Some(Entry { kind: Kind::File(d), .. }) = entries.get_mut(i) {
                d.clone_from(&data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn file(path: &str, mode: u32, data: &[u8]) -> Entry {
        Entry { path: path.into(), mode, kind: Kind::File(data.to_vec()) }
    }

    fn dir(path: &str, mode: u32) -> Entry {
        Entry { path: path.into(), mode, kind: Kind::Dir }
    }

    fn symlink(path: &str, target: &str) -> Entry {
        Entry { path: path.into(), mode: 0o777, kind: Kind::Symlink(target.into()) }
    }

    fn write(entries: Vec<Entry>, format: Format) -> Vec<u8> {
        let mut out = Vec::new();
        let n = write_archive(entries, format, &mut out).expect("write_archive");
        assert_eq!(n, out.len() as u64, "returned byte count");
        out
    }

    /// A small image shaped like ours: nested dirs, files, a symlink, devices.
    fn sample() -> Vec<Entry> {
        vec![
            file("init", 0o755, b"\x7fELF pretend"),
            file("lib/modules/6.1.0/kernel/drivers/net/e1000e.ko", 0o644, &[0xff; 1000]),
            file("lib/modules/6.1.0/modules.dep", 0o644, b"kernel/drivers/net/e1000e.ko:\n"),
            file("etc/empty", 0o600, b""),
            file("etc/odd", 0o4755, b"x"),
            dir("proc", 0o555),
            dir("tmp", 0o1777),
            symlink("bin/sh", "../init"),
            Entry { path: "dev/console".into(), mode: 0o600, kind: Kind::CharDev { major: 5, minor: 1 } },
            Entry { path: "dev/vda".into(), mode: 0o660, kind: Kind::BlockDev { major: 254, minor: 0x12345 } },
        ]
    }

    /// What `sample()` must read back as: sorted, parents added.
    fn sample_expected() -> Vec<Entry> {
        let mut all = sample();
        for d in [
            "bin",
            "dev",
            "etc",
            "lib",
            "lib/modules",
            "lib/modules/6.1.0",
            "lib/modules/6.1.0/kernel",
            "lib/modules/6.1.0/kernel/drivers",
            "lib/modules/6.1.0/kernel/drivers/net",
        ] {
            all.push(dir(d, 0o755));
        }
        all.sort_by(|a, b| a.path.cmp(&b.path));
        all
    }

    #[test]
    fn round_trip_newc() {
        let bytes = write(sample(), Format::Newc);
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(read_archive(&bytes), Ok(sample_expected()));
    }

    #[test]
    fn round_trip_newc_crc() {
        let bytes = write(sample(), Format::NewcCrc);
        assert_eq!(&bytes[..6], b"070702");
        assert_eq!(read_archive(&bytes), Ok(sample_expected()));
    }

    #[test]
    fn normalize_sorts_and_adds_parents_before_children() {
        let got =
            normalize(vec![file("a-b", 0o644, b""), file("a/b/c", 0o644, b""), dir("a", 0o700)]).expect("normalize");
        let paths: Vec<&str> = got.iter().map(|e| e.path.as_str()).collect();
        // '-' sorts before '/', and a prefix before everything that extends it.
        assert_eq!(paths, ["a", "a-b", "a/b", "a/b/c"]);
        assert_eq!(got[0].mode, 0o700, "an explicit directory keeps its mode");
        assert_eq!(got[2], dir("a/b", 0o755));
    }

    #[test]
    fn same_entries_in_any_order_give_same_bytes() {
        let first = write(sample(), Format::NewcCrc);
        let mut reversed = sample();
        reversed.reverse();
        let mut rotated = sample();
        rotated.rotate_left(3);
        assert_eq!(write(reversed, Format::NewcCrc), first);
        assert_eq!(write(rotated, Format::NewcCrc), first);
        assert_eq!(write(sample_expected(), Format::NewcCrc), first, "explicit parents change nothing");
        assert_eq!(first.len() % 512, 0);
    }

    #[test]
    fn inode_numbers_are_sequential_and_unique() {
        let bytes = write(sample(), Format::Newc);
        let mut offset = 0;
        let mut inos = Vec::new();
        loop {
            let h = &bytes[offset..offset + HEADER_LEN];
            let field = |i: usize| parse_hex8(&h[6 + 8 * i..14 + 8 * i]).expect("hex");
            let namesize = field(11) as usize;
            let name = &bytes[offset + HEADER_LEN..offset + HEADER_LEN + namesize - 1];
            if name == TRAILER.as_bytes() {
                break;
            }
            let nlink = field(4);
            let is_dir = field(1) & S_IFMT == S_IFDIR;
            assert_eq!(nlink, if is_dir { 2 } else { 1 });
            assert_eq!([field(2), field(3), field(5), field(7), field(8)], [0; 5], "uid gid mtime dev");
            inos.push(field(0));
            let data = align4(offset + HEADER_LEN + namesize).expect("align");
            offset = align4(data + field(6) as usize).expect("align");
        }
        let expected: Vec<u32> = (1..=sample_expected().len() as u32).collect();
        assert_eq!(inos, expected);
    }

    /// Header literals worked out by hand from the newc layout.
    #[test]
    fn golden_tiny_archive() {
        let entries = vec![file("a/b", 0o644, b"hi\n"), dir("a", 0o755)];
        let mut expected = Vec::new();
        // Entry 1, "a": ino 1, mode 040755 = 0x41ED, nlink 2, namesize 2.
        // 110 + 2 = 112 bytes, already a multiple of 4.
        expected.extend_from_slice(
            b"070701\
              00000001000041ED00000000000000000000000200000000\
              00000000000000000000000000000000000000000000000200000000\
              a\0",
        );
        // Entry 2 at 112, "a/b": ino 2, mode 0100644 = 0x81A4, nlink 1,
        // filesize 3, namesize 4. 110 + 4 = 114, padded to 116; data at 228,
        // 3 bytes padded to 4.
        expected.extend_from_slice(
            b"070701\
              00000002000081A400000000000000000000000100000000\
              00000003000000000000000000000000000000000000000400000000\
              a/b\0\0\0\
              hi\n\0",
        );
        // Trailer at 232: all zero but nlink 1 and namesize 11; 110 + 11 = 121,
        // padded to 124, ending at 356; then zeros up to 512.
        expected.extend_from_slice(
            b"070701\
              00000000000000000000000000000000000000010000000000000000\
              000000000000000000000000000000000000000B00000000\
              TRAILER!!!\0\0\0\0",
        );
        assert_eq!(expected.len(), 356);
        expected.resize(512, 0);

        let got = write(entries.clone(), Format::Newc);
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&expected));
        assert_eq!(got, expected);

        // 070702: same but the magic, and a/b's check is 'h' + 'i' + '\n'
        // = 104 + 105 + 10 = 219 = 0xDB.
        let crc = write(entries, Format::NewcCrc);
        let mut expected_crc = expected.clone();
        for at in [0, 112, 232] {
            expected_crc[at..at + 6].copy_from_slice(b"070702");
        }
        expected_crc[112 + 102..112 + 110].copy_from_slice(b"000000DB");
        assert_eq!(crc, expected_crc);
    }

    #[test]
    fn writer_rejects_bad_entries_naming_the_path() {
        let cases: Vec<(Vec<Entry>, &str)> = vec![
            (vec![file("", 0o644, b"")], "empty path"),
            (vec![file("/etc/passwd", 0o644, b"")], "absolute"),
            (vec![file("a/../b", 0o644, b"")], "'..'"),
            (vec![file("..", 0o644, b"")], "'..'"),
            (vec![file("a/./b", 0o644, b"")], "'.'"),
            (vec![file("a//b", 0o644, b"")], "empty path component"),
            (vec![dir("a/", 0o755)], "empty path component"),
            (vec![file("a\0b", 0o644, b"")], "NUL"),
            (vec![file("TRAILER!!!", 0o644, b"")], "end of an archive"),
            (vec![file(&"x".repeat(MAX_NAME), 0o644, b"")], "longer than 4095"),
            (vec![file("f", 0o100644, b"")], "mode 100644"),
            (vec![symlink("l", "")], "empty symlink target"),
            (vec![symlink("l", "a\0b")], "NUL"),
            (vec![file("x/y", 0o644, b"1"), file("x/y", 0o644, b"2")], "duplicate path"),
            (vec![file("x", 0o644, b""), file("x/y", 0o644, b"")], "parent \"x\" is not a directory"),
        ];
        for (entries, problem) in cases {
            let shown = format!("{:?}", entries.last().map(|e| &e.path));
            let mut out = Vec::new();
            let err = write_archive(entries, Format::Newc, &mut out).expect_err(&shown);
            let msg = err.to_string();
            assert!(msg.contains(problem), "{shown}: {msg}");
            assert!(msg.starts_with("cpio entry \""), "{msg}");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(out.is_empty(), "nothing written before the error");
        }
        // The longest name the kernel takes is still fine.
        write(vec![file(&"x".repeat(MAX_NAME - 1), 0o644, b"")], Format::Newc);
    }

    /// One raw entry, for archives the writer would never produce.
    fn raw_entry(magic: &[u8; 6], h: Header, name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = h.encode(magic);
        out.extend_from_slice(name);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn raw_trailer() -> Vec<u8> {
        let h = Header { nlink: 1, namesize: 11, ..Header::default() };
        raw_entry(MAGIC_NEWC, h, b"TRAILER!!!\0", b"")
    }

    fn message(bytes: &[u8]) -> String {
        match read_archive(bytes) {
            Ok(entries) => panic!("accepted: {entries:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn flipped_data_byte_fails_the_checksum_naming_the_path() {
        let entries = vec![file("lib/x.ko", 0o644, b"module bytes")];
        let mut bytes = write(entries.clone(), Format::NewcCrc);
        let at = bytes.windows(12).position(|w| w == b"module bytes").expect("data");
        bytes[at] ^= 0x01;
        let err = read_archive(&bytes).expect_err("corrupt");
        // Entries: "lib" at 0 (110 + 4 = 114 -> 116), "lib/x.ko" at 116.
        assert_eq!(
            err,
            CpioError::ChecksumMismatch {
                offset: 116,
                path: "lib/x.ko".into(),
                stored: checksum(b"module bytes"),
                computed: checksum(b"module bytes") ^ 1,
            }
        );
        let msg = err.to_string();
        assert!(msg.starts_with("checksum mismatch for lib/x.ko at offset 116:"), "{msg}");

        // The same flip in a 070701 archive goes unnoticed: it has no checksum.
        let mut plain = write(entries, Format::Newc);
        plain[at] ^= 0x01;
        let got = read_archive(&plain).expect("070701 has no checksum");
        assert_eq!(got[1].kind, Kind::File(b"lodule bytes".to_vec()));
    }

    #[test]
    fn truncation_anywhere_before_the_trailer_names_an_offset() {
        let bytes = write(sample(), Format::NewcCrc);
        let trailer_start = bytes.windows(10).position(|w| w == b"TRAILER!!!").expect("trailer") - HEADER_LEN;
        let trailer_end = trailer_start + HEADER_LEN + 11;
        for cut in 0..trailer_end {
            let msg = message(&bytes[..cut]);
            assert!(msg.contains(" at offset ") || msg.starts_with("archive ends at offset"), "{cut}: {msg}");
        }
        // Only the zero padding after the trailer may go.
        for cut in trailer_end..=bytes.len() {
            assert_eq!(read_archive(&bytes[..cut]), Ok(sample_expected()), "cut at {cut}");
        }
        assert_eq!(message(b""), "archive ends at offset 0 without the TRAILER!!! entry");
        let tiny = write(vec![file("a", 0o644, b"hello")], Format::Newc);
        // "a" at 0: header 110 + name 2 = 112; data at 112.
        assert_eq!(message(&tiny[..114]), "truncated data for a at offset 112: 5 bytes declared, 2 left");
        assert_eq!(message(&tiny[..50]), "truncated header at offset 0: 110 bytes declared, 50 left");
        assert_eq!(message(&tiny[..111]), "truncated name at offset 110: 2 bytes declared, 1 left");
        assert_eq!(message(&tiny[..120]), "archive ends at offset 120 without the TRAILER!!! entry");
    }

    #[test]
    fn bad_magic_names_its_offset() {
        let mut bytes = write(vec![file("a", 0o644, b"hello")], Format::Newc);
        // The trailer starts at 112 + 8 = 120.
        bytes[120..126].copy_from_slice(b"070707");
        assert_eq!(message(&bytes), "bad magic at offset 120: \"070707\" is not a newc cpio header (070701 or 070702)");
        // A gzip header too short to be a cpio header is still named by its magic.
        let gzip = message(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03");
        assert!(gzip.starts_with(r#"bad magic at offset 0: "\x1f\x8b\x08\x00\x00\x00" is not"#), "{gzip}");
    }

    #[test]
    fn reader_refuses_malformed_headers() {
        let ok = Header { ino: 1, mode: S_IFREG | 0o644, nlink: 1, namesize: 2, ..Header::default() };
        let with_trailer = |entry: Vec<u8>| [entry, raw_trailer()].concat();

        let mut bad_hex = raw_entry(MAGIC_NEWC, ok, b"a\0", b"");
        bad_hex[6 + 8 * 6 + 3] = b'g';
        assert_eq!(message(&with_trailer(bad_hex)), "bad header field c_filesize at offset 54: not 8 hex digits");
        let mut signed = raw_entry(MAGIC_NEWC, ok, b"a\0", b"");
        signed[6 + 8 * 6..6 + 8 * 7].copy_from_slice(b"+0000001");
        assert!(message(&with_trailer(signed)).starts_with("bad header field c_filesize"));

        let long = Header { namesize: 4097, ..ok };
        let name = [b"x".repeat(4096), vec![0]].concat();
        assert_eq!(
            message(&with_trailer(raw_entry(MAGIC_NEWC, long, &name, b""))),
            "bad name size 4097 at offset 94: must be 1 to 4096, NUL included"
        );
        let empty = Header { namesize: 0, ..ok };
        assert!(message(&with_trailer(raw_entry(MAGIC_NEWC, empty, b"", b""))).starts_with("bad name size 0"));
        assert_eq!(
            message(&with_trailer(raw_entry(MAGIC_NEWC, ok, b"ab", b""))),
            "bad name at offset 110: not NUL-terminated"
        );
        assert!(message(&with_trailer(raw_entry(MAGIC_NEWC, ok, b"\xff\0", b""))).ends_with("not UTF-8"));

        // A declared size far beyond the input is refused before any allocation.
        let huge = Header { filesize: u32::MAX, ..ok };
        assert_eq!(
            message(&with_trailer(raw_entry(MAGIC_NEWC, huge, b"a\0", b""))),
            "truncated data for a at offset 112: 4294967295 bytes declared, 124 left"
        );

        let fifo = Header { mode: 0o010_644, ..ok };
        assert_eq!(
            message(&with_trailer(raw_entry(MAGIC_NEWC, fifo, b"a\0", b""))),
            "unsupported file type 010000 for a at offset 0"
        );
        let fat_dir = Header { mode: S_IFDIR | 0o755, filesize: 1, ..ok };
        assert!(
            message(&with_trailer(raw_entry(MAGIC_NEWC, fat_dir, b"a\0", b"x"))).starts_with("unexpected data for a")
        );
        let link = Header { mode: S_IFLNK | 0o777, ..ok };
        assert_eq!(
            message(&with_trailer(raw_entry(MAGIC_NEWC, link, b"a\0", b""))),
            "bad symlink target for a at offset 0: empty"
        );
    }

    #[test]
    fn hard_links_share_the_data_stored_on_the_last() {
        let link = |ino, name: &[u8], data: &[u8]| {
            let h = Header {
                ino,
                mode: S_IFREG | 0o644,
                nlink: 2,
                filesize: data.len() as u32,
                namesize: name.len() as u32,
                check: checksum(data),
                ..Header::default()
            };
            raw_entry(MAGIC_NEWC_CRC, h, name, data)
        };
        let bytes =
            [link(7, b"one\0", b""), link(8, b"other\0", b""), link(7, b"two\0", b"shared"), raw_trailer()].concat();
        assert_eq!(
            read_archive(&bytes),
            Ok(vec![file("one", 0o644, b"shared"), file("other", 0o644, b""), file("two", 0o644, b"shared")])
        );
    }

    /// What the fuzz target checks: whatever the reader accepts, the writer
    /// writes back to an archive that reads as `normalize` of it.
    fn assert_round_trip(entries: Vec<Entry>, format: Format) {
        match normalize(entries.clone()) {
            Ok(expected) => {
                let bytes = write(entries, format);
                assert_eq!(read_archive(&bytes).as_ref(), Ok(&expected));
                assert_eq!(write(expected, format), bytes);
            }
            Err(_) => assert!(write_archive(entries, format, io::sink()).is_err()),
        }
    }

    /// xorshift64: deterministic, no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let seeds = [
            write(sample(), Format::Newc),
            write(sample(), Format::NewcCrc),
            write(vec![file("a/b", 0o644, b"hi\n")], Format::NewcCrc),
        ];
        let hex = b"0123456789abcdefABCDEF";
        let mut accepted = 0;
        for round in 0..3000 {
            let mut input = seeds[round % seeds.len()].clone();
            match round % 6 {
                // Random bytes, sometimes behind a valid magic.
                0 => {
                    input = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
                    if rng.below(2) == 0 {
                        input.splice(0..0, *MAGIC_NEWC);
                    }
                }
                // Flip a few bytes anywhere.
                1 => {
                    for _ in 0..=rng.below(4) {
                        let at = rng.below(input.len());
                        input[at] ^= 1 << rng.below(8);
                    }
                }
                // Rewrite a header digit with another hex digit (sizes, modes).
                2 => {
                    let entry_starts: Vec<usize> =
                        input.windows(5).enumerate().filter(|(_, w)| *w == b"07070").map(|(i, _)| i).collect();
                    let start = entry_starts[rng.below(entry_starts.len())];
                    let at = start + 6 + rng.below(104);
                    if at < input.len() {
                        input[at] = hex[rng.below(hex.len())];
                    }
                }
                // Truncate.
                3 => input.truncate(rng.below(input.len())),
                // Splice a piece of the archive into another place.
                4 => {
                    let from = rng.below(input.len());
                    let len = rng.below(200).min(input.len() - from);
                    let piece = input[from..from + len].to_vec();
                    let to = rng.below(input.len());
                    input.splice(to..to, piece);
                }
                // Remove a piece.
                _ => {
                    let from = rng.below(input.len());
                    let len = rng.below(64).min(input.len() - from);
                    input.drain(from..from + len);
                }
            }
            if let Ok(entries) = read_archive(&input) {
                accepted += 1;
                assert_round_trip(entries, Format::NewcCrc);
            }
        }
        // Some mutations (padding, data bytes in 070701) must still parse,
        // so the round-trip property is exercised too.
        assert!(accepted > 50, "only {accepted} inputs accepted");
    }

    // ---- GNU cpio interop -------------------------------------------------

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("bootvault-cpio-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const GNU_CPIO: &str = "/usr/bin/cpio";

    fn have_gnu_cpio() -> bool {
        if Path::new(GNU_CPIO).exists() {
            return true;
        }
        eprintln!("note: {GNU_CPIO} not found, skipping the GNU cpio interop check");
        false
    }

    fn is_root() -> bool {
        // /proc/self belongs to the process's effective uid.
        fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
    }

    fn cpio(args: &[&str], dir: &Path, stdin: &[u8]) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(GNU_CPIO)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cpio");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).expect("write cpio stdin");
        drop(input);
        child.wait_with_output().expect("wait for cpio")
    }

    fn assert_success(what: &str, out: &Output) {
        assert!(out.status.success(), "{what}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }

    fn interop_entries(with_devices: bool) -> Vec<Entry> {
        let big: Vec<u8> = (0..100 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut entries = vec![
            dir("etc", 0o750),
            file("etc/bootvault.conf", 0o640, b"server = 10.0.0.1\n"),
            file("etc/empty", 0o644, b""),
            file("lib/modules/6.1.0/big.ko", 0o644, &big),
            file("init", 0o755, b"#!/bin/true\n"),
            symlink("sbin/init", "../init"),
        ];
        if with_devices {
            entries.push(Entry { path: "dev/null".into(), mode: 0o666, kind: Kind::CharDev { major: 1, minor: 3 } });
        }
        entries
    }

    #[test]
    fn gnu_cpio_lists_verifies_and_extracts_our_archive() {
        if !have_gnu_cpio() {
            return;
        }
        let tmp = TempDir::new("ours");
        let entries = interop_entries(true);
        let crc_path = tmp.0.join("crc.cpio");
        fs::write(&crc_path, write(entries.clone(), Format::NewcCrc)).expect("write archive");
        let crc = crc_path.to_str().expect("utf-8 temp path");

        // cpio -t lists exactly our paths, in our order.
        let listed = cpio(&["-t", "--quiet", "-F", crc], &tmp.0, b"");
        assert_success("cpio -t", &listed);
        let expected: Vec<String> =
            normalize(entries.clone()).expect("normalize").into_iter().map(|e| e.path).collect();
        let got: Vec<String> = String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect();
        assert_eq!(got, expected);

        // GNU cpio agrees with our checksums...
        let verified = cpio(&["-i", "--only-verify-crc", "--quiet", "-F", crc], &tmp.0, b"");
        assert_success("cpio -i --only-verify-crc", &verified);
        assert!(verified.stderr.is_empty(), "{}", String::from_utf8_lossy(&verified.stderr));
        // ...and would notice a wrong one.
        let mut corrupt = fs::read(&crc_path).expect("read archive");
        let at = corrupt.windows(6).position(|w| w == b"server").expect("data");
        corrupt[at] ^= 0x20;
        let bad_path = tmp.0.join("bad.cpio");
        fs::write(&bad_path, &corrupt).expect("write corrupt");
        let rejected =
            cpio(&["-i", "--only-verify-crc", "--quiet", "-F", bad_path.to_str().expect("utf-8")], &tmp.0, b"");
        let stderr = String::from_utf8_lossy(&rejected.stderr);
        assert!(stderr.contains("etc/bootvault.conf: checksum error"), "{stderr}");

        // Extraction gives back the contents, modes and link target. Making
        // device nodes needs root; without it the archive leaves them out.
        let root = is_root();
        if !root {
            eprintln!("note: not root, skipping the device node extraction check");
        }
        let out_dir = tmp.0.join("root");
        fs::create_dir(&out_dir).expect("mkdir");
        let archive = write(interop_entries(root), Format::Newc);
        let extracted = cpio(&["-idm", "--no-absolute-filenames", "--quiet"], &out_dir, &archive);
        assert_success("cpio -idm", &extracted);
        for e in normalize(interop_entries(root)).expect("normalize") {
            let path = out_dir.join(&e.path);
            let meta = fs::symlink_metadata(&path).unwrap_or_else(|err| panic!("{}: {err}", e.path));
            match &e.kind {
                Kind::File(data) => {
                    assert_eq!(&fs::read(&path).expect("read"), data, "{}", e.path);
                    assert_eq!(meta.permissions().mode() & 0o7777, e.mode, "{}", e.path);
                    assert_eq!(meta.mtime(), 0, "{}", e.path);
                }
                Kind::Dir => assert!(meta.is_dir(), "{}", e.path),
                Kind::Symlink(target) => {
                    assert_eq!(fs::read_link(&path).expect("read_link"), Path::new(target));
                }
                Kind::CharDev { major, minor } => {
                    assert!(meta.file_type().is_char_device(), "{}", e.path);
                    // Linux's dev_t encoding, for small numbers.
                    assert_eq!(meta.rdev(), u64::from(major << 8 | minor), "{}", e.path);
                }
                Kind::BlockDev { .. } => unreachable!("no block devices in the interop set"),
            }
        }
    }

    #[test]
    fn we_read_what_gnu_cpio_writes() {
        if !have_gnu_cpio() {
            return;
        }
        let tmp = TempDir::new("theirs");
        let src = &tmp.0;
        let big: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 253) as u8).collect();
        fs::create_dir(src.join("d")).expect("mkdir");
        fs::write(src.join("d/file"), b"contents\n").expect("write");
        fs::write(src.join("d/empty"), b"").expect("write");
        fs::write(src.join("big"), &big).expect("write");
        fs::hard_link(src.join("d/file"), src.join("d/hardlink")).expect("hard link");
        std::os::unix::fs::symlink("d/file", src.join("link")).expect("symlink");
        for (path, mode) in [("d", 0o750), ("d/file", 0o640), ("d/empty", 0o600), ("big", 0o755)] {
            fs::set_permissions(src.join(path), fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let names = "d\nd/file\nd/empty\nd/hardlink\nbig\nlink\n";
        let expected = vec![
            file("big", 0o755, &big),
            dir("d", 0o750),
            file("d/empty", 0o600, b""),
            file("d/file", 0o640, b"contents\n"),
            file("d/hardlink", 0o640, b"contents\n"),
            symlink("link", "d/file"),
        ];
        for (format, magic) in [("newc", b"070701"), ("crc", b"070702")] {
            let out = tmp.0.join(format!("{format}.cpio"));
            let made =
                cpio(&["-o", "-H", format, "--quiet", "-F", out.to_str().expect("utf-8")], src, names.as_bytes());
            assert_success("cpio -o", &made);
            let bytes = fs::read(&out).expect("read archive");
            assert_eq!(&bytes[..6], magic);
            let mut got = read_archive(&bytes).unwrap_or_else(|e| panic!("format {format}: {e}"));
            // GNU cpio holds back a hard link's earlier names until its last
            // one, so the archive order is not the input order.
            got.sort_by(|a, b| a.path.cmp(&b.path));
            let paths = |entries: &[Entry]| entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
            assert_eq!(paths(&got), paths(&expected), "format {format}");
            for (g, e) in got.iter().zip(&expected) {
                assert!(g == e, "format {format}: {} differs: mode {:o} vs {:o}", e.path, g.mode, e.mode);
            }
        }
    }
}
