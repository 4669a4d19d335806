//! `make bench` (scale part): one server against two servers sharing
//! their storage, with several PCs at once.
//!
//! Setups, both started by this program on 127.0.0.1 and kept up
//! together, measured in turn:
//!
//! * one `bootvault serve` with its defaults (SQLite and chunk files in
//!   its data directory);
//! * two `bootvault serve` on one PostgreSQL database
//!   ([`Postgres::start`]) and one Garage bucket ([`Garage::start`]),
//!   the second showing the first's certificate; even PCs list server A
//!   first, odd PCs server B.
//!
//! Both speak HTTPS (the PCs' transport), so TLS costs the same in both.
//! Each PC is a thread running the engine's own backup or restore
//! pipeline (its default workers) on an image file. Runs, in order:
//! 1, 4 and 8 concurrent backups of different disks, 1, 4, 8 and 16
//! concurrent restores of the first backup (one image to many PCs), then
//! 4 backups of the same disks as the 4-backup run with 4 MiB chunks, and
//! 8 restores of one of those. Every restore is compared byte for byte
//! with its disk after the timing. The whole sequence is repeated
//! (SCALE_RUNS, median reported), each repetition on disks stamped anew
//! so nothing dedups against an earlier one.
//!
//! Last, the two servers are restarted with their S3 requests going
//! through a counting proxy (a TCP relay that parses the HTTP requests to
//! the store) and the sequence runs once more: S3 requests by method and
//! object kind per run, and each request's time to the first and the
//! last byte of its answer. The proxy changes the servers' timing (it
//! hides most of Garage's ~40 ms stalls on kept-alive GETs), which is why
//! the repetitions above go to Garage straight. Garage's idle latency
//! (PUT, HEAD, GET of chunk-sized objects) is measured straight and
//! through the proxy, and what packing 16 chunks per object would save is
//! computed from the counts.
//!
//! The disks: 64 MiB each, 48 MiB of an installed Linux system (slices of
//! the ext4 filesystem bench-imaging builds into
//! `~/.cache/bootvault/bench/linux/disk.img`, a different slice per disk)
//! followed by 16 MiB of zeros (free space); without that cache, mixed
//! generated content (text, half-compressible, random, zeros). The PCs'
//! disks and restore targets live in /dev/shm. Settings (environment):
//! SCALE_DISK_MIB (64), SCALE_RUNS (3), SCALE_LATENCY_OPS (40).
//!
//! Prints Markdown. One machine runs the PCs, the servers, PostgreSQL and
//! Garage here: the numbers compare setups on the same cores, they are
//! not what a network of PCs would see.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex, Weak};
use std::time::{Duration, Instant};

use bootvault_common::fingerprint::Fingerprint;
use bootvault_common::units::human_bytes;
use bootvault_engine::backup::{self, BackupOptions, BackupReport};
use bootvault_engine::client::Client;
use bootvault_engine::device::Device;
use bootvault_engine::restore::{self, RestoreOptions};
use bootvault_qemu_tests::{bootvault_bin, mac_for, noise, workspace, Result, Server, ServerOpts};
use bootvault_server::s3::{S3Client, S3Config};
use bootvault_server::testenv::Postgres;
use bootvault_server::testenv_s3::Garage;

const MIB: u64 = 1 << 20;
/// Concurrent backups, each of a disk not backed up before.
const BACKUPS: [usize; 3] = [1, 4, 8];
/// Concurrent restores of one image.
const RESTORES: [usize; 4] = [1, 4, 8, 16];
/// The larger chunk measured against the default 1 MiB.
const BIG_CHUNK: u32 = 4 << 20;
const BIG_BACKUPS: usize = 4;
const BIG_RESTORES: usize = 8;
/// Chunks per object in the packing estimate.
const PACK: f64 = 16.0;

fn env_num(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| format!("{name}={v:?}: expected a whole number")),
        Err(_) => Ok(default),
    }
}

// ---------------------------------------------------------------- disks

/// The installed system bench-imaging builds (ext4 + swap, 2 GiB).
fn os_image() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = Path::new(&home).join(".cache/bootvault/bench/linux/disk.img");
    p.is_file().then_some(p)
}

/// Disk `k` of `count`: three quarters content, one quarter zeros. The
/// content is a slice of `os` (slices spread over its first 1.75 GiB, the
/// ext4 partition, skipping its first 128 MiB of mostly metadata), or
/// generated.
fn disk_bytes(k: usize, count: usize, mib: usize, os: Option<&Path>) -> Result<Vec<u8>> {
    let len = mib * MIB as usize;
    let content = len / 4 * 3;
    let mut out = Vec::with_capacity(len);
    match os {
        Some(p) => {
            let (start, end) = (128 * MIB, 1728 * MIB);
            let stride = ((end - start - content as u64) / count.max(1) as u64) & !(MIB - 1);
            let mut f = fs::File::open(p).map_err(|e| format!("opening {}: {e}", p.display()))?;
            let at = start + k as u64 * stride;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(at)).map_err(|e| format!("{}: {e}", p.display()))?;
            out.resize(content, 0);
            f.read_exact(&mut out).map_err(|e| format!("reading {} at {at}: {e}", p.display()))?;
        }
        None => {
            // Per MiB: log text, half-compressible (noise with zero runs),
            // random, and zeros inside files, in a rotating order.
            for b in 0..content / MIB as usize {
                let seed = (k as u64) << 32 | b as u64;
                match (b + k) % 4 {
                    0 => {
                        let mut text = Vec::with_capacity(MIB as usize + 128);
                        let mut i = seed;
                        while text.len() < MIB as usize {
                            i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            let _ = writeln!(
                                text,
                                "{i:016x} pc{k} kernel: usb {}-{}: new device, config {}",
                                i % 7,
                                i % 13,
                                i % 977
                            );
                        }
                        text.truncate(MIB as usize);
                        out.extend(text);
                    }
                    1 => {
                        for (j, part) in noise(seed, MIB as usize).chunks(512).enumerate() {
                            out.extend(if j % 2 == 0 { part.to_vec() } else { vec![0; part.len()] });
                        }
                    }
                    2 => out.extend(noise(seed, MIB as usize)),
                    _ => out.resize(out.len() + MIB as usize, 0),
                }
            }
        }
    }
    out.resize(len, 0);
    Ok(out)
}

