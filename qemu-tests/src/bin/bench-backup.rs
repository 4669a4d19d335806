//! `make bench` (backup part): the engine on the host against the tools
//! users would pick instead, in one run, on the same disk image.
//!
//! The disk: 2 GiB, GPT, one ext4 partition filled to about half the disk
//! with files of mixed compressibility (text, random, repetitive, zeros);
//! the rest of the disk is zeros. Each contender runs as a child process;
//! wall time and peak RSS (largest process of the pipeline, from wait4)
//! are measured around it. Prints a Markdown table with ours/peer ratios.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootvault_qemu_tests::*;

const DISK_MIB: u64 = 2048;
const PART_START: u64 = 2048; // sectors
const PART_MIB: u64 = 2000;

struct Measure {
    name: String,
    wall: Duration,
    output_bytes: u64,
    rss_kib: u64,
}

/// Runs `bash -c script` under GNU time; returns the wall time and the
/// peak RSS of the largest process in it. (Measured by `time`, which forks
/// from a small process: Linux carries a parent's RSS high-water mark into
/// its forked children, so wait4 from this big process would report ours.)
fn timed(script: &str, rss_file: &Path) -> Result<(Duration, u64)> {
    let start = Instant::now();
    let status = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rss_file)
        .args(["bash", "-o", "pipefail", "-c", script])
        .status()
        .map_err(|e| format!("{script}: {e}"))?;
    let wall = start.elapsed();
    if !status.success() {
        return Err(format!("{script}: failed ({status})"));
    }
    let rss = fs::read_to_string(rss_file)
        .ok()
        .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()))
        .ok_or_else(|| format!("no peak RSS from /usr/bin/time for {script}"))?;
    Ok((wall, rss))
}

