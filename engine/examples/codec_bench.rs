//! Which chunk codec to use: single-thread compress and decompress speed and
//! the stored size of candidate codecs over the same 1 MiB chunks (a
//! measurement, not a test).
//!
//! The sample is the concatenation of the named files, directories (walked
//! recursively, entries sorted by name, regular files only, symlinks not
//! followed) and `@list` files (one path per line), up to `--max-mib`. It is
//! cut into 1 MiB chunks like a disk; all-zero chunks are left out because
//! the engine never stores them. A codec output that is not smaller than the
//! chunk is stored raw (one tag byte + the chunk), as `encode_blob` does, and
//! counted so in the ratio and copied on decode.
//!
//! `cargo run --release -p bootvault-engine --example codec_bench -- [--max-mib N] [--runs N] PATH...`

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

const CHUNK: usize = 1 << 20;

type Encode = Box<dyn FnMut(&[u8]) -> Result<Vec<u8>, String>>;
type Decode = Box<dyn FnMut(&[u8], &mut [u8]) -> Result<usize, String>>;

struct Codec {
    name: &'static str,
    encode: Encode,
    decode: Decode,
}

fn codecs() -> Result<Vec<Codec>, String> {
    let mut list = vec![Codec {
        name: "miniz_oxide deflate 1 (the first images)",
        encode: Box::new(|p| Ok(miniz_oxide::deflate::compress_to_vec(p, 1))),
        decode: Box::new(|b, out| {
            let v = miniz_oxide::inflate::decompress_to_vec_with_limit(b, out.len())
                .map_err(|e| format!("inflate: {:?}", e.status))?;
            out[..v.len()].copy_from_slice(&v);
            Ok(v.len())
        }),
    }];

    let mut deflate = flate2::Compress::new(flate2::Compression::new(1), false);
    let mut inflate = flate2::Decompress::new(false);
    list.push(Codec {
        name: "zlib-rs deflate 1 (flate2)",
        encode: Box::new(move |p| {
            deflate.reset();
            let mut v = Vec::with_capacity(p.len() + p.len() / 8 + 64);
            let st = deflate.compress_vec(p, &mut v, flate2::FlushCompress::Finish).map_err(|e| e.to_string())?;
            if st != flate2::Status::StreamEnd {
                return Err(format!("deflate stopped early: {st:?}"));
            }
            Ok(v)
        }),
        decode: Box::new(move |b, out| {
            inflate.reset(false);
            let st = inflate.decompress(b, out, flate2::FlushDecompress::Finish).map_err(|e| e.to_string())?;
            if st != flate2::Status::StreamEnd {
                return Err(format!("inflate stopped early: {st:?}"));
            }
            usize::try_from(inflate.total_out()).map_err(|e| e.to_string())
        }),
    });

    list.push(Codec {
        name: "lz4_flex block",
        encode: Box::new(|p| Ok(lz4_flex::block::compress(p))),
        decode: Box::new(|b, out| lz4_flex::block::decompress_into(b, out).map_err(|e| e.to_string())),
    });

    for level in [-1, 1, 2, 3] {
        let name: &'static str = match level {
            -1 => "zstd -1 (C libzstd, fast)",
            1 => "zstd 1 (C libzstd, the default)",
            2 => "zstd 2 (C libzstd)",
            _ => "zstd 3 (C libzstd)",
        };
        let mut c = zstd::bulk::Compressor::new(level).map_err(|e| e.to_string())?;
        let mut d = zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?;
        list.push(Codec {
            name,
            encode: Box::new(move |p| {
                let mut v = Vec::with_capacity(zstd::zstd_safe::compress_bound(p.len()));
                c.compress_to_buffer(p, &mut v).map_err(|e| e.to_string())?;
                Ok(v)
            }),
            decode: Box::new(move |b, out| d.decompress_to_buffer(b, out).map_err(|e| e.to_string())),
        });
    }

    // The pure-Rust decoder on frames from the C encoder at level 1: what a
    // restore would cost if only decoding were pure Rust.
    let mut c1 = zstd::bulk::Compressor::new(1).map_err(|e| e.to_string())?;
    let mut rd = ruzstd::decoding::FrameDecoder::new();
    list.push(Codec {
        name: "zstd 1 (C) + ruzstd decode",
        encode: Box::new(move |p| {
            let mut v = Vec::with_capacity(zstd::zstd_safe::compress_bound(p.len()));
            c1.compress_to_buffer(p, &mut v).map_err(|e| e.to_string())?;
            Ok(v)
        }),
        decode: Box::new(move |b, out| rd.decode_all(b, out).map_err(|e| e.to_string())),
    });

    let mut rd2 = ruzstd::decoding::FrameDecoder::new();
    list.push(Codec {
        name: "ruzstd Fastest (pure Rust)",
        encode: Box::new(|p| Ok(ruzstd::encoding::compress_to_vec(p, ruzstd::encoding::CompressionLevel::Fastest))),
        decode: Box::new(move |b, out| rd2.decode_all(b, out).map_err(|e| e.to_string())),
    });
    Ok(list)
}

