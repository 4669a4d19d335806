//! Backups without a server: the PC backs its disk up to a drive of its
//! own (an exFAT USB drive on qemu-xhci, an ext4 second SATA disk) and
//! restores from it, with no NIC at all, from the console and from
//! headless settings. Refusals write nothing; a drive that fills up
//! leaves no backup that looks complete; QEMU killed mid-backup leaves a
//! partial backup that the next boot never offers and cleans up.
//!
//! The drives are read back on the host with userspace tools (`drives`),
//! never mounted.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bootvault_qemu_tests::*;

const STEP: Duration = Duration::from_secs(90);
const PASSWORD: &str = "local drive password";

fn step(vm: &Running, prompt: &str) -> String {
    vm.console.expect(prompt, STEP).unwrap_or_else(|e| panic!("waiting for {prompt:?}: {e}")).0
}

/// The console lines up to the end of the next menu screen.
fn menu_screen(vm: &Running) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = vm.console.expect_fn("a line", STEP, |_| true).expect("menu screen").0;
        let end = line.contains("Arrows or a number to choose");
        lines.push(line);
        if end {
            return lines;
        }
    }
}

/// The number of the menu item on the line of `screen` containing
/// `needle` (`> 3) Drive sdb1 …` gives "3").
fn item_in(screen: &[String], needle: &str) -> String {
    let line = screen.iter().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in {screen:#?}"));
    item_of(line, needle)
}

/// The number of the menu item on the next line containing `needle`.
fn item(vm: &Running, needle: &str) -> String {
    item_of(&step(vm, needle), needle)
}

fn item_of(line: &str, needle: &str) -> String {
    let at = line.find(needle).unwrap_or(line.len());
    let head = &line[..at];
    let close = head.rfind(") ").unwrap_or_else(|| panic!("no item number on {line:?}"));
    let digits: String =
        head[..close].chars().rev().take_while(char::is_ascii_digit).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(!digits.is_empty(), "no item number on {line:?}");
    digits
}

/// A PC with no server: `extra` settings, and `--media usb` when asked.
fn build_local(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let boot = dir.join(format!("boot-{name}"));
    let mut args = vec!["--set", "error_wait=1", "--set", "coldplug_timeout=15"];
    args.extend_from_slice(extra);
    build_pc(&boot, name, "", "qemu", &args).expect("build");
    boot
}

fn blank_target(dir: &Path, seed: u64) -> PathBuf {
    let target = dir.join(format!("target-{seed}.img"));
    fs::write(&target, noise(seed, (SOURCE_MIB << 20) as usize)).expect("target disk");
    target
}

/// The console, no NIC, booted from the PC's own USB image: a backup to
/// an exFAT USB drive (the source disk's own partitions and a drive too
/// small refused), then a restore from it onto a blank disk, with the
/// backup's password.
#[test]
fn console_backs_up_to_a_usb_drive_and_restores_from_it_without_a_nic() {
    let dir = scratch("local-console");
    let source = make_source_disk(&dir, "gpt").expect("source disk");
    let boot = build_local(&dir, "pc-usb", &["--media", "usb", "--set", "action=menu"]);
    let stick = boot.join("pc-usb-usb.img");
    let drive = dir.join("usb-drive.img");
    make_exfat_drive(&drive, 192, "BACKUPS", true).expect("exfat drive");
    let tiny = dir.join("tiny.img");
    make_vfat_drive(&tiny, 1, "TINY", false).expect("tiny drive");
    let tiny_before = image_digest(&tiny).expect("digest");
    let source_before = image_digest(&source).expect("digest");
    let target = blank_target(&dir, 41);

    let mut vm = Guest::new(&boot)
        .no_network()
        .boot_from(Medium::UsbStick(stick))
        .disk(&source, "SRC00001")
        .disk(&target, "DST00001")
        .usb_drive(&drive, "DRIVE001")
        .usb_drive(&tiny, "TINY0001")
        .boot(&dir.join("console.log"))
        .expect("boots");
    step(&vm, "What do you want to do?");
    vm.send("1").expect("type");
    step(&vm, "Choose the disk to back up:");
    let n = item(&vm, "vda ");
    vm.send(&n).expect("type");
    // Where to: no server; the drive with its free space; the source's own
    // partitions and the tiny drive refused.
    step(&vm, "Choose where to store the backup:");
    let screen = menu_screen(&vm);
    let has = |f: &dyn Fn(&str) -> bool| screen.iter().any(|l| f(l));
    assert!(has(&|l| l.contains("1) The bootvault server  (none configured)")), "{screen:#?}");
    assert!(has(&|l| l.contains("free, fits (up to")), "{screen:#?}");
    assert!(has(&|l| l.contains("\"TINY\"") && l.contains("(too small")), "{screen:#?}");
    assert!(has(&|l| l.contains("vda1") && l.contains("(on the disk being backed up")), "{screen:#?}");
    assert!(has(&|l| l.contains("vda2") && l.contains("(on the disk being backed up")), "{screen:#?}");
    assert!(has(&|l| l.contains("\"BOOTVAULT\"") && l.contains("(read-only)")), "the boot stick: {screen:#?}");
    let n = item_in(&screen, "\"BACKUPS\"");
    vm.send(&n).expect("type");
    step(&vm, "Backup name:");
    vm.keys("\x15").expect("clear");
    vm.send("usb-backup").expect("type");
    step(&vm, "Password:");
    vm.send(PASSWORD).expect("type");
    step(&vm, "The same password again:");
    vm.send(PASSWORD).expect("type");
    step(&vm, "Destination: drive sd");
    step(&vm, "3) Start a raw backup instead");
    vm.send("1").expect("type");
    step(&vm, "The backup is complete and stored on the drive.");
    step(&vm, "partition 2 (ext4): used only");
    step(&vm, "The drive was written out and unmounted: you can remove it. To put this");
    vm.send("1").expect("type");

    // Restore, from the drive, onto the blank disk.
    step(&vm, "What do you want to do?");
    vm.send("2").expect("type");
    step(&vm, "(no server: no network, or none configured)");
    let (line, _) = vm.console.expect("usb-backup", STEP).expect("listed");
    assert!(line.contains("[password]"), "{line}");
    step(&vm, "on drive sd");
    vm.send("1").expect("type");
    step(&vm, "Choose the disk to overwrite");
    let n = item(&vm, "vdb ");
    vm.send(&n).expect("type");
    step(&vm, "Type the disk name (vdb) to overwrite it:");
    vm.send("vdb").expect("type");
    step(&vm, "is protected by a password");
    vm.send("not the password").expect("type");
    step(&vm, "! wrong password for backup 1");
    vm.send(PASSWORD).expect("type");
    step(&vm, "Backup \"usb-backup\" is now on vdb.");
    step(&vm, "from drive sd");
    step(&vm, "Back to the main menu");
    vm.send("2").expect("type");
    vm.wait_exit(STEP).expect("powers off");
    let log = vm.console.all().join("\n");
    assert!(!log.contains(PASSWORD), "the password was echoed");
    // The screens a person saw (docs/CONSOLE.md shows them).
    let shots = screens(&vm.console.all());
    let text: String = shots.iter().enumerate().map(|(i, s)| format!("--- screen {} ---\n{s}\n\n", i + 1)).collect();
    fs::write(dir.join("console-screens-local.txt"), text).expect("write screens");

    check_files(&target, &dir, "gpt").expect("every file restored");
    fsck_partitions(&target, &dir).expect("the restored disk checks clean");
    let listing = store_listing(&drive).expect("the drive's store");
    assert_eq!(listing.complete, vec![1], "{listing:?}");
    assert_eq!(listing.locked, vec![1], "the password is kept with the backup");
    assert!(listing.open.is_empty() && listing.failed.is_empty() && listing.tmp_files == 0, "{listing:?}");
    fsck_drive(&drive).expect("the drive checks clean");
    assert_eq!(image_digest(&tiny).expect("digest"), tiny_before, "the refused drive was written to");
    assert_eq!(image_digest(&source).expect("digest"), source_before, "the source was written to");
}

/// Headless, no NIC, booted from the PC's USB image: a backup to a USB
/// drive by its label; QEMU killed in the middle of a second backup. The
/// drive, left marked in use, is then never written: a backup to it is
/// refused, a restore reads it read-only. Once fsck.exfat has checked it,
/// the next boot restores the first backup onto a blank disk, never
/// offering the partial one, and cleans that up. The drive is then
/// imported into a server and restored over the network onto another PC.
#[test]
fn headless_usb_backup_survives_a_power_cut_and_imports_into_a_server() {
    let dir = scratch("local-headless");
    let source = make_source_disk(&dir, "gpt").expect("source disk");
    let boot =
        build_local(&dir, "pc-stick", &["--media", "usb", "--set", "action=backup", "--set", "dest=local:BACKUPS"]);
    let stick = boot.join("pc-stick-usb.img");
    let drive = dir.join("usb-drive.img");
    make_exfat_drive(&drive, 384, "BACKUPS", false).expect("exfat drive");

    // Booted from its USB image, as the PC would be.
    let mut vm = Guest::new(&boot)
        .no_network()
        .boot_from(Medium::UsbStick(stick.clone()))
        .disk(&source, "SRC00001")
        .usb_drive(&drive, "DRIVE001")
        .boot(&dir.join("backup.log"))
        .expect("boots");
    step(&vm, "fits (up to");
    step(&vm, "written out and unmounted; it can be removed");
    step(&vm, "backup 1 complete");
    vm.wait_exit(STEP).expect("powers off");
    let first = store_listing(&drive).expect("listing");
    assert_eq!((first.complete.clone(), first.open.len()), (vec![1], 0), "{first:?}");

    // A long backup (a disk of noise, taken whole), cut off mid-way.
    let big = dir.join("noise.img");
    fs::write(&big, noise(77, 160 << 20)).expect("noise disk");
    let vm = Guest::new(&boot)
        .no_network()
        .boot_from(Medium::UsbStick(stick))
        .disk(&big, "BIG00001")
        .usb_drive(&drive, "DRIVE001")
        .boot(&dir.join("cut.log"))
        .expect("boots");
    step(&vm, "backup: vda");
    vm.console.expect_fn("progress", STEP, |l| l.contains("backup ") && l.contains("% ")).expect("running");
    std::thread::sleep(Duration::from_secs(2));
    drop(vm); // the power cut
    let cut = store_listing(&drive).expect("listing");
    assert_eq!((cut.complete.clone(), cut.open.clone()), (vec![1], vec![2]), "cut mid-way: {cut:?}");
    assert!(cut.chunk_files > first.chunk_files, "the cut backup had written chunks: {cut:?}");

    // The cut left the exFAT volume marked in use, and its allocation
    // bitmap may miss clusters written just before the cut: a drive in
    // that state is never written. A backup to it is refused...
    let cut_digest = image_digest(&drive).expect("digest");
    let mut vm = Guest::new(&boot)
        .no_network()
        .disk(&source, "SRC00001")
        .usb_drive(&drive, "DRIVE001")
        .append("bootvault.action=backup bootvault.dest=local:BACKUPS bootvault.error_wait=0")
        .boot(&dir.join("refused.log"))
        .expect("boots");
    let (line, _) = vm.console.expect("was not unmounted cleanly", STEP).expect("refused");
    assert!(line.contains("error: ") && line.contains("fsck.exfat -y"), "{line}");
    vm.wait_exit(STEP).expect("powers off");
    assert_eq!(image_digest(&drive).expect("digest"), cut_digest, "the refused drive was written to");

    // ... a restore reads it read-only, leaving the partial backup alone.
    let restore = |target: &Path, log: &str| {
        Guest::new(&boot)
            .no_network()
            .disk(target, "DST00001")
            .usb_drive(&drive, "DRIVE001")
            .append("bootvault.action=restore bootvault.source=local:BACKUPS")
            .boot(&dir.join(log))
            .expect("boots")
    };
    let target = blank_target(&dir, 43);
    let mut vm = restore(&target, "restore-unclean.log");
    let (line, _) = vm.console.expect("was not unmounted cleanly", STEP).expect("said");
    assert!(line.contains("reading it read-only"), "{line}");
    step(&vm, "restore: backup 1 from");
    step(&vm, "restore of backup 1 complete");
    vm.wait_exit(STEP).expect("powers off");
    check_files(&target, &dir, "gpt").expect("every file restored");
    assert_eq!(image_digest(&drive).expect("digest"), cut_digest, "the unclean drive was written to");

    // Once checked (as its owner would on another machine), the next boot
    // (the same kernel and initramfs, settings from the command line)
    // cleans up the partial backup and restores the complete one.
    repair_drive(&drive).expect("fsck.exfat");
    let target = blank_target(&dir, 44);
    let mut vm = restore(&target, "restore.log");
    step(&vm, "removed the unfinished backup 2");
    step(&vm, "restore: backup 1 from");
    step(&vm, "restore of backup 1 complete");
    vm.wait_exit(STEP).expect("powers off");
    check_files(&target, &dir, "gpt").expect("every file restored");
    fsck_partitions(&target, &dir).expect("checks clean");
    let after = store_listing(&drive).expect("listing");
    assert_eq!(after.complete, vec![1], "{after:?}");
    assert!(after.open.is_empty() && after.tmp_files == 0, "{after:?}");
    assert_eq!(after.failed.len(), 1, "{after:?}");
    assert!(after.failed[0].1.contains("interrupted"), "{after:?}");
    assert_eq!(after.chunk_files, first.chunk_files, "the partial backup's chunks are gone: {after:?}");
    fsck_drive(&drive).expect("the drive checks clean");

    // The stick's store imported into a server; another PC restores it
    // over the network.
    let store = dir.join("stick-store");
    let _ = fs::remove_dir_all(&store);
    copy_store_out(&drive, &store).expect("copy the store out");
    let server = Server::start(&dir).expect("server");
    server.register("pc-stick", &mac_for("pc-stick")).expect("register");
    let out = server.admin("backups", &["import-dir", &store.display().to_string()]).expect("import-dir");
    assert!(out.contains("imported"), "{out}");
    let listed = server.admin("backups", &["list"]).expect("list");
    let id = listed
        .lines()
        .find(|l| l.contains("pc-stick"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("imported backup not listed: {listed}"))
        .to_owned();
    server.register("pc-other", &mac_for("pc-other")).expect("register");
    server.admin("backups", &["grant", &id, "pc-other"]).expect("grant");
    let other = dir.join("boot-other");
    build_for(&other, "pc-other", &server, "qemu", &["--set", "action=restore", "--set", &format!("backup={id}")])
        .expect("build");
    let target2 = blank_target(&dir, 44);
    let mut vm = Guest::new(&other).disk(&target2, "DST00002").boot(&dir.join("network.log")).expect("boots");
    step(&vm, &format!("restore of backup {id} complete"));
    vm.wait_exit(STEP).expect("powers off");
    check_files(&target2, &dir, "gpt").expect("every file restored over the network");
}

/// An ext4 second SATA disk as the destination (headless, with a network
/// and a server to report to, then without); the backup is restored from it. A drive too small is refused with nothing written;
/// a drive that fills up mid-way gives a clear error and no backup that
/// looks complete, and gives its space back.
#[test]
fn ext4_second_disk_and_drives_too_small_or_full() {
    let dir = scratch("local-sata");
    let source = make_source_disk(&dir, "gpt").expect("source disk");
    // This PC has a network and a server: the backup still goes to the
    // drive, and its result is reported to the server.
    let server = Server::start(&dir).expect("server");
    let boot = dir.join("boot-pc-sata");
    let settings = ["--set", "action=backup", "--set", "dest=local:VAULT", "--set", "error_wait=1"];
    build_for(&boot, "pc-sata", &server, "qemu", &settings).expect("build");
    let vault = dir.join("vault.img");
    make_ext4_drive(&vault, 160, "VAULT", true).expect("ext4 drive");

    let mut vm = Guest::new(&boot)
        .disk(&source, "SRC00001")
        .sata_disk(&vault, "VAULT001")
        .boot(&dir.join("backup.log"))
        .expect("boots");
    step(&vm, "answered");
    // auto is the virtio disk: the SATA disk holds the drive.
    step(&vm, "backup: vda");
    step(&vm, "backup 1 complete");
    vm.wait_exit(STEP).expect("powers off");
    fsck_drive(&vault).expect("the ext4 drive checks clean");
    let events = server.events();
    assert!(events.contains("result pc=pc-sata action=backup ok=yes"), "{events}");
    assert!(
        server.admin("backups", &["list"]).expect("list").lines().all(|l| !l.contains("pc-sata")),
        "not on the server"
    );

    let target = blank_target(&dir, 45);
    let mut vm = Guest::new(&boot)
        .no_network()
        .disk(&target, "DST00001")
        .sata_disk(&vault, "VAULT001")
        .append("bootvault.action=restore bootvault.source=local:VAULT")
        .boot(&dir.join("restore.log"))
        .expect("boots");
    step(&vm, "restore of backup 1 complete");
    vm.wait_exit(STEP).expect("powers off");
    check_files(&target, &dir, "gpt").expect("every file restored");
    fsck_partitions(&target, &dir).expect("checks clean");

    // Too small: refused before anything is written.
    let tiny = dir.join("tiny.img");
    make_vfat_drive(&tiny, 1, "TINY", false).expect("tiny");
    let before = image_digest(&tiny).expect("digest");
    let mut vm = Guest::new(&boot)
        .no_network()
        .disk(&source, "SRC00001")
        .sata_disk(&tiny, "TINY0001")
        .append("bootvault.dest=local:TINY")
        .boot(&dir.join("tiny.log"))
        .expect("boots");
    step(&vm, "error: drive sda vfat \"TINY\": too small");
    vm.wait_exit(STEP).expect("powers off");
    assert_eq!(image_digest(&tiny).expect("digest"), before, "the refused drive was written to");

    // Fills up: 24 MiB of noise onto a 16 MiB drive (fits only if it compresses).
    let small = dir.join("small.img");
    make_exfat_drive(&small, 16, "SMALL", false).expect("small");
    let big = dir.join("noise.img");
    fs::write(&big, noise(78, 24 << 20)).expect("noise disk");
    let mut vm = Guest::new(&boot)
        .no_network()
        .disk(&big, "BIG00001")
        .sata_disk(&small, "SMALL001")
        .append("bootvault.dest=local:SMALL")
        .boot(&dir.join("full.log"))
        .expect("boots");
    step(&vm, "fits only if it compresses well");
    let (line, _) = vm.console.expect("error: backup of vda", STEP).expect("fails");
    assert!(line.contains("No space left on device"), "{line}");
    vm.wait_exit(STEP).expect("powers off");
    let full = store_listing(&small).expect("listing");
    assert!(full.complete.is_empty() && full.open.is_empty(), "{full:?}");
    assert_eq!(full.failed.len(), 1, "{full:?}");
    assert_eq!(full.chunk_files, 0, "the failed backup's chunks are deleted: {full:?}");
    fsck_drive(&small).expect("the full drive checks clean");
}
