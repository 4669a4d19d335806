//! How much of the PC's memory a backup or restore may hold, and the
//! workers and chunks in flight that fit in it.
//!
//! The engine's memory is its chunks in flight: a backup worker holds
//! `group` chunks it read, the blob it compressed and its sealed copy, and
//! a zstd context; a restore worker the target's bytes (to compare), the
//! fetched blob and the inflated chunk; each worker's connection also has
//! its socket buffers in the kernel. [`fit`] takes the workers and group
//! asked for and gives up group first, then workers, until the cost is
//! within the budget: a third of what the PC has available at the start
//! (`MemAvailable`), the rest left to the kernel (the page cache the disk
//! is read through, dirty pages under writeback) and to the rest of PID 1.
//! A PC that cannot hold one worker with one chunk and [`RESERVE`] for the
//! kernel is told so before anything starts.
//!
//! The costs are measured on the host (`bootvault backup --threads N`
//! under `/usr/bin/time`) and rounded up, and checked under QEMU against
//! PID 1's peak (BENCHMARKS.md "Low memory"); the same engine runs in the
//! PID 1.

use bootvault_common::units::human_bytes;

use crate::EngineError;

const MIB: u64 = 1 << 20;

/// What the kernel needs beside the engine, at the least: a few socket
/// buffers and the pages being read and written (the page cache gives
/// back the rest). It is more than the two thirds of what is available
/// left outside the budget only on the smallest PCs.
pub const RESERVE: u64 = 4 * MIB;

/// Memory per worker besides its chunks: its stack as used, a connection's
/// buffers (TLS records, the socket's read buffer, the answer head), and
/// what the kernel holds for that connection (on a small PC the init caps
/// a socket's buffers at [`SOCKET_BUFFER`]).
const WORKER: u64 = MIB / 2 + SOCKET_BUFFER;

/// The most a TCP socket buffers each way on a PC with less than
/// [`SMALL_PC`] of memory (`net.ipv4.tcp_rmem`/`tcp_wmem`, set by the init):
/// the kernel's autotuning would otherwise let each worker's connection
/// hold megabytes of a restore's chunks that the PC has not read yet.
pub const SOCKET_BUFFER: u64 = MIB;

/// Below this much memory in all, the init caps socket buffers.
pub const SMALL_PC: u64 = 256 * MIB;

/// What the job holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Backup { chunk_size: u32, level: u8 },
    Restore { chunk_size: u32 },
}

impl Job {
    fn chunk(&self) -> u64 {
        match *self {
            Job::Backup { chunk_size, .. } | Job::Restore { chunk_size } => u64::from(chunk_size),
        }
    }

    /// One worker with `group` chunks.
    fn worker(&self, group: usize) -> u64 {
        let c = self.chunk();
        match *self {
            // The group's chunks, one blob and its sealed copy, zstd's
            // context (larger at the levels that search further).
            Job::Backup { level, .. } => {
                let zstd = if level <= 4 { MIB } else { 8 * MIB };
                group as u64 * c + 2 * c + zstd + WORKER
            }
            // The target's bytes, the blob, the inflated chunk, zstd's
            // decoding context.
            Job::Restore { .. } => 3 * c + MIB / 4 + WORKER,
        }
    }

    /// Held once for the whole job: a restore's piece of zeros.
    fn shared(&self) -> u64 {
        match self {
            Job::Backup { .. } => 0,
            Job::Restore { .. } => self.chunk().min(crate::restore::ZEROS as u64),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Job::Backup { .. } => "a backup",
            Job::Restore { .. } => "a restore",
        }
    }
}

/// Workers and chunks per worker that fit, and what they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    pub threads: usize,
    pub group: usize,
    /// The chunk size (a backup's may be smaller than asked, see [`fit_backup`]).
    pub chunk_size: u32,
    /// What the engine's buffers take at most, by this model.
    pub bytes: u64,
    /// What was available when it was sized (None: not known, not limited).
    pub available: Option<u64>,
}

