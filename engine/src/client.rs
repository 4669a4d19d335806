//! The client side of docs/PROTOCOL.md, over [`crate::http`] (HTTP/1.1,
//! keep-alive; `https://` with the server's certificate pinned,
//! [`crate::tls`]).
//! Every request names the PC. Non-2xx answers become errors
//! carrying the server's one-line reason and are never retried;
//! idempotent requests are tried again after a network error or a timeout
//! while their time budget lasts ([`Timeouts`], docs/PROTOCOL.md "Client
//! timeouts"), so a server that hangs or drips bytes ends a request within
//! a minute, with a line saying what the server stopped doing.
//!
//! Several servers (`https://a:8443,https://b:8443`, servers sharing one
//! database and chunk store, and one certificate): requests go to one of
//! them until it fails to answer (no connection, a timeout, a cut
//! connection; never a definite answer), then to the next, for this and
//! every later request. An idempotent request is tried again at once on
//! the next server; any other fails, and the next one goes elsewhere.
//!
//! Password-protected backups: [`Client::challenge`] then
//! [`Client::unlock`] (or [`Client::set_ticket`] with a ticket from a
//! server job) leave a ticket in the client, shared by its clones, which
//! manifest and chunk requests for that backup carry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootvault_common::image::{hex, ChunkId};
use bootvault_common::units::human_bytes;
use bootvault_common::wire;

use zeroize::Zeroizing;

use bootvault_common::fingerprint::Fingerprint;

use crate::http::{Failure, Http, Request};
use crate::lock::{Challenge, Lock, Params};
use crate::tls::Refusals;
use crate::EngineError;

#[derive(Clone)]
pub struct Client {
    /// The servers, in the order given; at least one.
    servers: Arc<[Server]>,
    /// The one requests go to (shared by clones, so one failure moves
    /// every worker on).
    current: Arc<AtomicUsize>,
    timeouts: Timeouts,
    /// Why the last handshake refused the server, if it did.
    refusals: Refusals,
    pc: String,
    /// `Bearer TOKEN`, sent with every request.
    authorization: String,
    /// Challenges asked and tickets held, per backup; shared by clones so
    /// the restore workers use the ticket the console got.
    unlocks: Arc<Mutex<Unlocks>>,
    /// Told (from, to) when requests move on to the next server.
    on_fail_over: Option<FailOver>,
}

/// What [`Client::on_fail_over`] calls: (from, to).
type FailOver = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// One server of the list: its base URL and connections.
struct Server {
    base: String,
    http: Http,
}

/// The servers of a comma-separated list of base URLs (one at least:
/// an empty list gives one empty URL, which fails when used).
fn servers(list: &str, pin: Option<Fingerprint>, refusals: &Refusals) -> Arc<[Server]> {
    let mut out: Vec<Server> = list
        .split(',')
        .map(|b| b.trim().trim_end_matches('/'))
        .filter(|b| !b.is_empty())
        .map(|b| Server { base: b.to_owned(), http: Http::new(b, pin, refusals.clone()) })
        .collect();
    if out.is_empty() {
        out.push(Server { base: String::new(), http: Http::new("", pin, refusals.clone()) });
    }
    out.into()
}

#[derive(Default)]
struct Unlocks {
    nonces: HashMap<i64, [u8; 32]>,
    tickets: HashMap<i64, String>,
    /// Passwords' wrap keys, per backup: they stay here (never sent).
    wraps: HashMap<i64, crate::lock::WrapKey>,
}

/// A backup this PC may restore, as `GET /backups?format=lines` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub id: i64,
    /// The PC it was made on.
    pub pc: String,
    pub name: String,
    /// Unix seconds.
    pub created: i64,
    pub disk_bytes: u64,
    /// Blob bytes in the store for this backup (deduplicated, compressed).
    pub stored_bytes: u64,
    /// Restoring it needs its password.
    pub locked: bool,
    /// The disk's model, if the PC knew it.
    pub model: String,
}

/// Parses the `?format=lines` answer: one line per backup, tab-separated
/// `key=value` fields (unknown keys ignored, so the server may add some).
pub fn parse_backup_lines(text: &str) -> Result<Vec<BackupInfo>, EngineError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<(&str, &str)> = line.split('\t').filter_map(|f| f.split_once('=')).collect();
        let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let bad = |k: &str| EngineError::new(format!("backup list, line {}: no valid {k} in {line:?}", n + 1));
        let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| bad(k));
        out.push(BackupInfo {
            id: get("id").and_then(|v| v.parse().ok()).ok_or_else(|| bad("id"))?,
            pc: get("pc").ok_or_else(|| bad("pc"))?.to_owned(),
            name: get("name").unwrap_or("").to_owned(),
            created: get("created").and_then(|v| v.parse().ok()).ok_or_else(|| bad("created"))?,
            disk_bytes: num("disk_bytes")?,
            stored_bytes: num("stored_bytes")?,
            locked: get("locked") == Some("yes"),
            model: get("model").unwrap_or("").to_owned(),
        });
    }
    Ok(out)
}

