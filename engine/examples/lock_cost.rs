//! What a restore password costs on this machine: the time of one Argon2id
//! derivation with the default parameters (a measurement, not a test).
//! `cargo run --release -p bootvault-engine --example lock_cost`

use std::time::Instant;

use bootvault_engine::lock::{derive, Params};

/// Median milliseconds of five runs of `f`.
fn median_ms(mut f: impl FnMut() -> Result<(), String>) -> Result<(f64, f64, f64), String> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0], times[times.len() - 1]))
}

fn main() {
    let p = Params::DEFAULT;
    let ours =
        median_ms(|| derive(b"correct horse battery staple", &[7u8; 16], &p).map(|_| ()).map_err(|e| e.to_string()));
    let (ours, min, max) = match ours {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lock_cost: {e}");
            std::process::exit(1);
        }
    };
    println!("| implementation | median | min-max (5 runs) | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| bootvault (RustCrypto argon2, as in the init) m={} KiB t={} p={} | {ours:.1} ms | {min:.1}-{max:.1} ms | 1.00 |",
        p.m_kib, p.t_cost, p.p
    );
    // The same code in the PID 1's build (opt-level z, musl): `init lock-cost`.
    let init = std::env::var("BOOTVAULT_INIT").unwrap_or_else(|_| "target/x86_64-unknown-linux-musl/init/init".into());
    match std::process::Command::new(&init).arg("lock-cost").output() {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let v: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if let [med, min, max] = v[..] {
                println!("| the init binary (`init lock-cost`: opt-level z, musl) | {med:.1} ms | {min:.1}-{max:.1} ms | {:.2} |", med / ours);
            }
        }
        other => println!("| the init binary | not measured: {init}: {:?} | | |", other.map(|o| o.status)),
    }
    // The reference C implementation's CLI (Debian package argon2), the
    // same parameters and the same 32-byte output.
    let reference = median_ms(|| {
        use std::io::Write;
        let mut child = std::process::Command::new("argon2")
            .args(["0707070707070707", "-id", "-t", &p.t_cost.to_string(), "-k", &p.m_kib.to_string()])
            .args(["-p", &p.p.to_string(), "-l", "32", "-r"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("argon2 CLI: {e}"))?;
        child.stdin.take().ok_or("no stdin")?.write_all(b"correct horse battery staple").map_err(|e| e.to_string())?;
        let status = child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("argon2 CLI: {status}"))
        }
    });
    match reference {
        Ok((t, min, max)) => println!(
            "| libargon2 20171227 CLI (`argon2 ... -id`, incl. process start) | {t:.1} ms | {min:.1}-{max:.1} ms | {:.2} |",
            t / ours
        ),
        Err(e) => println!("| libargon2 CLI | not measured: {e} | | |"),
    }
}
