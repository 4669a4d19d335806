//! Whole-disk backup and restore end to end: real disks with real
//! filesystems and deleted files, backed up by the PID 1 under QEMU to a
//! real server, restored by another boot onto blank disks and checked with
//! e2fsck / fsck.vfat: file for file, without the deleted files, in the
//! default mode (GPT disk); byte for byte with `mode=raw` (MBR disk).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bootvault_qemu_tests::*;

/// Boots a PC built with `settings`, with `disk` attached; returns the
/// console lines once it powered off.
fn boot_job(
    dir: &Path,
    tag: &str,
    server: &Server,
    pc: &str,
    settings: &[&str],
    disk: &Path,
    serial: &str,
) -> Vec<String> {
    let boot = dir.join(format!("boot-{tag}"));
    let mut args = Vec::new();
    for s in settings {
        args.push("--set");
        args.push(s);
    }
    build_for(&boot, pc, server, "qemu", &args).expect("build");
    let mut vm = Guest::new(&boot).disk(disk, serial).boot(&dir.join(format!("console-{tag}.log"))).expect("boots");
    vm.console.expect("reboot: Power down", BOOT_TIMEOUT).expect("power down");
    vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");
    vm.console.all()
}

fn blank(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    let f = fs::File::create(&p).expect("create");
    f.set_len(mib << 20).expect("size");
    p
}

/// `bootvault backups list --all --json` of the server's data directory.
fn backups_json(server: &Server) -> String {
    run(Command::new(bootvault_bin()).args(["backups", "--json", "--data"]).arg(&server.data).args(["list", "--all"]))
        .expect("backups list")
}

const MARKER: &str = "BV-QEMU-DELETED-FILE|";