/// Parses the challenge answer (`locked=no`, or the lock's parameters,
/// salt and a nonce). Parameters out of bounds are refused: a server
/// cannot make the PC allocate gigabytes.
pub fn parse_challenge(text: &str) -> Result<Option<Challenge>, EngineError> {
    let kv = parse_kv(text);
    let bad = |what: &str| EngineError::new(format!("the server's challenge: {what} (answer {:?})", text.trim()));
    match kv_get(&kv, "locked") {
        Some("no") => return Ok(None),
        Some("yes") => {}
        _ => return Err(bad("no locked=yes|no")),
    }
    let Some(kdf) = kv_get(&kv, "kdf").and_then(wire::Kdf::parse) else {
        return Err(bad("kdf is not argon2id"));
    };
    let num = |k: &str| kv_get(&kv, k).and_then(|v| v.parse::<u32>().ok()).ok_or_else(|| bad(&format!("no {k}")));
    let params = Params { m_kib: num("m")?, t_cost: num("t")?, p: num("p")? };
    params.check().map_err(|e| bad(&e))?;
    let salt_hex = kv_get(&kv, "salt").unwrap_or("");
    if !salt_hex.len().is_multiple_of(2) || !(16..=128).contains(&salt_hex.len()) {
        return Err(bad("salt must be 8 to 64 bytes of hex"));
    }
    let mut salt = vec![0u8; salt_hex.len() / 2];
    wire::hex_into(salt_hex, &mut salt).map_err(|e| bad(&format!("salt: {e}")))?;
    let mut nonce = [0u8; 32];
    wire::hex_into(kv_get(&kv, "nonce").unwrap_or(""), &mut nonce).map_err(|e| bad(&format!("nonce: {e}")))?;
    Ok(Some(Challenge { kdf, params, salt, nonce }))
}

/// Parses `key=value` lines (the init-facing answer format).
pub fn parse_kv(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect()
}

pub fn kv_get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// How long the client waits on the server: one limit per phase of an
/// exchange, so a server that stops doing its part is caught in the phase
/// it stopped in and the message can say which, and one budget for a whole
/// request with its tries. docs/PROTOCOL.md "Client timeouts" explains them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Setting up the TCP connection; also handing over the request
    /// headers, which fit in the socket's buffer.
    pub connect: Duration,
    /// From the request sent to the answer's status and headers: the
    /// server's thinking time.
    pub answer: Duration,
    /// The longest silence inside a body, either way; also the stretch
    /// over which [`Timeouts::min_rate`] is measured.
    pub stall: Duration,
    /// Bytes per second a body must move, either way: in every
    /// `stall`-long stretch after its first, at least `min_rate` ×
    /// `stall` bytes or all it had left (see [`Pace`]). A server dripping
    /// bytes is as stuck as a silent one, and what the kernel's socket
    /// buffers took at the start earns no credit for later.
    pub min_rate: u64,
    /// One request with all its tries, for bodies of up to 2 MiB; larger
    /// bodies add their time at `min_rate`.
    pub total: Duration,
}

/// Bodies up to this size fit in [`Timeouts::total`] as it is.
const SMALL_BODY: u64 = 2 << 20;

/// Tries of an idempotent request, at most.
const TRIES: u32 = 3;

impl Timeouts {
    /// What a PC uses. A 1 MiB chunk may take `stall` (20 s, about 420
    /// kbit/s) either way; a larger body must keep to 2 Mbit/s after its
    /// first 20 s; a stuck request ends within `total`.
    pub const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_secs(10),
        answer: Duration::from_secs(20),
        stall: Duration::from_secs(20),
        min_rate: 256 << 10,
        total: Duration::from_secs(60),
    };

    /// The most a body of `bytes` may take.
    pub fn body(&self, bytes: u64) -> Duration {
        self.stall + self.at_min_rate(bytes)
    }

    /// The most one request may take, all its tries included, when its
    /// larger body (sent, or the largest answer accepted) is `bytes`. A
    /// try is started again only within `total`, so a stuck request ends
    /// within `total` whatever its size; a slow big one may go on.
    pub fn budget(&self, bytes: u64) -> Duration {
        self.total + self.at_min_rate(bytes.saturating_sub(SMALL_BODY))
    }

    /// The longest one try waits on a server that does nothing at all.
    pub fn stuck(&self) -> Duration {
        self.connect.max(self.answer).max(self.stall)
    }

    /// Whether to try a request again, and after what pause: try number
    /// `tries` failed after `last`, `elapsed` into the request. Only if
    /// one more try like it (or stuck, if longer) still ends within
    /// `total`.
    fn again(&self, tries: u32, elapsed: Duration, last: Duration) -> Option<Duration> {
        let backoff = Duration::from_millis(500 * u64::from(tries));
        (tries < TRIES && elapsed + backoff + last.max(self.stuck()) <= self.total).then_some(backoff)
    }

    fn at_min_rate(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.min_rate.max(1) as f64)
    }
}

