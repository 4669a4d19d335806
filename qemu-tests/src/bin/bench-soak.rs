//! `make bench` (soak part): does the store lose anything under churn?
//!
//! The real `bootvault serve` on 127.0.0.1 with a fresh data directory;
//! 20 simulated PCs, each a thread running the engine on the host (the
//! same backup and restore pipelines the PCs run) against small image
//! files, backing up and restoring in a loop for `SOAK_SECONDS`. Their
//! images share content (dedup across PCs), change a little every round
//! (new chunks), cycle through a few variants (dedup against chunks whose
//! backups were removed, which gc may be deleting at that moment), and
//! each PC keeps only its last few backups (`bootvault backups rm`), so
//! unreferenced chunks keep appearing. Meanwhile one thread runs
//! `bootvault gc` in a loop and another kills the server with SIGKILL and
//! restarts it on the same port every `SOAK_RESTART_SECONDS`.
//!
//! At the end, with the churn stopped, every backup the server lists as
//! complete is checked twice: `bootvault backups verify ID`, and a restore
//! to a file compared byte for byte with the image that PC backed up in
//! that round (the round is in the backup's name, so even a backup whose
//! finish answer was lost is checked against the right bytes). Prints a
//! Markdown report; exits non-zero if anything was lost.
//!
//! Settings (environment): SOAK_SECONDS (300), SOAK_PCS (20),
//! SOAK_RESTART_SECONDS (30), SOAK_DOWN_MS (1000: how long the server
//! stays dead), SOAK_GC_MAX_AGE (10: `gc --max-age`, seconds),
//! SOAK_GC_PAUSE_MS (500), SOAK_PAUSE_MS (2000: a PC's longest pause
//! between rounds), SOAK_KEEP (3: backups each PC keeps), SOAK_IMAGE_MIB
//! (4), SOAK_CHUNK_KIB (64), SOAK_GC_MARGIN (10: passed to the server and
//! every gc as `BOOTVAULT_GC_MARGIN`, so gc removes chunks within seconds,
//! not after its default 15 minutes; 0 leaves the default).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootvault_common::fingerprint::Fingerprint;
use bootvault_engine::backup::{self, BackupOptions};
use bootvault_engine::client::Client;
use bootvault_engine::device::Device;
use bootvault_engine::restore::{self, RestoreOptions};
use bootvault_qemu_tests::{bootvault_bin, mac_for, noise, run, workspace, Result};

/// Content is made of blocks this size; the zones below are in blocks.
const BLOCK: usize = 64 << 10;
/// Variants a PC's changing zone cycles through.
const VARIANTS: u64 = 4;

struct Settings {
    seconds: u64,
    pcs: usize,
    restart_every: Duration,
    down: Duration,
    gc_max_age: u64,
    gc_pause: Duration,
    pause_ms: u64,
    keep: usize,
    image_mib: usize,
    chunk_kib: u32,
    gc_margin: u64,
}

fn env_num(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| format!("{name}={v:?}: expected a whole number")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let s = Settings {
            seconds: env_num("SOAK_SECONDS", 300)?,
            pcs: env_num("SOAK_PCS", 20)? as usize,
            restart_every: Duration::from_secs(env_num("SOAK_RESTART_SECONDS", 30)?),
            down: Duration::from_millis(env_num("SOAK_DOWN_MS", 1000)?),
            gc_max_age: env_num("SOAK_GC_MAX_AGE", 10)?,
            gc_pause: Duration::from_millis(env_num("SOAK_GC_PAUSE_MS", 500)?),
            pause_ms: env_num("SOAK_PAUSE_MS", 2000)?,
            keep: env_num("SOAK_KEEP", 3)?.max(1) as usize,
            image_mib: env_num("SOAK_IMAGE_MIB", 4)?.max(1) as usize,
            chunk_kib: env_num("SOAK_CHUNK_KIB", 64)? as u32,
            gc_margin: env_num("SOAK_GC_MARGIN", 10)?,
        };
        if s.pcs == 0 || s.pcs > 1000 {
            return Err("SOAK_PCS must be 1 to 1000".into());
        }
        Ok(s)
    }
}

