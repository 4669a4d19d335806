//! The life of PID 1: early mounts, configuration, coldplug, network,
//! disks, server, then finish (power off, reboot or rescue prompt).
//!
//! PID 1 must never die by accident (the kernel panics when it does): every
//! step returns a `Result`, fatal errors go through [`on_error`] (one line
//! naming what failed, a chance to open the rescue prompt on the console,
//! then the configured policy), and a panic hook powers off cleanly should
//! a bug slip through anyway.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bootvault_common::config::{Action, Config, Finish, Place, CMDLINE_PREFIX};
use bootvault_common::modules::Index;

use bootvault_engine::client::Client;

use crate::{coldplug, console, disks, early, jobs, net, sys};

/// Path of the per-PC configuration the builder embeds.
pub const CONFIG_PATH: &str = "/etc/bootvault.conf";

/// Prints one console line. Console write errors are ignored: there is
/// nobody to tell, and `println!` would panic.
pub fn say(msg: impl std::fmt::Display) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "bootvault: {msg}");
    let _ = out.flush();
}

fn say_block(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

// What the panic hook does, set once the configuration is known.
static PANIC_POLICY: AtomicU8 = AtomicU8::new(0); // 0 poweroff, 1 reboot
static PANIC_WAIT: AtomicU32 = AtomicU32::new(10);

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        say(format!("internal error: {info}"));
        let wait = PANIC_WAIT.load(Ordering::Relaxed).min(60);
        let reboot = PANIC_POLICY.load(Ordering::Relaxed) == 1;
        say(format!("{} in {wait} s", if reboot { "rebooting" } else { "powering off" }));
        std::thread::sleep(Duration::from_secs(u64::from(wait)));
        early::unmount_all();
        let e = sys::reboot(!reboot);
        say(e);
    }));
}

pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data filled by uname(2).
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid utsname to fill.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = u.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Loads the configuration from a root (the file) and a command line.
pub fn load_config(root: &Path, cmdline: &str) -> (Config, Vec<String>, bool) {
    let file_path = root.join(CONFIG_PATH.trim_start_matches('/'));
    let file = fs::read_to_string(&file_path).ok();
    let mut notes = Vec::new();
    if file.is_none() {
        notes.push(format!("no {} in the image; using defaults and the kernel command line", CONFIG_PATH));
    }
    let (config, problems) = Config::load(file.as_deref(), cmdline);
    let fatal = problems.iter().any(|p| p.fatal);
    notes
        .extend(problems.iter().map(|p| format!("{}{p}", if p.fatal { "config error: " } else { "config warning: " })));
    (config, notes, fatal)
}

