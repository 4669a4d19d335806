//! `make bench` (issue 13): what TLS and encryption on the PC cost.
//!
//! * Host: the CLI (the engine the PCs run) backs up and restores the
//!   bench disks (`linux`, `mixed`, built by bench-imaging into
//!   ~/.cache/bootvault/bench) against a local `bootvault serve`, in the
//!   four combinations of plain HTTP / pinned TLS and unencrypted /
//!   encrypted; median of 5 interleaved rounds, every run against a
//!   fresh server.
//!   Ratios are against plain HTTP, unencrypted, in the same run: of the
//!   wall time (client and server share the machine) and of the client's
//!   CPU seconds (user + system, `/usr/bin/time`: what a PC pays).
//! * QEMU (TCG): the time from the PC's first request to the server's
//!   answer (TCP, the TLS handshake, one request), as the init prints it,
//!   against a plain and a TLS server; median of 3 boots each.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootvault_qemu_tests::*;

/// Host rounds (each runs every combination once); QEMU boots per server.
const RUNS: usize = 5;
const BOOTS: usize = 3;

fn main() {
    if let Err(e) = bench() {
        eprintln!("bench-transport failed: {e}");
        std::process::exit(1);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sh(script: &str) -> Result<()> {
    run(Command::new("sh").arg("-c").arg(script)).map(|_| ())
}

/// User + system seconds `/usr/bin/time` wrote into `file`.
fn cpu_seconds(file: &Path) -> Result<f64> {
    let text = fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let line = text.lines().last().unwrap_or("");
    let v: Vec<f64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    if v.len() != 2 {
        return Err(format!("{}: no user and system seconds in {line:?}", file.display()));
    }
    Ok(v[0] + v[1])
}

/// Wall and CPU seconds of the client (what a PC pays): a backup, then
/// a restore of `disk` against a fresh server.
struct Once {
    backup: f64,
    backup_cpu: f64,
    restore: f64,
    restore_cpu: f64,
}

fn once(dir: &Path, disk: &Path, plain: bool, encrypted: bool, key: &Path) -> Result<Once> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let server = if plain { Server::start_plain(dir)? } else { Server::start(dir)? };
    server.register("bench", &mac_for("bench"))?;
    let token = server.token("bench")?;
    let bin = bootvault_bin();
    let remote = server.cli().join(" ");
    let crypt = if encrypted { format!("--key-file {}", key.display()) } else { "--no-encryption".into() };
    let key_arg = if encrypted { format!("--key-file {}", key.display()) } else { String::new() };
    // The source in the page cache for every run alike.
    sh(&format!("cat {} > /dev/null", disk.display()))?;
    let cpu = dir.join("cpu");
    let t = Instant::now();
    sh(&format!(
        "/usr/bin/time -f '%U %S' -o {} {} backup --disk {} {remote} --pc bench --token {token} --name full {crypt} \
         > /dev/null 2>&1",
        cpu.display(),
        bin.display(),
        disk.display()
    ))?;
    let backup = t.elapsed().as_secs_f64();
    let backup_cpu = cpu_seconds(&cpu)?;
    let target = dir.join("target.img");
    let f = fs::File::create(&target).map_err(|e| e.to_string())?;
    f.set_len(fs::metadata(disk).map_err(|e| e.to_string())?.len()).map_err(|e| e.to_string())?;
    drop(f);
    let t = Instant::now();
    sh(&format!(
        "/usr/bin/time -f '%U %S' -o {} {} restore --disk {} {remote} --pc bench --token {token} --backup latest \
         --compare never {key_arg} > /dev/null 2>&1",
        cpu.display(),
        bin.display(),
        target.display()
    ))?;
    let restore = t.elapsed().as_secs_f64();
    let restore_cpu = cpu_seconds(&cpu)?;
    drop(server);
    let _ = fs::remove_dir_all(dir);
    Ok(Once { backup, backup_cpu, restore, restore_cpu })
}

/// The init's "answered: ... (N ms" for one boot.
fn hello_ms(dir: &Path, plain: bool) -> Result<f64> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let server = if plain { Server::start_plain(dir)? } else { Server::start(dir)? };
    let boot = dir.join("boot");
    build_for(&boot, "pc-hello", &server, "qemu", &["--no-encryption", "--set", "action=probe"])?;
    let mut vm = Guest::new(&boot).boot(&dir.join("console.log"))?;
    let (line, _) = vm.console.expect("answered:", Duration::from_secs(120))?;
    vm.wait_exit(Duration::from_secs(120))?;
    let ms = line
        .rsplit('(')
        .next()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .ok_or_else(|| format!("no time in {line:?}"))?;
    Ok(ms)
}