/// Makes disk `k` of repetition `rep` its own: the first 16 bytes of
/// every 4 KiB block that is not all zeros name the disk and the
/// repetition, so no chunk is shared with another disk or an earlier
/// repetition (dedup would hide the work), while blocks repeated inside
/// the disk stay repeated and zeros stay zeros. Compressibility barely
/// moves (16 bytes in 4096).
fn stamp(disk: &mut [u8], k: usize, rep: usize) {
    let mark = format!("bvscale {k:03} {rep:03}");
    for block in disk.chunks_mut(4096) {
        if block.iter().any(|&b| b != 0) {
            let n = mark.len().min(block.len());
            block[..n].copy_from_slice(&mark.as_bytes()[..n]);
        }
    }
}

// ---------------------------------------------------------- S3 counting

/// What the counting proxy saw: requests by class ("PUT chunk", "HEAD
/// chunk", ...), and for each the time from the request's first byte to
/// the first and to the last byte of its answer.
#[derive(Default, Clone)]
struct S3Seen {
    counts: BTreeMap<String, u64>,
    first_ms: BTreeMap<String, Vec<f64>>,
    whole_ms: BTreeMap<String, Vec<f64>>,
    /// Connections it lost track of (a chunked body, a head it could not
    /// read): requests after that on them are not counted.
    unparsed: u64,
}

impl S3Seen {
    fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    fn count(&self, class: &str) -> u64 {
        self.counts.get(class).copied().unwrap_or(0)
    }

    fn count_method(&self, method: &str) -> u64 {
        self.counts.iter().filter(|(k, _)| k.split(' ').next() == Some(method)).map(|(_, v)| v).sum()
    }
}

/// A TCP relay in front of Garage's S3 port that counts the requests.
struct S3Counter {
    port: u16,
    seen: Arc<Mutex<S3Seen>>,
    /// Every connection's exchange in progress, settled by [`S3Counter::take`].
    open: Arc<Mutex<Vec<Weak<Pending>>>>,
}

/// A connection's exchange in progress.
type Pending = Mutex<Option<Exchange>>;

/// A request and its answer on one connection (the client reads a whole
/// answer before it sends its next request: no pipelining).
struct Exchange {
    class: String,
    start: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records a finished exchange's times (none if no answer came).
fn settle(seen: &Mutex<S3Seen>, ex: Option<Exchange>) {
    let Some(Exchange { class, start, first: Some(first), last: Some(last) }) = ex else { return };
    let ms = |t: Instant| t.duration_since(start).as_secs_f64() * 1e3;
    let mut s = locked(seen);
    s.first_ms.entry(class.clone()).or_default().push(ms(first));
    s.whole_ms.entry(class).or_default().push(ms(last));
}

/// "METHOD kind" of a request head: kind from the key (our layout,
/// `PREFIX/chunks/..`, `PREFIX/manifests/..`) or the query.
fn classify(head: &str) -> (String, u64, bool) {
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let mut method = first.next().unwrap_or("?").to_owned();
    let path = first.next().unwrap_or("");
    let (mut len, mut chunked) = (0, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => len = value.parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "x-amz-copy-source" if method == "PUT" => method = "COPY".into(),
            _ => {}
        }
    }
    let key = path.split('?').next().unwrap_or("");
    let kind = if key.contains("/chunks/") {
        "chunk"
    } else if key.contains("/manifests/") {
        "manifest"
    } else if path.contains("list-type") {
        "list"
    } else {
        "other"
    };
    (format!("{method} {kind}"), len, chunked)
}

/// Follows one connection's request stream: heads and fixed-length bodies.
#[derive(Default)]
struct RequestStream {
    head: Vec<u8>,
    body_left: u64,
    started: Option<Instant>,
    lost: bool,
}

impl RequestStream {
    /// Feeds `data`; `on_request(class, first byte)` for every head read.
    fn feed(&mut self, mut data: &[u8], on_request: &mut dyn FnMut(String, Instant)) {
        while !data.is_empty() && !self.lost {
            if self.body_left > 0 {
                let n = (self.body_left.min(data.len() as u64)) as usize;
                self.body_left -= n as u64;
                data = &data[n..];
                continue;
            }
            if self.head.is_empty() {
                self.started = Some(Instant::now());
            }
            let before = self.head.len();
            self.head.extend_from_slice(data);
            match self.head.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => {
                    let (class, len, chunked) = classify(&String::from_utf8_lossy(&self.head[..end]));
                    on_request(class, self.started.unwrap_or_else(Instant::now));
                    self.lost = chunked;
                    self.body_left = len;
                    data = &data[end + 4 - before..];
                    self.head.clear();
                }
                None => {
                    self.lost = self.head.len() > 1 << 16;
                    data = &[];
                }
            }
        }
    }
}

