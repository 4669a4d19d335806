//! `make bench` (boot part): times the demo PC's boot under QEMU and finds
//! the smallest guest RAM it completes with. Prints a Markdown report.
//!
//! Times are measured on the host from QEMU's start: to the DHCP lease
//! line, and to QEMU's exit after the guest powered off. Three runs each;
//! the median is reported with the spread.

use std::time::Duration;

use bootvault_qemu_tests::*;

const RUNS: usize = 3;

fn main() {
    if let Err(e) = bench() {
        eprintln!("bench-boot failed: {e}");
        std::process::exit(1);
    }
}

struct Boot {
    lease: Duration,
    off: Duration,
}

fn boot_once(dir: &std::path::Path, boot: &std::path::Path, disk: &std::path::Path, mib: u32) -> Result<Boot> {
    let mut vm = Guest::new(boot).memory(mib).disk(disk, "BENCH001").boot(&dir.join(format!("console-{mib}.log")))?;
    let (_, lease) = vm.console.expect(" leased ", BOOT_TIMEOUT)?;
    vm.console.expect("answered:", BOOT_TIMEOUT)?;
    vm.console.expect("reboot: Power down", BOOT_TIMEOUT)?;
    let off = vm.wait_exit(Duration::from_secs(30))?;
    Ok(Boot { lease, off })
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn bench() -> Result<()> {
    let dir = kept_scratch("bench-boot");
    let server = Server::start(&dir)?;
    let boot = dir.join("boot");
    let report = build_for(&boot, "bench-pc", &server, "qemu", &["--set", "error_wait=1", "--set", "action=job"])?;
    let disk = dir.join("disk.img");
    make_disk(&disk, 256, GPT_LAYOUT)?;

    let mut runs = Vec::new();
    for i in 0..RUNS {
        let b = boot_once(&dir, &boot, &disk, 256)?;
        eprintln!("run {}: lease {:.2} s, off {:.2} s", i + 1, b.lease.as_secs_f64(), b.off.as_secs_f64());
        runs.push(b);
    }
    let (lm, llo, lhi) = median(runs.iter().map(|b| b.lease.as_secs_f64()).collect());
    let (om, olo, ohi) = median(runs.iter().map(|b| b.off.as_secs_f64()).collect());

    // Smallest RAM in 8 MiB steps: walk down from 256 MiB until a boot fails.
    let mut smallest = None;
    let mut mib = 256;
    while mib >= 8 {
        match boot_once(&dir, &boot, &disk, mib) {
            Ok(_) => {
                eprintln!("{mib} MiB: ok");
                smallest = Some(mib);
                mib -= if mib > 128 { 64 } else { 8 };
            }
            Err(e) => {
                eprintln!("{mib} MiB: fails ({})", e.lines().next().unwrap_or(""));
                break;
            }
        }
    }

    let accel = if std::env::var("BOOTVAULT_KVM").is_ok_and(|v| v == "1") { "KVM" } else { "TCG" };
    println!("### Boot path (QEMU {accel}, q35, virtio, 2 vCPUs, 256 MiB unless stated)\n");
    println!("| measure | median | min–max ({RUNS} runs) |");
    println!("| --- | --- | --- |");
    println!("| QEMU start → DHCP lease | {lm:.2} s | {llo:.2}–{lhi:.2} s |");
    println!("| QEMU start → power-off (QEMU exit) | {om:.2} s | {olo:.2}–{ohi:.2} s |");
    match smallest {
        Some(m) => println!("| smallest guest RAM completing the demo (8 MiB steps) | {m} MiB | |"),
        None => println!("| smallest guest RAM | did not complete at 256 MiB | |"),
    }
    println!("\nBuild report:\n\n```\n{}```", report);
    Ok(())
}
