//! `make demo`: the whole story on one machine. A local server; a demo PC
//! whose disk has a real layout (GPT, FAT32 and ext4 with files, a boot
//! loader in the gap) boots under QEMU and backs the disk up; a second boot
//! restores the backup onto a blank disk; the two disks are compared byte
//! for byte and the filesystems checked; then a summary.

use std::time::Duration;

use bootvault_qemu_tests::*;

fn main() {
    if let Err(e) = demo() {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

struct Boot {
    lease: Duration,
    done_line: String,
    off: Duration,
}

fn boot(dir: &std::path::Path, tag: &str, server: &Server, settings: &[&str], disk: &std::path::Path) -> Result<Boot> {
    let out = dir.join(format!("boot-{tag}"));
    let mut args = Vec::new();
    for s in settings {
        args.extend(["--set", s]);
    }
    print!("{}", build_for(&out, "demo-pc", server, "qemu", &args)?);
    println!("== booting demo-pc under QEMU ({}) to {tag}", accel());
    let mut vm = Guest::new(&out).disk(disk, "DEMO0001").boot(&dir.join(format!("console-{tag}.log")))?;
    let (_, lease) = vm.console.expect(" leased ", BOOT_TIMEOUT)?;
    let (done_line, _) = vm.console.expect_fn("the job's result", BOOT_TIMEOUT, |l| {
        l.contains(" complete: ") || l.contains("bootvault: error:")
    })?;
    if done_line.contains("bootvault: error:") {
        return Err(done_line);
    }
    vm.console.expect("reboot: Power down", BOOT_TIMEOUT)?;
    let off = vm.wait_exit(Duration::from_secs(30))?;
    Ok(Boot { lease, done_line: done_line.trim_start_matches("bootvault: ").to_owned(), off })
}

fn demo() -> Result<()> {
    let dir = kept_scratch("demo");
    let server = Server::start(&dir)?;
    println!("== server {} (data {})", server.url, server.data.display());
    let source = make_source_disk(&dir, "gpt")?;
    println!("== demo disk {} ({SOURCE_MIB} MiB: GPT, FAT32 + ext4 with files)", source.display());
    std::env::set_var("BOOTVAULT_ECHO", "1");
    let b = boot(&dir, "backup", &server, &["action=backup", "name=demo"], &source)?;

    let target = dir.join("blank.img");
    std::fs::File::create(&target)
        .and_then(|f| f.set_len(SOURCE_MIB << 20))
        .map_err(|e| format!("creating {}: {e}", target.display()))?;
    println!("== blank disk {}", target.display());
    let r = boot(&dir, "restore", &server, &["action=restore", "backup=latest"], &target)?;

    // A used-only backup (the default): the partition table and boot area
    // byte for byte, every file file for file, the filesystems clean.
    if let Some(at) = compare_prefix(&source, &target, 1 << 20)? {
        return Err(format!("the restored disk's first MiB differs from the original at byte {at}"));
    }
    check_files(&target, &dir, "gpt")?;
    fsck_partitions(&target, &dir)?;
    let listed =
        run(std::process::Command::new(bootvault_bin()).args(["backups", "--data"]).arg(&server.data).arg("list"))?;

    println!("== summary");
    println!("  backup boot    lease {:>5.1} s, powered off {:>5.1} s", b.lease.as_secs_f64(), b.off.as_secs_f64());
    println!("                 {}", b.done_line);
    println!("  restore boot   lease {:>5.1} s, powered off {:>5.1} s", r.lease.as_secs_f64(), r.off.as_secs_f64());
    println!("                 {}", r.done_line);
    println!(
        "  verify         partition table and boot area byte for byte, every file identical (free space was \
         left out); e2fsck -fn and fsck.vfat -n clean"
    );
    println!("  server         bootvault backups --data {} list", server.data.display());
    for l in listed.lines() {
        println!("                 {l}");
    }
    println!("demo OK");
    Ok(())
}

fn accel() -> &'static str {
    if std::env::var("BOOTVAULT_KVM").is_ok_and(|v| v == "1") {
        "KVM"
    } else {
        "TCG"
    }
}
