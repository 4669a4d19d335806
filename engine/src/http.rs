//! HTTP/1.1 for the client (docs/PROTOCOL.md): one request at a time on a
//! connection, kept alive for the next one (up to [`IDLE`] per client
//! and its clones), bodies as whole buffers both ways, `https://` through
//! [`crate::tls`]. Every wait is bounded by [`Timeouts`] and by the try's
//! own deadline, and a failure says in which phase the server stopped
//! ([`Failure`]), which is what the client's messages and retries are
//! built on.
//!
//! Why not ureq, which the client used before: the same requests cost
//! the init 156 KB more with it (BENCHMARKS.md "What the init
//! weighs"), and the protocol needs only this much of HTTP: Content-Length
//! and chunked answers, keep-alive, `Connection: close`.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootvault_common::fingerprint::Fingerprint;
use bootvault_common::units::human_bytes;

use crate::client::{Pace, Timeouts};
use crate::tls::{self, Refusals, Sock};
use crate::tls13::Tls;

/// Idle connections kept per client (and its clones), and for how long.
const IDLE: usize = 8;
const IDLE_FOR: Duration = Duration::from_secs(15);
/// The largest answer head taken.
const MAX_HEAD: usize = 64 << 10;
/// Request bodies are written in pieces of this size, each bounded in time.
const PIECE: usize = 64 << 10;

/// Why one try got no answer, by the phase the server stopped in.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No connection within the connect timeout.
    Connect,
    /// Connected, but the request headers were not taken.
    NotTaken,
    /// The server stopped taking the request body, after this long.
    StoppedReceiving(Duration),
    /// The request was sent; no answer came.
    NoAnswer,
    /// The answer's body stopped (or dripped), after this long, with
    /// these bytes of the declared length received.
    StoppedSending { after: Duration, got: u64, of: Option<u64> },
    /// The request's whole budget ran out.
    OutOfTime,
    /// No connection: refused, unreachable, no address, or the TLS
    /// handshake failed (the request was never sent), as said.
    Unreached(String),
    /// Anything else (reset, not HTTP), as the transport says it.
    Other(String),
}

impl Failure {
    /// The failures a person can act on, over the catch-all.
    pub fn specific(&self) -> bool {
        !matches!(self, Failure::OutOfTime)
    }

    /// Whether the server cannot have seen the request (any request may
    /// then go to another server).
    pub fn unsent(&self) -> bool {
        matches!(self, Failure::Connect | Failure::Unreached(_))
    }
}

/// Where requests go: from the client's base URL.
#[derive(Clone, Debug, PartialEq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// `host[:port]` as written, for the Host header.
    authority: String,
}

fn target(base: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = base.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = base.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{base} is not an http:// or https:// URL"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| format!("{base}: an unclosed [ in the host"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("{base}: {p} is not a port"))?,
        None if tls => 443,
        None => 80,
    };
    if host.is_empty() {
        return Err(format!("{base} names no host"));
    }
    Ok(Target { tls, host: host.to_owned(), port, authority: authority.to_owned() })
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<Tls<Sock>>),
}

impl Stream {
    fn tcp(&mut self) -> &TcpStream {
        match self {
            Stream::Plain(t) => t,
            Stream::Tls(t) => &t.get_mut().tcp,
        }
    }

    fn read_timeout(&mut self, d: Duration) {
        let _ = self.tcp().set_read_timeout(Some(d.max(Duration::from_millis(1))));
    }

    fn write_timeout(&mut self, d: Duration) {
        let _ = self.tcp().set_write_timeout(Some(d.max(Duration::from_millis(1))));
    }

