//! The engine against the real server, on the host: the same pipelines the
//! PID 1 runs, on image files, with a server started in this process on
//! 127.0.0.1: round trips, refusals, password-protected restores and
//! cancelling.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bootvault_common::testdata::noise;
use bootvault_engine::backup::{backup, BackupOptions};
use bootvault_engine::client::Client;
use bootvault_engine::device::Device;
use bootvault_engine::lock::{derive, unlock, Lock, Params};
use bootvault_engine::restore::{cancelled_message, restore, RestoreOptions, PARTLY_OVERWRITTEN};
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
    let port = bootvault_server::spawn_on_loopback(data, Default::default()).expect("the server starts");
    format!("http://127.0.0.1:{port}")
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
    assert!(e.contains(PARTLY_OVERWRITTEN) || e.ends_with("the target disk is unchanged"), "{e}");
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
    assert!(e.contains("403") && e.contains("is not PC pc-b's") && !e.contains("pc-a"), "{e}");
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

/// A lock with tiny Argon2id costs, so the test is fast in debug builds
/// (the costs travel with the challenge; the defaults are unit-tested).
/// Of the older kind (the key is Argon2id's output itself, no wrap key),
/// so locks made before restore passwords became keys keep working.
fn cheap_lock(password: &[u8]) -> Lock {
    let params = Params { m_kib: 64, t_cost: 1, p: 1 };
    let salt = [7u8; 16];
    let key = derive(password, &salt, &params).expect("derive");
    Lock { kdf: bootvault_common::wire::Kdf::Argon2id, params, salt, key, wrap: None }
}

/// A locked backup: listed as locked, refused without a ticket before
/// anything is written, a wrong password refused with the server's own
/// line and then rate-limited, the right one restores (through clones of
/// the client, as the restore workers use it).
#[test]
fn password_protected_restore() {
    let dir = temp_dir("locked");
    let data_dir = dir.join("data");
    let (tokens, admin) = register(&data_dir, &["pc-one", "pc-two"]);
    let url = server(&data_dir);
    let src = dir.join("src.img");
    let data = source_image(&src);
    let dev = Device::open(&src, false).expect("open source");
    let one = Client::new(&url, "pc-one", &tokens[0]);
    let mut opts = BackupOptions::new("pc-one", "locked");
    opts.lock = Some(cheap_lock(b"open sesame"));
    opts.model = "QEMU HARDDISK".into();
    let id = backup(&dev, &one, &opts, &mut |_| {}).expect("locked backup").id;
    let plain = backup(&dev, &one, &BackupOptions::new("pc-one", "plain"), &mut |_| {}).expect("backup").id;

    let listed = one.backups().expect("list");
    assert_eq!(listed.iter().map(|b| (b.id, b.locked)).collect::<Vec<_>>(), vec![(plain, false), (id, true)]);
    assert_eq!((listed[1].pc.as_str(), listed[1].name.as_str()), ("pc-one", "locked"));
    assert_eq!((listed[1].disk_bytes, listed[1].model.as_str()), (data.len() as u64, "QEMU HARDDISK"));
    assert!(listed[1].stored_bytes > 0 && listed[1].created > 0);
    assert_eq!(one.challenge(plain).expect("challenge"), None);
    assert!(!unlock(&one, plain, b"anything").expect("no password"));

    // No ticket: refused before a byte is written, with the line a person reads.
    let dst = dir.join("dst.img");
    fs::write(&dst, noise(9, data.len())).expect("target");
    let before = fs::read(&dst).expect("read");
    let t = Device::open(&dst, true).expect("open target");
    let e = restore(&t, &one, id, &RestoreOptions::default(), &mut |_| {}).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "backup {id} is protected by a password; restore it at the PC's console, or through a server job made \
             with --password-file"
        )
    );
    assert!(fs::read(&dst).expect("read") == before, "nothing written");
    let m =
        bootvault_common::image::Manifest::decode(&fs::read(data_dir.join(format!("manifests/{id}.bvm"))).expect("m"))
            .expect("manifest");
    let e = one.chunk(id, &m.data_ids()[0], 32 << 20).unwrap_err().to_string();
    assert!(e.contains("protected by a password"), "{e}");
    // The admin owns the store: no ticket needed.
    Client::new(&url, "-", &admin).manifest(id).expect("admin reads the manifest");

    // Wrong password: the server's reason alone, no URL.
    let e = unlock(&one, id, b"open sesame!").unwrap_err().to_string();
    assert_eq!(e, format!("wrong password for backup {id} (4 tries left before a wait)"));
    // Right password: a ticket that clones share.
    let worker = one.clone();
    assert!(unlock(&one, id, b"open sesame").expect("unlock"));
    let opts = RestoreOptions { verify: true, ..Default::default() };
    restore(&t, &worker, id, &opts, &mut |_| {}).expect("restore with the ticket");
    assert!(fs::read(&dst).expect("read back") == data);

    // The ticket is pc-one's: pc-two, granted the backup, needs its own.
    Vault::open(&data_dir).expect("vault").grant(id, "pc-two").expect("grant");
    let two = Client::new(&url, "pc-two", &tokens[1]);
    let e = two.manifest(id).unwrap_err().to_string();
    assert!(e.starts_with(&format!("backup {id} is protected by a password")), "{e}");
    for n in 1..=5 {
        let e = unlock(&two, id, b"guess").unwrap_err().to_string();
        let expect = match 5 - n {
            0 => format!("wrong password for backup {id} (try again in 30 s)"),
            1 => format!("wrong password for backup {id} (1 try left before a wait)"),
            left => format!("wrong password for backup {id} ({left} tries left before a wait)"),
        };
        assert_eq!(e, expect);
    }
    // Now even the right password waits; the challenge itself says so.
    let e = unlock(&two, id, b"open sesame").unwrap_err().to_string();
    assert!(e.starts_with(&format!("too many wrong passwords for backup {id} from pc-two; try again in ")), "{e}");
    assert!(e.ends_with(" s") && !e.contains("http"), "{e}");
    // pc-one's limit is its own.
    assert!(unlock(&one, id, b"open sesame").expect("pc-one still unlocks"));
    let v = Vault::open(&data_dir).expect("vault");
    assert_eq!(v.unlock_failures("pc-two", id).expect("failures").0, 5, "waiting tries are not counted");
    let events = fs::read_to_string(data_dir.join("events.log")).expect("events");
    assert!(events.contains(&format!("unlock-ok pc=pc-one backup={id}")), "{events}");
    assert!(events.contains(&format!("unlock-refused pc=pc-two backup={id}")), "{events}");
    assert!(!events.contains("open sesame"));
    let _ = fs::remove_dir_all(&dir);
}

