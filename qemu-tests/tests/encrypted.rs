//! Backups encrypted on the PC (issue 13, first part): a PC built with a
//! data key backs its disk up; the server's data directory then holds
//! none of the disk's file contents; another PC with the same key
//! restores it (one image to many PCs) file for file; a PC without the
//! key is refused before it writes anything.

use std::fs;
use std::process::Command;
use std::time::Duration;

use bootvault_common::testdata::file_holding;
use bootvault_qemu_tests::*;

const STEP: Duration = Duration::from_secs(120);

#[test]
fn encrypted_on_the_pc_restored_by_another_pc_with_the_key() {
    let dir = scratch("encrypted");
    let server = Server::start(&dir).expect("server");
    let source = make_source_disk(&dir, "gpt").expect("source disk");
    let key = dir.join("site.key");
    let _ = fs::remove_file(&key);
    let out = run(Command::new(bootvault_bin()).args(["key", "new"]).arg(&key)).expect("key new");
    assert!(out.contains("new data key"), "{out}");

    let boot = dir.join("boot-enc");
    let key_s = key.display().to_string();
    build_for(&boot, "pc-enc", &server, "qemu", &["--set", "action=backup", "--key-file", &key_s]).expect("build");
    let mut vm = Guest::new(&boot).disk(&source, "SRC00001").boot(&dir.join("backup.log")).expect("boots");
    vm.console.expect("backup: encrypted on this PC with data key", STEP).expect("encrypting");
    let (line, _) = vm.console.expect("complete", STEP).expect("backup");
    assert!(line.contains("backup 1 complete"), "{line}");
    vm.wait_exit(STEP).expect("powers off");

    // The server holds ciphertext only: no text line, no noise block, no label.
    for (what, needle) in [
        ("a text line", b"of a very compressible text file".to_vec()),
        ("a block of random.bin", noise(7, 4096)),
        ("the ext4 label", b"bvroot".to_vec()),
    ] {
        assert_eq!(file_holding(&server.data, &needle), None, "{what} in the server's data directory");
    }

    // Another PC with the same key, granted the backup: file for file.
    server.register("pc-enc2", &mac_for("pc-enc2")).expect("register");
    server.admin("backups", &["grant", "1", "pc-enc2"]).expect("grant");
    let boot2 = dir.join("boot-enc2");
    let restore = ["--set", "action=restore", "--set", "backup=1", "--key-file", &key_s];
    build_for(&boot2, "pc-enc2", &server, "qemu", &restore).expect("build");
    let target = dir.join("target.img");
    fs::write(&target, noise(51, (SOURCE_MIB << 20) as usize)).expect("target");
    let mut vm = Guest::new(&boot2).disk(&target, "DST00001").boot(&dir.join("restore.log")).expect("boots");
    vm.console.expect("restore of backup 1 complete", STEP).expect("restore");
    vm.wait_exit(STEP).expect("powers off");
    check_files(&target, &dir, "gpt").expect("every file restored");
    fsck_partitions(&target, &dir).expect("checks clean");

    // A PC without the key: refused, its disk untouched.
    server.register("pc-nokey", &mac_for("pc-nokey")).expect("register");
    server.admin("backups", &["grant", "1", "pc-nokey"]).expect("grant");
    let boot3 = dir.join("boot-nokey");
    build_for(
        &boot3,
        "pc-nokey",
        &server,
        "qemu",
        &["--no-encryption", "--set", "action=restore", "--set", "backup=1"],
    )
    .expect("build");
    let blank = dir.join("blank.img");
    fs::write(&blank, noise(52, (SOURCE_MIB << 20) as usize)).expect("blank");
    let before = fs::read(&blank).expect("read");
    let mut vm = Guest::new(&boot3).disk(&blank, "DST00002").boot(&dir.join("nokey.log")).expect("boots");
    let (line, _) = vm.console.expect("error:", STEP).expect("refused");
    assert!(line.contains("is encrypted") && line.contains("give its key"), "{line}");
    vm.wait_exit(STEP).expect("powers off");
    assert!(fs::read(&blank).expect("read") == before, "a PC without the key wrote to its disk");
}
