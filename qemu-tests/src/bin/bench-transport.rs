//! `make bench` (issue 13): what TLS and encryption on the PC cost.
//!
//! * Host: the CLI (the engine the PCs run) backs up and restores the
//!   bench disks (`linux`, `mixed`, built by bench-imaging into
//!   ~/.cache/bootvault/bench) against a local `bootvault serve`, in the
//!   four combinations of plain HTTP / pinned TLS and unencrypted /
//!   encrypted; median of 5 interleaved rounds, every run against a
//!   fresh server.
//!   Ratios are against plain HTTP, unencrypted, in the same run.
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

/// One backup and one restore of `disk` against a fresh server: seconds each.
fn once(dir: &Path, disk: &Path, plain: bool, encrypted: bool, key: &Path) -> Result<(f64, f64)> {
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
    let t = Instant::now();
    sh(&format!(
        "{} backup --disk {} {remote} --pc bench --token {token} --name full {crypt} > /dev/null 2>&1",
        bin.display(),
        disk.display()
    ))?;
    let backup = t.elapsed().as_secs_f64();
    let target = dir.join("target.img");
    let f = fs::File::create(&target).map_err(|e| e.to_string())?;
    f.set_len(fs::metadata(disk).map_err(|e| e.to_string())?.len()).map_err(|e| e.to_string())?;
    drop(f);
    let t = Instant::now();
    sh(&format!(
        "{} restore --disk {} {remote} --pc bench --token {token} --backup latest --compare never {key_arg} > /dev/null 2>&1",
        bin.display(),
        target.display()
    ))?;
    let restore = t.elapsed().as_secs_f64();
    drop(server);
    let _ = fs::remove_dir_all(dir);
    Ok((backup, restore))
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
    println!("| disk | transport | encrypted | backup | MB/s | ratio | restore | MB/s | ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
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
        let mut times: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); combos.len()];
        for _ in 0..RUNS {
            for (i, (plain, encrypted)) in combos.iter().enumerate() {
                let (tb, tr) = once(&work.join("run"), &disk, *plain, *encrypted, &key)?;
                times[i].0.push(tb);
                times[i].1.push(tr);
            }
        }
        let medians: Vec<(f64, f64)> = times.into_iter().map(|(b, r)| (median(b), median(r))).collect();
        let base = medians[0];
        for ((plain, encrypted), (b, r)) in combos.iter().zip(medians) {
            println!(
                "| {name} | {} | {} | {b:.2} s | {:.0} | {:.2} | {r:.2} s | {:.0} | {:.2} |",
                if *plain { "plain HTTP" } else { "pinned TLS" },
                if *encrypted { "yes" } else { "no" },
                mb / b,
                b / base.0,
                mb / r,
                r / base.1
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