/// How a body is moving, for [`Timeouts::min_rate`]: a few samples of
/// (when, bytes moved so far), the oldest at or before `stall` ago. Samples
/// are taken at most every `stall / 8`, so a fast body keeps a handful.
pub(crate) struct Pace {
    start: Instant,
    /// The body's length, where known.
    of: Option<u64>,
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl Pace {
    pub(crate) fn new(now: Instant, of: Option<u64>) -> Pace {
        Pace { start: now, of, samples: [(now, 0)].into() }
    }

    /// Records that `bytes` had moved by `now`; whether the body is too
    /// slow to go on with: past its first `stall`, the last `stall` moved
    /// less than `min_rate` × `stall` and less than was left of the body.
    pub(crate) fn too_slow(&mut self, t: &Timeouts, now: Instant, bytes: u64) -> bool {
        let window = t.stall.max(Duration::from_millis(1));
        if let Some(since) = now.checked_sub(window) {
            while self.samples.len() >= 2 && self.samples[1].0 <= since {
                self.samples.pop_front();
            }
        }
        if self.samples.back().is_some_and(|&(at, _)| now.saturating_duration_since(at) >= window / 8) {
            self.samples.push_back((now, bytes));
        }
        if now.saturating_duration_since(self.start) <= window {
            return false;
        }
        let (_, then) = self.samples[0];
        let need =
            ((t.min_rate as f64 * window.as_secs_f64()) as u64).min(self.of.map_or(u64::MAX, |n| n - then.min(n)));
        bytes.saturating_sub(then) < need
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::DEFAULT
    }
}

/// One exchange with the server, as [`Client::request`] makes it.
struct Exchange<'a> {
    method: &'static str,
    /// Under `/api/v1`, with its query.
    path: String,
    /// None: GET; Some: PUT, else POST.
    body: Option<&'a [u8]>,
    /// The largest answer body accepted.
    limit: u64,
    /// Tried again after a network error or a timeout.
    idempotent: bool,
    ticket: Option<String>,
    /// Statuses whose error is the server's reason alone (see
    /// [`Client::request`]).
    plain: &'a [u16],
    /// What the bodies carry, in messages (`chunk 1a2b3c4d5e6f of backup
    /// 7`); None: the request's body, the answer.
    object: Option<String>,
    extra_headers: Vec<(&'static str, String)>,
}

impl<'a> Exchange<'a> {
    fn new(method: &'static str, path: String, limit: u64) -> Exchange<'a> {
        Exchange {
            method,
            path,
            body: None,
            limit,
            idempotent: false,
            ticket: None,
            plain: &[],
            object: None,
            extra_headers: Vec::new(),
        }
    }

    /// How messages name the request: `the request for chunk 1a2b3c4d5e6f
    /// of backup 7`, `the upload of ...`, or `GET /api/v1/jobs/next`.
    fn what(&self) -> String {
        match (&self.object, self.body) {
            (Some(o), None) => format!("the request for {o}"),
            (Some(o), Some(_)) => format!("the upload of {o}"),
            (None, _) => format!("{} {}{}", self.method, wire::API, self.path),
        }
    }
}

/// `20 s`, `2.5 s`.
fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

impl Client {
    /// A client for PC `pc`, proving itself with `token` (the PC's, or the
    /// server's admin token), with [`Timeouts::DEFAULT`]. `base` is a
    /// server's base URL or several, comma-separated (see the module doc).
    /// An `https://` server needs [`Client::pinned`].
    pub fn new(base: &str, pc: &str, token: &str) -> Client {
        let refusals = Refusals::default();
        Client {
            servers: servers(base, None, &refusals),
            current: Arc::new(AtomicUsize::new(0)),
            timeouts: Timeouts::DEFAULT,
            refusals,
            pc: pc.to_owned(),
            authorization: format!("{}{token}", wire::BEARER),
            unlocks: Arc::new(Mutex::new(Unlocks::default())),
            on_fail_over: None,
        }
    }

    /// The same client, calling `f(from, to)` each time requests move on
    /// to the next server (the PC's console says so).
    pub fn on_fail_over(mut self, f: impl Fn(&str, &str) + Send + Sync + 'static) -> Client {
        self.on_fail_over = Some(Arc::new(f));
        self
    }

    /// The same client with other timeouts (tests use short ones).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Client {
        self.timeouts = timeouts;
        self
    }

    /// The same client trusting exactly the certificate `pin` names on an
    /// `https://` server (None: none, so `https://` is refused).
    pub fn pinned(mut self, pin: Option<Fingerprint>) -> Client {
        let list: Vec<&str> = self.servers.iter().map(|s| s.base.as_str()).collect();
        self.servers = servers(&list.join(","), pin, &self.refusals);
        self
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The server requests go to now.
    pub fn base(&self) -> &str {
        &self.servers[self.server()].base
    }

    /// How many servers the client knows.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    fn server(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.servers.len()
    }

    /// Server `failed` did not answer: requests go to the next one (unless
    /// another request already moved them on).
    fn fail_over(&self, failed: usize) {
        if self.servers.len() > 1 {
            let next = (failed + 1) % self.servers.len();
            let moved = self.current.compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed).is_ok();
            if let (true, Some(f)) = (moved, &self.on_fail_over) {
                f(&self.servers[failed].base, &self.servers[next].base);
            }
        }
    }

    /// The PC this client speaks for (what unlock proofs are bound to).
    pub fn pc(&self) -> &str {
        &self.pc
    }

    fn unlocks(&self) -> std::sync::MutexGuard<'_, Unlocks> {
        self.unlocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Uses `ticket` for backup `backup` (a server job hands the PC one).
    pub fn set_ticket(&self, backup: i64, ticket: String) {
        self.unlocks().tickets.insert(backup, ticket);
    }

    /// Keeps the wrap key of `backup`'s password, which opens its own key.
    pub fn set_wrap(&self, backup: i64, wrap: crate::lock::WrapKey) {
        self.unlocks().wraps.insert(backup, wrap);
    }

