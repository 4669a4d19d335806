//! The client side of docs/PROTOCOL.md, over ureq (HTTP/1.1, keep-alive,
//! no TLS). Every request names the PC. Non-2xx answers become errors
//! carrying the server's one-line reason; idempotent requests are retried
//! a few times on network errors.
//!
//! Password-protected backups: [`Client::challenge`] then
//! [`Client::unlock`] (or [`Client::set_ticket`] with a ticket from a
//! server job) leave a ticket in the client, shared by its clones, which
//! manifest and chunk requests for that backup carry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootvault_common::image::{hex, ChunkId};
use bootvault_common::wire;

use zeroize::Zeroizing;

use crate::lock::{Challenge, Lock, Params};
use crate::EngineError;

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    pc: String,
    /// `Bearer TOKEN`, sent with every request.
    authorization: String,
    /// Challenges asked and tickets held, per backup; shared by clones so
    /// the restore workers use the ticket the console got.
    unlocks: Arc<Mutex<Unlocks>>,
}

#[derive(Default)]
struct Unlocks {
    nonces: HashMap<i64, [u8; 32]>,
    tickets: HashMap<i64, String>,
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
    if kv_get(&kv, "kdf") != Some("argon2id") {
        return Err(bad("kdf is not argon2id"));
    }
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
    Ok(Some(Challenge { params, salt, nonce }))
}

/// Parses `key=value` lines (the init-facing answer format).
pub fn parse_kv(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect()
}

pub fn kv_get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

const RETRIES: u32 = 3;