/// A TCP proxy in front of `upstream` that sets `flag` when the client has
/// sent `pattern` for the `nth` time, before passing that request on: a
/// way to cancel at an exact point of a pipeline.
fn tripwire(upstream: String, pattern: &'static [u8], nth: usize, flag: Arc<AtomicBool>) -> String {
    watch(upstream, pattern, move |seen| {
        if seen >= nth {
            flag.store(true, Ordering::SeqCst);
        }
    })
}

/// A TCP proxy in front of `upstream` that counts the requests holding
/// `pattern` (e.g. chunk GETs); returns its URL and the count.
fn counter(upstream: String, pattern: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    (watch(upstream, pattern, move |seen| c.store(seen, Ordering::SeqCst)), count)
}

/// A TCP proxy in front of `upstream` that calls `hit` with the number of
/// times the client has sent `pattern` so far, before passing it on.
fn watch(upstream: String, pattern: &'static [u8], hit: impl Fn(usize) + Send + Sync + 'static) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(AtomicUsize::new(0));
    let hit = Arc::new(hit);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(upstream.trim_start_matches("http://")) else { continue };
            let (mut back_from, mut back_to) = (server.try_clone().expect("clone"), client.try_clone().expect("clone"));
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut back_from, &mut back_to);
                let _ = back_to.shutdown(std::net::Shutdown::Both);
            });
            let (seen, hit) = (seen.clone(), hit.clone());
            std::thread::spawn(move || {
                let (mut from, mut to) = (client, server);
                let mut buf = vec![0u8; 64 * 1024];
                let mut tail: Vec<u8> = Vec::new();
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut window = std::mem::take(&mut tail);
                    window.extend_from_slice(&buf[..n]);
                    let hits = window.windows(pattern.len()).filter(|w| *w == pattern).count();
                    if hits > 0 {
                        hit(seen.fetch_add(hits, Ordering::SeqCst) + hits);
                    }
                    tail = window[window.len().saturating_sub(pattern.len() - 1)..].to_vec();
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// Cancelling: a backup stops at once and the server marks it failed
/// (never complete); a restore writes nothing after the flag is seen and
/// says how much of the disk it wrote.
#[test]
fn cancel_backup_and_restore() {
    let dir = temp_dir("cancel");
    let data_dir = dir.join("data");
    let (tokens, _) = register(&data_dir, &["pc-one"]);
    let url = server(&data_dir);
    let src = dir.join("src.img");
    let data = source_image(&src);
    let dev = Device::open(&src, false).expect("open source");

    let mut opts = BackupOptions::new("pc-one", "cancelled");
    (opts.threads, opts.group) = (1, 1);
    let proxied =
        Client::new(&tripwire(url.clone(), b"PUT /api/v1/chunks/", 2, opts.cancel.clone()), "pc-one", &tokens[0]);
    let e = backup(&dev, &proxied, &opts, &mut |_| {}).unwrap_err().to_string();
    assert!(e.starts_with("cancelled"), "{e}");
    let rows = Vault::open(&data_dir).expect("vault").list_backups(None, true).expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].state.as_str(), rows[0].reason.as_str()), ("failed", "cancelled at the console"));
    assert_eq!(rows[0].received_chunks, 2, "nothing sent after the flag was seen");

    let client = Client::new(&url, "pc-one", &tokens[0]);
    let id = backup(&dev, &client, &BackupOptions::new("pc-one", "full"), &mut |_| {}).expect("backup").id;
    let dst = dir.join("dst.img");
    let dirty = noise(9, data.len());
    fs::write(&dst, &dirty).expect("target");
    let t = Device::open(&dst, true).expect("open target");
    let opts = RestoreOptions { threads: 1, ..Default::default() };
    // The third chunk is fetched after the flag is up, and not written.
    let proxied =
        Client::new(&tripwire(url.clone(), b"GET /api/v1/chunks/", 3, opts.cancel.clone()), "pc-one", &tokens[0]);
    let e = restore(&t, &proxied, id, &opts, &mut |_| {}).unwrap_err().to_string();
    assert_eq!(e, cancelled_message(2 << 20, 0, data.len() as u64));
    assert!(e.contains("partly overwritten (2.0 MiB of 10.0 MiB written)"), "{e}");
    let back = fs::read(&dst).expect("read back");
    assert!(back[..2 << 20] == data[..2 << 20], "what was written is the backup's");
    assert!(back[2 << 20..] == dirty[2 << 20..], "nothing written after the flag");
    let _ = fs::remove_dir_all(&dir);
}

