//! Boot media end to end: the ISO and the USB image that `bootvault build
//! --media iso,usb` makes, booted by real firmware (SeaBIOS, and OVMF for
//! UEFI) through their boot loaders (isolinux/syslinux, systemd-boot), not
//! through QEMU's `-kernel`. Each PC must come up as itself and reach the
//! test's own server; one does a whole headless backup. Building twice must
//! give the same bytes.
//!
//! The ISO sits in a SATA CD-ROM drive; the USB image is a read-only
//! usb-storage stick on a qemu-xhci controller (the init does not load USB
//! drivers, so it never sees its own boot medium as a disk to back up).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootvault_qemu_tests::*;

/// Builds PC `name` (registered with `server`) with `--media iso,usb`;
/// returns the builder's report.
fn build_media(out: &Path, name: &str, server: &Server, settings: &[&str]) -> String {
    let mut args = vec!["--media", "iso,usb"];
    for s in settings {
        args.extend(["--set", s]);
    }
    let started = Instant::now();
    let report = build_for(out, name, server, "qemu", &args).expect("build with media");
    eprintln!("TIMING {name}: build with iso and usb in {:.1} s", started.elapsed().as_secs_f64());
    report
}

/// The report line of one medium: `  iso        22.3 MiB  PATH (...)`.
fn report_line<'a>(report: &'a str, kind: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.split_whitespace().next() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} line in the build report:\n{report}"))
}

/// Boots `name`'s medium with the given firmware and checks that the PC
/// comes up as itself and greets the server (and, with a `disk`, backs it
/// up: the PC must be built with action=backup), then powers off.
fn boot_medium(dir: &Path, tag: &str, name: &str, server: &Server, medium: Medium, uefi: bool, disk: Option<&Path>) {
    let mut guest = Guest::new(&dir.join("boot")).boot_from(medium);
    guest.mac = mac_for(name);
    if uefi {
        guest = guest.uefi(&dir.join(format!("ovmf-vars-{tag}.fd")));
    }
    if let Some(d) = disk {
        guest = guest.disk(d, "MEDIASRC1");
    }
    let mut vm = guest.boot(&dir.join(format!("console-{tag}.log"))).expect("qemu starts");
    let c = &vm.console;
    let (_, up) = c.expect(&format!("bootvault: this is PC {name}"), BOOT_TIMEOUT).expect("init up as this PC");
    let (answer, hello) = c.expect("answered:", BOOT_TIMEOUT).expect("server reached");
    assert!(answer.contains(&format!("hello {name}, seen at 10.0.2.15")), "{answer}");
    if disk.is_some() {
        let (done, _) = c.expect("bootvault: backup 1 complete:", BOOT_TIMEOUT).expect("backup completes");
        assert!(done.contains("16.0 MiB in 16 chunks"), "{done}");
    }
    c.expect("reboot: Power down", BOOT_TIMEOUT).expect("power down");
    let off = vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");
    let events = server.events();
    assert!(events.contains(&format!("hello pc={name} mac={}", mac_for(name))), "server events:\n{events}");
    eprintln!(
        "TIMING {tag}: init up at {:.1} s, server answered at {:.1} s, power-off at {:.1} s",
        up.as_secs_f64(),
        hello.as_secs_f64(),
        off.as_secs_f64()
    );
}

fn media_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join("boot").join(format!("{name}.iso")), dir.join("boot").join(format!("{name}-usb.img")))
}

/// ISO on SeaBIOS (isolinux from the CD) running a whole headless backup
/// of a small disk, then the same ISO on OVMF (systemd-boot from the El
/// Torito EFI image) greeting the server.
#[test]
fn iso_boots_on_bios_with_a_backup_and_on_uefi() {
    let name = "media-iso";
    let dir = scratch(name);
    let server = Server::start(&dir).expect("server starts");
    let report = build_media(&dir.join("boot"), name, &server, &["action=backup", "name=from-iso"]);
    let (iso, _) = media_paths(&dir, name);
    let line = report_line(&report, "iso");
    assert!(
        line.contains(&iso.display().to_string()) && line.ends_with("(BIOS isolinux, UEFI systemd-boot)"),
        "{line}"
    );

    let source = dir.join("source.img");
    make_disk(&source, 16, "label: dos\nunit: sectors\nstart=2048, type=83\n").expect("source disk");
    write_at(&source, 1 << 20, &noise(3, 4 << 20)).expect("data on the source disk");
    boot_medium(&dir, "iso-bios-backup", name, &server, Medium::Cdrom(iso.clone()), false, Some(&source));
    let listed = run(Command::new(bootvault_bin()).args(["backups", "--json", "--data"]).arg(&server.data).arg("list"))
        .expect("backups list");
    assert!(listed.contains("\"complete\"") && listed.contains("from-iso"), "{listed}");

    // The same ISO on UEFI, without a disk the backup fails after the
    // greeting, which is all this boot checks.
    let probe = dir.join("probe");
    build_for(&probe, name, &server, "qemu", &["--media", "iso", "--set", "action=job"]).expect("build probe iso");
    let probe_iso = probe.join(format!("{name}.iso"));
    boot_medium(&dir, "iso-uefi", name, &server, Medium::Cdrom(probe_iso), true, None);
}

