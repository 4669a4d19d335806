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
//! * The same over one 1 Gbit/s link (a proxy sharing 125 MB/s each way
//!   among the client's connections), plain and unencrypted against TLS
//!   and encrypted: what a PC on a wired network sees.
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

/// A link of `rate` bytes per second each way between the client and
/// the server at `port`, shared by all connections (as one network link
/// is): a proxy on 127.0.0.1 that gives each piece it forwards the next
/// free slot of its direction's timeline. Its port.
fn link(port: u16, rate: u64) -> Result<u16> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let own = listener.local_addr().map_err(|e| e.to_string())?.port();
    let up = Arc::new(Mutex::new(Instant::now()));
    let down = Arc::new(Mutex::new(Instant::now()));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else { continue };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let pipe = |mut from: TcpStream, mut to: TcpStream, line: Arc<Mutex<Instant>>| {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        let slot = {
                            let mut next = line.lock().unwrap_or_else(|p| p.into_inner());
                            let start = (*next).max(Instant::now());
                            *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
                            *next
                        };
                        std::thread::sleep(slot.saturating_duration_since(Instant::now()));
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
            pipe(client, server, up.clone());
            pipe(s2, c2, down.clone());
        }
    });
    Ok(own)
}

fn once(dir: &Path, disk: &Path, plain: bool, encrypted: bool, key: &Path, rate: Option<u64>) -> Result<Once> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let server = if plain { Server::start_plain(dir)? } else { Server::start(dir)? };
    server.register("bench", &mac_for("bench"))?;
    let token = server.token("bench")?;
    let bin = bootvault_bin();
    let mut cli = server.cli();
    if let Some(rate) = rate {
        let port = cli[1].rsplit(':').next().and_then(|p| p.parse().ok()).ok_or("no port in the server's URL")?;
        let scheme = if plain { "http" } else { "https" };
        cli[1] = format!("{scheme}://127.0.0.1:{}", link(port, rate)?);
    }
    let remote = cli.join(" ");
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

/// One table: every disk, each of `combos` (plain, encrypted) `RUNS`
/// times in interleaved rounds (so a machine that slows down for a while
/// slows them all alike), over a link of `rate` bytes/s if given.
fn section(title: &str, work: &Path, key: &Path, combos: &[(bool, bool)], rate: Option<u64>) -> Result<()> {
    let home = std::env::var_os("HOME").map(PathBuf::from).ok_or("no HOME")?;
    println!("### {title} (median of {RUNS}; ratios against plain HTTP, unencrypted)");
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
        let mut times: Vec<[Vec<f64>; 4]> = vec![Default::default(); combos.len()];
        for _ in 0..RUNS {
            for (i, (plain, encrypted)) in combos.iter().enumerate() {
                let o = once(&work.join("run"), &disk, *plain, *encrypted, key, rate)?;
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
    println!();
    Ok(())
}

fn bench() -> Result<()> {
    let work = kept_scratch("bench-transport");
    let key = work.join("site.key");
    let _ = fs::remove_file(&key);
    run(Command::new(bootvault_bin()).args(["key", "new"]).arg(&key))?;
    let all = [(true, false), (false, false), (true, true), (false, true)];
    section("Host: transport and encryption", &work, &key, &all, None)?;
    // One gigabit link (125 MB/s each way, shared by the client's
    // connections): what a PC on a wired network sees.
    section("Host over a 1 Gbit/s link", &work, &key, &[(true, false), (false, true)], Some(125_000_000))?;
    if std::env::var("BENCH_QEMU").as_deref() == Ok("0") {
        return Ok(());
    }
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