impl S3Counter {
    fn start(upstream: u16) -> Result<S3Counter> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("counting proxy: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let counter = S3Counter { port, seen: Arc::default(), open: Arc::default() };
        let (seen, open) = (counter.seen.clone(), counter.open.clone());
        std::thread::Builder::new()
            .name("s3-proxy".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
                    let pending: Arc<Pending> = Arc::default();
                    {
                        let mut open = locked(&open);
                        open.retain(|w| w.strong_count() > 0);
                        open.push(Arc::downgrade(&pending));
                    }
                    let (seen_req, pending_req) = (seen.clone(), pending.clone());
                    let _ = std::thread::Builder::new().name("s3-proxy".into()).spawn(move || {
                        let mut stream = RequestStream::default();
                        relay(client, server, &mut |bytes| {
                            let followed = !stream.lost;
                            stream.feed(bytes, &mut |class, start| {
                                *locked(&seen_req).counts.entry(class.clone()).or_default() += 1;
                                let new = Exchange { class, start, first: None, last: None };
                                let previous = locked(&pending_req).replace(new);
                                settle(&seen_req, previous);
                            });
                            if followed && stream.lost {
                                locked(&seen_req).unparsed += 1;
                                let head = String::from_utf8_lossy(&stream.head[..stream.head.len().min(300)]);
                                eprintln!("scale: the counting proxy lost track of a connection at {head:?}");
                            }
                        });
                    });
                    let _ = std::thread::Builder::new().name("s3-proxy".into()).spawn(move || {
                        relay(s2, c2, &mut |_| {
                            if let Some(ex) = locked(&pending).as_mut() {
                                let now = Instant::now();
                                ex.first.get_or_insert(now);
                                ex.last = Some(now);
                            }
                        });
                    });
                }
            })
            .map_err(|e| format!("counting proxy: {e}"))?;
        Ok(counter)
    }

    /// What it saw since the last call (called between runs, when no
    /// request is in flight: every answered exchange is settled first).
    fn take(&self) -> S3Seen {
        let open: Vec<_> = locked(&self.open).iter().filter_map(Weak::upgrade).collect();
        for pending in open {
            let done = {
                let mut p = locked(&pending);
                if p.as_ref().is_some_and(|ex| ex.last.is_some()) {
                    p.take()
                } else {
                    None
                }
            };
            settle(&self.seen, done);
        }
        std::mem::take(&mut *locked(&self.seen))
    }
}

/// Copies `from` to `to`, showing every read to `look` first.
fn relay(mut from: TcpStream, mut to: TcpStream, look: &mut dyn FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        look(&buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ------------------------------------------------------------ CPU time

/// CPU seconds so far: this process (the PCs' engines and the counting
/// proxy), and each group of its child processes with their descendants
/// (`bootvault` servers, `garage`, `postgres`).
fn cpu_now() -> BTreeMap<String, f64> {
    // SAFETY: sysconf only reads a configuration value.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // (pid, ppid, comm, own ticks, reaped children's ticks)
    let mut procs = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // After the comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
        procs.push((pid, num(1) as u32, comm, num(11) + num(12), num(13) + num(14)));
    }
    let me = std::process::id();
    let mut out = BTreeMap::new();
    for (pid, ppid, comm, own, reaped) in &procs {
        if *pid == me {
            out.insert("PCs (this process)".to_owned(), own / tick);
            out.insert("exited children".to_owned(), reaped / tick);
        }
        if *ppid != me {
            continue;
        }
        // The child's live descendants (postgres backends, one level down
        // at most here; deeper levels walked all the same).
        let mut total = own + reaped;
        let mut frontier = vec![*pid];
        while let Some(p) = frontier.pop() {
            for (cpid, cppid, _, cown, _) in &procs {
                if *cppid == p {
                    total += cown;
                    frontier.push(*cpid);
                }
            }
        }
        let group = match comm.as_str() {
            "bootvault" => "bootvault serve",
            c if c.starts_with("postgres") => "postgres",
            c if c.starts_with("garage") => "garage",
            _ => continue,
        };
        *out.entry(group.to_owned()).or_insert(0.0) += total / tick;
    }
    out
}

/// CPU seconds the whole machine has spent busy (all CPUs, /proc/stat).
fn machine_busy() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    let f: Vec<f64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0.0)).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    busy / tick
}

fn cpu_since(before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    cpu_now().into_iter().map(|(k, v)| (k.clone(), v - before.get(&k).copied().unwrap_or(0.0))).collect()
}

// --------------------------------------------------------------- setups

/// What the PCs need to reach a setup (shared by the PCs' threads).
struct Access {
    urls: Vec<String>,
    fingerprint: Fingerprint,
    /// (name, token) of every PC.
    pcs: Vec<(String, String)>,
}

impl Access {
    /// PC `i`'s client: with two servers, even PCs list A first, odd B.
    fn client(&self, i: usize) -> Client {
        let mut urls: Vec<&str> = self.urls.iter().map(String::as_str).collect();
        if i % 2 == 1 {
            urls.reverse();
        }
        let (name, token) = &self.pcs[i];
        Client::new(&urls.join(","), name, token).pinned(Some(self.fingerprint))
    }
}

struct Setup {
    label: &'static str,
    servers: Vec<Server>,
    access: Access,
    /// The two servers' shared storage, and the proxy they may use.
    shared: Option<Shared>,
}

/// What two servers share, kept running while they are measured.
struct Shared {
    dir: PathBuf,
    db: String,
    store: String,
    /// The bucket's variables, straight to Garage or through the proxy.
    straight: Vec<(String, String)>,
    proxied: Vec<(String, String)>,
    counter: S3Counter,
    garage: Garage,
    _pg: Postgres,
}

impl Shared {
    /// Servers A and B on the shared storage, B with A's certificate.
    fn start_pair(&self, via_proxy: bool) -> Result<Vec<Server>> {
        let opts = |name: &str, tls_of: Option<PathBuf>| ServerOpts {
            name: Some(name.into()),
            args: vec!["--db".into(), self.db.clone(), "--store".into(), self.store.clone()],
            env: if via_proxy { self.proxied.clone() } else { self.straight.clone() },
            tls_of,
            ..ServerOpts::default()
        };
        let a = Server::start_opts(&self.dir, &opts("server-a", None))?;
        let b = Server::start_opts(&self.dir, &opts("server-b", Some(a.data.clone())))?;
        if a.fingerprint != b.fingerprint {
            return Err(format!("two certificates: {} and {}", a.fingerprint, b.fingerprint));
        }
        Ok(vec![a, b])
    }
}

impl Setup {
    fn one_server(dir: &Path, pcs: usize) -> Result<Setup> {
        let server = Server::start_opts(dir, &ServerOpts { name: Some("single".into()), ..ServerOpts::default() })?;
        Setup::finish("one server, SQLite + local disk", vec![server], pcs, None)
    }

