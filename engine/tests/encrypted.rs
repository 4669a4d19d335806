//! Backups encrypted on this side (issue 13's first part, on the host):
//! the real server (in this process, on 127.0.0.1) and a local store only
//! ever hold ciphertext; a restore with the key is byte-identical; no
//! key, a wrong key, an altered chunk or an altered manifest are refused
//! before a byte reaches the target; unencrypted backups still restore.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bootvault_common::seal::DataKey;
use bootvault_common::testdata::{file_holding, noise};
use bootvault_engine::backup::{backup, BackupOptions};
use bootvault_engine::client::Client;
use bootvault_engine::device::Device;
use bootvault_engine::local_store::LocalStore;
use bootvault_engine::restore::{restore, RestoreOptions};
use bootvault_server::vault::{PcRow, Vault};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-that-must-never-be-stored";

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-engine-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("temp dir");
    d
}

/// 6 MiB: text with the marker throughout (compressible), noise, zeros.
fn source(path: &Path) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend(MARKER.iter().chain(b" some text\n").copied().cycle().take(3 << 20));
    d.extend(noise(5, 2 << 20));
    d.extend(vec![0u8; 1 << 20]);
    fs::write(path, &d).expect("source");
    d
}

fn restore_opts(key: Option<&Arc<DataKey>>) -> RestoreOptions {
    RestoreOptions { key: key.cloned(), verify: true, ..Default::default() }
}

#[test]
fn the_store_holds_only_ciphertext_and_restores_check_everything() {
    let dir = temp_dir("encrypted");
    let src = dir.join("src.img");
    let data = source(&src);
    let data_dir = dir.join("data");
    let token = {
        let v = Vault::open(&data_dir).expect("vault");
        v.add_pc(&PcRow::new("enc-pc", "52:54:00:00:00:31")).expect("add").token
    };
    let port = bootvault_server::spawn_on_loopback(&data_dir, Default::default()).expect("server");
    let client = Client::new(&format!("http://127.0.0.1:{port}"), "enc-pc", &token);
    let key = Arc::new(DataKey::new(&[42; 32]));
    let dev = Device::open(&src, false).expect("open");
    let mut opts = BackupOptions::new("enc-pc", "sealed");
    opts.key = Some(key.clone());
    let r = backup(&dev, &client, &opts, &mut |_| {}).expect("encrypted backup");
    assert!(r.new_chunks >= 3, "{r:?}");
    assert_eq!(file_holding(&data_dir, MARKER), None, "plain text in the server's data directory");
    assert_eq!(file_holding(&data_dir, &noise(5, 4096)), None, "plain noise in the server's data directory");

    // Unchanged: nothing new sent (keyed ids deduplicate inside the key's domain).
    let again = backup(&dev, &client, &opts, &mut |_| {}).expect("again");
    assert_eq!(again.new_chunks, 0);

    // With the key: byte for byte (and read back with keyed ids).
    let target = dir.join("target.img");
    fs::write(&target, vec![0xEE; data.len()]).expect("target");
    let tdev = Device::open(&target, true).expect("open target");
    restore(&tdev, &client, r.id, &restore_opts(Some(&key)), &mut |_| {}).expect("restore with the key");
    assert!(fs::read(&target).expect("read") == data, "byte for byte");

    // No key, another key: refused before anything is written.
    fs::write(&target, vec![0xEE; data.len()]).expect("target");
    let e = restore(&tdev, &client, r.id, &restore_opts(None), &mut |_| {}).expect_err("no key").to_string();
    assert!(e.contains("is encrypted") && e.contains("give its key"), "{e}");
    let other = Arc::new(DataKey::new(&[43; 32]));
    let e = restore(&tdev, &client, r.id, &restore_opts(Some(&other)), &mut |_| {}).expect_err("wrong key").to_string();
    assert!(e.contains(&format!("not with this key ({})", other.fingerprint())), "{e}");
    assert!(fs::read(&target).expect("read").iter().all(|&b| b == 0xEE), "a refused restore wrote");

    // An altered chunk in the server's store: caught before it is written.
    let chunks_dir = data_dir.join("chunks");
    let victim = fs::read_dir(&chunks_dir)
        .expect("chunks")
        .flatten()
        .filter(|d| d.path().is_dir())
        .flat_map(|d| fs::read_dir(d.path()).expect("dir").flatten().map(|e| e.path()))
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a chunk file");
    let mut blob = fs::read(&victim).expect("blob");
    let at = blob.len() / 2;
    blob[at] ^= 1;
    fs::write(&victim, &blob).expect("alter");
    let opts1 = RestoreOptions { threads: 1, ..restore_opts(Some(&key)) };
    let e = restore(&tdev, &client, r.id, &opts1, &mut |_| {}).expect_err("altered chunk").to_string();
    assert!(e.contains("does not verify"), "{e}");
    blob[at] ^= 1;
    fs::write(&victim, &blob).expect("put back");

    // Into a local store: ciphertext only there too, and it restores.
    let store_dir = dir.join("usb/bootvault");
    let local = LocalStore::open(&store_dir).expect("local store");
    let lr = backup(&dev, &local, &opts, &mut |_| {}).expect("encrypted local backup");
    assert_eq!(file_holding(&store_dir, MARKER), None, "plain text in the local store");
    fs::write(&target, vec![0xEE; data.len()]).expect("target");
    restore(&tdev, &local, lr.id, &restore_opts(Some(&key)), &mut |_| {}).expect("local restore");
    assert!(fs::read(&target).expect("read") == data);
    // Its manifest altered (the public index): refused.
    let mpath = store_dir.join(format!("manifests/{}.bvm", lr.id));
    let mut m = bootvault_common::image::Manifest::decode(&fs::read(&mpath).expect("manifest")).expect("decode");
    m.chunks.swap(0, 4);
    fs::write(&mpath, m.encode()).expect("alter manifest");
    let e = restore(&tdev, &local, lr.id, &restore_opts(Some(&key)), &mut |_| {}).expect_err("altered").to_string();
    assert!(e.contains("was altered"), "{e}");

    // Unencrypted backups still restore as before, with or without a key given.
    let plain = backup(&dev, &client, &BackupOptions::new("enc-pc", "plain"), &mut |_| {}).expect("plain backup");
    fs::write(&target, vec![0xEE; data.len()]).expect("target");
    restore(&tdev, &client, plain.id, &restore_opts(Some(&key)), &mut |_| {}).expect("plain restore");
    assert!(fs::read(&target).expect("read") == data);
    assert!(client.backups().expect("list").iter().any(|b| b.id == r.id && b.name == "sealed"));
    let _ = fs::remove_dir_all(&dir);
}

