//! A PC given several servers (sharing one database and chunk store)
//! goes on through the next when one stops answering: before a backup
//! (a dead first server), and in the middle of one (every connection to
//! the first cut after its third chunk, and no new ones taken). The
//! backup completes and restores byte for byte through the other server.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bootvault_common::testdata::noise;
use bootvault_engine::backup::{backup, BackupOptions};
use bootvault_engine::client::Client;
use bootvault_engine::device::Device;
use bootvault_engine::restore::{restore, RestoreOptions};
use bootvault_server::vault::{PcRow, Vault};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-failover-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("temp dir");
    d
}

fn register(data: &Path, pc: &str) -> String {
    Vault::open(data).expect("vault").add_pc(&PcRow::new(pc, "52:54:00:00:00:01")).expect("add pc").token
}

fn server(data: &Path) -> String {
    let port = bootvault_server::spawn_on_loopback(data, Default::default()).expect("the server starts");
    format!("http://127.0.0.1:{port}")
}

/// A free port nothing listens on.
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port()
}

/// A proxy in front of `upstream` that dies once the client has sent
/// `pattern` `nth` times: it cuts every connection and stops listening
/// (new connections are refused). Returns its URL and the count.
fn dies_after(upstream: &str, pattern: &'static [u8], nth: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let seen = Arc::new(AtomicUsize::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let count = seen.clone();
    std::thread::spawn(move || {
        while !dead.load(Ordering::SeqCst) {
            let client = match listener.accept() {
                Ok((c, _)) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            let _ = client.set_nonblocking(false);
            let Ok(server) = TcpStream::connect(&upstream) else { continue };
            for s in [&client, &server] {
                if let Ok(c) = s.try_clone() {
                    open.lock().expect("lock").push(c);
                }
            }
            let (mut back_from, mut back_to) = (server.try_clone().expect("clone"), client.try_clone().expect("clone"));
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut back_from, &mut back_to);
                let _ = back_to.shutdown(Shutdown::Both);
            });
            let (seen, dead, open) = (seen.clone(), dead.clone(), open.clone());
            std::thread::spawn(move || {
                let (mut from, mut to) = (client, server);
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || dead.load(Ordering::SeqCst) {
                        break;
                    }
                    let hits = buf[..n].windows(pattern.len()).filter(|w| *w == pattern).count();
                    if hits > 0 && seen.fetch_add(hits, Ordering::SeqCst) + hits >= nth {
                        // Dies: every connection cut, the listener closed below.
                        dead.store(true, Ordering::SeqCst);
                        for s in open.lock().expect("lock").drain(..) {
                            let _ = s.shutdown(Shutdown::Both);
                        }
                        break;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Both);
            });
        }
        // The listener is dropped here: connections are refused from now on.
    });
    (format!("http://127.0.0.1:{port}"), count)
}

#[test]
fn a_backup_goes_on_through_the_next_server() {
    let dir = temp_dir("mid");
    let data = dir.join("data");
    let token = register(&data, "pc-two-servers");
    let (a, b) = (server(&data), server(&data));
    let src = dir.join("src.img");
    let bytes = noise(7, 12 << 20);
    fs::write(&src, &bytes).expect("source");

    // The first server is down from the start: hello and the backup's
    // first request (not idempotent) go to the second.
    let client = Client::new(&format!("http://127.0.0.1:{},{b}", dead_port()), "pc-two-servers", &token);
    client.hello("52:54:00:00:00:01", "127.0.0.1", Duration::from_secs(10), &mut |_| {}).expect("hello");
    assert_eq!(client.base(), b);
    let dev = Device::open(&src, false).expect("source");
    let opts = BackupOptions::new("pc-two-servers", "first-down");
    backup(&dev, &client, &opts, &mut |_| {}).expect("backup through the second server");
    // Without hello first: opening the backup (not idempotent) is the
    // request that meets the dead server, which never saw it.
    let fresh = Client::new(&format!("http://127.0.0.1:{},{b}", dead_port()), "pc-two-servers", &token);
    backup(&dev, &fresh, &opts, &mut |_| {}).expect("opened on the second server");

    // Other data; the first server dies after its third chunk, in the middle.
    let bytes = noise(8, 12 << 20);
    fs::write(&src, &bytes).expect("source");
    let dev = Device::open(&src, false).expect("source");
    let (dying, seen) = dies_after(&a, b"PUT /api/v1/chunks/", 3);
    let moves = Arc::new(Mutex::new(Vec::new()));
    let seen_moves = moves.clone();
    let client = Client::new(&format!("{dying},{b}"), "pc-two-servers", &token)
        .on_fail_over(move |from, to| seen_moves.lock().expect("lock").push(format!("{from} -> {to}")));
    let opts = BackupOptions::new("pc-two-servers", "mid-way");
    let r = backup(&dev, &client, &opts, &mut |_| {}).expect("the backup completes through the second server");
    assert_eq!(client.base(), b);
    assert!(seen.load(Ordering::SeqCst) >= 3, "the first server took chunks before it died");
    assert_eq!(r.chunks, 12);
    assert_eq!(*moves.lock().expect("lock"), vec![format!("{dying} -> {b}")], "told once, by all workers");

    // Restored through whichever answers: byte for byte.
    let target = dir.join("target.img");
    fs::write(&target, vec![0u8; bytes.len()]).expect("target");
    let t = Device::open(&target, true).expect("target");
    let client = Client::new(&format!("{dying},{b}"), "pc-two-servers", &token);
    restore(&t, &client, r.id, &RestoreOptions::default(), &mut |_| {}).expect("restore");
    assert_eq!(client.base(), b, "the dead server is left behind");
    drop(t);
    assert!(fs::read(&target).expect("target") == bytes, "restored byte for byte");

    // Every server down: the error names one and says how often it tried.
    let none = Client::new(&format!("{dying},http://127.0.0.1:{}", dead_port()), "pc-two-servers", &token);
    let e = none.latest("pc-two-servers", None).unwrap_err().to_string();
    assert!(e.contains("/api/v1/backups/latest") && e.contains("tries"), "{e}");
}
