//! `bootvault migrate` through the real binary, against a real PostgreSQL
//! and a real S3 store (a single-node Garage) each test starts.
//!
//! A SQLite data directory with two PCs, a grant, an admin account, a
//! setting, a queued job, a result, an unfinished upload and two complete
//! backups made over HTTP by a real server (one plain, one encrypted and
//! password-locked) moves to PostgreSQL + S3: the CLI then shows the same
//! from there, the PCs' own tokens restore byte for byte through a server
//! on the new storage, and a re-run does nothing. A directory of another
//! origin is refused on the same database. Then back to SQLite + chunk
//! files, in a fresh directory and in the original one. A damaged chunk
//! stops migrate with one line naming it and switches nothing; repaired,
//! a new run finishes without duplicating what the first moved.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bootvault_common::image::{self, Manifest};
use bootvault_server::blobs_s3::S3BlobStore;
use bootvault_server::db::postgres::PgDb;
use bootvault_server::db::Database;
use bootvault_server::s3::S3Client;
use bootvault_server::testenv::Postgres;
use bootvault_server::testenv_s3::Garage;
use bootvault_server::vault::{PcRow, Vault};

const PASSWORD: &str = "correct horse battery";
const ADMIN_PASSWORD: &str = "admin password 1";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Postgres, Garage and the environment every `bootvault` of a test runs with.
struct Site {
    dir: PathBuf,
    /// Stopped before `dir` is removed (see Drop).
    services: Option<(Postgres, Garage)>,
    env: Vec<(String, String)>,
}