    pub fn wrap(&self, backup: i64) -> Option<crate::lock::WrapKey> {
        self.unlocks().wraps.get(&backup).cloned()
    }

    fn ticket(&self, backup: i64) -> Option<String> {
        self.unlocks().tickets.get(&backup).cloned()
    }

    fn url(&self, at: usize, path: &str) -> String {
        format!("{}{}{path}", self.servers[at].base, wire::API)
    }

    /// One try on the current server, which may take `left` at most: the
    /// server tried, and the status and the body. A failure moves
    /// requests on to the next server.
    fn call(&self, x: &Exchange, left: Duration) -> (usize, Result<(u16, Vec<u8>), Failure>) {
        let at = self.server();
        let r = self.call_at(at, x, left);
        if r.is_err() {
            self.fail_over(at);
        }
        (at, r)
    }

    fn call_at(&self, at: usize, x: &Exchange, left: Duration) -> Result<(u16, Vec<u8>), Failure> {
        let path = format!("{}{}", wire::API, x.path);
        let mut headers = vec![(wire::PC_HEADER, self.pc.as_str()), (wire::AUTHORIZATION, self.authorization.as_str())];
        if let Some(t) = &x.ticket {
            headers.push((wire::UNLOCK_HEADER, t));
        }
        for (k, v) in &x.extra_headers {
            headers.push((k, v));
        }
        let req = Request { method: x.method, path: &path, headers: &headers, body: x.body, limit: x.limit };
        self.servers[at].http.call(&req, &self.timeouts, left)
    }

    /// The line for a failed request: what the server stopped doing.
    fn describe(&self, at: usize, x: &Exchange, f: &Failure, budget: Duration) -> String {
        let (base, t) = (&self.servers[at].base, &self.timeouts);
        let what = x.what();
        match f {
            Failure::Connect => {
                format!("could not connect to the server at {base} within {} ({what})", secs(t.connect))
            }
            Failure::NotTaken => format!(
                "the server at {base} accepted the connection but did not take the request ({what}) within {}",
                secs(t.connect)
            ),
            Failure::StoppedReceiving(after) => format!(
                "the server at {base} stopped receiving {} after {}",
                x.object.clone().unwrap_or_else(|| format!("the body of {what}")),
                secs(Duration::from_secs(after.as_secs_f64().round() as u64))
            ),
            Failure::NoAnswer => format!(
                "the server at {base} accepted the connection but sent no answer to {what} within {}",
                secs(t.answer.min(t.stall))
            ),
            Failure::StoppedSending { after, got, of } => format!(
                "the server at {base} stopped sending {} after {} ({} of {} received)",
                x.object.clone().unwrap_or_else(|| format!("its answer to {what}")),
                secs(Duration::from_secs(after.as_secs_f64().round() as u64)),
                human_bytes(*got),
                of.map(human_bytes).unwrap_or_else(|| "an unknown length".into())
            ),
            Failure::OutOfTime => format!("the server at {base} did not complete {what} within {}", secs(budget)),
            Failure::Other(e) | Failure::Unreached(e) => format!("{} {}: {e}", x.method, self.url(at, &x.path)),
        }
    }

    /// A request whose answer must be 2xx (the server's one-line reason
    /// otherwise; statuses in `x.plain`, and `423 Locked` always, give
    /// the reason alone: those reach a person at the console, who has no
    /// use for a URL). Definite answers are never tried again; an
    /// idempotent request is tried again after a network error or a
    /// timeout while one more such try would still end within
    /// [`Timeouts::total`]; each try is cut at the request's budget
    /// ([`Timeouts::budget`]: `total` unless a body is over 2 MiB). With
    /// several servers, an idempotent request that failed goes at once
    /// to each other server in turn before those tries and pauses.
    fn request(&self, x: &Exchange) -> Result<(u16, Vec<u8>), EngineError> {
        let start = Instant::now();
        let budget = self.timeouts.budget(x.body.map_or(0, |b| b.len() as u64).max(x.limit));
        let (mut tries, mut attempts, mut switches) = (0, 0, 0);
        let mut failure: Option<(usize, Failure)> = None;
        loop {
            tries += 1;
            attempts += 1;
            let began = Instant::now();
            let unsent;
            match self.call(x, budget.saturating_sub(start.elapsed())) {
                (_, Ok((s, b))) if (200..300).contains(&s) => return Ok((s, b)),
                (at, Ok((s, b))) => return Err(self.refusal(at, x, s, &b)),
                (at, Err(_)) if let Some(e) = self.wrong_server(at) => return Err(e),
                (at, Err(f)) => {
                    unsent = f.unsent();
                    // A try cut short by the budget says less than the one before it.
                    if f.specific() || failure.is_none() {
                        failure = Some((at, f));
                    }
                }
            }
            // Another server, at once: any request the failed one never saw.
            if (x.idempotent || unsent) && switches + 1 < self.servers.len() && start.elapsed() < budget {
                switches += 1;
                tries -= 1;
                continue;
            }
            match self.timeouts.again(tries, start.elapsed(), began.elapsed()) {
                Some(pause) if x.idempotent => std::thread::sleep(pause),
                _ => break,
            }
        }
        let (at, f) = failure.unwrap_or((self.server(), Failure::OutOfTime));
        let mut line = self.describe(at, x, &f, budget);
        if attempts > 1 {
            line.push_str(&format!(" ({attempts} tries in {:.0} s)", start.elapsed().as_secs_f64()));
        }
        Err(EngineError::new(line))
    }

