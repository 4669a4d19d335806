//! Harness for end-to-end tests: the real server, real boot files built by
//! the real builder, QEMU booting them, and expectations on the serial
//! console and on what the server saw.
//!
//! Artefacts are found through environment variables the Makefile sets
//! (`BOOTVAULT_BIN`, `BOOTVAULT_INIT`); without them, the workspace's
//! `target/` is searched. QEMU runs under TCG unless `BOOTVAULT_KVM=1`.
//! Every test starts its own server on 127.0.0.1 (port 0) and the guest
//! reaches it through user-mode networking's host alias 10.0.2.2; no
//! traffic leaves the machine.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod console;
pub mod drives;
pub mod mitm;
pub mod vga;
pub mod webdriver;

pub use drives::{
    copy_store_in, copy_store_out, fsck_drive, image_digest, locate_volume, make_drive, make_exfat_drive,
    make_ext4_drive, make_vfat_drive, repair_drive, store_listing, store_listing_dir, FsKind, StoreListing, Volume,
};

pub type Result<T> = std::result::Result<T, String>;

/// The workspace root (this crate lives in `qemu-tests/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_owned).unwrap_or_default()
}

pub fn bootvault_bin() -> PathBuf {
    std::env::var_os("BOOTVAULT_BIN").map(PathBuf::from).unwrap_or_else(|| workspace().join("target/release/bootvault"))
}

pub fn init_bin() -> PathBuf {
    std::env::var_os("BOOTVAULT_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/x86_64-unknown-linux-musl/init/init"))
}

/// The init for 32-bit PCs (`make init-i686`).
pub fn init_bin_i686() -> PathBuf {
    std::env::var_os("BOOTVAULT_INIT_I686")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/i686-unknown-linux-musl/init/init"))
}

/// A test's scratch directory under `target/qemu-tests/NAME`, emptied
/// first. Everything stays when the test fails, for the post-mortem. When
/// it passes, its files over 1 MiB (disk images, boot media) are removed as
/// its thread ends, and its logs and screens stay: a whole `make test` kept
/// 6.8 GB of images otherwise. `BOOTVAULT_KEEP_SCRATCH=1` keeps them all.
pub fn scratch(name: &str) -> PathBuf {
    let d = kept_scratch(name);
    if std::env::var_os("BOOTVAULT_KEEP_SCRATCH").is_none_or(|v| v != "1") {
        prune::on_pass(&d);
    }
    d
}

/// [`scratch`] kept whole: the demo's and the benches' output.
pub fn kept_scratch(name: &str) -> PathBuf {
    let d = workspace().join("target/qemu-tests").join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("creating a scratch directory");
    d
}

/// Large files of a passed test's scratch directory, removed when the
/// test's thread ends (libtest runs each test on a thread of its own); a
/// panic on that thread keeps them.
mod prune {
    use std::cell::{Cell, RefCell};
    use std::path::{Path, PathBuf};
    use std::sync::Once;

    const LARGE: u64 = 1 << 20;

    thread_local! {
        static PANICKED: Cell<bool> = const { Cell::new(false) };
        static DIRS: RefCell<Vec<Dir>> = const { RefCell::new(Vec::new()) };
    }

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            if !PANICKED.try_with(Cell::get).unwrap_or(true) {
                remove_large(&self.0);
            }
        }
    }

    pub fn on_pass(dir: &Path) {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let _ = PANICKED.try_with(|p| p.set(true));
                previous(info);
            }));
        });
        let _ = DIRS.try_with(|d| d.borrow_mut().push(Dir(dir.to_owned())));
    }

    pub(super) fn remove_large(dir: &Path) {
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                match e.metadata() {
                    Ok(m) if m.is_dir() => stack.push(e.path()),
                    Ok(m) if m.len() > LARGE => {
                        let _ = std::fs::remove_file(e.path());
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Runs a command to completion; error with its stderr on failure.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lines from a child's output, collected by a thread, with a full log.
pub struct Lines {
    rx: Receiver<String>,
    pub log: Arc<Mutex<Vec<String>>>,
    start: Instant,
    /// What else to say when a wait fails: the process's state and its
    /// stderr (for a QEMU guest that printed nothing).
    context: Option<(u32, Arc<Mutex<Vec<String>>>)>,
    /// QEMU's monitor, asked where the guest is when a wait times out.
    monitor: Option<PathBuf>,
}

impl Lines {
    fn spawn(
        reader: impl std::io::Read + Send + 'static,
        echo: Option<&'static str>,
        log_file: Option<PathBuf>,
    ) -> Lines {
        let (tx, rx) = channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut file = log_file.and_then(|p| fs::OpenOptions::new().create(true).append(true).open(p).ok());
            // Console output may not be valid UTF-8 (escape codes): lossy.
            let mut r = BufReader::new(reader);
            let mut buf = Vec::new();
            while let Ok(n) = r.read_until(b'\n', &mut buf) {
                if n == 0 {
                    break;
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                buf.clear();
                if let Some(tag) = echo {
                    eprintln!("{tag} {line}");
                }
                if let Some(f) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if let Ok(mut l) = log2.lock() {
                    l.push(line.clone());
                }
                // Nobody may be waiting (a stderr only logged): keep
                // draining the pipe all the same, or the writer would get
                // SIGPIPE at its next line.
                let _ = tx.send(line);
            }
        });
        Lines { rx, log, start: Instant::now(), context: None, monitor: None }
    }

    /// Failed waits also report process `pid`'s state and `stderr`'s lines.
    fn with_context(mut self, pid: u32, stderr: &Lines) -> Lines {
        self.context = Some((pid, stderr.log.clone()));
        self
    }

    /// The process's state and CPU time (from /proc), and its stderr.
    fn context(&self) -> String {
        let Some((pid, stderr)) = &self.context else { return String::new() };
        let state = match fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command's closing parenthesis: state is the
            // first, utime and stime the 12th and 13th (in clock ticks).
            Ok(stat) => {
                let rest: Vec<&str> =
                    stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
                let field = |i: usize| rest.get(i).copied().unwrap_or("?");
                format!("process {pid} state {}, CPU {} + {} ticks", field(0), field(11), field(12))
            }
            Err(_) => format!("process {pid} has exited"),
        };
        let err = stderr.lock().map(|l| l.join("\n")).unwrap_or_default();
        let guest = self.monitor.as_deref().map(guest_state).unwrap_or_default();
        format!("\n({state}; stderr: {}){guest}", if err.is_empty() { "nothing" } else { &err })
    }

    /// Waits for a line containing `needle`; returns it and the time since
    /// the process started.
    pub fn expect(&self, needle: &str, timeout: Duration) -> Result<(String, Duration)> {
        self.expect_fn(needle, timeout, |l| l.contains(needle))
    }

    pub fn expect_fn(&self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> Result<(String, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if f(&line) => return Ok((line, self.start.elapsed())),
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "the output ended after {:.1} s with no line with {what:?}; last lines:\n{}{}",
                        self.start.elapsed().as_secs_f64(),
                        self.tail(30),
                        self.context()
                    ))
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no line with {what:?} within {} s ({:.1} s since the start); last lines:\n{}{}",
                        timeout.as_secs(),
                        self.start.elapsed().as_secs_f64(),
                        self.tail(30),
                        self.context()
                    ))
                }
            }
        }
    }

    pub fn tail(&self, n: usize) -> String {
        let l = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        l[l.len().saturating_sub(n)..].join("\n")
    }

    pub fn all(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Where a guest is, from QEMU's monitor at `socket`: its run state and
/// its CPUs' instruction pointers and halt state (a guest that printed
/// nothing: stuck in the kernel, halted, or never started). Empty when
/// the monitor does not answer within a second.
fn guest_state(socket: &Path) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = s.write_all(b"info status\ninfo registers -a\n");
    let (mut out, mut buf, deadline) = (Vec::new(), [0u8; 4096], Instant::now() + Duration::from_secs(1));
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) if !out.is_empty() => break,
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&out);
    let wanted = ["VM status", "RIP=", "EIP=", "HLT=", "CPU#"];
    let lines: Vec<&str> =
        text.lines().map(str::trim).filter(|l| wanted.iter().any(|w| l.contains(w))).take(12).collect();
    if lines.is_empty() {
        return String::new();
    }
    format!("\nQEMU monitor:\n{}", lines.join("\n"))
}

