//! `make bench` (low memory): for each kernel (Debian's stock x86_64 and
//! 686 ones, our own x86_64 and i686 ones from kernel-config/pc.config), the smallest
//! guest RAM in 8 MiB steps at which a full backup and a full restore of a
//! 256 MiB disk complete, with the engine's sizing and PID 1's peak at that
//! RAM; the time from QEMU's start to the server's answer; the sizes of the
//! kernel, the initramfs and the boot media of every variant. Prints a
//! Markdown report.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bootvault_qemu_tests::*;

struct Variant {
    name: &'static str,
    build: &'static [&'static str],
    hw: Hardware,
    /// Where the walk down starts.
    from: u32,
    goal: u32,
}

const VARIANTS: &[Variant] = &[
    Variant { name: "stock x86_64", build: &[], hw: Hardware::Virtio, from: 104, goal: 96 },
    Variant { name: "ours x86_64", build: &["--kernel-config", "pc"], hw: Hardware::Virtio, from: 48, goal: 32 },
    Variant { name: "stock i686 (N270)", build: &["--arch", "i686"], hw: Hardware::Pc32, from: 56, goal: 0 },
    Variant {
        name: "ours i686 (N270)",
        build: &["--kernel-config", "pc", "--arch", "i686"],
        hw: Hardware::Pc32,
        from: 32,
        goal: 24,
    },
];

fn main() {
    if let Err(e) = bench() {
        eprintln!("bench-lowmem failed: {e}");
        std::process::exit(1);
    }
}

/// A 256 MiB GPT disk: an ext4 partition of 250 MiB about half full of
/// files (text, noise, a few copies), the kind of data a backup reads,
/// compresses and sends.
fn make_bench_disk(dir: &Path) -> Result<PathBuf> {
    let disk = dir.join("disk256.img");
    make_disk(&disk, 256, "label: gpt\nunit: sectors\nstart=2048, size=512000, type=L\n")?;
    let files = dir.join("files");
    let _ = fs::remove_dir_all(&files);
    fs::create_dir_all(files.join("text")).map_err(|e| e.to_string())?;
    for i in 0..40 {
        let text: String =
            (0..20_000).map(|l| format!("file {i} line {l}: some text that compresses well\n")).collect();
        fs::write(files.join(format!("text/{i}.txt")), text).map_err(|e| e.to_string())?;
    }
    for i in 0..6 {
        fs::write(files.join(format!("noise{i}.bin")), noise(100 + i, 8 << 20)).map_err(|e| e.to_string())?;
    }
    let ext4 = dir.join("ext4.img");
    let _ = fs::remove_file(&ext4);
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "bench", "-d"]).arg(&files).arg(&ext4).arg("250M"))?;
    write_at(&disk, 2048 * 512, &fs::read(&ext4).map_err(|e| e.to_string())?)?;
    Ok(disk)
}

/// One boot that runs a job: its console lines, or why it did not power off cleanly.
fn boot_job(
    dir: &Path,
    tag: &str,
    server: &Server,
    v: &Variant,
    settings: &[&str],
    mib: u32,
    disk: &Path,
) -> Result<Vec<String>> {
    let boot = dir.join(format!("boot-{tag}"));
    let mut args: Vec<&str> = v.build.to_vec();
    for s in settings {
        args.extend(["--set", s]);
    }
    build_for(&boot, "bench-lowmem", server, "qemu", &args)?;
    let mut vm =
        Guest::new(&boot).hardware(v.hw).memory(mib).disk(disk, "LOWMEM01").boot(&dir.join(format!("{tag}.log")))?;
    let r = vm.console.expect("reboot: Power down", Duration::from_secs(900));
    let lines = vm.console.all();
    let _ = vm.wait_exit(Duration::from_secs(30));
    r.map(|_| lines.clone())
        .map_err(|e| format!("{e}: {}", lines.iter().rev().take(3).cloned().collect::<Vec<_>>().join(" / ")))
}

fn line_with(lines: &[String], needle: &str) -> Option<String> {
    lines.iter().find(|l| l.contains(needle)).map(|l| l.split(needle).nth(1).unwrap_or("").trim().to_owned())
}

/// The engine's sizing and PID 1's peak, from the line after a job.
fn peak_line(lines: &[String]) -> String {
    lines
        .iter()
        .find(|l| l.contains("PID 1's peak"))
        .and_then(|l| l.split("bootvault: memory: ").nth(1))
        .unwrap_or_default()
        .to_owned()
}

struct Outcome {
    backup_memory: String,
    restore_memory: String,
}