impl Fit {
    /// `2 workers × 2 chunks of 1.0 MiB (14.0 MiB of 47.0 MiB available)`.
    pub fn describe(&self) -> String {
        let chunks = if self.group == 1 { "chunk" } else { "chunks" };
        let workers = if self.threads == 1 { "worker" } else { "workers" };
        let size = human_bytes(u64::from(self.chunk_size));
        let of = match self.available {
            Some(a) => format!("{} of {} available", human_bytes(self.bytes), human_bytes(a)),
            None => human_bytes(self.bytes),
        };
        format!("{} {workers} × {} {chunks} of {size} ({of})", self.threads, self.group)
    }
}

/// The cost of `threads` workers with `group` chunks each.
pub fn cost(job: Job, threads: usize, group: usize) -> u64 {
    job.shared() + threads as u64 * job.worker(group)
}

/// The most workers (up to `threads`) and chunks per worker (up to
/// `group`) whose cost is within a third of `available`; gives up chunks per
/// worker down to two, then workers down to two, then each down to one.
/// `None` available: as asked. An error, before anything starts, when one
/// worker with one chunk and [`RESERVE`] do not fit.
pub fn fit(job: Job, available: Option<u64>, threads: usize, group: usize) -> Result<Fit, EngineError> {
    let (threads, group) = (threads.max(1), group.max(1));
    let chunk_size = job.chunk() as u32;
    let Some(avail) = available else {
        return Ok(Fit { threads, group, chunk_size, bytes: cost(job, threads, group), available });
    };
    let least = cost(job, 1, 1);
    if least + RESERVE > avail {
        return Err(EngineError::new(format!(
            "this PC has {} of memory available; {} of {} chunks needs at least {} ({} for one chunk in flight, {} \
             for the kernel)",
            human_bytes(avail),
            job.what(),
            human_bytes(job.chunk()),
            human_bytes(least + RESERVE),
            human_bytes(least),
            human_bytes(RESERVE)
        )));
    }
    // A third: PID 1's own growth (threads, TLS, zstd), which the costs
    // leave out, and the kernel share the rest (measured: PID 1 peaked
    // 1 MiB over the engine's share with two restore workers).
    let budget = (avail / 3).max(least);
    let (mut t, mut g) = (threads, group);
    while cost(job, t, g) > budget {
        if g > 2 {
            g -= 1;
        } else if t > 2 {
            t -= 1;
        } else if g > 1 {
            g -= 1;
        } else {
            t -= 1;
        }
    }
    Ok(Fit { threads: t, group: g, chunk_size, bytes: cost(job, t, g), available })
}

/// The smallest chunk a backup takes to fit a small PC.
pub const SMALLEST_CHUNK: u32 = 256 << 10;

/// [`fit`] for a backup, which may also choose its chunk size: where one
/// chunk of `chunk_size` in flight does not fit, half of it, down to
/// [`SMALLEST_CHUNK`] (its chunks then deduplicate only against backups
/// with the same size; a restore takes any size). The error is the one
/// for the size asked.
pub fn fit_backup(
    chunk_size: u32,
    level: u8,
    available: Option<u64>,
    threads: usize,
    group: usize,
) -> Result<Fit, EngineError> {
    let asked = fit(Job::Backup { chunk_size, level }, available, threads, group);
    let mut size = chunk_size / 2;
    while asked.is_err() && size >= SMALLEST_CHUNK {
        if let Ok(f) = fit(Job::Backup { chunk_size: size, level }, available, threads, group) {
            return Ok(f);
        }
        size /= 2;
    }
    asked
}

/// A `Name:   123 kB` line of /proc/meminfo or /proc/self/status, in bytes.
pub fn parse_kb(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(':')))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// What this machine has available now (None where /proc is not there).
pub fn available() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| parse_kb(&t, "MemAvailable"))
}