/// Entry point when running as PID 1. Never returns.
pub fn main() -> ! {
    install_panic_hook();
    let mount_problems = early::mount_all();
    if let Err(e) = sys::attach_console("/dev/console") {
        // Keep going with whatever descriptors the kernel gave us.
        say(format!("console: {e}"));
    }
    say(format!("init {} starting on Linux {}", env!("CARGO_PKG_VERSION"), kernel_release()));
    for p in mount_problems {
        say(format!("warning: {p}"));
    }
    // The kernel's random generator may not be ready this early (no
    // RDRAND, as on old PCs and QEMU's default CPU): the first getrandom
    // then waits while the kernel gathers jitter entropy, about a second
    // under QEMU. Ask now, in the background, so that wait overlaps the
    // module loading and DHCP instead of delaying the TLS handshake and
    // the first sealed chunk.
    std::thread::spawn(|| {
        let mut one = [0u8; 1];
        let _ = bootvault_engine::lock::random_bytes(&mut one);
    });
    // Orphans re-parent to PID 1; reap them so they do not pile up.
    std::thread::spawn(|| loop {
        sys::reap_children();
        std::thread::sleep(Duration::from_secs(1));
    });

    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (config, notes, fatal) = load_config(Path::new("/"), &cmdline);
    for n in &notes {
        say(n);
    }
    PANIC_POLICY.store(u8::from(config.on_error == Finish::Reboot), Ordering::Relaxed);
    PANIC_WAIT.store(config.error_wait, Ordering::Relaxed);
    if let Err(e) = sys::sethostname(&config.pc) {
        say(format!("warning: {e}"));
    }
    say(format!("this is PC {}", config.pc));
    if let Ok(info) = fs::read_to_string("/proc/meminfo") {
        use bootvault_engine::memory::{parse_kb, SMALL_PC, SOCKET_BUFFER};
        let kb = |name| parse_kb(&info, name).map(bootvault_common::units::human_bytes).unwrap_or_default();
        say(format!("memory: {} in all, {} available", kb("MemTotal"), kb("MemAvailable")));
        // A small PC: no socket may buffer more than the engine counts for it.
        if parse_kb(&info, "MemTotal").is_some_and(|t| t < SMALL_PC) {
            for (knob, default) in [("tcp_rmem", 131_072), ("tcp_wmem", 16_384)] {
                let value = format!("4096 {default} {SOCKET_BUFFER}\n");
                if let Err(e) = fs::write(format!("/proc/sys/net/ipv4/{knob}"), value) {
                    say(format!("warning: capping {knob}: {e}"));
                }
            }
        }
    }

    let mut state = State::default();
    loop {
        let result = if fatal {
            Err(format!("bad configuration (see above); fix {CONFIG_PATH} or the {CMDLINE_PREFIX}* kernel parameters"))
        } else {
            run(&config, &mut state)
        };
        match result {
            Ok(chosen) => {
                say("done");
                if finish(&config, chosen.unwrap_or(config.finish), &mut state) == Next::Retry {
                    continue;
                }
            }
            Err(e) => {
                if on_error(&config, &e, &mut state) == Next::Retry {
                    continue;
                }
            }
        }
    }
}

/// What PID 1 found out along the way, kept for the rescue prompt.
#[derive(Default)]
struct State {
    modules_loaded: bool,
    lease: Option<net::Lease>,
}

/// Whether the action needs the server (`Some(true)`), can use it when
/// it answers (`Some(false)`: a local job reports its result there, the
/// console offers it), or has no use for it (`None`).
fn server_use(config: &Config) -> Option<bool> {
    let configured = config.server.is_some();
    match config.action {
        Action::Job | Action::Probe => Some(true),
        Action::Backup if config.dest == Place::Server => Some(true),
        Action::Restore if config.source == Place::Server => Some(true),
        Action::Backup | Action::Restore | Action::Menu => configured.then_some(false),
    }
}

/// Brings the PC up and does its action. Ok(Some) when the person at the
/// console chose how to finish.
fn run(config: &Config, state: &mut State) -> Result<Option<Finish>, String> {
    if !state.modules_loaded {
        load_modules(config);
        state.modules_loaded = true;
    }
    let needs = server_use(config);
    let mut disks_shown = false;
    let client = match needs {
        None => None,
        Some(needed) => match connect(config, state, &mut disks_shown) {
            Ok(c) => Some(c),
            Err(e) if !needed => {
                say(format!("{e}; going on without the server"));
                None
            }
            Err(e) => return Err(e),
        },
    };
    if !disks_shown {
        show_disks();
    }
    if config.action == Action::Menu {
        // An administrator's job for this PC comes first; otherwise the
        // person at the PC is asked.
        if let Some(client) = &client {
            if let Some(job) = jobs::server_job(config, client)? {
                say("job: the server has a job for this PC; running it instead of the menu");
                jobs::run_job(&job, config, Some(client))?;
                return Ok(None);
            }
        }
        return Ok(Some(match console::run(config, client.as_ref()) {
            console::Exit::Reboot => Finish::Reboot,
            console::Exit::Poweroff => Finish::Poweroff,
            console::Exit::Rescue => Finish::Rescue,
        }));
    }
    jobs::run(config, client.as_ref())?;
    Ok(None)
}

fn show_disks() {
    let disks = disks::probe(Path::new("/"));
    say(format!("disks: {} found", disks.len()));
    say_block(&disks::render(&disks));
}