    /// Two servers reaching Garage straight (see [`Setup::through_proxy`]).
    fn two_servers(dir: &Path, pcs: usize) -> Result<Setup> {
        let pg = Postgres::start(&dir.join("pg")).map_err(|e| format!("PostgreSQL: {e:#}"))?;
        let garage = Garage::start(&dir.join("garage")).map_err(|e| format!("Garage: {e:#}"))?;
        let db = pg.new_database("bv_bench_scale").map_err(|e| format!("{e:#}"))?;
        let port = garage.endpoint().rsplit(':').next().and_then(|p| p.parse().ok()).ok_or("Garage's port")?;
        let counter = S3Counter::start(port)?;
        let endpoint = format!("http://127.0.0.1:{}", counter.port);
        let straight = garage.env();
        let proxied = straight
            .iter()
            .map(|(k, v)| (k.clone(), if k == "AWS_ENDPOINT_URL_S3" { endpoint.clone() } else { v.clone() }))
            .collect();
        let shared =
            Shared { dir: dir.to_owned(), db, store: garage.url("bench"), straight, proxied, counter, garage, _pg: pg };
        let servers = shared.start_pair(false)?;
        Setup::finish("two servers, PostgreSQL + Garage", servers, pcs, Some(shared))
    }

    /// Restarts the two servers with their S3 requests going through the
    /// counting proxy (which changes their timing: measured apart).
    fn through_proxy(&mut self) -> Result<()> {
        let shared = self.shared.as_ref().ok_or("one server has no shared storage")?;
        self.servers.clear();
        self.servers = shared.start_pair(true)?;
        self.access.urls = self.servers.iter().map(|s| s.url.clone()).collect();
        Ok(())
    }

    fn finish(label: &'static str, servers: Vec<Server>, pcs: usize, shared: Option<Shared>) -> Result<Setup> {
        let fingerprint = Fingerprint::parse(&servers[0].fingerprint)?;
        let mut list = Vec::new();
        for i in 0..pcs {
            let name = format!("scale-pc-{i:02}");
            // One data directory: the database is shared.
            servers[0].register(&name, &mac_for(&name))?;
            list.push((name.clone(), servers[0].token(&name)?));
        }
        let access = Access { urls: servers.iter().map(|s| s.url.clone()).collect(), fingerprint, pcs: list };
        Ok(Setup { label, servers, access, shared })
    }

    fn grant(&self, backup: i64, pcs: std::ops::Range<usize>, owner: usize) -> Result<()> {
        for i in pcs.filter(|&i| i != owner) {
            self.servers[0].admin("backups", &["grant", &backup.to_string(), &self.access.pcs[i].0])?;
        }
        Ok(())
    }

    fn take_s3(&self) -> S3Seen {
        self.shared.as_ref().map(|s| s.counter.take()).unwrap_or_default()
    }
}

// ----------------------------------------------------------------- runs

/// One run: N PCs at once.
struct Run {
    what: String,
    pcs: usize,
    disk_bytes: u64,
    wall: Duration,
    /// Each PC's own time.
    each: Vec<Duration>,
    cpu: BTreeMap<String, f64>,
    s3: S3Seen,
    /// Backups: new chunks and blob bytes sent, summed.
    new_chunks: u64,
    sent: u64,
    reports: Vec<BackupReport>,
}

impl Run {
    fn aggregate_mbs(&self) -> f64 {
        self.disk_bytes as f64 * self.pcs as f64 / 1e6 / self.wall.as_secs_f64()
    }

    fn per_pc_mbs(&self) -> f64 {
        let mut v: Vec<f64> = self.each.iter().map(|d| self.disk_bytes as f64 / 1e6 / d.as_secs_f64()).collect();
        median(&mut v)
    }
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

/// Nearest-rank percentile (`q` in 0..=1); 0 for none.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Runs `work(slot)` for every slot at once (started together); each
/// slot's time and result, and the wall time of all.
fn all_at_once<T: Send>(
    n: usize,
    work: &(dyn Fn(usize) -> Result<T> + Sync),
) -> Result<(Duration, Vec<(Duration, T)>)> {
    let gate = Barrier::new(n + 1);
    let (wall, results) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|slot| {
                let gate = &gate;
                s.spawn(move || {
                    gate.wait();
                    let t = Instant::now();
                    let r = work(slot);
                    (t.elapsed(), r)
                })
            })
            .collect();
        gate.wait();
        let start = Instant::now();
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (start.elapsed(), results)
    });
    let mut out = Vec::with_capacity(n);
    for (slot, r) in results.into_iter().enumerate() {
        match r {
            Ok((d, Ok(v))) => out.push((d, v)),
            Ok((_, Err(e))) => return Err(format!("PC {slot}: {e}")),
            Err(_) => return Err(format!("PC {slot}: its thread panicked")),
        }
    }
    Ok((wall, out))
}

/// PCs `pcs[j]` back up `disks[j]` at once with `chunk`-byte chunks.
fn backups(setup: &Setup, what: &str, pcs: &[usize], disks: &[PathBuf], chunk: u32, tag: &str) -> Result<Run> {
    eprintln!("scale: {}: {what}", setup.label);
    let disk_bytes = fs::metadata(&disks[0]).map_err(|e| e.to_string())?.len();
    let access = &setup.access;
    setup.take_s3();
    let cpu = cpu_now();
    let (wall, results) = all_at_once(pcs.len(), &|j| {
        let pc = pcs[j];
        let dev = Device::open(&disks[j], false).map_err(|e| e.to_string())?;
        let mut opts = BackupOptions::new(&access.pcs[pc].0, &format!("{tag}-{pc:02}"));
        opts.chunk_size = chunk;
        backup::backup(&dev, &access.client(pc), &opts, &mut |_| {}).map_err(|e| e.to_string())
    })?;
    let cpu = cpu_since(&cpu);
    let s3 = setup.take_s3();
    eprintln!("scale: {what}: {:.2} s; S3 requests {:?}", wall.as_secs_f64(), s3.counts);
    let each = results.iter().map(|(d, _)| *d).collect();
    let reports: Vec<BackupReport> = results.into_iter().map(|(_, r)| r).collect();
    Ok(Run {
        what: what.to_owned(),
        pcs: pcs.len(),
        disk_bytes,
        wall,
        each,
        cpu,
        s3,
        new_chunks: reports.iter().map(|r| r.new_chunks).sum(),
        sent: reports.iter().map(|r| r.sent_bytes).sum(),
        reports,
    })
}

