//! The server facing hostile or unlucky clients over real HTTP (issue 10,
//! items 3, 4 and 12): bodies are read only after the token is checked and
//! within each route's limit; imports stream and verify as they arrive; a
//! full disk answers 507 without the server's paths.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootvault_common::image::{self, Chunk};
use bootvault_server::vault::{PcRow, Vault};

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-hostile-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("temp");
    d
}

fn start(data: &Path) -> u16 {
    bootvault_server::spawn_on_loopback(data, Default::default()).expect("the server starts")
}

/// Sends a request's head and the first `send` bytes of a body declared
/// `declared` bytes long; reads the answer (5 s at most): (status, body).
fn partial(port: u16, head: &str, declared: usize, send: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let req = format!("{head} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {declared}\r\n");
    s.write_all(req.as_bytes()).expect("send head");
    s.write_all(b"\r\n").expect("end of head");
    let _ = s.write_all(send);
    answer(&mut s)
}

fn answer(s: &mut TcpStream) -> (u16, String) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if out.is_empty() => panic!("no answer: {e}"),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("status line in {text:?}"));
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).and_then(|()| s.write_all(body)).expect("send");
    answer(&mut s)
}

#[test]
fn bodies_are_read_only_after_the_token_and_within_limits() {
    let dir = temp("auth-first");
    let data = dir.join("data");
    let token =
        Vault::open(&data).expect("vault").add_pc(&PcRow::new("pc-one", "52:54:00:00:03:01")).expect("pc").token;
    let port = start(&data);
    let hex = image::hex(&[7u8; 32]);
    // 16 connections at once, each declaring 60 MiB and sending 1 KiB: each
    // is refused at once, from its headers (the server waits for nothing).
    let t = Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let head = format!("PUT /api/v1/chunks/{hex}?backup=1");
            std::thread::spawn(move || partial(port, &head, 60 << 20, &[0u8; 1024]))
        })
        .collect();
    for h in handles {
        let (status, body) = h.join().expect("thread");
        assert_eq!(status, 401, "{body}");
    }
    assert!(t.elapsed() < Duration::from_secs(5), "refusals waited for the bodies");
    // A known PC still cannot send more than a route takes: refused from
    // the declared length, before the body.
    let auth = format!("Bearer {token}");
    let head = "POST /api/v1/results".to_owned();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let req = format!(
        "{head} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: {auth}\r\nx-bootvault-pc: pc-one\r\ncontent-length: {}\r\n\r\n",
        1u64 << 30
    );
    s.write_all(req.as_bytes()).expect("head");
    let (status, body) = answer(&mut s);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("limit"), "{body}");
    // A boot file not published: a hint, not the server's path.
    let (status, body) = request(port, "GET", "/boot/pc/pc-one/vmlinuz", &[], b"");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("bootvault build pc-one") && !body.contains(&*data.to_string_lossy()), "{body}");
    let _ = fs::remove_dir_all(&dir);
}

/// A small valid image file (the single-file form) of PC `pc`.
fn image_file(dir: &Path, pc: &str) -> Vec<u8> {
    let v = Vault::open(&dir.join("source")).expect("vault");
    let plain = bootvault_common::testdata::noise(3, 4096);
    let (cid, blob) = (image::chunk_id(&plain), image::encode_blob(&plain, 1));
    let m = bootvault_common::testdata::manifest_of(pc, vec![Chunk::Data { id: cid, blob_len: blob.len() as u32 }]);
    let id = v.create_backup(pc, "full", m.disk_bytes, 4096).expect("backup");
    v.put_chunk(&cid, &blob, Some(id)).expect("chunk");
    v.finish_backup(id, pc, &m.encode()).expect("finish");
    let mut out = Vec::new();
    v.export(id, &mut out).expect("export");
    out
}

#[test]
fn imports_stream_verify_and_never_fail_at_random() {
    let dir = temp("import");
    let data = dir.join("data");
    let file = image_file(&dir, "pc-one");
    let admin = Vault::open(&data).expect("vault").admin_token().expect("admin token");
    let port = start(&data);
    let auth = format!("Bearer {admin}");
    let headers = [("authorization", auth.as_str())];
    for i in 0..200 {
        let (status, body) = request(port, "POST", "/api/v1/import?pc=pc-one", &headers, &file);
        assert_eq!(status, 201, "import {i} of a valid file: {body}");
    }
    // Garbage is refused from its first bytes; the rest is not read, and
    // nothing is spooled to disk.
    let t = Instant::now();
    let (status, body) = partial(port, "POST /api/v1/import?pc=pc-one", 512 << 20, &vec![0x5a; 1 << 20]);
    // (the header auth is missing here on purpose: refused first)
    assert_eq!(status, 401, "{body}");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let req = format!(
        "POST /api/v1/import?pc=pc-one HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n",
        512u64 << 20
    );
    s.write_all(req.as_bytes()).expect("head");
    let _ = s.write_all(&vec![0x5a; 1 << 20]);
    let (status, body) = answer(&mut s);
    assert_eq!(status, 422, "{body}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let spooled: u64 = fs::read_dir(data.join("tmp"))
        .expect("tmp")
        .flatten()
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert_eq!(spooled, 0, "nothing spooled");
    // A file cut short is refused and never listed complete.
    let (status, _) = request(port, "POST", "/api/v1/import?pc=pc-one", &headers, &file[..file.len() - 10]);
    assert_eq!(status, 422);
    let v = Vault::open(&data).expect("vault");
    assert_eq!(v.list_backups(None, false).expect("list").len(), 200);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_full_disk_answers_507_without_paths() {
    let dir = temp("full");
    let data = dir.join("data");
    fs::create_dir_all(&data).expect("data");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&data)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED a_full_disk_answers_507_without_paths: mounting a tmpfs needs root");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(data.clone());
    let token =
        Vault::open(&data).expect("vault").add_pc(&PcRow::new("pc-one", "52:54:00:00:03:02")).expect("pc").token;
    let port = start(&data);
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("x-bootvault-pc", "pc-one")];
    let (status, body) =
        request(port, "POST", "/api/v1/backups?name=full&disk_bytes=67108864&chunk_size=262144", &headers, b"");
    assert_eq!(status, 201, "{body}");
    let id = body.trim().trim_start_matches("id=").to_owned();
    let mut full = None;
    for seed in 0..20 {
        let plain = bootvault_common::testdata::noise(100 + seed, 256 << 10);
        let (cid, blob) = (image::chunk_id(&plain), image::encode_blob(&plain, 1));
        let (status, body) =
            request(port, "PUT", &format!("/api/v1/chunks/{}?backup={id}", image::hex(&cid)), &headers, &blob);
        if status != 201 {
            full = Some((status, body));
            break;
        }
    }
    let (status, body) = full.expect("a 3 MiB disk fills up");
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("the server's storage is full"), "{body}");
    assert!(!body.contains('/') && !body.contains(".tmp"), "no server paths: {body}");
    let leftovers: Vec<_> = fs::read_dir(data.join("tmp")).expect("tmp").flatten().map(|f| f.path()).collect();
    assert!(leftovers.is_empty(), "half-written files left: {leftovers:?}");
}
