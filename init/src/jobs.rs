//! What the PC does once it is up: back up or restore a disk, as the
//! configuration says or as the server's job for this PC says, and report
//! the outcome to the server.
//!
//! Owns: choosing the disk and the backup, and the result report. The
//! pipelines themselves are `bootvault_engine`'s, the same ones the host
//! CLI runs.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bootvault_common::config::{Action, BackupRef, Config, Place};
use bootvault_common::job::JobMessage;
use bootvault_common::seal::{self, DataKey};
use bootvault_common::units::human_bytes;
use bootvault_engine::backup::{backup, BackupOptions};
use bootvault_engine::client::Client;
use bootvault_engine::device::Device;
use bootvault_engine::lock::Lock;
use bootvault_engine::progress::Progress;
use bootvault_engine::restore::{restore, RestoreOptions};
use bootvault_engine::store::Store;

use crate::pid1::say;
use crate::{disks, volumes};

/// One backup or restore to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The server's job id, when the server asked for it.
    pub id: Option<i64>,
    pub action: Action,
    pub disk: String,
    pub name: String,
    pub backup: BackupRef,
    /// A backup job's restore password lock (from the server's job).
    pub lock: Option<Lock>,
    /// A restore job's unlock ticket (the admin gave the password).
    pub ticket: Option<String>,
    /// The password's wrap key, sealed with the site's data key (hex):
    /// a backup job's backup gets a key of its own; a restore job's
    /// backup opens with it.
    pub wrap: Option<String>,
}

impl Job {
    pub fn from_config(c: &Config) -> Job {
        Job {
            id: None,
            action: c.action,
            disk: c.disk.clone(),
            name: c.name.clone(),
            backup: c.backup,
            lock: None,
            ticket: None,
            wrap: None,
        }
    }

    /// A job from the server's `key=value` answer (every field checked,
    /// unknown and repeated keys refused: [`JobMessage`]); what the
    /// server leaves out comes from `c`.
    pub fn from_server(kv: &[(String, String)], c: &Config) -> Result<Job, String> {
        let m = JobMessage::from_pairs(kv.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let lock = m.lock.as_deref().map(Lock::from_text).transpose().map_err(|e| format!("job {}: {e}", m.id))?;
        Ok(Job {
            id: Some(m.id),
            action: m.action,
            disk: m.disk.unwrap_or_else(|| c.disk.clone()),
            name: m.name.unwrap_or_else(|| c.name.clone()),
            backup: m.backup,
            lock,
            ticket: m.ticket,
            wrap: m.wrap,
        })
    }
}

struct Outcome {
    summary: String,
    /// The disk actually used (`auto` resolved).
    disk: String,
    backup: i64,
    bytes: u64,
    sent: u64,
}

/// Runs the configured action. `Probe` does nothing here, and neither
/// does `Menu` (the console runs that; see `server_job`). `client` is
/// `None` when there is no server to talk to (a local job).
pub fn run(config: &Config, client: Option<&Client>) -> Result<(), String> {
    let job = match config.action {
        Action::Probe | Action::Menu => return Ok(()),
        Action::Job => {
            let client = client.ok_or("action=job needs the server")?;
            match server_job(config, client)? {
                None => {
                    say("job: the server has no job for this PC");
                    return Ok(());
                }
                Some(job) => job,
            }
        }
        Action::Backup | Action::Restore => Job::from_config(config),
    };
    run_job(&job, config, client)
}

/// The server's job for this PC, if it has one.
pub fn server_job(config: &Config, client: &Client) -> Result<Option<Job>, String> {
    match client.next_job().map_err(|e| format!("asking for a job: {e}"))? {
        None => Ok(None),
        Some(kv) => Job::from_server(&kv, config).map(Some),
    }
}

/// Where a job's backups are: a server job always uses the server; a
/// job from the settings uses `dest` (backups) or `source` (restores).
pub fn place_of(job: &Job, config: &Config) -> Place {
    match (job.id, job.action) {
        (Some(_), _) => Place::Server,
        (None, Action::Backup) => config.dest.clone(),
        (None, _) => config.source.clone(),
    }
}

/// Carries out one job and reports its outcome to the server (when
/// there is one).
pub fn run_job(job: &Job, config: &Config, client: Option<&Client>) -> Result<(), String> {
    let place = place_of(job, config);
    say(format!(
        "job: {} of disk {}{}{}",
        job.action.as_str(),
        job.disk,
        job.id.map(|i| format!(" (server job {i})")).unwrap_or_default(),
        match &place {
            Place::Server => String::new(),
            Place::Local(spec) => format!(" {} drive {spec}", if job.action == Action::Backup { "to" } else { "from" }),
        }
    ));
    let start = Instant::now();
    let outcome = match &place {
        Place::Server => match client {
            Some(c) => execute(job, config, c, Some(c), None),
            None => Err("no server to use (no network, or no server configured)".into()),
        },
        Place::Local(spec) => execute_local(job, config, spec),
    };
    let (disk, backup, message, bytes, sent) = match &outcome {
        Ok(o) => (o.disk.as_str(), o.backup.to_string(), o.summary.as_str(), o.bytes, o.sent),
        Err(e) => (job.disk.as_str(), String::new(), e.as_str(), 0, 0),
    };
    if let Some(client) = client {
        Report {
            job: job.id,
            action: job.action.as_str(),
            disk,
            backup,
            ok: outcome.is_ok(),
            message,
            bytes,
            sent,
            elapsed: start.elapsed(),
        }
        .send(client);
    }
    let o = outcome?;
    say(o.summary);
    Ok(())
}

/// How a backup or restore went, for the server's results (the
/// console's runs report the same way).
pub struct Report<'a> {
    pub job: Option<i64>,
    pub action: &'a str,
    pub disk: &'a str,
    /// The backup's id; empty when there is none.
    pub backup: String,
    pub ok: bool,
    pub message: &'a str,
    pub bytes: u64,
    pub sent: u64,
    pub elapsed: Duration,
}

