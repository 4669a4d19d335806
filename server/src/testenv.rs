//! Services the tests and benches start on 127.0.0.1, each in a directory
//! the caller gives and gone when dropped: today a PostgreSQL server
//! ([`Postgres`]) for [`crate::db::postgres::PgDb`].
//!
//! Owns the service processes and their files under that directory; not
//! the machine's own PostgreSQL cluster (never touched), not installing
//! PostgreSQL (`make deps` does, from the Debian package `postgresql`).
//! Everything here blocks; it may be called from async tests too (the
//! PostgreSQL client runs on a thread of its own).

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The role the tests' cluster is made with (trusted, no password).
const ROLE: &str = "bootvault";
/// The database [`Postgres::url`] names.
const DATABASE: &str = "bootvault";
/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL server of its own (`initdb` into `DIR/pgdata`), listening
/// on a free 127.0.0.1 port with trust authentication and fsync off;
/// stopped when dropped.
pub struct Postgres {
    child: Child,
    port: u16,
    log: PathBuf,
}

/// Who runs initdb and postgres: they refuse root, so as root the
/// `postgres` user Debian's package creates does.
#[derive(Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    fn apply(self, cmd: &mut Command) -> &mut Command {
        cmd.uid(self.uid).gid(self.gid)
    }

    /// `path` made the service's, as it writes there.
    fn give(self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("giving {} to the postgres user", path.display()))
    }
}

impl Postgres {
    /// Creates a cluster in `dir/pgdata` (replacing one left there), starts
    /// it and creates the database [`Postgres::url`] names. The socket and
    /// lock files go to `dir/run`, the server's log to `dir/postgres.log`.
    pub fn start(dir: &Path) -> Result<Postgres> {
        let bin = find_bin(Path::new("/"), std::env::var_os("PATH").as_deref())?;
        let pgdata = dir.join("pgdata");
        let run = dir.join("run");
        if pgdata.exists() {
            fs::remove_dir_all(&pgdata).with_context(|| format!("removing {}", pgdata.display()))?;
        }
        for d in [&pgdata, &run] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        fs::set_permissions(&pgdata, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", pgdata.display()))?;
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .context("looking up the postgres user")?
                .context("running as root, and PostgreSQL refuses root: no user `postgres` to run it as (install the package postgresql: make deps)")?;
            let who = RunAs { uid: user.uid.as_raw(), gid: user.gid.as_raw() };
            who.give(&pgdata)?;
            who.give(&run)?;
            // The service must be able to reach its directories.
            let mode = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?.permissions().mode();
            if mode & 0o001 == 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o711))
                    .with_context(|| format!("opening {} to the postgres user", dir.display()))?;
            }
            Some(who)
        } else {
            None
        };

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&pgdata)
            .args(["-U", ROLE, "--auth=trust", "--no-sync", "--no-locale", "-E", "UTF8"])
            .current_dir(dir)
            .stdin(Stdio::null());
        if let Some(who) = run_as {
            who.apply(&mut initdb);
        }
        let out = initdb.output().with_context(|| format!("running {}", bin.join("initdb").display()))?;
        if !out.status.success() {
            bail!(
                "initdb into {} failed ({}): {}{}",
                pgdata.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let log = dir.join("postgres.log");
        // A port found free may be taken before postgres binds it.
        let mut tries = 0;
        loop {
            tries += 1;
            let port = free_port()?;
            let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let mut cmd = Command::new(bin.join("postgres"));
            cmd.arg("-D")
                .arg(&pgdata)
                .arg("-p")
                .arg(port.to_string())
                .arg("-c")
                .arg(format!("unix_socket_directories={}", run.display()))
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off", "-c", "shared_buffers=16MB"])
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(file.try_clone().context("duplicating the log's handle")?)
                .stderr(file);
            if let Some(who) = run_as {
                who.apply(&mut cmd);
            }
            let child = cmd.spawn().with_context(|| format!("starting {}", bin.join("postgres").display()))?;
            let mut pg = Postgres { child, port, log: log.clone() };
            match pg.wait_ready() {
                Ok(()) => {
                    pg.create_database(DATABASE)?;
                    return Ok(pg);
                }
                Err(e) => {
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    if tries < 3 && text.contains("could not bind") {
                        continue; // Dropping `pg` stops it.
                    }
                    return Err(e);
                }
            }
        }
    }

    /// `postgres://bootvault@127.0.0.1:PORT/bootvault`.
    pub fn url(&self) -> String {
        self.url_of(DATABASE)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates the empty database `name` (letters, digits, `_`) and
    /// returns its URL: a fresh one per test.
    pub fn new_database(&self, name: &str) -> Result<String> {
        self.create_database(name)?;
        Ok(self.url_of(name))
    }

    fn url_of(&self, db: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{db}", self.port)
    }

    fn create_database(&self, name: &str) -> Result<()> {
        if name.is_empty() || name.len() > 63 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("{name:?} is not a database name here (1 to 63 letters, digits or _)");
        }
        let url = self.url_of("postgres");
        on_own_thread(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
            c.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
            Ok(())
        })
        .with_context(|| format!("creating the database {name} on 127.0.0.1:{}", self.port))
    }

    /// Until a client can connect, or the server exits, or time is up;
    /// the error then holds the server's log.
    fn wait_ready(&mut self) -> Result<()> {
        let url = format!("{}?connect_timeout=2", self.url_of("postgres"));
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for postgres")? {
                bail!("postgres exited ({status}) before accepting connections; its log:\n{}", self.log_text());
            }
            let probe = url.clone();
            let last = match on_own_thread(move || Ok(postgres::Client::connect(&probe, postgres::NoTls)?)) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "postgres on 127.0.0.1:{} accepted no connection in {} s ({last:#}); its log:\n{}",
                    self.port,
                    READY_TIMEOUT.as_secs(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("({}: {e})", self.log.display()))
    }
}

