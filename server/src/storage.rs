//! Where a server keeps its management database and its chunks: SQLite
//! and chunk files in the data directory (the default), or PostgreSQL
//! (`--db postgres://...`) and an S3-compatible bucket (`--store
//! s3://bucket/prefix`), which several servers may share.
//!
//! The choice lives in `DATA/storage.conf` (`db = URL`, `store = URL`),
//! written by the first `bootvault serve --db/--store` on a data
//! directory, so every later command on that directory (`pc`, `backups`,
//! `gc`, ...) opens the same database and store. A flag naming other
//! backends than the file is refused: a server must never start on an
//! empty database beside the one holding its backups. Credentials for
//! the bucket come from the environment (crate::s3); a password in the
//! database URL stays in the file (mode 0600) and is never printed.
//!
//! `bootvault migrate` moves a directory's data to other backends and
//! then switches it with [`write`].
//!
//! Pure parsing and checks here; [`Storage::open`] makes the
//! implementations.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::blobs::{BlobStore, FsBlobStore};
use crate::db::Database;

/// The file in the data directory.
pub const FILE: &str = "storage.conf";

/// The backends of a data directory (None: the default for each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Storage {
    /// `postgres://...` (None: SQLite, `DATA/bootvault.db`).
    pub db: Option<String>,
    /// `s3://bucket/prefix` (None: `DATA/chunks`, `DATA/manifests`).
    pub store: Option<String>,
}

fn check_db(url: &str) -> Result<()> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("--db: expected a postgres:// URL (SQLite in the data directory is the default), not {:?}", redact(url));
    }
    Ok(())
}

fn check_store(url: &str) -> Result<()> {
    let Some(rest) = url.strip_prefix("s3://") else {
        bail!(
            "--store: expected s3://BUCKET[/PREFIX] (chunk files in the data directory are the default), not {url:?}"
        );
    };
    if rest.split('/').next().unwrap_or("").is_empty() {
        bail!("--store: {url:?} names no bucket (s3://BUCKET[/PREFIX])");
    }
    Ok(())
}

/// A database URL with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(pair) => pair,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

impl Storage {
    /// Checks each URL given.
    pub fn new(db: Option<String>, store: Option<String>) -> Result<Storage> {
        let db = db.filter(|d| !d.trim().is_empty()).map(|d| d.trim().to_owned());
        let store = store.filter(|s| !s.trim().is_empty()).map(|s| s.trim().trim_end_matches('/').to_owned());
        if let Some(d) = &db {
            check_db(d)?;
        }
        if let Some(s) = &store {
            check_store(s)?;
        }
        Ok(Storage { db, store })
    }