impl Site {
    fn start(tag: &str) -> Site {
        let dir = std::env::temp_dir().join(format!("bv-migrate-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let pg = Postgres::start(&dir.join("pg")).unwrap_or_else(|e| panic!("starting postgres: {e:#}"));
        let garage = Garage::start(&dir.join("garage")).unwrap_or_else(|e| panic!("starting garage: {e:#}"));
        let mut env = garage.env();
        env.push(("BOOTVAULT_KEY_FILE".into(), s(&dir.join("data.key")).to_owned()));
        Site { dir, services: Some((pg, garage)), env }
    }

    fn pg(&self) -> &Postgres {
        &self.services.as_ref().unwrap().0
    }

    fn garage(&self) -> &Garage {
        &self.services.as_ref().unwrap().1
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_bootvault"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("runs bootvault");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(args);
        assert!(ok, "bootvault {}: {out}", args.join(" "));
        out
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// The vault a migrate to (`db`, `prefix`) made, opened in this process.
    fn remote_vault(&self, data: &Path, db: &str, prefix: &str) -> Vault {
        let store = S3BlobStore::with_client(S3Client::new(self.garage().config(prefix).unwrap())).unwrap();
        Vault::with(data, Box::new(PgDb::connect(db).unwrap()), Box::new(store)).unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        drop(self.services.take());
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `bootvault serve --plain-http` on a free port, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(site: &Site, data: &Path) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_bootvault"))
            .args(["serve", "--data", s(data), "--listen", "127.0.0.1:0", "--plain-http"])
            .envs(site.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bootvault serve");
        // Killed by Drop from here on, a failed start included.
        let mut server = Server { child, url: String::new() };
        let out = server.child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Drained to the end, so the server never blocks on its output.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        loop {
            let line = rx.recv_timeout(Duration::from_secs(30)).expect("the server starts");
            if let Some(rest) = line.split("listening on ").nth(1) {
                server.url = rest.split_whitespace().next().unwrap().to_owned();
                return server;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A disk image: `seed`'s noise, then zeros.
fn disk(dir: &Path, name: &str, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut data = bootvault_common::testdata::noise(seed, 3 << 20);
    data.extend(vec![0u8; 1 << 20]);
    let p = dir.join(name);
    fs::write(&p, &data).unwrap();
    (p, data)
}

fn token(site: &Site, data: &Path, pc: &str) -> String {
    site.json(&["pc", "--data", s(data), "--json", "show", pc, "--token"])["token"].as_str().unwrap().to_owned()
}

/// `backups list` (complete backups).
fn backups(site: &Site, data: &Path) -> Vec<serde_json::Value> {
    site.json(&["backups", "--data", s(data), "--json", "list"]).as_array().unwrap().clone()
}

/// What the CLI shows of a data directory that a move must keep (the
/// rows' own ids aside).
fn view(site: &Site, data: &Path) -> serde_json::Value {
    let d = s(data);
    let mut jobs = site.json(&["jobs", "--data", d, "--json", "list"]).as_array().unwrap().clone();
    for j in &mut jobs {
        j["id"] = serde_json::Value::Null;
    }
    let mut results = site.json(&["jobs", "--data", d, "--json", "results"]).as_array().unwrap().clone();
    for r in &mut results {
        (r["id"], r["job"]) = (serde_json::Value::Null, serde_json::Value::Null);
    }
    let mut settings = site.json(&["settings", "--data", d, "--json", "show"]);
    settings["admin_token_file"] = serde_json::Value::Null;
    serde_json::json!({
        "pcs": site.json(&["pc", "--data", d, "--json", "list"]),
        "lab-1": site.json(&["pc", "--data", d, "--json", "show", "lab-1", "--token"]),
        "lab-2": site.json(&["pc", "--data", d, "--json", "show", "lab-2", "--token"]),
        "backups": backups(site, data),
        "admins": site.json(&["admin", "--data", d, "--json", "list"]),
        "settings": settings,
        "jobs": jobs.into_iter().filter(|j| j["state"] == "queued").collect::<Vec<_>>(),
        "results": results,
    })
}

/// `backups export` of each backup (by id in `data`): the single-file form.
fn exports(site: &Site, data: &Path, ids: &[i64]) -> Vec<Vec<u8>> {
    ids.iter()
        .map(|id| {
            let f = data.with_extension(format!("export-{id}.bvi"));
            site.ok(&["backups", "--data", s(data), "export", &id.to_string(), s(&f)]);
            site.ok(&["backups", "--data", s(data), "verify", &id.to_string()]);
            let bytes = fs::read(&f).unwrap();
            fs::remove_file(&f).unwrap();
            bytes
        })
        .collect()
}

/// `backup ids (old → new): 2 → 1, 3 → 2`.
fn id_map(out: &str) -> HashMap<i64, i64> {
    let line = out.lines().find_map(|l| l.strip_prefix("backup ids (old → new): ")).expect("the id map is printed");
    line.split(", ")
        .map(|pair| {
            let (a, b) = pair.split_once(" → ").unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// Files in `data` renamed aside by a migrate (`NAME.migrated-TIME`).
fn kept_aside(data: &Path, name: &str) -> bool {
    fs::read_dir(data)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&format!("{name}.migrated-"))))
}

fn timing(out: &str) -> &str {
    out.lines().find(|l| l.starts_with("moved ")).unwrap_or("?")
}

/// The source: two PCs registered, an unfinished upload (id 1), then two
/// backups over HTTP (2: lab-1, plain; 3: lab-2, encrypted and locked),
/// a grant, an admin account, a setting, a queued job and a result.
fn make_source(site: &Site, data: &Path) -> (Vec<u8>, Vec<u8>) {
    let d = s(data);
    site.ok(&["pc", "--data", d, "add", "lab-1", "--mac", "52:54:00:00:00:01", "--quota", "1G", "--disk", "sda"]);
    site.ok(&[
        "pc",
        "--data",
        d,
        "add",
        "lab-2",
        "--mac",
        "52:54:00:00:00:02",
        "--ip",
        "10.0.0.2/24",
        "--gateway",
        "10.0.0.1",
    ]);
    let half = Vault::open(data).unwrap().create_backup("lab-1", "half", 8192, 4096).unwrap();
    assert_eq!(half, 1);
    let (disk1, bytes1) = disk(&site.dir, "one.img", 1);
    let (disk2, bytes2) = disk(&site.dir, "two.img", 2);
    let pw = site.dir.join("password");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    {
        let server = Server::start(site, data);
        let t1 = token(site, data, "lab-1");
        let t2 = token(site, data, "lab-2");
        let out = site.ok(&[
            "backup",
            "--disk",
            s(&disk1),
            "--server",
            &server.url,
            "--pc",
            "lab-1",
            "--token",
            &t1,
            "--name",
            "plain",
            "--no-encryption",
        ]);
        assert!(out.contains("complete"), "{out}");
        let out = site.ok(&[
            "backup",
            "--disk",
            s(&disk2),
            "--server",
            &server.url,
            "--pc",
            "lab-2",
            "--token",
            &t2,
            "--name",
            "sealed",
            "--password-file",
            s(&pw),
        ]);
        assert!(out.contains("complete"), "{out}");
    }
    site.ok(&["backups", "--data", d, "grant", "2", "lab-2"]);
    let apw = site.dir.join("admin-password");
    fs::write(&apw, format!("{ADMIN_PASSWORD}\n")).unwrap();
    site.ok(&["admin", "--data", d, "add", "root", "--password-file", s(&apw)]);
    site.ok(&["settings", "--data", d, "server-urls", "http://10.0.0.1:8080,http://10.0.0.9:8080"]);
    site.ok(&["jobs", "--data", d, "add", "lab-1", "restore", "--backup", "2"]);
    let v = Vault::open(data).unwrap();
    v.record_result("lab-1", None, "backup", "sda", Some(2), true, "backup 2 complete", 4 << 20, 3 << 20, 1.5).unwrap();
    let rows = v.list_backups(None, true).unwrap();
    assert_eq!(
        rows.iter().map(|b| (b.id, b.state.as_str())).collect::<Vec<_>>(),
        [(1, "uploading"), (2, "complete"), (3, "complete")]
    );
    assert!(rows[2].locked, "{rows:?}");
    (bytes1, bytes2)
}

/// Restores `backup` as `pc` (with its own token) from `server` and
/// compares the bytes.
fn restore_as(site: &Site, server: &Server, data: &Path, pc: &str, backup: i64, want: &[u8], locked: bool) {
    let target = site.dir.join(format!("restore-{pc}-{backup}.img"));
    fs::write(&target, vec![0xEEu8; want.len()]).unwrap();
    let t = token(site, data, pc);
    let b = backup.to_string();
    let mut args =
        vec!["restore", "--disk", s(&target), "--server", &server.url, "--pc", pc, "--token", &t, "--backup", &b];
    let pw = site.dir.join("password");
    if locked {
        args.extend(["--password-file", s(&pw)]);
    }
    site.ok(&args);
    assert!(fs::read(&target).unwrap() == want, "backup {backup} restored as {pc} byte for byte");
    fs::remove_file(&target).unwrap();
}

#[test]
fn moves_to_postgres_and_s3_and_back() {
    let site = Site::start("round");
    let data = site.dir.join("data");
    let (bytes1, bytes2) = make_source(&site, &data);
    let before = view(&site, &data);
    let exported = exports(&site, &data, &[2, 3]);
    let db = site.pg().new_database("moved").unwrap();
    let store = site.garage().url("site");

    let (ok, out) = site.run(&["migrate", "--data", s(&data), "--to-db", &db, "--to-store", &store]);
    assert!(ok, "{out}");
    eprintln!("to PostgreSQL + S3: {}", timing(&out));
    assert!(
        out.contains("backup 2 → 1 (lab-1 \"plain\"): ") && out.contains("backup 3 → 2 (lab-2 \"sealed\", locked): "),
        "{out}"
    );
    assert!(out.contains("moved 2 PCs, 1 admin accounts, 2 backups (0 already there), 1 grants, "), "{out}");
    assert!(out.contains("verified in the target: 2 manifests"), "{out}");
    assert!(out.contains("not moved: unfinished or failed uploads (never moved): 1 of lab-1"), "{out}");
    let map = id_map(&out);
    assert_eq!(map, HashMap::from([(2, 1), (3, 2)]));
    // The switch, and the old files kept aside.
    let conf = fs::read_to_string(data.join("storage.conf")).unwrap();
    assert!(conf.contains(&format!("db = {db}")) && conf.contains(&format!("store = {store}")), "{conf}");
    assert!(!data.join("bootvault.db").exists() && !data.join("chunks").exists(), "the old files are renamed");
    assert!(kept_aside(&data, "bootvault.db") && kept_aside(&data, "chunks") && kept_aside(&data, "manifests"));

    // The same from PostgreSQL + S3, through the CLI.
    assert_eq!(view(&site, &data), view_mapped(&before, &map));
    assert_eq!(exports(&site, &data, &[1, 2]), exported, "the single-file forms are byte for byte the same");
    let show = site.ok(&["backups", "--data", s(&data), "show", "1"]);
    assert!(show.contains("also restorable by: lab-2"), "{show}");
    // The PCs' own tokens, through a server on the new storage: lab-2
    // restores lab-1's backup (granted) and its own locked one.
    {
        let server = Server::start(&site, &data);
        restore_as(&site, &server, &data, "lab-2", 1, &bytes1, false);
        restore_as(&site, &server, &data, "lab-2", 2, &bytes2, true);
    }
    // The admin's password hash moved as it was.
    let v = site.remote_vault(&data, &db, "site");
    assert!(v.sign_in("root", ADMIN_PASSWORD, "127.0.0.1", bootvault_server::vault::now()).unwrap().is_ok());
    drop(v);

    // Again: nothing to do, and it says so.
    let (ok, out) = site.run(&["migrate", "--data", s(&data), "--to-db", &db, "--to-store", &store]);
    assert!(ok && out.contains("nothing to migrate"), "{out}");

    // Another directory onto the same database: refused, naming what it holds.
    let other = site.dir.join("other");
    site.ok(&["pc", "--data", s(&other), "add", "lab-9", "--mac", "52:54:00:00:00:09"]);
    let (ok, out) =
        site.run(&["migrate", "--data", s(&other), "--to-db", &db, "--to-store", &site.garage().url("other")]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("already holds") && out.contains("backup 1 (lab-1 \"plain\"") && out.contains("PC lab-1"),
        "{out}"
    );
    assert!(!other.join("storage.conf").exists() && other.join("bootvault.db").exists(), "nothing switched");

    // Back to SQLite and chunk files (the PCs' restores changed what the
    // database holds), in a fresh directory given the first's
    // storage.conf and admin token.
    let on_pg = view(&site, &data);
    let fresh = site.dir.join("fresh");
    fs::create_dir_all(&fresh).unwrap();
    for f in ["storage.conf", "admin.token"] {
        fs::copy(data.join(f), fresh.join(f)).unwrap();
    }
    let (ok, out) = site.run(&["migrate", "--data", s(&fresh), "--to-local"]);
    assert!(ok, "{out}");
    eprintln!("back to SQLite: {}", timing(&out));
    let back = id_map(&out);
    assert_eq!(back, HashMap::from([(1, 1), (2, 2)]));
    assert!(!fresh.join("storage.conf").exists() && kept_aside(&fresh, "storage.conf"), "switched to the defaults");
    assert!(fresh.join("bootvault.db").exists() && fresh.join("chunks").is_dir());
    assert!(out.contains(&format!("left as they were: the database {db} and the bucket prefix {store}")), "{out}");
    assert_eq!(view(&site, &fresh), on_pg);
    assert_eq!(exports(&site, &fresh, &[1, 2]), exported);
    // And the original directory back too (its old files are aside, so
    // SQLite starts anew there); then a re-run is a no-op.
    let (ok, out) = site.run(&["migrate", "--data", s(&data), "--to-local"]);
    assert!(ok, "{out}");
    assert_eq!(view(&site, &data), on_pg);
    let (ok, out) = site.run(&["migrate", "--data", s(&data), "--to-local"]);
    assert!(ok && out.contains("already uses SQLite, chunks in the data directory: nothing to migrate"), "{out}");
}

/// `before` with its backup ids mapped (what the target must show).
fn view_mapped(before: &serde_json::Value, map: &HashMap<i64, i64>) -> serde_json::Value {
    let mut v = before.clone();
    for b in v["backups"].as_array_mut().unwrap() {
        b["id"] = serde_json::json!(map[&b["id"].as_i64().unwrap()]);
    }
    for key in ["jobs", "results"] {
        for r in v[key].as_array_mut().unwrap() {
            if let Some(b) = r["backup"].as_i64() {
                r["backup"] = serde_json::json!(map.get(&b).copied());
            }
        }
    }
    v
}

#[test]
fn a_damaged_chunk_stops_it_and_a_new_run_finishes() {
    let site = Site::start("damaged");
    let data = site.dir.join("data");
    let d = s(&data);
    let v = Vault::open(&data).unwrap();
    v.add_pc(&PcRow::new("lab-1", "52:54:00:00:00:01")).unwrap();
    drop(v);
    // Two plain backups of different disks, through a local store.
    let store = site.dir.join("store");
    for (name, seed) in [("one", 11), ("two", 12)] {
        let (img, _) = disk(&site.dir, &format!("{name}.img"), seed);
        site.ok(&["backup", "--disk", s(&img), "--to", s(&store), "--pc", "lab-1", "--name", name, "--no-encryption"]);
    }
    site.ok(&["backups", "--data", d, "import-dir", s(&store)]);
    // Damage the last chunk only the second backup names (the ones
    // before it are copied when migrate stops there).
    let ids = |id: i64| {
        let m = Manifest::decode(&fs::read(data.join(format!("manifests/{id}.bvm"))).unwrap()).unwrap();
        m.data_ids()
    };
    let first = ids(1);
    let chunk = ids(2).into_iter().rev().find(|c| !first.contains(c)).unwrap();
    let hex = image::hex(&chunk);
    let path = data.join("chunks").join(&hex[..2]).join(&hex);
    let good = fs::read(&path).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x5A;
    fs::write(&path, &bad).unwrap();

    let db = site.pg().new_database("damaged").unwrap();
    let to = site.garage().url("damaged");
    let (ok, out) = site.run(&["migrate", "--data", d, "--to-db", &db, "--to-store", &to]);
    assert!(!ok, "{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(&hex)).collect();
    assert_eq!(lines.len(), 1, "one line names the chunk: {out}");
    assert!(
        lines[0].starts_with("bootvault: backup 2 (lab-1 \"two\"): chunk ") && lines[0].contains("damaged"),
        "{out}"
    );
    assert!(!data.join("storage.conf").exists(), "nothing switched: {out}");
    assert!(data.join("bootvault.db").exists() && fs::read(&path).unwrap() == bad, "the source is untouched");
    assert_eq!(backups(&site, &data).len(), 2, "the directory still reads its SQLite backups");
    let pg = PgDb::connect(&db).unwrap();
    let states = |pg: &PgDb| pg.list_backups(None, true).unwrap().into_iter().map(|b| b.state).collect::<Vec<_>>();
    assert_eq!(states(&pg), ["complete", "failed"], "the first moved; the second stopped");

    // Repaired: a new run keeps the first, redoes the second, duplicates nothing.
    fs::write(&path, &good).unwrap();
    let (ok, out) = site.run(&["migrate", "--data", d, "--to-db", &db, "--to-store", &to]);
    assert!(ok, "{out}");
    eprintln!("resumed: {}", timing(&out));
    assert!(out.contains("backup 1 → 1 (lab-1 \"one\"): already there"), "{out}");
    assert!(out.contains("removed 1 unfinished backups an earlier migrate left"), "{out}");
    // Of the second's three chunks, the two before the damaged one were
    // copied by the first run (and the first's three are all there).
    assert!(out.contains("2 backups (1 already there)"), "{out}");
    assert!(out.contains("; 1 chunks copied (1.0 MiB), 5 already there (5.0 MiB)"), "{out}");
    // The stopped upload is gone (its id is not reused): 2 → 3.
    assert_eq!(id_map(&out), HashMap::from([(1, 1), (2, 3)]));
    assert_eq!(states(&pg), ["complete", "complete"], "{out}");
    assert_eq!(backups(&site, &data).len(), 2);
    for id in ["1", "3"] {
        site.ok(&["backups", "--data", d, "verify", id]);
    }
    let (ok, out) = site.run(&["migrate", "--data", d, "--to-db", &db, "--to-store", &to]);
    assert!(ok && out.contains("nothing to migrate"), "{out}");
}
