//! Tokens and per-PC authorization, end to end: PCs built from the server's
//! database boot under QEMU and talk to the real server, which refuses a
//! wrong or missing token (the init says why on the console) and keeps
//! each PC to its own backups until the admin grants one to another.

use std::fs;
use std::path::Path;
use std::time::Duration;

use bootvault_qemu_tests::*;

/// Boots `boot` with one disk (and extra kernel parameters) until the
/// guest powers off; returns the console.
fn boot_until_off(dir: &Path, tag: &str, boot: &Path, disk: &Path, append: &str) -> Vec<String> {
    let mut vm = Guest::new(boot)
        .disk(disk, "AUTH0001")
        .append(append)
        .boot(&dir.join(format!("console-{tag}.log")))
        .expect("boots");
    vm.console.expect("reboot: Power down", BOOT_TIMEOUT).expect("power down");
    vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");
    vm.console.all()
}

fn build(dir: &Path, server: &Server, pc: &str, settings: &[&str]) -> std::path::PathBuf {
    let boot = dir.join(format!("boot-{pc}-{}", settings.join("-").replace(['=', '/'], "_")));
    let mut args = vec!["--set", "error_wait=1"];
    for s in settings {
        args.extend(["--set", s]);
    }
    build_for(&boot, pc, server, "qemu", &args).expect("build");
    boot
}

#[test]
fn tokens_are_enforced_and_pcs_see_only_their_own_backups() {
    let dir = scratch("auth");
    let server = Server::start(&dir).expect("server");
    let source = dir.join("source.img");
    fs::write(&source, noise(21, 8 << 20)).expect("source disk");

    // pc-one backs up with the token its media carries.
    let one = build(&dir, &server, "pc-one", &["action=backup", "name=master"]);
    let lines = boot_until_off(&dir, "one-backup", &one, &source, "");
    find_line(&lines, "bootvault: backup 1 complete:");
    assert!(server.events().contains("hello pc=pc-one "), "{}", server.events());

    // The same media with a wrong token, and with none: refused, and the
    // console says why.
    let blank = dir.join("blank.img");
    fs::write(&blank, vec![0u8; 8 << 20]).expect("blank disk");
    let lines = boot_until_off(&dir, "wrong-token", &one, &blank, &format!("bootvault.token={}", "0".repeat(64)));
    let err = find_line(&lines, "bootvault: error:");
    assert!(err.contains("refused PC pc-one (401): wrong token for PC pc-one"), "{err}");
    let lines = boot_until_off(&dir, "no-token", &one, &blank, "bootvault.token=");
    let err = find_line(&lines, "bootvault: error:");
    assert!(err.contains("refused PC pc-one (401): no token"), "{err}");
    let events = server.events();
    assert_eq!(events.matches("auth-refused pc=pc-one").count(), 2, "{events}");

    // pc-two, registered with its own token, cannot restore pc-one's
    // backup: refused before its disk is touched.
    let target = dir.join("target.img");
    fs::write(&target, noise(22, 8 << 20)).expect("target disk");
    let before = fs::read(&target).expect("read");
    let two = build(&dir, &server, "pc-two", &["action=restore", "backup=1"]);
    let lines = boot_until_off(&dir, "two-refused", &two, &target, "");
    let err = find_line(&lines, "bootvault: error:");
    assert!(err.contains("backup 1 is not PC pc-two's, and PC pc-two has no grant for it"), "{err}");
    assert!(fs::read(&target).expect("read") == before, "the refused restore touched the disk");
    assert!(server.events().contains("access-refused pc=pc-two backup=1 owner=pc-one"));

    // The admin grants the master image to pc-two: now it restores it.
    let granted = server.admin("backups", &["grant", "1", "pc-two"]).expect("grant");
    assert!(granted.contains("backup 1 may be restored by pc-two"), "{granted}");
    let lines = boot_until_off(&dir, "two-granted", &two, &target, "");
    find_line(&lines, "bootvault: restore of backup 1 complete:");
    assert_eq!(compare_prefix(&source, &target, 8 << 20).expect("compare"), None, "restored bytes differ");
    assert!(server.events().contains("restore-granted pc=pc-two backup=1 owner=pc-one"));
}