fn make_bench_disk(dir: &Path) -> Result<PathBuf> {
    // Built under temporary names and renamed last, so an interrupted run
    // never leaves a half-made image that a later run would reuse.
    let (disk_done, ext4_done) = (dir.join("disk.img"), dir.join("part.img"));
    if disk_done.exists() && ext4_done.exists() {
        return Ok(disk_done);
    }
    let disk = dir.join("disk.img.partial");
    let ext4 = dir.join("part.img.partial");
    make_disk(&disk, DISK_MIB, &format!("label: gpt\nstart={PART_START}, size={}, type=L\n", PART_MIB * 2048))?;
    let files = dir.join("files");
    let _ = fs::remove_dir_all(&files);
    fs::create_dir_all(&files).map_err(|e| e.to_string())?;
    // ~1 GiB of content: a quarter each text, random, repetitive, zeros.
    let quarter = 256usize << 20;
    let text: Vec<u8> = (0..)
        .map(|i| format!("{i:08} the quick brown fox jumps over the lazy dog; config value {}\n", i % 977))
        .flat_map(String::into_bytes)
        .take(quarter)
        .collect();
    for (i, part) in text.chunks(16 << 20).enumerate() {
        fs::write(files.join(format!("text-{i:02}.log")), part).map_err(|e| e.to_string())?;
    }
    for i in 0..16 {
        fs::write(files.join(format!("random-{i:02}.bin")), noise(1000 + 2 * i, 16 << 20))
            .map_err(|e| e.to_string())?;
    }
    let pattern: Vec<u8> = noise(9, 4096).repeat(4096);
    for i in 0..16 {
        fs::write(files.join(format!("repeat-{i:02}.dat")), &pattern).map_err(|e| e.to_string())?;
    }
    for i in 0..16 {
        fs::write(files.join(format!("zeros-{i:02}.img")), vec![0u8; 16 << 20]).map_err(|e| e.to_string())?;
    }
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&files).arg(&ext4).arg(format!("{PART_MIB}M")))?;
    let _ = fs::remove_dir_all(&files);
    run(Command::new("dd")
        .arg(format!("if={}", ext4.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=4M", "conv=notrunc,sparse", "status=none"])
        .arg(format!("seek={}", PART_START * 512))
        .arg("oflag=seek_bytes"))?;
    fs::rename(&ext4, &ext4_done).map_err(|e| e.to_string())?;
    fs::rename(&disk, &disk_done).map_err(|e| e.to_string())?;
    Ok(disk_done)
}

fn size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn main() {
    if let Err(e) = bench() {
        eprintln!("bench-backup failed: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<()> {
    let dir = bootvault_qemu_tests::workspace().join("target/bench/backup");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    eprintln!("preparing the 2 GiB disk image in {}", dir.display());
    let disk = make_bench_disk(&dir)?;
    let part = dir.join("part.img");
    let bin = bootvault_bin();
    let mut results = Vec::new();

    let rss_file = dir.join("rss.txt");
    // Ours: host-mode backup into a fresh local server (its own data dir,
    // so nothing is deduplicated against an earlier run).
    let ours = |tag: &str, threads: &str, fresh: bool| -> Result<(Duration, u64, u64)> {
        let sdir = dir.join(format!("server-{tag}"));
        if fresh {
            let _ = fs::remove_dir_all(&sdir);
        }
        fs::create_dir_all(&sdir).map_err(|e| e.to_string())?;
        let server = Server::start(&sdir)?;
        server.register("bench", &mac_for("bench"))?;
        let script = format!(
            "{} backup --disk {} --server {} --fingerprint {} --pc bench --token {} --name full {threads} > {}/ours-{tag}.out",
            bin.display(),
            disk.display(),
            server.url,
            server.fingerprint,
            server.token("bench")?,
            dir.display()
        );
        let (wall, rss) = timed(&script, &rss_file)?;
        Ok((wall, rss, dir_size(&server.data.join("chunks"))))
    };
    // Every contender reads the same, warm file.
    run(Command::new("cat").arg(&disk).stdout(std::process::Stdio::null()))?;
    let (wall, rss, stored) = ours("a", "", true)?;
    results.push(Measure {
        name: "bootvault backup (host, to local server)".into(),
        wall,
        output_bytes: stored,
        rss_kib: rss,
    });
    let (wall, rss, _) = ours("a", "", false)?;
    let rebackup = Measure { name: "bootvault re-backup, disk unchanged".into(), wall, output_bytes: 0, rss_kib: rss };
    let (wall, rss, stored) = ours("b", "--threads 1", true)?;
    let one_thread = Measure {
        name: "bootvault backup, 1 worker thread (no overlap)".into(),
        wall,
        output_bytes: stored,
        rss_kib: rss,
    };

    let gz = dir.join("disk.img.gz");
    let (wall, rss) =
        timed(&format!("dd if={} bs=4M status=none | gzip -1 > {}", disk.display(), gz.display()), &rss_file)?;
    results.push(Measure { name: "dd | gzip -1".into(), wall, output_bytes: size(&gz), rss_kib: rss });
    let (wall, rss) =
        timed(&format!("dd if={} bs=4M status=none | pigz -1 -p 2 > {}", disk.display(), gz.display()), &rss_file)?;
    results.push(Measure { name: "dd | pigz -1 (2 threads)".into(), wall, output_bytes: size(&gz), rss_kib: rss });
    let pc = dir.join("part.pc.gz");
    let (wall, rss) = timed(
        &format!("partclone.ext4 -q -c -s {} -o - 2>/dev/null | gzip -1 > {}", part.display(), pc.display()),
        &rss_file,
    )?;
    results.push(Measure {
        name: "partclone.ext4 -c | gzip -1 (ext4 partition only)".into(),
        wall,
        output_bytes: size(&pc),
        rss_kib: rss,
    });
    let _ = fs::remove_file(&gz);
    let _ = fs::remove_file(&pc);

    let disk_bytes = DISK_MIB << 20;
    let ours = &results[0];
    println!("### Backup of a 2 GiB disk (host, `make bench`)\n");
    println!("| tool | wall | MB/s of disk covered | output | peak RSS | ours/peer time | ours/peer size |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for m in results.iter().chain([&one_thread, &rebackup]) {
        let mbs = disk_bytes as f64 / 1e6 / m.wall.as_secs_f64();
        let ratio_t = ours.wall.as_secs_f64() / m.wall.as_secs_f64();
        let ratio_s = if m.output_bytes > 0 {
            format!("{:.2}", ours.output_bytes as f64 / m.output_bytes as f64)
        } else {
            "–".into()
        };
        println!(
            "| {} | {:.2} s | {:.0} | {} | {} | {:.2} | {} |",
            m.name,
            m.wall.as_secs_f64(),
            mbs,
            if m.output_bytes > 0 {
                bootvault_common::units::human_bytes(m.output_bytes)
            } else {
                "0 (nothing new)".into()
            },
            bootvault_common::units::human_bytes(m.rss_kib * 1024),
            ratio_t,
            ratio_s
        );
    }
    println!("\nours: {}", fs::read_to_string(dir.join("ours-a.out")).unwrap_or_default().trim());
    println!("Peak RSS of ours is the client's; the server is a separate process.");
    Ok(())
}
