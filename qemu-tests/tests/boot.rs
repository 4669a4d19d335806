//! Boot path end to end: real builder, real server, real kernel under QEMU.
//!
//! Run with `make test-qemu` (which builds the artefacts and fetches the
//! kernel first). Each test owns its server and scratch directory under
//! `target/qemu-tests/`, where the console and server logs stay for
//! post-mortems.

use std::fs;
use std::process::Command;
use std::time::Duration;

use bootvault_qemu_tests::*;

fn disks(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let gpt = dir.join("gpt.img");
    let mbr = dir.join("mbr.img");
    make_disk(&gpt, 256, GPT_LAYOUT).expect("gpt disk");
    make_disk(&mbr, 64, MBR_LAYOUT).expect("mbr disk");
    (gpt, mbr)
}

/// Asserts a console line for a partition: name, start sector, bytes, type.
fn expect_partition(lines: &[String], name: &str, start: u64, bytes: u64, type_name: &str) {
    let found = lines.iter().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.first() == Some(&name)
            && w.get(1) == Some(&"start")
            && w.get(2) == Some(&start.to_string().as_str())
            && w.contains(&bytes.to_string().as_str())
            && l.contains(type_name)
    });
    assert!(found, "no console line for {name} start {start} {bytes} B {type_name}:\n{}", lines.join("\n"));
}

/// Finds the disk line with this serial (names depend on probe order,
/// which is asynchronous for SATA), checks its size, returns its name.
fn expect_disk(lines: &[String], prefix: &str, bytes: u64, serial: &str) -> String {
    let found = lines.iter().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        let name = *w.first()?;
        (name.starts_with(prefix) && w.contains(&bytes.to_string().as_str()) && w.last() == Some(&serial))
            .then(|| name.to_owned())
    });
    found.unwrap_or_else(|| {
        panic!("no console line for a disk {prefix}* of {bytes} B serial {serial}:\n{}", lines.join("\n"))
    })
}

fn boot_and_check(name: &str, hw: Hardware, modules: &[&str], disk_prefix: &str) {
    let dir = scratch(name);
    let server = Server::start(&dir).expect("server starts");
    let boot = dir.join("boot");
    build_for(&boot, name, &server, "qemu", &["--set", "action=job"]).expect("build");
    let (gpt, mbr) = disks(&dir);
    let guest = Guest::new(&boot).hardware(hw).disk(&gpt, "BVGPT0001").disk(&mbr, "BVMBR0002");
    let mut vm = guest.boot(&dir.join("console.log")).expect("boots");
    let c = &vm.console;

    let (line, _) = c.expect("bootvault: modules: loaded", BOOT_TIMEOUT).expect("modules");
    for m in modules {
        assert!(line.split_whitespace().any(|w| w == *m), "module {m} not loaded: {line}");
    }
    let (line, lease_at) = c.expect(" leased ", BOOT_TIMEOUT).expect("lease");
    assert!(line.contains("leased 10.0.2.15/24 router 10.0.2.2"), "{line}");
    assert!(line.contains("52:54:00:b0:07:01"), "{line}");
    c.expect("bootvault: disks: 2 found", BOOT_TIMEOUT).expect("disks");
    let (answer, _) = c.expect("answered:", BOOT_TIMEOUT).expect("server reached");
    assert!(answer.contains(&format!("bootvault-server {}", env!("CARGO_PKG_VERSION"))), "{answer}");
    assert!(answer.contains(&format!("hello {name}, seen at 10.0.2.15")), "{answer}");
    c.expect("bootvault: powering off", BOOT_TIMEOUT).expect("finish");
    c.expect("reboot: Power down", BOOT_TIMEOUT).expect("power down");
    let off_at = vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");

    let lines = vm.console.all();
    let gd = expect_disk(&lines, disk_prefix, 268_435_456, "BVGPT0001");
    let md = expect_disk(&lines, disk_prefix, 67_108_864, "BVMBR0002");
    let p = |d: &str, n: u32| format!("{d}{n}");
    expect_partition(&lines, &p(&gd, 1), 2048, 33_554_432, "EFI System");
    expect_partition(&lines, &p(&gd, 2), 67_584, 67_108_864, "Linux filesystem");
    expect_partition(&lines, &p(&gd, 3), 198_656, 134_217_728, "Microsoft basic data");
    expect_partition(&lines, &p(&md, 1), 2048, 10_485_760, "FAT32");
    expect_partition(&lines, &p(&md, 2), 22_528, 20_971_520, "Linux");
    expect_partition(&lines, &p(&md, 5), 65_536, 10_485_760, "Linux");
    expect_partition(&lines, &p(&md, 6), 88_064, 15_728_640, "swap");
    assert!(lines.iter().any(|l| l.contains("table gpt")), "gpt table line");
    assert!(lines.iter().any(|l| l.contains("table mbr")), "mbr table line");

    // The server saw this PC, by name, MAC and address.
    let events = server.events();
    assert!(
        events.contains(&format!("hello pc={name} mac=52:54:00:b0:07:01 addr=10.0.2.15")),
        "server events:\n{events}"
    );
    eprintln!("TIMING {name}: lease at {:.1} s, power-off at {:.1} s", lease_at.as_secs_f64(), off_at.as_secs_f64());
}