/// FNV-1a over the parts: a seed for [`noise`] per block.
fn seed(parts: &[u64]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The disk image PC `pc` backs up in round `round` (rounds count from
/// 1). Zones, in sixteenths of the disk: 6 shared by every PC, 4 this
/// PC's own, 2 cycling through [`VARIANTS`] (the same bytes come back
/// every few rounds), 1 new every round, 3 zeros.
fn image(pc: usize, round: u64, mib: usize) -> Vec<u8> {
    let blocks = mib * (1 << 20) / BLOCK;
    let zone = |sixteenths: usize| blocks * sixteenths / 16;
    let (shared, own, variant, fresh) = (zone(6), zone(6 + 4), zone(6 + 4 + 2), zone(6 + 4 + 2 + 1));
    let mut out = Vec::with_capacity(blocks * BLOCK);
    for b in 0..blocks {
        let (pc, b64) = (pc as u64, b as u64);
        if b < shared {
            out.extend(noise(seed(&[1, b64]), BLOCK));
        } else if b < own {
            out.extend(noise(seed(&[2, pc, b64]), BLOCK));
        } else if b < variant {
            out.extend(noise(seed(&[3, pc, round % VARIANTS, b64]), BLOCK));
        } else if b < fresh {
            out.extend(noise(seed(&[4, pc, round, b64]), BLOCK));
        } else {
            out.resize(out.len() + BLOCK, 0);
        }
    }
    out
}

fn backup_name(round: u64) -> String {
    format!("soak-r{round}")
}

fn round_of(name: &str) -> Option<u64> {
    name.strip_prefix("soak-r")?.parse().ok()
}

fn pc_name(i: usize) -> String {
    format!("soak-pc-{i:02}")
}

/// An error's text with what varies taken out (URLs, numbers), so the
/// report can count errors by kind.
fn error_kind(e: &str) -> String {
    let mut out = String::new();
    let mut words = e.split(' ').peekable();
    while let Some(w) = words.next() {
        let bare = w.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        if w.starts_with("http://") || w.starts_with("https://") {
            out.push_str("URL");
        } else if bare.len() >= 16 && bare.chars().all(|c| c.is_ascii_hexdigit()) {
            out.push_str(&w.replace(bare, "HEX"));
        } else {
            let mut last_digit = false;
            for c in w.chars() {
                if c.is_ascii_digit() {
                    if !last_digit {
                        out.push('N');
                    }
                    last_digit = true;
                } else {
                    out.push(c);
                    last_digit = false;
                }
            }
        }
        if words.peek().is_some() {
            out.push(' ');
        }
    }
    out.chars().take(200).collect()
}

/// Whether a restore error means the store lost something the backup
/// needs (rather than the server being down at that moment).
fn is_loss(e: &str) -> bool {
    e.contains("server answered 404")
        || e.contains("not in the store")
        || e.contains("is damaged")
        || e.contains("blob ")
}

#[derive(Default)]
struct Counts {
    rounds: u64,
    backups_ok: u64,
    backups_failed: u64,
    restores_ok: u64,
    restores_failed: u64,
    /// Restores that ran to the end but wrote other bytes than backed up.
    restore_mismatches: Vec<String>,
    /// Restores of a complete backup refused for a missing/damaged chunk.
    restore_losses: Vec<String>,
    removed: u64,
    rm_failed: u64,
    backup_errors: BTreeMap<String, (u64, String)>,
    restore_errors: BTreeMap<String, (u64, String)>,
    restarts: u64,
    restart_failures: Vec<String>,
    gc_runs: u64,
    /// gc runs that removed chunks, and that neither removed nor kept any.
    gc_removing: u64,
    gc_idle: u64,
    gc_failed: u64,
    gc_stale_closed: u64,
    gc_chunks_removed: u64,
    gc_last: String,
    gc_errors: BTreeMap<String, (u64, String)>,
    /// Every gc run: start and end (seconds into the soak), chunks removed.
    gc_timeline: Vec<(f64, f64, u64)>,
}

fn note(map: &mut BTreeMap<String, (u64, String)>, e: &str) {
    let entry = map.entry(error_kind(e)).or_insert((0, e.chars().take(300).collect()));
    entry.0 += 1;
}

type Shared = Arc<Mutex<Counts>>;

fn tally(c: &Shared) -> std::sync::MutexGuard<'_, Counts> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// The server process: started on a port, killed and restarted on it.
struct Server {
    child: Option<Child>,
    data: PathBuf,
    dir: PathBuf,
    port: u16,
    starts: u32,
    /// Its certificate's, the same across restarts (one data directory).
    fingerprint: Option<Fingerprint>,
}

impl Server {
    /// Starts `bootvault serve` on `port` (0: any free one, read back from
    /// its first line). Retries a few times: after a SIGKILL, the port can
    /// take a moment to be free.
    fn start(&mut self) -> Result<()> {
        let mut last = String::new();
        for _ in 0..10 {
            self.starts += 1;
            let log = self.dir.join(format!("server-{:03}.log", self.starts));
            let out = fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let mut child = with_margin(&mut Command::new(bootvault_bin()))
                .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port), "--data"])
                .arg(&self.data)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", bootvault_bin().display()))?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let text = fs::read_to_string(&log).unwrap_or_default();
                let fingerprint = text
                    .lines()
                    .find_map(|l| l.strip_prefix("certificate fingerprint "))
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|f| Fingerprint::parse(f).ok());
                if let (Some(port), Some(fingerprint)) = (
                    text.lines()
                        .find_map(|l| l.split("listening on https://127.0.0.1:").nth(1))
                        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                        .and_then(|p| p.parse::<u16>().ok()),
                    fingerprint,
                ) {
                    self.port = port;
                    self.fingerprint = Some(fingerprint);
                    self.child = Some(child);
                    return Ok(());
                }
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("server exited ({status}): {}", text.trim());
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("no listening line within 20 s: {}", text.trim());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!("starting the server on port {}: {last}", self.port))
    }

    /// SIGKILL, as a crash or a power cut would.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A client of this server for PC `name`.
    fn client(&self, name: &str, token: &str) -> Client {
        Client::new(&self.url(), name, token).pinned(self.fingerprint)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `bootvault SUB --data DATA ARGS...`, with the soak's gc margin.
fn admin(data: &Path, args: &[&str]) -> Result<String> {
    let (sub, rest) = args.split_first().ok_or("no subcommand")?;
    run(with_margin(Command::new(bootvault_bin()).arg(sub).arg("--data").arg(data).args(rest)))
}

/// The gc margin every server and gc process of a run must share
/// (`SOAK_GC_MARGIN`, set once from the settings before any thread starts).
static GC_MARGIN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

fn with_margin(cmd: &mut Command) -> &mut Command {
    match GC_MARGIN.get() {
        Some(&m) if m > 0 => cmd.env("BOOTVAULT_GC_MARGIN", m.to_string()),
        _ => cmd,
    }
}

/// The number after `"key":` in gc's JSON report (no JSON parser needed
/// for a flat object of numbers).
fn json_number(text: &str, key: &str) -> Option<u64> {
    let quoted = format!("\"{key}\"");
    let rest = text[text.find(&quoted)? + quoted.len()..].trim_start().strip_prefix(':')?.trim_start();
    rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().ok()
}

/// A tiny xorshift for pauses and choices; seeded per PC so runs differ
/// only by timing.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 {
            0
        } else {
            self.0 % n
        }
    }
}