/// PCs 0..n restore backup `id` at once, each onto a blank file of its
/// own; every target compared with `expected` afterwards.
fn restores(setup: &Setup, what: &str, id: i64, n: usize, expected: &[u8], dir: &Path) -> Result<Run> {
    let targets: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("target-{i:02}.img"))).collect();
    for t in &targets {
        let _ = fs::remove_file(t);
        fs::File::create(t)
            .and_then(|f| f.set_len(expected.len() as u64))
            .map_err(|e| format!("creating {}: {e}", t.display()))?;
    }
    let access = &setup.access;
    setup.take_s3();
    let cpu = cpu_now();
    eprintln!("scale: {}: {what}", setup.label);
    let (wall, results) = all_at_once(n, &|i| {
        let dev = Device::open(&targets[i], true).map_err(|e| e.to_string())?;
        restore::restore(&dev, &access.client(i), id, &RestoreOptions::default(), &mut |_| {})
            .map_err(|e| e.to_string())
    })?;
    let cpu = cpu_since(&cpu);
    let s3 = setup.take_s3();
    eprintln!("scale: {what}: {:.2} s; S3 requests {:?}", wall.as_secs_f64(), s3.counts);
    for t in &targets {
        let got = fs::read(t).map_err(|e| format!("reading {}: {e}", t.display()))?;
        if got != expected {
            return Err(format!("{what}: {} differs from the disk backed up", t.display()));
        }
        let _ = fs::remove_file(t);
    }
    Ok(Run {
        what: what.to_owned(),
        pcs: n,
        disk_bytes: expected.len() as u64,
        wall,
        each: results.iter().map(|(d, _)| *d).collect(),
        cpu,
        s3,
        new_chunks: 0,
        sent: 0,
        reports: Vec::new(),
    })
}

/// Every run of the bench on one setup.
fn measure(setup: &Setup, disks: &[PathBuf], dir: &Path, rep: usize) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    let mut next = 0;
    let mut first: Option<(i64, usize)> = None;
    for n in BACKUPS {
        let pcs: Vec<usize> = (next..next + n).collect();
        let tag = format!("full-r{rep}");
        let run = backups(setup, &format!("backups ×{n}"), &pcs, &disks[next..next + n], 1 << 20, &tag)?;
        first.get_or_insert((run.reports[0].id, next));
        next += n;
        runs.push(run);
    }
    let (id, disk) = first.ok_or("no backup")?;
    let expected = fs::read(&disks[disk]).map_err(|e| e.to_string())?;
    setup.grant(id, 0..RESTORES[RESTORES.len() - 1], disk)?;
    for n in RESTORES {
        runs.push(restores(setup, &format!("restores ×{n} of one image"), id, n, &expected, dir)?);
    }
    // The same disks as the 4-backup run, with 4 MiB chunks: nothing of
    // them is stored at that size, so nothing dedups (but zero chunks).
    let start = BACKUPS[0];
    let pcs: Vec<usize> = (start..start + BIG_BACKUPS).collect();
    let big = backups(
        setup,
        &format!("backups ×{BIG_BACKUPS}, 4 MiB chunks (disks of ×4)"),
        &pcs,
        &disks[start..start + BIG_BACKUPS],
        BIG_CHUNK,
        &format!("big-r{rep}"),
    )?;
    let big_id = big.reports[0].id;
    runs.push(big);
    let expected = fs::read(&disks[start]).map_err(|e| e.to_string())?;
    setup.grant(big_id, 0..BIG_RESTORES, start)?;
    runs.push(restores(
        setup,
        &format!("restores ×{BIG_RESTORES} of one image, 4 MiB chunks"),
        big_id,
        BIG_RESTORES,
        &expected,
        dir,
    )?);
    Ok(runs)
}

/// For each run (by position), the repetition with the median wall
/// time, and the lowest and highest aggregate MB/s over the repetitions.
fn median_runs(reps: Vec<Vec<Run>>) -> Vec<(Run, (f64, f64))> {
    let mut by_run: Vec<Vec<Run>> = Vec::new();
    for runs in reps {
        for (i, r) in runs.into_iter().enumerate() {
            if by_run.len() <= i {
                by_run.push(Vec::new());
            }
            by_run[i].push(r);
        }
    }
    by_run
        .into_iter()
        .map(|mut v| {
            let rates: Vec<f64> = v.iter().map(Run::aggregate_mbs).collect();
            let range = (rates.iter().copied().fold(f64::MAX, f64::min), rates.iter().copied().fold(0.0, f64::max));
            v.sort_by_key(|r| r.wall);
            let mid = v.len() / 2;
            (v.swap_remove(mid), range)
        })
        .collect()
}

