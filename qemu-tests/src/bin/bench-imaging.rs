//! `make bench` (imaging part): backup and restore of disks that look like
//! users' disks, side by side with what users would pick instead, in one
//! run, as ratios.
//!
//! Two disks, built once (as root: loop and FUSE mounts) and kept in
//! `~/.cache/bootvault/bench`:
//! * `linux`: 2 GiB MBR, an installed Linux system (this host's own
//!   `/etc`, `/usr/bin`, `/usr/sbin`, `/usr/share`, Python and GCC trees)
//!   on ext4 after 400 MiB of other files were written and deleted, plus
//!   a swap partition holding binaries as swapped-out memory would;
//! * `mixed`: 1 GiB GPT, a FAT32 ESP, ext4 and NTFS, each filled with a
//!   mix of text, binaries and already-compressed files, then half of them
//!   deleted.
//!
//! Contenders: our engine on the host against a local server (what the PC
//! runs), and into a local store, a directory as on a USB drive or a
//! second disk (`backup --to DIR`, `restore --from DIR`); partclone per partition piped to `pigz -1` (what Clonezilla and
//! FOG run; swap is not imaged, as Clonezilla recreates it); `dd | zstd -1
//! -T2`. Restores: ours onto a blank file, `zstd -d`, `pigz -d |
//! partclone -r`, and ours again onto the disk it just restored
//! (differential), each from the server and from the local store. Last,
//! the deleted files' markers are searched in both our stores (they must
//! not be there).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootvault_qemu_tests::*;

const MIB: u64 = 1 << 20;

/// One disk of the bench: its partitions as (start MiB, size MiB, fs).
struct Disk {
    name: &'static str,
    mib: u64,
    table: &'static str,
    parts: &'static [(u64, u64, &'static str)],
}

const LINUX: Disk = Disk { name: "linux", mib: 2048, table: "dos", parts: &[(1, 1792, "ext4"), (1793, 255, "swap")] };
const MIXED: Disk =
    Disk { name: "mixed", mib: 1024, table: "gpt", parts: &[(1, 100, "vfat"), (101, 412, "ext4"), (513, 510, "ntfs")] };

fn sh(script: &str) -> Result<()> {
    run(Command::new("bash").args(["-o", "pipefail", "-c", script])).map(|_| ())
}

fn timed(script: &str) -> Result<Duration> {
    let start = Instant::now();
    sh(script)?;
    Ok(start.elapsed())
}

/// Runs a measurement `BENCH_RUNS` times (default 3); the median wall time.
fn median(mut one: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(one()?);
    }
    eprintln!("  runs: {:?}", times.iter().map(|t| format!("{:.2} s", t.as_secs_f64())).collect::<Vec<_>>());
    times.sort();
    Ok(times[runs / 2])
}

fn size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The marker every deleted file of the bench starts with.
fn marker(disk: &str, fs: &str) -> String {
    format!("BV-BENCH-DELETED-{disk}-{fs}")
}

fn cache_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/bootvault/bench")
}

/// Fills the mounted filesystem at `mnt` with about `mib` MiB of files
/// copied from `sources` (in order, whole files, skipping what does not
/// fit) into `mnt/sub`, starting each with a marker line when `mark`.
fn fill(mnt: &Path, sub: &str, sources: &[&str], mib: u64, mark: Option<&str>) -> Result<u64> {
    let dest = mnt.join(sub);
    fs::create_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut total = 0u64;
    let mut n = 0u32;
    let mut stack: Vec<PathBuf> = sources.iter().rev().map(PathBuf::from).collect();
    while let Some(p) = stack.pop() {
        if total >= mib * MIB {
            break;
        }
        let Ok(meta) = fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> =
                fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()).collect();
            entries.sort();
            stack.extend(entries.into_iter().rev());
        } else if meta.is_file() && meta.len() > 0 && total + meta.len() <= mib * MIB {
            let Ok(mut body) = fs::read(&p) else { continue };
            if let Some(m) = mark {
                let mut with = format!("{m}-{n}\n").into_bytes();
                with.append(&mut body);
                body = with;
            }
            let name = format!("{n:06}-{}", p.file_name().and_then(|s| s.to_str()).unwrap_or("f"));
            fs::write(dest.join(&name), &body).map_err(|e| format!("writing {name}: {e}"))?;
            total += body.len() as u64;
            n += 1;
        }
    }
    Ok(total)
}