    /// Parses `storage.conf`: `key = value` lines, `#` comments.
    pub fn parse(text: &str) -> Result<Storage> {
        let (mut db, mut store) = (None, None);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else { bail!("line {}: expected key = value", n + 1) };
            let v = v.trim().trim_matches('"').to_owned();
            match k.trim() {
                "db" => db = Some(v),
                "store" => store = Some(v),
                other => bail!("line {}: unknown key {other:?} (db, store)", n + 1),
            }
        }
        Storage::new(db, store)
    }

    pub fn text(&self) -> String {
        let mut t = String::from(
            "# Written by `bootvault serve --db/--store` or `bootvault migrate`; every command on this directory uses \
             it.\n",
        );
        if let Some(d) = &self.db {
            t.push_str(&format!("db = {d}\n"));
        }
        if let Some(s) = &self.store {
            t.push_str(&format!("store = {s}\n"));
        }
        t
    }

    /// The data directory's choice (the defaults when it has no file).
    pub fn load(dir: &Path) -> Result<Storage> {
        let p = dir.join(FILE);
        match fs::read_to_string(&p) {
            Ok(text) => Storage::parse(&text).with_context(|| format!("{}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Storage::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// What `serve` was given, against the file: the same (or nothing
    /// given) goes on with the file's; new backends on a directory
    /// without a file are recorded; different ones are refused.
    pub fn settle(dir: &Path, given: &Storage) -> Result<Storage> {
        let on_file = Storage::load(dir)?;
        let wanted = Storage {
            db: given.db.clone().or_else(|| on_file.db.clone()),
            store: given.store.clone().or_else(|| on_file.store.clone()),
        };
        if on_file != Storage::default() && wanted != on_file {
            bail!(
                "{} says {}; refusing {} (edit or remove the file to move the data directory's storage)",
                dir.join(FILE).display(),
                on_file.describe(),
                wanted.describe()
            );
        }
        if on_file == Storage::default() && wanted != on_file {
            if crate::db::sqlite::holds_backups(&dir.join("bootvault.db")) {
                bail!(
                    "{} already holds backups in SQLite and chunk files; `bootvault migrate` moves them to {} (a \
                     fresh data directory starts on it directly)",
                    dir.display(),
                    wanted.describe()
                );
            }
            write_private(&dir.join(FILE), &wanted.text())?;
        }
        Ok(wanted)
    }

    /// The database and chunk store these name, for data directory `dir`
    /// (SQLite and chunk files in it by default).
    pub fn open(&self, dir: &Path) -> Result<(Box<dyn Database>, Box<dyn BlobStore>)> {
        let db: Box<dyn Database> = match &self.db {
            None => Box::new(crate::db::sqlite::SqliteDb::open(&dir.join("bootvault.db"))?),
            Some(url) => Box::new(
                crate::db::postgres::PgDb::connect(url).with_context(|| format!("the database {}", redact(url)))?,
            ),
        };
        let blobs: Box<dyn BlobStore> = match &self.store {
            None => Box::new(FsBlobStore::open(dir)?),
            Some(url) => {
                Box::new(crate::blobs_s3::S3BlobStore::open(url).with_context(|| format!("the chunk store {url}"))?)
            }
        };
        Ok((db, blobs))
    }

    /// `PostgreSQL postgres://u:***@h/db, chunks in s3://b/p`.
    pub fn describe(&self) -> String {
        let db = match &self.db {
            Some(d) => format!("PostgreSQL {}", redact(d)),
            None => "SQLite".into(),
        };
        let store = match &self.store {
            Some(s) => format!("chunks in {s}"),
            None => "chunks in the data directory".into(),
        };
        format!("{db}, {store}")
    }
}

/// Records `storage` as the data directory's, durably (the defaults
/// remove the file): the switch `bootvault migrate` makes once
/// everything is moved and checked. Every later command uses it.
pub fn write(dir: &Path, storage: &Storage) -> Result<()> {
    let p = dir.join(FILE);
    if *storage != Storage::default() {
        return write_private(&p, &storage.text());
    }
    match fs::remove_file(&p) {
        Ok(()) => crate::durable::fsync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::durable::DurableWriter::new(&dir.join("tmp")).write_private(path, text.as_bytes(), true).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        let s = Storage::new(Some("postgres://bv:secret@127.0.0.1:5432/bv".into()), Some("s3://bucket/pre/".into()))
            .expect("valid");
        assert_eq!(s.store.as_deref(), Some("s3://bucket/pre"));
        assert!(!s.describe().contains("secret"), "{}", s.describe());
        assert!(s.describe().contains("postgres://bv:***@127.0.0.1:5432/bv"));
        assert_eq!(Storage::parse(&s.text()).expect("round trip"), s);
        assert!(Storage::new(Some("mysql://x".into()), None).is_err());
        assert!(Storage::new(None, Some("s3:///prefix".into())).is_err());
        assert!(Storage::new(None, Some("/srv/chunks".into())).is_err());
        assert!(Storage::parse("db = postgres://x\ncolour = blue\n").unwrap_err().to_string().contains("colour"));
        assert_eq!(redact("postgres://bv@h/db"), "postgres://bv@h/db");
    }

    #[test]
    fn the_first_serve_records_and_later_ones_must_agree() {
        let dir = std::env::temp_dir().join(format!("bv-storage-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let none = Storage::default();
        assert_eq!(Storage::settle(&dir, &none).expect("defaults"), none);
        assert!(!dir.join(FILE).exists(), "the defaults write no file");
        let pg = Storage::new(Some("postgres://a@h/db".into()), Some("s3://b".into())).expect("valid");
        assert_eq!(Storage::settle(&dir, &pg).expect("recorded"), pg);
        assert_eq!(Storage::load(&dir).expect("load"), pg);
        assert_eq!(Storage::settle(&dir, &none).expect("the file's"), pg, "no flags: the file's backends");
        let other = Storage::new(Some("postgres://a@h/other".into()), None).expect("valid");
        let e = Storage::settle(&dir, &other).unwrap_err().to_string();
        assert!(e.contains("refusing") && e.contains("other"), "{e}");
        // migrate's switch: to other backends, and back to the defaults.
        write(&dir, &other).expect("written");
        assert_eq!(Storage::load(&dir).expect("load"), other);
        write(&dir, &none).expect("back to the defaults");
        assert!(!dir.join(FILE).exists(), "the defaults need no file");
        write(&dir, &none).expect("twice");
        let _ = fs::remove_dir_all(&dir);
    }
}