impl Drop for Postgres {
    /// A fast shutdown (SIGINT: clients cut off, no checkpoint wait), then
    /// a kill if it lingers; the child is always reaped.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT);
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f` on a thread of its own: the sync PostgreSQL client starts a
/// runtime, which must not happen on a thread of an async runtime.
fn on_own_thread<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(f).join().unwrap_or_else(|_| Err(anyhow!("the PostgreSQL client's thread panicked")))
    })
}

/// A 127.0.0.1 port nobody listens on right now.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// The directory holding `initdb` and `postgres`: the highest version
/// under `root/usr/lib/postgresql/*/bin` (Debian's layout), else one on
/// `path`.
fn find_bin(root: &Path, path: Option<&std::ffi::OsStr>) -> Result<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    let versions = root.join("usr/lib/postgresql");
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in fs::read_dir(&versions).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(version) = name.split('.').map(str::parse).collect::<Result<Vec<u32>, _>>() else { continue };
        let bin = entry.path().join("bin");
        if has_both(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    if let Some(bin) = path.into_iter().flat_map(std::env::split_paths).find(|d| has_both(d)) {
        return Ok(bin);
    }
    bail!(
        "PostgreSQL not found (no {}/*/bin/initdb, none on PATH): install the package postgresql (make deps)",
        versions.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("initdb"), "").unwrap();
        fs::write(dir.join("postgres"), "").unwrap();
    }

    #[test]
    fn the_highest_version_is_chosen() {
        let root = std::env::temp_dir().join(format!("bv-testenv-find-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let lib = root.join("usr/lib/postgresql");
        assert!(find_bin(&root, None).unwrap_err().to_string().contains("package postgresql"));
        fake_bin(&lib.join("9.6/bin"));
        fake_bin(&lib.join("15/bin"));
        fake_bin(&lib.join("13/bin"));
        fs::create_dir_all(lib.join("17/bin")).unwrap(); // no binaries
        fs::create_dir_all(lib.join("common/bin")).unwrap();
        assert_eq!(find_bin(&root, None).unwrap(), lib.join("15/bin"));

        let elsewhere = root.join("opt/pg/bin");
        fake_bin(&elsewhere);
        fs::remove_dir_all(&lib).unwrap();
        let path = std::env::join_paths([root.join("nothing"), elsewhere.clone()]).unwrap();
        assert_eq!(find_bin(&root, Some(&path)).unwrap(), elsewhere);
        fs::remove_dir_all(&root).unwrap();
    }
}