/// Mounts `img` at `mnt` (ntfs-3g for NTFS), runs `f`, unmounts.
fn with_mount(img: &Path, fs_kind: &str, mnt: &Path, f: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    fs::create_dir_all(mnt).map_err(|e| e.to_string())?;
    if fs_kind == "ntfs" {
        run(Command::new("ntfs-3g").arg(img).arg(mnt))?;
    } else {
        run(Command::new("mount").args(["-o", "loop", "-t", fs_kind]).arg(img).arg(mnt))?;
    }
    let r = f(mnt);
    let _ = Command::new("sync").status();
    run(Command::new("umount").arg(mnt))?;
    r
}

fn mkfs(img: &Path, kind: &str, mib: u64) -> Result<()> {
    let f = fs::File::create(img).map_err(|e| e.to_string())?;
    f.set_len(mib * MIB).map_err(|e| e.to_string())?;
    drop(f);
    match kind {
        "ext4" => run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(img)),
        "vfat" => run(Command::new("mkfs.vfat").args(["-F", "32"]).arg(img)),
        "ntfs" => run(Command::new("mkntfs").args(["-Q", "-F"]).arg(img)),
        _ => Err(format!("no mkfs for {kind}")),
    }
    .map(|_| ())
}

/// Builds one partition's image at `img`.
fn make_part(d: &Disk, kind: &str, mib: u64, img: &Path, work: &Path) -> Result<()> {
    let mnt = work.join("mnt");
    let mark = marker(d.name, kind);
    if kind == "swap" {
        // Swapped-out memory: program text and data.
        sh(&format!(
            "cat /usr/lib/x86_64-linux-gnu/*.so* 2>/dev/null | head -c {} > {} ; truncate -s {}M {}",
            mib * MIB,
            img.display(),
            mib,
            img.display()
        ))?;
        run(Command::new("mkswap").arg(img))?;
        return Ok(());
    }
    mkfs(img, kind, mib)?;
    if d.name == "linux" {
        // A system that has lived: packages downloaded and removed first.
        return with_mount(img, kind, &mnt, |m| {
            fill(m, "var/cache/old", &["/usr/lib/x86_64-linux-gnu"], 400, Some(&mark))?;
            sh("sync")?;
            for dir in ["/etc", "/usr/bin", "/usr/sbin", "/usr/share", "/usr/lib/python3", "/usr/lib/gcc"] {
                let to = m.join(dir.trim_start_matches('/'));
                fs::create_dir_all(to.parent().ok_or("no parent")?).map_err(|e| e.to_string())?;
                sh(&format!("cp -a {dir} {}", to.display()))?;
            }
            fs::remove_dir_all(m.join("var/cache/old")).map_err(|e| e.to_string())
        });
    }
    // Mixed: fill to about 85 %, then delete every other file.
    let budget = mib * 85 / 100;
    let sources = ["/usr/share/doc", "/usr/lib/x86_64-linux-gnu", "/usr/share/locale", "/usr/bin", "/usr/share/man"];
    if kind == "vfat" {
        // No vfat in every kernel: staged on the host, then mtools.
        let stage = work.join("stage");
        let _ = fs::remove_dir_all(&stage);
        fill(&stage, "gone", &sources[1..], budget / 2, Some(&mark))?;
        fill(&stage, "kept", &sources, budget / 2, None)?;
        run(Command::new("mcopy")
            .arg("-s")
            .arg("-i")
            .arg(img)
            .arg(stage.join("gone"))
            .arg(stage.join("kept"))
            .arg("::/"))?;
        run(Command::new("mdeltree").arg("-i").arg(img).arg("::/gone"))?;
        return fs::remove_dir_all(&stage).map_err(|e| e.to_string());
    }
    with_mount(img, kind, &mnt, |m| {
        fill(m, "gone", &sources[1..], budget / 2, Some(&mark))?;
        fill(m, "kept", &sources, budget / 2, None)?;
        sh("sync")?;
        fs::remove_dir_all(m.join("gone")).map_err(|e| e.to_string())
    })
}

