//! The PC's console on a VGA screen and a PS/2 keyboard, as on a real PC
//! with a monitor: keys are typed through QEMU's monitor and the text
//! screen is read back from video memory (`bootvault_qemu_tests::vga`).
//! The serial log only gets kernel messages here; every answer the test
//! waits for must appear on the screen.

use std::time::{Duration, Instant};

use bootvault_qemu_tests::vga::Monitor;
use bootvault_qemu_tests::*;

const STEP: Duration = Duration::from_secs(60);

/// Whether some row after a row equal to `typed` starts with `answer`.
fn answered(screen: &str, typed: &str, answer: &str) -> bool {
    let rows: Vec<&str> = screen.lines().collect();
    rows.iter().position(|r| *r == typed).is_some_and(|i| rows[i + 1..].iter().any(|r| r.starts_with(answer)))
}

/// A PC that cannot reach its server falls into the rescue prompt; a
/// person at the VGA console asks for help and powers it off.
#[test]
fn rescue_prompt_works_on_the_vga_console() {
    let dir = scratch("vga-rescue");
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let boot = dir.join("boot");
    build_pc(
        &boot,
        "vga-rescue",
        &format!("http://10.0.2.2:{port}"),
        "qemu",
        &["--set", "server_timeout=4", "--set", "on_error=rescue"],
    )
    .expect("build");
    let socket = dir.join("monitor.sock");
    let start = Instant::now();
    let mut vm = Guest::new(&boot).vga(&socket).boot(&dir.join("console.log")).expect("boots");
    let mut monitor = Monitor::connect(&socket, Duration::from_secs(20)).expect("monitor");

    let prompt = monitor.wait_screen("rescue>", BOOT_TIMEOUT).expect("rescue prompt on the screen");
    eprintln!("rescue prompt on the VGA screen after {:.1} s", start.elapsed().as_secs_f64());
    // Before typing: the prompt's own help, but no answer to a typed help.
    assert!(prompt.contains("bootvault: error: server:"), "the error is on the screen:\n{prompt}");
    assert!(!answered(&prompt, "rescue> help", "commands: retry"), "nothing typed yet:\n{prompt}");

    monitor.type_text("help\n").expect("type help");
    let screen = monitor
        .wait_screen_fn("help answered", STEP, |s| answered(s, "rescue> help", "commands: retry,"))
        .expect("help on the screen");
    eprintln!("--- VGA screen after help ---\n{screen}\n---");

    // The init's console is the VGA one: none of this went to the serial port.
    let serial = vm.console.all();
    assert!(!serial.iter().any(|l| l.contains("rescue>") || l.contains("bootvault:")), "{}", serial.join("\n"));

    monitor.type_text("poweroff\n").expect("type poweroff");
    vm.console.expect("reboot: Power down", STEP).expect("kernel message on the serial port");
    let t = vm.wait_exit(Duration::from_secs(30)).expect("qemu exits");
    eprintln!("powered off after {:.1} s", t.as_secs_f64());
}

/// The console menu on a VGA screen and a PS/2 keyboard: a person backs
/// the PC's disk up with the arrow keys and Enter only (no password), and
/// the server holds a complete backup of exactly that disk.
#[test]
fn a_backup_from_the_menu_on_the_vga_console() {
    let dir = scratch("vga-menu");
    let server = Server::start(&dir).expect("server");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, noise(41, 8 << 20)).expect("disk");
    let boot = dir.join("boot");
    build_for(&boot, "pc-vga", &server, "qemu", &["--set", "error_wait=1"]).expect("build");
    let socket = dir.join("monitor.sock");
    let mut vm = Guest::new(&boot).disk(&disk, "VGA00001").vga(&socket).boot(&dir.join("console.log")).expect("boots");
    let mut monitor = Monitor::connect(&socket, Duration::from_secs(20)).expect("monitor");

    let screen = monitor.wait_screen("What do you want to do?", BOOT_TIMEOUT).expect("menu on the screen");
    assert!(screen.contains("> 1) Back up a disk of this PC"), "{screen}");
    // Down, Up: the highlight moves and comes back; Enter takes it.
    monitor.sendkey("down").expect("down");
    monitor.wait_screen("> 2) Restore a backup onto this PC", STEP).expect("highlight moved");
    monitor.sendkey("up").expect("up");
    monitor.wait_screen("> 1) Back up a disk", STEP).expect("highlight back");
    monitor.sendkey("ret").expect("enter");
    monitor.wait_screen("Choose the disk to back up:", STEP).expect("disks");
    monitor.sendkey("ret").expect("enter");
    monitor.wait_screen("Choose where to store the backup:", STEP).expect("destination");
    monitor.sendkey("ret").expect("enter");
    monitor.wait_screen("Suggested: pc-vga-", STEP).expect("name");
    monitor.sendkey("ctrl-u").expect("clear");
    monitor.type_text("vga-test\n").expect("name");
    // No password: Enter twice.
    monitor.wait_screen("Password:", STEP).expect("password");
    monitor.sendkey("ret").expect("enter");
    monitor.wait_screen("The same password again:", STEP).expect("again");
    monitor.sendkey("ret").expect("enter");
    let summary = monitor.wait_screen("Start the backup", STEP).expect("summary");
    assert!(summary.contains("Name:        vga-test") && summary.contains("Password:    none"), "{summary}");
    monitor.sendkey("ret").expect("enter");
    let done = monitor.wait_screen("The backup is complete", STEP).expect("done");
    eprintln!("--- VGA screen ---\n{done}\n---");
    monitor.sendkey("down").expect("down");
    monitor.wait_screen("> 2) Power off", STEP).expect("power off highlighted");
    monitor.sendkey("ret").expect("enter");
    vm.wait_exit(Duration::from_secs(60)).expect("qemu exits");
    let events = server.events();
    assert!(events.contains("backup 1 of pc=pc-vga complete"), "{events}");
    // The backup is of this disk: restore it on the host and compare.
    let restored = dir.join("restored.img");
    std::fs::write(&restored, vec![0u8; 8 << 20]).expect("target");
    let token = server.token("pc-vga").expect("token");
    run(std::process::Command::new(bootvault_bin()).args(["restore", "--disk"]).arg(&restored).args([
        "--server",
        &server.url,
        "--fingerprint",
        &server.fingerprint,
        "--pc",
        "pc-vga",
        "--backup",
        "1",
        "--token",
        &token,
    ]))
    .expect("host restore");
    assert_eq!(compare_prefix(&disk, &restored, 8 << 20).expect("compare"), None, "the backup differs from the disk");
}