#[test]
fn virtio_pc_boots_leases_lists_disks_greets_server() {
    boot_and_check("virtio", Hardware::Virtio, &["virtio_pci", "virtio_net", "virtio_blk"], "vd");
}

#[test]
fn e1000_ahci_pc_boots_leases_lists_disks_greets_server() {
    boot_and_check("e1000-ahci", Hardware::E1000Ahci, &["e1000", "ahci", "sd_mod"], "sd");
}

/// A malformed setting on the kernel command line: one clear line, the
/// configured error policy (power off after error_wait), no action taken.
#[test]
fn bad_setting_is_reported_and_pc_powers_off() {
    let dir = scratch("bad-setting");
    let server = Server::start(&dir).expect("server starts");
    let boot = dir.join("boot");
    build_for(&boot, "badcfg", &server, "qemu", &["--set", "action=job"]).expect("build");
    let guest = Guest::new(&boot).append("bootvault.ip=10.0.0.300/24");
    let mut vm = guest.boot(&dir.join("console.log")).expect("boots");
    let c = &vm.console;
    let (line, _) = c.expect("config error:", BOOT_TIMEOUT).expect("config error line");
    assert!(line.contains("bootvault.ip=\"10.0.0.300/24\""), "{line}");
    c.expect("error: bad configuration", BOOT_TIMEOUT).expect("fatal line");
    c.expect("press Enter within 5 s for a rescue prompt; otherwise powering off", BOOT_TIMEOUT).expect("policy line");
    c.expect("reboot: Power down", BOOT_TIMEOUT).expect("power down");
    vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");
    assert!(!vm.console.all().iter().any(|l| l.contains("bootvault: net:")), "must not act on a bad configuration");
    assert!(server.events().is_empty(), "the server must not have been contacted");
}

/// Same inputs, same bytes; and the archive passes GNU cpio's own checks.
#[test]
fn initramfs_is_reproducible_and_valid_cpio() {
    let dir = scratch("reproducible");
    let a = dir.join("a");
    let b = dir.join("b");
    build_pc(&a, "repro", "http://10.0.2.2:1", "qemu", &[]).expect("build a");
    std::thread::sleep(Duration::from_millis(1100)); // a different mtime second
    build_pc(&b, "repro", "http://10.0.2.2:1", "qemu", &[]).expect("build b");
    for f in ["initrd.img", "vmlinuz", "cmdline"] {
        let x = fs::read(a.join(f)).expect("read a");
        let y = fs::read(b.join(f)).expect("read b");
        assert!(x == y, "{f} differs between two builds");
    }
    // gunzip, then GNU cpio lists it and verifies every checksum.
    let raw = dir.join("initrd.cpio");
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc {} > {} && cpio -t < {} && cpio -i --only-verify-crc < {}",
        a.join("initrd.img").display(),
        raw.display(),
        raw.display(),
        raw.display()
    )))
    .expect("gzip/cpio accept the archive");
    let names: Vec<&str> = out.lines().collect();
    for want in ["init", "etc/bootvault.conf", "dev/console"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(names.iter().any(|n| n.ends_with("/virtio_net.ko.gz")));
    assert!(names.iter().any(|n| n.ends_with("/modules.alias")));
    // The embedded config is the PC's.
    let listing = run(Command::new(bootvault_bin()).arg("inspect").arg(a.join("initrd.img"))).expect("inspect");
    assert!(listing.contains("checksums ok"), "{listing}");
    // A different PC gives a different image.
    let c = dir.join("c");
    build_pc(&c, "other", "http://10.0.2.2:1", "qemu", &[]).expect("build c");
    assert!(fs::read(a.join("initrd.img")).ok() != fs::read(c.join("initrd.img")).ok());
}

