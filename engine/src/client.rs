//! The client side of docs/PROTOCOL.md, over ureq (HTTP/1.1, keep-alive,
//! no TLS). Every request names the PC. Non-2xx answers become errors
//! carrying the server's one-line reason; idempotent requests are retried
//! a few times on network errors.

use std::time::{Duration, Instant};

use bootvault_common::image::{hex, ChunkId};
use bootvault_common::wire;

use crate::EngineError;

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    pc: String,
    /// `Bearer TOKEN`, sent with every request.
    authorization: String,
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
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{path}", self.base, wire::API)
    }

    /// One request; `body` None = GET (or DELETE), Some = POST/PUT.
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>, limit: u64) -> Result<(u16, Vec<u8>), EngineError> {
        let url = self.url(path);
        let what = format!("{method} {url}");
        let result = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .header(wire::PC_HEADER, &self.pc)
                .header(wire::AUTHORIZATION, &self.authorization)
                .call(),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header(wire::PC_HEADER, &self.pc)
                .header(wire::AUTHORIZATION, &self.authorization)
                .send(b),
            (_, b) => self
                .agent
                .post(&url)
                .header(wire::PC_HEADER, &self.pc)
                .header(wire::AUTHORIZATION, &self.authorization)
                .send(b.unwrap_or_default()),
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.call(method, path, body, limit) {
                Ok((s, b)) if (200..300).contains(&s) => return Ok((s, b)),
                Ok((s, b)) => {
                    let reason = String::from_utf8_lossy(&b);
                    let reason = reason.lines().next().unwrap_or("").trim();
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
                .agent
                .get(&url)
                .header(wire::PC_HEADER, &self.pc)
                .header(wire::AUTHORIZATION, &self.authorization)
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

    pub fn open_backup(&self, name: &str, disk_bytes: u64, chunk_size: u32) -> Result<i64, EngineError> {
        let path = format!("/backups?name={}&disk_bytes={disk_bytes}&chunk_size={chunk_size}", url_escape(name));
        let (_, body) = self.expect_ok("POST", &path, Some(&[]), 4096, false)?;
        id_from(&Self::text(&body), "opening a backup")
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

    pub fn manifest(&self, backup: i64) -> Result<Vec<u8>, EngineError> {
        self.expect_ok("GET", &format!("/backups/{backup}/manifest"), None, 64 << 20, true).map(|(_, b)| b)
    }

    /// A chunk of backup `backup` (the server hands a PC only chunks of
    /// backups it may read).
    pub fn chunk(&self, backup: i64, id: &ChunkId, limit: u64) -> Result<Vec<u8>, EngineError> {
        self.expect_ok("GET", &format!("/chunks/{}?backup={backup}", hex(id)), None, limit, true).map(|(_, b)| b)
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
}
