//! The engine against the real server, on the host: the same pipelines the
//! PID 1 runs, on image files, with a server started in this process on
//! 127.0.0.1.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootvault_common::testdata::noise;
use bootvault_engine::backup::{backup, BackupOptions};
use bootvault_engine::client::Client;
use bootvault_engine::device::Device;
use bootvault_engine::restore::{restore, RestoreOptions};
use bootvault_server::vault::{PcRow, Vault};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-engine-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Registers PCs in a data directory; returns their tokens and the admin
/// token.
fn register(data: &Path, pcs: &[&str]) -> (Vec<String>, String) {
    let v = Vault::open(data).expect("vault");
    let tokens = pcs
        .iter()
        .enumerate()
        .map(|(i, name)| v.add_pc(&PcRow::new(name, &format!("52:54:00:00:00:{i:02x}"))).expect("add pc").token)
        .collect();
    (tokens, v.admin_token().expect("admin token"))
}

/// Starts the real server on a free loopback port; returns its URL.
fn server(data: &Path) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let opts =
        bootvault_server::Options { listen: format!("127.0.0.1:{port}").parse().expect("addr"), data: data.to_owned() };
    std::thread::spawn(move || bootvault_server::serve(opts));
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    url
}

/// 10 MiB + 12 KiB (a short last chunk): text, noise, zeros, a repeat.
fn source_image(path: &Path) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend((0..).map(|i| format!("row {i}\n")).flat_map(String::into_bytes).take(3 << 20));
    d.extend(noise(1, 2 << 20));
    d.extend(vec![0u8; 3 << 20]);
    d.extend(noise(1, 2 << 20)); // the same chunks again: deduplicated
    d.extend(noise(2, 12 * 1024));
    fs::write(path, &d).expect("source");
    d
}

