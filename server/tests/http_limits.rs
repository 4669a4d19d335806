//! The server's HTTP limits against a real socket (the server started in
//! this process with small limits): slow headers and idle keep-alive
//! connections are closed, a dripping body is answered and closed, a peer
//! that stops reading is cut off, and connections over the caps are
//! answered 503 at once, without locking the address out afterwards.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootvault_server::listener::Limits;
use bootvault_server::vault::{PcRow, Vault};

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-limits-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

const SEC: Duration = Duration::from_secs(1);

/// One-second timeouts, room for 64 connections, 4 per address.
fn small() -> Limits {
    Limits { header_timeout: SEC, body_idle: SEC, write_stall: SEC, max_connections: 64, max_per_address: 4 }
}

fn start(data: &Path, limits: Limits) -> u16 {
    bootvault_server::spawn_on_loopback(data, limits).expect("the server starts")
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    // Long enough for every limit here; a server without them hangs the
    // read until this, and the test fails on it.
    s.set_read_timeout(Some(6 * SEC)).expect("read timeout");
    s
}

/// Reads one answer: (status, body).
fn answer(r: &mut impl BufRead) -> std::io::Result<(u16, String)> {
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("closed after {head:?}")));
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body)?;
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A GET on a new connection, `Connection: close`.
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(6 * SEC))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())?;
    answer(&mut BufReader::new(s))
}

/// Reads until the server closes; (bytes read, how long it took). Panics
/// if the server keeps the connection open past the read timeout.
fn until_closed(s: &mut TcpStream) -> (usize, Duration) {
    let t = Instant::now();
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (total, t.elapsed()),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (total, t.elapsed()),
            Err(e) => panic!("the server kept the connection open ({e}) after {:?}, {total} bytes", t.elapsed()),
        }
    }
}

#[test]
fn slow_headers_are_cut() {
    let dir = temp("headers");
    let port = start(&dir, small());
    let mut s = connect(port);
    s.write_all(b"GET /boot/ipxe HTTP/1.1\r\nhost: x\r\n").expect("start of the head");
    // A header line every 200 ms: always busy, never done.
    let mut drip = s.try_clone().expect("clone");
    std::thread::spawn(move || {
        for i in 0.. {
            std::thread::sleep(Duration::from_millis(200));
            if drip.write_all(format!("x-drip-{i}: 1\r\n").as_bytes()).is_err() {
                break;
            }
        }
    });
    let (bytes, took) = until_closed(&mut s);
    assert_eq!(bytes, 0, "no answer to a head that never ends");
    assert!(took < 4 * SEC, "closed after {took:?}");
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let dir = temp("idle");
    let port = start(&dir, small());
    let mut s = connect(port);
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    // Requests 600 ms apart keep it open past the one-second limit: the
    // limit is on idleness, not on the connection's age.
    for _ in 0..3 {
        s.write_all(b"GET /boot/ipxe HTTP/1.1\r\nhost: x\r\n\r\n").expect("request");
        let (status, body) = answer(&mut r).expect("answer");
        assert_eq!(status, 200);
        assert!(body.starts_with("#!ipxe"), "{body}");
        std::thread::sleep(Duration::from_millis(600));
    }
    let t = Instant::now();
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the idle connection stayed open: {e}"),
    }
    assert!(rest.is_empty());
    assert!(t.elapsed() < 3 * SEC, "closed after {:?} more", t.elapsed());
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_dripping_body_is_cut() {
    let dir = temp("body");
    let v = Vault::open(&dir).expect("vault");
    let token = v.add_pc(&PcRow::new("pc-one", "52:54:00:00:02:01")).expect("add").token;
    let port = start(&dir, small());
    let mut s = connect(port);
    let head = format!(
        "POST /api/v1/results HTTP/1.1\r\nhost: x\r\nx-bootvault-pc: pc-one\r\nauthorization: Bearer {token}\r\n\
         content-length: 100\r\n\r\nok=yes\n"
    );
    s.write_all(head.as_bytes()).expect("head");
    // One byte every 1.5 s: slower than the one-second idle limit.
    let mut drip = s.try_clone().expect("clone");
    std::thread::spawn(move || {
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(1500));
            if drip.write_all(b"x").is_err() {
                break;
            }
        }
    });
    let t = Instant::now();
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let (status, body) = answer(&mut r).expect("an answer before the body is complete");
    // 408 from read_body; 400 from a handler that reads with axum's Bytes.
    assert!(status == 408 || status == 400, "{status} {body}");
    assert!(body.contains("no request data for 1 s"), "{body}");
    assert!(t.elapsed() < 3 * SEC, "answered after {:?}", t.elapsed());
    let (_, took) = until_closed(&mut s);
    assert!(took < 3 * SEC, "closed {took:?} after the answer");
    // Nothing was recorded from the broken request; the PC may try again.
    assert!(v.list_results(Some("pc-one")).expect("results").is_empty());
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_peer_that_stops_reading_is_cut_off() {
    let dir = temp("stall");
    let v = Vault::open(&dir).expect("vault");
    v.add_pc(&PcRow::new("pc-one", "52:54:00:00:02:02")).expect("add");
    let size = 64 << 20;
    v.publish_boot_files("pc-one", &[("vmlinuz", vec![7; size]), ("initrd.img", vec![1]), ("cmdline", b"x".to_vec())])
        .expect("publish");
    let port = start(&dir, small());
    let mut s = connect(port);
    s.write_all(b"GET /boot/pc/pc-one/vmlinuz HTTP/1.1\r\nhost: x\r\n\r\n").expect("request");
    // Read nothing for a while: the socket buffers fill, the server's
    // writes stall, and after a second it gives up.
    std::thread::sleep(4 * SEC);
    let (bytes, _) = until_closed(&mut s);
    assert!(bytes > 0, "the answer started");
    assert!(bytes < size, "all {bytes} bytes arrived: the server waited for the reader");
    fs::remove_dir_all(&dir).ok();
}