/// A backup then a restore onto a blank disk at `mib`; the restored disk compared.
fn round_trip(dir: &Path, server: &Server, v: &Variant, mib: u32, disk: &Path, n: &mut u32) -> Result<Outcome> {
    *n += 1;
    let lines = boot_job(dir, &format!("backup-{mib}"), server, v, &["action=backup", "name=bench"], mib, disk)?;
    let id = lines
        .iter()
        .find(|l| l.contains("bootvault: backup ") && l.contains(" complete:"))
        .and_then(|l| l.split("bootvault: backup ").nth(1))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .ok_or_else(|| format!("no completed backup at {mib} MiB"))?;
    let backup_memory = line_with(&lines, "PID 1's peak").map(|_| peak_line(&lines)).unwrap_or_default();
    let target = dir.join("target.img");
    let _ = fs::remove_file(&target);
    fs::File::create(&target).and_then(|f| f.set_len(256 << 20)).map_err(|e| e.to_string())?;
    let restore = format!("backup={id}");
    let lines = boot_job(dir, &format!("restore-{mib}"), server, v, &["action=restore", &restore], mib, &target)?;
    line_with(&lines, "complete:").ok_or_else(|| format!("no completed restore at {mib} MiB"))?;
    let restore_memory = peak_line(&lines);
    if let Some(at) = compare_prefix(disk, &target, 2048 * 512)? {
        return Err(format!("restored disk differs at byte {at}"));
    }
    // The restored ext4 partition checks clean (its files are the source's:
    // every chunk was verified against its id on the way in).
    let bytes = fs::read(&target).map_err(|e| e.to_string())?;
    let part = dir.join("check-ext4.img");
    fs::write(&part, &bytes[2048 * 512..(2048 + 512_000) * 512]).map_err(|e| e.to_string())?;
    run(Command::new("e2fsck").arg("-fn").arg(&part))?;
    Ok(Outcome { backup_memory, restore_memory })
}

fn answer_time(dir: &Path, server: &Server, v: &Variant, disk: &Path) -> Result<(f64, f64, f64)> {
    let mut times = Vec::new();
    for i in 0..3 {
        let boot = dir.join("boot-answer");
        let mut args: Vec<&str> = v.build.to_vec();
        args.extend(["--set", "action=probe", "--set", "error_wait=1"]);
        build_for(&boot, "bench-lowmem", server, "qemu", &args)?;
        let mut vm = Guest::new(&boot)
            .hardware(v.hw)
            .memory(128)
            .disk(disk, "LOWMEM01")
            .boot(&dir.join(format!("answer-{i}.log")))?;
        let (_, t) = vm.console.expect("answered:", BOOT_TIMEOUT)?;
        let _ = vm.console.expect("reboot: Power down", BOOT_TIMEOUT);
        let _ = vm.wait_exit(Duration::from_secs(30));
        times.push(t.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((times[1], times[0], times[2]))
}

/// Whether a kernel and initramfs fit a 1.44 MB floppy with syslinux,
/// counted as `bootvault build --media floppy` counts (whole 512-byte
/// clusters, ldlinux.sys as half of ldlinux.c32, the configuration).
fn floppy_room(kernel: u64, initrd: u64) -> String {
    const DATA: u64 = (2880 - 1 - 2 * 9 - 14) * 512;
    let ldlinux = fs::metadata("/usr/lib/syslinux/modules/bios/ldlinux.c32").map(|m| m.len()).unwrap_or(119_524);
    let used: u64 = [kernel, initrd, ldlinux * 3 / 2, 512].iter().map(|n| n.div_ceil(512) * 512).sum();
    if used <= DATA {
        format!("fits, {} B to spare", DATA - used)
    } else {
        format!("{} B too many", used - DATA)
    }
}

fn bench() -> Result<()> {
    let dir = kept_scratch("bench-lowmem");
    let server = Server::start(&dir)?;
    let disk = make_bench_disk(&dir)?;
    let only = std::env::var("BENCH_LOWMEM_ONLY").ok();
    println!("### Low memory: smallest guest RAM for a backup and a restore of a 256 MiB disk (QEMU TCG)\n");
    println!("| kernel | goal | smallest (8 MiB steps) | engine and PID 1's peak there (backup; restore) | start → server's answer (128 MiB) | kernel | initramfs | on a 1.44 MB floppy |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for v in VARIANTS.iter().filter(|v| only.as_deref().is_none_or(|o| v.name.starts_with(o))) {
        let vdir = dir.join(v.name.split_whitespace().collect::<Vec<_>>().join("-"));
        fs::create_dir_all(&vdir).map_err(|e| e.to_string())?;
        let (median, lo, hi) = answer_time(&vdir, &server, v, &disk)?;
        let boot = vdir.join("boot-answer");
        let kernel = fs::metadata(boot.join("vmlinuz")).map_err(|e| e.to_string())?.len();
        let initrd = fs::metadata(boot.join("initrd.img")).map_err(|e| e.to_string())?.len();
        let mut mib = v.from;
        let mut smallest: Option<(u32, Outcome)> = None;
        let mut runs = 0;
        while mib >= 8 {
            match round_trip(&vdir, &server, v, mib, &disk, &mut runs) {
                Ok(o) => {
                    eprintln!("{}: {mib} MiB ok: {}; {}", v.name, o.backup_memory, o.restore_memory);
                    smallest = Some((mib, o));
                    mib -= 8;
                }
                Err(e) => {
                    eprintln!("{}: {mib} MiB fails: {e}", v.name);
                    break;
                }
            }
        }
        let (at, how) = match &smallest {
            Some((m, o)) => (format!("**{m} MiB**"), format!("{}; {}", o.backup_memory, o.restore_memory)),
            None => (format!("fails at {} MiB", v.from), String::new()),
        };
        let floppy = floppy_room(kernel, initrd);
        let goal = if v.goal == 0 { "—".to_owned() } else { format!("{} MiB", v.goal) };
        println!(
            "| {} | {goal} | {at} | {how} | {median:.2} s ({lo:.2}–{hi:.2}) | {} B | {} B | {floppy} |",
            v.name, kernel, initrd
        );
    }
    Ok(())
}