#[test]
fn backup_restore_dedup_and_refusals() {
    let dir = temp_dir("round-trip");
    let (tokens, admin) = register(&dir.join("data"), &["host-test", "other-pc"]);
    let url = server(&dir.join("data"));
    let src = dir.join("src.img");
    let data = source_image(&src);
    let client = Client::new(&url, "host-test", &tokens[0]);
    let bearer = format!("Bearer {admin}");
    let dev = Device::open(&src, false).expect("open source");
    let opts = BackupOptions::new("host-test", "full");
    let mut lines = Vec::new();
    let r = backup(&dev, &client, &opts, &mut |p| lines.push(p.line())).expect("backup");
    assert_eq!(r.chunks, 11);
    assert_eq!(r.zero_chunks, 3);
    assert_eq!(r.new_chunks, 6, "2 repeated noise chunks are sent once");
    assert!(r.sent_bytes > 2 << 20 && r.sent_bytes < 5 << 20, "{}", r.sent_bytes);
    assert!(lines.last().is_some_and(|l| l.contains("100.0%")), "{lines:?}");

    // Unchanged: nothing new crosses the network.
    let again = backup(&dev, &client, &opts, &mut |_| {}).expect("second backup");
    assert_eq!((again.new_chunks, again.sent_bytes), (0, 0));
    assert_eq!(client.latest("host-test", None).expect("latest"), again.id);

    // Export over HTTP, import it over HTTP as another PC's backup.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent
        .get(format!("{url}/api/v1/backups/{}/export", r.id))
        .header("authorization", &bearer)
        .call()
        .expect("export");
    assert_eq!(resp.status().as_u16(), 200);
    let file = resp.body_mut().with_config().limit(64 << 20).read_to_vec().expect("export body");
    // (A short body: the server refuses before reading, which can break a long upload's pipe.)
    let resp = agent.post(format!("{url}/api/v1/import?pc=other-pc")).send(&file[..64]).expect("import");
    assert_eq!(resp.status().as_u16(), 401, "import needs the admin token");
    let mut resp = agent
        .post(format!("{url}/api/v1/import?pc=other-pc"))
        .header("authorization", &bearer)
        .send(&file[..])
        .expect("import");
    assert_eq!(resp.status().as_u16(), 201);
    let answer = resp.body_mut().read_to_string().expect("import answer");
    let imported: i64 = answer.trim().trim_start_matches("id=").parse().expect("an id");
    let other = Client::new(&url, "other-pc", &tokens[1]);
    assert_eq!(other.latest("other-pc", None).expect("latest of other-pc"), imported);
    let mut damaged = file.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x01;
    let resp = agent
        .post(format!("{url}/api/v1/import?pc=other-pc"))
        .header("authorization", &bearer)
        .send(&damaged[..])
        .expect("import");
    assert_eq!(resp.status().as_u16(), 422, "a damaged image file is refused");

    // Restore onto the same size and a larger file: identical bytes.
    for extra in [0u64, 5 << 20] {
        let dst = dir.join(format!("dst-{extra}.img"));
        fs::File::create(&dst).and_then(|f| f.set_len(data.len() as u64 + extra)).expect("target");
        fs::write(&dst, noise(9, data.len() + extra as usize)).expect("dirty target");
        let t = Device::open(&dst, true).expect("open target");
        let opts = RestoreOptions { verify: true, ..Default::default() };
        let rr = restore(&t, &client, r.id, &opts, &mut |_| {}).expect("restore");
        assert!(rr.verified);
        let back = fs::read(&dst).expect("read back");
        assert!(back[..data.len()] == data[..], "restored bytes differ");
    }

    // Smaller target: refused, untouched.
    let small = dir.join("small.img");
    fs::write(&small, noise(4, 4 << 20)).expect("small");
    let before = fs::read(&small).expect("read");
    let t = Device::open(&small, true).expect("open");
    let e = restore(&t, &client, r.id, &RestoreOptions::default(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("smaller than the backed-up disk"), "{e}");
    assert!(fs::read(&small).expect("read") == before);

    // A damaged stored chunk stops the restore at that chunk.
    let blob_dir = dir.join("data/chunks");
    let victim =
        walk(&blob_dir).into_iter().max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0)).expect("a blob");
    let mut b = fs::read(&victim).expect("blob");
    let mid = b.len() / 2;
    b[mid] ^= 0xFF;
    fs::write(&victim, b).expect("corrupt");
    let dst = dir.join("dst-corrupt.img");
    fs::File::create(&dst).and_then(|f| f.set_len(data.len() as u64)).expect("target");
    let t = Device::open(&dst, true).expect("open");
    let e = restore(&t, &client, r.id, &RestoreOptions::default(), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("at offset") && e.contains("restore stopped there"), "{e}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let dir = temp_dir("unreachable");
    let src = dir.join("src.img");
    fs::write(&src, vec![1u8; 1 << 20]).expect("source");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let client = Client::new(&format!("http://127.0.0.1:{port}"), "pc", "token");
    let dev = Device::open(&src, false).expect("open");
    let e = backup(&dev, &client, &BackupOptions::new("pc", "full"), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains(&format!("POST http://127.0.0.1:{port}/api/v1/backups")), "{e}");
    let _ = fs::remove_dir_all(&dir);
}