/// A keep-alive connection the server has taken: it answered a request
/// on it (a connection still waiting in the accept queue, or refused
/// because an earlier one had not yet given its place back, is retried).
fn hold(port: u16) -> TcpStream {
    let t = Instant::now();
    loop {
        let mut s = connect(port);
        s.write_all(b"GET /boot/ipxe HTTP/1.1\r\nhost: x\r\n\r\n").expect("request");
        match answer(&mut BufReader::new(s.try_clone().expect("clone"))) {
            Ok((200, _)) => return s,
            other => assert!(t.elapsed() < 5 * SEC, "not served: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a refused connection's whole answer.
fn refused(port: u16) -> String {
    let mut s = connect(port);
    let mut text = String::new();
    s.read_to_string(&mut text).expect("an answer and a close");
    text
}

#[test]
fn connections_over_the_per_address_cap_get_503_and_the_address_recovers() {
    let dir = temp("per-address");
    let port = start(&dir, Limits { header_timeout: 10 * SEC, ..small() });
    let held: Vec<TcpStream> = (0..4).map(|_| hold(port)).collect();
    let t = Instant::now();
    let text = refused(port);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("this address has 4 connections open"), "{text}");
    assert!(t.elapsed() < 2 * SEC, "answered at once, not after {:?}", t.elapsed());
    // The held connections still work.
    let mut first = held.into_iter();
    let mut one = first.next().expect("one");
    one.write_all(b"GET /boot/ipxe HTTP/1.1\r\nhost: x\r\n\r\n").expect("request");
    assert_eq!(answer(&mut BufReader::new(one.try_clone().expect("clone"))).expect("answer").0, 200);
    // Once they close, the address is served again.
    drop(one);
    drop(first);
    let t = Instant::now();
    loop {
        match get(port, "/boot/ipxe") {
            Ok((200, _)) => break,
            other => assert!(t.elapsed() < 2 * SEC, "still refused: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn connections_over_the_global_cap_get_503() {
    let dir = temp("global");
    let port = start(&dir, Limits { header_timeout: 10 * SEC, max_connections: 3, ..small() });
    let held: Vec<TcpStream> = (0..3).map(|_| hold(port)).collect();
    let text = refused(port);
    assert!(text.starts_with("HTTP/1.1 503 ") && text.contains("the server has 3 connections open"), "{text}");
    drop(held);
    let t = Instant::now();
    while !matches!(get(port, "/boot/ipxe"), Ok((200, _))) {
        assert!(t.elapsed() < 2 * SEC, "still refused");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The refusals went to events.log, aggregated.
    let log = fs::read_to_string(dir.join("events.log")).expect("events.log");
    assert!(log.contains("conn-refused peer=127.0.0.1 reason="), "{log}");
    fs::remove_dir_all(&dir).ok();
}
