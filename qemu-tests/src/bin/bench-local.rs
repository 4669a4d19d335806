//! `make bench` (local drives): the same PC under QEMU (TCG) backs up and
//! restores the same disk through the server (user-mode network) and
//! through an exFAT USB drive on qemu-xhci, with no NIC. The disk is the
//! "mixed" bench disk (FAT + ext4 + NTFS full of deleted files, built by
//! bench-imaging into ~/.cache/bootvault/bench/mixed). Times run from the
//! init's "backup: vda" / "restore: backup" line to its result line, so
//! the boot is left out and a local backup's flush and unmount are in.
//! One run each (TCG is the slow part; the host bench has the medians).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bootvault_qemu_tests::*;

const LIMIT: Duration = Duration::from_secs(600);

fn main() {
    if let Err(e) = bench() {
        eprintln!("bench-local failed: {e}");
        std::process::exit(1);
    }
}

/// Boots `guest`, returns the seconds between the console lines `from`
/// and `to` (both waited for in order), then waits for the power-off.
fn span(guest: &Guest, log: &Path, from: &str, to: &str) -> Result<f64> {
    let mut vm = guest.boot(log)?;
    let (_, a) = vm.console.expect(from, LIMIT)?;
    let (line, b) = vm.console.expect(to, LIMIT)?;
    vm.wait_exit(Duration::from_secs(120))?;
    eprintln!("  {}", line.trim_start_matches("bootvault: "));
    Ok((b - a).as_secs_f64())
}

fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("cp").arg("--sparse=always").arg(from).arg(to)).map(|_| ())
}

fn blank(path: &Path, bytes: u64) -> Result<()> {
    let _ = fs::remove_file(path);
    let f = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn bench() -> Result<()> {
    let home = std::env::var_os("HOME").map(PathBuf::from).ok_or("no HOME")?;
    let cached = home.join(".cache/bootvault/bench/mixed/disk.img");
    if !cached.is_file() {
        println!("bench-local: {} missing (bench-imaging builds it, as root); skipped", cached.display());
        return Ok(());
    }
    let dir = kept_scratch("bench-local");
    let disk = dir.join("source.img");
    let _ = fs::remove_file(&disk);
    sparse_copy(&cached, &disk)?;
    let bytes = fs::metadata(&disk).map_err(|e| e.to_string())?.len();
    let target = dir.join("target.img");

    // Through the server.
    let server = Server::start(&dir)?;
    let boot_net = dir.join("boot-net");
    build_for(&boot_net, "bench-net", &server, "qemu", &["--set", "action=backup", "--set", "name=bench"])?;
    eprintln!("server: backup");
    let net_backup =
        span(&Guest::new(&boot_net).disk(&disk, "SRC00001"), &dir.join("net-backup.log"), "backup: vda", "complete")?;
    blank(&target, bytes)?;
    eprintln!("server: restore");
    let net_restore = span(
        &Guest::new(&boot_net).disk(&target, "DST00001").append("bootvault.action=restore"),
        &dir.join("net-restore.log"),
        "restore: backup",
        "complete",
    )?;

    // Through an exFAT USB drive, no NIC.
    let drive = dir.join("drive.img");
    make_exfat_drive(&drive, bytes / (1 << 20), "BENCH", false)?;
    let boot_usb = dir.join("boot-usb");
    build_pc(&boot_usb, "bench-usb", "", "qemu", &["--set", "action=backup", "--set", "dest=local:BENCH"])?;
    eprintln!("usb drive: backup");
    let usb_backup = span(
        &Guest::new(&boot_usb).no_network().disk(&disk, "SRC00001").usb_drive(&drive, "DRIVE001"),
        &dir.join("usb-backup.log"),
        "backup: vda",
        "complete",
    )?;
    blank(&target, bytes)?;
    eprintln!("usb drive: restore");
    let usb_restore = span(
        &Guest::new(&boot_usb)
            .no_network()
            .disk(&target, "DST00001")
            .usb_drive(&drive, "DRIVE001")
            .append("bootvault.action=restore bootvault.source=local:BENCH"),
        &dir.join("usb-restore.log"),
        "restore: backup",
        "complete",
    )?;

    let mbs = |s: f64| bytes as f64 / 1e6 / s.max(1e-9);
    println!("### Local drive against the server, under QEMU (TCG)\n");
    println!(
        "`target/release/bench-local`: the mixed disk ({} MiB: FAT, ext4, NTFS with deleted files), one PC, \
         one run each, 256 MiB guest RAM, 2 vCPUs.\n",
        bytes >> 20
    );
    println!("| step | server (user-mode network) | exFAT USB drive (qemu-xhci) | drive / server |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| backup | {net_backup:.1} s ({:.1} MB/s) | {usb_backup:.1} s ({:.1} MB/s) | {:.2} |",
        mbs(net_backup),
        mbs(usb_backup),
        usb_backup / net_backup
    );
    println!(
        "| restore | {net_restore:.1} s ({:.1} MB/s) | {usb_restore:.1} s ({:.1} MB/s) | {:.2} |",
        mbs(net_restore),
        mbs(usb_restore),
        usb_restore / net_restore
    );
    Ok(())
}