/// A restore stopped by a damaged chunk says the target is now partly
/// overwritten; once the chunk is repaired, running it again fetches only
/// the chunks not yet right on the disk, and a restore onto a disk that
/// already holds the backup fetches none.
#[test]
fn resume_after_a_damaged_chunk() {
    let dir = temp_dir("resume");
    let data_dir = dir.join("data");
    let (tokens, _) = register(&data_dir, &["pc-one"]);
    let url = server(&data_dir);
    let src = dir.join("src.img");
    let data = source_image(&src);
    let client = Client::new(&url, "pc-one", &tokens[0]);
    let dev = Device::open(&src, false).expect("open source");
    let id = backup(&dev, &client, &BackupOptions::new("pc-one", "full"), &mut |_| {}).expect("backup").id;
    // Chunks: 0-2 text, 3-4 noise, 5-7 zeros, 8-9 the same noise, 10 a short tail.
    let m = bootvault_common::image::Manifest::decode(&client.manifest(id).expect("manifest")).expect("decode");
    let ids: Vec<_> = m
        .chunks
        .iter()
        .map(|c| match c {
            bootvault_common::image::Chunk::Data { id, .. } => Some(*id),
            bootvault_common::image::Chunk::Zero | bootvault_common::image::Chunk::Unused => None,
        })
        .collect();
    assert_eq!(ids.iter().filter(|c| c.is_none()).count(), 3);
    let hex = bootvault_common::image::hex(&ids[2].expect("chunk 2 holds data"));
    let blob_path = data_dir.join("chunks").join(&hex[..2]).join(&hex);
    let good_blob = fs::read(&blob_path).expect("blob of chunk 2");
    // A raw blob of the right length with the wrong bytes: it fails verification.
    let mut bad = vec![1u8];
    bad.extend(vec![0x5a; 1 << 20]);
    fs::write(&blob_path, &bad).expect("damage chunk 2");

    // A blank target; one worker, so chunks 0 and 1 are written before chunk 2 fails.
    let dst = dir.join("dst.img");
    fs::File::create(&dst).and_then(|f| f.set_len(data.len() as u64)).expect("target");
    let t = Device::open(&dst, true).expect("open target");
    let one = RestoreOptions { threads: 1, ..Default::default() };
    let e = restore(&t, &client, id, &one, &mut |_| {}).unwrap_err().to_string();
    assert!(e.starts_with("chunk 2 at offset 2097152 (2.0 MiB): "), "{e}");
    assert!(
        e.ends_with(
            "; restore stopped there; the target disk is now partly overwritten (2.0 MiB of 10.0 MiB written): it \
             will not boot as it is; run the restore again, which writes only what still differs, or restore \
             another backup"
        ),
        "{e}"
    );
    let back = fs::read(&dst).expect("read back");
    assert!(back[..2 << 20] == data[..2 << 20] && back[2 << 20..].iter().all(|&b| b == 0));

    // Still damaged, a second run writes nothing new: the disk is as it was.
    let e = restore(&t, &client, id, &one, &mut |_| {}).unwrap_err().to_string();
    assert!(e.ends_with("restore stopped there; nothing was written; the target disk is unchanged"), "{e}");

    // Repaired: the re-run fetches the 6 data chunks not yet on the disk
    // (2, 3, 4, 8, 9, 10); 0 and 1 are right, and so are the zero chunks
    // of the blank file.
    fs::write(&blob_path, &good_blob).expect("repair chunk 2");
    let (proxied, gets) = counter(url.clone(), b"GET /api/v1/chunks/");
    let via_proxy = Client::new(&proxied, "pc-one", &tokens[0]);
    let opts = RestoreOptions { verify: true, ..Default::default() };
    let r = restore(&t, &via_proxy, id, &opts, &mut |_| {}).expect("restore again");
    assert_eq!(gets.load(Ordering::SeqCst), 6, "only the chunks not yet right are fetched");
    assert_eq!((r.chunks, r.skipped_chunks, r.fetched_chunks), (11, 5, 6));
    assert_eq!(r.written_bytes, data.len() as u64 - (5 << 20));
    assert!(
        r.summary("dst.img").contains("11 chunks (3 all-zero): 5 already right on the disk, 6 fetched"),
        "{}",
        r.summary("dst.img")
    );
    assert!(fs::read(&dst).expect("read back") == data, "restored bytes differ");

    // Done: nothing left to fetch or write.
    let r = restore(&t, &via_proxy, id, &opts, &mut |_| {}).expect("restore a third time");
    assert_eq!(gets.load(Ordering::SeqCst), 6, "no chunk fetched");
    assert_eq!((r.skipped_chunks, r.fetched_chunks, r.fetched_bytes, r.written_bytes), (11, 0, 0, 0));

    // A disk that already holds the image (larger than it, too): no chunk fetched.
    let copy = dir.join("copy.img");
    let mut bytes = data.clone();
    bytes.extend(noise(3, 1 << 20));
    fs::write(&copy, &bytes).expect("copy");
    let t = Device::open(&copy, true).expect("open copy");
    let r = restore(&t, &via_proxy, id, &opts, &mut |_| {}).expect("restore onto the same bytes");
    assert_eq!(gets.load(Ordering::SeqCst), 6, "no chunk fetched");
    assert_eq!((r.skipped_chunks, r.fetched_chunks, r.written_bytes), (11, 0, 0));
    assert!(fs::read(&copy).expect("read") == bytes);
    let _ = fs::remove_dir_all(&dir);
}

