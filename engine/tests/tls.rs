//! HTTPS with the server's certificate pinned (issue 13, on the host): the
//! engine's client and the real server (in this process, on 127.0.0.1)
//! back up and restore over TLS; a wrong pin, no pin, and plain HTTP to
//! a TLS server are refused with their own lines, before the server has
//! seen a request.

use std::fs;
use std::path::PathBuf;

use bootvault_common::fingerprint::Fingerprint;
use bootvault_common::testdata::noise;
use bootvault_engine::backup::{backup, BackupOptions};
use bootvault_engine::client::{Client, Timeouts};
use bootvault_engine::device::Device;
use bootvault_engine::restore::{restore, RestoreOptions};
use bootvault_server::tls::{fingerprint_in, Mode};
use bootvault_server::vault::{PcRow, Vault};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-engine-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("temp dir");
    d
}

fn quick(c: Client) -> Client {
    c.with_timeouts(Timeouts { total: std::time::Duration::from_secs(8), ..Timeouts::DEFAULT })
}

#[test]
fn pinned_https_round_trip_and_every_refusal() {
    let dir = temp_dir("tls");
    let data_dir = dir.join("data");
    let token = {
        let v = Vault::open(&data_dir).expect("vault");
        v.add_pc(&PcRow::new("tls-pc", "52:54:00:00:00:41")).expect("add").token
    };
    let port = bootvault_server::spawn_on_loopback_with(&data_dir, Default::default(), Mode::Made).expect("server");
    let pin = fingerprint_in(&data_dir).expect("read").expect("the server made its certificate");
    let url = format!("https://127.0.0.1:{port}");
    let events = || fs::read_to_string(data_dir.join("events.log")).unwrap_or_default();

    // A wrong pin: refused in the handshake, at once, naming both
    // fingerprints; the server never saw a request.
    let wrong = Fingerprint([0x5a; 32]);
    let client = quick(Client::new(&url, "tls-pc", &token).pinned(Some(wrong)));
    let e = client.hello("-", "-", std::time::Duration::from_secs(30), &mut |_| {}).expect_err("wrong pin").to_string();
    assert!(e.contains(&format!("refusing the server at {url}")), "{e}");
    assert!(e.contains(&pin.to_string()) && e.contains(&wrong.to_string()), "{e}");
    assert!(e.contains("nothing was sent"), "{e}");
    let e = client.backups().expect_err("wrong pin").to_string();
    assert!(e.contains("not the one this PC trusts"), "{e}");
    assert!(!events().contains("tls-pc"), "the server saw the PC: {}", events());

    // No pin at all for an https:// server.
    let e = quick(Client::new(&url, "tls-pc", &token)).backups().expect_err("no pin").to_string();
    assert!(e.contains("needs its certificate's fingerprint"), "{e}");

    // Plain HTTP to the TLS server: tokens refused (network-boot files
    // are still served there, see server/tests).
    let plain = quick(Client::new(&format!("http://127.0.0.1:{port}"), "tls-pc", &token));
    let e = plain.backups().expect_err("plain http").to_string();
    assert!(e.contains("takes tokens only over https://"), "{e}");

    // The pinned client: a backup and a byte-identical restore over TLS.
    let client = Client::new(&url, "tls-pc", &token).pinned(Some(pin));
    let src = dir.join("src.img");
    let mut image = noise(9, 3 << 20);
    image.extend(b"some text ".iter().cycle().take(3 << 20));
    fs::write(&src, &image).expect("source");
    let r = backup(
        &Device::open(&src, false).expect("open"),
        &client,
        &BackupOptions::new("tls-pc", "over-tls"),
        &mut |_| {},
    )
    .expect("backup over https");
    let target = dir.join("target.img");
    fs::write(&target, vec![0xEE; image.len()]).expect("target");
    let opts = RestoreOptions { verify: true, ..Default::default() };
    restore(&Device::open(&target, true).expect("target"), &client, r.id, &opts, &mut |_| {}).expect("restore");
    assert!(fs::read(&target).expect("read") == image, "byte for byte over https");
    assert!(events().contains(&format!("backup {} of pc=tls-pc complete", r.id)), "{}", events());
    let _ = fs::remove_dir_all(&dir);
}