fn backup_then_restore(label: &str, raw: bool) {
    let dir = scratch(&format!("backup-{label}"));
    let server = Server::start(&dir).expect("server");
    let source = make_source_disk(&dir, label).expect("source disk");
    add_deleted_files(&source, &dir, MARKER).expect("deleted files");
    assert!(file_contains(&source, MARKER).expect("read"), "the deleted files' bytes are on the source");
    let pc = format!("pc-{label}");
    let mode = if raw { "mode=raw" } else { "mode=used" };

    // 1. Back up the whole disk.
    let lines = boot_job(&dir, "backup", &server, &pc, &["action=backup", "name=nightly", mode], &source, "SRC001");
    let done = find_line(&lines, "bootvault: backup 1 complete:");
    assert!(done.contains("96.0 MiB in 96 chunks"), "{done}");
    if raw {
        assert!(done.contains("partition 1 (vfat): whole, mode=raw"), "{done}");
    } else {
        assert!(
            done.contains("partition 1 (vfat): used only") && done.contains("partition 2 (ext4): used only"),
            "{done}"
        );
        assert!(done.contains("of free space left out"), "{done}");
    }
    assert!(lines.iter().any(|l| l.contains("bootvault: backup ") && l.contains("% ")), "progress lines");
    let listed = backups_json(&server);
    assert!(listed.contains("\"complete\""), "{listed}");
    // How each partition was taken, as the admin sees it.
    let shown = run(Command::new(bootvault_bin()).args(["backups", "--data"]).arg(&server.data).args(["show", "1"]))
        .expect("backups show");
    let want = if raw { "partition 2 (ext4): whole, mode=raw" } else { "partition 2 (ext4): used only" };
    assert!(shown.contains(want), "{shown}");

    // 2. Again, unchanged: (almost) nothing crosses the network.
    let lines = boot_job(&dir, "backup2", &server, &pc, &["action=backup", "name=nightly", mode], &source, "SRC001");
    let again = find_line(&lines, "bootvault: backup 2 complete:");
    assert!(again.contains(", 0 new chunks, 0 B sent"), "{again}");
    let log = fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    assert!(log.contains("backup 2 of pc=") && log.contains("0 B received"), "server log:\n{log}");

    // 3. Restore onto a blank disk of the same size (settings in the image),
    //    and onto a larger one as a job the server hands out.
    let admin = |args: &[&str]| {
        run(Command::new(bootvault_bin()).arg(args[0]).arg("--data").arg(&server.data).args(&args[1..])).expect("admin")
    };
    let queued = admin(&["jobs", "add", &pc, "restore", "--backup", "1"]);
    assert!(queued.contains("job 1 queued"), "{queued}");
    for (tag, mib, settings) in [
        ("same", SOURCE_MIB, ["action=restore", "backup=1"]),
        ("larger", SOURCE_MIB + 32, ["action=job", "verify=yes"]),
    ] {
        let target = blank(&dir, &format!("target-{tag}.img"), mib);
        let lines = boot_job(&dir, &format!("restore-{tag}"), &server, &pc, &settings, &target, "DST001");
        let done = find_line(&lines, "bootvault: restore of backup 1 complete:");
        if tag == "larger" {
            find_line(&lines, "bootvault: job: restore of disk auto (server job 1)");
            assert!(done.contains("verified by reading back"), "{done}");
        }
        if raw {
            let diff = compare_prefix(&source, &target, SOURCE_MIB << 20).expect("compare");
            assert_eq!(diff, None, "restored disk ({tag}) differs from the source at byte {diff:?}");
        } else {
            // The table and the boot loader in the gap, byte for byte; the files, file for file.
            assert_eq!(compare_prefix(&source, &target, 1 << 20).expect("compare"), None, "first MiB ({tag})");
            check_files(&target, &dir, label).expect("every file restored");
            assert!(!file_contains(&target, MARKER).expect("read"), "a deleted file came back ({tag})");
        }
        fsck_partitions(&target, &dir).expect("filesystems check clean");
    }
    let jobs = admin(&["jobs", "--json", "list"]);
    assert!(jobs.contains("\"state\": \"done\""), "{jobs}");
    // The PCs told the server how far they were (the web console shows
    // it live); the log keeps each step.
    let events = fs::read_to_string(server.data.join("events.log")).unwrap_or_default();
    for want in [
        format!("progress pc={pc} action=backup job=- step=sending"),
        format!("progress pc={pc} action=backup job=- step=done"),
        format!("progress pc={pc} action=restore job=1 step=writing"),
        format!("progress pc={pc} action=restore job=1 step=done done={} total={}", SOURCE_MIB << 20, SOURCE_MIB << 20),
    ] {
        assert!(events.contains(&want), "{want:?} not in the server's events:\n{events}");
    }
    let results = admin(&["jobs", "results"]);
    assert_eq!(results.lines().filter(|l| l.contains(" ok disk vda")).count(), 4, "{results}");

    // 4. Export to one file, import into another server's store, verify.
    let file = dir.join("export.bvimg");
    admin(&["backups", "export", "1", file.to_str().expect("utf-8 path")]);
    let other = dir.join("other-data");
    let imported = run(Command::new(bootvault_bin()).args(["backups", "--data"]).arg(&other).arg("import").arg(&file))
        .expect("import");
    assert!(imported.contains("as backup 1"), "{imported}");
    let verified = run(Command::new(bootvault_bin()).args(["backups", "--data"]).arg(&other).args(["verify", "1"]))
        .expect("verify");
    assert!(
        verified.contains("24 stored chunks verified") || verified.contains("stored chunks verified"),
        "{verified}"
    );
}

#[test]
fn gpt_disk_used_only_backup_dedup_and_file_identical_restore() {
    backup_then_restore("gpt", false);
}

#[test]
fn mbr_disk_raw_backup_dedup_and_byte_identical_restore() {
    backup_then_restore("dos", true);
}