/// Tokens and per-PC authorization over the real HTTP API: no token, a
/// wrong one and an unregistered PC are refused with a reason; a PC sees
/// and restores only its own backups until the admin grants it another's.
#[test]
fn tokens_and_grants() {
    let dir = temp_dir("auth");
    let data_dir = dir.join("data");
    let (tokens, admin) = register(&data_dir, &["pc-a", "pc-b"]);
    let url = server(&data_dir);
    let src = dir.join("src.img");
    let data = source_image(&src);
    let dev = Device::open(&src, false).expect("open source");
    let opts = BackupOptions::new("pc-a", "full");
    let patience = Duration::from_secs(1);

    for (pc, token, why) in [
        ("pc-a", "", "no token"),
        ("pc-a", tokens[1].as_str(), "wrong token for PC pc-a"),
        ("pc-x", tokens[0].as_str(), "PC pc-x is not registered"),
    ] {
        let c = Client::new(&url, pc, token);
        let e = c.hello("-", "-", patience, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("refused PC") && e.contains("(401)") && e.contains(why), "{e}");
        let e = backup(&dev, &c, &opts, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("401") && e.contains(why), "{e}");
    }

    let a = Client::new(&url, "pc-a", &tokens[0]);
    let b = Client::new(&url, "pc-b", &tokens[1]);
    assert!(a.hello("-", "-", patience, &mut |_| {}).expect("hello").contains("hello pc-a"));
    let r = backup(&dev, &a, &opts, &mut |_| {}).expect("backup of pc-a");

    // pc-b sees nothing of pc-a's: not the latest, not the manifest, not a chunk.
    let e = b.latest("pc-a", None).unwrap_err().to_string();
    assert!(e.contains("404") && e.contains("that pc-b may restore"), "{e}");
    let e = b.manifest(r.id).unwrap_err().to_string();
    assert!(e.contains("403") && e.contains("belongs to PC pc-a"), "{e}");
    let m = bootvault_common::image::Manifest::decode(&a.manifest(r.id).expect("own manifest")).expect("manifest");
    let some_id = m.data_ids()[0];
    let e = b.chunk(r.id, &some_id, 32 << 20).unwrap_err().to_string();
    assert!(e.contains("403"), "{e}");
    let dst = dir.join("dst.img");
    fs::File::create(&dst).and_then(|f| f.set_len(data.len() as u64)).expect("target");
    let t = Device::open(&dst, true).expect("open target");
    let e = restore(&t, &b, r.id, &RestoreOptions::default(), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("403"), "{e}");
    // ...nor write into pc-a's backups, nor use admin endpoints.
    let e = b.fail(r.id, "sabotage").unwrap_err().to_string();
    assert!(e.contains("403"), "{e}");
    let e = b.missing(r.id, &[some_id]).unwrap_err().to_string();
    assert!(e.contains("403"), "{e}");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let status = |path: &str, token: &str, pc: &str| {
        agent
            .get(format!("{url}/api/v1{path}"))
            .header("authorization", &format!("Bearer {token}"))
            .header("x-bootvault-pc", pc)
            .call()
            .expect("request")
            .status()
            .as_u16()
    };
    assert_eq!(status(&format!("/backups/{}/export", r.id), &tokens[1], "pc-b"), 403);
    assert_eq!(status("/jobs", &tokens[0], "pc-a"), 403);
    assert_eq!(status("/jobs", &admin, "-"), 200);
    let listed = |token: &str, pc: &str| {
        let mut resp = agent
            .get(format!("{url}/api/v1/backups"))
            .header("authorization", &format!("Bearer {token}"))
            .header("x-bootvault-pc", pc)
            .call()
            .expect("list");
        resp.body_mut().read_to_string().expect("list body")
    };
    assert!(listed(&tokens[0], "pc-a").contains("\"pc\":\"pc-a\""));
    assert_eq!(listed(&tokens[1], "pc-b").trim(), "[]");

    // The admin grants pc-b the master image: it may now find and restore it.
    Vault::open(&data_dir).expect("vault").grant(r.id, "pc-b").expect("grant");
    assert_eq!(b.latest("pc-a", None).expect("granted latest"), r.id);
    assert!(listed(&tokens[1], "pc-b").contains(&format!("\"id\":{}", r.id)));
    restore(&t, &b, r.id, &RestoreOptions { verify: true, ..Default::default() }, &mut |_| {})
        .expect("granted restore");
    assert!(fs::read(&dst).expect("read back") == data);
    // Still no writing into pc-a's backups.
    let e = b.fail(r.id, "sabotage").unwrap_err().to_string();
    assert!(e.contains("403"), "{e}");
    let _ = fs::remove_dir_all(&dir);
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(d).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
