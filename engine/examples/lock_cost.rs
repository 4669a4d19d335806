//! What a restore password costs on this machine: the time of one Argon2id
//! derivation with the default parameters (a measurement, not a test).
//! `cargo run --release -p bootvault-engine --example lock_cost`

use std::time::Instant;

use bootvault_engine::lock::{derive, Params};

fn main() {
    let p = Params::DEFAULT;
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            if let Err(e) = derive(b"correct horse battery staple", &[7u8; 16], &p) {
                eprintln!("lock_cost: {e}");
                std::process::exit(1);
            }
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "argon2id m={} KiB t={} p={}: median {:.1} ms (min {:.1}, max {:.1}) over {} runs",
        p.m_kib,
        p.t_cost,
        p.p,
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    );
}