    /// Writes all of `data` by `by`, however many system calls it takes:
    /// a socket that takes a few bytes at a time cannot stretch it.
    fn write_by(&mut self, data: &[u8], by: Instant) -> io::Result<()> {
        match self {
            Stream::Plain(t) => {
                let mut rest = data;
                while !rest.is_empty() {
                    tls::write_until(t, by)?;
                    match t.write(rest) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Stream::Tls(t) => {
                t.get_mut().write_by = Some(by);
                let r = t.write_all(data);
                t.get_mut().write_by = None;
                r
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(t) => t.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(t) => t.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(t) => t.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// A connection and what it read past the last answer's head.
struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    /// When it last finished an exchange.
    idle_since: Instant,
}

impl Conn {
    fn new(stream: Stream) -> Conn {
        Conn { stream, buf: Vec::with_capacity(16 << 10), start: 0, idle_since: Instant::now() }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Reads more into the buffer; Ok(0) at the end of the stream.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + (16 << 10), 0);
        let r = self.stream.read(&mut self.buf[len..]);
        self.buf.truncate(len + *r.as_ref().unwrap_or(&0));
        r
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// One request.
pub struct Request<'a> {
    pub method: &'static str,
    /// Path and query, from `/`.
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    /// The largest answer body taken.
    pub limit: u64,
}

/// The client's connections to its server.
#[derive(Clone)]
pub struct Http {
    target: Result<Target, String>,
    pin: Option<Fingerprint>,
    refusals: Refusals,
    idle: Arc<Mutex<Vec<Conn>>>,
}

/// What an exchange on one connection ended with: the failure, and
/// whether the server had said nothing at all (a kept-alive connection
/// the server had closed).
type Broken = (Failure, bool);

impl Http {
    pub fn new(base: &str, pin: Option<Fingerprint>, refusals: Refusals) -> Http {
        Http { target: target(base), pin, refusals, idle: Arc::new(Mutex::new(Vec::new())) }
    }

    /// One try of `req`, which may take `left` at most: the status and
    /// the body.
    pub fn call(&self, req: &Request, t: &Timeouts, left: Duration) -> Result<(u16, Vec<u8>), Failure> {
        let target = self.target.as_ref().map_err(|e| Failure::Other(e.clone()))?;
        let deadline = Instant::now() + left;
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|c| c.idle_since.elapsed() < IDLE_FOR);
            idle.pop()
        };
        if let Some(mut conn) = idle {
            match exchange(&mut conn, target, req, t, deadline) {
                Ok((status, body, keep)) => return Ok(self.done(conn, keep, status, body)),
                // The server had closed it while it sat idle: a new one.
                Err((Failure::Other(_), true)) => {}
                Err((f, _)) => return Err(f),
            }
        }
        let mut conn = self.connect(target, t, deadline)?;
        match exchange(&mut conn, target, req, t, deadline) {
            Ok((status, body, keep)) => Ok(self.done(conn, keep, status, body)),
            Err((f, _)) => Err(f),
        }
    }

    fn done(&self, mut conn: Conn, keep: bool, status: u16, body: Vec<u8>) -> (u16, Vec<u8>) {
        if keep {
            conn.idle_since = Instant::now();
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE {
                idle.push(conn);
            }
        }
        (status, body)
    }

    fn connect(&self, target: &Target, t: &Timeouts, deadline: Instant) -> Result<Conn, Failure> {
        let addrs = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| Failure::Unreached(format!("resolving {}: {e}", target.host)))?;
        let mut last = Failure::Unreached(format!("{} has no address", target.host));
        for addr in addrs {
            let wait = t.connect.min(left(deadline)).max(Duration::from_millis(1));
            match TcpStream::connect_timeout(&addr, wait) {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return self.secure(tcp, target, t, deadline).map(Conn::new);
                }
                Err(e) if timed_out(&e) => last = past(deadline).unwrap_or(Failure::Connect),
                Err(e) => last = Failure::Unreached(e.to_string()),
            }
        }
        Err(last)
    }

    /// The connection as the scheme wants it: TLS with the pinned
    /// certificate for `https://`.
    fn secure(&self, tcp: TcpStream, target: &Target, t: &Timeouts, deadline: Instant) -> Result<Stream, Failure> {
        if !target.tls {
            return Ok(Stream::Plain(tcp));
        }
        let Some(pin) = &self.pin else {
            return Err(Failure::Other(
                "an https:// server needs its certificate's fingerprint (--fingerprint, or fingerprint= in the PC's \
                 settings)"
                    .into(),
            ));
        };
        let wait = t.connect.min(left(deadline)).max(Duration::from_millis(1));
        let _ = tcp.set_read_timeout(Some(wait));
        let _ = tcp.set_write_timeout(Some(wait));
        match tls::handshake(tcp, pin, &self.refusals) {
            Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
            Err(e) if timed_out(&e) => Err(past(deadline).unwrap_or(Failure::NotTaken)),
            Err(e) => Err(Failure::Unreached(e.to_string())),
        }
    }
}

/// OutOfTime once the try's deadline has passed.
fn past(deadline: Instant) -> Option<Failure> {
    (Instant::now() + Duration::from_millis(5) >= deadline).then_some(Failure::OutOfTime)
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Sends `req` on `conn` and reads the answer: (status, body, whether the
/// connection may carry another request).
fn exchange(
    conn: &mut Conn,
    target: &Target,
    req: &Request,
    t: &Timeouts,
    deadline: Instant,
) -> Result<(u16, Vec<u8>, bool), Broken> {
    let began = Instant::now();
    let mut head = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", req.method, req.path, target.authority);
    for (k, v) in req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = req.body.unwrap_or_default();
    if req.body.is_some() || req.method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    conn.stream.write_timeout(t.connect.min(left(deadline)));
    let sent = conn.stream.write_all(head.as_bytes());
    if let Err(e) = sent {
        return Err(if timed_out(&e) {
            (past(deadline).unwrap_or(Failure::NotTaken), false)
        } else {
            (Failure::Other(e.to_string()), true)
        });
    }
    // The body: each piece within `stall` (however the kernel takes it,
    // a few bytes at a time included), the whole at `min_rate` (Pace).
    let body_budget = t.body(body.len() as u64);
    let mut pace = Pace::new(Instant::now(), Some(body.len() as u64));
    let mut sent = 0u64;
    for piece in body.chunks(PIECE) {
        let since = began.elapsed();
        if since > body_budget || pace.too_slow(t, Instant::now(), sent) {
            return Err((Failure::StoppedReceiving(since), false));
        }
        let by = (Instant::now() + t.stall.min(body_budget - since)).min(deadline);
        if let Err(e) = conn.stream.write_by(piece, by) {
            if timed_out(&e) {
                return Err((past(deadline).unwrap_or(Failure::StoppedReceiving(began.elapsed())), false));
            }
            // The server may have answered (a refusal) and closed before
            // taking the whole body: its answer says more than the error.
            return match answer(conn, req, t, deadline) {
                Ok((status, body, _)) => Ok((status, body, false)),
                Err(_) => Err((Failure::Other(e.to_string()), false)),
            };
        }
        sent += piece.len() as u64;
    }
    if let Err(e) = conn.stream.flush() {
        return Err((Failure::Other(e.to_string()), false));
    }
    answer(conn, req, t, deadline)
}

/// Reads the answer's head and body.
fn answer(conn: &mut Conn, req: &Request, t: &Timeouts, deadline: Instant) -> Result<(u16, Vec<u8>, bool), Broken> {
    // The head: the server's thinking time for the first byte, then `stall`.
    let mut first = true;
    let end = loop {
        if let Some(p) = conn.pending().windows(4).position(|w| w == b"\r\n\r\n") {
            break conn.start + p + 4;
        }
        if conn.pending().len() > MAX_HEAD {
            return Err((Failure::Other(format!("an answer head over {}", human_bytes(MAX_HEAD as u64))), false));
        }
        conn.stream.read_timeout(if first { t.answer } else { t.stall }.min(left(deadline)));
        match conn.fill() {
            Ok(0) => {
                let nothing = conn.pending().is_empty();
                return Err((Failure::Other("the server closed the connection without an answer".into()), nothing));
            }
            Ok(_) => first = false,
            Err(e) if timed_out(&e) => return Err((past(deadline).unwrap_or(Failure::NoAnswer), false)),
            Err(e) => {
                let nothing = first && conn.pending().is_empty();
                return Err((Failure::Other(e.to_string()), nothing));
            }
        }
    };
    let head = String::from_utf8_lossy(&conn.buf[conn.start..end]).into_owned();
    conn.start = end;
    let (status, length, chunked, mut keep) = parse_head(&head).map_err(|e| (Failure::Other(e), false))?;
    // Room for a one-line refusal even where the answer is tiny.
    let limit = req.limit.max(4096);
    let started = Instant::now();
    let mut out = Vec::new();
    let mut reader = Body { conn, t, deadline, started, of: length, pace: Pace::new(started, length) };
    let got = if matches!(status, 100..=199 | 204 | 304) {
        Ok(())
    } else if chunked {
        reader.chunked(&mut out, limit)
    } else if let Some(n) = length {
        // Past the limit, what came is read before the refusal: a server
        // dripping it is told apart from one sending too much.
        reader.exact(&mut out, n.min(limit.saturating_add(1)) as usize).and_then(|()| {
            if n > limit {
                return Err(too_large(limit));
            }
            Ok(())
        })
    } else {
        keep = false;
        reader.until_closed(&mut out, limit)
    };
    got.map_err(|f| (f, false))?;
    Ok((status, out, keep))
}

fn too_large(limit: u64) -> Failure {
    Failure::Other(format!("the answer is larger than the {} expected", human_bytes(limit)))
}

/// (status, Content-Length, chunked, keep-alive) from an answer head.
fn parse_head(head: &str) -> Result<(u16, Option<u64>, bool, bool), String> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
        return Err(format!("not an HTTP answer: {:?}", status_line.chars().take(60).collect::<String>()));
    };
    let (mut length, mut chunked, mut keep) = (None, false, version == "HTTP/1.1");
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("a malformed header line: {:?}", line.chars().take(60).collect::<String>()));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = value.parse::<u64>().map_err(|_| format!("a Content-Length of {value:?}"))?;
                if length.is_some_and(|l| l != n) {
                    return Err("two different Content-Lengths".into());
                }
                length = Some(n);
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().ends_with("chunked"),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep = false;
                } else if v.contains("keep-alive") {
                    keep = true;
                }
            }
            _ => {}
        }
    }
    Ok((status, if chunked { None } else { length }, chunked, keep))
}

