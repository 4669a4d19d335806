//! The client against servers that misbehave, on 127.0.0.1: one that
//! accepts and never answers, one that sends headers and then drips a
//! byte a second, one that stops reading an upload, one that reads it
//! below the least rate, one that drops every
//! connection, and definite refusals (507, 404). Each request must end
//! within a minute (here, with short timeouts, within seconds) with a line
//! that says what the server stopped doing; a definite answer is never
//! tried again.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bootvault_engine::client::{Client, Timeouts};

/// Short timeouts, so each test takes seconds; the production values are
/// unit-tested in client.rs.
const SHORT: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    answer: Duration::from_secs(2),
    stall: Duration::from_secs(2),
    min_rate: 256 << 10,
    total: Duration::from_secs(8),
};

/// A server on a free loopback port that runs `serve` on each connection;
/// returns its URL and how many connections it took.
fn fake(serve: fn(TcpStream)) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("port");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || serve(conn));
        }
    });
    (url, count)
}

/// Reads one request's headers; returns them and the declared body length.
fn read_head(conn: &mut TcpStream) -> (String, usize) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    (head, len)
}

/// Reads a whole request (headers and body).
fn read_request(conn: &mut TcpStream) {
    let (_, len) = read_head(conn);
    let mut body = vec![0u8; len];
    let _ = conn.read_exact(&mut body);
}

fn client(url: &str) -> Client {
    Client::new(url, "pc-one", "token").with_timeouts(SHORT)
}

const ID: [u8; 32] = [0xab; 32];

/// Runs `f`, returns its error and how long it took; the error must come
/// well within a minute.
fn timed<T: std::fmt::Debug>(f: impl FnOnce() -> Result<T, bootvault_engine::EngineError>) -> (String, Duration) {
    let start = Instant::now();
    let e = f().expect_err("the request must fail").to_string();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(60), "{took:?}: {e}");
    (e, took)
}

#[test]
fn server_that_accepts_and_never_answers() {
    let (url, conns) = fake(|mut conn| {
        read_request(&mut conn);
        std::thread::sleep(Duration::from_secs(120));
        drop(conn);
    });
    // An idempotent GET: tried again while its budget allows another stuck try.
    let (e, took) = timed(|| client(&url).chunk(7, &ID, (1 << 20) + 4096));
    assert!(
        e.starts_with(&format!(
            "the server at {url} accepted the connection but sent no answer to the request for chunk abababababab \
             of backup 7 within 2 s (3 tries in "
        )),
        "{e}"
    );
    assert!(took <= SHORT.total + Duration::from_secs(1), "{took:?}");
    assert_eq!(conns.load(Ordering::SeqCst), 3);

    // Not idempotent: one try.
    let before = conns.load(Ordering::SeqCst);
    let (e, took) = timed(|| client(&url).open_backup("full", 1 << 20, 1 << 20, None));
    assert!(e.contains("accepted the connection but sent no answer to POST /api/v1/backups?name=full"), "{e}");
    assert!(!e.contains("tries"), "{e}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(conns.load(Ordering::SeqCst), before + 1);
}

#[test]
fn server_that_drips_the_body() {
    let (url, conns) = fake(|mut conn| {
        read_request(&mut conn);
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1048576\r\n\r\n";
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        for _ in 0..120 {
            if conn.write_all(b"x").and_then(|_| conn.flush()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let (e, took) = timed(|| client(&url).chunk(7, &ID, (1 << 20) + 4096));
    assert!(
        e.starts_with(&format!("the server at {url} stopped sending chunk abababababab of backup 7 after ")),
        "{e}"
    );
    assert!(e.contains(" B of 1.0 MiB received) ("), "{e}");
    assert!(took <= SHORT.total + Duration::from_secs(1), "{took:?}");
    // Each try gives up soon after `stall` (the rate is far below min_rate): 2 or 3 fit the budget.
    assert!((2..=3).contains(&conns.load(Ordering::SeqCst)), "{e}");

    // The manifest, and an answer with no name: the same, in its own words.
    let (e, _) = timed(|| client(&url).manifest(7));
    assert!(e.contains("stopped sending the manifest of backup 7 after "), "{e}");
    let (e, _) = timed(|| client(&url).next_job());
    assert!(e.contains("stopped sending its answer to GET /api/v1/jobs/next after "), "{e}");
}

#[test]
fn server_that_stops_reading_an_upload() {
    let (url, conns) = fake(|mut conn| {
        let _ = read_head(&mut conn);
        std::thread::sleep(Duration::from_secs(120));
        drop(conn);
    });
    // The largest chunk: more than the loopback socket buffers hold. Its
    // size earns a try more time, not more tries once `total` is gone.
    let blob = vec![7u8; 16 << 20];
    let (e, took) = timed(|| client(&url).put_chunk(7, &ID, &blob));
    assert!(
        e.starts_with(&format!("the server at {url} stopped receiving chunk abababababab of backup 7 after ")),
        "{e}"
    );
    assert!(took <= SHORT.total + SHORT.stall, "{took:?}: {e}");
    assert!(conns.load(Ordering::SeqCst) >= 1);
}

#[test]
fn server_that_reads_an_upload_slowly() {
    // About 1.3 MB/s against a least rate of 4 MiB/s: each write moves
    // something within `stall`, and the socket buffers take megabytes at
    // once, so only the rate over the last `stall` tells it is too slow.
    let fast = Timeouts { min_rate: 4 << 20, ..SHORT };
    let (url, conns) = fake(|mut conn| {
        let _ = read_head(&mut conn);
        let mut buf = vec![0u8; 64 << 10];
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let blob = vec![7u8; 64 << 20];
    let (e, took) = timed(|| Client::new(&url, "pc-one", "token").with_timeouts(fast).put_chunk(7, &ID, &blob));
    assert!(
        e.starts_with(&format!("the server at {url} stopped receiving chunk abababababab of backup 7 after ")),
        "{e}"
    );
    assert!(took <= fast.total + fast.stall, "{took:?}: {e}");
    assert!(conns.load(Ordering::SeqCst) >= 2, "{e}");
}

#[test]
fn dropped_connections_are_tried_again() {
    let (url, conns) = fake(|mut conn| {
        read_request(&mut conn);
        drop(conn);
    });
    let (e, took) = timed(|| client(&url).latest("pc-one", None));
    assert!(e.starts_with(&format!("GET {url}/api/v1/backups/latest?pc=pc-one: ")), "{e}");
    assert!(e.ends_with(" s)") && e.contains("(3 tries in "), "{e}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(conns.load(Ordering::SeqCst), 3);
}

#[test]
fn definite_answers_are_not_tried_again() {
    let (url, conns) = fake(|mut conn| {
        let (head, len) = read_head(&mut conn);
        let mut body = vec![0u8; len];
        let _ = conn.read_exact(&mut body);
        let (status, reason) = if head.starts_with("PUT") {
            ("507 Insufficient Storage", "the server's storage is full\n")
        } else {
            ("404 Not Found", "chunk abab is not in the store\nsecond line\n")
        };
        let answer =
            format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reason}", reason.len());
        let _ = conn.write_all(answer.as_bytes());
        std::thread::sleep(Duration::from_secs(1));
    });
    let c = client(&url);
    let (e, took) = timed(|| c.put_chunk(7, &ID, &[1, 2, 3]));
    assert!(e.ends_with("server answered 507: the server's storage is full"), "{e}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    let (e, _) = timed(|| c.chunk(7, &ID, 4096));
    assert!(e.ends_with("server answered 404: chunk abab is not in the store"), "{e}");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}