struct Args {
    max_bytes: usize,
    runs: usize,
    paths: Vec<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { max_bytes: 400 * CHUNK, runs: 1, paths: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        let mut num = |flag: &str| -> Result<usize, String> {
            it.next().and_then(|v| v.parse().ok()).ok_or(format!("{flag} needs a number"))
        };
        match s.as_str() {
            "--max-mib" => a.max_bytes = num("--max-mib")? * CHUNK,
            "--runs" => a.runs = num("--runs")?.max(1),
            _ => match s.strip_prefix('@') {
                Some(list) => {
                    let text = fs::read_to_string(list).map_err(|e| format!("reading {list}: {e}"))?;
                    a.paths.extend(text.lines().filter(|l| !l.is_empty()).map(PathBuf::from));
                }
                None => a.paths.push(PathBuf::from(s)),
            },
        }
    }
    if a.paths.is_empty() {
        return Err("usage: codec_bench [--max-mib N] [--runs N] PATH|@LIST...".into());
    }
    Ok(a)
}

/// Appends `path` (a file, or a directory walked in name order) to `out`
/// until `out` holds `max` bytes. Unreadable entries are skipped.
fn gather(path: &Path, out: &mut Vec<u8>, max: usize) {
    if out.len() >= max {
        return;
    }
    let Ok(meta) = fs::symlink_metadata(path) else { return };
    if meta.is_dir() {
        let Ok(rd) = fs::read_dir(path) else { return };
        let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for n in names {
            gather(&n, out, max);
        }
    } else if meta.is_file() {
        if let Ok(f) = fs::File::open(path) {
            let want = (max - out.len()) as u64;
            let _ = f.take(want).read_to_end(out);
        }
    }
}

struct Row {
    name: &'static str,
    comp_mbs: f64,
    decomp_mbs: f64,
    ratio: f64,
    raw_chunks: usize,
}

fn measure(codec: &mut Codec, chunks: &[&[u8]], runs: usize) -> Result<Row, String> {
    let plain: usize = chunks.iter().map(|c| c.len()).sum();
    let mut best_c = f64::MAX;
    let mut blobs: Vec<Option<Vec<u8>>> = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        blobs = chunks
            .iter()
            .map(|c| (codec.encode)(c).map(|b| (b.len() < c.len()).then_some(b)))
            .collect::<Result<_, _>>()?;
        best_c = best_c.min(t.elapsed().as_secs_f64());
    }
    let stored: usize = blobs.iter().zip(chunks).map(|(b, c)| 1 + b.as_ref().map_or(c.len(), Vec::len)).sum();
    let raw_chunks = blobs.iter().filter(|b| b.is_none()).count();

    let mut out = vec![0u8; CHUNK];
    let mut best_d = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        for (b, c) in blobs.iter().zip(chunks) {
            match b {
                Some(b) => {
                    (codec.decode)(b, &mut out[..c.len()])?;
                }
                None => out[..c.len()].copy_from_slice(c),
            }
        }
        best_d = best_d.min(t.elapsed().as_secs_f64());
    }
    // Round trip checked outside the timing.
    for (i, (b, c)) in blobs.iter().zip(chunks).enumerate() {
        if let Some(b) = b {
            let n = (codec.decode)(b, &mut out[..c.len()])?;
            if n != c.len() || out[..n] != **c {
                return Err(format!("{}: chunk {i} does not round-trip", codec.name));
            }
        }
    }
    let mb = plain as f64 / 1e6;
    Ok(Row {
        name: codec.name,
        comp_mbs: mb / best_c,
        decomp_mbs: mb / best_d,
        ratio: stored as f64 / plain as f64,
        raw_chunks,
    })
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let mut data = Vec::with_capacity(args.max_bytes);
    for p in &args.paths {
        gather(p, &mut data, args.max_bytes);
    }
    let all = data.chunks(CHUNK).count();
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).filter(|c| c.iter().any(|&b| b != 0)).collect();
    let plain: usize = chunks.iter().map(|c| c.len()).sum();
    println!(
        "sample: {:.1} MiB in {} chunks of 1 MiB ({} all-zero chunks left out), best of {} run(s), one thread\n",
        plain as f64 / CHUNK as f64,
        chunks.len(),
        all - chunks.len(),
        args.runs
    );
    println!("| codec | compress MB/s | decompress MB/s | ratio (stored/plain) | chunks stored raw |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for mut c in codecs()? {
        let r = measure(&mut c, &chunks, args.runs)?;
        println!("| {} | {:.0} | {:.0} | {:.3} | {} |", r.name, r.comp_mbs, r.decomp_mbs, r.ratio, r.raw_chunks);
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("codec_bench: {e}");
        std::process::exit(1);
    }
}
