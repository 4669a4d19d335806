//! Two servers side by side on one PostgreSQL database and one S3 bucket
//! (Garage), both started by the test on 127.0.0.1, one certificate. A
//! PC built with both URLs backs its disk up headless through the first,
//! which is killed (SIGKILL) in the middle of the upload: the PC carries
//! on through the second and the backup completes. Another PC restores
//! it onto a blank disk through whichever answers (the first is still
//! dead): every file reads back identical, and the restored filesystems
//! pass fsck.

use std::path::Path;
use std::time::Duration;

use bootvault_qemu_tests::*;
use bootvault_server::testenv::Postgres;
use bootvault_server::testenv_s3::Garage;

const STEP: Duration = Duration::from_secs(120);

fn shared(name: &str, db: &str, garage: &Garage, tls_of: Option<&Path>) -> ServerOpts {
    ServerOpts {
        name: Some(name.into()),
        args: vec!["--db".into(), db.into(), "--store".into(), garage.url("bootvault")],
        env: garage.env(),
        tls_of: tls_of.map(Path::to_owned),
        ..ServerOpts::default()
    }
}

#[test]
fn a_backup_survives_its_server_dying_and_restores_through_the_other() {
    let dir = scratch("scale");
    let pg = Postgres::start(&dir.join("pg")).expect("PostgreSQL");
    let garage = Garage::start(&dir.join("garage")).expect("Garage");
    let db = pg.new_database("bv_scale").expect("database");
    let mut a = Server::start_opts(&dir, &shared("server-a", &db, &garage, None)).expect("server a");
    let b = Server::start_opts(&dir, &shared("server-b", &db, &garage, Some(&a.data))).expect("server b");
    assert_eq!(a.fingerprint, b.fingerprint, "one certificate for both");
    assert!(
        a.out.all().iter().any(|l| l.contains("storage: PostgreSQL") && l.contains("chunks in s3://")),
        "{:?}",
        a.out.all()
    );
    // The first server slowed down, so the upload is still going when it dies.
    let slow = Throttle::start(a.port).expect("throttle");
    slow.set_rate(1 << 20);
    let urls = format!("{},{}", slow.guest_url(), b.guest_url());

    let source = make_source_disk(&dir, "gpt").expect("source disk");
    a.register("pc-scale", &mac_for("pc-scale")).expect("register");
    let data = a.data.display().to_string();
    let boot = dir.join("boot-backup");
    let settings = ["--data", &data, "--set", "action=backup", "--set", "name=nightly"];
    build_pc_env(&boot, "pc-scale", &urls, "qemu", &settings, &a.env).expect("build");
    let mut vm = Guest::new(&boot).disk(&source, "SRC00001").boot(&dir.join("backup.log")).expect("boots");
    let (answered, _) = vm.console.expect("answered", STEP).expect("a server answers");
    assert!(answered.contains(&format!(":{}", slow.port)), "the first server first: {answered}");
    vm.console.expect("bootvault: backup: vda", STEP).expect("the backup starts");
    std::thread::sleep(Duration::from_secs(4));
    assert!(!vm.console.all().iter().any(|l| l.contains("complete")), "the backup was still running");
    a.kill();
    let (done, _) = vm.console.expect("bootvault: backup 1 complete:", STEP).expect("completes through b");
    assert!(done.contains("partition 2 (ext4): used only"), "{done}");
    let moved = format!("did not answer; going on with {}", b.guest_url());
    assert!(vm.console.all().iter().any(|l| l.contains(&moved)), "the PC says it moved on: {:?}", vm.console.all());
    vm.wait_exit(STEP).expect("powers off");
    let listed = b.admin("backups", &["list", "--all"]).expect("list through b");
    assert!(listed.lines().any(|l| l.contains("pc-scale") && l.contains("complete")), "{listed}");

    // A restore through whichever answers: the first is still dead.
    b.register("pc-other", &mac_for("pc-other")).expect("register");
    b.admin("backups", &["grant", "1", "pc-other"]).expect("grant");
    let data = b.data.display().to_string();
    let boot = dir.join("boot-restore");
    let settings = ["--data", &data, "--set", "action=restore", "--set", "backup=1"];
    build_pc_env(&boot, "pc-other", &urls, "qemu", &settings, &b.env).expect("build");
    let target = dir.join("target.img");
    std::fs::write(&target, noise(5, (SOURCE_MIB << 20) as usize)).expect("target");
    let mut vm = Guest::new(&boot).disk(&target, "DST00001").boot(&dir.join("restore.log")).expect("boots");
    let (answered, _) = vm.console.expect("answered", STEP).expect("b answers");
    assert!(answered.contains(&format!(":{}", b.port)), "{answered}");
    vm.console.expect("restore of backup 1 complete", STEP).expect("restored");
    vm.wait_exit(STEP).expect("powers off");
    check_files(&target, &dir, "gpt").expect("every file restored");
}