    /// The error for a server whose certificate is not the pinned one:
    /// final, never tried again.
    fn wrong_server(&self, at: usize) -> Option<EngineError> {
        let line = self.refusals.take()?;
        Some(EngineError::new(format!("refusing the server at {}: {line}", self.servers[at].base)))
    }

    /// The error for a definite non-2xx answer.
    fn refusal(&self, at: usize, x: &Exchange, status: u16, body: &[u8]) -> EngineError {
        let reason = String::from_utf8_lossy(body);
        let reason: String = reason.lines().next().unwrap_or("").trim().chars().take(500).collect();
        if (status == 423 || x.plain.contains(&status)) && !reason.is_empty() {
            return EngineError::new(reason);
        }
        EngineError::new(format!("{} {}: server answered {status}: {reason}", x.method, self.url(at, &x.path)))
    }

    /// A request whose answer must be 2xx, without a ticket; retried
    /// when `idempotent`.
    fn expect_ok(
        &self,
        method: &'static str,
        path: String,
        body: Option<&[u8]>,
        limit: u64,
        idempotent: bool,
    ) -> Result<(u16, Vec<u8>), EngineError> {
        self.request(&Exchange { body, idempotent, ..Exchange::new(method, path, limit) })
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// Announces the PC; retries until `patience` runs out, since the
    /// server may be starting at the same time as the PC.
    pub fn hello(
        &self,
        mac: &str,
        addr: &str,
        patience: Duration,
        log: &mut dyn FnMut(String),
    ) -> Result<String, EngineError> {
        let start = Instant::now();
        let x = Exchange {
            extra_headers: vec![(wire::MAC_HEADER, mac.to_owned()), (wire::ADDR_HEADER, addr.to_owned())],
            ..Exchange::new("GET", "/hello".into(), 64 * 1024)
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (at, r) = self.call(&x, self.timeouts.total);
            let base = &self.servers[at].base;
            match r {
                Ok((200, body)) if body.starts_with(wire::HELLO_PREFIX.as_bytes()) => {
                    return Ok(Self::text(&body).trim().to_owned())
                }
                Ok((status @ (401 | 403), body)) => {
                    let reason: String = Self::text(&body).lines().next().unwrap_or("").chars().take(200).collect();
                    return Err(EngineError::new(format!("{base} refused PC {} ({status}): {reason}", self.pc)));
                }
                Ok((status, body)) => {
                    let first: String = Self::text(&body).lines().next().unwrap_or("").chars().take(80).collect();
                    return Err(EngineError::new(format!(
                        "{base} is not a bootvault server (it answered {status} {first:?})"
                    )));
                }
                Err(_) if let Some(e) = self.wrong_server(at) => return Err(e),
                Err(f) if start.elapsed() + Duration::from_secs(2) < patience => {
                    log(format!("attempt {attempt}: {}; retrying", self.describe(at, &x, &f, self.timeouts.total)));
                    // The next server at once; a pause once each was tried.
                    if at + 1 == self.servers.len() {
                        std::thread::sleep(Duration::from_secs(2));
                    }
                }
                Err(f) => {
                    return Err(EngineError::new(format!(
                        "{} (gave up after {attempt} attempts)",
                        self.describe(at, &x, &f, self.timeouts.total)
                    )))
                }
            }
        }
    }

    /// Opens a backup; `lock` (the restore password's key, never the
    /// password) goes in the body as a `lock=` line.
    pub fn open_backup(
        &self,
        name: &str,
        disk_bytes: u64,
        chunk_size: u32,
        lock: Option<&Lock>,
    ) -> Result<i64, EngineError> {
        let path = format!("/backups?name={}&disk_bytes={disk_bytes}&chunk_size={chunk_size}", url_escape(name));
        let body = Zeroizing::new(lock.map(|l| format!("lock={}\n", Zeroizing::new(l.to_text()).as_str())));
        let body = body.as_deref().unwrap_or("").as_bytes();
        let (_, answer) = self.expect_ok("POST", path, Some(body), 4096, false)?;
        id_from(&Self::text(&answer), "opening a backup")
    }

    /// What unlocking `backup` takes (None: it has no password). The
    /// nonce is kept for the [`Client::unlock`] that follows.
    pub fn challenge(&self, backup: i64) -> Result<Option<Challenge>, EngineError> {
        let (_, body) = self.request(&Exchange {
            idempotent: true,
            plain: &[403, 404, 429],
            ..Exchange::new("GET", format!("/backups/{backup}/challenge"), 4096)
        })?;
        let ch = parse_challenge(&Self::text(&body))?;
        if let Some(c) = &ch {
            self.unlocks().nonces.insert(backup, c.nonce);
        }
        Ok(ch)
    }

    /// Sends the proof for the last challenge of `backup`; on success the
    /// server's ticket is kept for the manifest and chunk requests. A
    /// refusal is the server's reason alone (`wrong password for backup 7
    /// (3 tries left before a wait)`, `too many wrong passwords ...`).
    pub fn unlock(&self, backup: i64, proof: &[u8; 32]) -> Result<(), EngineError> {
        let nonce = self
            .unlocks()
            .nonces
            .remove(&backup)
            .ok_or_else(|| EngineError::new(format!("unlocking backup {backup}: no challenge asked for it")))?;
        let body = format!("nonce={}\nproof={}\n", wire::to_hex(&nonce), wire::to_hex(proof));
        let (_, answer) = self.request(&Exchange {
            body: Some(body.as_bytes()),
            plain: &[403, 404, 409, 429],
            ..Exchange::new("POST", format!("/backups/{backup}/unlock"), 4096)
        })?;
        let kv = parse_kv(&Self::text(&answer));
        let ticket = kv_get(&kv, "ticket")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| EngineError::new(format!("unlocking backup {backup}: no ticket in the server's answer")))?;
        self.set_ticket(backup, ticket.to_owned());
        Ok(())
    }

