//! The console service, driven as a person would drive it: QEMU PCs boot
//! into the menu, the test types on the serial console and waits for each
//! prompt. One PC backs its disk up with a restore password; another
//! restores it onto its blank disk after a too-small disk, a wrong disk
//! name, a cancel at the confirmation and a wrong password were each
//! refused without touching a disk. The screens seen are written to
//! `console-screens.txt` in the test's scratch directory (docs/CONSOLE.md
//! shows them).

use std::fs;
use std::path::Path;
use std::time::Duration;

use bootvault_qemu_tests::*;

const STEP: Duration = Duration::from_secs(60);
const PASSWORD: &str = "correct horse battery";

fn step(vm: &Running, prompt: &str) -> String {
    vm.console.expect(prompt, STEP).unwrap_or_else(|e| panic!("waiting for {prompt:?}: {e}")).0
}

fn save_screens(dir: &Path, name: &str, vm: &Running) {
    let shots = screens(&vm.console.all());
    let text: String = shots.iter().enumerate().map(|(i, s)| format!("--- screen {} ---\n{s}\n\n", i + 1)).collect();
    fs::write(dir.join(format!("console-screens-{name}.txt")), text).expect("write screens");
}

#[test]
fn a_person_backs_up_and_restores_a_pc_at_the_console() {
    let dir = scratch("console");
    let server = Server::start(&dir).expect("server");
    let source = make_source_disk(&dir, "gpt").expect("source disk");
    // Registered PCs default to the menu.
    let boot = dir.join("boot");
    build_for(&boot, "pc-c", &server, "qemu", &["--set", "error_wait=1"]).expect("build");

    // --- Backup ---
    let mut vm = Guest::new(&boot).disk(&source, "SRC00001").boot(&dir.join("console-backup.log")).expect("boots");
    step(&vm, "What do you want to do?");
    step(&vm, "1) Back up a disk of this PC");
    vm.send("1").expect("type");
    // The disk list shows partitions with their filesystems and labels.
    step(&vm, "Choose the disk to back up:");
    let (line, _) = vm.console.expect("vda", STEP).expect("disk line");
    assert!(line.contains("96.0 MiB"), "{line}");
    vm.console
        .expect_fn("the FAT partition and its label", STEP, |l| l.contains("vfat") && l.contains("BVFAT"))
        .expect("fat");
    vm.send("1").expect("type");
    // The disk's own partitions are listed as destinations, and refused.
    step(&vm, "Choose where to store the backup:");
    vm.send("2").expect("type");
    step(&vm, "on the disk being backed up (vda)");
    vm.send("1").expect("type");
    // A bad name is refused with the reason; the default is PC + date.
    step(&vm, "Suggested: pc-c-20");
    vm.keys("\x15").expect("clear");
    vm.send("my backup").expect("type");
    step(&vm, "! ' ' is not allowed");
    vm.keys("\x15").expect("clear");
    vm.send("console-test").expect("type");
    // The password, twice, never echoed; a mismatch is caught.
    step(&vm, "Password:");
    vm.send(PASSWORD).expect("type");
    step(&vm, "The same password again:");
    vm.send("something else entirely").expect("type");
    step(&vm, "! the two passwords differ");
    vm.send(PASSWORD).expect("type");
    step(&vm, "The same password again:");
    vm.send(PASSWORD).expect("type");
    step(&vm, "Name:        console-test");
    step(&vm, "Password:    set");
    step(&vm, "Copy:        used space only");
    step(&vm, "3) Start a raw backup instead");
    vm.send("1").expect("type");
    step(&vm, "The backup is complete and stored on the server.");
    // How each partition was taken, on the done screen.
    step(&vm, "partition 1 (vfat): used only");
    step(&vm, "partition 2 (ext4): used only");
    step(&vm, "Back to the main menu");
    vm.send("2").expect("type");
    vm.wait_exit(Duration::from_secs(60)).expect("powers off");
    save_screens(&dir, "backup", &vm);
    let log = vm.console.all().join("\n");
    assert!(!log.contains(PASSWORD) && !log.contains("something else"), "a password was echoed");
    let events = server.events();
    assert!(events.contains("backup 1 of pc=pc-c complete"), "{events}");

    // --- Restore onto a blank disk, after every refusal ---
    let target = dir.join("target.img");
    fs::write(&target, noise(31, (SOURCE_MIB << 20) as usize)).expect("target disk");
    let small = dir.join("small.img");
    fs::write(&small, vec![0u8; 16 << 20]).expect("small disk");
    let before = fs::read(&target).expect("read");
    let mut vm = Guest::new(&boot)
        .disk(&target, "DST00001")
        .disk(&small, "SMALL001")
        .boot(&dir.join("console-restore.log"))
        .expect("boots");
    step(&vm, "What do you want to do?");
    vm.send("2").expect("type");
    let (line, _) = vm.console.expect("console-test", STEP).expect("backup listed");
    assert!(line.contains("[password]"), "{line}");
    step(&vm, "backup 1: disk 96.0 MiB, stored");
    vm.send("1").expect("type");
    let (line, _) = vm.console.expect("vdb", STEP).expect("small disk listed");
    assert!(line.contains("16.0 MiB  (too small: the backup needs 96.0 MiB)"), "{line}");
    vm.send("2").expect("type");
    step(&vm, "! vdb");
    vm.send("1").expect("type");
    // The strong confirmation: anything but the disk's name is refused.
    step(&vm, "Type the disk name (vda) to overwrite it:");
    vm.send("yes").expect("type");
    step(&vm, "You typed \"yes\", not \"vda\"; nothing was written.");
    // Ctrl-C at the confirmation: back to the menu, the disk untouched.
    vm.keys("\x03").expect("ctrl-c");
    step(&vm, "Cancelled; nothing was changed.");
    assert!(fs::read(&target).expect("read") == before, "the cancelled restore touched the disk");
    vm.send("2").expect("type");
    step(&vm, "Choose the backup to restore:");
    vm.send("1").expect("type");
    step(&vm, "Choose the disk to overwrite");
    vm.send("1").expect("type");
    step(&vm, "Type the disk name (vda) to overwrite it:");
    vm.send("vda").expect("type");
    // A wrong password: refused by the server, asked again.
    step(&vm, "Password:");
    vm.send("not the password").expect("type");
    step(&vm, "! wrong password for backup 1");
    assert!(fs::read(&target).expect("read") == before, "a wrong password let the restore write");
    vm.send(PASSWORD).expect("type");
    step(&vm, "Backup \"console-test\" is now on vda.");
    step(&vm, "Back to the main menu");
    vm.send("2").expect("type");
    vm.wait_exit(Duration::from_secs(60)).expect("powers off");
    save_screens(&dir, "restore", &vm);
    // A used-only backup: the table and boot area byte for byte, every file
    // file for file; free space keeps the target's old bytes (QEMU ignores
    // the discard).
    assert_eq!(compare_prefix(&source, &target, 1 << 20).expect("compare"), None, "restored first MiB differs");
    check_files(&target, &dir, "gpt").expect("every file restored");
    fsck_partitions(&target, &dir).expect("filesystems check clean");
    assert!(fs::read(&small).expect("read").iter().all(|&b| b == 0), "the too-small disk was written");
    let events = server.events();
    assert!(events.contains("unlock-refused pc=pc-c backup=1"), "{events}");
    assert!(events.contains("unlock-ok pc=pc-c backup=1"), "{events}");
}