/// What one restore gave.
enum Restored {
    Same,
    /// First differing offset.
    Differs(u64),
    Failed(String),
}

/// Restores backup `id` into `target` (made fresh, zero-filled) and
/// compares it with `expected`.
fn restore_and_compare(client: &Client, id: i64, target: &Path, expected: &[u8]) -> Restored {
    let _ = fs::remove_file(target);
    let made = fs::File::create(target).and_then(|f| f.set_len(expected.len() as u64));
    if let Err(e) = made {
        return Restored::Failed(format!("creating {}: {e}", target.display()));
    }
    let dev = match Device::open(target, true) {
        Ok(d) => d,
        Err(e) => return Restored::Failed(e.to_string()),
    };
    let opts = RestoreOptions { threads: 2, ..Default::default() };
    if let Err(e) = restore::restore(&dev, client, id, &opts, &mut |_| {}) {
        return Restored::Failed(e.to_string());
    }
    drop(dev);
    match fs::read(target) {
        Ok(got) if got == expected => Restored::Same,
        Ok(got) => {
            let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
            Restored::Differs(at as u64)
        }
        Err(e) => Restored::Failed(format!("reading {}: {e}", target.display())),
    }
}

/// What a PC thread knows at the end: backups it saw complete (id ->
/// round) and those it removed itself.
#[derive(Default)]
struct PcRecord {
    completed: BTreeMap<i64, u64>,
    removed: HashSet<i64>,
    /// Complete backups a restore found a chunk missing from.
    damaged: HashSet<i64>,
    /// Per backup: when the PC started it and when it was told it was
    /// complete (seconds into the soak).
    times: HashMap<i64, (f64, f64)>,
}

