//! bootvault init: PID 1 of the bootvault initramfs.
//!
//! As PID 1 it runs [`pid1::main`] and never returns. Otherwise it is an
//! ordinary command-line tool over the same code, so every step can be
//! exercised on the host:
//!
//! ```text
//! init probe [--root DIR]                  disks (and links) as PID 1 would print them
//! init cmdline [--file CONF] [PARAM...]    the merged configuration, and its problems
//! init partitions FILE [--sector-size N]   the partition table of an image or device
//! init coldplug --modules DIR [--root DIR] what coldplug would load (dry run)
//! init lock-cost                          ms of one restore-password derivation (median min max of 5)
//! init seal-cost                          MB/s of sealing, opening and naming 1 MiB chunks (median of 5)
//! init version
//! ```

mod coldplug;
mod console;
mod disks;
mod early;
mod jobs;
mod net;
mod pid1;
mod sys;
#[cfg(test)]
mod testutil;
mod tui;
mod volumes;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bootvault_common::modules::Index;

fn main() -> ExitCode {
    if std::process::id() == 1 {
        pid1::main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("init: {e}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "usage: init probe [--root DIR] | cmdline [--file CONF] [PARAM...] | partitions FILE [--sector-size N] | coldplug --modules DIR [--root DIR] | lock-cost | seal-cost | version";

/// Takes `--name VALUE` out of `args`.
fn take_opt(args: &mut Vec<String>, name: &str) -> Result<Option<String>, String> {
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    if i + 1 >= args.len() {
        return Err(format!("{name} needs a value"));
    }
    let v = args.remove(i + 1);
    args.remove(i);
    Ok(Some(v))
}

fn cli(args: &[String]) -> Result<ExitCode, String> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(USAGE.into());
    };
    let mut rest = rest.to_vec();
    match cmd.as_str() {
        "version" | "--version" => {
            println!("bootvault init {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        "probe" => {
            let root = PathBuf::from(take_opt(&mut rest, "--root")?.unwrap_or_else(|| "/".into()));
            let disks = disks::probe(&root);
            print!("{}", disks::render(&disks));
            for l in net::links(&root) {
                println!(
                    "link {} {} carrier={}",
                    l.name,
                    bootvault_common::units::mac_string(l.mac),
                    net::has_carrier(&root, &l.name)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        "cmdline" => {
            let file = match take_opt(&mut rest, "--file")? {
                Some(p) => Some(std::fs::read_to_string(&p).map_err(|e| format!("reading {p}: {e}"))?),
                None => None,
            };
            let line = rest.join(" ");
            let (config, problems) = bootvault_common::config::Config::load(file.as_deref(), &line);
            print!("{}", config.to_file());
            for p in &problems {
                eprintln!("{}: {p}", if p.fatal { "error" } else { "warning" });
            }
            Ok(if problems.iter().any(|p| p.fatal) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        "partitions" => {
            let ss: u32 = take_opt(&mut rest, "--sector-size")?
                .map(|s| s.parse().map_err(|_| format!("bad --sector-size {s}")))
                .transpose()?
                .unwrap_or(512);
            let [file] = rest.as_slice() else {
                return Err(USAGE.into());
            };
            let path = Path::new(file);
            let bytes = device_size(path)?;
            match disks::read_table(path, ss, bytes)? {
                None => println!("{file}: no partition table"),
                Some(t) => print!("{t}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        "coldplug" => {
            let root = PathBuf::from(take_opt(&mut rest, "--root")?.unwrap_or_else(|| "/".into()));
            let dir = PathBuf::from(take_opt(&mut rest, "--modules")?.ok_or("coldplug needs --modules DIR")?);
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f)).map_err(|e| format!("reading {}: {e}", dir.join(f).display()))
            };
            let index = Index::parse(&read("modules.dep")?, &read("modules.alias")?).map_err(|e| e.to_string())?;
            struct DryRun;
            impl coldplug::Loader for DryRun {
                fn load(&mut self, _: &str, _: &Path) -> Result<(), String> {
                    Ok(())
                }
            }
            let opts =
                coldplug::Options { modules_dir: dir.clone(), timeout: Duration::from_secs(1), quiet: Duration::ZERO };
            let report = coldplug::coldplug(&root, &index, &opts, &mut DryRun);
            println!("would load: {}", report.loaded.join(" "));
            if !report.missing.is_empty() {
                println!("not available: {}", report.missing.join(" "));
            }
            Ok(ExitCode::SUCCESS)
        }
        "lock-cost" => {
            // What a restore password costs with this binary's build (the
            // init profile: opt-level z), for `make bench`.
            let p = bootvault_engine::lock::Params::DEFAULT;
            let mut ms = Vec::new();
            for _ in 0..5 {
                let t = std::time::Instant::now();
                bootvault_engine::lock::derive(b"correct horse battery staple", &[7u8; 16], &p)
                    .map_err(|e| e.to_string())?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            ms.sort_by(f64::total_cmp);
            println!("{:.1} {:.1} {:.1}", ms[2], ms[0], ms[4]);
            Ok(ExitCode::SUCCESS)
        }
        "seal-cost" => {
            // What client-side encryption costs per core with this binary's
            // build, next to the chunk hash every backup already pays.
            use bootvault_common::seal::DataKey;
            let key = DataKey::new(&[3; 32]);
            let chunk = bootvault_common::testdata::noise(11, 1 << 20);
            let id = key.chunk_id(&chunk);
            let sealed = key.seal_chunk(&id, &chunk, &[5; 24]);
            let rate = |f: &dyn Fn()| {
                let mut v: Vec<f64> = (0..5)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        for _ in 0..32 {
                            f();
                        }
                        32.0 * 1.048576 / t.elapsed().as_secs_f64()
                    })
                    .collect();
                v.sort_by(f64::total_cmp);
                v[2]
            };
            let seal = rate(&|| drop(std::hint::black_box(key.seal_chunk(&id, &chunk, &[5; 24]))));
            let open = rate(&|| drop(std::hint::black_box(key.open_chunk(&id, &sealed))));
            let keyed = rate(&|| {
                std::hint::black_box(key.chunk_id(&chunk));
            });
            let plain = rate(&|| {
                std::hint::black_box(bootvault_common::image::chunk_id(&chunk));
            });
            println!("seal {seal:.0} MB/s, open {open:.0} MB/s, keyed id {keyed:.0} MB/s, plain id {plain:.0} MB/s");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(USAGE.into()),
    }
}

/// Size of an image file or block device (BLKGETSIZE64 for devices).
fn device_size(path: &Path) -> Result<u64, String> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    f.seek(SeekFrom::End(0)).map_err(|e| format!("sizing {}: {e}", path.display()))
}
