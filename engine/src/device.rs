//! A disk to back up or restore: a block device or an image file, behind
//! one type. Owns the ioctls (size, sector sizes, zero-out, partition
//! re-read) so the pipelines stay free of them.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::EngineError;

// From <linux/fs.h>.
const BLKRRPART: libc::c_ulong = 0x125F;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKPBSZGET: libc::c_ulong = 0x127B;
/// `_IOR(0x12, 114, size_t)`: the number holds size_t's size, so it is
/// 0x8008_1272 on 64-bit PCs and 0x8004_1272 on 32-bit ones (the value
/// written is a u64 on both).
const BLKGETSIZE64: libc::c_ulong = 0x8000_1272 | ((std::mem::size_of::<usize>() as libc::c_ulong) << 16);
const BLKZEROOUT: libc::c_ulong = 0x127F;
const BLKDISCARD: libc::c_ulong = 0x1277;

pub struct Device {
    file: File,
    pub path: PathBuf,
    pub bytes: u64,
    pub logical: u32,
    pub physical: u32,
    pub is_block: bool,
}

fn ioctl_u32(f: &File, req: libc::c_ulong) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int through the valid pointer.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), req as _, &mut v) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v as u32)
    }
}

impl Device {
    /// Opens for reading (backup) or writing (restore).
    pub fn open(path: &Path, write: bool) -> Result<Device, EngineError> {
        let ctx = |e: io::Error| EngineError::new(format!("opening {}: {e}", path.display()));
        let file = OpenOptions::new().read(true).write(write).open(path).map_err(ctx)?;
        let meta = file.metadata().map_err(ctx)?;
        let is_block = meta.file_type().is_block_device();
        let (bytes, logical, physical) = if is_block {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the valid pointer.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
            if rc < 0 {
                return Err(ctx(io::Error::last_os_error()));
            }
            let logical = ioctl_u32(&file, BLKSSZGET).map_err(ctx)?;
            let physical = ioctl_u32(&file, BLKPBSZGET).unwrap_or(logical);
            (size, logical, physical)
        } else if meta.is_file() {
            (meta.len(), 512, 512)
        } else {
            return Err(EngineError::new(format!("{} is neither a block device nor a file", path.display())));
        };
        Ok(Device { file, path: path.to_owned(), bytes, logical, physical, is_block })
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), EngineError> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            EngineError::new(format!("reading {} at {} ({offset}): {e}", self.path.display(), human_offset(offset)))
        })
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), EngineError> {
        self.file.write_all_at(buf, offset).map_err(|e| {
            EngineError::new(format!("writing {} at {} ({offset}): {e}", self.path.display(), human_offset(offset)))
        })
    }

    /// Makes `len` bytes at `offset` read as zeros: BLKZEROOUT on a block
    /// device (the device may unmap or write zeros itself), a punched hole
    /// in a file; plain zero writes where neither is supported.
    pub fn zero_range(&self, offset: u64, len: u64, zeros: &[u8]) -> Result<(), EngineError> {
        let done = if self.is_block { self.range_ioctl(BLKZEROOUT, offset, len) } else { self.punch_hole(offset, len) };
        if done {
            return Ok(());
        }
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Tells the disk that `len` bytes at `offset` hold nothing worth
    /// keeping (free space of a restored filesystem): BLKDISCARD on a
    /// block device, a punched hole in a file. Whether the range then
    /// reads as zeros is up to the device. Returns whether the range was
    /// discarded; a device without discard keeps its bytes (never an error:
    /// the range is free space either way).
    pub fn discard(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        if self.is_block {
            self.range_ioctl(BLKDISCARD, offset, len)
        } else {
            self.punch_hole(offset, len)
        }
    }

    /// BLKZEROOUT or BLKDISCARD over `len` bytes at `offset`; whether the
    /// device did it.
    fn range_ioctl(&self, req: libc::c_ulong, offset: u64, len: u64) -> bool {
        let range = [offset, len];
        // SAFETY: both requests read two u64 (start, length) from the pointer.
        unsafe { libc::ioctl(self.file.as_raw_fd(), req as _, range.as_ptr()) == 0 }
    }

    /// Punches a hole in an image file (it then reads as zeros); whether
    /// the filesystem did it.
    fn punch_hole(&self, offset: u64, len: u64) -> bool {
        // SAFETY: fallocate on an open file with a valid range.
        unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            ) == 0
        }
    }

    /// Flushes writes to stable storage.
    pub fn sync(&self) -> Result<(), EngineError> {
        self.file.sync_all().map_err(|e| EngineError::new(format!("flushing {}: {e}", self.path.display())))
    }

    /// Asks the kernel to re-read the partition table (block devices only).
    /// Returns the error text if it refused (e.g. a partition is in use).
    pub fn reread_partitions(&self) -> Option<String> {
        if !self.is_block {
            return None;
        }
        // SAFETY: BLKRRPART takes no argument.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKRRPART as _, 0) };
        (rc < 0).then(|| io::Error::last_os_error().to_string())
    }
}

/// `1073741824` -> `1.0 GiB`: offsets in messages, readable.
pub fn human_offset(offset: u64) -> String {
    bootvault_common::units::human_bytes(offset)
}

#[cfg(test)]
mod tests {
    /// The size ioctl's number as <linux/fs.h> makes it for this target:
    /// a 64-bit number on a 32-bit PC is ENOTTY ("Not a tty").
    #[test]
    fn the_size_ioctl_fits_the_target() {
        let want: libc::c_ulong = if cfg!(target_pointer_width = "64") { 0x8008_1272 } else { 0x8004_1272 };
        assert_eq!(super::BLKGETSIZE64, want);
    }
}