/// Network, the disks, then the server's greeting: the client to use.
fn connect(config: &Config, state: &mut State, disks_shown: &mut bool) -> Result<Client, String> {
    if state.lease.is_none() {
        let lease = net::bring_up(Path::new("/"), config, &mut |m| say(format!("net: {m}")))
            .map_err(|e| format!("network: {e}"))?;
        say(format!("net: {lease}"));
        state.lease = Some(lease);
    }
    show_disks();
    *disks_shown = true;
    let Some(base) = &config.server else {
        return Err(format!("no server configured (set server in {CONFIG_PATH} or {CMDLINE_PREFIX}server=)"));
    };
    // An https:// server must show the certificate pinned when this PC
    // was built; config.rs refuses https:// without a pin.
    let client = Client::new(base, &config.pc, &config.token)
        .pinned(config.fingerprint)
        .on_fail_over(|from, to| say(format!("server: {from} did not answer; going on with {to}")));
    let (mac, addr) = match &state.lease {
        Some(l) => (bootvault_common::units::mac_string(l.link.mac), l.addr.to_string()),
        None => ("-".into(), "-".into()),
    };
    let asked = Instant::now();
    let answer = client
        .hello(&mac, &addr, Duration::from_secs(u64::from(config.server_timeout)), &mut |m| say(format!("server: {m}")))
        .map_err(|e| format!("server: {e}"))?;
    // The time to the first answer: TCP, the TLS handshake, one request.
    let how = if config.fingerprint.is_some() && client.base().starts_with("https://") { ", pinned TLS" } else { "" };
    say(format!("server: {} answered: {answer} ({} ms{how})", client.base(), asked.elapsed().as_millis()));
    Ok(client)
}

struct KernelLoader;

impl coldplug::Loader for KernelLoader {
    fn load(&mut self, _name: &str, path: &Path) -> Result<(), String> {
        sys::load_module(path)
    }
}

fn load_modules(config: &Config) {
    let release = kernel_release();
    let dir = Path::new("/lib/modules").join(&release);
    let read = |f: &str| fs::read_to_string(dir.join(f));
    let index = match (read("modules.dep"), read("modules.alias")) {
        (Ok(dep), Ok(alias)) => match Index::parse(&dep, &alias) {
            Ok(i) => i,
            Err(e) => {
                say(format!("modules: {}: {e}", dir.display()));
                return;
            }
        },
        _ => {
            say(format!(
                "modules: none for kernel {release} in the image ({} missing); relying on built-in drivers",
                dir.display()
            ));
            return;
        }
    };
    let start = Instant::now();
    let opts = coldplug::Options {
        modules_dir: dir,
        timeout: Duration::from_secs(u64::from(config.coldplug_timeout)),
        quiet: Duration::from_millis(1500),
    };
    let report = coldplug::coldplug(Path::new("/"), &index, &opts, &mut KernelLoader);
    say(format!(
        "modules: loaded {} in {:.2} s ({} rounds): {}",
        report.loaded.len(),
        start.elapsed().as_secs_f64(),
        report.rounds,
        report.loaded.join(" ")
    ));
    for (m, e) in &report.failed {
        say(format!("modules: failed to load {m}: {e}"));
    }
    if !report.missing.is_empty() {
        say(format!("modules: wanted but not in the image: {}", report.missing.join(" ")));
    }
    if report.timed_out {
        say(format!("modules: still finding devices after {} s; going on", config.coldplug_timeout));
    }
    let (listed, rest) = coldplug::summarize_unbound(&report.unbound);
    say(format!(
        "modules: {} devices have no driver{}",
        report.unbound.len(),
        if rest.is_empty() { String::new() } else { format!(" (by bus: {rest}; listed below: pci, usb, virtio)") }
    ));
    for line in &listed {
        say(format!("  no driver: {line}"));
    }
    if config.verbose {
        for (dev, alias) in report.unbound.iter().filter(|(d, a)| !listed.contains(&format!("{d} {a}"))) {
            say(format!("  no driver: {dev} {alias}"));
        }
    }
}

