//! What the PC does once it is up: back up or restore a disk, as the
//! configuration says or as the server's job for this PC says, and report
//! the outcome to the server.
//!
//! Owns: choosing the disk and the backup, and the result report. The
//! pipelines themselves are `bootvault_engine`'s, the same ones the host
//! CLI runs.

use std::path::Path;
use std::time::{Duration, Instant};

use bootvault_common::config::{Action, BackupRef, Config};
use bootvault_common::job::JobMessage;
use bootvault_common::units::human_bytes;
use bootvault_engine::backup::{backup, BackupOptions};
use bootvault_engine::client::Client;
use bootvault_engine::device::Device;
use bootvault_engine::lock::Lock;
use bootvault_engine::restore::{restore, RestoreOptions};

use crate::disks;
use crate::pid1::say;

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
/// does `Menu` (the console runs that; see `server_job`).
pub fn run(config: &Config, client: &Client) -> Result<(), String> {
    let job = match config.action {
        Action::Probe | Action::Menu => return Ok(()),
        Action::Job => match server_job(config, client)? {
            None => {
                say("job: the server has no job for this PC");
                return Ok(());
            }
            Some(job) => job,
        },
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

/// Carries out one job and reports its outcome to the server.
pub fn run_job(job: &Job, config: &Config, client: &Client) -> Result<(), String> {
    say(format!(
        "job: {} of disk {}{}",
        job.action.as_str(),
        job.disk,
        job.id.map(|i| format!(" (server job {i})")).unwrap_or_default()
    ));
    let start = Instant::now();
    let outcome = execute(job, config, client);
    let (disk, backup, message, bytes, sent) = match &outcome {
        Ok(o) => (o.disk.as_str(), o.backup.to_string(), o.summary.as_str(), o.bytes, o.sent),
        Err(e) => (job.disk.as_str(), String::new(), e.as_str(), 0, 0),
    };
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

fn execute(job: &Job, config: &Config, client: &Client) -> Result<Outcome, String> {
    let all = disks::probe(Path::new("/"));
    let disk = disks::pick(&all, &job.disk)?;
    let path = Path::new("/dev").join(&disk.name);
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let mut progress = |p: &bootvault_engine::progress::Progress| {
        // The engine reports about once a second; keep the console calm.
        if last_line.elapsed() >= Duration::from_millis(900) || p.done == p.total {
            last_line = Instant::now();
            say(p.line());
        }
    };
    match job.action {
        Action::Backup => {
            let dev = Device::open(&path, false).map_err(|e| e.to_string())?;
            let mut opts = BackupOptions::new(&config.pc, if job.name.is_empty() { "full" } else { &job.name });
            opts.level = config.level;
            opts.raw = config.raw;
            opts.model = disk.model.clone();
            opts.serial = disk.serial.clone();
            opts.lock = job.lock.clone();
            say(format!("backup: {} ({}) as {:?} to {}", disk.name, human_bytes(dev.bytes), opts.name, client.base()));
            let r = backup(&dev, client, &opts, &mut progress).map_err(|e| format!("backup of {}: {e}", disk.name))?;
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
                BackupRef::Latest => client
                    .latest(&config.pc, (!job.name.is_empty()).then_some(job.name.as_str()))
                    .map_err(|e| format!("finding the latest backup of {}: {e}", config.pc))?,
            };
            if let Some(t) = &job.ticket {
                client.set_ticket(id, t.clone());
            }
            let dev = Device::open(&path, true).map_err(|e| e.to_string())?;
            say(format!("restore: backup {id} onto {} ({})", disk.name, human_bytes(dev.bytes)));
            let opts = RestoreOptions { verify: config.verify, ..RestoreOptions::default() };
            let r = restore(&dev, client, id, &opts, &mut progress)
                .map_err(|e| format!("restore of backup {id} onto {}: {e}", disk.name))?;
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
