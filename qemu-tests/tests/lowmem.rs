//! Old low-memory PCs (issue 14's goals): a whole-disk backup and a
//! restore onto a blank disk, each by its own boot, at the goal RAM of each
//! kernel: Debian's stock x86_64 kernel at 96 MiB, our own x86_64 kernel
//! (kernel-config/pc.config) at 32 MiB, and our own i686 kernel at 24 MiB
//! on a 32-bit-only CPU with IDE disks. The restored disks are checked
//! file for file and with the filesystems' own fsck; the console's
//! `memory:` line says how the engine sized itself and what PID 1 held at
//! most.

use std::fs;
use std::path::Path;
use std::time::Duration;

use bootvault_qemu_tests::*;

/// Boots a PC built with `settings` at `mib` MiB; the console lines once it powered off.
#[allow(clippy::too_many_arguments)]
fn boot_job(
    dir: &Path,
    tag: &str,
    server: &Server,
    pc: &str,
    build: &[&str],
    hw: Hardware,
    mib: u32,
    disk: &Path,
) -> Vec<String> {
    let boot = dir.join(format!("boot-{tag}"));
    build_for(&boot, pc, server, "qemu", build).expect("build");
    let vm = Guest::new(&boot).hardware(hw).memory(mib).disk(disk, "LOWMEM01");
    let mut vm = vm.boot(&dir.join(format!("console-{tag}.log"))).expect("boots");
    let ended = vm.console.expect("reboot: Power down", BOOT_TIMEOUT * 2);
    let lines = vm.console.all();
    ended.unwrap_or_else(|e| panic!("{tag} at {mib} MiB: {e}\n{}", vm.console.tail(40)));
    vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");
    lines
}

/// `memory: 1 worker × 1 chunk (5.5 MiB of 12.0 MiB available); PID 1's peak 9.1 MiB`
/// → PID 1's peak, in MiB.
fn peak_mib(line: &str) -> f64 {
    let peak = line.split("PID 1's peak ").nth(1).unwrap_or_else(|| panic!("no peak in {line:?}"));
    let mut words = peak.split_whitespace();
    let n: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    match words.next() {
        Some("MiB") => n,
        Some("KiB") => n / 1024.0,
        _ => panic!("{line:?}"),
    }
}

fn round_trip(label: &str, kernel: &[&str], hw: Hardware, mib: u32) {
    let dir = scratch(&format!("lowmem-{label}"));
    let server = Server::start(&dir).expect("server");
    let source = make_source_disk(&dir, "gpt").expect("source disk");
    let pc = format!("pc-{label}");
    let with = |settings: &[&'static str]| -> Vec<&str> {
        let mut args: Vec<&str> = kernel.to_vec();
        for s in settings {
            args.extend(["--set", s]);
        }
        args
    };

    let lines = boot_job(&dir, "backup", &server, &pc, &with(&["action=backup", "name=lowmem"]), hw, mib, &source);
    let done = find_line(&lines, "bootvault: backup 1 complete:");
    assert!(done.contains("96.0 MiB in "), "{done}");
    let memory = find_line(&lines, "PID 1's peak");
    assert!(peak_mib(memory) < f64::from(mib), "{memory}");
    eprintln!("{label}: backup at {mib} MiB: {memory}");

    let target = dir.join("target.img");
    fs::File::create(&target).and_then(|f| f.set_len(SOURCE_MIB << 20)).expect("blank target");
    let lines = boot_job(&dir, "restore", &server, &pc, &with(&["action=restore", "backup=1"]), hw, mib, &target);
    find_line(&lines, "bootvault: restore of backup 1 complete:");
    let memory = find_line(&lines, "PID 1's peak");
    eprintln!("{label}: restore at {mib} MiB: {memory}");
    assert_eq!(compare_prefix(&source, &target, 1 << 20).expect("compare"), None, "first MiB");
    check_files(&target, &dir, "gpt").expect("every file restored");
    fsck_partitions(&target, &dir).expect("filesystems check clean");
}

/// The stock kernel's modules stay in the initramfs's tmpfs all along,
/// gzipped (2.2 MiB instead of 8.5): before they were, a restore at 96 MiB
/// once ran the kernel out of memory in its first second.
#[test]
fn stock_kernel_backs_up_and_restores_at_96_mib() {
    round_trip("stock-96", &[], Hardware::Virtio, 96);
}

/// At 32 MiB the x86_64 kernel (without its 1.4 MB of unwind tables)
/// leaves about 8.7 MiB available: the backup takes 512 KiB chunks.
#[test]
fn our_kernel_backs_up_and_restores_at_32_mib() {
    round_trip("ours-32", &["--kernel-config", "pc"], Hardware::Virtio, 32);
}

#[test]
fn our_i686_kernel_backs_up_and_restores_at_24_mib_on_a_32_bit_pc() {
    round_trip("i686-24", &["--kernel-config", "pc", "--arch", "i686"], Hardware::Pc32, 24);
}

/// The smallest medium. Our smallest i686 kernel (kernel-config/
/// floppy.config) and the init with an xz initramfs do not fit on a
/// 1.44 MB floppy: the build refuses it with the byte count. They fit on a
/// 2.88 MB one, which SeaBIOS boots from the floppy drive of a 32-bit PC,
/// reaching the server.
#[test]
fn floppy_boots_on_seabios_and_reaches_the_server() {
    let dir = scratch("lowmem-floppy");
    let server = Server::start(&dir).expect("server");
    let boot = dir.join("boot");
    let kernel = ["--kernel-config", "floppy", "--arch", "i686", "--set", "action=probe"];
    let e = build_for(&boot, "pc-floppy", &server, "qemu", &[&kernel[..], &["--media", "floppy"]].concat())
        .expect_err("too large for 1.44 MB");
    assert!(e.contains("--media floppy: does not fit on a 1.44 MB floppy: kernel "), "{e}");
    assert!(e.contains("more than the 1457664 its FAT12 holds (1474560 bytes in all)"), "{e}");
    assert!(!boot.join("pc-floppy-floppy.img").exists(), "no image left behind");

    let report = build_for(&boot, "pc-floppy", &server, "qemu", &[&kernel[..], &["--media", "floppy288"]].concat())
        .expect("a 2.88 MB floppy is built");
    assert!(report.contains(" xz, "), "{report}");
    let floppy = boot.join("pc-floppy-floppy288.img");
    assert_eq!(fs::metadata(&floppy).expect("floppy image").len(), 2_949_120, "{report}");
    let disk = dir.join("disk.img");
    make_disk(&disk, 64, GPT_LAYOUT_SMALL).expect("disk");
    let vm = Guest::new(&boot)
        .hardware(Hardware::Pc32)
        .memory(32)
        .boot_from(Medium::Floppy(floppy))
        .disk(&disk, "FLOPPY01")
        .boot(&dir.join("console.log"))
        .expect("boots");
    let (answer, _) = vm.console.expect("answered:", BOOT_TIMEOUT * 2).expect("the server answers");
    assert!(answer.contains("hello pc-floppy, seen at 10.0.2.15"), "{answer}");
    // The floppy's kernel has no ACPI: the PC halts, QEMU stays up.
    vm.console.expect("reboot: System halted", BOOT_TIMEOUT).expect("halts");
    drop(vm);
    let events = server.events();
    assert!(events.contains("hello pc=pc-floppy mac="), "server events:\n{events}");
}

const GPT_LAYOUT_SMALL: &str = "label: gpt\nunit: sectors\nstart=2048, size=65536, type=L\n";