/// A smaller target is refused before anything is written; a damaged
/// chunk on the server stops the restore at that chunk, naming it.
#[test]
fn bad_restores_are_refused() {
    let dir = scratch("backup-refusals");
    let server = Server::start(&dir).expect("server");
    let source = make_source_disk(&dir, "gpt").expect("source disk");
    let lines = boot_job(&dir, "backup", &server, "pc-r", &["action=backup"], &source, "SRC001");
    find_line(&lines, "bootvault: backup 1 complete:");

    // Smaller target: refused, untouched.
    let small = dir.join("small.img");
    fs::write(&small, noise(3, 64 << 20)).expect("small disk");
    let before = fs::read(&small).expect("read");
    let lines = boot_job(&dir, "small", &server, "pc-r", &["action=restore", "error_wait=1"], &small, "DST002");
    let err = find_line(&lines, "bootvault: error:");
    assert!(err.contains("smaller than the backed-up disk's 96.0 MiB"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert!(fs::read(&small).expect("read") == before, "the smaller target was modified");

    // A disk with 4096-byte sectors: refused, untouched (the backup was
    // made from 512-byte sectors).
    let four_k = dir.join("4k.img");
    fs::write(&four_k, noise(6, 128 << 20)).expect("4k disk");
    let before = fs::read(&four_k).expect("read");
    let boot = dir.join("boot-4k");
    build_for(&boot, "pc-r", &server, "qemu", &["--set", "action=restore", "--set", "error_wait=1"]).expect("build");
    let mut vm = Guest::new(&boot).disk_4k(&four_k, "DST4K").boot(&dir.join("console-4k.log")).expect("boots");
    let (err, _) = vm.console.expect("bootvault: error:", BOOT_TIMEOUT).expect("error line");
    assert!(err.contains("target has 4096-byte logical sectors, the backup was made from 512-byte sectors"), "{err}");
    vm.console.expect("reboot: Power down", BOOT_TIMEOUT).expect("power down");
    vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");
    assert!(fs::read(&four_k).expect("read") == before, "the 4096-byte-sector target was modified");

    // Corrupt the stored blob of the last data chunk; restore stops there.
    let manifest = fs::read(server.data.join("manifests/1.bvm")).expect("manifest file");
    let m = bootvault_common::image::Manifest::decode(&manifest).expect("manifest decodes");
    let (index, id) = m
        .chunks
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, c)| match c {
            bootvault_common::image::Chunk::Data { id, .. } => Some((i, *id)),
            _ => None,
        })
        .expect("a data chunk");
    let hex = bootvault_common::image::hex(&id);
    let blob = server.data.join("chunks").join(&hex[..2]).join(&hex);
    // The whole second half: one flipped byte can land in a Huffman code
    // length of an unused symbol and leave the inflated bytes unchanged.
    let mut bytes = fs::read(&blob).expect("blob");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..] {
        *b ^= 0x55;
    }
    fs::write(&blob, bytes).expect("corrupt");
    let target = blank(&dir, "target.img", SOURCE_MIB);
    let lines = boot_job(&dir, "corrupt", &server, "pc-r", &["action=restore", "error_wait=1"], &target, "DST003");
    let err = find_line(&lines, "bootvault: error:");
    let offset = index as u64 * (1 << 20);
    assert!(err.contains(&format!("chunk {index} at offset {offset}")), "{err}");
    assert!(err.contains("restore stopped there"), "{err}");
}

/// The server dies in the middle of an upload: the PC reports a clear
/// error, and after a restart the half backup is not listed as complete.
#[test]
fn server_killed_during_upload_leaves_no_complete_backup() {
    let dir = scratch("backup-killed");
    let mut server = Server::start(&dir).expect("server");
    // Mostly incompressible data, so the upload takes a while.
    let disk = dir.join("busy.img");
    fs::write(&disk, noise(5, 160 << 20)).expect("disk");
    let boot = dir.join("boot");
    build_for(&boot, "pc-k", &server, "qemu", &["--set", "action=backup", "--set", "error_wait=1"]).expect("build");
    let mut vm = Guest::new(&boot).disk(&disk, "KILL01").boot(&dir.join("console.log")).expect("boots");
    vm.console.expect("bootvault: backup: vda", BOOT_TIMEOUT).expect("backup starts");
    vm.console
        .expect_fn("progress", BOOT_TIMEOUT, |l| l.contains("bootvault: backup ") && l.contains("% "))
        .expect("progress");
    server.kill();
    let (err, _) = vm.console.expect("bootvault: error:", BOOT_TIMEOUT).expect("error line");
    assert!(err.contains("backup of vda"), "{err}");
    vm.console.expect("reboot: Power down", BOOT_TIMEOUT).expect("power down");
    vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");

    let restarted = Server::start(&dir).expect("server restarts on the same data");
    let listed = backups_json(&restarted);
    assert!(!listed.contains("\"complete\""), "a half backup is listed as complete:\n{listed}");
    assert!(listed.contains("\"uploading\""), "the half backup should be visible as uploading with --all:\n{listed}");
}