/// A running `bootvault serve` on 127.0.0.1 with its own data directory,
/// speaking HTTPS with the certificate it made (plain HTTP on the same
/// port serves network-boot files only).
pub struct Server {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    pub port: u16,
    pub data: PathBuf,
    pub out: Lines,
    /// Its certificate's SHA-256, as `bootvault serve` printed it.
    pub fingerprint: String,
    /// Started with `--plain-http`.
    pub plain: bool,
    /// The environment its commands need too (the bucket's keys).
    pub env: Vec<(String, String)>,
}

impl Server {
    pub fn start(dir: &Path) -> Result<Server> {
        Server::start_with(dir, false)
    }

    /// A server speaking plain HTTP only (`--plain-http`): for comparing
    /// transports (`fingerprint` is then empty).
    pub fn start_plain(dir: &Path) -> Result<Server> {
        Server::start_with(dir, true)
    }

    fn start_with(dir: &Path, plain: bool) -> Result<Server> {
        Server::start_opts(dir, &ServerOpts { plain, ..ServerOpts::default() })
    }

    /// A server as `opts` says: its own data directory, other storage,
    /// another server's certificate.
    pub fn start_opts(dir: &Path, opts: &ServerOpts) -> Result<Server> {
        let plain = opts.plain;
        let data = dir.join(opts.name.as_deref().unwrap_or("server-data"));
        if let Some(other) = &opts.tls_of {
            // Servers sharing a database and a bucket show PCs one certificate.
            let to = data.join("tls");
            fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", to.display()))?;
            for f in fs::read_dir(other.join("tls")).map_err(|e| format!("{}/tls: {e}", other.display()))?.flatten() {
                fs::copy(f.path(), to.join(f.file_name())).map_err(|e| format!("{}: {e}", f.path().display()))?;
            }
        }
        let mut cmd = Command::new(bootvault_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(if plain { &["--plain-http"][..] } else { &[] })
            .args(&opts.args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("starting {}: {e}", bootvault_bin().display()))?;
        let stdout = child.stdout.take().ok_or("no server stdout")?;
        let log = format!("{}.log", opts.name.as_deref().unwrap_or("server"));
        let out = Lines::spawn(stdout, None, Some(dir.join(log)));
        let scheme = if plain { "http" } else { "https" };
        let (line, _) = out.expect(&format!("listening on {scheme}://127.0.0.1:"), Duration::from_secs(20))?;
        let port: u16 = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("no port in {line:?}"))?;
        let fingerprint = if plain {
            String::new()
        } else {
            let (line, _) = out.expect("certificate fingerprint ", Duration::from_secs(5))?;
            line.split("certificate fingerprint ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .ok_or_else(|| format!("no fingerprint in {line:?}"))?
                .to_owned()
        };
        let env = opts.env.clone();
        Ok(Server { child, url: format!("{scheme}://127.0.0.1:{port}"), port, data, out, fingerprint, plain, env })
    }

    /// `--server URL --fingerprint FP`: how the host CLI reaches it.
    pub fn cli(&self) -> Vec<String> {
        let mut args = vec!["--server".into(), self.url.clone()];
        if !self.plain {
            args.extend(["--fingerprint".into(), self.fingerprint.clone()]);
        }
        args
    }

    /// The URL the guest uses: user-mode networking's alias for the host.
    pub fn guest_url(&self) -> String {
        format!("{}://10.0.2.2:{}", if self.plain { "http" } else { "https" }, self.port)
    }

    /// The iPXE entry script as the guest reaches it (DHCP boot file
    /// name): plain HTTP, which iPXE speaks (docs/DESIGN.md "Transport").
    pub fn netboot_url(&self) -> String {
        format!("http://10.0.2.2:{}/boot/ipxe", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn events(&self) -> String {
        fs::read_to_string(self.data.join("events.log")).unwrap_or_default()
    }
}

/// How [`Server::start_opts`] starts a server.
#[derive(Debug, Clone, Default)]
pub struct ServerOpts {
    /// `--plain-http`.
    pub plain: bool,
    /// The data directory's name under the test's directory (and the log's
    /// name): `server-data` / `server.log` by default.
    pub name: Option<String>,
    /// More `serve` arguments (`--db URL`, `--store URL`).
    pub args: Vec<String>,
    /// Environment for the server (the bucket's endpoint and keys).
    pub env: Vec<(String, String)>,
    /// Another server's data directory whose certificate this one shows.
    pub tls_of: Option<PathBuf>,
}

/// A TCP proxy on 127.0.0.1 in front of a server whose bandwidth the test
/// sets while a guest uses it: slow enough that a person can cancel a
/// running backup or restore, or unlimited (0).
pub struct Throttle {
    pub port: u16,
    rate: Arc<std::sync::atomic::AtomicU64>,
}

impl Throttle {
    pub fn start(target_port: u16) -> Result<Throttle> {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("throttle: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let rate = Arc::new(AtomicU64::new(0));
        let rate2 = rate.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else { continue };
                let pipe = |mut from: TcpStream, mut to: TcpStream, rate: Arc<AtomicU64>| {
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let r = rate.load(Ordering::Relaxed);
                            if r > 0 {
                                std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else { continue };
                pipe(client, upstream, rate2.clone());
                pipe(u2, c2, rate2.clone());
            }
        });
        Ok(Throttle { port, rate })
    }

    /// Bytes per second in each direction; 0 = as fast as it goes.
    pub fn set_rate(&self, bytes_per_s: u64) {
        self.rate.store(bytes_per_s, std::sync::atomic::Ordering::Relaxed);
    }

    /// The URL a guest uses to reach the server through the throttle.
    pub fn guest_url(&self) -> String {
        format!("https://10.0.2.2:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A MAC for a PC name: locally administered, stable, distinct per name.
pub fn mac_for(name: &str) -> String {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("52:54:01:{:02x}:{:02x}:{:02x}", (h >> 16) as u8, (h >> 8) as u8, h as u8)
}

impl Server {
    /// Runs `bootvault SUBCOMMAND --data DATA ARGS...` against this
    /// server's data directory (the admin CLI).
    pub fn admin(&self, subcommand: &str, args: &[&str]) -> Result<String> {
        run(Command::new(bootvault_bin())
            .arg(subcommand)
            .arg("--data")
            .arg(&self.data)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v))))
    }

    /// Registers PC `name` with `mac` (unless it is registered already).
    pub fn register(&self, name: &str, mac: &str) -> Result<()> {
        if self.admin("pc", &["show", name]).is_ok() {
            return Ok(());
        }
        self.admin("pc", &["add", name, "--mac", mac]).map(|_| ())
    }

    /// The token of a registered PC.
    pub fn token(&self, name: &str) -> Result<String> {
        let out = self.admin("pc", &["show", name, "--token"])?;
        out.lines()
            .find_map(|l| l.strip_prefix("token").map(|t| t.trim().to_owned()))
            .ok_or_else(|| format!("no token line in {out:?}"))
    }
}

/// Builds a PC registered with `server` (registering it first, with
/// [`mac_for`] unless already registered): the real builder reads its
/// token and settings from the server's database.
pub fn build_for(out: &Path, name: &str, server: &Server, profile: &str, extra: &[&str]) -> Result<String> {
    server.register(name, &mac_for(name))?;
    let data = server.data.display().to_string();
    let mut args = vec!["--data", data.as_str()];
    args.extend_from_slice(extra);
    build_pc_env(out, name, &server.guest_url(), profile, &args, &server.env)
}

/// Builds one PC's boot files with the real builder.
pub fn build_pc(out: &Path, name: &str, server_url: &str, profile: &str, extra: &[&str]) -> Result<String> {
    build_pc_env(out, name, server_url, profile, extra, &[])
}

/// [`build_pc`] with more environment for the builder (the bucket's keys
/// of a `--data` directory on shared storage).
pub fn build_pc_env(
    out: &Path,
    name: &str,
    server_url: &str,
    profile: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> Result<String> {
    let mut cmd = Command::new(bootvault_bin());
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let i686 = extra.windows(2).any(|w| w == ["--arch", "i686"]);
    cmd.args(["build", name, "--server", server_url, "--profile", profile, "--console", "ttyS0,115200"])
        .arg("--init")
        .arg(if i686 { init_bin_i686() } else { init_bin() })
        .arg("--out")
        .arg(out)
        .args(["--set", "error_wait=5", "--set", "dhcp_timeout=60"])
        .args(extra);
    run(&mut cmd)
}

/// Which NIC and disk controller the virtual PC has.
#[derive(Clone, Copy, Debug)]
pub enum Hardware {
    /// virtio-net + virtio-blk on the q35 machine.
    Virtio,
    /// e1000 + a SATA disk on q35's AHCI controller.
    E1000Ahci,
    /// A 32-bit-only PC (`qemu-system-i386`, i440FX, an Atom N270, one
    /// core): an Intel 82540EM (e1000) NIC and IDE disks on the PIIX
    /// controller.
    Pc32,
}

/// What the guest boots from instead of `-kernel`/`-initrd` (the media of
/// `bootvault build --media`).
#[derive(Clone, Debug)]
pub enum Medium {
    /// An ISO in a SATA CD-ROM drive (q35's AHCI, last port).
    Cdrom(PathBuf),
    /// A raw disk image as a USB stick: usb-storage on a qemu-xhci
    /// controller, read-only.
    UsbStick(PathBuf),
    /// No medium: the first NIC's option ROM (QEMU's iPXE) boots from the
    /// network, fetching this URL (user-mode networking's `bootfile=`).
    Network(String),
    /// A floppy image (1.44 or 2.88 MB) in the first floppy drive,
    /// read-only.
    Floppy(PathBuf),
}

/// The guest's firmware.
#[derive(Clone, Debug)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    Bios,
    /// OVMF from Debian's `ovmf`; `vars` gets a fresh copy of its empty
    /// variable store at every boot (the firmware writes to it).
    Uefi { vars: PathBuf },
}

/// Debian's OVMF build (package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

pub struct Guest {
    pub boot: PathBuf,
    /// (image, serial, logical sector size).
    pub disks: Vec<(PathBuf, String, u32)>,
    pub memory_mib: u32,
    pub hardware: Hardware,
    pub mac: String,
    /// MACs of further NICs (same model, each on its own user network).
    pub extra_macs: Vec<String>,
    pub cmdline_extra: String,
    /// Boot from this medium, not from `boot`'s files.
    pub medium: Option<Medium>,
    pub firmware: Firmware,
    /// A VGA card and an HMP monitor on this unix socket (see [`vga`]).
    pub vga_monitor: Option<PathBuf>,
    /// Whether the PC has NICs at all ([`Guest::no_network`] clears it).
    pub network: bool,
    /// Writable USB mass-storage drives (image, serial), after the boot stick.
    pub usb_drives: Vec<(PathBuf, String)>,
    /// Writable SATA disks (image, serial) on q35's AHCI, whatever `hardware` is.
    pub sata_disks: Vec<(PathBuf, String)>,
    /// Every packet of the first NIC, both ways, into this pcap file
    /// (QEMU's `filter-dump`).
    pub dump: Option<PathBuf>,
}

impl Guest {
    pub fn new(boot: &Path) -> Guest {
        Guest {
            boot: boot.to_owned(),
            disks: Vec::new(),
            memory_mib: 256,
            hardware: Hardware::Virtio,
            mac: "52:54:00:b0:07:01".into(),
            extra_macs: Vec::new(),
            cmdline_extra: String::new(),
            medium: None,
            firmware: Firmware::Bios,
            vga_monitor: None,
            network: true,
            usb_drives: Vec::new(),
            sata_disks: Vec::new(),
            dump: None,
        }
    }

    /// Records the first NIC's traffic, both ways, into `pcap`.
    pub fn dump_traffic(mut self, pcap: &Path) -> Guest {
        self.dump = Some(pcap.to_owned());
        self
    }

    /// A PC without any NIC (no `-netdev`, no NIC `-device`).
    pub fn no_network(mut self) -> Guest {
        self.network = false;
        self
    }

    /// Adds a writable raw image as a USB drive: usb-storage (removable) on
    /// the qemu-xhci controller the boot stick also uses, never a boot
    /// device. Several may be added.
    pub fn usb_drive(mut self, image: &Path, serial: &str) -> Guest {
        self.usb_drives.push((image.to_owned(), serial.to_owned()));
        self
    }

    /// Adds a writable raw image as a SATA disk (ide-hd) on q35's AHCI, on
    /// the first port the disks and the CD-ROM leave free, whatever the
    /// hardware (a virtio PC can have a second, SATA disk).
    pub fn sata_disk(mut self, image: &Path, serial: &str) -> Guest {
        self.sata_disks.push((image.to_owned(), serial.to_owned()));
        self
    }

    /// The AHCI ports (`ide.N`, 0..6 on q35) for [`Guest::sata_disk`]'s
    /// disks: those the `E1000Ahci` disks (ports 0, 1, ...) and the CD-ROM
    /// (port 5) leave free, lowest first.
    fn sata_ports(&self) -> Result<Vec<usize>> {
        const AHCI_PORTS: usize = 6;
        let mut used = [false; AHCI_PORTS];
        if matches!(self.hardware, Hardware::E1000Ahci) {
            for i in 0..self.disks.len() {
                *used
                    .get_mut(i)
                    .ok_or_else(|| format!("{} disks: q35's AHCI has {AHCI_PORTS} ports", self.disks.len()))? = true;
            }
        }
        if matches!(self.medium, Some(Medium::Cdrom(_))) {
            used[AHCI_PORTS - 1] = true;
        }
        let free: Vec<usize> = (0..AHCI_PORTS).filter(|&p| !used[p]).collect();
        if free.len() < self.sata_disks.len() {
            return Err(format!(
                "{} SATA disks, but only {} of q35's {AHCI_PORTS} AHCI ports are free (disks and CD-ROM use the rest)",
                self.sata_disks.len(),
                free.len()
            ));
        }
        Ok(free[..self.sata_disks.len()].to_vec())
    }

    /// Boots from a medium (through the firmware and its boot loader)
    /// instead of handing QEMU the kernel and initramfs.
    pub fn boot_from(mut self, medium: Medium) -> Guest {
        self.medium = Some(medium);
        self
    }

    /// UEFI firmware (OVMF), its variable store kept at `vars`.
    pub fn uefi(mut self, vars: &Path) -> Guest {
        self.firmware = Firmware::Uefi { vars: vars.to_owned() };
        self
    }

    /// Adds a raw disk image with a serial number.
    pub fn disk(mut self, path: &Path, serial: &str) -> Guest {
        self.disks.push((path.to_owned(), serial.to_owned(), 512));
        self
    }

    /// Adds a disk with 4096-byte logical (and physical) sectors (virtio).
    pub fn disk_4k(mut self, path: &Path, serial: &str) -> Guest {
        self.disks.push((path.to_owned(), serial.to_owned(), 4096));
        self
    }

    pub fn hardware(mut self, h: Hardware) -> Guest {
        self.hardware = h;
        self
    }

    pub fn memory(mut self, mib: u32) -> Guest {
        self.memory_mib = mib;
        self
    }

    /// Adds a NIC after the first one.
    pub fn nic(mut self, mac: &str) -> Guest {
        self.extra_macs.push(mac.to_owned());
        self
    }

    /// A VGA text console as the init's console: `-vga std` (the display
    /// stays `none`), QEMU's human monitor listening on `monitor_socket`
    /// for [`vga::Monitor`], and [`vga::VGA_CMDLINE`] on the kernel
    /// command line. Kernel messages still reach the serial log.
    pub fn vga(mut self, monitor_socket: &Path) -> Guest {
        self.vga_monitor = Some(monitor_socket.to_owned());
        self
    }

    pub fn append(mut self, extra: &str) -> Guest {
        self.cmdline_extra = extra.to_owned();
        self
    }

    pub fn command(&self) -> Result<Command> {
        if !self.network && matches!(self.medium, Some(Medium::Network(_))) {
            return Err("a guest without a NIC cannot boot from the network".into());
        }
        let old = matches!(self.hardware, Hardware::Pc32);
        let mut c = Command::new(if old { "qemu-system-i386" } else { "qemu-system-x86_64" });
        let machine = if old { "pc" } else { "q35" };
        c.args(["-machine", machine, "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"]);
        if std::env::var("BOOTVAULT_KVM").is_ok_and(|v| v == "1") {
            c.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            c.args(["-accel", "tcg"]);
            if old {
                // 32-bit only, SSE2 (which ring's x86 code needs).
                c.args(["-cpu", "n270"]);
            }
        }
        c.args(["-m", &self.memory_mib.to_string(), "-smp", if old { "1" } else { "2" }]);
        if let Some(socket) = &self.vga_monitor {
            c.args(["-vga", "std", "-monitor", &format!("unix:{},server=on,wait=off", socket.display())]);
        }
        if let Firmware::Uefi { vars } = &self.firmware {
            fs::copy(OVMF_VARS, vars).map_err(|e| {
                format!("copying {OVMF_VARS} to {}: {e} (Debian package ovmf; make deps installs it)", vars.display())
            })?;
            c.args(["-drive", &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}")]);
            c.args(["-drive", &format!("if=pflash,format=raw,unit=1,file={}", vars.display())]);
        }
        let stick = matches!(self.medium, Some(Medium::UsbStick(_)));
        let usb_devices = usize::from(stick) + self.usb_drives.len();
        if usb_devices > 0 {
            // One controller for the stick and the drives; 4 USB 2 ports by default.
            let xhci = if usb_devices > 4 { "qemu-xhci,id=xhci,p2=15,p3=15" } else { "qemu-xhci,id=xhci" };
            c.args(["-device", xhci]);
        }
        match &self.medium {
            None => {
                let cmdline = fs::read_to_string(self.boot.join("cmdline"))
                    .map_err(|e| format!("reading {}/cmdline: {e}", self.boot.display()))?;
                let mut cmdline = format!("{} {}", cmdline.trim(), self.cmdline_extra).trim().to_owned();
                if self.vga_monitor.is_some() {
                    cmdline = format!("{cmdline} {}", vga::VGA_CMDLINE);
                }
                // For looking into a failure by hand, e.g. `loglevel=7`.
                if let Ok(extra) = std::env::var("BOOTVAULT_QEMU_APPEND") {
                    cmdline = format!("{cmdline} {extra}");
                }
                c.arg("-kernel").arg(self.boot.join("vmlinuz"));
                c.arg("-initrd").arg(self.boot.join("initrd.img"));
                c.args(["-append", &cmdline]);
            }
            Some(_) if !self.cmdline_extra.is_empty() => {
                return Err("a guest booting from a medium takes its command line from the medium, not append()".into())
            }
            Some(_) if self.vga_monitor.is_some() => {
                return Err("vga() sets the kernel command line; a guest booting from a medium has the medium's".into())
            }
            // bootindex=0: the firmware tries the medium first.
            Some(Medium::Cdrom(iso)) => {
                c.args(["-drive", &format!("file={},format=raw,media=cdrom,if=none,id=cd,readonly=on", iso.display())]);
                c.args(["-device", "ide-cd,drive=cd,bus=ide.5,bootindex=0"]);
            }
            Some(Medium::Network(_)) => {}
            Some(Medium::Floppy(image)) => {
                c.args(["-drive", &format!("file={},format=raw,if=none,id=fd,readonly=on", image.display())]);
                // A floppy drive takes no bootindex: the boot order does it.
                c.args(["-device", "floppy,unit=0,drive=fd", "-boot", "order=a"]);
            }
            Some(Medium::UsbStick(image)) => {
                c.args(["-drive", &format!("file={},format=raw,if=none,id=stick,readonly=on", image.display())]);
                c.args(["-device", "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0"]);
            }
        }
        // User-mode networking: DHCP from QEMU, host reachable as 10.0.2.2.
        let nic = match self.hardware {
            Hardware::Virtio => "virtio-net-pci",
            Hardware::E1000Ahci => "e1000",
            Hardware::Pc32 => "e1000",
        };
        // Booting from a medium, the NICs get no option ROM: the firmware
        // has nothing to network-boot with (no PXE detour, no traffic).
        // Network boot: the first NIC keeps QEMU's iPXE ROM and boots first.
        let rom = if self.medium.is_some() { ",romfile=" } else { "" };
        let macs = if self.network { std::iter::once(&self.mac).chain(&self.extra_macs).collect() } else { Vec::new() };
        for (i, mac) in macs.into_iter().enumerate() {
            let (netdev, device) = match &self.medium {
                Some(Medium::Network(url)) if i == 0 => {
                    (format!("user,id=n0,bootfile={url}"), format!("{nic},netdev=n0,mac={mac},bootindex=0"))
                }
                _ => (format!("user,id=n{i}"), format!("{nic},netdev=n{i},mac={mac}{rom}")),
            };
            c.args(["-netdev", &netdev, "-device", &device]);
            if let (0, Some(pcap)) = (i, &self.dump) {
                // maxlen: whole frames, not QEMU's 64 KiB default cut.
                c.args(["-object", &format!("filter-dump,id=dump0,netdev=n0,file={},maxlen=65536", pcap.display())]);
            }
        }
        for (i, (path, serial, sector)) in self.disks.iter().enumerate() {
            c.args(["-drive", &format!("file={},format=raw,if=none,id=d{i}", path.display())]);
            match self.hardware {
                Hardware::Virtio => c.args([
                    "-device",
                    &format!(
                        "virtio-blk-pci,drive=d{i},serial={serial},logical_block_size={sector},physical_block_size={sector}"
                    ),
                ]),
                Hardware::E1000Ahci => c.args(["-device", &format!("ide-hd,drive=d{i},bus=ide.{i},serial={serial}")]),
                Hardware::Pc32 => {
                    c.args(["-device", &format!("ide-hd,drive=d{i},bus=ide.{},unit={},serial={serial}", i / 2, i % 2)])
                }
            };
        }
        // Destination drives: writable, and no bootindex (the firmware never boots them).
        for (i, (path, serial)) in self.usb_drives.iter().enumerate() {
            c.args(["-drive", &format!("file={},format=raw,if=none,id=usb{i}", path.display())]);
            c.args(["-device", &format!("usb-storage,bus=xhci.0,drive=usb{i},removable=on,serial={serial}")]);
        }
        for (i, ((path, serial), port)) in self.sata_disks.iter().zip(self.sata_ports()?).enumerate() {
            c.args(["-drive", &format!("file={},format=raw,if=none,id=sata{i}", path.display())]);
            c.args(["-device", &format!("ide-hd,drive=sata{i},bus=ide.{port},serial={serial}")]);
        }
        Ok(c)
    }

    /// Boots the guest; console lines come through the returned handle.
    pub fn boot(&self, log_file: &Path) -> Result<Running> {
        let mut cmd = self.command()?;
        // A monitor for a failed wait to ask where the guest is (a short
        // path: a unix socket's name has room for 107 bytes).
        static GUESTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = GUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let monitor = std::env::temp_dir().join(format!("bv-mon-{}-{n}.sock", std::process::id()));
        let _ = fs::remove_file(&monitor);
        cmd.args(["-monitor", &format!("unix:{},server=on,wait=off", monitor.display())]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
        let stdout = child.stdout.take().ok_or("no qemu stdout")?;
        let stderr = child.stderr.take().ok_or("no qemu stderr")?;
        let echo = std::env::var("BOOTVAULT_ECHO").is_ok().then_some("guest|");
        let stderr = Lines::spawn(stderr, Some("qemu-stderr|"), None);
        let mut console = Lines::spawn(stdout, echo, Some(log_file.to_owned())).with_context(child.id(), &stderr);
        console.monitor = Some(monitor.clone());
        Ok(Running { child, console, monitor })
    }
}

pub struct Running {
    child: Child,
    pub console: Lines,
    /// The monitor socket [`Guest::boot`] made (removed with the guest).
    monitor: PathBuf,
}

impl Running {
    /// Types a line on the guest's serial console.
    pub fn send(&mut self, line: &str) -> Result<()> {
        self.keys(&format!("{line}\n"))
    }

    /// Types raw bytes (Ctrl-C is `\x03`, Ctrl-U `\x15`, Esc `\x1b`), no Enter.
    pub fn keys(&mut self, bytes: &str) -> Result<()> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().ok_or("no qemu stdin")?;
        stdin.write_all(bytes.as_bytes()).map_err(|e| format!("typing {bytes:?}: {e}"))?;
        stdin.flush().map_err(|e| format!("typing {bytes:?}: {e}"))
    }

    /// Waits for QEMU to exit (the guest powered off); returns the time
    /// since start.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(self.console.start.elapsed()),
                Ok(Some(status)) => {
                    return Err(format!("qemu exited with {status}; last lines:\n{}", self.console.tail(30)))
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Ok(None) => {
                    return Err(format!(
                        "guest still running after {} s; last lines:\n{}",
                        timeout.as_secs(),
                        self.console.tail(30)
                    ))
                }
                Err(e) => return Err(format!("waiting for qemu: {e}")),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.monitor);
    }
}

/// The first console line containing `needle`; panics with the whole
/// console otherwise (for tests, after the guest has finished).
pub fn find_line<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no console line with {needle:?}:\n{}", lines.join("\n")))
}

/// Generous bounds: TCG is slow, and CI machines are busy.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Creates a raw disk image of `mib` MiB partitioned by an `sfdisk` script.
pub fn make_disk(path: &Path, mib: u64, sfdisk_script: &str) -> Result<()> {
    let f = fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.set_len(mib * 1024 * 1024).map_err(|e| format!("sizing {}: {e}", path.display()))?;
    drop(f);
    let mut child = Command::new("sfdisk")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg("-q")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting sfdisk: {e}"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().ok_or("no sfdisk stdin")?;
        stdin.write_all(sfdisk_script.as_bytes()).map_err(|e| format!("writing to sfdisk: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("sfdisk: {e}"))?;
    if !out.status.success() {
        return Err(format!("sfdisk {}: {}", path.display(), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// The GPT layout used by the tests and the demo: 256 MiB disk.
pub const GPT_LAYOUT: &str = "label: gpt\nunit: sectors\n\
    start=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"\n\
    start=67584, size=131072, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n\
    start=198656, size=262144, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=\"data\"\n";

/// The MBR layout: 64 MiB disk, two primaries, an extended with two logicals.
pub const MBR_LAYOUT: &str = "label: dos\nunit: sectors\n\
    start=2048, size=20480, type=c, bootable\n\
    start=22528, size=40960, type=83\n\
    start=63488, size=61440, type=5\n\
    start=65536, size=20480, type=83\n\
    start=88064, size=30720, type=82\n";

/// Deterministic pseudo-random bytes, for file contents.
pub use bootvault_common::testdata::noise;

/// Writes `data` into `image` at `offset` without truncating it.
pub fn write_at(image: &Path, offset: u64, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(image).map_err(|e| format!("opening {}: {e}", image.display()))?;
    f.write_all_at(data, offset).map_err(|e| format!("writing {}: {e}", image.display()))
}

/// Partition layout of the source disks: 96 MiB, a FAT32 partition of
/// 40 MiB at 1 MiB and an ext4 partition of 48 MiB at 41 MiB, the rest
/// unallocated.
pub const SOURCE_MIB: u64 = 96;
const FAT_START: u64 = 2048;
const FAT_SECTORS: u64 = 81920;
const EXT4_START: u64 = 83968;
const EXT4_SECTORS: u64 = 98304;

/// Builds a source disk with a real layout: `label` is `gpt` or `dos`;
/// FAT32 with files (mkfs.vfat + mcopy), ext4 with files of mixed
/// compressibility (mkfs.ext4 -d), and bytes in the gap after the
/// partition table (where boot loaders live).
pub fn make_source_disk(dir: &Path, label: &str) -> Result<PathBuf> {
    let disk = dir.join(format!("source-{label}.img"));
    let (fat_type, ext_type) = if label == "gpt" { ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "L") } else { ("c", "83") };
    make_disk(
        &disk,
        SOURCE_MIB,
        &format!(
            "label: {label}\nunit: sectors\nstart={FAT_START}, size={FAT_SECTORS}, type={fat_type}\nstart={EXT4_START}, size={EXT4_SECTORS}, type={ext_type}\n"
        ),
    )?;
    // Files: text (compressible), noise (not), and zeros.
    let files = dir.join(format!("files-{label}"));
    let _ = fs::remove_dir_all(&files);
    fs::create_dir_all(files.join("docs")).map_err(|e| e.to_string())?;
    let text: String = (0..40_000).map(|i| format!("line {i} of a very compressible text file\n")).collect();
    fs::write(files.join("docs/readme.txt"), &text).map_err(|e| e.to_string())?;
    fs::write(files.join("random.bin"), noise(7, 6 << 20)).map_err(|e| e.to_string())?;
    fs::write(files.join("zeros.bin"), vec![0u8; 2 << 20]).map_err(|e| e.to_string())?;
    let ext4 = dir.join(format!("ext4-{label}.img"));
    let _ = fs::remove_file(&ext4);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "bvroot", "-E", "root_owner=0:0", "-d"])
        .arg(&files)
        .arg(&ext4)
        .arg("48M"))?;
    let fat = dir.join(format!("fat-{label}.img"));
    let _ = fs::remove_file(&fat);
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-s", "1", "-n", "BVFAT", "-C"])
        .arg(&fat)
        .arg((FAT_SECTORS / 2).to_string()))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&fat)
        .arg("-s")
        .arg(files.join("docs"))
        .arg(files.join("random.bin"))
        .arg("::/"))?;
    write_at(&disk, FAT_START * 512, &fs::read(&fat).map_err(|e| e.to_string())?)?;
    write_at(&disk, EXT4_START * 512, &fs::read(&ext4).map_err(|e| e.to_string())?)?;
    // A "boot loader" in the gap between the table and the first partition.
    write_at(&disk, 40 * 512, &noise(11, 64 * 1024))?;
    Ok(disk)
}

/// Checks the filesystems inside a restored disk image with their own
/// tools: e2fsck -fn on the ext4 partition, fsck.vfat -n on the FAT one.
pub fn fsck_partitions(disk: &Path, dir: &Path) -> Result<()> {
    let bytes = fs::read(disk).map_err(|e| e.to_string())?;
    let part = |start: u64, sectors: u64| bytes[(start * 512) as usize..((start + sectors) * 512) as usize].to_vec();
    let ext4 = dir.join("check-ext4.img");
    fs::write(&ext4, part(EXT4_START, EXT4_SECTORS)).map_err(|e| e.to_string())?;
    run(Command::new("e2fsck").arg("-fn").arg(&ext4))?;
    let fat = dir.join("check-fat.img");
    fs::write(&fat, part(FAT_START, FAT_SECTORS)).map_err(|e| e.to_string())?;
    run(Command::new("fsck.vfat").arg("-n").arg(&fat))?;
    Ok(())
}

/// Deletes files full of `marker` from both filesystems of a source disk
/// made by [`make_source_disk`]: written, then deleted, so their bytes
/// stay in the free space, as on a disk that has been used.
pub fn add_deleted_files(disk: &Path, dir: &Path, marker: &str) -> Result<()> {
    let body = marker.repeat(300_000 / marker.len().max(1));
    let file = dir.join("deleted-marker.dat");
    fs::write(&file, &body).map_err(|e| e.to_string())?;
    let bytes = fs::read(disk).map_err(|e| e.to_string())?;
    let part = |start: u64, sectors: u64| bytes[(start * 512) as usize..((start + sectors) * 512) as usize].to_vec();
    let fat = dir.join("deleted-fat.img");
    fs::write(&fat, part(FAT_START, FAT_SECTORS)).map_err(|e| e.to_string())?;
    run(Command::new("mcopy").arg("-i").arg(&fat).arg(&file).arg("::/gone.dat"))?;
    run(Command::new("mdel").arg("-i").arg(&fat).arg("::/gone.dat"))?;
    let ext4 = dir.join("deleted-ext4.img");
    fs::write(&ext4, part(EXT4_START, EXT4_SECTORS)).map_err(|e| e.to_string())?;
    run(Command::new("debugfs").args(["-w", "-R"]).arg(format!("write {} gone.dat", file.display())).arg(&ext4))?;
    run(Command::new("debugfs").args(["-w", "-R", "rm gone.dat"]).arg(&ext4))?;
    // debugfs leaves the summary counts to the checker, as an unmount would.
    let _ = Command::new("e2fsck").arg("-fy").arg(&ext4).output();
    write_at(disk, FAT_START * 512, &fs::read(&fat).map_err(|e| e.to_string())?)?;
    write_at(disk, EXT4_START * 512, &fs::read(&ext4).map_err(|e| e.to_string())?)?;
    Ok(())
}

/// Checks that every file [`make_source_disk`] put on the disk reads back
/// from a restored disk with the same bytes (a file-identical restore),
/// through mtools and debugfs.
pub fn check_files(disk: &Path, dir: &Path, label: &str) -> Result<()> {
    let files = dir.join(format!("files-{label}"));
    let bytes = fs::read(disk).map_err(|e| e.to_string())?;
    let part = |start: u64, sectors: u64| bytes[(start * 512) as usize..((start + sectors) * 512) as usize].to_vec();
    let fat = dir.join("files-fat.img");
    fs::write(&fat, part(FAT_START, FAT_SECTORS)).map_err(|e| e.to_string())?;
    let ext4 = dir.join("files-ext4.img");
    fs::write(&ext4, part(EXT4_START, EXT4_SECTORS)).map_err(|e| e.to_string())?;
    let out = dir.join("file-out.bin");
    for (name, on_fat) in [("docs/readme.txt", true), ("random.bin", true), ("zeros.bin", false)] {
        let want = fs::read(files.join(name)).map_err(|e| e.to_string())?;
        if on_fat {
            let _ = fs::remove_file(&out);
            run(Command::new("mcopy").arg("-n").arg("-i").arg(&fat).arg(format!("::/{name}")).arg(&out))?;
            if fs::read(&out).map_err(|e| e.to_string())? != want {
                return Err(format!("{name} on the FAT partition differs"));
            }
        }
        let _ = fs::remove_file(&out);
        run(Command::new("debugfs").arg("-R").arg(format!("dump /{name} {}", out.display())).arg(&ext4))?;
        if fs::read(&out).map_err(|e| e.to_string())? != want {
            return Err(format!("{name} on the ext4 partition differs"));
        }
    }
    Ok(())
}

/// Whether `needle` occurs in the file at `path`.
pub fn file_contains(path: &Path, needle: &str) -> Result<bool> {
    let b = fs::read(path).map_err(|e| e.to_string())?;
    Ok(b.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// Whether the first `len` bytes of two files are equal; the offset of
/// the first difference otherwise.
pub fn compare_prefix(a: &Path, b: &Path, len: u64) -> Result<Option<u64>> {
    let x = fs::read(a).map_err(|e| format!("reading {}: {e}", a.display()))?;
    let y = fs::read(b).map_err(|e| format!("reading {}: {e}", b.display()))?;
    let n = len as usize;
    if x.len() < n || y.len() < n {
        return Err(format!("{} or {} is shorter than {len} bytes", a.display(), b.display()));
    }
    Ok(x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q).map(|p| p as u64))
}

/// The screens a person saw on a console, rebuilt from its log: each clear
/// (`ESC[H ESC[2J`) starts a screen; cursor positioning, erase to end of
/// line, backspace and attributes are applied as an 80x25 terminal would.
/// Kernel lines printed on top of a screen are left in, as a person would
/// see them.
pub fn screens(lines: &[String]) -> Vec<String> {
    const CLEAR: &str = "\x1b[H\x1b[2J";
    let text = lines.join("\n");
    let mut out = Vec::new();
    for chunk in text.split(CLEAR).skip(1) {
        let mut grid: Vec<Vec<char>> = vec![Vec::new(); 25];
        let (mut row, mut col) = (0usize, 0usize);
        let mut chars = chunk.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\x1b' if chars.peek() == Some(&'[') => {
                    chars.next();
                    let mut params = String::new();
                    let mut fin = ' ';
                    for p in chars.by_ref() {
                        if p.is_ascii_digit() || p == ';' {
                            params.push(p);
                        } else {
                            fin = p;
                            break;
                        }
                    }
                    let nums: Vec<usize> = params.split(';').map(|n| n.parse().unwrap_or(1)).collect();
                    match fin {
                        'H' => {
                            row = nums.first().copied().unwrap_or(1).saturating_sub(1).min(24);
                            col = nums.get(1).copied().unwrap_or(1).saturating_sub(1);
                        }
                        'K' => grid[row].truncate(col),
                        _ => {}
                    }
                }
                '\n' => {
                    col = 0;
                    if row == 24 {
                        grid.remove(0);
                        grid.push(Vec::new());
                    } else {
                        row += 1;
                    }
                }
                '\r' => col = 0,
                '\x08' => col = col.saturating_sub(1),
                c if !c.is_control() && col < 80 => {
                    let line = &mut grid[row];
                    while line.len() < col {
                        line.push(' ');
                    }
                    if col < line.len() {
                        line[col] = c;
                    } else {
                        line.push(c);
                    }
                    col += 1;
                }
                _ => {}
            }
        }
        let mut rows: Vec<String> = grid.iter().map(|l| l.iter().collect::<String>().trim_end().to_owned()).collect();
        while rows.last().is_some_and(|r| r.is_empty()) {
            rows.pop();
        }
        out.push(rows.join("\n"));
    }
    out
}