fn bench() -> Result<()> {
    let home = std::env::var_os("HOME").map(PathBuf::from).ok_or("no HOME")?;
    let work = scratch("bench-transport");
    let key = work.join("site.key");
    let _ = fs::remove_file(&key);
    run(Command::new(bootvault_bin()).args(["key", "new"]).arg(&key))?;
    println!("### Host: transport and encryption (median of {RUNS}; ratios against plain HTTP, unencrypted)");
    println!();
    println!(
        "| disk | transport | encrypted | backup | MB/s | ratio | client CPU ratio | restore | MB/s | ratio | client CPU ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    // BENCH_DISKS=mixed (a comma list) and BENCH_QEMU=0 narrow a run.
    let disks = std::env::var("BENCH_DISKS").unwrap_or_else(|_| "linux,mixed".into());
    for name in disks.split(',') {
        let disk = home.join(".cache/bootvault/bench").join(name).join("disk.img");
        if !disk.is_file() {
            println!("| {name} | (missing: bench-imaging builds {}) | | | | | | | |", disk.display());
            continue;
        }
        let mb = fs::metadata(&disk).map_err(|e| e.to_string())?.len() as f64 / 1e6;
        // Rounds interleave the four combinations, so a machine that
        // slows down for a while slows them all alike.
        let combos = [(true, false), (false, false), (true, true), (false, true)];
        let mut times: Vec<[Vec<f64>; 4]> = vec![Default::default(); combos.len()];
        for _ in 0..RUNS {
            for (i, (plain, encrypted)) in combos.iter().enumerate() {
                let o = once(&work.join("run"), &disk, *plain, *encrypted, &key)?;
                for (k, v) in [o.backup, o.backup_cpu, o.restore, o.restore_cpu].into_iter().enumerate() {
                    times[i][k].push(v);
                }
            }
        }
        let medians: Vec<[f64; 4]> = times.into_iter().map(|t| t.map(median)).collect();
        let base = medians[0];
        for ((plain, encrypted), m) in combos.iter().zip(medians) {
            println!(
                "| {name} | {} | {} | {:.2} s | {:.0} | {:.2} | {:.2} | {:.2} s | {:.0} | {:.2} | {:.2} |",
                if *plain { "plain HTTP" } else { "pinned TLS" },
                if *encrypted { "yes" } else { "no" },
                m[0],
                mb / m[0],
                m[0] / base[0],
                m[1] / base[1],
                m[2],
                mb / m[2],
                m[2] / base[2],
                m[3] / base[3]
            );
        }
    }
    if std::env::var("BENCH_QEMU").as_deref() == Ok("0") {
        return Ok(());
    }
    println!();
    println!("### QEMU (TCG): the PC's first request to the server's answer (median of {BOOTS} boots)");
    println!();
    println!("| server | first answer |");
    println!("| --- | --- |");
    for plain in [true, false] {
        let mut v = Vec::new();
        for i in 0..BOOTS {
            v.push(hello_ms(&work.join(format!("hello-{i}")), plain)?);
        }
        println!("| {} | {:.0} ms |", if plain { "plain HTTP" } else { "pinned TLS" }, median(v));
    }
    Ok(())
}
