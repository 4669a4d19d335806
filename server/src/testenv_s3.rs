//! A real S3 store for tests and benchmarks: a single-node Garage
//! (garagehq.deuxfleurs.fr) on 127.0.0.1, with one bucket and one key
//! allowed to read and write it. `make garage` builds the binary once
//! into ~/.cache/bootvault/garage; `BOOTVAULT_GARAGE` names another.
//!
//! Everything lives under the directory given to [`Garage::start`]:
//! its config, metadata, data and `garage.log`, which errors quote.
//! Dropping a [`Garage`] kills it and waits for it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::s3::{hex, S3Client, S3Config};

/// The region Garage answers as (its `s3_region`).
pub const REGION: &str = "garage";

/// A running single-node Garage (the module doc).
pub struct Garage {
    child: Child,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    s3_port: u16,
    bucket: String,
    key_id: String,
    secret: String,
}

/// The garage binary: `BOOTVAULT_GARAGE`, else the one `make garage` builds.
pub fn garage_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BOOTVAULT_GARAGE").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("BOOTVAULT_GARAGE={} is not a file", p.display());
        }
        return Ok(p);
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set (looking for garage)"))?;
    let p = Path::new(&home).join(".cache/bootvault/garage/bin/garage");
    if !p.is_file() {
        bail!("no garage at {} (run `make garage` once, or set BOOTVAULT_GARAGE=PATH)", p.display());
    }
    Ok(p)
}

fn free_port() -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")
}

fn random_hex(bytes: usize) -> Result<String> {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; bytes];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| anyhow!("no random bytes"))?;
    Ok(hex(&b))
}

/// The last `lines` lines of `path`, for errors.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Garage {
    /// Starts Garage in `dir` (created; a previous Garage's state in it
    /// is removed) with a fresh layout, bucket `bootvault` and a key
    /// allowed to use it.
    pub fn start(dir: &Path) -> Result<Garage> {
        let binary = garage_binary()?;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut g = Garage::spawn(&binary, dir)?;
            match g.set_up() {
                Ok(()) => return Ok(g),
                // A free port taken by another process before garage bound
                // it: garage exits at once; again with other ports.
                Err(_) if tries < 3 && g.child.try_wait().ok().flatten().is_some() => continue,
                Err(e) => bail!("{e:#}\n--- {} (end) ---\n{}", g.log.display(), tail(&g.log, 30)),
            }
        }
    }

    /// Writes a config with free ports and starts `garage server`.
    fn spawn(binary: &Path, dir: &Path) -> Result<Garage> {
        for sub in ["meta", "data"] {
            let _ = fs::remove_dir_all(dir.join(sub));
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (rpc, s3) = (free_port()?, free_port()?);
        let rpc_port = rpc.local_addr()?.port();
        let s3_port = s3.local_addr()?.port();
        let config = dir.join("garage.toml");
        // root_domain: `bucket.localhost:PORT` reaches the bucket
        // virtual-hosted (the client resolves *.localhost to 127.0.0.1).
        let text = format!(
            "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_secret = \"{secret}\"\n\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\nroot_domain = \".localhost\"\n",
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
            secret = random_hex(32)?,
        );
        fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("garage.log");
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        drop((rpc, s3));
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Garage {
            child,
            binary: binary.to_owned(),
            config,
            log,
            s3_port,
            bucket: "bootvault".into(),
            key_id: format!("GK{}", random_hex(12)?),
            secret: random_hex(32)?,
        })
    }

    fn set_up(&mut self) -> Result<()> {
        // `node id` reads the node's key from its metadata directory; up
        // once `status` is answered over RPC.
        let node = self.retry(&["node", "id", "-q"])?.trim().split('@').next().unwrap_or("").to_owned();
        if node.is_empty() {
            bail!("garage node id printed no id");
        }
        self.retry(&["status"])?;
        // Early RPC answers can still be "no handler": assigning twice is harmless.
        self.retry(&["layout", "assign", "-z", "dc1", "-c", "1GB", &node])?;
        self.cli(&["layout", "apply", "--version", "1"])?;
        // The layout takes a moment to reach the tables.
        let bucket = self.bucket.clone();
        self.retry(&["bucket", "create", &bucket])?;
        let (id, secret) = (self.key_id.clone(), self.secret.clone());
        self.cli(&["key", "import", "--yes", "-n", "bootvault", &id, &secret])?;
        self.cli(&["bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &id])?;
        // Ready when a signed request is answered.
        let client = S3Client::new(self.config("")?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.probe() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(anyhow!(e).context("garage's S3 API is not ready")),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// `garage -c CONFIG args`: its standard output.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running garage {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "garage {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`Garage::cli`] until it succeeds, for 60 s; stops when garage exits.
    fn retry(&mut self, args: &[&str]) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("garage exited ({status})");
            }
            match self.cli(args) {
                Err(e) if Instant::now() > deadline => return Err(e.context("for 60 s")),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
                r => return r,
            }
        }
    }

    /// `http://127.0.0.1:PORT` (path-style).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// `http://localhost:PORT`: with virtual-hosted addressing, the
    /// bucket is `BUCKET.localhost:PORT`.
    pub fn localhost_endpoint(&self) -> String {
        format!("http://localhost:{}", self.s3_port)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn access_key_id(&self) -> &str {
        &self.key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret
    }

    /// `s3://BUCKET/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The variables a server process needs to reach the bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL_S3", self.endpoint()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The configuration [`Garage::env`] makes of `s3://BUCKET/prefix`.
    pub fn config(&self, prefix: &str) -> Result<S3Config> {
        let env = self.env();
        let var = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        S3Config::parse(&self.url(prefix), &var, &|p| fs::read_to_string(p))
    }

    /// garage.log's last lines.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 30)
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
