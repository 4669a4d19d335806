//! A disk to back up or restore: a block device or an image file, behind
//! one type. Owns the ioctls (size, sector sizes, zero-out, partition
//! re-read) so the pipelines stay free of them, and how much of a
//! restore's writing the page cache may hold ([`WRITE_BEHIND`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::EngineError;

/// The most of a restore's written bytes the page cache holds, dirty or
/// under writeback: each write's writeback starts at once, and past this
/// the oldest writes are waited for and dropped from the cache. The
/// kernel would otherwise let a fifth of the memory fill with dirty pages
/// of the target, and on a small PC (88 MiB with the stock kernel) the
/// restore then ran it out of memory, PID 1 being the one process there is
/// to kill. Within what [`crate::memory::RESERVE`] keeps for the kernel.
pub const WRITE_BEHIND: u64 = 4 << 20;

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
    /// Written ranges still in the page cache, oldest first, and their bytes.
    behind: Mutex<(std::collections::VecDeque<(u64, u64)>, u64)>,
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
        Ok(Device { file, behind: Mutex::default(), path: path.to_owned(), bytes, logical, physical, is_block })
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), EngineError> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            EngineError::new(format!("reading {} at {} ({offset}): {e}", self.path.display(), human_offset(offset)))
        })
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), EngineError> {
        let failed = |at: u64, e: io::Error| {
            EngineError::new(format!("writing {} at {} ({at}): {e}", self.path.display(), human_offset(at)))
        };
        self.file.write_all_at(buf, offset).map_err(|e| failed(offset, e))?;
        self.write_behind(offset, buf.len() as u64).map_err(|(at, e)| failed(at, e))
    }

    /// Starts writing back the range just written; once more than
    /// [`WRITE_BEHIND`] is in the cache, waits for the oldest ranges to
    /// reach the disk (their write errors surface here) and drops them
    /// from the cache. Where the kernel cannot (a pipe, tmpfs), nothing is
    /// held back. An error names the range's offset.
    fn write_behind(&self, offset: u64, len: u64) -> Result<(), (u64, io::Error)> {
        let fd = self.file.as_raw_fd();
        // SAFETY: an open descriptor and a plain range.
        if unsafe { libc::sync_file_range(fd, offset as libc::off_t, len as libc::off_t, libc::SYNC_FILE_RANGE_WRITE) }
            != 0
        {
            return Ok(());
        }
        let done: Vec<(u64, u64)> = {
            let Ok(mut behind) = self.behind.lock() else { return Ok(()) };
            let (ranges, bytes) = &mut *behind;
            ranges.push_back((offset, len));
            *bytes += len;
            let mut out = Vec::new();
            while *bytes > WRITE_BEHIND {
                let Some(r) = ranges.pop_front() else { break };
                *bytes -= r.1;
                out.push(r);
            }
            out
        };
        let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        for (at, n) in done {
            // SAFETY: as above.
            if unsafe { libc::sync_file_range(fd, at as libc::off_t, n as libc::off_t, wait) } != 0 {
                return Err((at, io::Error::last_os_error()));
            }
            // SAFETY: as above; advice only.
            unsafe { libc::posix_fadvise(fd, at as libc::off_t, n as libc::off_t, libc::POSIX_FADV_DONTNEED) };
        }
        Ok(())
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
    use super::*;

    /// Pages of `file`'s first `len` bytes in the page cache (mincore).
    fn resident(file: &File, len: usize) -> usize {
        let page = 4096;
        // SAFETY: a shared read-only mapping of an open file, unmapped below.
        let map =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        assert_ne!(map, libc::MAP_FAILED);
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: the mapping is `len` long and vec has a byte per page.
        assert_eq!(unsafe { libc::mincore(map, len, vec.as_mut_ptr()) }, 0);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(map, len) };
        vec.iter().filter(|&&b| b & 1 != 0).count() * page
    }

    /// A restore's writes leave at most WRITE_BEHIND of the target in the
    /// page cache, on a filesystem with a page cache to drop from (the
    /// build directory's; tmpfs keeps its pages by nature).
    #[test]
    fn writes_leave_little_in_the_page_cache() {
        let dir = std::env::current_dir().expect("cwd").join("../target/device-test");
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("target.img");
        let total = 32usize << 20;
        File::create(&path).and_then(|f| f.set_len(total as u64)).expect("target");
        let dev = Device::open(&path, true).expect("open");
        // SAFETY: statfs fills the struct for a valid path.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        assert_eq!(unsafe { libc::statfs(p.as_ptr(), &mut st) }, 0);
        if st.f_type == libc::TMPFS_MAGIC {
            eprintln!("skipped: {} is on tmpfs", dir.display());
            return;
        }
        let piece: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8 | 1).collect();
        for at in (0..total).step_by(piece.len()) {
            dev.write_at(&piece, at as u64).expect("write");
        }
        let held = resident(&dev.file, total);
        assert!(held as u64 <= WRITE_BEHIND + (1 << 20), "{held} bytes of the target still cached");
        let mut back = vec![0u8; piece.len()];
        dev.read_at(&mut back, (total - piece.len()) as u64).expect("read");
        assert_eq!(back, piece);
        let _ = std::fs::remove_file(&path);
    }

    /// The size ioctl's number as <linux/fs.h> makes it for this target:
    /// a 64-bit number on a 32-bit PC is ENOTTY ("Not a tty").
    #[test]
    fn the_size_ioctl_fits_the_target() {
        let want: libc::c_ulong = if cfg!(target_pointer_width = "64") { 0x8008_1272 } else { 0x8004_1272 };
        assert_eq!(BLKGETSIZE64, want);
    }
}
