//! `make demo`: start a server, build a demo PC, boot it under QEMU with a
//! partitioned disk, show its console, and summarize what happened.

use std::time::Duration;

use bootvault_qemu_tests::*;

fn main() {
    if let Err(e) = demo() {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

fn demo() -> Result<()> {
    let dir = scratch("demo");
    let server = Server::start(&dir)?;
    println!("== server {} (data {})", server.url, server.data.display());
    let boot = dir.join("boot");
    print!("{}", build_pc(&boot, "demo-pc", &server.guest_url(), "qemu", &[])?);
    let disk = dir.join("disk.img");
    make_disk(&disk, 256, GPT_LAYOUT)?;
    println!("== booting demo-pc under QEMU ({}), disk {}", accel(), disk.display());
    std::env::set_var("BOOTVAULT_ECHO", "1");
    let mut vm = Guest::new(&boot).disk(&disk, "DEMO0001").boot(&dir.join("console.log"))?;
    let (_, lease) = vm.console.expect(" leased ", BOOT_TIMEOUT)?;
    let (answer, reached) = vm.console.expect("answered:", BOOT_TIMEOUT)?;
    vm.console.expect("reboot: Power down", BOOT_TIMEOUT)?;
    let off = vm.wait_exit(Duration::from_secs(30))?;
    let events = server.events();
    if !events.contains("hello pc=demo-pc") {
        return Err(format!("the server did not log demo-pc:\n{events}"));
    }
    println!("== summary");
    println!("  DHCP lease      {:>6.1} s after QEMU start", lease.as_secs_f64());
    println!("  server reached  {:>6.1} s: {}", reached.as_secs_f64(), answer.trim_start_matches("bootvault: "));
    println!("  powered off     {:>6.1} s", off.as_secs_f64());
    println!("  server log      {}", events.trim());
    println!("  console log     {}", dir.join("console.log").display());
    println!("demo OK");
    Ok(())
}

fn accel() -> &'static str {
    if std::env::var("BOOTVAULT_KVM").is_ok_and(|v| v == "1") {
        "KVM"
    } else {
        "TCG"
    }
}
