//! `bootvault backup --to DIR` and `restore --from DIR`: backups with no
//! server, into a directory of a mounted drive, restored byte for byte;
//! `--server` and `--to` together are refused.

use std::process::Command;

fn bootvault(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bootvault")).args(args).output().expect("runs bootvault");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn backup_to_and_restore_from_a_directory() {
    let dir = std::env::temp_dir().join(format!("bv-local-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let src = dir.join("disk.img");
    let mut data = bootvault_common::testdata::noise(21, 3 << 20);
    data.extend(vec![0u8; 1 << 20]);
    std::fs::write(&src, &data).expect("disk");
    let store = dir.join("usb");
    let (s, src_s, store_s) = (true, src.to_str().expect("utf-8"), store.to_str().expect("utf-8"));
    let (ok, out) = bootvault(&["backup", "--disk", src_s, "--to", store_s, "--pc", "lab-1", "--name", "stick"]);
    assert!(ok == s && out.contains("backup 1 complete"), "{out}");
    let target = dir.join("target.img");
    std::fs::write(&target, vec![0xEEu8; data.len()]).expect("target");
    let t = target.to_str().expect("utf-8");
    let (ok, out) = bootvault(&["restore", "--disk", t, "--from", store_s, "--pc", "lab-1", "--backup", "latest"]);
    assert!(ok, "{out}");
    assert!(std::fs::read(&target).expect("read") == data, "restored byte for byte");
    let (ok, out) =
        bootvault(&["backup", "--disk", src_s, "--to", store_s, "--server", "http://127.0.0.1:9", "--pc", "x"]);
    assert!(!ok && out.contains("cannot be used with"), "{out}");
    let (ok, out) = bootvault(&["restore", "--disk", t, "--from", store_s, "--pc", "lab-2", "--backup", "latest"]);
    assert!(!ok && out.contains("no complete backup of lab-2"), "{out}");

    // A drive's mount point (its bootvault folder), and a restore password.
    let mount = dir.join("mnt");
    let pw = dir.join("pw.txt");
    std::fs::write(&pw, "a long local password\n").expect("pw");
    let (mount_s, pw_s) = (mount.to_str().expect("utf-8"), pw.to_str().expect("utf-8"));
    std::fs::create_dir_all(mount.join("bootvault")).expect("bootvault folder");
    let (ok, out) = bootvault(&[
        "backup",
        "--disk",
        src_s,
        "--to",
        mount_s,
        "--pc",
        "lab-1",
        "--name",
        "locked",
        "--password-file",
        pw_s,
    ]);
    assert!(ok && out.contains("backup 1 complete"), "{out}");
    assert!(mount.join("bootvault/locks/1.lock").is_file() && !mount.join("manifests").exists(), "into bootvault/");
    let lock = std::fs::read_to_string(mount.join("bootvault/locks/1.lock")).expect("lock");
    assert!(!lock.contains("a long local password"), "the password itself is never stored");
    std::fs::write(&target, vec![0xEEu8; data.len()]).expect("target");
    let (ok, out) = bootvault(&["restore", "--disk", t, "--from", mount_s, "--pc", "lab-1", "--backup", "1"]);
    assert!(!ok && out.contains("protected by a password"), "{out}");
    assert!(std::fs::read(&target).expect("read").iter().all(|&b| b == 0xEE), "nothing written without it");
    let restore_with = |password: &str| {
        std::fs::write(&pw, format!("{password}\n")).expect("pw");
        let args =
            ["restore", "--disk", t, "--from", mount_s, "--pc", "lab-1", "--backup", "1", "--password-file", pw_s];
        bootvault(&args)
    };
    let (ok, out) = restore_with("not it");
    assert!(!ok && out.contains("wrong password for backup 1"), "{out}");
    let (ok, out) = restore_with("a long local password");
    assert!(ok, "{out}");
    assert!(std::fs::read(&target).expect("read") == data, "restored with the password");
    let _ = std::fs::remove_dir_all(&dir);
}