/// Bytes of every file below `p` (a store's chunks), for the benchmarks.
pub fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A passed test's scratch directory loses its large files and keeps
    /// its logs; a failed one keeps everything.
    #[test]
    fn scratch_keeps_logs_and_drops_images_of_passed_tests() {
        let run = |name: &'static str, fail: bool| {
            std::thread::spawn(move || {
                let d = scratch(name);
                fs::write(d.join("console.log"), "bootvault: done\n").expect("log");
                fs::create_dir_all(d.join("sub")).expect("sub");
                fs::File::create(d.join("sub/disk.img")).and_then(|f| f.set_len(64 << 20)).expect("image");
                assert!(!fail, "the test failed (on purpose)");
                d
            })
            .join()
        };
        let passed = run("scratch-passed", false).expect("passes");
        assert!(passed.join("console.log").is_file());
        assert!(!passed.join("sub/disk.img").exists(), "a passed test's image is removed");
        assert!(run("scratch-failed", true).is_err());
        let failed = workspace().join("target/qemu-tests/scratch-failed");
        assert!(failed.join("sub/disk.img").is_file(), "a failed test keeps its image");
        let _ = fs::remove_dir_all(&failed);
        let _ = fs::remove_dir_all(&passed);
    }

    #[test]
    fn screens_are_rebuilt_like_a_terminal() {
        let log: Vec<String> = [
            "boot noise",
            "\x1b[H\x1b[2Jtitle",
            "> ab\x08 \x08c",
            "\x1b[H\x1b[2Jsecond",
            "[###...]  10%\x1b[K",
            "\x1b[2;1H[######]  100%\x1b[K",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(screens(&log), vec!["title\n> ac".to_owned(), "second\n[######]  100%".to_owned()]);
    }

    fn args(g: &Guest) -> Result<Vec<String>> {
        Ok(g.command()?.get_args().map(|a| a.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn destination_drives_share_the_usb_controller_and_take_free_ahci_ports() {
        let p = Path::new;
        let g = Guest::new(p("/boot"))
            .boot_from(Medium::UsbStick(p("/stick.img").to_owned()))
            .no_network()
            .usb_drive(p("/a.img"), "USB-A")
            .usb_drive(p("/b.img"), "USB-B")
            .sata_disk(p("/c.img"), "SATA-C");
        let a = args(&g).expect("a command");
        assert_eq!(a.iter().filter(|x| x.starts_with("qemu-xhci")).count(), 1, "{a:?}");
        assert!(!a.iter().any(|x| x == "-netdev" || x.contains("virtio-net") || x.contains("e1000")), "{a:?}");
        assert!(a.contains(&"usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0".to_owned()), "{a:?}");
        assert!(a.contains(&"usb-storage,bus=xhci.0,drive=usb1,removable=on,serial=USB-B".to_owned()), "{a:?}");
        assert!(a.contains(&"file=/a.img,format=raw,if=none,id=usb0".to_owned()), "writable: {a:?}");
        assert!(a.contains(&"ide-hd,drive=sata0,bus=ide.0,serial=SATA-C".to_owned()), "{a:?}");
        assert_eq!(a.iter().filter(|x| x.contains("bootindex")).count(), 1, "only the stick boots: {a:?}");

        // E1000Ahci disks hold ports 0 and 1, the CD port 5: ports 2, 3, 4 are left.
        let sata = |g: Guest, n: usize| (0..n).fold(g, |g, i| g.sata_disk(p("/s.img"), &format!("S{i}")));
        let g = Guest::new(p("/boot"))
            .hardware(Hardware::E1000Ahci)
            .boot_from(Medium::Cdrom(p("/cd.iso").to_owned()))
            .disk(p("/d0.img"), "D0")
            .disk(p("/d1.img"), "D1");
        let a = args(&sata(g, 3)).expect("a command");
        for (i, port) in [(0, 2), (1, 3), (2, 4)] {
            assert!(a.contains(&format!("ide-hd,drive=sata{i},bus=ide.{port},serial=S{i}")), "{a:?}");
        }
        let g = Guest::new(p("/boot"))
            .hardware(Hardware::E1000Ahci)
            .boot_from(Medium::Cdrom(p("/cd.iso").to_owned()))
            .disk(p("/d0.img"), "D0")
            .disk(p("/d1.img"), "D1");
        assert!(args(&sata(g, 4)).is_err_and(|e| e.contains("AHCI")));
        assert!(args(&Guest::new(p("/boot")).boot_from(Medium::Network("x".into())).no_network()).is_err());
    }

    /// A wait that fails says whether the process ended and what it said
    /// on stderr; a stderr nobody waits on is still drained (a writer
    /// whose reader stopped would die of SIGPIPE).
    #[test]
    fn failed_waits_say_what_the_process_did() {
        let script = "echo up; for i in $(seq 1 2000); do echo warning $i >&2; done; echo still here; exit 3";
        let mut child =
            Command::new("sh").args(["-c", script]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("sh");
        let stderr = Lines::spawn(child.stderr.take().expect("stderr"), None, None);
        let out = Lines::spawn(child.stdout.take().expect("stdout"), None, None).with_context(child.id(), &stderr);
        let err_log = stderr.log.clone();
        drop(stderr);
        out.expect("up", Duration::from_secs(10)).expect("first line");
        out.expect("still here", Duration::from_secs(10)).expect("not killed by SIGPIPE");
        assert_eq!(child.wait().expect("wait").code(), Some(3));
        // The reader may still be taking the last lines the process wrote.
        let deadline = Instant::now() + Duration::from_secs(10);
        while err_log.lock().map(|l| l.len()).unwrap_or(0) < 2000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let e = out.expect("never", Duration::from_secs(10)).unwrap_err();
        assert!(e.starts_with("the output ended after"), "{e}");
        assert!(e.contains("has exited") && e.contains("warning 2000"), "{e}");

        let mut child =
            Command::new("sleep").arg("30").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("sleep");
        let stderr = Lines::spawn(child.stderr.take().expect("stderr"), None, None);
        let out = Lines::spawn(child.stdout.take().expect("stdout"), None, None).with_context(child.id(), &stderr);
        let e = out.expect("never", Duration::from_millis(300)).unwrap_err();
        assert!(e.starts_with("no line with \"never\" within 0 s"), "{e}");
        assert!(e.contains(&format!("process {} state S", child.id())) && e.contains("stderr: nothing"), "{e}");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A guest that prints nothing: the failed wait says where QEMU's
    /// monitor finds it (running, and its CPUs' instruction pointers).
    #[test]
    fn a_silent_guest_is_located_by_the_monitor() {
        let monitor = std::env::temp_dir().join(format!("bv-mon-test-{}.sock", std::process::id()));
        let _ = fs::remove_file(&monitor);
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-m", "32", "-nodefaults", "-display", "none"])
            .args(["-serial", "stdio", "-monitor", &format!("unix:{},server=on,wait=off", monitor.display())])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 (make deps installs it)");
        let stderr = Lines::spawn(child.stderr.take().expect("stderr"), None, None);
        let mut out = Lines::spawn(child.stdout.take().expect("stdout"), None, None).with_context(child.id(), &stderr);
        out.monitor = Some(monitor.clone());
        let e = out.expect("never", Duration::from_secs(3)).unwrap_err();
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_file(&monitor);
        assert!(e.contains("QEMU monitor:") && e.contains("VM status: running"), "{e}");
        assert!(e.contains("RIP=") || e.contains("EIP="), "{e}");
    }
}