    /// The complete backups this PC may restore (its own and those granted
    /// to it), newest first.
    pub fn backups(&self) -> Result<Vec<BackupInfo>, EngineError> {
        let (_, body) = self.expect_ok("GET", "/backups?format=lines".into(), None, 4 << 20, true)?;
        parse_backup_lines(&Self::text(&body))
    }

    /// Stored blob length per id, 0 where the server lacks the chunk.
    pub fn missing(&self, backup: i64, ids: &[ChunkId]) -> Result<Vec<u32>, EngineError> {
        let body: Vec<u8> = ids.iter().flatten().copied().collect();
        let (_, answer) =
            self.expect_ok("POST", format!("/backups/{backup}/missing"), Some(&body), 4 * ids.len() as u64 + 16, true)?;
        if answer.len() != 4 * ids.len() {
            return Err(EngineError::new(format!(
                "asking which chunks are missing: {} ids, answer of {} bytes",
                ids.len(),
                answer.len()
            )));
        }
        Ok(answer.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    pub fn put_chunk(&self, backup: i64, id: &ChunkId, blob: &[u8]) -> Result<(), EngineError> {
        self.request(&Exchange {
            body: Some(blob),
            idempotent: true,
            object: Some(chunk_words(backup, id)),
            ..Exchange::new("PUT", format!("/chunks/{}?backup={backup}", hex(id)), 4096)
        })
        .map(|_| ())
    }

    pub fn finish(&self, backup: i64, manifest: &[u8]) -> Result<(), EngineError> {
        self.request(&Exchange {
            body: Some(manifest),
            idempotent: true,
            object: Some(format!("the manifest of backup {backup}")),
            ..Exchange::new("POST", format!("/backups/{backup}/finish"), 4096)
        })
        .map(|_| ())
    }

    pub fn fail(&self, backup: i64, reason: &str) -> Result<(), EngineError> {
        let reason: String = reason.lines().next().unwrap_or("").chars().take(500).collect();
        self.expect_ok("POST", format!("/backups/{backup}/fail"), Some(reason.as_bytes()), 4096, false).map(|_| ())
    }

    /// The newest complete backup of `pc` (named `name`, if given).
    pub fn latest(&self, pc: &str, name: Option<&str>) -> Result<i64, EngineError> {
        let mut path = format!("/backups/latest?pc={}", url_escape(pc));
        if let Some(n) = name {
            path.push_str(&format!("&name={}", url_escape(n)));
        }
        let (_, body) = self.expect_ok("GET", path, None, 4096, true)?;
        id_from(&Self::text(&body), "finding the latest backup")
    }

    /// The manifest (with the unlock ticket, if the client holds one). A
    /// protected backup without a ticket: the server's one-line reason.
    pub fn manifest(&self, backup: i64) -> Result<Vec<u8>, EngineError> {
        self.request(&Exchange {
            idempotent: true,
            ticket: self.ticket(backup),
            object: Some(format!("the manifest of backup {backup}")),
            ..Exchange::new("GET", format!("/backups/{backup}/manifest"), 64 << 20)
        })
        .map(|(_, b)| b)
    }

    /// A chunk of backup `backup` (the server hands a PC only chunks of
    /// backups it may read), as a blob of at most `limit` bytes.
    pub fn chunk(&self, backup: i64, id: &ChunkId, limit: u64) -> Result<Vec<u8>, EngineError> {
        self.request(&Exchange {
            idempotent: true,
            ticket: self.ticket(backup),
            object: Some(chunk_words(backup, id)),
            ..Exchange::new("GET", format!("/chunks/{}?backup={backup}", hex(id)), limit)
        })
        .map(|(_, b)| b)
    }

    /// The server's job for this PC, if it has one.
    pub fn next_job(&self) -> Result<Option<Vec<(String, String)>>, EngineError> {
        let (status, body) = self.expect_ok("GET", "/jobs/next".into(), None, 4096, true)?;
        Ok((status != 204 && !body.is_empty()).then(|| parse_kv(&Self::text(&body))))
    }

    /// An admin request (the client holds the admin token): `path` under
    /// `/api/v1`, the answer's body if it is 2xx, else the server's
    /// reason. What `bootvault jobs|backups --server URL` send.
    pub fn admin_call(&self, method: &'static str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, EngineError> {
        let idempotent = method == "GET";
        self.expect_ok(method, path.to_owned(), body, 64 << 20, idempotent).map(|(_, b)| b)
    }

    /// Tells the server how far a backup or restore is (its web console
    /// shows it live): `key=value` lines as `POST results` takes them.
    pub fn progress(&self, kv: &[(&str, String)]) -> Result<(), EngineError> {
        self.post_lines("/progress", kv)
    }

    /// Reports the outcome of an action.
    pub fn report(&self, kv: &[(&str, String)]) -> Result<(), EngineError> {
        self.post_lines("/results", kv)
    }

    /// POSTs `key=value` lines (a value's line breaks become spaces).
    fn post_lines(&self, path: &str, kv: &[(&str, String)]) -> Result<(), EngineError> {
        let body: String = kv.iter().map(|(k, v)| format!("{k}={}\n", v.replace('\n', " "))).collect();
        self.expect_ok("POST", path.into(), Some(body.as_bytes()), 4096, false).map(|_| ())
    }
}

/// `chunk 1a2b3c4d5e6f of backup 7`: a chunk in messages (the id's first
/// 12 hex digits are enough to find it in the store).
fn chunk_words(backup: i64, id: &ChunkId) -> String {
    format!("chunk {} of backup {backup}", &hex(id)[..12])
}

fn id_from(text: &str, what: &str) -> Result<i64, EngineError> {
    kv_get(&parse_kv(text), "id")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| EngineError::new(format!("{what}: no id in the server's answer {:?}", text.trim())))
}

/// Percent-encodes everything but unreserved characters.
pub fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stuck request ends within a minute with the production values,
    /// whichever phase the server stops in, and a stuck server still gets
    /// a second try.
    #[test]
    fn production_timeouts_end_a_stuck_request_within_a_minute() {
        let t = Timeouts::DEFAULT;
        let minute = Duration::from_secs(60);
        assert!(t.total <= minute);
        // Every try of a request with bodies up to 2 MiB (a default 1 MiB
        // chunk and its blob, every control message) is cut at `total`.
        assert_eq!(t.budget(2 << 20), t.total);
        assert_eq!(t.budget((1 << 20) + 4096), t.total);
        // One try that connects slowly, is answered slowly and then stalls
        // in the body still ends within it.
        assert!(t.connect + t.answer + t.stall <= t.total);
        // A body's own cap: `stall`, then the rest at min_rate.
        assert_eq!(t.body(1 << 20), Duration::from_secs(24));
        // Tries, for a server that fails each try after `each`: how long the
        // request takes in all.
        let run = |each: Duration| {
            let (mut elapsed, mut tries) = (Duration::ZERO, 0);
            loop {
                tries += 1;
                elapsed += each;
                match t.again(tries, elapsed, each) {
                    Some(pause) => elapsed += pause,
                    None => return (tries, elapsed),
                }
            }
        };
        let ms = Duration::from_millis;
        for (stops, each, want_tries) in [
            ("a refused connection", ms(5), 3),
            ("no connection", t.connect, 3),
            ("no answer", t.answer, 2),
            ("a drip, seen a second after the stall", t.stall + ms(1000), 2),
            ("a drip, seen just before a second stall", t.stall * 2 - ms(1), 1),
        ] {
            let (tries, elapsed) = run(each);
            assert!(elapsed <= minute, "{stops}: {tries} tries in {elapsed:?}");
            assert_eq!(tries, want_tries, "{stops}");
        }
        assert_eq!(t.again(1, ms(5), ms(5)), Some(ms(500)));
        assert_eq!(t.again(2, ms(600), ms(5)), Some(ms(1000)));
        assert_eq!(t.again(3, ms(2000), ms(5)), None, "three tries at most");
    }