/// Builds (or reuses) a bench disk; returns the disk and its partition images.
fn make(d: &Disk) -> Result<(PathBuf, Vec<PathBuf>)> {
    let dir = cache_dir().join(d.name);
    let disk = dir.join("disk.img");
    let parts: Vec<PathBuf> = (0..d.parts.len()).map(|i| dir.join(format!("part{}.img", i + 1))).collect();
    if disk.exists() && parts.iter().all(|p| p.exists()) {
        return Ok((disk, parts));
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    eprintln!("building the {} bench disk in {} (once)", d.name, dir.display());
    let mut script = format!("label: {}\n", d.table);
    for &(start, mib, kind) in d.parts {
        let ty = match (d.table, kind) {
            ("dos", "swap") => "82",
            ("dos", _) => "83",
            (_, "vfat") => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            (_, "ntfs") => "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            _ => "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        };
        script += &format!("start={}, size={}, type={ty}\n", start * 2048, mib * 2048);
    }
    let partial = dir.join("disk.img.partial");
    make_disk(&partial, d.mib, &script)?;
    for (i, &(start, mib, kind)) in d.parts.iter().enumerate() {
        let img = dir.join(format!("part{}.img.partial", i + 1));
        make_part(d, kind, mib, &img, &dir)?;
        sh(&format!(
            "dd if={} of={} bs=4M conv=notrunc,sparse status=none seek={} oflag=seek_bytes",
            img.display(),
            partial.display(),
            start * MIB
        ))?;
        fs::rename(&img, &parts[i]).map_err(|e| e.to_string())?;
    }
    fs::rename(&partial, &disk).map_err(|e| e.to_string())?;
    Ok((disk, parts))
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    let mut at = 0;
    while let Some(i) = hay[at..].iter().position(|&b| b == needle[0]) {
        let start = at + i;
        if hay[start..].starts_with(needle) {
            return true;
        }
        at = start + 1;
    }
    false
}

/// The filesystems of `d` whose deleted-file marker occurs in an inflated
/// chunk of the store.
fn markers_in_store(chunks: &Path, d: &Disk) -> Vec<&'static str> {
    let mut found: Vec<&'static str> = Vec::new();
    let mut stack = vec![chunks.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(blob) = fs::read(&p) else { continue };
            let Ok(plain) = bootvault_common::image::decode_blob(&blob, 16 << 20) else { continue };
            for &(_, _, kind) in d.parts {
                if !found.contains(&kind) && find(&plain, marker(d.name, kind).as_bytes()) {
                    found.push(kind);
                }
            }
        }
    }
    found
}

struct Row {
    what: String,
    wall: Duration,
    bytes: u64,
}