impl Client {
    /// A client for PC `pc`, proving itself with `token` (the PC's, or the
    /// server's admin token).
    pub fn new(base: &str, pc: &str, token: &str) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(120)))
            .max_idle_connections_per_host(8)
            .build()
            .into();
        Client {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            pc: pc.to_owned(),
            authorization: format!("{}{token}", wire::BEARER),
            unlocks: Arc::new(Mutex::new(Unlocks::default())),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
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

    fn ticket(&self, backup: i64) -> Option<String> {
        self.unlocks().tickets.get(&backup).cloned()
    }

    /// The headers every request carries, plus the unlock ticket if any.
    fn headers<B>(&self, r: ureq::RequestBuilder<B>, ticket: Option<&str>) -> ureq::RequestBuilder<B> {
        let r = r.header(wire::PC_HEADER, &self.pc).header(wire::AUTHORIZATION, &self.authorization);
        match ticket {
            Some(t) => r.header(wire::UNLOCK_HEADER, t),
            None => r,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{path}", self.base, wire::API)
    }

    /// One request; `body` None = GET (or DELETE), Some = POST/PUT;
    /// `ticket` = the unlock ticket to send, if any.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        limit: u64,
        ticket: Option<&str>,
    ) -> Result<(u16, Vec<u8>), EngineError> {
        let url = self.url(path);
        let what = format!("{method} {url}");
        let result = match (method, body) {
            ("GET", _) => self.headers(self.agent.get(&url), ticket).call(),
            ("PUT", Some(b)) => self.headers(self.agent.put(&url), ticket).send(b),
            (_, b) => self.headers(self.agent.post(&url), ticket).send(b.unwrap_or_default()),
        };
        let mut resp = result.map_err(|e| EngineError::new(format!("{what}: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            // Room for a one-line refusal even where the answer is tiny.
            .limit(limit.max(4096))
            .read_to_vec()
            .map_err(|e| EngineError::new(format!("{what}: reading the answer: {e}")))?;
        Ok((status, bytes))
    }

    /// A request whose answer must be 2xx; retried on network errors when
    /// `idempotent`.
    fn expect_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        limit: u64,
        idempotent: bool,
    ) -> Result<(u16, Vec<u8>), EngineError> {
        self.request(method, path, body, limit, idempotent, None, &[])
    }

    /// [`Client::expect_ok`] with an unlock ticket, and statuses whose
    /// error is the server's reason alone: those reach a person at the
    /// console (wrong password, wait, locked), who has no use for a URL.
    /// `423 Locked` (a protected backup without a ticket) always is.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        limit: u64,
        idempotent: bool,
        ticket: Option<&str>,
        plain: &[u16],
    ) -> Result<(u16, Vec<u8>), EngineError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.call(method, path, body, limit, ticket) {
                Ok((s, b)) if (200..300).contains(&s) => return Ok((s, b)),
                Ok((s, b)) => {
                    let reason = String::from_utf8_lossy(&b);
                    let reason = reason.lines().next().unwrap_or("").trim();
                    if (s == 423 || plain.contains(&s)) && !reason.is_empty() {
                        return Err(EngineError::new(reason));
                    }
                    return Err(EngineError::new(format!(
                        "{method} {}: server answered {s}: {reason}",
                        self.url(path)
                    )));
                }
                Err(e) if idempotent && attempt < RETRIES => {
                    std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
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
        let url = self.url("/hello");
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let r = self
                .headers(self.agent.get(&url), None)
                .header(wire::MAC_HEADER, mac)
                .header(wire::ADDR_HEADER, addr)
                .call()
                .map_err(|e| format!("GET {url}: {e}"))
                .and_then(|mut r| {
                    let status = r.status().as_u16();
                    let body = r.body_mut().with_config().limit(64 * 1024).read_to_string();
                    body.map(|b| (status, b)).map_err(|e| format!("GET {url}: reading the answer: {e}"))
                });
            match r {
                Ok((200, text)) if text.starts_with(wire::HELLO_PREFIX) => return Ok(text.trim().to_owned()),
                Ok((status @ (401 | 403), text)) => {
                    let reason: String = text.lines().next().unwrap_or("").chars().take(200).collect();
                    return Err(EngineError::new(format!("{} refused PC {} ({status}): {reason}", self.base, self.pc)));
                }
                Ok((status, text)) => {
                    let first: String = text.lines().next().unwrap_or("").chars().take(80).collect();
                    return Err(EngineError::new(format!(
                        "{} is not a bootvault server (it answered {status} {first:?})",
                        self.base
                    )));
                }
                Err(e) if start.elapsed() + Duration::from_secs(2) < patience => {
                    log(format!("attempt {attempt}: {e}; retrying"));
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(EngineError::new(format!("{e} (gave up after {attempt} attempts)"))),
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
        let (_, answer) = self.expect_ok("POST", &path, Some(body), 4096, false)?;
        id_from(&Self::text(&answer), "opening a backup")
    }

    /// What unlocking `backup` takes (None: it has no password). The
    /// nonce is kept for the [`Client::unlock`] that follows.
    pub fn challenge(&self, backup: i64) -> Result<Option<Challenge>, EngineError> {
        let (_, body) =
            self.request("GET", &format!("/backups/{backup}/challenge"), None, 4096, true, None, &[403, 404, 429])?;
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
        let (_, answer) = self.request(
            "POST",
            &format!("/backups/{backup}/unlock"),
            Some(body.as_bytes()),
            4096,
            false,
            None,
            &[403, 404, 409, 429],
        )?;
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
        let (_, body) = self.expect_ok("GET", "/backups?format=lines", None, 4 << 20, true)?;
        parse_backup_lines(&Self::text(&body))
    }

    /// Stored blob length per id, 0 where the server lacks the chunk.
    pub fn missing(&self, backup: i64, ids: &[ChunkId]) -> Result<Vec<u32>, EngineError> {
        let body: Vec<u8> = ids.iter().flatten().copied().collect();
        let (_, answer) = self.expect_ok(
            "POST",
            &format!("/backups/{backup}/missing"),
            Some(&body),
            4 * ids.len() as u64 + 16,
            true,
        )?;
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
        self.expect_ok("PUT", &format!("/chunks/{}?backup={backup}", hex(id)), Some(blob), 4096, true).map(|_| ())
    }

    pub fn finish(&self, backup: i64, manifest: &[u8]) -> Result<(), EngineError> {
        self.expect_ok("POST", &format!("/backups/{backup}/finish"), Some(manifest), 4096, true).map(|_| ())
    }

    pub fn fail(&self, backup: i64, reason: &str) -> Result<(), EngineError> {
        let reason: String = reason.lines().next().unwrap_or("").chars().take(500).collect();
        self.expect_ok("POST", &format!("/backups/{backup}/fail"), Some(reason.as_bytes()), 4096, false).map(|_| ())
    }

    /// The newest complete backup of `pc` (named `name`, if given).
    pub fn latest(&self, pc: &str, name: Option<&str>) -> Result<i64, EngineError> {
        let mut path = format!("/backups/latest?pc={}", url_escape(pc));
        if let Some(n) = name {
            path.push_str(&format!("&name={}", url_escape(n)));
        }
        let (_, body) = self.expect_ok("GET", &path, None, 4096, true)?;
        id_from(&Self::text(&body), "finding the latest backup")
    }

    /// The manifest (with the unlock ticket, if the client holds one). A
    /// protected backup without a ticket: the server's one-line reason.
    pub fn manifest(&self, backup: i64) -> Result<Vec<u8>, EngineError> {
        let ticket = self.ticket(backup);
        self.request("GET", &format!("/backups/{backup}/manifest"), None, 64 << 20, true, ticket.as_deref(), &[])
            .map(|(_, b)| b)
    }

    /// A chunk of backup `backup` (the server hands a PC only chunks of
    /// backups it may read).
    pub fn chunk(&self, backup: i64, id: &ChunkId, limit: u64) -> Result<Vec<u8>, EngineError> {
        let ticket = self.ticket(backup);
        let path = format!("/chunks/{}?backup={backup}", hex(id));
        self.request("GET", &path, None, limit, true, ticket.as_deref(), &[]).map(|(_, b)| b)
    }

    /// The server's job for this PC, if it has one.
    pub fn next_job(&self) -> Result<Option<Vec<(String, String)>>, EngineError> {
        let (status, body) = self.expect_ok("GET", "/jobs/next", None, 4096, true)?;
        Ok((status != 204 && !body.is_empty()).then(|| parse_kv(&Self::text(&body))))
    }

    /// Reports the outcome of an action.
    pub fn report(&self, kv: &[(&str, String)]) -> Result<(), EngineError> {
        let body: String = kv.iter().map(|(k, v)| format!("{k}={}\n", v.replace('\n', " "))).collect();
        self.expect_ok("POST", "/results", Some(body.as_bytes()), 4096, false).map(|_| ())
    }
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
