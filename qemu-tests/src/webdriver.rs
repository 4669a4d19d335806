//! A WebDriver client for the web console's browser tests: Debian's
//! `chromium` driven headless through `chromedriver` (W3C WebDriver over
//! HTTP on 127.0.0.1), with just the commands the tests use. Keys such as
//! Tab and Enter are WebDriver's code points ([`TAB`], [`ENTER`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::Result;

/// The Tab and Enter keys, for [`Browser::type_into`].
pub const TAB: char = '\u{E004}';
pub const ENTER: char = '\u{E007}';

/// W3C's key for an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless browser session; the driver stops with it.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

/// An element of the current page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium that accepts the
    /// server's own certificate (the tests' servers make theirs).
    pub fn start() -> Result<Browser> {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting chromedriver (Debian package chromium-driver): {e}"))?;
        let mut b = Browser { driver, port, session: String::new() };
        let start = Instant::now();
        // Not a TCP self-connect to the free port (see spawn_on_loopback).
        let up = |s: TcpStream| s.local_addr().is_ok_and(|a| a.port() != port);
        while !TcpStream::connect(("127.0.0.1", port)).is_ok_and(up) {
            if start.elapsed() > Duration::from_secs(20) {
                return Err("chromedriver did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1200,900", "--lang=en-US"]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps))?;
        b.session = v["sessionId"].as_str().ok_or_else(|| format!("no session in {v}"))?.to_owned();
        Ok(b)
    }

    /// One command; its `value`, or the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).map_err(|e| e.to_string())?;
        let mut length = None;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                }
            }
        }
        let mut text = Vec::new();
        match length {
            Some(n) => {
                text.resize(n, 0);
                r.read_exact(&mut text).map_err(|e| e.to_string())?;
            }
            None => {
                r.read_to_end(&mut text).map_err(|e| e.to_string())?;
            }
        }
        let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{method} {path}: {e}"))?;
        if !status.contains(" 200") {
            return Err(format!("{method} {path}: {}", v["value"]["message"].as_str().unwrap_or(&v.to_string())));
        }
        Ok(v["value"].clone())
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn go(&self, url: &str) -> Result<()> {
        self.call("POST", &self.at("/url"), Some(json!({ "url": url }))).map(|_| ())
    }

    pub fn url(&self) -> Result<String> {
        Ok(self.call("GET", &self.at("/url"), None)?.as_str().unwrap_or_default().to_owned())
    }

    /// The first element matching a CSS selector.
    pub fn find(&self, css: &str) -> Result<Element> {
        let v = self.call("POST", &self.at("/element"), Some(json!({"using": "css selector", "value": css})))?;
        v[ELEMENT].as_str().map(|id| Element(id.to_owned())).ok_or_else(|| format!("no element {css}"))
    }

    pub fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self.call("POST", &self.at("/elements"), Some(json!({"using": "css selector", "value": css})))?;
        Ok(v.as_array()
            .map(|a| a.iter().filter_map(|e| e[ELEMENT].as_str()).map(|id| Element(id.to_owned())).collect())
            .unwrap_or_default())
    }

    pub fn click(&self, e: &Element) -> Result<()> {
        self.call("POST", &self.at(&format!("/element/{}/click", e.0)), Some(json!({}))).map(|_| ())
    }

    pub fn type_into(&self, e: &Element, text: &str) -> Result<()> {
        self.call("POST", &self.at(&format!("/element/{}/value", e.0)), Some(json!({ "text": text }))).map(|_| ())
    }

    pub fn text(&self, e: &Element) -> Result<String> {
        Ok(self.call("GET", &self.at(&format!("/element/{}/text", e.0)), None)?.as_str().unwrap_or_default().to_owned())
    }

    /// The page's visible text.
    pub fn page_text(&self) -> Result<String> {
        self.text(&self.find("body")?)
    }

    /// Runs a script in the page; its result.
    pub fn script(&self, js: &str) -> Result<Value> {
        self.call("POST", &self.at("/execute/sync"), Some(json!({"script": js, "args": []})))
    }

    /// Waits until `css` matches an element whose text contains `needle`.
    pub fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            if let Ok(e) = self.find(css) {
                if let Ok(t) = self.text(&e) {
                    if t.contains(needle) {
                        return Ok(t);
                    }
                    last = t;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let page = self.page_text().unwrap_or_default();
        let at = self.url().unwrap_or_default();
        Err(format!("{css} did not show {needle:?} within {timeout:?}; last: {last:?}; page {at}:\n{page}"))
    }

    /// The text of the open dialog (`confirm`), then dismisses it.
    pub fn dismiss_dialog(&self) -> Result<String> {
        let text = self.call("GET", &self.at("/alert/text"), None)?.as_str().unwrap_or_default().to_owned();
        self.call("POST", &self.at("/alert/dismiss"), Some(json!({})))?;
        Ok(text)
    }

    /// Sets the window's size (a phone's, say).
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.call("POST", &self.at("/window/rect"), Some(json!({"width": width, "height": height}))).map(|_| ())
    }

    /// A PNG of the window, written to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let b64 = self.call("GET", &self.at("/screenshot"), None)?;
        let png = base64_decode(b64.as_str().unwrap_or_default())?;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        acc = (acc << 6) | val(c).ok_or("bad base64 in a screenshot")?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        assert_eq!(super::base64_decode("aGVsbG8gd29ybGQ=").as_deref(), Ok(&b"hello world"[..]));
    }
}
