//! The web console in a real browser (Debian's headless Chromium through
//! chromedriver): an admin signs in (a wrong password refused, then
//! rate-limited), approves three PCs that network-booted unknown under
//! QEMU, queues a backup job for one and watches its progress reach 100 %
//! on the dashboard, live, then queues a restore of that backup onto the
//! two others at once and watches both finish. The restored disks are
//! compared byte for byte. Screenshots of every page go to
//! `$BOOTVAULT_WEB_SHOTS` (docs/web/ holds the ones docs/WEB.md shows),
//! else to target/qemu-tests/web/shots.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bootvault_qemu_tests::webdriver::{Browser, ENTER, TAB};
use bootvault_qemu_tests::*;

const DISK_MIB: usize = 16;

fn add_admin(server: &Server, name: &str, password: &str) {
    let mut child = Command::new(bootvault_bin())
        .args(["admin", "--data"])
        .arg(&server.data)
        .args(["add", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("bootvault admin add");
    child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).expect("password");
    assert!(child.wait().expect("admin add").success());
}

/// Boots an unknown MAC by network until the server lists it as pending.
fn boot_unknown(dir: &Path, server: &Server, mac: &str) {
    let mut guest = Guest::new(&dir.join("unused")).boot_from(Medium::Network(server.netboot_url()));
    guest.mac = mac.to_owned();
    let _vm = guest.boot(&dir.join(format!("unknown-{}.log", mac.replace(':', "")))).expect("boots");
    let start = Instant::now();
    while !server.events().contains(&format!("netboot-unknown mac={mac}")) {
        assert!(start.elapsed() < BOOT_TIMEOUT, "{mac} never asked the server");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A PC booting by network with `disk`, to run its job and power off.
fn boot_pc(dir: &Path, server: &Server, mac: &str, disk: &Path, tag: &str) -> Running {
    let mut guest =
        Guest::new(&dir.join("unused")).boot_from(Medium::Network(server.netboot_url())).disk(disk, "WEB0001");
    guest.mac = mac.to_owned();
    guest.boot(&dir.join(format!("{tag}.log"))).expect("boots")
}

fn shots_dir() -> PathBuf {
    std::env::var_os("BOOTVAULT_WEB_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/qemu-tests/web/shots"))
}

/// Waits for the dashboard's row of `pc` to say it is done at 100 %.
fn wait_done(b: &Browser, pc: &str) -> String {
    let row = format!("#running tr[data-pc=\"{pc}\"]");
    let text = b.wait_text(&row, "100.0 %", BOOT_TIMEOUT * 2).unwrap_or_else(|e| panic!("{pc}: {e}"));
    b.wait_text(&format!("{row} td.step"), "done", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{pc}: {e}"));
    text
}

#[test]
fn the_console_in_a_browser_approves_backs_up_and_deploys_to_two_pcs() {
    let dir = scratch("web");
    let server = Server::start(&dir).expect("server");
    server.admin("settings", &["register-unknown", "yes"]).expect("settings");
    add_admin(&server, "ann", "correct horse battery");
    add_admin(&server, "eve", "eve's long password");
    // The site's network-boot template: one PC built for network boot.
    build_for(&dir.join("template"), "template", &server, "qemu", &["--media", "pxe", "--no-encryption"])
        .expect("build --media pxe");
    let macs = ["52:54:00:3e:00:0a", "52:54:00:3e:00:0b", "52:54:00:3e:00:0c"];
    for mac in macs {
        boot_unknown(&dir, &server, mac);
    }
    let shots = shots_dir();
    let console = format!("{}/admin/", server.url);
    let b = Browser::start().expect("browser");

    // Sign-in: a wrong password is refused, five make even the right one wait.
    b.go(&console).expect("open");
    assert!(b.url().expect("url").ends_with("/admin/sign-in"), "no session: to the sign-in page");
    b.screenshot(&shots.join("sign-in.png")).expect("shot");
    let sign_in = |name: &str, password: &str| {
        b.go(&format!("{}/admin/sign-in", server.url)).expect("open");
        b.type_into(&b.find("#name").expect("name"), name).expect("type");
        b.type_into(&b.find("#password").expect("password"), password).expect("type");
        b.click(&b.find("#sign-in").expect("button")).expect("click");
    };
    for _ in 0..5 {
        sign_in("eve", "not eve's password");
        b.wait_text("#signin-error", "wrong name or password", Duration::from_secs(10)).expect("refused");
    }
    sign_in("eve", "eve's long password");
    b.wait_text("#signin-error", "too many failed sign-ins", Duration::from_secs(10)).expect("rate-limited");
    b.screenshot(&shots.join("sign-in-limited.png")).expect("shot");
    // With the keyboard alone: the name field has the focus, Tab to the
    // password, Enter sends the form.
    b.go(&format!("{}/admin/sign-in", server.url)).expect("open");
    let focused = b.script("return document.activeElement.id").expect("focus");
    assert_eq!(focused.as_str(), Some("name"), "the sign-in page starts in the name field");
    b.type_into(&b.find("#name").expect("name"), &format!("ann{TAB}correct horse battery{ENTER}")).expect("keys");
    b.wait_text("h1", "Dashboard", Duration::from_secs(10)).expect("signed in");

    // Approve the three PCs that network-booted.
    b.go(&format!("{}/admin/pcs", server.url)).expect("pcs");
    for mac in macs {
        b.find(&format!("#pending-pcs tr[data-mac=\"{mac}\"]")).expect("pending row");
    }
    b.screenshot(&shots.join("pcs-pending.png")).expect("shot");
    for (mac, name) in macs.iter().zip(["web-a", "web-b", "web-c"]) {
        let row = format!("#pending-pcs tr[data-mac=\"{mac}\"]");
        b.type_into(&b.find(&format!("{row} input[name=name]")).expect("name field"), name).expect("type");
        b.click(&b.find(&format!("{row} button")).expect("approve")).expect("click");
        let note = b.wait_text(".note", &format!("PC {name} registered"), Duration::from_secs(10)).expect("approved");
        assert!(note.contains("network-boot files are ready"), "{note}");
    }
    b.screenshot(&shots.join("pcs.png")).expect("shot");

    // A backup job for web-a; the dashboard follows it live to 100 %.
    b.go(&format!("{}/admin/jobs", server.url)).expect("jobs");
    b.click(&b.find("input[name=pc][value=\"web-a\"]").expect("tick")).expect("click");
    b.type_into(&b.find("input[name=name]").expect("name"), "golden").expect("type");
    b.click(&b.find("#queue-jobs").expect("queue")).expect("click");
    b.wait_text(".note", "1 queued", Duration::from_secs(10)).expect("queued");
    b.screenshot(&shots.join("jobs.png")).expect("shot");
    b.go(&console).expect("dashboard");
    let source = dir.join("source.img");
    fs::write(&source, noise(77, DISK_MIB << 20)).expect("source disk");
    let mut a = boot_pc(&dir, &server, macs[0], &source, "backup-web-a");
    let row = wait_done(&b, "web-a");
    assert!(row.contains("backup (job 1)"), "{row}");
    b.screenshot(&shots.join("dashboard.png")).expect("shot");
    a.console.expect("reboot: Power down", BOOT_TIMEOUT).expect("web-a powers off");
    let _ = a.wait_exit(Duration::from_secs(30));

    // One image to two PCs at once.
    b.go(&format!("{}/admin/jobs", server.url)).expect("jobs");
    for pc in ["web-b", "web-c"] {
        b.click(&b.find(&format!("input[name=pc][value=\"{pc}\"]")).expect("tick")).expect("click");
    }
    b.script("document.getElementById('action').value = 'restore'; document.getElementById('backup').value = '1';")
        .expect("choose");
    b.click(&b.find("#queue-jobs").expect("queue")).expect("click");
    b.wait_text(".note", "2 queued", Duration::from_secs(10)).expect("queued");
    b.go(&console).expect("dashboard");
    let targets: Vec<PathBuf> = ["b", "c"].iter().map(|t| dir.join(format!("target-{t}.img"))).collect();
    let mut vms = Vec::new();
    for (mac, target) in macs[1..].iter().zip(&targets) {
        fs::File::create(target).and_then(|f| f.set_len((DISK_MIB << 20) as u64)).expect("blank disk");
        vms.push(boot_pc(&dir, &server, mac, target, &format!("restore-{mac}")));
    }
    for pc in ["web-b", "web-c"] {
        let row = wait_done(&b, pc);
        assert!(row.contains("restore (job"), "{row}");
    }
    b.screenshot(&shots.join("dashboard-restores.png")).expect("shot");
    for mut vm in vms {
        vm.console.expect("reboot: Power down", BOOT_TIMEOUT).expect("powers off");
        let _ = vm.wait_exit(Duration::from_secs(30));
    }
    for target in &targets {
        assert_eq!(
            compare_prefix(&source, target, (DISK_MIB << 20) as u64).expect("compare"),
            None,
            "{}",
            target.display()
        );
    }

    // What the admin sees afterwards: three jobs done, three results ok.
    for (page, shot) in [("backups", "backups.png"), ("history", "history.png"), ("jobs", "jobs-done.png")] {
        b.go(&format!("{}/admin/{page}", server.url)).expect("page");
        b.screenshot(&shots.join(shot)).expect("shot");
    }
    assert_eq!(b.find_all("#jobs tr[data-state=\"done\"]").expect("rows").len(), 3);
    b.go(&format!("{}/admin/pcs/web-a", server.url)).expect("pc page");
    b.screenshot(&shots.join("pc.png")).expect("shot");
    b.go(&format!("{}/admin/store", server.url)).expect("store");
    b.click(&b.find("#gc").expect("gc button")).expect("click");
    b.wait_text(".note", "garbage collected", Duration::from_secs(30)).expect("gc ran");
    b.screenshot(&shots.join("store.png")).expect("shot");
    b.go(&format!("{}/admin/history", server.url)).expect("history");
    let results = b.text(&b.find("#results").expect("results")).expect("text");
    assert_eq!(results.matches(" ok").count(), 3, "{results}");
    // Deleting asks first; saying no keeps the backup.
    b.go(&format!("{}/admin/backups", server.url)).expect("backups");
    b.click(&b.find("#backups tr[data-backup=\"1\"] button.danger").expect("delete")).expect("click");
    let asked = b.dismiss_dialog().expect("a question");
    assert!(asked.contains("Delete backup 1 of web-a?"), "{asked}");
    b.go(&format!("{}/admin/backups", server.url)).expect("backups");
    b.find("#backups tr[data-backup=\"1\"]").expect("still there");
    // On a phone's screen.
    b.resize(390, 844).expect("resize");
    b.go(&console).expect("dashboard");
    b.screenshot(&shots.join("dashboard-phone.png")).expect("shot");
    let overflow = b.script("return document.documentElement.scrollWidth > window.innerWidth").expect("width");
    assert_eq!(overflow.as_bool(), Some(false), "the dashboard fits a phone's width");
}

/// A PC's ISO from its console page (what the download link fetches, with
/// the admin's session), made from the network-boot template with the
/// PC's own settings: it boots on SeaBIOS as that PC and reaches the
/// server with its token. Without a session there is none.
#[test]
fn a_pcs_iso_from_the_console_boots_as_that_pc() {
    use bootvault_qemu_tests::console;
    let dir = scratch("web-iso");
    let server = Server::start(&dir).expect("server");
    add_admin(&server, "ann", "correct horse battery");
    build_for(&dir.join("template"), "template", &server, "qemu", &["--media", "pxe", "--no-encryption"])
        .expect("build --media pxe");
    server.register("iso-pc", &mac_for("iso-pc")).expect("register");
    let path = "/admin/pcs/iso-pc/media/iso";
    let (status, _, _) = console::request(server.port, "GET", path, &[], b"").expect("request");
    assert_eq!(status, 303, "no session, no media");
    let cookie = console::sign_in(server.port, "ann", "correct horse battery").expect("session");
    let (status, head, iso) =
        console::request(server.port, "GET", path, &[("cookie", &cookie)], b"").expect("download");
    assert_eq!(status, 200, "{head}");
    assert_eq!(console::header(&head, "content-disposition").as_deref(), Some("attachment; filename=\"iso-pc.iso\""));
    assert_eq!(console::header(&head, "content-length"), Some(iso.len().to_string()));
    assert!(iso.len() > 1 << 20 && &iso[0x8001..0x8006] == b"CD001", "an ISO 9660 image");
    let image = dir.join("iso-pc.iso");
    fs::write(&image, &iso).expect("write");
    assert!(server.events().contains("media-made pc=iso-pc kind=iso"));
    // No temporary files are left in the server's data directory.
    let left: Vec<_> = fs::read_dir(server.data.join("tmp")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    let mut guest = Guest::new(&dir.join("unused")).boot_from(Medium::Cdrom(image));
    guest.mac = mac_for("iso-pc");
    let vm = guest.boot(&dir.join("console.log")).expect("boots");
    vm.console.expect("bootvault: this is PC iso-pc", BOOT_TIMEOUT).expect("the PC's own settings");
    vm.console.expect("answered: bootvault-server", BOOT_TIMEOUT).expect("its token opens the server");
    drop(vm);
    assert!(server.events().contains("hello pc=iso-pc"), "{}", server.events());
}