impl Report<'_> {
    /// Sends it. A failure to report is said on the console, not fatal.
    pub fn send(&self, client: &Client) {
        let kv = [
            ("job", self.job.map(|i| i.to_string()).unwrap_or_default()),
            ("action", self.action.to_owned()),
            ("disk", self.disk.to_owned()),
            ("backup", self.backup.clone()),
            ("ok", if self.ok { "yes" } else { "no" }.to_owned()),
            ("message", self.message.to_owned()),
            ("bytes", self.bytes.to_string()),
            ("sent", self.sent.to_string()),
            ("seconds", format!("{:.1}", self.elapsed.as_secs_f64())),
        ];
        if let Err(e) = client.report(&kv) {
            say(format!("result: could not report to the server: {e}"));
        }
    }
}

/// Where the builder puts the data key of backups encrypted on the PC.
pub const KEY_PATH: &str = "/etc/bootvault.key";

/// The PC's data key, read once: None when the PC has none (its backups
/// are not encrypted); an error when the file is there but unreadable, so
/// a PC meant to encrypt never backs up in the clear.
/// A secret a job carries sealed with the site's data key (the
/// password's wrap key), opened with this PC's.
fn job_secret(hex: &str, key: Option<&DataKey>) -> Result<bootvault_engine::lock::WrapKey, String> {
    let Some(key) = key else {
        return Err("the job carries a password's key sealed with the site's data key, and this PC has none".into());
    };
    let mut sealed = vec![0u8; hex.len() / 2];
    bootvault_common::wire::hex_into(hex, &mut sealed).map_err(|e| format!("the job's wrap: {e}"))?;
    key.open_secret(&sealed).map_err(|_| {
        format!("the job's password key does not open with this PC's data key {} (another site's?)", key.fingerprint())
    })
}

pub fn data_key() -> Result<Option<Arc<DataKey>>, String> {
    static KEY: OnceLock<Result<Option<Arc<DataKey>>, String>> = OnceLock::new();
    KEY.get_or_init(|| match std::fs::read_to_string(KEY_PATH) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading the data key {KEY_PATH}: {e}")),
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            let master = seal::parse_key_text(&text).map_err(|e| format!("{KEY_PATH}: {e}"))?;
            Ok(Some(Arc::new(DataKey::new(&master))))
        }
    })
    .clone()
}

