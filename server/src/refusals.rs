//! Keeping unauthenticated traffic from filling the disk: what refused
//! and unauthenticated requests log is aggregated ([`RefusalLog`]). (What
//! they may add to the database is rate-limited per peer address in the
//! database itself, so the limit holds across servers:
//! [`crate::vault::Vault::note_pending_from`].)
//!
//! Pure state with the time passed in; lib.rs writes the lines and owns
//! the lock. The map is bounded, so a flood from many addresses costs a
//! fixed amount of memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What a refusal is, for counting: the event word (`auth-refused`,
/// `netboot-unknown`, ...) and the reason's kind (`no-token`, ...; may be
/// empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kind {
    pub event: &'static str,
    pub reason: &'static str,
}

impl Kind {
    pub const fn new(event: &'static str, reason: &'static str) -> Kind {
        Kind { event, reason }
    }
}

/// A key's count in its current window.
#[derive(Debug, Clone, Copy)]
struct Tally {
    since: Instant,
    logged: u32,
    more: u64,
}

/// Per (peer address, kind): the first `burst` refusals of each `window`
/// are logged in full, the rest counted and summed up in one line when the
/// window ends. At most `budget` lines in full per window in all; at most
/// `max_keys` (peer, kind) pairs are tracked, later peers share one
/// "other peers" count per kind.
#[derive(Debug)]
pub struct RefusalLog {
    window: Duration,
    burst: u32,
    budget: u32,
    max_keys: usize,
    /// `None` as the peer: the peers past `max_keys`.
    keys: HashMap<(Option<IpAddr>, Kind), Tally>,
    /// Lines in full in the current global window.
    global: Tally,
}

impl Default for RefusalLog {
    /// 5 lines per peer and kind a minute, 100 a minute in all, 256 pairs
    /// tracked: a flood writes at most 100 full lines and 256 + a few
    /// summary lines a minute, however many addresses it comes from.
    fn default() -> Self {
        RefusalLog::new(Duration::from_secs(60), 5, 100, 256, Instant::now())
    }
}

impl RefusalLog {
    pub fn new(window: Duration, burst: u32, budget: u32, max_keys: usize, now: Instant) -> RefusalLog {
        RefusalLog {
            window,
            burst,
            budget,
            max_keys,
            keys: HashMap::new(),
            global: Tally { since: now, logged: 0, more: 0 },
        }
    }

    /// One refusal from `peer`: whether to log it in full, and the summary
    /// line of this key's previous window if that just ended.
    pub fn note(&mut self, peer: IpAddr, kind: Kind, now: Instant) -> (bool, Option<String>) {
        if now.duration_since(self.global.since) >= self.window {
            self.global = Tally { since: now, logged: 0, more: 0 };
        }
        let mut key = (Some(peer), kind);
        if !self.keys.contains_key(&key) && self.keys.len() >= self.max_keys {
            // Make room by closing windows that ended (their summaries
            // are lost only if the map is full of live keys as well).
            let ended: Vec<_> = self.ended(now);
            for k in ended {
                self.keys.remove(&k);
            }
            if self.keys.len() >= self.max_keys {
                key = (None, kind);
            }
        }
        let fresh = Tally { since: now, logged: 0, more: 0 };
        let tally = self.keys.entry(key).or_insert(fresh);
        let mut summary = None;
        if now.duration_since(tally.since) >= self.window {
            summary = summary_line(key, tally, now);
            *tally = fresh;
        }
        let full = key.0.is_some() && tally.logged < self.burst && self.global.logged < self.budget;
        if full {
            tally.logged += 1;
            self.global.logged += 1;
        } else {
            tally.more += 1;
        }
        (full, summary)
    }

    /// The summaries of windows that ended by `now`, forgetting those keys
    /// (call it every few seconds, so a flood that stopped is summed up).
    pub fn flush(&mut self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        for key in self.ended(now) {
            if let Some(t) = self.keys.remove(&key) {
                lines.extend(summary_line(key, &t, now));
            }
        }
        lines.sort();
        lines
    }

    fn ended(&self, now: Instant) -> Vec<(Option<IpAddr>, Kind)> {
        self.keys.iter().filter(|(_, t)| now.duration_since(t.since) >= self.window).map(|(k, _)| *k).collect()
    }

    /// Pairs tracked now.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }
}

/// `auth-refused peer=10.0.0.9 reason=no-token: 1834 more in the last 60 s`
fn summary_line(key: (Option<IpAddr>, Kind), t: &Tally, now: Instant) -> Option<String> {
    if t.more == 0 {
        return None;
    }
    let (peer, kind) = key;
    let peer = peer.map_or_else(|| "others".to_owned(), |p| p.to_string());
    let reason = if kind.reason.is_empty() { String::new() } else { format!(" reason={}", kind.reason) };
    let secs = now.duration_since(t.since).as_secs();
    Some(format!("{} peer={peer}{reason}: {} more in the last {secs} s (not logged one by one)", kind.event, t.more))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: Kind = Kind::new("auth-refused", "no-token");
    const MAC: Kind = Kind::new("netboot-unknown", "");

    fn ip(last: u8) -> IpAddr {
        [10, 0, 0, last].into()
    }

    #[test]
    fn first_few_in_full_then_one_summary() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut log = RefusalLog::new(60 * s, 3, 100, 16, t0);
        let full: Vec<bool> = (0..1000).map(|_| log.note(ip(1), AUTH, t0).0).collect();
        assert_eq!(full.iter().filter(|f| **f).count(), 3);
        assert!(full[..3].iter().all(|f| *f), "the first ones in full");
        // Another kind from the same peer has its own count.
        assert!(log.note(ip(1), MAC, t0).0);
        assert!(log.flush(t0 + 59 * s).is_empty(), "the window has not ended");
        let lines = log.flush(t0 + 61 * s);
        assert_eq!(
            lines,
            ["auth-refused peer=10.0.0.1 reason=no-token: 997 more in the last 61 s (not logged one by one)"]
        );
        assert_eq!(log.tracked(), 0, "flushed keys are forgotten");
        // A new window logs in full again.
        assert!(log.note(ip(1), AUTH, t0 + 62 * s).0);
    }

    #[test]
    fn a_window_that_ends_on_a_note_gives_its_summary() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut log = RefusalLog::new(60 * s, 1, 100, 16, t0);
        assert_eq!(log.note(ip(1), AUTH, t0), (true, None));
        assert_eq!(log.note(ip(1), AUTH, t0 + s), (false, None));
        let (full, summary) = log.note(ip(1), AUTH, t0 + 70 * s);
        assert!(full);
        assert!(summary.expect("summary").contains(": 1 more in the last 70 s"));
    }

    #[test]
    fn bounded_in_lines_and_memory_whatever_the_peers() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut log = RefusalLog::new(60 * s, 5, 50, 32, t0);
        let mut full = 0;
        // 1000 peers, 100 refusals each.
        for i in 0..100_000u32 {
            let peer = IpAddr::from((0x0a00_0000 + i % 1000).to_be_bytes());
            full += usize::from(log.note(peer, AUTH, t0).0);
        }
        assert_eq!(full, 50, "the global budget");
        assert_eq!(log.tracked(), 33, "32 peers and one 'others'");
        let lines = log.flush(t0 + 60 * s);
        assert_eq!(lines.len(), 33, "{lines:?}");
        assert!(
            lines.iter().any(|l| l.starts_with("auth-refused peer=others reason=no-token: 96800 more")),
            "{lines:?}"
        );
    }
}