#[derive(PartialEq, Eq)]
enum Next {
    Retry,
}

fn finish_name(f: Finish) -> &'static str {
    match f {
        Finish::Poweroff => "powering off",
        Finish::Reboot => "rebooting",
        Finish::Rescue => "opening the rescue prompt",
    }
}

/// Carries out `what`. Returns only when the rescue prompt asks to retry.
fn finish(config: &Config, what: Finish, state: &mut State) -> Next {
    say(finish_name(what));
    match what {
        Finish::Rescue => rescue(config, state),
        Finish::Poweroff | Finish::Reboot => {
            early::unmount_all();
            let e = sys::reboot(what == Finish::Poweroff);
            say(format!("{e}; opening the rescue prompt"));
            rescue(config, state)
        }
    }
}

fn on_error(config: &Config, err: &str, state: &mut State) -> Next {
    say(format!("error: {err}"));
    if config.on_error == Finish::Rescue {
        return finish(config, Finish::Rescue, state);
    }
    say(format!(
        "press Enter within {} s for a rescue prompt; otherwise {}",
        config.error_wait,
        finish_name(config.on_error)
    ));
    if sys::wait_readable(0, (config.error_wait.saturating_mul(1000)).min(i32::MAX as u32) as i32) {
        let mut line = String::new();
        let _ = io::stdin().lock().read_line(&mut line);
        return finish(config, Finish::Rescue, state);
    }
    finish(config, config.on_error, state)
}

const RESCUE_HELP: &str = "commands: retry, disks, net, modules, config, cmdline, dmesg, reboot, poweroff, help\n";

/// A small prompt on the console for when things went wrong.
fn rescue(config: &Config, state: &mut State) -> Next {
    say_block(RESCUE_HELP);
    let stdin = io::stdin();
    loop {
        say_block("rescue> ");
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => {
                // No console input at all: nobody can answer; do not spin.
                say("no console input; powering off in 30 s");
                std::thread::sleep(Duration::from_secs(30));
                early::unmount_all();
                let e = sys::reboot(true);
                say(e);
                std::thread::sleep(Duration::from_secs(3600));
                continue;
            }
            Ok(_) => {}
        }
        match line.trim() {
            "" => {}
            "help" | "?" => say_block(RESCUE_HELP),
            "retry" => return Next::Retry,
            "disks" => say_block(&disks::render(&disks::probe(Path::new("/")))),
            "net" => match &state.lease {
                Some(l) => say(l),
                None => {
                    let links = net::links(Path::new("/"));
                    say(format!("no address yet; {} Ethernet links", links.len()));
                    for l in links {
                        say(format!("  {} carrier={}", l.name, net::has_carrier(Path::new("/"), &l.name)));
                    }
                }
            },
            "modules" => say_block(&fs::read_to_string("/proc/modules").unwrap_or_default()),
            "config" => say_block(&config.to_file()),
            "cmdline" => say_block(&fs::read_to_string("/proc/cmdline").unwrap_or_default()),
            "dmesg" => say_block(&dmesg_tail(40)),
            "reboot" => {
                finish(config, Finish::Reboot, state);
            }
            "poweroff" => {
                finish(config, Finish::Poweroff, state);
            }
            other => say(format!("unknown command {other:?}; type help")),
        }
    }
}

/// The last `n` kernel log lines, read non-blockingly from /dev/kmsg.
fn dmesg_tail(n: usize) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg") else {
        return "cannot open /dev/kmsg\n".into();
    };
    let mut lines = std::collections::VecDeque::new();
    let mut buf = vec![0u8; 8192];
    loop {
        use std::io::Read;
        match (&f).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                let rec = String::from_utf8_lossy(&buf[..k]);
                let msg = rec.split_once(';').map(|(_, m)| m).unwrap_or(&rec);
                lines.push_back(msg.lines().next().unwrap_or("").to_owned());
                if lines.len() > n {
                    lines.pop_front();
                }
            }
        }
    }
    lines.into_iter().map(|l| l + "\n").collect()
}
