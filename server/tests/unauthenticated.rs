//! What unauthenticated clients can make the server keep: a flood of
//! refused requests writes a bounded number of events.log lines and locks
//! no PC out; invented MACs fill `pending` only up to its per-peer rate and
//! its cap; listed MACs expire.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootvault_server::vault::{PcRow, Pending, Vault, REGISTER_UNKNOWN};

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-unauth-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn start(data: &Path) -> u16 {
    bootvault_server::spawn_on_loopback(data, Default::default()).expect("the server starts")
}

/// A keep-alive connection sending GETs one after another.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn new(port: u16) -> Conn {
        let w = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        w.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        Conn { r: BufReader::new(w.try_clone().expect("clone")), w }
    }

    /// (status, body)
    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.w.write_all(req.as_bytes()).expect("send");
        let mut status = 0;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            assert!(self.r.read_line(&mut line).expect("answer") > 0, "closed");
            if status == 0 {
                status = line.get(9..12).and_then(|c| c.parse().ok()).expect("status line");
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; length];
        self.r.read_exact(&mut body).expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn log_lines(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("events.log")).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn a_flood_of_refused_requests_logs_a_bounded_number_of_lines() {
    let dir = temp("flood");
    let v = Vault::open(&dir).expect("vault");
    let token = v.add_pc(&PcRow::new("pc-one", "52:54:00:00:03:01")).expect("add").token;
    let port = start(&dir);
    let before = log_lines(&dir).len();
    // 5000 refused requests on 4 connections: no token, an unknown PC,
    // a wrong token for a real PC.
    let t = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Conn::new(port);
                for n in 0..1250 {
                    let (status, _) = match (i + n) % 3 {
                        0 => c.get("/api/v1/hello", &[("x-bootvault-pc", "pc-one")]),
                        1 => c.get("/api/v1/hello", &[("x-bootvault-pc", "nobody"), ("authorization", "Bearer x")]),
                        _ => c.get("/api/v1/hello", &[("x-bootvault-pc", "pc-one"), ("authorization", "Bearer x")]),
                    };
                    assert_eq!(status, 401);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("flood");
    }
    let flood = t.elapsed();
    // The registered PC is still answered, on a fresh connection.
    let (status, body) = Conn::new(port)
        .get("/api/v1/hello", &[("x-bootvault-pc", "pc-one"), ("authorization", &format!("Bearer {token}"))]);
    assert_eq!(status, 200, "{body}");
    let lines = log_lines(&dir);
    let new = &lines[before..];
    let refused: Vec<_> = new.iter().filter(|l| l.contains("auth-refused")).collect();
    // 3 kinds x 5 lines in full, plus summaries once their minute ends.
    assert!(refused.len() <= 3 * 5 + 3, "{} lines for 5000 refusals in {flood:?}:\n{}", refused.len(), new.join("\n"));
    assert!(refused.iter().any(|l| l.contains("reason=\"no token")), "the first ones in full: {refused:?}");
    assert!(refused.iter().any(|l| l.contains("peer=127.0.0.1")), "{refused:?}");
    assert!(new.iter().any(|l| l.contains("hello pc=pc-one")), "the PC's contact is logged as always");
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn invented_macs_fill_pending_only_up_to_the_peer_rate() {
    let dir = temp("macs");
    let v = Vault::open(&dir).expect("vault");
    v.set_setting(REGISTER_UNKNOWN, Some("yes")).expect("setting");
    v.add_pc(&PcRow::new("pc-one", "52:54:00:00:03:02")).expect("add");
    v.publish_boot_files("pc-one", &[("vmlinuz", vec![1]), ("initrd.img", vec![2]), ("cmdline", b"quiet".to_vec())])
        .expect("publish");
    let port = start(&dir);
    let before = log_lines(&dir).len();
    let mut c = Conn::new(port);
    let mut refused = 0;
    for i in 0..1000u32 {
        let [_, _, a, b] = i.to_be_bytes();
        let (status, body) = c.get(&format!("/boot/mac/02-00-00-00-{a:02x}-{b:02x}"), &[]);
        assert_eq!(status, 200);
        assert!(body.contains("not registered"), "{body}");
        refused += usize::from(body.contains("too many unknown PCs from 127.0.0.1"));
    }
    let pending = v.list_pending(bootvault_server::vault::now()).expect("pending");
    assert_eq!(pending.len(), 8, "one address lists 8 new MACs per 10 minutes");
    assert_eq!(refused, 992);
    // The registered PC still boots.
    let (status, body) = c.get("/boot/mac/52-54-00-00-03-02", &[]);
    assert_eq!(status, 200);
    assert!(body.contains("kernel /boot/pc/pc-one/vmlinuz"), "{body}");
    // And the log stayed small.
    let new = log_lines(&dir).len() - before;
    assert!(new <= 20, "{new} lines for 1000 unknown MACs");
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn pending_is_capped_and_expires() {
    let dir = temp("pending");
    let v = Vault::open(&dir).expect("vault");
    let now = 1_700_000_000;
    let mac = |i: u32| {
        let [_, _, a, b] = i.to_be_bytes();
        format!("02:00:00:00:{a:02x}:{b:02x}")
    };
    let outcomes: Vec<Pending> =
        (0..1000).map(|i| v.note_pending(&mac(i), "10.0.0.9", now, true).expect("note")).collect();
    assert!(outcomes[..Vault::PENDING_MAX].iter().all(|o| *o == Pending::Added));
    assert!(outcomes[Vault::PENDING_MAX..].iter().all(|o| *o == Pending::Full));
    assert_eq!(v.list_pending(now).expect("list").len(), Vault::PENDING_MAX);
    // A listed MAC is still seen when the list is full; a new one is not
    // admitted when the caller says so.
    assert_eq!(v.note_pending(&mac(0), "10.0.0.9", now + 10, true).expect("note"), Pending::Seen);
    assert!(v.forget_pending(&mac(1)).expect("forget"));
    assert_eq!(v.note_pending(&mac(5000), "10.0.0.9", now, false).expect("note"), Pending::NotAdmitted);
    // Not seen for longer than PENDING_EXPIRE: gone from the list, and
    // from the table at the next note.
    let later = now + Vault::PENDING_EXPIRE + 5;
    let left = v.list_pending(later).expect("list");
    assert_eq!(left.iter().map(|p| p.mac.as_str()).collect::<Vec<_>>(), [mac(0)]);
    assert_eq!(v.note_pending(&mac(6000), "10.0.0.9", later, true).expect("note"), Pending::Added);
    assert_eq!(v.list_pending(later).expect("list").len(), 2);
    assert_eq!(v.note_pending(&mac(2), "10.0.0.9", later, true).expect("note"), Pending::Added, "expired: new again");
    fs::remove_dir_all(&dir).ok();
}
