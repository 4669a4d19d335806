//! Used-only backups on disks made by the real tools: a GPT disk with a
//! FAT32 ESP, ext4, NTFS and swap, files written and marker files deleted
//! on each. The backup must leave every deleted marker out of the store,
//! the restore must give filesystems that the checkers pass with every
//! file intact, a `raw` backup must restore byte for byte, a restore onto
//! a disk that already holds the backup must write next to nothing, and a
//! damaged allocation map must take its partition whole and say why.
//!
//! Needs e2fsprogs, dosfstools, mtools, ntfs-3g (with FUSE) and sfdisk,
//! which `make deps` installs; as root for the NTFS mount.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bootvault_common::image;
use bootvault_common::testdata::noise;
use bootvault_engine::backup::{backup, BackupOptions};
use bootvault_engine::client::Client;
use bootvault_engine::device::Device;
use bootvault_engine::restore::{restore, Compare, RestoreOptions};
use bootvault_server::vault::{PcRow, Vault};

const MIB: u64 = 1 << 20;
/// Partition layout (start MiB, size MiB): ESP, ext4, NTFS, swap.
const PARTS: [(u64, u64); 4] = [(1, 40), (41, 40), (81, 40), (121, 8)];
const DISK_MIB: u64 = 130;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-used-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("temp dir");
    d
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (make deps installs the tools)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file's contents: text and noise that compress like real files do.
fn file_body(seed: u64, len: usize) -> Vec<u8> {
    let mut b: Vec<u8> = format!("file {seed}\n").repeat(len / 20).into_bytes();
    b.extend(noise(seed, len / 2));
    b.truncate(len);
    b
}

/// The marker a deleted file is full of (never in a kept file).
fn marker(fs: &str, n: u32) -> Vec<u8> {
    format!("BV-DELETED-{fs}-{n:04}|").repeat(4096).into_bytes()
}

fn kept_files() -> Vec<(String, Vec<u8>)> {
    (0..6).map(|i| (format!("keep{i}.bin"), file_body(100 + i, 100_000 + i as usize * 77_777))).collect()
}

fn make_fat(dir: &Path) -> PathBuf {
    let img = dir.join("esp.img");
    let f = fs::File::create(&img).expect("create");
    f.set_len(PARTS[0].1 * MIB).expect("size");
    run(Command::new("mkfs.vfat").args(["-F", "32", "-s", "1", "-n", "ESP"]).arg(&img));
    let mdir = dir.join("fat-files");
    fs::create_dir_all(&mdir).expect("dir");
    for n in 0..3 {
        let p = mdir.join(format!("gone{n}.dat"));
        fs::write(&p, marker("fat", n)).expect("write");
        run(Command::new("mcopy").arg("-i").arg(&img).arg(&p).arg("::/"));
    }
    for (name, body) in kept_files() {
        let p = mdir.join(&name);
        fs::write(&p, body).expect("write");
        run(Command::new("mcopy").arg("-i").arg(&img).arg(&p).arg("::/"));
    }
    for n in 0..3 {
        run(Command::new("mdel").arg("-i").arg(&img).arg(format!("::/gone{n}.dat")));
    }
    img
}

fn make_ext4(dir: &Path) -> PathBuf {
    let img = dir.join("root.img");
    let tree = dir.join("ext-files");
    fs::create_dir_all(tree.join("etc")).expect("dir");
    for (name, body) in kept_files() {
        fs::write(tree.join("etc").join(name), body).expect("write");
    }
    for n in 0..3 {
        fs::write(tree.join(format!("gone{n}.dat")), marker("ext", n)).expect("write");
    }
    let f = fs::File::create(&img).expect("create");
    f.set_len(PARTS[1].1 * MIB).expect("size");
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "root", "-d"]).arg(&tree).arg(&img));
    for n in 0..3 {
        run(Command::new("debugfs").args(["-w", "-R", &format!("rm /gone{n}.dat")]).arg(&img));
    }
    // debugfs leaves the summary counts to the checker, as an unmount would.
    let _ = Command::new("e2fsck").args(["-fy"]).arg(&img).output();
    run(Command::new("e2fsck").args(["-fn"]).arg(&img));
    img
}

fn make_ntfs(dir: &Path) -> PathBuf {
    let img = dir.join("win.img");
    let f = fs::File::create(&img).expect("create");
    f.set_len(PARTS[2].1 * MIB).expect("size");
    run(Command::new("mkntfs").args(["-Q", "-F", "-L", "Windows"]).arg(&img));
    let mnt = dir.join("ntfs-mnt");
    fs::create_dir_all(&mnt).expect("dir");
    run(Command::new("ntfs-3g").arg(&img).arg(&mnt));
    let write = || -> std::io::Result<()> {
        for n in 0..3 {
            fs::write(mnt.join(format!("gone{n}.dat")), marker("ntfs", n))?;
        }
        for (name, body) in kept_files() {
            fs::write(mnt.join(name), body)?;
        }
        for n in 0..3 {
            fs::remove_file(mnt.join(format!("gone{n}.dat")))?;
        }
        Ok(())
    };
    let written = write();
    run(Command::new("umount").arg(&mnt));
    written.expect("files on NTFS");
    img
}