/// The last non-empty line of a command's error (its own message).
fn last_line(text: &str) -> String {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned()
}

struct Pc<'a> {
    index: usize,
    name: String,
    client: Client,
    dir: PathBuf,
    set: &'a Settings,
    data: &'a Path,
    counts: &'a Shared,
    stop: &'a AtomicBool,
    /// When the soak started (times in the report are seconds since).
    t0: Instant,
}

impl Pc<'_> {
    fn run(&self) -> PcRecord {
        let mut rec = PcRecord::default();
        let mut rng = Rng(seed(&[9, self.index as u64]) | 1);
        let mut kept: VecDeque<(i64, u64)> = VecDeque::new();
        let disk = self.dir.join("disk.img");
        let target = self.dir.join("restore.img");
        let mut round = 0u64;
        // Start at different moments, as PCs booting do.
        std::thread::sleep(Duration::from_millis(rng.below(self.set.pause_ms + 1)));
        while !self.stop.load(Ordering::Relaxed) {
            round += 1;
            tally(self.counts).rounds += 1;
            let img = image(self.index, round, self.set.image_mib);
            if let Err(e) = fs::write(&disk, &img) {
                note(&mut tally(self.counts).backup_errors, &format!("writing {}: {e}", disk.display()));
                break;
            }
            let opened = self.t0.elapsed().as_secs_f64();
            let result = Device::open(&disk, false).and_then(|dev| {
                let mut opts = BackupOptions::new(&self.name, &backup_name(round));
                opts.chunk_size = self.set.chunk_kib * 1024;
                opts.threads = 2;
                backup::backup(&dev, &self.client, &opts, &mut |_| {})
            });
            match result {
                Ok(r) => {
                    let mut c = tally(self.counts);
                    c.backups_ok += 1;
                    rec.completed.insert(r.id, round);
                    rec.times.insert(r.id, (opened, self.t0.elapsed().as_secs_f64()));
                    kept.push_back((r.id, round));
                }
                Err(e) => {
                    let mut c = tally(self.counts);
                    c.backups_failed += 1;
                    note(&mut c.backup_errors, &e.0);
                }
            }
            // The newest backup, and now and then an older one still kept.
            let mut to_restore: Vec<(i64, u64)> =
                kept.back().filter(|(_, r)| *r == round).copied().into_iter().collect();
            if kept.len() > 1 && rng.below(3) == 0 {
                to_restore.push(kept[rng.below(kept.len() as u64 - 1) as usize]);
            }
            for (id, r) in to_restore {
                let expected = if r == round { img.clone() } else { image(self.index, r, self.set.image_mib) };
                let outcome = restore_and_compare(&self.client, id, &target, &expected);
                let mut c = tally(self.counts);
                match outcome {
                    Restored::Same => c.restores_ok += 1,
                    Restored::Differs(at) => c.restore_mismatches.push(format!(
                        "{} backup {id} (round {r}): restore completed but differs at byte {at}",
                        self.name
                    )),
                    Restored::Failed(e) => {
                        c.restores_failed += 1;
                        note(&mut c.restore_errors, &e);
                        if is_loss(&e) {
                            drop(c);
                            // Confirm with the store itself, and keep the
                            // backup out of retention so the final check
                            // sees it too.
                            let verdict = match admin(self.data, &["backups", "verify", &id.to_string()]) {
                                Ok(_) => "`backups verify` passes".to_owned(),
                                Err(v) => format!("`backups verify`: {}", last_line(&v)),
                            };
                            kept.retain(|(k, _)| *k != id);
                            rec.damaged.insert(id);
                            tally(self.counts)
                                .restore_losses
                                .push(format!("{} backup {id} (round {r}): {e} [{verdict}]", self.name));
                        }
                    }
                }
            }
            // Keep the last few: the rest become unreferenced chunks for gc.
            while kept.len() > self.set.keep {
                let (id, _) = kept[0];
                match admin(self.data, &["backups", "rm", &id.to_string()]) {
                    Ok(_) => {
                        kept.pop_front();
                        rec.removed.insert(id);
                        tally(self.counts).removed += 1;
                    }
                    Err(_) => {
                        tally(self.counts).rm_failed += 1;
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(rng.below(self.set.pause_ms + 1)));
        }
        rec
    }
}

fn gc_loop(set: &Settings, data: &Path, counts: &Shared, stop: &AtomicBool, t0: Instant) {
    let max_age = set.gc_max_age.to_string();
    while !stop.load(Ordering::Relaxed) {
        let began = t0.elapsed().as_secs_f64();
        let out = admin(data, &["gc", "--json", "--max-age", &max_age]);
        let ended = t0.elapsed().as_secs_f64();
        let mut c = tally(counts);
        c.gc_runs += 1;
        match out {
            Ok(text) => {
                let removed = json_number(&text, "chunks_removed");
                let kept = json_number(&text, "chunks_kept");
                c.gc_stale_closed += json_number(&text, "stale_uploads").unwrap_or(0);
                c.gc_chunks_removed += removed.unwrap_or(0);
                c.gc_timeline.push((began, ended, removed.unwrap_or(0)));
                if removed.unwrap_or(0) > 0 {
                    c.gc_removing += 1;
                }
                // The gc of 4ed133f removes and keeps nothing while an upload is open.
                if removed.unwrap_or(0) + kept.unwrap_or(0) == 0 {
                    c.gc_idle += 1;
                }
                c.gc_last = text.split_whitespace().collect::<Vec<_>>().join(" ");
            }
            Err(e) => {
                c.gc_failed += 1;
                c.gc_timeline.push((began, ended, 0));
                note(&mut c.gc_errors, &last_line(&e));
            }
        }
        drop(c);
        std::thread::sleep(set.gc_pause);
    }
}

/// Kills and restarts the server every `restart_every` until `stop`;
/// leaves it running.
fn churn(set: &Settings, server: &Mutex<Server>, counts: &Shared, stop: &AtomicBool) {
    let mut since = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if since.elapsed() < set.restart_every {
            continue;
        }
        let mut s = server.lock().unwrap_or_else(|p| p.into_inner());
        s.kill();
        std::thread::sleep(set.down);
        match s.start() {
            Ok(()) => tally(counts).restarts += 1,
            Err(e) => {
                tally(counts).restart_failures.push(e);
                return;
            }
        }
        since = Instant::now();
    }
}