/// Garage's latency, idle, at the endpoint `config` names: PUT, HEAD
/// and GET of `size`-byte objects (and HEAD of absent keys), `ops` of
/// each, one at a time.
fn garage_latency(config: S3Config, size: usize, ops: usize) -> Result<BTreeMap<&'static str, Vec<f64>>> {
    let s3 = S3Client::new(config);
    let mut out: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let body = noise(77, size);
    let key = |i: usize| format!("latency/obj-{i:04}");
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for i in 0..ops {
        let t = Instant::now();
        s3.put_object(&key(i), &body).map_err(|e| e.to_string())?;
        out.entry("PUT").or_default().push(ms(t));
    }
    for i in 0..ops {
        let t = Instant::now();
        s3.head_object(&key(i)).map_err(|e| e.to_string())?.ok_or("HEAD: object gone")?;
        out.entry("HEAD").or_default().push(ms(t));
    }
    for i in 0..ops {
        let t = Instant::now();
        s3.get_object(&key(i), size as u64).map_err(|e| e.to_string())?.ok_or("GET: object gone")?;
        out.entry("GET").or_default().push(ms(t));
    }
    for i in 0..ops {
        let t = Instant::now();
        s3.head_object(&format!("latency/absent-{i:04}")).map_err(|e| e.to_string())?;
        out.entry("HEAD (absent key)").or_default().push(ms(t));
    }
    Ok(out)
}

// --------------------------------------------------------------- report