/// The 130 MiB GPT disk with the four partitions and their files.
fn make_disk(dir: &Path) -> PathBuf {
    let disk = dir.join("disk.img");
    fs::write(&disk, noise(9, (DISK_MIB * MIB) as usize)).expect("disk");
    let script = format!(
        "label: gpt\nstart={}MiB, size={}MiB, type=U\nstart={}MiB, size={}MiB, type=L\nstart={}MiB, size={}MiB, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\nstart={}MiB, size={}MiB, type=S\n",
        PARTS[0].0, PARTS[0].1, PARTS[1].0, PARTS[1].1, PARTS[2].0, PARTS[2].1, PARTS[3].0, PARTS[3].1
    );
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (make deps installs fdisk)");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("script");
    assert!(child.wait().expect("sfdisk").success());
    let swap = dir.join("swap.img");
    fs::write(&swap, noise(77, (PARTS[3].1 * MIB) as usize)).expect("swap");
    run(Command::new("mkswap").arg(&swap));
    for (img, (start, _)) in [make_fat(dir), make_ext4(dir), make_ntfs(dir), swap].iter().zip(PARTS) {
        let bytes = fs::read(img).expect("read part");
        use std::os::unix::fs::FileExt;
        fs::OpenOptions::new().write(true).open(&disk).expect("open").write_all_at(&bytes, start * MIB).expect("place");
    }
    disk
}

fn partition(disk: &Path, n: usize, out: &Path) -> PathBuf {
    let all = fs::read(disk).expect("read disk");
    let (start, len) = (PARTS[n].0 * MIB, PARTS[n].1 * MIB);
    fs::write(out, &all[start as usize..(start + len) as usize]).expect("write part");
    out.to_owned()
}

/// Checks every filesystem of a restored disk and every kept file in it.
fn check_restored(dir: &Path, disk: &Path) {
    let esp = partition(disk, 0, &dir.join("r-esp.img"));
    run(Command::new("fsck.vfat").arg("-n").arg(&esp));
    let root = partition(disk, 1, &dir.join("r-root.img"));
    run(Command::new("e2fsck").arg("-fn").arg(&root));
    let win = partition(disk, 2, &dir.join("r-win.img"));
    run(Command::new("ntfsfix").arg("-n").arg(&win));
    let out = dir.join("out.bin");
    for (name, body) in kept_files() {
        let _ = fs::remove_file(&out);
        run(Command::new("mcopy").arg("-n").arg("-i").arg(&esp).arg(format!("::/{name}")).arg(&out));
        assert!(fs::read(&out).expect("fat file") == body, "FAT file {name} differs");
        run(Command::new("debugfs").args(["-R", &format!("dump /etc/{name} {}", out.display())]).arg(&root));
        assert!(fs::read(&out).expect("ext4 file") == body, "ext4 file {name} differs");
        let cat = Command::new("ntfscat").arg(&win).arg(format!("/{name}")).output().expect("ntfscat");
        assert!(cat.status.success() && cat.stdout == body, "NTFS file {name} differs");
    }
}

