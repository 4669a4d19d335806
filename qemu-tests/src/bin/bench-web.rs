//! `make bench` (issue 15): the web console's live progress under load.
//! A real `bootvault serve` (HTTPS) on 127.0.0.1; N simulated PCs (host
//! threads, each with the engine's own client, pinned TLS, as the init
//! runs it) report progress; an admin's browser is stood in for by one
//! event stream (`/admin/events`, TLS, signed in with a session). For
//! each report: the time from the PC sending it to the stream carrying it
//! (the report's `moved` field holds the send time). The server's CPU
//! (user + system from /proc) and peak memory (VmHWM) over the run.
//! Two loads: every PC at the init's cadence (one report each 2 s), and
//! every PC as fast as it can. Prints a Markdown report.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootvault_common::fingerprint::Fingerprint;
use bootvault_engine::client::Client;
use bootvault_qemu_tests::*;

fn main() {
    if let Err(e) = bench() {
        eprintln!("bench-web failed: {e}");
        std::process::exit(1);
    }
}

/// The bench's own server process (its CPU and memory are what is measured).
struct Serve {
    child: Child,
    port: u16,
    fingerprint: Fingerprint,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path) -> Result<Serve> {
    let mut child = Command::new(bootvault_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let (mut port, mut fp) = (0u16, None);
    while fp.is_none() {
        let mut line = String::new();
        if out.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("the server ended".into());
        }
        if let Some(rest) = line.split("127.0.0.1:").nth(1) {
            port = rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|p| p.parse().ok()).unwrap_or(0);
        }
        if let Some(rest) = line.strip_prefix("certificate fingerprint ") {
            fp = rest.split_whitespace().next().map(Fingerprint::parse).transpose()?;
        }
    }
    // The rest of its output (events) is drained and dropped.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Ok(Serve { child, port, fingerprint: fp.ok_or("no fingerprint")? })
}

/// (user + system CPU seconds, peak resident bytes) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command: state is field 0; utime 11, stime 12 (clock ticks).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    (cpu, hwm * 1024)
}

/// Signs in as the bench's admin; the session cookie.
fn sign_in(port: u16) -> Result<String> {
    console::sign_in(port, "bench", "bench bench bench")
}

struct Load {
    name: &'static str,
    every: Option<Duration>,
    seconds: u64,
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn bench() -> Result<()> {
    let pcs_n: usize = std::env::var("BENCH_WEB_PCS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    println!("### Web console: live progress with {pcs_n} PCs reporting at once (host, HTTPS on 127.0.0.1)\n");
    println!(
        "| load | reports | reports/s | report → event stream: median | p99 | max | server CPU | server peak memory |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for load in [
        Load { name: "every PC each 2 s (the init's cadence)", every: Some(Duration::from_secs(2)), seconds: 30 },
        Load { name: "every PC as fast as it can", every: None, seconds: 15 },
    ] {
        let dir = kept_scratch(&format!("bench-web-{}", if load.every.is_some() { "cadence" } else { "flood" }));
        let data = dir.join("data");
        run(Command::new(bootvault_bin())
            .args(["admin", "--data"])
            .arg(&data)
            .args(["add", "bench", "--password-file"])
            .arg({
                let p = dir.join("password");
                std::fs::write(&p, "bench bench bench\n").map_err(|e| e.to_string())?;
                p
            }))?;
        let mut pcs = Vec::new();
        for i in 0..pcs_n {
            let name = format!("sim-{i:03}");
            let out = run(Command::new(bootvault_bin()).args(["pc", "--data"]).arg(&data).args([
                "add",
                &name,
                "--mac",
                &mac_for(&name),
            ]))?;
            let token =
                out.lines().find_map(|l| l.strip_prefix("token").map(|t| t.trim().to_owned())).ok_or("no token")?;
            pcs.push((name, token));
        }
        let server = serve(&data)?;
        let cookie = sign_in(server.port)?;
        let mut stream = console::connect(server.port)?;
        write!(stream, "GET /admin/events HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncookie: {cookie}\r\n\r\n", server.port)
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let latencies = latencies.clone();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stream).lines();
                while let Some(Ok(l)) = lines.next() {
                    let Some(json) = l.strip_prefix("data: ") else { continue };
                    let sent = json.split("\"moved\":").nth(1).and_then(|r| r.split(',').next()?.parse::<u64>().ok());
                    if let (Some(sent), Ok(mut v)) = (sent, latencies.lock()) {
                        v.push((t0.elapsed().as_nanos() as u64).saturating_sub(sent) as f64 / 1e6);
                    }
                }
            })
        };
        let (cpu0, _) = usage(server.child.id());
        let wall = Instant::now();
        let sent = std::thread::scope(|s| {
            let threads: Vec<_> = pcs
                .iter()
                .map(|(name, token)| {
                    let client = Client::new(&format!("https://127.0.0.1:{}", server.port), name, token)
                        .pinned(Some(server.fingerprint));
                    let stop = &stop;
                    s.spawn(move || {
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let at = t0.elapsed().as_nanos() as u64;
                            let kv = [
                                ("action", "backup".to_owned()),
                                ("step", "sending".to_owned()),
                                ("done", n.to_string()),
                                ("total", u64::MAX.to_string()),
                                ("moved", at.to_string()),
                                ("rate", "1000000".to_owned()),
                            ];
                            if client.progress(&kv).is_ok() {
                                n += 1;
                            }
                            if let Some(every) = load.every {
                                std::thread::sleep(every);
                            }
                        }
                        n
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_secs(load.seconds));
            stop.store(true, Ordering::Relaxed);
            threads.into_iter().map(|t| t.join().unwrap_or(0)).sum::<u64>()
        });
        let secs = wall.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        let (cpu1, hwm) = usage(server.child.id());
        drop(server);
        let _ = reader.join();
        let mut v = latencies.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort_by(f64::total_cmp);
        println!(
            "| {} | {sent} ({} seen on the stream) | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} % of a core | {:.1} MiB |",
            load.name,
            v.len(),
            sent as f64 / secs,
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or(f64::NAN),
            (cpu1 - cpu0) / secs * 100.0,
            hwm as f64 / 1048576.0
        );
    }
    Ok(())
}
