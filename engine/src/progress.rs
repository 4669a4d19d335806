//! Progress of a backup or restore: pure maths and the console line.

use std::time::Duration;

use bootvault_common::units::human_bytes;

#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub action: &'static str,
    /// Disk bytes covered so far.
    pub done: u64,
    pub total: u64,
    /// Bytes sent to (or fetched from) the store, after dedup and compression.
    pub sent: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        }
    }

    /// Disk throughput, MB/s (10^6 bytes, as disk vendors and dd count).
    pub fn mb_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s <= 0.0 {
            0.0
        } else {
            self.done as f64 / 1e6 / s
        }
    }

    /// Time left at the average rate so far; None before anything is done.
    pub fn eta(&self) -> Option<Duration> {
        if self.done == 0 || self.elapsed.is_zero() {
            return None;
        }
        let rate = self.done as f64 / self.elapsed.as_secs_f64();
        Some(Duration::from_secs_f64(self.total.saturating_sub(self.done) as f64 / rate))
    }

    pub fn line(&self) -> String {
        let eta = match self.eta() {
            Some(d) => format_duration(d),
            None => "?".into(),
        };
        format!(
            "{} {:5.1}% {} of {}, {:.1} MB/s, {} {}, ETA {eta}",
            self.action,
            self.percent(),
            human_bytes(self.done),
            human_bytes(self.total),
            self.mb_per_s(),
            human_bytes(self.sent),
            if self.action == "backup" { "sent" } else { "fetched" },
        )
    }
}

/// `75 s` -> `1m15s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maths_and_line() {
        let p = Progress {
            action: "backup",
            done: 50_000_000,
            total: 200_000_000,
            sent: 1 << 20,
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(p.percent(), 25.0);
        assert_eq!(p.mb_per_s(), 25.0);
        assert_eq!(p.eta(), Some(Duration::from_secs(6)));
        assert_eq!(p.line(), "backup  25.0% 47.7 MiB of 190.7 MiB, 25.0 MB/s, 1.0 MiB sent, ETA 6s");
        let start = Progress { done: 0, elapsed: Duration::ZERO, ..p.clone() };
        assert_eq!(start.eta(), None);
        assert!(start.line().ends_with("ETA ?"));
        let empty = Progress { total: 0, done: 0, ..p };
        assert_eq!(empty.percent(), 100.0);
        assert_eq!(format_duration(Duration::from_secs(75)), "1m15s");
        assert_eq!(format_duration(Duration::from_secs(7322)), "2h02m");
    }
}
