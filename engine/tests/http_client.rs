//! The client's own HTTP/1.1 (engine/src/http.rs) against answers that
//! real servers and proxies give and the project's server does not:
//! chunked bodies, HTTP/1.0 bodies that end at the close, a kept-alive
//! connection the server has closed meanwhile, an answer larger than
//! asked for; and that keep-alive does keep connections.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bootvault_engine::client::Client;

/// Reads one request's head and body; false at the end of the stream.
fn read_request(conn: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).is_ok()
}

/// A server answering every request on a connection with `answer`, up to
/// `per_conn` requests, then closing; its URL and connection count.
fn server(answer: &'static str, per_conn: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("port");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                for _ in 0..per_conn {
                    if !read_request(&mut conn) || conn.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, count)
}

fn client(url: &str) -> Client {
    Client::new(url, "pc-one", "token")
}

#[test]
fn chunked_and_close_delimited_bodies() {
    let (url, _) = server(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n",
        10,
    );
    assert_eq!(client(&url).manifest(7).expect("chunked"), b"hello, world");
    let (url, _) = server("HTTP/1.0 200 OK\r\n\r\nuntil the end", 1);
    assert_eq!(client(&url).manifest(7).expect("to the close"), b"until the end");
}

#[test]
fn keep_alive_reuses_and_replaces_closed_connections() {
    // Three answers per connection, then the server closes it: the
    // client's fourth request finds its kept connection closed and takes
    // a new one, without an error.
    let (url, conns) = server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 3);
    let c = client(&url);
    for i in 0..7 {
        assert_eq!(c.manifest(7).unwrap_or_else(|e| panic!("request {i}: {e}")), b"ok");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3, "seven requests on three connections");
}

#[test]
fn answers_past_the_limit_and_broken_heads_are_refused() {
    let big: &'static str =
        Box::leak(format!("HTTP/1.1 200 OK\r\ncontent-length: 9000\r\n\r\n{}", "x".repeat(9000)).into());
    let (url, _) = server(big, 1);
    let e = client(&url).next_job().expect_err("over the limit").to_string();
    assert!(e.contains("the answer is larger than the 4.0 KiB expected"), "{e}");
    let (url, _) = server("HTTP/1.1 200 OK\r\ncontent-length: 9000\r\n\r\nxx", 1);
    let e = client(&url).manifest(7).expect_err("cut short").to_string();
    assert!(e.contains("the server closed the connection after 2 B of 8.8 KiB"), "{e}");
    let (url, _) = server("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 1);
    let e = client(&url).manifest(7).expect_err("bad chunk").to_string();
    assert!(e.contains("chunk size of \"zz\""), "{e}");
    // A chunk size at u64's end: refused as too large, never wrapped
    // around into a small one.
    let (url, _) = server(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nffffffffffffffff\r\nxx\r\n0\r\n\r\n",
        1,
    );
    let e = client(&url).manifest(7).expect_err("huge chunk").to_string();
    assert!(e.contains("the answer is larger than"), "{e}");
    let (url, _) = server("SSH-2.0-OpenSSH_9.2\r\n\r\n", 1);
    let e = client(&url).manifest(7).expect_err("not HTTP").to_string();
    assert!(e.contains("not an HTTP answer"), "{e}");
}