/// The USB image as a stick on xHCI, after a used-only backup and a
/// restore: syslinux on SeaBIOS, systemd-boot on OVMF.
#[test]
fn usb_image_boots_on_bios_and_uefi() {
    let name = "media-usb";
    let dir = scratch(name);
    let server = Server::start(&dir).expect("server starts");
    let report = build_media(&dir.join("boot"), name, &server, &["action=job"]);
    let (_, usb) = media_paths(&dir, name);
    let line = report_line(&report, "usb");
    assert!(
        line.contains(&usb.display().to_string()) && line.ends_with("(BIOS syslinux, UEFI systemd-boot)"),
        "{line}"
    );
    // The stick is booted as a used-only backup restored it (host engine,
    // onto a disk full of noise): boot code, boot sectors and every file
    // the loaders read must come back.
    let token = server.token(name).expect("token");
    let backup = run(Command::new(bootvault_bin()).args(["backup", "--disk"]).arg(&usb).args([
        "--server",
        &server.url,
        "--fingerprint",
        &server.fingerprint,
        "--pc",
        name,
        "--token",
        &token,
        "--name",
        "stick",
    ]))
    .expect("backup of the stick");
    assert!(backup.contains("(vfat): used only"), "{backup}");
    let restored = dir.join("restored-usb.img");
    fs::write(&restored, noise(5, fs::metadata(&usb).expect("stick size").len() as usize)).expect("target");
    run(Command::new(bootvault_bin()).args(["restore", "--disk"]).arg(&restored).args([
        "--server",
        &server.url,
        "--fingerprint",
        &server.fingerprint,
        "--pc",
        name,
        "--token",
        &token,
        "--backup",
        "latest",
        "--verify",
    ]))
    .expect("restore of the stick");
    boot_medium(&dir, "usb-bios", name, &server, Medium::UsbStick(restored.clone()), false, None);
    boot_medium(&dir, "usb-uefi", name, &server, Medium::UsbStick(restored), true, None);
}

/// The ISO dd'ed to a stick (what isohybrid is for): isolinux through
/// isohdpfx.bin's MBR on SeaBIOS, systemd-boot from the appended EFI
/// partition on OVMF.
#[test]
fn iso_as_a_usb_stick_boots_on_bios_and_uefi() {
    let name = "media-iso-stick";
    let dir = scratch(name);
    let server = Server::start(&dir).expect("server starts");
    build_for(&dir.join("boot"), name, &server, "qemu", &["--media", "iso", "--set", "action=job"]).expect("build");
    let (iso, _) = media_paths(&dir, name);
    boot_medium(&dir, "iso-stick-bios", name, &server, Medium::UsbStick(iso.clone()), false, None);
    boot_medium(&dir, "iso-stick-uefi", name, &server, Medium::UsbStick(iso), true, None);
}

/// The same PC built twice (a second apart, into another directory):
/// identical ISO and USB image bytes.
#[test]
fn media_are_reproducible() {
    let name = "media-repro";
    let dir = scratch(name);
    let server = Server::start(&dir).expect("server starts");
    let mut images = Vec::new();
    for round in ["first", "second"] {
        let out = dir.join(round);
        build_for(&out, name, &server, "qemu", &["--media", "iso,usb", "--set", "action=job"]).expect("build");
        let read = |p: PathBuf| fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        images.push((read(out.join(format!("{name}.iso"))), read(out.join(format!("{name}-usb.img")))));
        std::thread::sleep(Duration::from_millis(1100));
    }
    let diff = |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then_some(0));
    assert_eq!(diff(&images[0].0, &images[1].0), None, "ISO bytes differ at that offset");
    assert_eq!(diff(&images[0].1, &images[1].1), None, "USB image bytes differ at that offset");
    eprintln!("SIZES iso {} B, usb {} B", images[0].0.len(), images[0].1.len());
}
