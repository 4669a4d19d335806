//! Talking to the bootvault server over HTTP (ureq, no TLS: the server is
//! on the PC's own network; authentication comes with per-PC tokens).
//!
//! Owns: the requests the PC makes and their retries. Every request names
//! the PC (`wire::PC_HEADER`) so the server can log and authorize it.

use std::time::{Duration, Instant};

use bootvault_common::units::mac_string;
use bootvault_common::wire;

use crate::net::Lease;

pub struct Client {
    agent: ureq::Agent,
    base: String,
    pc: String,
    mac: String,
    addr: String,
}

impl Client {
    pub fn new(base: &str, pc: &str, lease: Option<&Lease>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        Client {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            pc: pc.to_owned(),
            mac: lease.map(|l| mac_string(l.link.mac)).unwrap_or_else(|| "-".into()),
            addr: lease.map(|l| l.addr.to_string()).unwrap_or_else(|| "-".into()),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn get_text(&self, path: &str) -> Result<String, String> {
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .header(wire::PC_HEADER, &self.pc)
            .header(wire::MAC_HEADER, &self.mac)
            .header(wire::ADDR_HEADER, &self.addr)
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        resp.body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .map_err(|e| format!("GET {url}: reading the answer: {e}"))
    }

    /// Announces the PC. Retries until `patience` runs out, since the server
    /// may be starting up at the same time as the PC.
    pub fn hello(&self, patience: Duration, log: &mut dyn FnMut(String)) -> Result<String, String> {
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.get_text(wire::HELLO) {
                Ok(text) if text.starts_with(wire::HELLO_PREFIX) => return Ok(text.trim().to_owned()),
                Ok(text) => {
                    let first = text.lines().next().unwrap_or("").chars().take(80).collect::<String>();
                    return Err(format!("{} is not a bootvault server (it answered {first:?})", self.base));
                }
                Err(e) if start.elapsed() + Duration::from_secs(2) < patience => {
                    log(format!("attempt {attempt}: {e}; retrying"));
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(format!("{e} (gave up after {attempt} attempts)")),
            }
        }
    }
}