/// How often a running job tells the server how far it is.
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Runs `job` (a backup or restore) with `show` as its progress callback
/// and, with a server, also reports progress to it (`POST progress`, for
/// the web console): about every [`REPORT_EVERY`] from a thread of its
/// own, so a slow answer never holds the job up (a report it has no room
/// for is skipped; the next carries everything), then `done` or `failed`
/// at the end. A report that fails changes nothing for the job.
pub fn with_reports<T>(
    client: Option<&Client>,
    action: &'static str,
    job: Option<i64>,
    show: &mut dyn FnMut(&Progress),
    run: impl FnOnce(&mut dyn FnMut(&Progress)) -> Result<T, String>,
) -> Result<T, String> {
    let Some(client) = client else { return run(show) };
    let kv = |p: &Progress, step: &str| -> Vec<(&'static str, String)> {
        let secs = p.elapsed.as_secs_f64();
        let rate = if secs > 0.0 { (p.done as f64 / secs) as u64 } else { 0 };
        let mut kv = vec![("action", action.to_owned())];
        if let Some(j) = job {
            kv.push(("job", j.to_string()));
        }
        kv.extend([
            ("step", step.to_owned()),
            ("done", p.done.to_string()),
            ("total", p.total.to_string()),
            ("moved", p.sent.to_string()),
            ("rate", rate.to_string()),
        ]);
        if let Some(eta) = p.eta().filter(|_| step != "done") {
            kv.push(("eta", eta.as_secs().to_string()));
        }
        kv
    };
    let step = if action == "backup" { "sending" } else { "writing" };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(&'static str, String)>>(1);
    std::thread::scope(|s| {
        s.spawn(move || {
            for report in rx {
                let _ = client.progress(&report);
            }
        });
        let mut sent_at: Option<Instant> = None;
        let mut last: Option<Progress> = None;
        let result = run(&mut |p: &Progress| {
            show(p);
            if sent_at.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                sent_at = Some(Instant::now());
                let _ = tx.try_send(kv(p, step));
            }
            last = Some(p.clone());
        });
        let end = last.unwrap_or(Progress { action, done: 0, total: 0, sent: 0, elapsed: Duration::ZERO });
        let end = match &result {
            Ok(_) => kv(&Progress { done: end.total, ..end }, "done"),
            Err(_) => kv(&end, "failed"),
        };
        let _ = tx.send(end);
        drop(tx);
        result
    })
}

/// The console's progress lines: about one a second.
fn progress_printer() -> impl FnMut(&Progress) {
    let mut last_line = Instant::now() - Duration::from_secs(10);
    move |p| {
        if last_line.elapsed() >= Duration::from_millis(900) || p.done == p.total {
            last_line = Instant::now();
            say(p.line());
        }
    }
}

/// What a backup reads of `dev` (its used space, or every byte with
/// `raw`): the most it can store.
pub fn backup_need(dev: &Device, raw: bool) -> u64 {
    dev.bytes.saturating_sub(bootvault_engine::backup::disk_plan(dev, raw).unused_bytes())
}

/// A backup or restore with a local drive: the volume found (waiting for
/// a USB drive to show up), checked against the disk, mounted, the
/// store opened (cleaning up what an interrupted backup left), the job
/// run, the drive flushed and unmounted.
fn execute_local(job: &Job, config: &Config, spec: &str) -> Result<Outcome, String> {
    let wait = Duration::from_secs(u64::from(config.coldplug_timeout.max(5)));
    let (all, vol) = volumes::wait_for(spec, wait, &|m| say(m))?;
    let disk = disks::pick_except(&all, &job.disk, &vol.disk)?;
    let backing_up = job.action == Action::Backup;
    if backing_up {
        let dev = Device::open(&Path::new("/dev").join(&disk.name), false).map_err(|e| e.to_string())?;
        let need = backup_need(&dev, config.raw);
        // Looked at read-only first: a drive refused is not written to.
        let look = volumes::look(&vol, &|m| say(m));
        let free = look.free.map_err(|e| format!("drive {spec}: {e}"))?;
        let fits = volumes::fit_text(free, need).map_err(|e| format!("drive {}: {e}", vol.title()))?;
        say(format!("drive: {}: {fits}", vol.title()));
    }
    let (mounted, store) = volumes::open_store(&vol, backing_up, &|m| say(m))?;
    if !store.cleaned().is_empty() {
        say(format!("drive: {}: {}", vol.title(), store.cleaned().line()));
    }
    let result = execute(job, config, &store, None, Some(disk.name.as_str()));
    drop(store);
    let unmounted = mounted.unmount();
    match (&result, unmounted) {
        (_, Ok(())) => say(format!("drive: {} written out and unmounted; it can be removed", vol.title())),
        (Ok(_), Err(e)) => return Err(format!("{e}: the backup may not be safe on the drive; do not remove it yet")),
        (Err(_), Err(e)) => say(e),
    }
    result
}

