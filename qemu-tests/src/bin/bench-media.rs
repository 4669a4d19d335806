//! `make bench` (media part): what the boot media cost and how fast a PC
//! comes up from each, beside GRUB's `grub-mkrescue`, the ISO maker most
//! people would reach for, given the very same kernel, initramfs and
//! command line. Prints a Markdown report.
//!
//! Build times are wall-clock medians of five runs on the host; boot times
//! are medians of three QEMU boots, from QEMU's start to the init's line
//! with the server's answer and to QEMU's exit after power-off.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootvault_qemu_tests::*;

const BUILD_RUNS: usize = 5;

/// Makes the guest for one medium, afresh for each boot.
type MakeGuest<'a> = Box<dyn Fn() -> Guest + 'a>;
const BOOT_RUNS: usize = 3;

fn main() {
    if let Err(e) = bench() {
        eprintln!("bench-media failed: {e}");
        std::process::exit(1);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut t = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

fn size(p: &Path) -> Result<u64> {
    std::fs::metadata(p).map(|m| m.len()).map_err(|e| format!("{}: {e}", p.display()))
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / 1048576.0)
}

/// GRUB's hybrid BIOS+UEFI ISO of the same boot files.
fn grub_iso(boot: &Path, work: &Path, out: &Path) -> Result<()> {
    let tree = work.join("grub-tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("boot/grub")).map_err(|e| e.to_string())?;
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(boot.join(f), tree.join(f)).map_err(|e| format!("copying {f}: {e}"))?;
    }
    let cmdline = std::fs::read_to_string(boot.join("cmdline")).map_err(|e| e.to_string())?;
    std::fs::write(
        tree.join("boot/grub/grub.cfg"),
        format!(
            "set timeout=0\nmenuentry bootvault {{\n  linux /vmlinuz {}\n  initrd /initrd.img\n}}\n",
            cmdline.trim()
        ),
    )
    .map_err(|e| e.to_string())?;
    run(Command::new("grub-mkrescue").arg("-o").arg(out).arg(&tree)).map(|_| ())
}

struct Boot {
    answered: f64,
    off: f64,
}

fn boot_median(dir: &Path, tag: &str, guest: impl Fn() -> Guest) -> Result<Boot> {
    let (mut answered, mut off) = (Vec::new(), Vec::new());
    for i in 0..BOOT_RUNS {
        let mut vm = guest().boot(&dir.join(format!("console-{tag}-{i}.log")))?;
        let (_, a) = vm.console.expect("answered:", BOOT_TIMEOUT).map_err(|e| {
            // A boot loader's own complaint says more than the timeout.
            let said = vm.console.all().iter().find_map(|l| l.find("error:").map(|at| l[at..].trim().to_owned()));
            said.unwrap_or(e.lines().next().unwrap_or("").to_owned())
        })?;
        vm.console.expect("reboot: Power down", BOOT_TIMEOUT).map_err(|e| format!("{tag}: {e}"))?;
        let o = vm.wait_exit(Duration::from_secs(30))?;
        eprintln!("{tag} run {}: answered {:.2} s, off {:.2} s", i + 1, a.as_secs_f64(), o.as_secs_f64());
        answered.push(a.as_secs_f64());
        off.push(o.as_secs_f64());
    }
    Ok(Boot { answered: median(answered), off: median(off) })
}

fn bench() -> Result<()> {
    let dir = kept_scratch("bench-media");
    let server = Server::start(&dir)?;
    let pc = "bench-media";
    let mac = mac_for(pc);
    server.register(pc, &mac)?;
    let boot = dir.join("boot");
    build_for(&boot, pc, &server, "qemu", &["--media", "pxe,iso,usb", "--no-encryption", "--set", "action=job"])?;
    let iso = boot.join(format!("{pc}.iso"));
    let usb = boot.join(format!("{pc}-usb.img"));
    let grub = dir.join("grub.iso");

    // Build times: ours includes making the initramfs again; GRUB's starts
    // from the finished kernel and initramfs.
    let t_iso = timed(BUILD_RUNS, || {
        build_for(&boot, pc, &server, "qemu", &["--media", "iso", "--set", "action=job"]).map(|_| ())
    })?;
    let t_usb = timed(BUILD_RUNS, || {
        build_for(&boot, pc, &server, "qemu", &["--media", "usb", "--set", "action=job"]).map(|_| ())
    })?;
    let t_files = timed(BUILD_RUNS, || build_for(&boot, pc, &server, "qemu", &["--set", "action=job"]).map(|_| ()))?;
    let t_grub = timed(BUILD_RUNS, || grub_iso(&boot, &dir, &grub))?;
    let (s_iso, s_usb, s_grub) = (size(&iso)?, size(&usb)?, size(&grub)?);
    let s_files = size(&boot.join("vmlinuz"))? + size(&boot.join("initrd.img"))?;

    let vars = |tag: &str| dir.join(format!("vars-{tag}.fd"));
    let media: Vec<(&str, MakeGuest)> = vec![
        ("ISO, SeaBIOS", Box::new(|| Guest::new(&boot).boot_from(Medium::Cdrom(iso.clone())))),
        ("ISO, OVMF", Box::new(|| Guest::new(&boot).boot_from(Medium::Cdrom(iso.clone())).uefi(&vars("iso")))),
        ("GRUB ISO, SeaBIOS", Box::new(|| Guest::new(&boot).boot_from(Medium::Cdrom(grub.clone())))),
        ("GRUB ISO, OVMF", Box::new(|| Guest::new(&boot).boot_from(Medium::Cdrom(grub.clone())).uefi(&vars("grub")))),
        ("USB image, SeaBIOS", Box::new(|| Guest::new(&boot).boot_from(Medium::UsbStick(usb.clone())))),
        ("USB image, OVMF", Box::new(|| Guest::new(&boot).boot_from(Medium::UsbStick(usb.clone())).uefi(&vars("usb")))),
        ("network (iPXE), SeaBIOS", Box::new(|| net_guest(&boot, &server, &mac, None))),
        ("network (iPXE), OVMF", Box::new(|| net_guest(&boot, &server, &mac, Some(vars("net"))))),
        ("kernel + initrd given to QEMU (no firmware boot)", Box::new(|| Guest::new(&boot))),
    ];
    let mut rows = Vec::new();
    for (i, (name, guest)) in media.iter().enumerate() {
        // A medium that does not boot is a result, not the end of the run.
        rows.push((name, boot_median(&dir, &format!("m{i}"), guest)));
    }

    let accel = if std::env::var("BOOTVAULT_KVM").is_ok_and(|v| v == "1") { "KVM" } else { "TCG" };
    println!("### Boot media (profile qemu; builds on the host, boots under QEMU {accel}, q35, 256 MiB)\n");
    println!("| medium | size | build, median of {BUILD_RUNS} | size vs GRUB ISO | build time vs GRUB ISO |");
    println!("| --- | --- | --- | --- | --- |");
    println!("| kernel + initramfs (`build`, also `--media pxe`) | {} | {t_files:.2} s | | |", mib(s_files));
    println!(
        "| ISO (`--media iso`, incl. the initramfs) | {} | {t_iso:.2} s | {:.2}× | {:.2}× |",
        mib(s_iso),
        s_iso as f64 / s_grub as f64,
        t_iso / t_grub
    );
    println!("| USB image (`--media usb`, incl. the initramfs) | {} | {t_usb:.2} s | | |", mib(s_usb));
    let t_iso_step = t_iso - t_files;
    println!("| ISO step alone (ISO build − plain build) | | {t_iso_step:.2} s | | {:.2}× |", t_iso_step / t_grub);
    println!("| GRUB ISO (`grub-mkrescue`, same files) | {} | {t_grub:.2} s | 1.00× | 1.00× |", mib(s_grub));
    println!("\n| boots from | → server answered, median of {BOOT_RUNS} | → QEMU exit |");
    println!("| --- | --- | --- |");
    for (name, b) in &rows {
        match b {
            Ok(b) => println!("| {name} | {:.2} s | {:.2} s |", b.answered, b.off),
            Err(e) => println!("| {name} | does not boot: {e} | |"),
        }
    }
    Ok(())
}

fn net_guest(boot: &Path, server: &Server, mac: &str, vars: Option<PathBuf>) -> Guest {
    let mut g = Guest::new(boot).boot_from(Medium::Network(server.netboot_url()));
    g.mac = mac.to_owned();
    match vars {
        Some(v) => g.uefi(&v),
        None => g,
    }
}