fn main() {
    if let Err(e) = bench() {
        eprintln!("bench-scale failed: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<()> {
    let began = Instant::now();
    let mib = env_num("SCALE_DISK_MIB", 64)?.max(4) as usize;
    let reps = env_num("SCALE_RUNS", 3)?.max(1) as usize;
    let latency_ops = env_num("SCALE_LATENCY_OPS", 40)?.max(1) as usize;
    let dir = workspace().join("target/bench/scale");
    // The PCs' disks and restore targets in memory when /dev/shm is there
    // (the PCs' own disk writes are not what is measured, and writeback
    // of gigabytes of them would land in the servers' runs).
    let pc_dir = match Path::new("/dev/shm").is_dir() {
        true => PathBuf::from(format!("/dev/shm/bootvault-bench-scale-{}", std::process::id())),
        false => dir.join("pcs"),
    };
    for d in [&dir, &pc_dir] {
        let _ = fs::remove_dir_all(d);
        fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let pcs = RESTORES.iter().copied().max().unwrap_or(1).max(BACKUPS.iter().sum());
    let count: usize = BACKUPS.iter().sum();
    let os = os_image();
    let disks: Vec<PathBuf> = (0..count).map(|k| pc_dir.join(format!("disk-{k:02}.img"))).collect();
    let source = match &os {
        Some(p) => format!(
            "{} MiB slices of the installed system in `{}` (ext4, one slice per disk)",
            mib / 4 * 3,
            p.display()
        ),
        None => format!(
            "{} MiB of generated content (text, half-compressible, random, zeros; no OS image cached)",
            mib / 4 * 3
        ),
    };

    // Both setups up at once (the idle one costs nothing measurable),
    // measured in turn on the same disks, repetition by repetition.
    // Then one more run of the two with their S3 requests counted.
    let one = Setup::one_server(&dir.join("one"), pcs)?;
    let mut two = Setup::two_servers(&dir.join("two"), pcs)?;
    let (mut one_reps, mut two_reps) = (Vec::new(), Vec::new());
    let write_disks = |rep: usize| -> Result<()> {
        for (k, p) in disks.iter().enumerate() {
            let mut bytes = disk_bytes(k, count, mib, os.as_deref())?;
            stamp(&mut bytes, k, rep);
            fs::write(p, bytes).map_err(|e| format!("writing {}: {e}", p.display()))?;
        }
        Ok(())
    };
    let mut counted = Vec::new();
    // Whether anything else ran meanwhile: the machine's busy time less
    // this bench's own (its process tree).
    let (machine0, ours0, t0) = (machine_busy(), cpu_now().values().sum::<f64>(), Instant::now());
    let measured = (|| -> Result<()> {
        for rep in 0..reps {
            write_disks(rep)?;
            one_reps.push(measure(&one, &disks, &pc_dir, rep)?);
            two_reps.push(measure(&two, &disks, &pc_dir, rep)?);
        }
        write_disks(reps)?;
        two.through_proxy()?;
        counted = measure(&two, &disks, &pc_dir, reps)?;
        Ok(())
    })();
    let others = (machine_busy() - machine0) - (cpu_now().values().sum::<f64>() - ours0);
    let available =
        t0.elapsed().as_secs_f64() * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let _ = fs::remove_dir_all(&pc_dir);
    measured?;
    drop(one);
    let one_runs = median_runs(one_reps);
    let two_runs = median_runs(two_reps);
    // Idle latency with objects the size of an average stored chunk.
    let first = &two_runs.first().ok_or("no runs")?.0;
    let blob = (first.sent / first.new_chunks.max(1)).max(1) as usize;
    let mut latency = Vec::new();
    if let Some(shared) = &two.shared {
        let direct = shared.garage.config("latency/").map_err(|e| format!("{e:#}"))?;
        let mut proxied = shared.garage.config("latency-proxied/").map_err(|e| format!("{e:#}"))?;
        proxied.endpoint.port = Some(shared.counter.port);
        latency.push(("straight to Garage", garage_latency(direct, blob, latency_ops)?));
        latency.push(("through the counting proxy", garage_latency(proxied, blob, latency_ops)?));
        shared.counter.take();
    }
    drop(two);
    report(&Report {
        one: &one_runs,
        two: &two_runs,
        counted: &counted,
        others: (others.max(0.0), available),
        latency: &latency,
        latency_ops,
        blob,
        mib,
        count,
        reps,
        source: &source,
    });
    println!("\nBench run time: {:.0} s.", began.elapsed().as_secs_f64());
    Ok(())
}

struct Report<'a> {
    /// Per run: the median repetition, and the aggregate MB/s range.
    one: &'a [(Run, (f64, f64))],
    two: &'a [(Run, (f64, f64))],
    /// The two servers once more, their S3 requests through the proxy.
    counted: &'a [Run],
    /// CPU seconds other processes used while the runs ran, of those the
    /// machine had.
    others: (f64, f64),
    /// Idle latency, straight and through the proxy.
    latency: &'a [(&'static str, BTreeMap<&'static str, Vec<f64>>)],
    latency_ops: usize,
    blob: usize,
    mib: usize,
    count: usize,
    reps: usize,
    source: &'a str,
}

fn report(r: &Report<'_>) {
    let mib = r.mib;
    println!("### Scale-out: one server against two on PostgreSQL and Garage\n");
    println!(
        "{} disks of {mib} MiB: {}, then {} MiB of zeros; every non-zero 4 KiB block stamped with its disk and \
         repetition, so no chunk is shared between disks or runs. Each PC is a thread running the engine \
         (default workers: {} backup, {} restore; zstd level 1; 1 MiB chunks unless said), HTTPS with a pinned \
         certificate; the two servers show one certificate, even PCs list A first and odd PCs B. \
         Aggregate = disk bytes of all PCs / wall time of the run; per PC = disk bytes / that PC's own time, \
         median over the PCs. Median of {} repetitions (the one with the median wall time; min–max of the \
         aggregate in brackets), the setups alternating; the two servers reach Garage straight. Then one more \
         run of the two servers with their S3 requests through a counting proxy (last column; the S3 tables \
         below come from it). Server: `{}`. {} CPUs, shared by the PCs, the servers, PostgreSQL and Garage.\n",
        r.count,
        r.source,
        mib / 4,
        BackupOptions::new("", "").threads,
        RestoreOptions::default().threads,
        r.reps,
        bootvault_bin().display(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "| run | one server (SQLite + local): aggregate MB/s | per PC | two servers (PostgreSQL + Garage): aggregate MB/s | per PC | two/one | two, S3 through the proxy (1 run) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (((a, ar), (b, br)), c) in r.one.iter().zip(r.two).zip(r.counted) {
        println!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.0} | {:.0} ({:.0}–{:.0}) | {:.0} | {:.2} | {:.0} |",
            a.what,
            a.aggregate_mbs(),
            ar.0,
            ar.1,
            a.per_pc_mbs(),
            b.aggregate_mbs(),
            br.0,
            br.1,
            b.per_pc_mbs(),
            b.aggregate_mbs() / a.aggregate_mbs(),
            c.aggregate_mbs()
        );
    }

    println!(
        "\nOther processes on the machine used {:.1} CPU seconds of the {:.0} it had while the runs ran ({:.0} %).",
        r.others.0,
        r.others.1,
        100.0 * r.others.0 / r.others.1.max(1e-9)
    );
    println!("\nWall time and CPU seconds used during each run (median repetition; everything on the same cores):\n");
    let groups = ["PCs (this process)", "bootvault serve", "postgres", "garage"];
    println!("| run | setup | wall | {} | CPU busy |", groups.join(" | "));
    println!("| --- | --- | --- |{} --- |", " --- |".repeat(groups.len()));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    for ((a, _), (b, _)) in r.one.iter().zip(r.two) {
        for (setup, run) in [("one", a), ("two", b)] {
            let cells: Vec<String> =
                groups.iter().map(|g| run.cpu.get(*g).map(|v| format!("{v:.2}")).unwrap_or("–".into())).collect();
            let busy = run.cpu.values().sum::<f64>() / (run.wall.as_secs_f64() * cores);
            println!(
                "| {} | {setup} | {:.2} s | {} | {:.0} % |",
                run.what,
                run.wall.as_secs_f64(),
                cells.join(" | "),
                busy * 100.0
            );
        }
    }

    println!("\nBackups: what the PCs sent (the same in both setups):\n");
    println!("| run | new chunks | blob bytes sent | per disk |");
    println!("| --- | --- | --- | --- |");
    for (run, _) in r.two.iter().filter(|(x, _)| x.new_chunks > 0) {
        println!(
            "| {} | {} | {} | {} |",
            run.what,
            run.new_chunks,
            human_bytes(run.sent),
            human_bytes(run.sent / run.pcs as u64)
        );
    }

    // S3 requests, per backup and per restore, from the counted run.
    let find = |what: &str| r.counted.iter().find(|x| x.what == what);
    let (Some(b8), Some(b4), Some(r16), Some(r8), Some(big), Some(bigr)) = (
        find(&format!("backups ×{}", BACKUPS[2])),
        find(&format!("backups ×{BIG_BACKUPS}")),
        find(&format!("restores ×{} of one image", RESTORES[3])),
        find(&format!("restores ×{BIG_RESTORES} of one image")),
        r.counted.iter().find(|x| x.what.starts_with("backups") && x.what.contains("4 MiB")),
        r.counted.iter().find(|x| x.what.starts_with("restores") && x.what.contains("4 MiB")),
    ) else {
        println!("\n(runs missing: no S3 tables)");
        return;
    };
    println!(
        "\nS3 requests the two servers made (a counting proxy in front of Garage), during {} ({} new chunks) and \
         {}; times from the request's first byte to the last byte of its answer, p50 / p95, and in brackets \
         p50 to the answer's first byte, under that load:\n",
        b8.what, b8.new_chunks, r16.what
    );
    let mut classes: Vec<String> = b8.s3.counts.keys().chain(r16.s3.counts.keys()).cloned().collect();
    classes.sort();
    classes.dedup();
    println!("| request | per backup | per new chunk | per restore | ms during the backups | ms during the restores |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let lat = |s: &S3Seen, c: &str| {
        let mut whole = s.whole_ms.get(c).cloned().unwrap_or_default();
        let mut first = s.first_ms.get(c).cloned().unwrap_or_default();
        if whole.is_empty() {
            "–".to_owned()
        } else {
            format!(
                "{:.1} / {:.1} ({:.1})",
                percentile(&mut whole, 0.5),
                percentile(&mut whole, 0.95),
                percentile(&mut first, 0.5)
            )
        }
    };
    for c in &classes {
        println!(
            "| {c} | {:.1} | {:.2} | {:.1} | {} | {} |",
            b8.s3.count(c) as f64 / b8.pcs as f64,
            b8.s3.count(c) as f64 / b8.new_chunks.max(1) as f64,
            r16.s3.count(c) as f64 / r16.pcs as f64,
            lat(&b8.s3, c),
            lat(&r16.s3, c)
        );
    }
    println!(
        "| all | {:.1} | {:.2} | {:.1} | | |",
        b8.s3.total() as f64 / b8.pcs as f64,
        b8.s3.total() as f64 / b8.new_chunks.max(1) as f64,
        r16.s3.total() as f64 / r16.pcs as f64
    );
    let lost: u64 = r.two.iter().map(|(x, _)| x.s3.unparsed).sum();
    if lost > 0 {
        println!("\nThe proxy lost track of {lost} connections: requests after that on them are not counted.");
    }

    println!(
        "\nGarage alone, idle, one request at a time from this process (the servers' S3 client, {} each, {} \
         objects: the average stored chunk), whole request; median / p95:\n",
        r.latency_ops,
        human_bytes(r.blob as u64)
    );
    println!("| request | {} |", r.latency.iter().map(|(how, _)| *how).collect::<Vec<_>>().join(" | "));
    println!("| --- |{}", " --- |".repeat(r.latency.len()));
    if let Some((_, first)) = r.latency.first() {
        for op in first.keys() {
            let cells: Vec<String> = r
                .latency
                .iter()
                .map(|(_, m)| {
                    let mut v = m.get(op).cloned().unwrap_or_default();
                    format!("{:.2} / {:.2} ms", median(&mut v), percentile(&mut v, 0.95))
                })
                .collect();
            println!("| {op} | {} |", cells.join(" | "));
        }
    }

    // Larger chunks, measured; packing, estimated from the 1 MiB counts.
    let per = |x: &Run, m: &str| x.s3.count_method(m) as f64 / x.pcs as f64;
    let per_all = |x: &Run| x.s3.total() as f64 / x.pcs as f64;
    // Packed: chunk PUTs and GETs / PACK; HEADs and COPYs of chunks (does
    // the store have it, renew its gc mark) become database work; the rest
    // (manifests) stays.
    let packed = |x: &Run, method: Option<&str>| {
        let mine = |k: &str| method.is_none_or(|m| k.split(' ').next() == Some(m));
        let chunk = |c: &str| if mine(c) { x.s3.count(c) as f64 / x.pcs as f64 } else { 0.0 };
        let other: f64 =
            x.s3.counts
                .iter()
                .filter(|(k, _)| !k.ends_with(" chunk") && mine(k))
                .map(|(_, v)| *v as f64 / x.pcs as f64)
                .sum();
        (chunk("PUT chunk") + chunk("GET chunk")) / PACK + other
    };
    let mbs = |runs: &[(Run, (f64, f64))], what: &str| {
        runs.iter().map(|(x, _)| x).find(|x| x.what == what).map(|x| format!("{:.0}", x.aggregate_mbs()))
    };
    println!(
        "\nFewer, larger objects: requests per backup of one {mib} MiB disk ({BIG_BACKUPS} backups at once, the \
         same disks in both rows) and per restore ({BIG_RESTORES} restores of one image at once):\n"
    );
    println!(
        "| layout | S3 requests per backup | PUT | HEAD | stored per disk | backups MB/s two servers (one server) | S3 requests per restore | restores MB/s two servers (one server) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (label, b, rs) in [("1 MiB chunks (measured)", b4, r8), ("4 MiB chunks (measured)", big, bigr)] {
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {} | {} ({}) | {:.0} | {} ({}) |",
            per_all(b),
            per(b, "PUT"),
            per(b, "HEAD"),
            human_bytes(b.sent / b.pcs as u64),
            mbs(r.two, &b.what).unwrap_or_default(),
            mbs(r.one, &b.what).unwrap_or_default(),
            per_all(rs),
            mbs(r.two, &rs.what).unwrap_or_default(),
            mbs(r.one, &rs.what).unwrap_or_default(),
        );
    }
    println!(
        "| 1 MiB chunks packed {PACK:.0} per object (estimate) | {:.1} | {:.1} | 0 | – | – | {:.1} | – |",
        packed(b4, None),
        packed(b4, Some("PUT")),
        packed(r8, None)
    );
    println!(
        "\nThe packing row is computed, not measured: it assumes the chunk index (which pack holds a chunk, and \
         its gc mark) lives in the database, so the HEADs (and COPYs) per chunk become database lookups; one PUT \
         per {PACK:.0} new chunks; and a restore reading whole packs (one GET per {PACK:.0} chunks; one ranged GET \
         per chunk would keep the GET count as it is). It leaves out repacking when gc frees part of a pack."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_and_bodies_skipped() {
        let mut s = RequestStream::default();
        let mut seen = Vec::new();
        let put = b"PUT /bootvault/bench/chunks/ab/abcd HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let copy =
            b"PUT /bootvault/bench/chunks/ab/abcd HTTP/1.1\r\nx-amz-copy-source: /b/k\r\ncontent-length: 0\r\n\r\n";
        let list = b"GET /bootvault?list-type=2&prefix=bench%2F HTTP/1.1\r\n\r\n";
        let mut all = Vec::new();
        all.extend_from_slice(put);
        all.extend_from_slice(copy);
        all.extend_from_slice(b"HEAD /bootvault/bench/manifests/3.bvm HTTP/1.1\r\n\r\n");
        all.extend_from_slice(list);
        // Fed in awkward pieces: heads and bodies split anywhere.
        for piece in all.chunks(7) {
            s.feed(piece, &mut |c, _| seen.push(c));
        }
        assert_eq!(seen, ["PUT chunk", "COPY chunk", "HEAD manifest", "GET list"]);
        assert!(!s.lost);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 10.0);
        assert_eq!(percentile(&mut v, 0.95), 19.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn generated_disks_differ_and_end_in_zeros() {
        let (a, b) = (disk_bytes(0, 2, 4, None).unwrap(), disk_bytes(1, 2, 4, None).unwrap());
        assert_eq!(a.len(), 4 << 20);
        assert_ne!(a[..3 << 20], b[..3 << 20]);
        assert!(a[3 << 20..].iter().all(|&x| x == 0));
    }
}
