//! The transport of issue 13 under QEMU: everything a PC sends crosses
//! TLS to a server it knows by its pinned certificate.
//!
//! * The traffic of a whole job-driven, password-locked, encrypted
//!   backup and its restore onto a second PC, captured on the PC's NIC
//!   (QEMU's filter-dump), holds no token, no password, no key, no
//!   request line and none of the disk's file contents.
//! * A machine in the middle with another certificate (a TLS proxy on
//!   127.0.0.1 that relays to the real server) is refused by the host CLI
//!   and by the PC before anything is sent; the same proxy relays for a
//!   client that trusts it, so the test can fail.

use std::fs;
use std::process::Command;
use std::time::Duration;

use bootvault_common::testdata::noise;
use bootvault_qemu_tests::mitm::Interceptor;
use bootvault_qemu_tests::*;

const STEP: Duration = Duration::from_secs(180);
const PASSWORD: &str = "correct horse battery staple 13";

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn captured_traffic_of_a_locked_encrypted_backup_and_restore_holds_no_secret() {
    let dir = scratch("tls-capture");
    let server = Server::start(&dir).expect("server");
    let source = make_source_disk(&dir, "gpt").expect("source disk");
    let key = dir.join("site.key");
    let _ = fs::remove_file(&key);
    run(Command::new(bootvault_bin()).args(["key", "new"]).arg(&key)).expect("key new");
    let key_s = key.display().to_string();
    let password = dir.join("password.txt");
    fs::write(&password, format!("{PASSWORD}\n")).expect("password file");
    let p = password.to_str().expect("utf-8");

    // PC 1 backs up, headless, from a job the admin queued with a password.
    let boot = dir.join("boot-a");
    build_for(&boot, "pc-cap", &server, "qemu", &["--set", "action=job", "--key-file", &key_s]).expect("build");
    let job = ["add", "pc-cap", "backup", "--name", "locked", "--password-file", p, "--key-file", &key_s];
    server.admin("jobs", &job).expect("backup job");
    let pcap_a = dir.join("backup.pcap");
    let mut vm =
        Guest::new(&boot).disk(&source, "CAP00001").dump_traffic(&pcap_a).boot(&dir.join("a.log")).expect("boots");
    let (line, _) = vm.console.expect("server: https://10.0.2.2", STEP).expect("greeting");
    assert!(line.contains("answered"), "{line}");
    vm.console.expect("backup 1 complete", STEP).expect("backup");
    vm.wait_exit(STEP).expect("powers off");
    // Locked and encrypted: sealed with a key of its own, which only the
    // password opens (the job carried its wrap key sealed with the site key).
    let m = fs::read(server.data.join("manifests/1.bvm")).expect("manifest");
    let m = bootvault_common::image::Manifest::decode(&m).expect("decode");
    assert!(m.sealed.as_ref().is_some_and(|s| s.wrapped.is_some()), "backup 1 has no key of its own");

    // PC 2 restores it (one image to many PCs): granted, a job with the password.
    server.register("pc-cap2", &mac_for("pc-cap2")).expect("register");
    server.admin("backups", &["grant", "1", "pc-cap2"]).expect("grant");
    let job = ["add", "pc-cap2", "restore", "--backup", "1", "--password-file", p, "--key-file", &key_s];
    server.admin("jobs", &job).expect("restore job");
    let boot2 = dir.join("boot-b");
    build_for(&boot2, "pc-cap2", &server, "qemu", &["--set", "action=job", "--key-file", &key_s]).expect("build");
    let target = dir.join("target.img");
    fs::write(&target, noise(53, (SOURCE_MIB << 20) as usize)).expect("target");
    let pcap_b = dir.join("restore.pcap");
    let mut vm =
        Guest::new(&boot2).disk(&target, "CAP00002").dump_traffic(&pcap_b).boot(&dir.join("b.log")).expect("boots");
    vm.console.expect("restore of backup 1 complete", STEP).expect("restore");
    vm.wait_exit(STEP).expect("powers off");
    check_files(&target, &dir, "gpt").expect("every file restored");

    // What crossed the wire: plenty (the disk went both ways), none of it readable.
    let key_text = fs::read_to_string(&key).expect("key");
    let key_hex = key_text.split_whitespace().last().expect("key hex").to_owned();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("PC 1's token", server.token("pc-cap").expect("token").into_bytes()),
        ("PC 2's token", server.token("pc-cap2").expect("token").into_bytes()),
        ("the restore password", PASSWORD.as_bytes().to_vec()),
        ("the data key", key_hex.into_bytes()),
        ("a request line", b"/api/v1/".to_vec()),
        ("an Authorization header", b"Bearer ".to_vec()),
        ("a text file's line", b"of a very compressible text file".to_vec()),
        ("a block of random.bin", noise(7, 4096)[..64].to_vec()),
        ("the ext4 label", b"bvroot".to_vec()),
    ];
    for (pcap, min) in [(&pcap_a, 2 << 20), (&pcap_b, 2 << 20)] {
        let bytes = fs::read(pcap).expect("capture");
        assert!(bytes.len() > min, "{} holds only {} bytes", pcap.display(), bytes.len());
        for (what, needle) in &secrets {
            assert!(!holds(&bytes, needle), "{what} crossed the network in clear ({})", pcap.display());
        }
    }
    // The capture does see what is in clear by design: DHCP, and the
    // TLS handshake's server name (no SNI for an address: nothing).
    let a = fs::read(&pcap_a).expect("capture");
    assert!(holds(&a, &[0x63, 0x82, 0x53, 0x63]), "no DHCP in the capture: is it the PC's NIC?");
}