/// This process's peak resident memory so far (`VmHWM`).
pub fn peak() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status").ok().and_then(|t| parse_kb(&t, "VmHWM"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKUP: Job = Job::Backup { chunk_size: 1 << 20, level: 1 };
    const RESTORE: Job = Job::Restore { chunk_size: 1 << 20 };

    #[test]
    fn meminfo() {
        let text = "MemTotal:        8024312 kB\nMemFree:  100 kB\nMemAvailable:    5678 kB\nBuffers: 1 kB\n";
        assert_eq!(parse_kb(text, "MemAvailable"), Some(5678 * 1024));
        assert_eq!(parse_kb(text, "MemTotal"), Some(8024312 * 1024));
        assert_eq!(parse_kb("MemTotal: 5 kB\n", "MemAvailable"), None);
        assert_eq!(parse_kb("MemAvailableX: 5 kB\n", "MemAvailable"), None);
        assert_eq!(parse_kb("MemAvailable: x kB\n", "MemAvailable"), None);
        assert_eq!(parse_kb("MemAvailable: 5 MB\n", "MemAvailable"), None);
        assert_eq!(parse_kb("Name:\tinit\nVmHWM:\t   31604 kB\n", "VmHWM"), Some(31604 * 1024));
    }

    #[test]
    fn plenty_of_memory_changes_nothing() {
        for job in [BACKUP, RESTORE] {
            let f = fit(job, Some(16 << 30), 8, 4).expect("fits");
            assert_eq!((f.threads, f.group), (8, 4));
            assert_eq!(fit(job, None, 8, 4).expect("fits").threads, 8);
        }
    }

    #[test]
    fn less_memory_fewer_chunks_then_fewer_workers() {
        let mut last = (4, 4);
        for mib in (10..200).rev() {
            let f = fit(BACKUP, Some(mib * MIB), 4, 4).expect("fits");
            assert!(f.bytes <= (mib * MIB / 3).max(cost(BACKUP, 1, 1)), "{mib} MiB: {f:?}");
            assert!(f.threads <= last.0 && f.threads * f.group <= last.0 * last.1, "{mib}: {f:?} after {last:?}");
            last = (f.threads, f.group);
        }
        assert_eq!(last, (1, 1));
        let f = fit(BACKUP, Some(96 * MIB), 4, 4).expect("fits");
        assert_eq!((f.threads, f.group), (4, 3), "{}", f.describe());
        let f = fit(BACKUP, Some(64 * MIB), 4, 4).expect("fits");
        assert_eq!((f.threads, f.group), (3, 2), "{}", f.describe());
        let f = fit(RESTORE, Some(32 * MIB), 8, 1).expect("fits");
        assert_eq!((f.threads, f.group), (2, 1), "{}", f.describe());
        let f = fit(RESTORE, Some(24 * MIB), 8, 1).expect("fits");
        assert_eq!((f.threads, f.group), (1, 1), "{}", f.describe());
    }

    #[test]
    fn too_little_memory_is_refused_with_what_it_needs() {
        let e = fit(BACKUP, Some(9 * MIB), 4, 4).expect_err("too little");
        assert_eq!(
            e.0,
            "this PC has 9.0 MiB of memory available; a backup of 1.0 MiB chunks needs at least 9.5 MiB (5.5 MiB \
             for one chunk in flight, 4.0 MiB for the kernel)"
        );
        // Smaller chunks fit where larger ones do not.
        assert!(fit(Job::Backup { chunk_size: 256 << 10, level: 1 }, Some(9 * MIB), 4, 4).is_ok());
        assert!(fit(RESTORE, Some(8 * MIB), 4, 4).is_err());
        assert!(fit(RESTORE, Some(9 * MIB), 4, 4).is_ok());
    }

    #[test]
    fn a_small_pc_backs_up_in_smaller_chunks() {
        let f = fit_backup(1 << 20, 1, Some(16 * MIB), 4, 4).expect("fits");
        assert_eq!(f.chunk_size, 1 << 20, "{}", f.describe());
        let f = fit_backup(1 << 20, 1, Some(7 * MIB + MIB / 2), 4, 4).expect("fits in smaller chunks");
        assert_eq!((f.chunk_size, f.threads, f.group), (256 << 10, 1, 1), "{}", f.describe());
        let e = fit_backup(1 << 20, 1, Some(5 * MIB), 4, 4).expect_err("not even the smallest");
        assert!(e.0.starts_with("this PC has 5.0 MiB of memory available; a backup of 1.0 MiB chunks"), "{e}");
    }

    #[test]
    fn describe() {
        let f = Fit { threads: 2, group: 1, chunk_size: 1 << 20, bytes: 14 * MIB, available: Some(47 * MIB) };
        assert_eq!(f.describe(), "2 workers × 1 chunk of 1.0 MiB (14.0 MiB of 47.0 MiB available)");
    }
}
