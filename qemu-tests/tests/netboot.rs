//! Network boot end to end: no media at all. QEMU's own iPXE ROM gets the
//! boot file name from user-mode networking's DHCP (`bootfile=` = our
//! server's `/boot/ipxe`), the server picks the PC's script by MAC, iPXE
//! fetches kernel and initramfs over HTTP, and the init comes up as that
//! PC, with its token, and backs up. On SeaBIOS and on OVMF.

use std::fs;
use std::path::Path;
use std::time::Duration;

use bootvault_qemu_tests::*;

fn netboot_backup(tag: &str, uefi: bool) {
    let dir = scratch(tag);
    let server = Server::start(&dir).expect("server");
    let (pc, mac) = (tag, mac_for(tag));
    server.register(pc, &mac).expect("register");
    let boot = dir.join("boot");
    let built = build_for(
        &boot,
        pc,
        &server,
        "qemu",
        &["--media", "pxe", "--no-encryption", "--set", "action=backup", "--set", "name=net"],
    )
    .expect("build --media pxe");
    assert!(built.contains(&format!("boot/{pc} (served by MAC")), "{built}");
    let source = dir.join("source.img");
    fs::write(&source, noise(31, 16 << 20)).expect("source disk");

    let mut guest = Guest::new(&boot).boot_from(Medium::Network(server.netboot_url())).disk(&source, "NET0001");
    guest.mac = mac.clone();
    if uefi {
        guest = guest.uefi(&dir.join("ovmf-vars.fd"));
    }
    let mut vm = guest.boot(&dir.join("console.log")).expect("boots");
    // iPXE prints on the serial console under OVMF only (SeaBIOS shows it
    // on VGA); on BIOS the server's log below proves the script ran.
    if uefi {
        vm.console.expect(&format!("bootvault: PC {pc} ({mac}) boots over the network"), BOOT_TIMEOUT).expect("iPXE");
    }
    vm.console.expect(&format!("bootvault: this is PC {pc}"), BOOT_TIMEOUT).expect("init");
    let (done, _) = vm.console.expect("bootvault: backup 1 complete:", BOOT_TIMEOUT).expect("backup");
    assert!(done.contains("16.0 MiB"), "{done}");
    vm.console.expect("reboot: Power down", BOOT_TIMEOUT).expect("power down");
    vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");

    let events = server.events();
    for e in [
        format!("netboot pc={pc} mac={mac}"),
        format!("netboot-file pc={pc} file=vmlinuz"),
        format!("netboot-file pc={pc} file=initrd.img"),
        format!("hello pc={pc} mac={mac}"),
        format!("backup 1 of pc={pc} complete"),
    ] {
        assert!(events.contains(&e), "no {e:?} in the server's events:\n{events}");
    }
}

#[test]
fn network_boot_on_bios_backs_up() {
    netboot_backup("net-bios", false);
}

#[test]
fn network_boot_on_uefi_backs_up() {
    netboot_backup("net-uefi", true);
}

/// Boots by network (on OVMF, whose console shows iPXE's messages) until
/// `needle` shows, then stops the guest.
fn boot_until(dir: &Path, tag: &str, server: &Server, mac: &str, needle: &str) -> Vec<String> {
    let mut guest = Guest::new(&dir.join("unused"))
        .boot_from(Medium::Network(server.netboot_url()))
        .uefi(&dir.join(format!("ovmf-vars-{tag}.fd")));
    guest.mac = mac.to_owned();
    let vm = guest.boot(&dir.join(format!("console-{tag}.log"))).expect("boots");
    vm.console.expect(needle, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{tag}: {e}"));
    vm.console.all()
}

/// An unknown MAC is told what to do and listed for the admin; once the
/// admin registers it and publishes its files, it boots as that PC. A PC
/// set to local mode is told why it does not network-boot.
#[test]
fn unknown_mac_is_listed_then_registered() {
    let dir = scratch("net-unknown");
    let server = Server::start(&dir).expect("server");
    server.admin("settings", &["register-unknown", "yes"]).expect("settings");
    let mac = "52:54:00:0d:0e:0f";
    let lines = boot_until(&dir, "unknown", &server, mac, "bootvault: powering off in 60 s");
    find_line(&lines, &format!("bootvault: this PC (MAC {mac}) is not registered with the server."));
    find_line(&lines, &format!("bootvault pc add NAME --mac {mac}"));
    let pending = server.admin("pc", &["pending"]).expect("pending");
    assert!(pending.contains(mac), "{pending}");
    assert!(server.events().contains(&format!("netboot-unknown mac={mac}")));

    // Registered but not published yet: told how to publish.
    server.register("newcomer", mac).expect("register");
    assert!(!server.admin("pc", &["pending"]).expect("pending").contains(mac), "approved MACs leave the list");
    let lines = boot_until(&dir, "unpublished", &server, mac, "bootvault: powering off in 60 s");
    find_line(&lines, "PC newcomer has no network boot files yet");

    build_for(
        &dir.join("boot"),
        "newcomer",
        &server,
        "qemu",
        &["--media", "pxe", "--no-encryption", "--set", "action=job"],
    )
    .expect("build");
    boot_until(&dir, "registered", &server, mac, "bootvault: this is PC newcomer");

    server.admin("pc", &["edit", "newcomer", "--mode", "local"]).expect("edit");
    let lines = boot_until(&dir, "local", &server, mac, "bootvault: powering off in 60 s");
    find_line(&lines, "PC newcomer is set to boot from its own media (mode local)");
}
