//! `bootvault migrate`: moves a data directory's database and chunk store
//! to other backends (SQLite and chunk files → PostgreSQL and a bucket,
//! or back), then switches the directory to them.
//!
//! The copy and its check are the vault's (`vault::migrate`); here the
//! order around them: refuse what cannot work, copy, read the target
//! back, then write `DATA/storage.conf` (the one step that switches), and
//! only then rename what the directory held before out of the way
//! (`NAME.migrated-TIME`, never removed). Stopped anywhere before the
//! switch, the directory still uses its old storage, untouched, and a
//! new run finishes the copy.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bootvault_common::units::human_bytes;
use bootvault_server::storage::{self, Storage};
use bootvault_server::vault::migrate::{Migration, MovedBackup};
use bootvault_server::vault::{self, Vault};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_db", "to_local"])))]
pub struct MigrateArgs {
    /// Data directory.
    #[arg(long, default_value = "bootvault-data")]
    data: PathBuf,
    /// The PostgreSQL database to move to (postgres://USER[:PASSWORD]@HOST:PORT/DB): an
    /// empty one, or one an earlier migrate of DATA began. Needs --to-store: the database
    /// and the chunk store move together.
    #[arg(long, requires = "to_store", value_name = "URL")]
    to_db: Option<String>,
    /// The bucket to move chunks and manifests to (s3://BUCKET[/PREFIX], an unused
    /// prefix; endpoint and keys from AWS_* as for `serve --store`). Needs --to-db.
    #[arg(long, requires = "to_db", value_name = "URL")]
    to_store: Option<String>,
    /// Move back to SQLite and chunk files in DATA.
    #[arg(long, conflicts_with_all = ["to_db", "to_store"])]
    to_local: bool,
}

/// `bootvault migrate`.
pub fn run(a: MigrateArgs) -> Result<()> {
    let target = if a.to_local { Storage::default() } else { Storage::new(a.to_db, a.to_store)? };
    let data = &a.data;
    if !data.is_dir() {
        bail!("{} is no data directory", data.display());
    }
    let source = Storage::load(data)?;
    if source == target {
        println!("{} already uses {}: nothing to migrate", data.display(), target.describe());
        return Ok(());
    }
    // Manifests are stored by backup id and the ids may change: a store
    // (or database) shared by both sides would be overwritten.
    if source.db == target.db || source.store == target.store {
        bail!(
            "{} uses {}; migrate moves the database and the chunk store together, to {} (both new)",
            data.display(),
            source.describe(),
            if target == Storage::default() { "SQLite and chunk files" } else { "another database and store" }
        );
    }
    let started = Instant::now();
    println!("migrating {}: {} → {}", data.display(), source.describe(), target.describe());
    let from = Vault::open(data)?;
    let (db, blobs) = target.open(data)?;
    let to = Vault::with(data, db, blobs)?;
    let moved = from.migrate_into(&to, &mut |b| println!("{}", line(b)))?;
    let chunks = from.verify_migration(&to, &moved).context("checking the target")?;
    drop((from, to));
    let kept = switch(data, &source, &target)?;
    summary(data, &source, &target, &moved, chunks, &kept, started);
    Ok(())
}

/// `backup 3 → 2 (lab-1 "full"): 40 chunks, 12.0 MiB copied`.
fn line(b: &MovedBackup) -> String {
    let who = format!("({} {:?}{})", b.pc, b.name, if b.locked { ", locked" } else { "" });
    if b.present {
        return format!("backup {} → {} {who}: already there", b.from, b.to);
    }
    format!("backup {} → {} {who}: {} chunks, {} copied", b.from, b.to, b.chunks, human_bytes(b.copied_bytes))
}

/// Writes the new `storage.conf`, then renames the old local database and
/// chunk files (a copy of the old `storage.conf` names old remote ones).
/// Returns what was kept.
fn switch(data: &Path, source: &Storage, target: &Storage) -> Result<Vec<PathBuf>> {
    let suffix = format!("migrated-{}", vault::now());
    let aside = |name: &str| data.join(format!("{name}.{suffix}"));
    let mut kept = Vec::new();
    if *source != Storage::default() {
        // fs::copy keeps the mode (0600: the URL may hold a password).
        let old = data.join(storage::FILE);
        fs::copy(&old, aside(storage::FILE)).with_context(|| format!("keeping a copy of {}", old.display()))?;
        kept.push(aside(storage::FILE));
    }
    storage::write(data, target)?;
    let mut local = Vec::new();
    if source.db.is_none() {
        local.extend(["bootvault.db", "bootvault.db-wal", "bootvault.db-shm"]);
    }
    if source.store.is_none() {
        local.extend(["chunks", "manifests"]);
    }
    for name in local {
        let p = data.join(name);
        if p.exists() {
            fs::rename(&p, aside(name)).with_context(|| format!("renaming {}", p.display()))?;
            kept.push(aside(name));
        }
    }
    fs::File::open(data).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", data.display()))?;
    Ok(kept)
}

fn summary(
    data: &Path,
    source: &Storage,
    target: &Storage,
    m: &Migration,
    chunks: u64,
    kept: &[PathBuf],
    started: Instant,
) {
    let already = m.backups.iter().filter(|b| b.present).count();
    println!(
        "moved {} PCs, {} admin accounts, {} backups ({already} already there), {} grants, {} results, {} queued \
         jobs; {} chunks copied ({}), {} already there ({}); {:.1} s",
        m.pcs,
        m.admins,
        m.backups.len(),
        m.grants,
        m.results,
        m.queued_jobs,
        m.chunks_copied,
        human_bytes(m.bytes_copied),
        m.chunks_present,
        human_bytes(m.bytes_present),
        started.elapsed().as_secs_f64()
    );
    println!("verified in the target: {} manifests, {chunks} chunks present", m.backups.len());
    if m.leftovers_removed > 0 {
        println!("removed {} unfinished backups an earlier migrate left in the target", m.leftovers_removed);
    }
    if !m.backups.is_empty() {
        let ids: Vec<String> = m.backups.iter().map(|b| format!("{} → {}", b.from, b.to)).collect();
        println!("backup ids (old → new): {}", ids.join(", "));
    }
    if m.backups.iter().any(|b| b.from != b.to) {
        println!("note: backup ids changed: boot media or scripts naming a backup by id (backup=ID) need the new one");
    }
    for l in &m.left_out {
        println!("not moved: {l}");
    }
    println!("{} now uses {}", data.display(), target.describe());
    if !kept.is_empty() {
        let names: Vec<String> = kept.iter().map(|p| p.display().to_string()).collect();
        println!("kept from before (renamed, contents untouched): {}", names.join(", "));
    }
    let left: Vec<String> = [
        source.db.as_deref().map(|d| format!("the database {}", storage::redact(d))),
        source.store.clone().map(|s| format!("the bucket prefix {s}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !left.is_empty() {
        println!("left as they were: {}", left.join(" and "));
    }
    println!("remove the old copies once the server works on the new storage");
}