/// Reads an answer's body, every read bounded by `stall`, the body by
/// [`Timeouts::min_rate`] and the try's deadline.
struct Body<'a> {
    conn: &'a mut Conn,
    t: &'a Timeouts,
    deadline: Instant,
    started: Instant,
    of: Option<u64>,
    pace: Pace,
}

impl Body<'_> {
    fn stopped(&self, got: usize) -> Failure {
        past(self.deadline).unwrap_or(Failure::StoppedSending {
            after: self.started.elapsed(),
            got: got as u64,
            of: self.of,
        })
    }

    /// Bytes into `dst` (buffered ones first), `got` of the body having
    /// come before; Ok(0) at the end.
    fn read(&mut self, dst: &mut [u8], got: usize) -> Result<usize, Failure> {
        if self.pace.too_slow(self.t, Instant::now(), got as u64) {
            return Err(self.stopped(got));
        }
        let pending = self.conn.pending();
        if !pending.is_empty() {
            let n = pending.len().min(dst.len());
            dst[..n].copy_from_slice(&pending[..n]);
            self.conn.start += n;
            return Ok(n);
        }
        self.conn.stream.read_timeout(self.t.stall.min(left(self.deadline)));
        match self.conn.stream.read(dst) {
            Ok(n) => Ok(n),
            Err(e) if timed_out(&e) => Err(self.stopped(got)),
            Err(e) => Err(Failure::Other(format!("reading the answer: {e}"))),
        }
    }

    /// Reads until `out` holds `n` bytes, straight into it.
    fn exact(&mut self, out: &mut Vec<u8>, n: usize) -> Result<(), Failure> {
        let mut got = out.len();
        out.resize(n, 0);
        while got < n {
            match self.read(&mut out[got..], got) {
                Ok(0) => {
                    out.truncate(got);
                    return Err(Failure::Other(format!(
                        "reading the answer: the server closed the connection after {} of {}",
                        human_bytes(got as u64),
                        human_bytes(self.of.unwrap_or(n as u64))
                    )));
                }
                Ok(k) => got += k,
                Err(f) => {
                    out.truncate(got);
                    return Err(f);
                }
            }
        }
        Ok(())
    }

    fn until_closed(&mut self, out: &mut Vec<u8>, limit: u64) -> Result<(), Failure> {
        let mut got = out.len();
        let r = loop {
            if out.len() - got < (16 << 10) {
                out.resize(got + (256 << 10), 0);
            }
            match self.read(&mut out[got..], got) {
                Ok(0) => break Ok(()),
                Ok(k) => got += k,
                Err(f) => break Err(f),
            }
            if got as u64 > limit {
                break Err(too_large(limit));
            }
        };
        out.truncate(got);
        r
    }

    /// One CRLF-ended line of a chunked body (size lines, trailers).
    fn line(&mut self, got: usize) -> Result<String, Failure> {
        loop {
            if let Some(p) = self.conn.pending().windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.conn.pending()[..p]).into_owned();
                self.conn.start += p + 2;
                return Ok(line);
            }
            if self.conn.pending().len() > 4096 {
                return Err(Failure::Other("a chunked answer with a line over 4 KiB".into()));
            }
            self.conn.stream.read_timeout(self.t.stall.min(left(self.deadline)));
            match self.conn.fill() {
                Ok(0) => return Err(Failure::Other("reading the answer: the server closed it mid-chunk".into())),
                Ok(_) => {}
                Err(e) if timed_out(&e) => return Err(self.stopped(got)),
                Err(e) => return Err(Failure::Other(format!("reading the answer: {e}"))),
            }
        }
    }

    fn chunked(&mut self, out: &mut Vec<u8>, limit: u64) -> Result<(), Failure> {
        loop {
            let line = self.line(out.len())?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| Failure::Other(format!("a chunk size of {size:?} in the answer")))?;
            if size == 0 {
                while !self.line(out.len())?.is_empty() {}
                return Ok(());
            }
            if size > limit.saturating_sub(out.len() as u64) {
                return Err(too_large(limit));
            }
            self.exact(out, out.len() + size as usize)?;
            if !self.line(out.len())?.is_empty() {
                return Err(Failure::Other("a chunk longer than its size in the answer".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = target("https://backup.example:8443").expect("parses");
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.authority.as_str()),
            (true, "backup.example", 8443, "backup.example:8443")
        );
        let t = target("http://10.0.2.2").expect("parses");
        assert_eq!((t.tls, t.host.as_str(), t.port), (false, "10.0.2.2", 80));
        let t = target("https://[fd00::1]:9000").expect("parses");
        assert_eq!((t.host.as_str(), t.port, t.authority.as_str()), ("fd00::1", 9000, "[fd00::1]:9000"));
        assert_eq!(target("https://[fd00::1]").expect("parses").port, 443);
        assert!(target("ftp://x").is_err());
        assert!(target("http://x:port").is_err());
        assert!(target("http://:80").is_err());
    }

    #[test]
    fn heads() {
        let h = "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(parse_head(h), Ok((200, Some(12), false, true)));
        let h = "HTTP/1.1 507 Insufficient Storage\r\nConnection: close\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(parse_head(h), Ok((507, Some(3), false, false)));
        let h = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(parse_head(h), Ok((200, None, true, true)));
        assert_eq!(parse_head("HTTP/1.0 200 OK\r\n\r\n"), Ok((200, None, false, false)));
        assert!(parse_head("SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_head("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n").is_err());
        assert!(parse_head("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").is_err());
    }
}