fn bench_disk(d: &Disk, work: &Path) -> Result<()> {
    let (disk, parts) = make(d)?;
    let bin = bootvault_bin();
    let work = work.join(d.name);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let warm = |p: &Path| sh(&format!("cat {} > /dev/null", p.display()));
    let disk_bytes = d.mib * MIB;

    // Ours: a fresh server for each run, so nothing is deduplicated against an earlier run.
    let out = work.join("ours.out");
    let mut stored = 0;
    let mut run_no = 0;
    let ours_backup = median(|| {
        run_no += 1;
        let sdir = work.join(format!("ours-{run_no}"));
        fs::create_dir_all(&sdir).map_err(|e| e.to_string())?;
        let server = Server::start(&sdir)?;
        server.register("bench", &mac_for("bench"))?;
        let token = server.token("bench")?;
        warm(&disk)?;
        let t = timed(&format!(
            "{} backup --disk {} --server {} --fingerprint {} --pc bench --token {token} --name full > {}",
            bin.display(),
            disk.display(),
            server.url,
            server.fingerprint,
            out.display()
        ))?;
        stored = dir_size(&server.data.join("chunks"));
        drop(server);
        let _ = fs::remove_dir_all(&sdir);
        Ok(t)
    })?;
    let summary = fs::read_to_string(&out).unwrap_or_default();
    // The server the restores read from.
    let server = Server::start(&work)?;
    server.register("bench", &mac_for("bench"))?;
    let token = server.token("bench")?;
    sh(&format!(
        "{} backup --disk {} --server {} --fingerprint {} --pc bench --token {token} --name full > /dev/null",
        bin.display(),
        disk.display(),
        server.url,
        server.fingerprint
    ))?;

    // Ours into a local store (the directory of a mounted drive), on the
    // same filesystem as the server's data: a fresh directory for each run.
    let local_cmd = |dir: &Path, out: &Path| {
        format!(
            "{} backup --disk {} --to {} --pc bench --name full > {}",
            bin.display(),
            disk.display(),
            dir.display(),
            out.display()
        )
    };
    let local_out = work.join("local.out");
    let mut local_stored = 0;
    let mut local_no = 0;
    let local_backup = median(|| {
        local_no += 1;
        let dir = work.join(format!("local-{local_no}"));
        let _ = fs::remove_dir_all(&dir);
        warm(&disk)?;
        let t = timed(&local_cmd(&dir, &local_out))?;
        local_stored = dir_size(&dir.join("chunks"));
        let _ = fs::remove_dir_all(&dir);
        Ok(t)
    })?;
    let local_summary = fs::read_to_string(&local_out).unwrap_or_default();
    // The local store the restores read from.
    let local = work.join("local");
    sh(&local_cmd(&local, Path::new("/dev/null")))?;

    // partclone per partition | pigz -1 (swap is recreated, not imaged).
    for p in &parts {
        warm(p)?;
    }
    let mut pc_script = String::new();
    let mut pc_outputs = Vec::new();
    for (i, &(_, _, kind)) in d.parts.iter().enumerate() {
        if kind == "swap" {
            continue;
        }
        let o = work.join(format!("pc{}.gz", i + 1));
        let tool = format!("partclone.{kind}");
        pc_script +=
            &format!("{tool} -q -c -s {} -o - 2>/dev/null | pigz -1 -p 2 > {}\n", parts[i].display(), o.display());
        pc_outputs.push((o, tool, i));
    }
    let pc_backup = median(|| timed(&pc_script))?;
    let pc_bytes: u64 = pc_outputs.iter().map(|(o, _, _)| size(o)).sum();

    let zst = work.join("disk.zst");
    let zstd_backup = median(|| {
        warm(&disk)?;
        timed(&format!("dd if={} bs=4M status=none | zstd -q -1 -T2 > {}", disk.display(), zst.display()))
    })?;

    // Restores onto blank files.
    let target = work.join("target.img");
    let blank = |p: &Path| sh(&format!("rm -f {0}; truncate -s {1} {0}", p.display(), disk_bytes));
    blank(&target)?;
    let restore_cmd = |compare: &str| {
        format!(
            "{} restore --disk {} --server {} --fingerprint {} --pc bench --token {token} --backup latest --compare {compare} > {}",
            bin.display(),
            target.display(),
            server.url,
            server.fingerprint,
            work.join("restore.out").display()
        )
    };
    let ours_restore = median(|| {
        blank(&target)?;
        timed(&restore_cmd("auto"))
    })?;
    let restore_summary = fs::read_to_string(work.join("restore.out")).unwrap_or_default();
    sh("sync")?;
    let ours_diff = median(|| timed(&restore_cmd("auto")))?;
    let diff_summary = fs::read_to_string(work.join("restore.out")).unwrap_or_default();
    let local_restore_cmd = format!(
        "{} restore --disk {} --from {} --pc bench --backup latest --compare auto > {}",
        bin.display(),
        target.display(),
        local.display(),
        work.join("local-restore.out").display()
    );
    let local_restore = median(|| {
        blank(&target)?;
        timed(&local_restore_cmd)
    })?;
    let local_restore_summary = fs::read_to_string(work.join("local-restore.out")).unwrap_or_default();
    sh("sync")?;
    let local_diff = median(|| timed(&local_restore_cmd))?;
    let local_diff_summary = fs::read_to_string(work.join("local-restore.out")).unwrap_or_default();
    let zst_target = work.join("zstd-target.img");
    let zstd_restore = median(|| {
        blank(&zst_target)?;
        timed(&format!(
            "zstd -q -d -c {} | dd of={} bs=4M conv=notrunc,sparse status=none",
            zst.display(),
            zst_target.display()
        ))
    })?;
    let _ = fs::remove_file(&zst_target);
    let pc_restore = median(|| {
        let mut pcr = String::new();
        for (o, tool, i) in &pc_outputs {
            let t = work.join(format!("pc-target{}.img", i + 1));
            blank(&t)?;
            pcr += &format!("pigz -d -c {} | {tool} -q -r -s - -O {} 2>/dev/null\n", o.display(), t.display());
        }
        timed(&pcr)
    })?;

    // Nothing deleted reached our store.
    let mut leaked = markers_in_store(&server.data.join("chunks"), d);
    for kind in markers_in_store(&local.join("chunks"), d) {
        if !leaked.contains(&kind) {
            leaked.push(kind);
        }
    }
    let raw_has_markers = fs::read(&disk).map(|b| find(&b, b"BV-BENCH-DELETED-")).unwrap_or(false);

    let rows = [
        Row { what: "bootvault backup".into(), wall: ours_backup, bytes: stored },
        Row { what: "bootvault backup --to DIR (local store)".into(), wall: local_backup, bytes: local_stored },
        Row { what: "partclone per partition | pigz -1 -p 2".into(), wall: pc_backup, bytes: pc_bytes },
        Row { what: "dd | zstd -1 -T2".into(), wall: zstd_backup, bytes: size(&zst) },
    ];
    println!("\n### {} disk: {} MiB, {}\n", d.name, d.mib, d.parts.iter().map(|p| p.2).collect::<Vec<_>>().join(" + "));
    println!("| backup | wall | stored | ours/peer time | ours/peer size |\n| --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {:.2} s | {} | {:.2} | {:.2} |",
            r.what,
            r.wall.as_secs_f64(),
            bootvault_common::units::human_bytes(r.bytes),
            ours_backup.as_secs_f64() / r.wall.as_secs_f64(),
            stored as f64 / r.bytes.max(1) as f64
        );
    }
    println!("\n| restore | wall | ours/peer time |\n| --- | --- | --- |");
    for (what, wall) in [
        ("bootvault restore onto a blank disk", ours_restore),
        ("zstd -d | dd", zstd_restore),
        ("pigz -d | partclone -r, per partition", pc_restore),
        ("bootvault restore onto the disk it just restored (differential)", ours_diff),
        ("bootvault restore --from DIR (local store) onto a blank disk", local_restore),
        ("bootvault restore --from DIR onto the disk it just restored (differential)", local_diff),
    ] {
        println!("| {what} | {:.2} s | {:.2} |", wall.as_secs_f64(), ours_restore.as_secs_f64() / wall.as_secs_f64());
    }
    println!("\nours, backup: {}", summary.trim());
    println!("ours, restore: {}", restore_summary.trim());
    println!("ours, differential: {}", diff_summary.trim());
    println!("ours, local store, backup: {}", local_summary.trim());
    println!("ours, local store, restore: {}", local_restore_summary.trim());
    println!("ours, local store, differential: {}", local_diff_summary.trim());
    println!(
        "local store / server, time: backup {:.2}, restore {:.2}, differential {:.2}; stored bytes {:.2}",
        local_backup.as_secs_f64() / ours_backup.as_secs_f64(),
        local_restore.as_secs_f64() / ours_restore.as_secs_f64(),
        local_diff.as_secs_f64() / ours_diff.as_secs_f64(),
        local_stored as f64 / stored.max(1) as f64
    );
    println!(
        "differential restore: {:.1}x faster than the full restore",
        ours_restore.as_secs_f64() / ours_diff.as_secs_f64()
    );
    println!(
        "deleted files: markers on the source disk: {}; found in our store: {}",
        if raw_has_markers { "yes" } else { "NO (the bench disk is wrong)" },
        if leaked.is_empty() { "none".to_owned() } else { leaked.join(", ") }
    );
    if !leaked.is_empty() {
        return Err(format!("deleted files of {} reached the store", leaked.join(", ")));
    }
    drop(server);
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

fn main() {
    let work = workspace().join("target/bench/imaging");
    let disks: Vec<&Disk> = match std::env::var("BENCH_DISKS").ok().as_deref() {
        Some("linux") => vec![&LINUX],
        Some("mixed") => vec![&MIXED],
        _ => vec![&LINUX, &MIXED],
    };
    println!("### Imaging real-looking disks (host, `make bench`: target/release/bench-imaging)");
    for d in disks {
        if let Err(e) = bench_disk(d, &work) {
            eprintln!("bench-imaging failed on the {} disk: {e}", d.name);
            std::process::exit(1);
        }
    }
}