    /// When [`Pace`] gives up on a body of `of` bytes that has moved
    /// `moved(s)` bytes `s` seconds in, seen every 100 ms; None if it
    /// ends first.
    fn gives_up(t: &Timeouts, of: Option<u64>, moved: impl Fn(f64) -> u64) -> Option<f64> {
        let start = Instant::now();
        let mut pace = Pace::new(start, of);
        for tenth in 1..2000 {
            let s = f64::from(tenth) / 10.0;
            let bytes = moved(s).min(of.unwrap_or(u64::MAX));
            if of == Some(bytes) {
                return None;
            }
            if pace.too_slow(t, start + Duration::from_secs_f64(s), bytes) {
                return Some(s);
            }
        }
        None
    }

    #[test]
    fn a_body_keeps_to_min_rate_in_every_stall() {
        let t = Timeouts::DEFAULT;
        let rate = |r: f64| move |s: f64| (r * s) as u64;
        let mib = 1u64 << 20;
        // A 1 MiB chunk that ends within `stall` is never too slow.
        assert_eq!(gives_up(&t, Some(mib), rate(60e3)), None);
        assert_eq!(gives_up(&t, Some(mib), rate(40e3)), Some(20.1));
        // Large bodies at min_rate go on; below it, they stop after `stall`.
        assert_eq!(gives_up(&t, Some(64 * mib), rate(300e3)), None);
        assert_eq!(gives_up(&t, Some(64 * mib), rate(200e3)), Some(20.1));
        assert_eq!(gives_up(&t, None, rate(200e3)), Some(20.1));
        // A drip, and silence.
        assert_eq!(gives_up(&t, Some(mib), |s| s as u64), Some(20.1));
        assert_eq!(gives_up(&t, None, |_| 0), Some(20.1));
        // What the socket buffers took at once earns no credit: 4 MiB at
        // the start, then a trickle, stops a `stall` (and a sample) later.
        let burst = |s: f64| 4 * mib + (20e3 * s) as u64;
        let when = gives_up(&t, Some(64 * mib), burst).expect("stops");
        assert!((20.1..=23.0).contains(&when), "{when}");
        // 1 MB/s for 30 s, then nothing: once the last `stall` holds less
        // than min_rate × `stall` (about 15 s after it stopped).
        let stuck = |s: f64| (1e6 * s.min(30.0)) as u64;
        let when = gives_up(&t, Some(64 * mib), stuck).expect("stops");
        assert!((44.5..=46.0).contains(&when), "{when}");
    }