/// A PC over its storage quota: the backup stops at the first chunk past
/// it with the server's one-line reason (507, not retried), is failed on
/// the server, and nothing past the quota is stored.
#[test]
fn quota_stops_a_backup_with_a_clear_line() {
    let dir = temp_dir("quota");
    let (tokens, _) = register(&dir.join("data"), &["small-pc"]);
    let v = Vault::open(&dir.join("data")).expect("vault");
    v.set_pc_quota("small-pc", Some(3 << 20)).expect("quota");
    let url = server(&dir.join("data"));
    let src = dir.join("src.img");
    fs::write(&src, noise(77, 8 << 20)).expect("source"); // incompressible: 8 MiB to store
    let client = Client::new(&url, "small-pc", &tokens[0]);
    let dev = Device::open(&src, false).expect("open source");
    let e = backup(&dev, &client, &BackupOptions::new("small-pc", "full"), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("507") && e.contains("over its storage quota"), "{e}");
    let rows = v.list_backups(None, true).expect("list");
    assert_eq!(rows.iter().map(|b| b.state.as_str()).collect::<Vec<_>>(), ["failed"]);
    assert!(v.pc_usage("small-pc").expect("usage") <= 3 << 20);
    // At the quota, a new backup is refused before it opens.
    v.set_pc_quota("small-pc", Some(1)).expect("quota");
    let e = backup(&dev, &client, &BackupOptions::new("small-pc", "full"), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("507") && e.contains("over its storage quota"), "{e}");
    assert_eq!(v.list_backups(None, true).expect("list").len(), 1, "no second upload opened");
    let _ = fs::remove_dir_all(&dir);
}
