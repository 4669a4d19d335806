//! Live progress of the backups and restores PCs are running: the last
//! report of each PC (`POST /api/v1/progress`), and a channel the web
//! console's event stream follows.
//!
//! Owns: what is running now, in this server's memory. A report is a
//! snapshot (PCs send one every couple of seconds), so losing them with
//! a restart loses nothing the PC will not send again; results stay the
//! database's.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;

/// Reports older than this are no longer shown as running.
pub const STALE_SECONDS: i64 = 120;

/// One PC's last report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Progress {
    pub pc: String,
    /// `backup` or `restore`.
    pub action: String,
    /// The job it runs, if it came from one.
    pub job: Option<i64>,
    /// What it is doing: `reading`, `sending`, `writing`, `verifying`,
    /// `done`, `failed`.
    pub step: String,
    /// Bytes of the disk done, of `total`.
    pub done: u64,
    pub total: u64,
    /// Bytes sent (backup) or fetched (restore).
    pub moved: u64,
    /// Bytes of the disk per second, over the last stretch.
    pub rate: u64,
    /// Seconds left, if known.
    pub eta: Option<u64>,
    /// When the server got it (unix seconds).
    pub at: i64,
}

impl Progress {
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            (self.done as f64 * 100.0 / self.total as f64).min(100.0)
        }
    }

    pub fn finished(&self) -> bool {
        matches!(self.step.as_str(), "done" | "failed")
    }

    /// From a PC's `key=value` report; `None` names what is wrong.
    pub fn from_report(pc: &str, kv: &std::collections::HashMap<String, String>, at: i64) -> Result<Progress, String> {
        let num = |k: &str| -> Result<u64, String> {
            kv.get(k).map_or(Ok(0), |v| v.parse().map_err(|_| format!("{k}: not a number: {v:?}")))
        };
        let action = kv.get("action").cloned().unwrap_or_default();
        if !matches!(action.as_str(), "backup" | "restore") {
            return Err(format!("action must be backup or restore, not {action:?}"));
        }
        let step = kv.get("step").cloned().unwrap_or_default();
        if step.is_empty() || step.len() > 32 || !step.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            return Err(format!("step: 1 to 32 lowercase letters, not {step:?}"));
        }
        let job = match kv.get("job").filter(|v| !v.is_empty()) {
            Some(v) => Some(v.parse().map_err(|_| format!("job: not a number: {v:?}"))?),
            None => None,
        };
        let eta = match kv.get("eta").filter(|v| !v.is_empty()) {
            Some(v) => Some(v.parse().map_err(|_| format!("eta: not a number: {v:?}"))?),
            None => None,
        };
        let (done, total) = (num("done")?, num("total")?);
        if done > total {
            return Err(format!("done ({done}) is more than total ({total})"));
        }
        Ok(Progress {
            pc: pc.to_owned(),
            action,
            job,
            step,
            done,
            total,
            moved: num("moved")?,
            rate: num("rate")?,
            eta,
            at,
        })
    }
}

/// The last report per PC and the channel of new ones.
pub struct Hub {
    latest: Mutex<BTreeMap<String, Progress>>,
    tx: broadcast::Sender<Progress>,
}

impl Default for Hub {
    fn default() -> Hub {
        // A slow page skips reports it missed; the next one carries all.
        Hub { latest: Mutex::new(BTreeMap::new()), tx: broadcast::channel(256).0 }
    }
}

impl Hub {
    /// Keeps `p` as its PC's last report and passes it on; whether its
    /// step differs from the PC's report before (a new job, a new step).
    pub fn report(&self, p: Progress) -> bool {
        let changed = match self.latest.lock() {
            Ok(mut l) => l.insert(p.pc.clone(), p.clone()).is_none_or(|old| old.step != p.step || old.job != p.job),
            Err(_) => true,
        };
        let _ = self.tx.send(p);
        changed
    }

    /// Reports newer than [`STALE_SECONDS`] at `now`, by PC.
    pub fn current(&self, now: i64) -> Vec<Progress> {
        let Ok(mut l) = self.latest.lock() else { return Vec::new() };
        l.retain(|_, p| p.at >= now - STALE_SECONDS);
        l.values().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Progress> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn reports_parse_and_bad_ones_say_why() {
        let p = Progress::from_report(
            "pc1",
            &kv(&[
                ("action", "backup"),
                ("step", "sending"),
                ("done", "50"),
                ("total", "200"),
                ("job", "7"),
                ("eta", "3"),
            ]),
            10,
        )
        .expect("report");
        assert_eq!((p.percent(), p.job, p.eta, p.finished()), (25.0, Some(7), Some(3), false));
        let bad = |pairs: &[(&str, &str)]| Progress::from_report("pc1", &kv(pairs), 10).expect_err("refused");
        assert!(bad(&[("action", "format"), ("step", "x")]).contains("action"));
        assert!(bad(&[("action", "backup"), ("step", "<script>")]).contains("step"));
        assert!(bad(&[("action", "backup"), ("step", "x"), ("done", "9"), ("total", "3")]).contains("more than"));
        assert!(bad(&[("action", "backup"), ("step", "x"), ("done", "-1")]).contains("done"));
    }

    #[test]
    fn the_hub_keeps_the_last_report_and_forgets_stale_ones() {
        let hub = Hub::default();
        let mut rx = hub.subscribe();
        let report = |pc: &str, done: u64, at: i64| Progress {
            pc: pc.into(),
            action: "restore".into(),
            job: None,
            step: "writing".into(),
            done,
            total: 100,
            moved: 0,
            rate: 0,
            eta: None,
            at,
        };
        assert!(hub.report(report("a", 10, 0)));
        assert!(!hub.report(report("a", 20, 5)), "the same step");
        assert!(hub.report(report("b", 1, 100)));
        assert_eq!(rx.try_recv().map(|p| p.done), Ok(10));
        assert_eq!(hub.current(100).iter().map(|p| (p.pc.as_str(), p.done)).collect::<Vec<_>>(), [("a", 20), ("b", 1)]);
        assert_eq!(hub.current(5 + STALE_SECONDS + 1).len(), 1);
    }
}