/// Every stored chunk, inflated.
fn store_contents(data: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for dir in fs::read_dir(data.join("chunks")).expect("chunks").flatten() {
        if !dir.path().is_dir() {
            continue;
        }
        for f in fs::read_dir(dir.path()).expect("chunk dir").flatten() {
            let blob = fs::read(f.path()).expect("blob");
            out.push(image::decode_blob(&blob, 16 << 20).expect("a stored blob inflates"));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn deleted_found(data: &Path, extents: &[Vec<u8>]) -> Vec<String> {
    let chunks = store_contents(data);
    let mut found = Vec::new();
    for fs in ["fat", "ext", "ntfs"] {
        let m = format!("BV-DELETED-{fs}-");
        if chunks.iter().chain(extents).any(|c| contains(c, m.as_bytes())) {
            found.push(fs.to_owned());
        }
    }
    found
}

#[test]
fn used_only_backups_leave_deleted_files_out_and_restore_every_file() {
    let dir = temp_dir("disk");
    let data = dir.join("data");
    let token = {
        let v = Vault::open(&data).expect("vault");
        v.add_pc(&PcRow::new("pc-u", "52:54:00:00:10:01")).expect("add pc").token
    };
    let port = bootvault_server::spawn_on_loopback(&data, Default::default()).expect("server");
    let client = Client::new(&format!("http://127.0.0.1:{port}"), "pc-u", &token);
    let src = make_disk(&dir);
    // The markers are on the source disk: the search below can fail.
    let raw_disk = fs::read(&src).expect("read");
    for fs in ["fat", "ext", "ntfs"] {
        assert!(contains(&raw_disk, format!("BV-DELETED-{fs}-").as_bytes()), "no deleted {fs} marker on the disk");
    }
    drop(raw_disk);

    let dev = Device::open(&src, false).expect("open");
    let r = backup(&dev, &client, &BackupOptions::new("pc-u", "used"), &mut |_| {}).expect("backup");
    let kinds: Vec<(String, bool)> = r.partitions.iter().map(|p| (p.fs.clone(), p.used_only)).collect();
    assert_eq!(
        kinds,
        [("vfat", true), ("ext4", true), ("ntfs", true), ("swap", true)].map(|(k, u)| (k.to_owned(), u)),
        "{:#?}",
        r.partitions
    );
    assert!(r.unused_bytes > 60 * MIB, "only {} bytes left out", r.unused_bytes);
    assert!(r.summary().contains("partition 2 (ext4): used only"), "{}", r.summary());
    let m = bootvault_engine::restore::fetch_manifest(&client, r.id, None).expect("manifest");
    assert_eq!(m.partitions, r.partitions);
    let extents: Vec<Vec<u8>> = m.extents.iter().map(|e| e.data.clone()).collect();
    assert_eq!(deleted_found(&data, &extents), Vec::<String>::new(), "deleted files reached the store");

    // Restore onto a disk full of noise: every filesystem checks clean, every file is there.
    let target = dir.join("target.img");
    fs::write(&target, noise(10, (DISK_MIB * MIB) as usize)).expect("target");
    let tdev = Device::open(&target, true).expect("open target");
    let full = restore(&tdev, &client, r.id, &RestoreOptions::default(), &mut |_| {}).expect("restore");
    assert!(full.unused_bytes > 0 && full.discarded_bytes == full.unused_bytes, "{full:?}");
    check_restored(&dir, &target);

    // Again onto the same disk: only reading, next to nothing written or fetched.
    let again = restore(&tdev, &client, r.id, &RestoreOptions::default(), &mut |_| {}).expect("again");
    assert_eq!(again.fetched_chunks, 0, "{again:?}");
    assert!(again.written_bytes < DISK_MIB * MIB / 100, "{again:?}");
    // Never comparing: everything fetched and written, the same result.
    let opts = RestoreOptions { compare: Compare::Never, verify: true, ..Default::default() };
    let never = restore(&tdev, &client, r.id, &opts, &mut |_| {}).expect("restore without comparing");
    assert_eq!((never.compared_bytes, never.skipped_chunks), (0, 0), "{never:?}");
    check_restored(&dir, &target);

    // mode=raw: every byte, the deleted files included; restored byte for byte.
    let mut raw = BackupOptions::new("pc-u", "raw");
    raw.raw = true;
    let rr = backup(&dev, &client, &raw, &mut |_| {}).expect("raw backup");
    assert!(rr.partitions.iter().all(|p| !p.used_only && p.note == "mode=raw"), "{:#?}", rr.partitions);
    assert_eq!(rr.unused_bytes, 0);
    let rtarget = dir.join("raw-target.img");
    fs::write(&rtarget, noise(11, (DISK_MIB * MIB) as usize)).expect("target");
    let rdev = Device::open(&rtarget, true).expect("open");
    restore(&rdev, &client, rr.id, &RestoreOptions::default(), &mut |_| {}).expect("raw restore");
    assert!(fs::read(&rtarget).expect("read") == fs::read(&src).expect("read"), "raw restore is not byte for byte");
    assert_eq!(deleted_found(&data, &[]), ["fat", "ext", "ntfs"], "the raw backup keeps deleted files");

    // A damaged ext4 map (a block bitmap bit flipped): that partition is taken whole, and the result says why.
    let root_start = PARTS[1].0 * MIB;
    let out = run(Command::new("dumpe2fs").arg(partition(&src, 1, &dir.join("root-copy.img"))));
    let bitmap_block: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Block bitmap at ").and_then(|r| r.split([' ', ',']).next()?.parse().ok()))
        .expect("dumpe2fs names the first block bitmap");
    let block_size: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("Block size:").and_then(|r| r.trim().parse().ok()))
        .expect("dumpe2fs gives the block size");
    let damaged = dir.join("damaged.img");
    fs::copy(&src, &damaged).expect("copy");
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().read(true).write(true).open(&damaged).expect("open");
        // Blocks 8000-8007 of group 0 (free at the end of the data): one now reads as used.
        let at = root_start + bitmap_block * block_size + 1000;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).expect("read");
        b[0] ^= 0x10;
        f.write_all_at(&b, at).expect("write");
    }
    let ddev = Device::open(&damaged, false).expect("open");
    let dr = backup(&ddev, &client, &BackupOptions::new("pc-u", "damaged"), &mut |_| {}).expect("backup");
    let ext = &dr.partitions[1];
    assert!(!ext.used_only && !ext.note.is_empty(), "{ext:#?}");
    assert!(dr.summary().contains("partition 2 (ext4): whole, "), "{}", dr.summary());
    assert!(dr.partitions[0].used_only && dr.partitions[2].used_only, "{:#?}", dr.partitions);
    let _ = fs::remove_dir_all(&dir);
}