/// Runs a backup or restore of `job` against `store` (`server`: the same
/// store as the server's client, for a job's unlock ticket); `disk` is
/// the disk already chosen (a local job picks it apart from the drive's).
fn execute(
    job: &Job,
    config: &Config,
    store: &dyn Store,
    server: Option<&Client>,
    disk: Option<&str>,
) -> Result<Outcome, String> {
    let all = disks::probe(Path::new("/"));
    let disk = disks::pick(&all, disk.unwrap_or(&job.disk))?;
    let path = Path::new("/dev").join(&disk.name);
    let mut printer = progress_printer();
    let action = if job.action == Action::Backup { "backup" } else { "restore" };
    with_reports(server, action, job.id, &mut printer, |progress| {
        execute_on(job, config, store, server, disk, &path, progress)
    })
}

/// [`execute`] on the chosen disk, with `progress` as the callback.
fn execute_on(
    job: &Job,
    config: &Config,
    store: &dyn Store,
    server: Option<&Client>,
    disk: &disks::Disk,
    path: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome, String> {
    match job.action {
        Action::Backup => {
            let dev = Device::open(path, false).map_err(|e| e.to_string())?;
            let mut opts = BackupOptions::new(&config.pc, if job.name.is_empty() { "full" } else { &job.name });
            opts.level = config.level;
            opts.raw = config.raw;
            opts.model = disk.model.clone();
            opts.serial = disk.serial.clone();
            opts.lock = job.lock.clone();
            opts.escrow = config.escrow;
            opts.key = data_key()?;
            if let (Some(lock), Some(w)) = (opts.lock.as_mut(), &job.wrap) {
                lock.wrap = Some(job_secret(w, opts.key.as_deref())?);
            }
            if let Some(k) = &opts.key {
                say(format!("backup: encrypted on this PC with data key {}", k.fingerprint()));
            }
            say(format!(
                "backup: {} ({}) as {:?} to {}",
                disk.name,
                human_bytes(dev.bytes),
                opts.name,
                store.location()
            ));
            let r = backup(&dev, store, &opts, progress).map_err(|e| format!("backup of {}: {e}", disk.name))?;
            say(memory_line(&r.fit));
            Ok(Outcome {
                summary: r.summary(),
                disk: disk.name.clone(),
                backup: r.id,
                bytes: r.disk_bytes,
                sent: r.sent_bytes,
            })
        }
        Action::Restore => {
            let id = match job.backup {
                BackupRef::Id(n) => n,
                BackupRef::Latest => store
                    .latest(&config.pc, (!job.name.is_empty()).then_some(job.name.as_str()))
                    .map_err(|e| format!("finding the latest backup of {}: {e}", config.pc))?,
            };
            if let (Some(t), Some(client)) = (&job.ticket, server) {
                client.set_ticket(id, t.clone());
            }
            if let (Some(w), Some(client)) = (&job.wrap, server) {
                client.set_wrap(id, job_secret(w, data_key()?.as_deref())?);
            }
            let dev = Device::open(path, true).map_err(|e| e.to_string())?;
            say(format!(
                "restore: backup {id} from {} onto {} ({})",
                store.location(),
                disk.name,
                human_bytes(dev.bytes)
            ));
            let opts = RestoreOptions { verify: config.verify, key: data_key()?, ..RestoreOptions::default() };
            let r = restore(&dev, store, id, &opts, progress)
                .map_err(|e| format!("restore of backup {id} onto {}: {e}", disk.name))?;
            say(memory_line(&r.fit));
            if let Some(e) = &r.reread_error {
                say(format!("restore: the kernel did not re-read the partition table: {e}"));
            }
            Ok(Outcome {
                summary: r.summary(&disk.name),
                disk: disk.name.clone(),
                backup: id,
                bytes: r.disk_bytes,
                sent: r.fetched_bytes,
            })
        }
        Action::Probe | Action::Job | Action::Menu => {
            Ok(Outcome { summary: String::new(), disk: disk.name.clone(), backup: 0, bytes: 0, sent: 0 })
        }
    }
}

/// `memory: 2 workers × 2 chunks (14.0 MiB of 47.0 MiB available); PID 1's peak 31.2 MiB`:
/// what the engine sized itself to, and what this process held at most.
fn memory_line(fit: &bootvault_engine::memory::Fit) -> String {
    let peak =
        bootvault_engine::memory::peak().map(|p| format!("; PID 1's peak {}", human_bytes(p))).unwrap_or_default();
    format!("memory: {}{peak}", fit.describe())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn server_jobs() {
        let c = Config::default();
        let j = Job::from_server(&kv(&[("job", "7"), ("action", "restore"), ("backup", "12"), ("disk", "sdb")]), &c)
            .unwrap();
        assert_eq!(
            j,
            Job {
                id: Some(7),
                action: Action::Restore,
                disk: "sdb".into(),
                name: "".into(),
                backup: BackupRef::Id(12),
                lock: None,
                ticket: None,
                wrap: None,
            }
        );
        let j = Job::from_server(&kv(&[("job", "8"), ("action", "backup"), ("name", "weekly")]), &c).unwrap();
        assert_eq!((j.disk.as_str(), j.name.as_str(), j.backup), ("auto", "weekly", BackupRef::Latest));
        assert!(Job::from_server(&kv(&[("action", "backup")]), &c).unwrap_err().contains("no id"));
        assert_eq!(
            Job::from_server(&kv(&[("job", "1"), ("action", "format")]), &c).unwrap_err(),
            "job 1: action=\"format\": expected backup or restore"
        );
        // What a newline in the disk field turned into; and what no server sends.
        let injected =
            kv(&[("job", "7"), ("action", "restore"), ("disk", "sda"), ("backup", "3"), ("name", ""), ("backup", "1")]);
        assert_eq!(Job::from_server(&injected, &c).unwrap_err(), "the server's job: backup= given twice");
        let unknown = kv(&[("job", "7"), ("action", "restore"), ("verify", "no")]);
        assert_eq!(Job::from_server(&unknown, &c).unwrap_err(), "the server's job: unknown key \"verify\"");
        let bad_disk = kv(&[("job", "7"), ("action", "restore"), ("disk", "/dev/sda")]);
        assert!(Job::from_server(&bad_disk, &c).unwrap_err().starts_with("job 7: disk=\"/dev/sda\": expected auto"));
        // Left out: the PC's own settings.
        let own = Config { disk: "vdb".into(), name: "mine".into(), ..Config::default() };
        let j = Job::from_server(&kv(&[("job", "8"), ("action", "backup")]), &own).unwrap();
        assert_eq!((j.disk.as_str(), j.name.as_str()), ("vdb", "mine"));
        // Passwords: a backup job's lock, a restore job's ticket.
        let lock = "argon2id m=19456 t=2 p=1 salt=000102030405060708090a0b0c0d0e0f key=".to_string() + &"ab".repeat(32);
        let j = Job::from_server(&kv(&[("job", "9"), ("action", "backup"), ("lock", &lock)]), &c).unwrap();
        assert_eq!(j.lock.map(|l| l.to_text()), Some(lock.clone()));
        let ticket = "t1".repeat(32).replace('t', "a");
        let j = Job::from_server(&kv(&[("job", "9"), ("action", "restore"), ("backup", "3"), ("ticket", &ticket)]), &c);
        assert_eq!(j.unwrap().ticket, Some(ticket));
        let e = Job::from_server(
            &kv(&[("job", "9"), ("action", "backup"), ("lock", &lock.replace("m=19456", "m=4194304"))]),
            &c,
        )
        .unwrap_err();
        assert!(e.starts_with("job 9: lock: argon2id memory"), "{e}");
    }
}
