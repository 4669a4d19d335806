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