/// Headless imaging of a PC in menu mode: the administrator's jobs run
/// before the menu and carry the password through the server (never the
/// kernel command line). A backup job locks the backup; a restore job with
/// a wrong password is refused when it is added; with the right one the PC
/// restores it unattended, byte for byte.
#[test]
fn server_jobs_carry_the_password_and_run_before_the_menu() {
    let dir = scratch("console-jobs");
    let server = Server::start(&dir).expect("server");
    let boot = dir.join("boot");
    build_for(&boot, "pc-j", &server, "qemu", &["--set", "error_wait=1"]).expect("build");
    let cmdline = fs::read_to_string(boot.join("cmdline")).expect("cmdline");
    assert!(!cmdline.contains("password") && !cmdline.contains("token"), "{cmdline}");
    let password = dir.join("password.txt");
    fs::write(&password, format!("{PASSWORD}\n")).expect("password file");
    let wrong = dir.join("wrong.txt");
    fs::write(&wrong, "not the password\n").expect("password file");

    let source = dir.join("source.img");
    fs::write(&source, noise(51, 16 << 20)).expect("source");
    let p = password.to_str().expect("utf-8");
    server.admin("jobs", &["add", "pc-j", "backup", "--name", "locked", "--password-file", p]).expect("backup job");
    let mut vm = Guest::new(&boot).disk(&source, "JOB00001").boot(&dir.join("console-backup.log")).expect("boots");
    step(&vm, "job: the server has a job for this PC; running it instead of the menu");
    step(&vm, "bootvault: backup 1 complete");
    vm.console.expect("reboot: Power down", STEP).expect("powers off");
    vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");
    let listing = server.admin("backups", &["list"]).expect("list");
    assert!(listing.contains("locked"), "{listing}");
    for f in ["bootvault.db", "bootvault.db-wal", "events.log"] {
        let bytes = fs::read(dir.join("server-data").join(f)).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains(PASSWORD), "the password is in {f}");
    }

    let refused = server
        .admin("jobs", &["add", "pc-j", "restore", "--backup", "1", "--password-file", wrong.to_str().expect("utf-8")]);
    let err = refused.expect_err("a wrong password is refused when the job is added");
    assert!(err.contains("wrong password for backup 1"), "{err}");
    let refused = server.admin("jobs", &["add", "pc-j", "restore", "--backup", "1"]);
    assert!(refused.expect_err("no password").contains("protected by a password"));
    server.admin("jobs", &["add", "pc-j", "restore", "--backup", "1", "--password-file", p]).expect("restore job");
    let target = dir.join("target.img");
    fs::write(&target, vec![0u8; 16 << 20]).expect("target");
    let mut vm = Guest::new(&boot).disk(&target, "JOB00002").boot(&dir.join("console-restore.log")).expect("boots");
    step(&vm, "job: the server has a job for this PC; running it instead of the menu");
    step(&vm, "bootvault: restore of backup 1 complete");
    vm.console.expect("reboot: Power down", STEP).expect("powers off");
    vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");
    assert_eq!(compare_prefix(&source, &target, 16 << 20).expect("compare"), None, "restored bytes differ");
}