/// A password-locked, encrypted backup is sealed with a key of its own,
/// carried in its manifest wrapped with the password: the site's data
/// key alone does not open it (a stolen PC image, or the admin's token
/// past the server's gate), the password does, on the server and on a
/// drive; its chunks do not deduplicate with the site key's.
#[test]
fn a_locked_backup_opens_with_its_password_not_with_the_site_key() {
    use bootvault_engine::lock::Lock;
    let dir = temp_dir("own-key");
    let src = dir.join("src.img");
    let data = source(&src);
    let data_dir = dir.join("data");
    let (token, admin) = {
        let v = Vault::open(&data_dir).expect("vault");
        (v.add_pc(&PcRow::new("own-pc", "52:54:00:00:00:32")).expect("add").token, v.admin_token().expect("admin"))
    };
    let port = bootvault_server::spawn_on_loopback(&data_dir, Default::default()).expect("server");
    let url = format!("http://127.0.0.1:{port}");
    let site = Arc::new(DataKey::new(&[42; 32]));
    let dev = Device::open(&src, false).expect("open");
    let target = dir.join("target.img");
    fs::write(&target, vec![0xEE; data.len()]).expect("target");
    let tdev = Device::open(&target, true).expect("open target");

    // Sealed with the site key: the baseline a locked backup must not share.
    let client = Client::new(&url, "own-pc", &token);
    let mut opts = BackupOptions::new("own-pc", "site");
    opts.key = Some(site.clone());
    backup(&dev, &client, &opts, &mut |_| {}).expect("site-key backup");

    let mut opts = BackupOptions::new("own-pc", "locked");
    opts.key = Some(site.clone());
    opts.lock = Some(Lock::new(b"a long enough password").expect("lock"));
    assert!(opts.own_key());
    let r = backup(&dev, &client, &opts, &mut |_| {}).expect("locked backup");
    assert!(r.new_chunks >= 3, "a key of its own: nothing deduplicates with the site key's backup: {r:?}");
    assert_eq!(file_holding(&data_dir, MARKER), None, "plain text in the server's data directory");
    let m = bootvault_common::image::Manifest::decode(
        &fs::read(data_dir.join(format!("manifests/{}.bvm", r.id))).expect("m"),
    )
    .expect("decode");
    let sealed = m.sealed.as_ref().expect("sealed");
    assert!(sealed.wrapped.is_some(), "the wrapped key is in the manifest");
    assert_ne!(sealed.key, site.fingerprint_bytes(), "sealed with its own key, not the site's");

    // The admin's token passes the server's gate, the site key is given: not enough.
    let as_admin = Client::new(&url, "own-pc", &admin);
    let e = restore(&tdev, &as_admin, r.id, &restore_opts(Some(&site)), &mut |_| {}).expect_err("site key alone");
    assert!(e.to_string().contains("a key of its own, which its restore password opens"), "{e}");
    assert!(fs::read(&target).expect("read").iter().all(|&b| b == 0xEE), "a refused restore wrote");
    // A wrong password is refused by the server; the right one opens it, with or without the site key.
    assert!(bootvault_engine::lock::unlock(&client, r.id, b"not the password").is_err());
    let fresh = Client::new(&url, "own-pc", &token);
    assert!(bootvault_engine::lock::unlock(&fresh, r.id, b"a long enough password").expect("unlock"));
    restore(&tdev, &fresh, r.id, &restore_opts(None), &mut |_| {}).expect("restore with the password");
    assert!(fs::read(&target).expect("read") == data, "byte for byte");

    // On a drive: the same.
    let store_dir = dir.join("usb/bootvault");
    let local = LocalStore::open(&store_dir).expect("local store");
    let lr = backup(&dev, &local, &opts, &mut |_| {}).expect("locked local backup");
    assert_eq!(file_holding(&store_dir, MARKER), None, "plain text in the local store");
    drop(local);
    let reader = LocalStore::open_read(&store_dir).expect("reader");
    use bootvault_engine::store::Store;
    assert!(reader.unlock(lr.id, b"a long enough password").expect("unlock"));
    fs::write(&target, vec![0xEE; data.len()]).expect("target");
    restore(&tdev, &reader, lr.id, &restore_opts(Some(&site)), &mut |_| {}).expect("local restore");
    assert!(fs::read(&target).expect("read") == data, "byte for byte from the drive");
    let _ = fs::remove_dir_all(&dir);
}