/// Two NICs, the config names the second, with a static address
/// registered in the server's database: the PC uses exactly that interface
/// and address, and the server sees them.
#[test]
fn static_address_on_the_named_interface() {
    let dir = scratch("static");
    let server = Server::start(&dir).expect("server starts");
    let boot = dir.join("boot");
    // The static settings come from the server's database.
    server
        .admin(
            "pc",
            &["add", "static-pc", "--mac", "52:54:00:b0:07:02", "--ip", "10.0.2.15/24", "--gateway", "10.0.2.2"],
        )
        .expect("register");
    server.admin("pc", &["edit", "static-pc", "--dns", "10.0.2.3"]).expect("edit");
    build_for(&boot, "static-pc", &server, "qemu", &["--set", "iface=eth1", "--set", "action=job"]).expect("build");
    let guest = Guest::new(&boot).nic("52:54:00:b0:07:02");
    let mut vm = guest.boot(&dir.join("console.log")).expect("boots");
    let (line, _) = vm.console.expect(" static ", BOOT_TIMEOUT).expect("static address");
    assert!(line.contains("eth1 (52:54:00:b0:07:02) static 10.0.2.15/24 router 10.0.2.2 dns 10.0.2.3"), "{line}");
    vm.console.expect("answered:", BOOT_TIMEOUT).expect("server reached");
    vm.console.expect("reboot: Power down", BOOT_TIMEOUT).expect("power down");
    vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");
    let events = server.events();
    assert!(events.contains("hello pc=static-pc mac=52:54:00:b0:07:02 addr=10.0.2.15"), "{events}");
}

/// No server listening: a clear error naming the URL, then the error
/// policy (rescue prompt here), driven over the serial console.
#[test]
fn unreachable_server_then_rescue_prompt() {
    let dir = scratch("rescue");
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let boot = dir.join("boot");
    let url = format!("http://10.0.2.2:{port}");
    build_pc(&boot, "lonely", &url, "qemu", &["--set", "server_timeout=4", "--set", "on_error=rescue"]).expect("build");
    let guest = Guest::new(&boot).disk(
        &{
            let d = dir.join("d.img");
            make_disk(&d, 16, "label: dos\nstart=2048, type=83\n").expect("disk");
            d
        },
        "RESCUE01",
    );
    let mut vm = guest.boot(&dir.join("console.log")).expect("boots");
    let (line, _) = vm.console.expect("bootvault: error: server:", BOOT_TIMEOUT).expect("error line");
    assert!(line.contains(&format!("GET {url}/api/v1/hello")), "{line}");
    assert!(line.contains("gave up after"), "{line}");
    vm.console.expect("commands: retry", BOOT_TIMEOUT).expect("rescue prompt");
    vm.send("disks").expect("type");
    vm.console.expect("RESCUE01", BOOT_TIMEOUT).expect("disk listed at the prompt");
    vm.send("frobnicate").expect("type");
    vm.console.expect("unknown command \"frobnicate\"", BOOT_TIMEOUT).expect("unknown command");
    vm.send("poweroff").expect("type");
    vm.console.expect("reboot: Power down", BOOT_TIMEOUT).expect("power down");
    vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");
}