/// Ctrl-C while a backup or a restore runs (the link to the server slowed
/// down so there is time to press it): the cancelled backup is failed on
/// the server, never complete; the cancelled restore says plainly that the
/// disk is incomplete. A backup between the two runs at full speed.
#[test]
fn cancelling_a_running_backup_and_restore() {
    let dir = scratch("console-cancel");
    let server = Server::start(&dir).expect("server");
    let throttle = Throttle::start(server.port).expect("throttle");
    let boot = dir.join("boot");
    let url = throttle.guest_url();
    build_for(&boot, "pc-x", &server, "qemu", &["--set", &format!("server={url}"), "--set", "error_wait=1"])
        .expect("build");
    let source = dir.join("source.img");
    fs::write(&source, noise(61, 16 << 20)).expect("source");
    let target = dir.join("target.img");
    fs::write(&target, vec![0u8; 16 << 20]).expect("target");
    let mut vm = Guest::new(&boot)
        .disk(&source, "CAN00001")
        .disk(&target, "CAN00002")
        .boot(&dir.join("console.log"))
        .expect("boots");
    let backup = |vm: &mut Running| {
        step(vm, "What do you want to do?");
        vm.send("1").expect("type");
        step(vm, "Choose the disk to back up:");
        vm.send("1").expect("type");
        step(vm, "Choose where to store the backup:");
        vm.send("1").expect("type");
        step(vm, "Suggested: pc-x-");
        vm.send("").expect("type");
        step(vm, "Password:");
        vm.send("").expect("type");
        step(vm, "The same password again:");
        vm.send("").expect("type");
        step(vm, "Start the backup");
        vm.send("1").expect("type");
        step(vm, "Press Ctrl-C twice to cancel");
    };

    throttle.set_rate(256 << 10);
    backup(&mut vm);
    vm.console.expect_fn("progress", STEP, |l| l.contains("new data sent")).expect("running");
    vm.keys("\x03").expect("ctrl-c");
    step(&vm, "Press Ctrl-C again to cancel the backup.");
    vm.keys("\x03").expect("ctrl-c");
    step(&vm, "Back up: cancelled");
    step(&vm, "Nothing was stored as a complete backup");
    step(&vm, "Back to the main menu");
    vm.send("1").expect("type");
    let events = server.events();
    assert!(events.contains("backup-failed id=1 reason=\"cancelled at the console\""), "{events}");

    throttle.set_rate(0);
    backup(&mut vm);
    step(&vm, "The backup is complete and stored on the server.");
    step(&vm, "Back to the main menu");
    vm.send("1").expect("type");

    throttle.set_rate(256 << 10);
    step(&vm, "What do you want to do?");
    vm.send("2").expect("type");
    step(&vm, "Choose the backup to restore:");
    vm.send("1").expect("type");
    step(&vm, "Choose the disk to overwrite");
    vm.send("2").expect("type");
    step(&vm, "Type the disk name (vdb) to overwrite it:");
    vm.send("vdb").expect("type");
    step(&vm, "Press Ctrl-C twice to cancel");
    // Once part of the backup is on the disk:
    vm.console
        .expect_fn("some bytes written", STEP, |l| l.contains(" of 16.0 MiB") && !l.starts_with("0 B"))
        .expect("running");
    vm.keys("\x03\x03").expect("ctrl-c twice");
    step(&vm, "Restore: CANCELLED - the disk is incomplete");
    step(&vm, "The disk vdb is now INCOMPLETE");
    step(&vm, "Back to the main menu");
    vm.send("2").expect("type");
    vm.wait_exit(Duration::from_secs(60)).expect("powers off");
    save_screens(&dir, "cancel", &vm);
    let listing = server.admin("backups", &["list", "--all"]).expect("list");
    let state = |id: &str| listing.lines().find(|l| l.trim_start().starts_with(id)).unwrap_or("").to_owned();
    assert!(state("1 ").contains("failed"), "{listing}");
    assert!(state("2 ").contains("complete"), "{listing}");
    let target_bytes = fs::read(&target).expect("read");
    assert!(target_bytes.iter().any(|&b| b != 0), "part of the backup was written");
    assert!(target_bytes != fs::read(&source).expect("read"), "the cancelled restore finished anyway");
}