    #[test]
    fn failure_lines() {
        let c = Client::new("http://10.0.2.2:8080/", "pc", "t");
        let chunk = Exchange { object: Some(chunk_words(7, &[0xab; 32])), ..Exchange::new("GET", "/c".into(), 9) };
        let put = Exchange {
            body: Some(&[1]),
            ..Exchange { object: chunk.object.clone(), ..Exchange::new("PUT", "/c".into(), 9) }
        };
        let job = Exchange::new("GET", "/jobs/next".into(), 9);
        let s = Duration::from_secs;
        for (x, f, want) in [
            (&job, Failure::Connect, "could not connect to the server at http://10.0.2.2:8080 within 10 s (GET /api/v1/jobs/next)"),
            (&put, Failure::NotTaken, "the server at http://10.0.2.2:8080 accepted the connection but did not take the request (the upload of chunk abababababab of backup 7) within 10 s"),
            (&put, Failure::StoppedReceiving(s(21)), "the server at http://10.0.2.2:8080 stopped receiving chunk abababababab of backup 7 after 21 s"),
            (&chunk, Failure::NoAnswer, "the server at http://10.0.2.2:8080 accepted the connection but sent no answer to the request for chunk abababababab of backup 7 within 20 s"),
            (&chunk, Failure::StoppedSending { after: Duration::from_millis(20_400), got: 3, of: Some(1 << 20) }, "the server at http://10.0.2.2:8080 stopped sending chunk abababababab of backup 7 after 20 s (3 B of 1.0 MiB received)"),
            (&job, Failure::StoppedSending { after: s(20), got: 0, of: None }, "the server at http://10.0.2.2:8080 stopped sending its answer to GET /api/v1/jobs/next after 20 s (0 B of an unknown length received)"),
            (&job, Failure::OutOfTime, "the server at http://10.0.2.2:8080 did not complete GET /api/v1/jobs/next within 60 s"),
            (&job, Failure::Other("io: Connection refused".into()), "GET http://10.0.2.2:8080/api/v1/jobs/next: io: Connection refused"),
        ] {
            assert_eq!(c.describe(0, x, &f, s(60)), want);
        }
    }

    #[test]
    fn kv_and_escape() {
        let kv = parse_kv("id=7\nstate=complete\nnonsense\n");
        assert_eq!(kv_get(&kv, "id"), Some("7"));
        assert_eq!(kv_get(&kv, "state"), Some("complete"));
        assert_eq!(kv_get(&kv, "x"), None);
        assert_eq!(url_escape("lab pc/3"), "lab%20pc%2F3");
        assert_eq!(id_from("id=12\n", "x").unwrap(), 12);
        assert!(id_from("oops", "opening").unwrap_err().to_string().contains("opening: no id"));
    }

    #[test]
    fn backup_lines() {
        let text = "id=9\tpc=pc-one\tname=full\tcreated=1700000000\tdisk_bytes=1048576\tstored_bytes=4096\t\
                    locked=yes\tmodel=QEMU HARDDISK\tfuture=1\n\
                    id=3\tpc=pc-two\tname=\tcreated=5\tdisk_bytes=0\tstored_bytes=0\tlocked=no\tmodel=\n\n";
        let list = parse_backup_lines(text).unwrap();
        assert_eq!(
            list[0],
            BackupInfo {
                id: 9,
                pc: "pc-one".into(),
                name: "full".into(),
                created: 1_700_000_000,
                disk_bytes: 1 << 20,
                stored_bytes: 4096,
                locked: true,
                model: "QEMU HARDDISK".into(),
            }
        );
        assert_eq!((list[1].id, list[1].locked, list[1].model.as_str()), (3, false, ""));
        assert_eq!(parse_backup_lines("").unwrap(), vec![]);
        let e = parse_backup_lines("id=1\tpc=a\tcreated=x\tdisk_bytes=1\tstored_bytes=1").unwrap_err().to_string();
        assert!(e.contains("line 1: no valid created"), "{e}");
    }

    #[test]
    fn challenges() {
        assert_eq!(parse_challenge("locked=no\n").unwrap(), None);
        let nonce = "ab".repeat(32);
        let salt = "01".repeat(16);
        let ok = format!("locked=yes\nkdf=argon2id\nm=19456\nt=2\np=1\nsalt={salt}\nnonce={nonce}\n");
        let c = parse_challenge(&ok).unwrap().unwrap();
        assert_eq!((c.params, c.salt, c.nonce), (Params::DEFAULT, vec![1u8; 16], [0xab; 32]));
        for (bad, why) in [
            (ok.replace("m=19456", "m=4194304"), "memory"),
            (ok.replace("t=2", "t=100000"), "passes"),
            (ok.replace("kdf=argon2id", "kdf=md5"), "not argon2id"),
            (ok.replace(&salt, "01"), "salt must be"),
            (ok.replace(&nonce, "ab"), "nonce"),
            ("hello".to_string(), "no locked="),
        ] {
            let e = parse_challenge(&bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