fn main() {
    match soak() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("bench-soak failed: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs the soak; Ok(false) when data was lost.
fn soak() -> Result<bool> {
    let set = Settings::from_env()?;
    let _ = GC_MARGIN.set(set.gc_margin);
    let dir = workspace().join("target/bench/soak");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let data = dir.join("server-data");
    let mut server =
        Server { child: None, data: data.clone(), dir: dir.clone(), port: 0, starts: 0, fingerprint: None };
    server.start()?;
    let url = server.url();
    let fingerprint = server.fingerprint;
    eprintln!("soak: server on {url}, data {}", data.display());

    let mut pcs = Vec::new();
    for i in 0..set.pcs {
        let name = pc_name(i);
        let out = admin(&data, &["pc", "add", &name, "--mac", &mac_for(&name)])?;
        let token = out
            .lines()
            .find_map(|l| l.strip_prefix("token").map(|t| t.trim().to_owned()))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("no token line in {out:?}"))?;
        let pdir = dir.join(&name);
        fs::create_dir_all(&pdir).map_err(|e| e.to_string())?;
        pcs.push((name, token, pdir));
    }

    let counts: Shared = Arc::new(Mutex::new(Counts::default()));
    let stop_pcs = AtomicBool::new(false);
    let stop_churn = AtomicBool::new(false);
    let stop_gc = AtomicBool::new(false);
    let server = Mutex::new(server);
    let start = Instant::now();
    let duration = Duration::from_secs(set.seconds);
    eprintln!(
        "soak: {} PCs for {} s, server killed every {} s, gc --max-age {} in a loop",
        set.pcs,
        set.seconds,
        set.restart_every.as_secs(),
        set.gc_max_age
    );

    let records: Vec<(String, String, PcRecord)> = std::thread::scope(|s| {
        let gc = s.spawn(|| gc_loop(&set, &data, &counts, &stop_gc, start));
        let churner = s.spawn(|| churn(&set, &server, &counts, &stop_churn));
        let mut threads = Vec::new();
        for (i, (name, token, pdir)) in pcs.iter().enumerate() {
            let pc = Pc {
                index: i,
                name: name.clone(),
                client: Client::new(&url, name, token).pinned(fingerprint),
                dir: pdir.clone(),
                set: &set,
                data: &data,
                counts: &counts,
                stop: &stop_pcs,
                t0: start,
            };
            threads.push((name.clone(), token.clone(), s.spawn(move || pc.run())));
        }
        let mut last = Instant::now();
        while start.elapsed() < duration {
            std::thread::sleep(Duration::from_millis(200));
            if last.elapsed() >= Duration::from_secs(15) {
                last = Instant::now();
                let c = tally(&counts);
                eprintln!(
                    "soak: {:>4} s: {} rounds, backups {} ok / {} failed, restores {} ok / {} failed, {} restarts, gc {} runs ({} removing, {} chunks removed)",
                    start.elapsed().as_secs(),
                    c.rounds,
                    c.backups_ok,
                    c.backups_failed,
                    c.restores_ok,
                    c.restores_failed,
                    c.restarts,
                    c.gc_runs,
                    c.gc_removing,
                    c.gc_chunks_removed
                );
            }
        }
        // The PCs finish the round they are in, with the churn still on.
        stop_pcs.store(true, Ordering::Relaxed);
        let records = threads.into_iter().map(|(n, t, h)| (n, t, h.join().unwrap_or_default())).collect::<Vec<_>>();
        stop_churn.store(true, Ordering::Relaxed);
        let _ = churner.join();
        stop_gc.store(true, Ordering::Relaxed);
        let _ = gc.join();
        records
    });
    let churn_seconds = start.elapsed().as_secs_f64();
    let mut server = server.into_inner().unwrap_or_else(|p| p.into_inner());
    if server.child.is_none() {
        server.start()?;
    }
    eprintln!("soak: churn stopped after {churn_seconds:.0} s; checking every complete backup");

    // The end: every backup listed complete verifies and restores.
    let mut checked = 0u64;
    let mut verify_failures = Vec::new();
    let mut final_restore_failures = Vec::new();
    let mut final_mismatches = Vec::new();
    let mut unknown_names = Vec::new();
    let mut complete_but_failed_at_client = Vec::new();
    let mut lost = Vec::new();
    let target = dir.join("final-restore.img");
    for (i, (name, token, rec)) in records.iter().enumerate() {
        let client = server.client(name, token);
        let listed = client.backups().map_err(|e| format!("listing the backups of {name}: {e}"))?;
        let listed: Vec<_> = listed.into_iter().filter(|b| b.pc == *name).collect();
        let ids: HashSet<i64> = listed.iter().map(|b| b.id).collect();
        for (id, round) in &rec.completed {
            if !rec.removed.contains(id) && !ids.contains(id) {
                lost.push(format!("{name} backup {id} (round {round}): reported complete to the PC, not listed now"));
            }
        }
        for b in &listed {
            checked += 1;
            let Some(round) = round_of(&b.name) else {
                unknown_names.push(format!("{name} backup {} named {:?}", b.id, b.name));
                continue;
            };
            if !rec.completed.contains_key(&b.id) {
                complete_but_failed_at_client.push(format!("{name} backup {} (round {round})", b.id));
            }
            if let Err(e) = admin(&data, &["backups", "verify", &b.id.to_string()]) {
                let why = last_line(&e);
                verify_failures.push(format!("{name} backup {} (round {round}): {why}", b.id));
            }
            let expected = image(i, round, set.image_mib);
            match restore_and_compare(&client, b.id, &target, &expected) {
                Restored::Same => {}
                Restored::Differs(at) => {
                    final_mismatches.push(format!("{name} backup {} (round {round}): differs at byte {at}", b.id))
                }
                Restored::Failed(e) => {
                    final_restore_failures.push(format!("{name} backup {} (round {round}): {e}", b.id))
                }
            }
        }
    }
    let _ = fs::remove_file(&target);
    let store_chunks = fs::read_dir(data.join("chunks"))
        .map(|d| d.flatten().map(|s| fs::read_dir(s.path()).map(|f| f.count()).unwrap_or(0)).sum::<usize>())
        .unwrap_or(0);
    let all = admin(&data, &["backups", "list", "--all"]).unwrap_or_default();
    let states: HashMap<&str, usize> = ["complete", "failed", "uploading"]
        .into_iter()
        .map(|s| (s, all.lines().filter(|l| l.split_whitespace().any(|w| w == s)).count()))
        .collect();
    server.kill();

    let damaged: usize = records.iter().map(|(_, _, r)| r.damaged.len()).sum();
    let c = tally(&counts);
    // For each damaged backup: the gc runs that were running while it was
    // open (a gc that starts after a backup is complete keeps its chunks).
    let mut timeline = Vec::new();
    for (name, _, rec) in &records {
        for id in &rec.damaged {
            let Some(&(opened, done)) = rec.times.get(id) else { continue };
            let runs: Vec<String> = c
                .gc_timeline
                .iter()
                .filter(|(b, e, _)| *b <= done && *e >= opened)
                .map(|(b, e, r)| format!("{b:.1}-{e:.1} s removing {r} chunks"))
                .collect();
            timeline.push(format!(
                "{name} backup {id}: opened at {opened:.1} s, complete at {done:.1} s; gc runs overlapping: {}",
                if runs.is_empty() { "none".to_owned() } else { runs.join(", ") }
            ));
        }
    }
    timeline.sort();
    let lost_any = !verify_failures.is_empty()
        || !final_restore_failures.is_empty()
        || !final_mismatches.is_empty()
        || !lost.is_empty()
        || !c.restore_mismatches.is_empty()
        || !c.restore_losses.is_empty();

    println!(
        "### Soak: {} PCs, {:.0} s, server killed every {} s, gc in a loop\n",
        set.pcs,
        churn_seconds,
        set.restart_every.as_secs()
    );
    println!(
        "Images {} MiB ({} KiB chunks; shared, per-PC, cycling and fresh zones), each PC keeps its last {} backups; \
         `gc --max-age {}` every {} ms (BOOTVAULT_GC_MARGIN={}); server down {} ms per restart.\n",
        set.image_mib,
        set.chunk_kib,
        set.keep,
        set.gc_max_age,
        set.gc_pause.as_millis(),
        if set.gc_margin > 0 { set.gc_margin.to_string() } else { "unset".into() },
        set.down.as_millis()
    );
    println!("Server and admin CLI: `{}`.\n", bootvault_bin().display());
    println!("| measure | count |");
    println!("| --- | --- |");
    let rows: Vec<(&str, String)> = vec![
        ("rounds (backup attempts)", c.rounds.to_string()),
        ("backups completed", c.backups_ok.to_string()),
        ("backups failed (cleanly, at the PC)", c.backups_failed.to_string()),
        ("restores during the soak, byte-identical", c.restores_ok.to_string()),
        ("restores during the soak, failed", c.restores_failed.to_string()),
        ("restores during the soak that completed with wrong bytes", c.restore_mismatches.len().to_string()),
        ("restores during the soak refused for a missing/damaged chunk", c.restore_losses.len().to_string()),
        ("distinct complete backups found damaged during the soak", damaged.to_string()),
        ("backups removed by the PCs' retention", c.removed.to_string()),
        ("server restarts (SIGKILL)", c.restarts.to_string()),
        ("gc runs", c.gc_runs.to_string()),
        ("gc runs that removed chunks", c.gc_removing.to_string()),
        ("gc runs that neither removed nor kept a chunk (an empty store; the gc of 4ed133f whenever an upload was open)", c.gc_idle.to_string()),
        ("gc: chunks removed", c.gc_chunks_removed.to_string()),
        ("gc: abandoned uploads closed", c.gc_stale_closed.to_string()),
        ("gc runs that failed", c.gc_failed.to_string()),
        ("backups listed complete at the end, checked", checked.to_string()),
        ("`backups verify` failures", verify_failures.len().to_string()),
        ("final restores failed", final_restore_failures.len().to_string()),
        ("final restores with byte mismatches", final_mismatches.len().to_string()),
        ("reported complete to the PC but no longer listed", lost.len().to_string()),
        ("listed complete though the PC saw the backup fail", complete_but_failed_at_client.len().to_string()),
        (
            "backups at the end: complete / failed / uploading",
            format!("{} / {} / {}", states["complete"], states["failed"], states["uploading"]),
        ),
        ("chunks in the store at the end", store_chunks.to_string()),
    ];
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    let list = |title: &str, items: &[String]| {
        if !items.is_empty() {
            println!("\n{title}:\n");
            for i in items.iter().take(12) {
                let short: String = i.chars().take(400).collect();
                println!("- {short}{}", if short.len() < i.len() { " ..." } else { "" });
            }
            if items.len() > 12 {
                println!("- ... and {} more", items.len() - 12);
            }
        }
    };
    let errors = |title: &str, map: &BTreeMap<String, (u64, String)>| {
        if !map.is_empty() {
            let mut v: Vec<_> = map.values().collect();
            v.sort_by_key(|e| std::cmp::Reverse(e.0));
            println!("\n{title} (count, one example each):\n");
            for (n, example) in v.iter().take(12) {
                println!("- {n} × `{}`", example.replace('`', "'"));
            }
        }
    };
    errors("Backup failures by kind", &c.backup_errors);
    errors("Restore failures during the soak by kind", &c.restore_errors);
    list("Restores during the soak that wrote wrong bytes", &c.restore_mismatches);
    list("Restores during the soak refused for a missing or damaged chunk", &c.restore_losses);
    list("`backups verify` failures", &verify_failures);
    list("Final restore failures", &final_restore_failures);
    list("Final byte mismatches", &final_mismatches);
    list("Reported complete, no longer listed", &lost);
    list("Listed complete though the PC saw the backup fail (finish answer lost?)", &complete_but_failed_at_client);
    list("Backups with names the soak did not make", &unknown_names);
    list("Server restarts that failed", &c.restart_failures);
    errors("gc failures by kind", &c.gc_errors);
    list("Damaged backups: when each was made, and the gc runs that overlapped it", &timeline);
    if !c.gc_last.is_empty() {
        println!("\nLast gc output: `{}`", c.gc_last);
    }
    println!(
        "\n{}",
        if lost_any {
            "**DATA LOST**: see the lists above."
        } else {
            "Nothing lost: every backup listed complete verified and restored byte for byte."
        }
    );
    Ok(!lost_any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_share_cycle_and_change_as_designed() {
        let block = |img: &[u8], b: usize| img[b * BLOCK..(b + 1) * BLOCK].to_vec();
        let (a1, a2, a5, b1) = (image(0, 1, 4), image(0, 2, 4), image(0, 1 + VARIANTS, 4), image(1, 1, 4));
        assert_eq!(a1.len(), 4 << 20);
        // 64 blocks: 0..24 shared, 24..40 own, 40..48 cycling, 48..52 fresh, 52.. zeros.
        assert_eq!(block(&a1, 0), block(&b1, 0));
        assert_ne!(block(&a1, 24), block(&b1, 24));
        assert_eq!(block(&a1, 24), block(&a2, 24));
        assert_ne!(block(&a1, 40), block(&a2, 40));
        assert_eq!(block(&a1, 40), block(&a5, 40));
        assert_ne!(block(&a1, 48), block(&a5, 48));
        assert!(a1[52 * BLOCK..].iter().all(|&b| b == 0));
    }

    #[test]
    fn report_helpers() {
        assert_eq!(
            json_number("{\n  \"stale_uploads\": 2,\n  \"chunks_removed\": 315\n}", "chunks_removed"),
            Some(315)
        );
        assert_eq!(json_number("{\"chunks_kept\":7}", "chunks_kept"), Some(7));
        assert_eq!(json_number("{}", "chunks_kept"), None);
        assert_eq!(round_of(&backup_name(17)), Some(17));
        assert_eq!(round_of("full"), None);
        assert_eq!(
            error_kind(&format!(
                "GET http://127.0.0.1:1/x: chunk {} is not in the store (offset 2621440)",
                "ab".repeat(32)
            )),
            "GET URL chunk HEX is not in the store (offset N)"
        );
        assert!(is_loss("chunk 3: server answered 404: chunk ab is not in the store"));
        assert!(!is_loss("POST http://x: io: Connection refused (os error 111)"));
    }
}