#[test]
fn a_machine_in_the_middle_is_refused_by_the_cli_and_the_pc_before_anything_is_sent() {
    let dir = scratch("tls-mitm");
    let server = Server::start(&dir).expect("server");
    let mitm = Interceptor::start(server.port).expect("interceptor");
    server.register("pc-m", &mac_for("pc-m")).expect("register");
    let token = server.token("pc-m").expect("token");
    let disk = dir.join("small.img");
    fs::write(&disk, noise(17, 4 << 20)).expect("disk");
    let through = format!("https://127.0.0.1:{}", mitm.port);
    let cli = |fingerprint: &str| {
        run(Command::new(bootvault_bin()).args(["backup", "--disk"]).arg(&disk).args([
            "--server",
            &through,
            "--fingerprint",
            fingerprint,
            "--pc",
            "pc-m",
            "--token",
            &token,
        ]))
    };

    // The host CLI, pinned to the real server: refused in the handshake.
    let e = cli(&server.fingerprint).expect_err("the CLI talked through the interceptor");
    assert!(e.contains(&format!("refusing the server at {through}")) && e.contains("nothing was sent"), "{e}");
    assert!(mitm.connections() >= 1, "the CLI never reached the interceptor");
    assert_eq!((mitm.handshakes(), mitm.plaintext_bytes()), (0, 0), "the CLI finished a handshake or sent bytes");

    // The PC, pinned to the real server and sent to the interceptor.
    let boot = dir.join("boot");
    let via = format!("server=https://10.0.2.2:{}", mitm.port);
    build_for(&boot, "pc-m", &server, "qemu", &["--set", &via, "--set", "action=backup", "--set", "error_wait=2"])
        .expect("build");
    let src = dir.join("pc.img");
    fs::write(&src, noise(18, 8 << 20)).expect("pc disk");
    let before = mitm.connections();
    let mut vm = Guest::new(&boot).disk(&src, "MITM0001").boot(&dir.join("pc.log")).expect("boots");
    let (line, _) = vm.console.expect("refusing the server at", STEP).expect("the PC refuses");
    assert!(line.contains("not the one this PC trusts") && line.contains(&server.fingerprint), "{line}");
    vm.wait_exit(STEP).expect("powers off");
    assert!(mitm.connections() > before, "the PC never reached the interceptor");
    assert_eq!((mitm.handshakes(), mitm.plaintext_bytes()), (0, 0), "the PC finished a handshake or sent bytes");
    assert!(!server.events().contains("pc=pc-m"), "the server heard of pc-m: {}", server.events());

    // The interceptor does relay for a client that trusts it: it reads
    // the request (token included) and the backup still completes.
    let out = cli(&mitm.fingerprint).expect("through an interceptor the client trusts");
    assert!(out.contains("complete"), "{out}");
    assert!(mitm.plaintext_bytes() > 4 << 20, "the interceptor read only {} bytes", mitm.plaintext_bytes());
}
