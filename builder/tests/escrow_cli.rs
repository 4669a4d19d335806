//! Restore passwords are keys (issue 13): a locked, encrypted backup made
//! by the host CLI onto a drive is sealed with a key of its own; the site
//! key alone does not restore it, its password does, and so does the
//! admin's offline escrow key when the password is lost.

use std::path::Path;
use std::process::Command;

fn bootvault(home: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bootvault"))
        .args(args)
        // No site key or escrow from the machine running the tests.
        .env("BOOTVAULT_KEY_FILE", home.join("site.key"))
        .output()
        .expect("runs bootvault");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_lost_password_is_recovered_with_the_escrow_key_and_only_with_it() {
    let dir = std::env::temp_dir().join(format!("bv-escrow-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let run = |args: &[&str]| bootvault(&dir, args);
    let s = |p: &Path| p.to_str().expect("utf-8").to_owned();
    let src = dir.join("disk.img");
    let mut data = bootvault_common::testdata::noise(23, 3 << 20);
    data.extend(b"a text line that must not be stored in clear\n".iter().cycle().take(2 << 20));
    std::fs::write(&src, &data).expect("disk");
    let (escrow, pw, other_pw, store) = (dir.join("escrow.key"), dir.join("pw"), dir.join("other"), dir.join("usb"));
    std::fs::write(&pw, "the password that will be lost\n").expect("pw");
    std::fs::write(&other_pw, "not it\n").expect("pw");

    let (ok, out) = run(&["key", "escrow", &s(&escrow)]);
    assert!(ok && out.contains("new escrow key"), "{out}");
    let (ok, out) = run(&["key", "escrow", &s(&escrow)]);
    assert!(!ok && out.contains("never overwritten"), "{out}");
    let escrow_pub = format!("{}.pub", s(&escrow));
    let (ok, out) = run(&[
        "backup",
        "--disk",
        &s(&src),
        "--to",
        &s(&store),
        "--pc",
        "lab-1",
        "--name",
        "locked",
        "--password-file",
        &s(&pw),
        "--escrow-pub",
        &escrow_pub,
    ]);
    assert!(ok && out.contains("backup 1 complete"), "{out}");
    assert!(out.contains("made the site's data key"), "encrypted by default, with a site key made now: {out}");
    let m = std::fs::read(store.join("manifests/1.bvm")).expect("manifest");
    let m = bootvault_common::image::Manifest::decode(&m).expect("decode");
    let sealed = m.sealed.expect("encrypted by default");
    assert!(sealed.wrapped.is_some() && sealed.escrowed.is_some(), "its own key, wrapped twice");

    let target = dir.join("target.img");
    let t = s(&target);
    let blank = || std::fs::write(&target, vec![0xEEu8; data.len()]).expect("target");
    let restore = |extra: &[&str]| {
        blank();
        let mut args = vec!["restore", "--disk", &t, "--from", store.to_str().expect("utf-8"), "--pc", "lab-1"];
        args.extend_from_slice(&["--backup", "1"]);
        args.extend_from_slice(extra);
        run(&args)
    };
    // The site key alone: refused by the drive's gate; a wrong password: refused.
    let (ok, out) = restore(&[]);
    assert!(!ok && out.contains("protected by a password"), "{out}");
    let (ok, out) = restore(&["--password-file", &s(&other_pw)]);
    assert!(!ok && out.contains("wrong password"), "{out}");
    assert!(std::fs::read(&target).expect("read").iter().all(|&b| b == 0xEE), "a refused restore wrote");
    // Another escrow key: refused, naming it.
    let stranger = dir.join("stranger.key");
    assert!(run(&["key", "escrow", &s(&stranger)]).0);
    let (ok, out) = restore(&["--escrow-file", &s(&stranger)]);
    assert!(!ok && out.contains("was not escrowed for"), "{out}");
    // The password: byte for byte.
    let (ok, out) = restore(&["--password-file", &s(&pw)]);
    assert!(ok, "{out}");
    assert!(std::fs::read(&target).expect("read") == data, "restored with the password");
    // Password lost: the escrow key, byte for byte.
    let (ok, out) = restore(&["--escrow-file", &s(&escrow)]);
    assert!(ok && out.contains("recovered with the escrow key"), "{out}");
    assert!(std::fs::read(&target).expect("read") == data, "restored with the escrow key");
    let _ = std::fs::remove_dir_all(&dir);
}
