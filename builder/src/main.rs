//! `bootvault`: the host command line.
//!
//! * `bootvault kernel fetch|show` — the stock kernel in the local cache.
//! * `bootvault build PC ...` — one PC's kernel, initramfs and command line.
//! * `bootvault inspect INITRD` — what an initramfs holds.
//! * `bootvault serve` — the server.

mod admin;
use bootvault_common::cpio;
mod initramfs;
mod kbuild;
mod kernel;
mod keys;
mod known;
mod local_dir;
mod media;
mod migrate;
mod netboot;
mod pc;
mod profile;
mod remote;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bootvault_common::units::human_bytes;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bootvault", version, about = "Bare-metal disk imaging: build boot images, run the server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once; boxing would only add noise
enum Cmd {
    /// The stock kernel (Debian's linux-image-amd64) in the local cache.
    Kernel {
        #[command(subcommand)]
        cmd: KernelCmd,
    },
    /// Data keys for backups encrypted on the PC (docs/DESIGN.md).
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Build one PC's boot files: kernel, initramfs, kernel command line.
    Build(BuildArgs),
    /// List what an initramfs holds (and verify its checksums).
    Inspect { initrd: PathBuf },
    /// Back up a disk or image file to a server (the engine the PCs run).
    Backup {
        /// Block device or image file.
        #[arg(long)]
        disk: PathBuf,
        #[arg(long, required_unless_present = "to", conflicts_with = "to")]
        server: Option<String>,
        /// Back up into this directory (a mounted local or USB drive; the
        /// server's store layout) instead of to a server. A drive's mount
        /// point holding a `bootvault` folder means that folder.
        #[arg(long)]
        to: Option<PathBuf>,
        /// Lock the backup with the restore password on this file's first
        /// line (`-`: standard input).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Encrypt the backup here with the data key in this file
        /// (`bootvault key new`); default: the site key (BOOTVAULT_KEY_FILE,
        /// else ~/.config/bootvault/data.key, made on first use). The store
        /// only ever holds ciphertext.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Store the backup unencrypted (readable by whoever holds the store).
        #[arg(long, conflicts_with = "key_file")]
        no_encryption: bool,
        /// The escrow's public key file (`key escrow`; default: escrow.pub
        /// next to the site key, if there is one): a locked backup's own key
        /// is also wrapped for it.
        #[arg(long)]
        escrow_pub: Option<PathBuf>,
        /// Whose backup this is (a registered PC).
        #[arg(long)]
        pc: String,
        /// The PC's token (`bootvault pc show PC --token`), or the admin token.
        #[arg(long, env = "BOOTVAULT_TOKEN", hide_env_values = true, required_unless_present = "to")]
        token: Option<String>,
        /// The SHA-256 fingerprint of an https:// server's certificate
        /// (`bootvault fingerprint` on the server); else looked up in the
        /// known-servers file (docs/DESIGN.md "Transport").
        #[arg(long, env = "BOOTVAULT_FINGERPRINT")]
        fingerprint: Option<String>,
        /// Backup name.
        #[arg(long, default_value = "full")]
        name: String,
        /// Compression level: zstd 1-10, 0 stores chunks uncompressed.
        #[arg(long, default_value_t = bootvault_common::image::DEFAULT_LEVEL)]
        level: u8,
        /// Chunk size in KiB.
        #[arg(long, default_value_t = bootvault_common::image::DEFAULT_CHUNK_SIZE / 1024)]
        chunk_kib: u32,
        /// Worker threads (default: two per core, 4 to 8).
        #[arg(long)]
        threads: Option<usize>,
        /// Keep every byte, free space and deleted files included (forensic
        /// copies); by default the free space of ext2/3/4, FAT, exFAT, NTFS
        /// and swap is left out.
        #[arg(long)]
        raw: bool,
    },
    /// Show what a backup of a disk or image file would take: each
    /// partition's filesystem, used-only or whole (and why), and the free
    /// space left out. Reads the disk only.
    Plan {
        #[arg(long)]
        disk: PathBuf,
        /// As `backup --raw` would (every partition whole).
        #[arg(long)]
        raw: bool,
        /// Also list every free byte range (disk offsets).
        #[arg(long)]
        ranges: bool,
    },
    /// Restore a backup onto a disk or image file (which must be at least as large).
    Restore {
        #[arg(long)]
        disk: PathBuf,
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        server: Option<String>,
        /// Restore from this directory (made by `backup --to`, or a drive's
        /// mount point holding a `bootvault` folder) instead of a server.
        #[arg(long)]
        from: Option<PathBuf>,
        /// The backup's restore password, on this file's first line (`-`:
        /// standard input).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// The data key of an encrypted backup (default: the site key, if
        /// there is one).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Recover a locked backup whose password is lost with the escrow's
        /// private key (`key escrow`); with the admin token, which needs no
        /// password at the server.
        #[arg(long, conflicts_with = "password_file")]
        escrow_file: Option<PathBuf>,
        /// Backup id, or `latest` (of --pc).
        #[arg(long)]
        backup: String,
        /// The PC restoring (a registered PC).
        #[arg(long)]
        pc: String,
        /// The PC's token (`bootvault pc show PC --token`), or the admin token.
        #[arg(long, env = "BOOTVAULT_TOKEN", hide_env_values = true, required_unless_present = "from")]
        token: Option<String>,
        /// The SHA-256 fingerprint of an https:// server's certificate.
        #[arg(long, env = "BOOTVAULT_FINGERPRINT")]
        fingerprint: Option<String>,
        /// Read the disk back afterwards and compare.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        threads: Option<usize>,
        /// Read the target first and skip chunks it already holds: `auto`
        /// (while it pays), `always` or `never`.
        #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
        compare: String,
    },
    /// Backups in a server's data directory.
    Backups {
        #[arg(long, default_value = "bootvault-data")]
        data: PathBuf,
        #[command(flatten)]
        remote: remote::Remote,
        /// JSON output, for scripts.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: admin::BackupsCmd,
    },
    /// PCs registered with the server (the management database).
    Pc {
        #[arg(long, default_value = "bootvault-data")]
        data: PathBuf,
        #[command(flatten)]
        remote: remote::Remote,
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: admin::PcCmd,
    },
    /// Jobs for PCs booted with action=job, and the results PCs reported.
    Jobs {
        #[arg(long, default_value = "bootvault-data")]
        data: PathBuf,
        #[command(flatten)]
        remote: remote::Remote,
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: admin::JobsCmd,
    },
    /// The web console's admin accounts (sign-in at the server's /admin/).
    Admin {
        #[arg(long, default_value = "bootvault-data")]
        data: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: admin::AdminCmd,
    },
    /// Server-wide settings: the server's URLs, listing unknown MACs.
    Settings {
        #[arg(long, default_value = "bootvault-data")]
        data: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: admin::SettingsCmd,
    },
    /// Remove chunks no backup references, and close abandoned uploads.
    Gc {
        #[arg(long, default_value = "bootvault-data")]
        data: PathBuf,
        #[command(flatten)]
        remote: remote::Remote,
        #[arg(long)]
        json: bool,
        /// Uploads older than this (seconds) count as abandoned.
        #[arg(long, default_value_t = 3600)]
        max_age: i64,
    },
    /// Move a data directory to PostgreSQL and an S3 bucket, or back to
    /// SQLite and chunk files; then it uses them.
    ///
    /// Moves PCs (tokens unchanged), settings, admin accounts, grants,
    /// results, queued jobs and every complete backup, each chunk verified
    /// before it is written; not uploads in progress or failed. Backup ids
    /// may change (printed). Stop the servers on DATA first. The target is
    /// read back before DATA/storage.conf switches; the old database and
    /// chunk files stay, renamed NAME.migrated-TIME. Stopped part-way, DATA
    /// is unchanged and a new run finishes; after success it does nothing.
    Migrate(migrate::MigrateArgs),
    /// Run the server.
    Serve {
        /// Address to listen on (port 0 picks a free port and prints it).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Data directory.
        #[arg(long, default_value = "bootvault-data")]
        data: PathBuf,
        #[command(flatten)]
        limits: ServeLimits,
        /// Your own certificate chain (PEM, e.g. an ACME client's
        /// fullchain.pem) instead of the one made in DATA/tls on first start.
        #[arg(long, requires = "tls_key", conflicts_with = "plain_http")]
        tls_cert: Option<PathBuf>,
        /// The key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Speak plain HTTP only: PC tokens and restore keys cross the
        /// network in clear (a closed imaging network, or TLS ended by a
        /// proxy in front).
        #[arg(long)]
        plain_http: bool,
        /// The management database on PostgreSQL (postgres://USER[:PASSWORD]@HOST:PORT/DB)
        /// instead of SQLite in DATA; several servers may share it. Recorded in
        /// DATA/storage.conf for every later command on DATA.
        #[arg(long)]
        db: Option<String>,
        /// Chunks and manifests in an S3-compatible bucket (s3://BUCKET[/PREFIX]; endpoint,
        /// region and keys from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
        /// AWS_SECRET_ACCESS_KEY or BOOTVAULT_S3_CREDENTIALS) instead of DATA/chunks.
        #[arg(long)]
        store: Option<String>,
    },
    /// Print the fingerprint of the server's certificate (what PCs and
    /// `--fingerprint` pin).
    Fingerprint {
        #[arg(long, default_value = "bootvault-data")]
        data: PathBuf,
    },
}

/// `bootvault serve`'s timeouts and connection caps (docs/PROTOCOL.md,
/// "Server limits"); the defaults are the server's.
#[derive(clap::Args)]
struct ServeLimits {
    /// Seconds a request's headers may take to arrive; also how long an
    /// idle keep-alive connection stays open.
    #[arg(long, value_name = "SECONDS", default_value_t = LIMITS.header_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Seconds a request body may go without data before the request is
    /// answered 408.
    #[arg(long, value_name = "SECONDS", default_value_t = LIMITS.body_idle.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    body_idle_timeout: u64,
    /// Seconds a client may leave the server's answer unread before the
    /// connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = LIMITS.write_stall.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    write_stall_timeout: u64,
    /// Connections open at once (lowered to what the open-file limit allows).
    #[arg(long, default_value_t = LIMITS.max_connections as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Connections open at once from one IP address (PCs behind one NAT
    /// share one; a PC uses up to 9).
    #[arg(long, default_value_t = LIMITS.max_per_address as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_address: u64,
}

const LIMITS: bootvault_server::listener::Limits = bootvault_server::listener::Limits::DEFAULT;

impl ServeLimits {
    fn limits(&self) -> bootvault_server::listener::Limits {
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        bootvault_server::listener::Limits {
            header_timeout: std::time::Duration::from_secs(self.header_timeout),
            body_idle: std::time::Duration::from_secs(self.body_idle_timeout),
            write_stall: std::time::Duration::from_secs(self.write_stall_timeout),
            max_connections: count(self.max_connections),
            max_per_address: count(self.max_connections_per_address),
        }
    }
}

#[derive(Subcommand)]
enum KernelCmd {
    /// Download and unpack the current linux-image-amd64 (idempotent).
    Fetch {
        /// Meta package whose dependency names the kernel.
        #[arg(long, default_value = "linux-image-amd64")]
        package: String,
    },
    /// Show the cached kernel.
    Show,
    /// Build our own kernel from Debian's linux-source-6.1 and a
    /// configuration of kernel-config/ (everything built in, no modules),
    /// once: it is cached like the stock kernel.
    Build {
        /// The configuration (kernel-config/NAME.config).
        #[arg(long, default_value = "pc")]
        config: String,
        /// x86_64, or i686 for 32-bit PCs.
        #[arg(long, default_value = "x86_64")]
        arch: String,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Make a new random data key in FILE (mode 0600; never overwrites).
    /// Keep a copy offline: without it, its backups cannot be restored.
    New { file: PathBuf },
    /// Print the fingerprint of the key in FILE (what backups record).
    Show { file: PathBuf },
    /// Make an escrow key: the private key in FILE (keep it offline) and
    /// its public half in FILE.pub, which PCs built with --escrow-pub (or
    /// finding it next to the site key, as escrow.pub) wrap every locked
    /// backup's own key for. It recovers a backup whose password is lost
    /// (`restore --escrow-file`).
    Escrow { file: PathBuf },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// PC name (or give it in --pc-file).
    name: Option<String>,
    /// PC description (TOML).
    #[arg(long)]
    pc_file: Option<PathBuf>,
    /// Server URL, e.g. https://10.0.2.2:8080.
    #[arg(long)]
    server: Option<String>,
    /// The SHA-256 fingerprint of the https:// server's certificate, pinned
    /// into the PC (default with --data: the server's own, DATA/tls).
    #[arg(long)]
    fingerprint: Option<String>,
    /// Built-in module profile (qemu, pc).
    #[arg(long)]
    profile: Option<String>,
    /// Module profile file instead of a built-in one.
    #[arg(long, conflicts_with = "profile")]
    profile_file: Option<PathBuf>,
    /// Kernel console (repeatable; the last one is the init's).
    #[arg(long = "console")]
    consoles: Vec<String>,
    /// Extra kernel parameters.
    #[arg(long)]
    append: Option<String>,
    /// Per-PC setting KEY=VALUE (repeatable), e.g. --set ip=10.0.0.5/24.
    #[arg(long = "set")]
    set: Vec<String>,
    /// Our own kernel, built from this configuration of kernel-config/
    /// (`bootvault kernel build`, done here if the cache lacks it) instead
    /// of the stock kernel.
    #[arg(long, conflicts_with = "kernel")]
    kernel_config: Option<String>,
    /// The PC's architecture: x86_64, or i686 for 32-bit PCs (the init
    /// built for i686-unknown-linux-musl, and our i686 kernel).
    #[arg(long, default_value = "x86_64")]
    arch: String,
    /// Your own kernel image (with --modules).
    #[arg(long, requires = "modules")]
    kernel: Option<PathBuf>,
    /// Your own module tree, lib/modules/RELEASE (with --kernel).
    #[arg(long, requires = "kernel")]
    modules: Option<PathBuf>,
    /// The init binary (default: the one built next to this program).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Output directory (default out/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Encrypt this PC's backups on the PC with the data key in FILE
    /// (`bootvault key new`); default: the site key (BOOTVAULT_KEY_FILE,
    /// else ~/.config/bootvault/data.key, made on first use). The key goes
    /// into the initramfs (mode 0600), never to the server, so not with
    /// --media pxe (the server publishes network-boot files).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Build a PC whose backups are not encrypted (network boot, or a
    /// closed imaging network).
    #[arg(long, conflicts_with = "key_file")]
    no_encryption: bool,
    /// The escrow's public key file (`key escrow`; default: escrow.pub next
    /// to the site key, if there is one), written into the PC: its locked
    /// backups' own keys are also wrapped for it.
    #[arg(long)]
    escrow_pub: Option<PathBuf>,
    /// Boot media: pxe (publish to the server for network boot; needs
    /// --data), iso, usb, floppy (1.44 MB, BIOS), floppy288 (2.88 MB,
    /// BIOS; what our smallest kernel and the init fit on). Repeatable, or
    /// a comma list.
    #[arg(long, value_delimiter = ',')]
    media: Vec<String>,
    /// The server's data directory: build the PC as registered there
    /// (token, network settings, disk, default action, server URL).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write the USB image (or the ISO, if only that is built) to this
    /// whole-disk block device, after a typed confirmation.
    #[arg(long, value_name = "DEVICE")]
    write: Option<PathBuf>,
    /// With --write: no confirmation (for scripts; the checks still apply).
    #[arg(long, requires = "write")]
    yes: bool,
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Serve { .. }) {
        default_sigpipe();
    }
    if let Err(e) = run(cli) {
        eprintln!("bootvault: {e:#}");
        std::process::exit(1);
    }
}

/// A command whose reader went away (`bootvault pc pending | head`) ends
/// as Unix tools do, killed by SIGPIPE, instead of panicking in `println!`.
/// Rust starts every program with SIGPIPE ignored, and the server keeps it
/// so: a PC closing its socket must not kill it. Sockets are not affected
/// here either way: std sends with MSG_NOSIGNAL, so the HTTP client of
/// `backup` and `restore` still sees EPIPE as an error.
fn default_sigpipe() {
    // SAFETY: SIG_DFL installs no handler, so none of our code runs in a
    // signal context; this runs at start, before any thread is spawned.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// How `backup`/`restore` use a store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Write,
    Read,
    /// Reading with the escrow key: a drive's password gate is passed.
    Escrow,
}

/// The store `backup`/`restore` use: a server (with the PC's token) or a
/// directory on a mounted drive (to write to, or only to read).
fn store_for(
    server: Option<&str>,
    dir: Option<&Path>,
    pc: &str,
    token: Option<&str>,
    fingerprint: Option<&str>,
    access: Access,
) -> Result<Box<dyn bootvault_engine::store::Store>> {
    use bootvault_engine::local_store::{LocalStore, DRIVE_DIR};
    Ok(match (server, dir) {
        (_, Some(d)) => {
            // A drive's mount point: the store is its bootvault folder, as the PCs write it.
            let root =
                if !LocalStore::exists(d) && d.join(DRIVE_DIR).is_dir() { d.join(DRIVE_DIR) } else { d.to_owned() };
            let store = match access {
                Access::Write => LocalStore::open(&root)?,
                Access::Read => LocalStore::open_read(&root)?,
                Access::Escrow => LocalStore::open_read(&root)?.ungated(),
            };
            if !store.cleaned().is_empty() {
                eprintln!("{}: {}", root.display(), store.cleaned().line());
            }
            Box::new(store)
        }
        (Some(url), None) => {
            let pin = known::pin_for(url, fingerprint)?;
            Box::new(bootvault_engine::client::Client::new(url, pc, token.unwrap_or_default()).pinned(pin))
        }
        (None, None) => bail!("give --server (with --token) or a directory"),
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Kernel { cmd: KernelCmd::Fetch { package } } => {
            let k = kernel::fetch(&package)?;
            print_kernel(&k);
            Ok(())
        }
        Cmd::Kernel { cmd: KernelCmd::Build { config, arch } } => {
            let k = kbuild::build(&config, kbuild::Arch::parse(&arch)?)?;
            print_kernel(&k);
            Ok(())
        }
        Cmd::Kernel { cmd: KernelCmd::Show } => {
            let k = kernel::cached().context("no kernel in the cache; run `bootvault kernel fetch`")?;
            print_kernel(&k);
            Ok(())
        }
        Cmd::Build(args) => build(args),
        Cmd::Inspect { initrd } => inspect(&initrd),
        Cmd::Key { cmd: KeyCmd::New { file } } => {
            let key = keys::new_key_file(&file)?;
            println!("new data key {} in {}; keep a copy offline", key.fingerprint(), file.display());
            Ok(())
        }
        Cmd::Key { cmd: KeyCmd::Escrow { file } } => {
            let public = keys::new_escrow(&file)?;
            println!(
                "new escrow key in {} (keep it offline); public {} in {}.pub",
                file.display(),
                bootvault_common::wire::to_hex(&public),
                file.display()
            );
            Ok(())
        }
        Cmd::Key { cmd: KeyCmd::Show { file } } => {
            println!("{}", keys::read_key_file(&file)?.fingerprint());
            Ok(())
        }
        Cmd::Backup {
            disk,
            server,
            to,
            password_file,
            key_file,
            no_encryption,
            escrow_pub,
            pc,
            token,
            fingerprint,
            name,
            level,
            chunk_kib,
            threads,
            raw,
        } => {
            let dev = bootvault_engine::device::Device::open(&disk, false)?;
            let client = store_for(
                server.as_deref(),
                to.as_deref(),
                &pc,
                token.as_deref(),
                fingerprint.as_deref(),
                Access::Write,
            )?;
            let client = client.as_ref();
            let mut opts = bootvault_engine::backup::BackupOptions::new(&pc, &name);
            opts.level = level;
            opts.chunk_size = chunk_kib.saturating_mul(1024);
            opts.raw = raw;
            if let Some(t) = threads {
                opts.threads = t;
            }
            if let Some(f) = &password_file {
                let password = admin::read_password(f)?;
                opts.lock = Some(bootvault_engine::lock::Lock::new(password.as_bytes())?);
            }
            if let Some((key, file)) = keys::for_backups(key_file.as_deref(), no_encryption)? {
                eprintln!("encrypting with data key {} ({})", key.fingerprint(), file.display());
                opts.key = Some(std::sync::Arc::new(key));
                opts.escrow = keys::escrow_public(escrow_pub.as_deref())?;
            }
            let r = bootvault_engine::backup::backup(&dev, client, &opts, &mut |p| eprintln!("{}", p.line()))?;
            println!("{}", r.summary());
            Ok(())
        }
        Cmd::Restore {
            disk,
            server,
            from,
            password_file,
            key_file,
            escrow_file,
            backup,
            pc,
            token,
            fingerprint,
            verify,
            threads,
            compare,
        } => {
            // The escrow key's holder opens a locked backup without its
            // password: a drive's gate lets them through (a server's needs
            // the admin token).
            let access = if escrow_file.is_some() { Access::Escrow } else { Access::Read };
            let client =
                store_for(server.as_deref(), from.as_deref(), &pc, token.as_deref(), fingerprint.as_deref(), access)?;
            let client = client.as_ref();
            let id = match backup.as_str() {
                "latest" => client.latest(&pc, None)?,
                v => v.parse().with_context(|| format!("--backup {v}: expected an id or latest"))?,
            };
            if let Some(f) = &password_file {
                let password = admin::read_password(f)?;
                if !client.unlock(id, password.as_bytes())? {
                    eprintln!("backup {id} has no password; --password-file not needed");
                }
            }
            let dev = bootvault_engine::device::Device::open(&disk, true)?;
            use bootvault_engine::restore::Compare;
            let compare = match compare.as_str() {
                "always" => Compare::Always,
                "never" => Compare::Never,
                _ => Compare::Auto,
            };
            let mut opts = bootvault_engine::restore::RestoreOptions { verify, compare, ..Default::default() };
            opts.key = keys::for_restores(key_file.as_deref())?.map(std::sync::Arc::new);
            if let Some(f) = &escrow_file {
                let m = bootvault_common::image::Manifest::decode(&client.manifest(id)?)
                    .map_err(|e| anyhow::anyhow!("manifest of backup {id}: {e}"))?;
                let key = keys::recover_with_escrow(f, &m)?;
                eprintln!("backup {id}: its own key {} recovered with the escrow key", key.fingerprint());
                opts.key = Some(std::sync::Arc::new(key));
            }
            if let Some(t) = threads {
                opts.threads = t;
            }
            let r = bootvault_engine::restore::restore(&dev, client, id, &opts, &mut |p| eprintln!("{}", p.line()))?;
            println!("{}", r.summary(&disk.display().to_string()));
            Ok(())
        }
        Cmd::Plan { disk, raw, ranges } => {
            let dev = bootvault_engine::device::Device::open(&disk, false)?;
            let plan = bootvault_engine::backup::disk_plan(&dev, raw);
            for p in &plan.partitions {
                println!("{}", p.describe());
            }
            println!(
                "{} of {} is free space a backup leaves out",
                bootvault_common::units::human_bytes(plan.unused_bytes()),
                bootvault_common::units::human_bytes(dev.bytes)
            );
            if ranges {
                for (s, e) in plan.unused_ranges() {
                    println!("free {s}..{e}");
                }
            }
            Ok(())
        }
        Cmd::Backups { data, remote, json, cmd } => match remote.client()? {
            Some(c) => remote::backups(&c, json, cmd),
            None => admin::backups(&data, json, cmd),
        },
        Cmd::Jobs { data, remote, json, cmd } => match remote.client()? {
            Some(c) => remote::jobs(&c, json, cmd),
            None => admin::jobs(&data, json, cmd),
        },
        Cmd::Pc { data, remote, json, cmd } => match remote.client()? {
            Some(c) => remote::pcs(&c, json, cmd),
            None => admin::pcs(&data, json, cmd),
        },
        Cmd::Settings { data, json, cmd } => admin::settings(&data, json, cmd),
        Cmd::Admin { data, json, cmd } => admin::admins(&data, json, cmd),
        Cmd::Gc { data, remote, json, max_age } => match remote.client()? {
            Some(c) => remote::gc(&c, json, max_age),
            None => admin::gc(&data, json, max_age),
        },
        Cmd::Migrate(args) => migrate::run(args),
        Cmd::Serve { listen, data, limits, tls_cert, tls_key, plain_http, db, store } => {
            use bootvault_server::storage::Storage;
            use bootvault_server::tls::Mode;
            let storage = Storage::settle(&data, &Storage::new(db, store)?)?;
            if storage != Storage::default() {
                println!("storage: {}", storage.describe());
            }
            let tls = match (tls_cert, tls_key) {
                _ if plain_http => Mode::Plain,
                (Some(cert), Some(key)) => Mode::Own { cert, key },
                _ => Mode::Made,
            };
            // The console's downloads are made with the builder's media code.
            let media: bootvault_server::web::MediaMaker = std::sync::Arc::new(|dir, pc, kind| {
                let image = match kind {
                    "iso" => media::iso(dir, pc)?,
                    _ => media::usb(dir, pc)?,
                };
                Ok(image.path)
            });
            bootvault_server::serve(bootvault_server::Options {
                listen,
                data,
                limits: limits.limits(),
                tls,
                media: Some(media),
                ready: None,
            })
        }
        Cmd::Fingerprint { data } => match bootvault_server::tls::fingerprint_in(&data)? {
            Some(fp) => {
                println!("{fp}");
                Ok(())
            }
            None => bail!(
                "{} has no certificate yet: `bootvault serve --data {}` makes one on its first start",
                data.join(bootvault_server::tls::DIR).display(),
                data.display()
            ),
        },
    }
}

fn print_kernel(k: &kernel::Kernel) {
    println!("release {}", k.release);
    println!("kernel  {}", k.image.display());
    println!("modules {}", k.modules.display());
}

/// The init built by `make init`, next to this program in the target dir.
/// The init built for `arch` next to this program (or named by
/// BOOTVAULT_INIT, BOOTVAULT_INIT_I686).
fn default_init(arch: kbuild::Arch) -> Result<PathBuf> {
    let (var, targets, make) = match arch {
        kbuild::Arch::X86_64 => {
            ("BOOTVAULT_INIT", &["x86_64-unknown-linux-musl", "x86_64-unknown-linux-gnu"][..], "make init")
        }
        kbuild::Arch::I686 => ("BOOTVAULT_INIT_I686", &["i686-unknown-linux-musl"][..], "make init-i686"),
    };
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating this program")?;
    let target = exe.parent().and_then(Path::parent).context("locating the target directory")?;
    for t in targets {
        let p = target.join(t).join("init/init");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no {} init found next to {} (run `{make}`, or pass --init)", arch.name(), exe.display())
}

/// Refuses an init that cannot run on `arch`'s kernel (ELF class and machine).
fn check_init_arch(init: &[u8], arch: kbuild::Arch) -> Result<()> {
    let class = init.get(4).copied();
    let machine = init.get(18..20).map(|m| u16::from_le_bytes([m[0], m[1]]));
    let want = match arch {
        kbuild::Arch::X86_64 => (Some(2), Some(62)),
        kbuild::Arch::I686 => (Some(1), Some(3)),
    };
    if !init.starts_with(b"\x7fELF") || (class, machine) != want {
        bail!("the init is not an {} executable (ELF class {class:?}, machine {machine:?}): build it with --arch's target", arch.name());
    }
    Ok(())
}

fn build(a: BuildArgs) -> Result<()> {
    let file_text = match &a.pc_file {
        Some(p) => {
            Some((p.display().to_string(), fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?))
        }
        None => None,
    };
    // A registered PC: its database settings come first, so the file and
    // the flags can still override them.
    // The server's database, opened once for the settings and for
    // publishing network-boot files.
    let vault = a.data.as_deref().map(bootvault_server::vault::Vault::open).transpose()?;
    let registered = match &vault {
        Some(vault) => {
            let name = a.name.as_deref().context("--data needs the PC's name")?;
            Some(pc::registered(vault, name)?)
        }
        None => None,
    };
    let server = a.server.clone().or_else(|| registered.as_ref().and_then(|r| r.server.clone()));
    let mut set: Vec<String> =
        registered.iter().flat_map(|r| r.settings.iter().cloned()).chain(a.set.iter().cloned()).collect();
    if let Some(fp) = pin_for_build(server.as_deref(), a.fingerprint.as_deref(), a.data.as_deref())? {
        set.push(format!("fingerprint={fp}"));
    }
    let escrow = if a.no_encryption { None } else { keys::escrow_public(a.escrow_pub.as_deref())? };
    if let Some(e) = escrow {
        set.push(format!("escrow={}", bootvault_common::wire::to_hex(&e)));
    }
    let pc = pc::Pc::from_parts(
        file_text.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
        &pc::Overrides {
            name: a.name.as_deref(),
            server: server.as_deref(),
            profile: a.profile.as_deref(),
            consoles: &a.consoles,
            append: a.append.as_deref(),
            set: &set,
        },
    )?;
    if pc.config.token.is_empty() {
        eprintln!(
            "warning: PC {} has no token: a bootvault server refuses it (build with --data DIR for a registered PC)",
            pc.config.pc
        );
    }
    let profile_text = match &a.profile_file {
        Some(p) => fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => profile::builtin(&pc.profile)
            .with_context(|| format!("no built-in profile {:?} (have qemu, pc)", pc.profile))?
            .to_owned(),
    };
    let wanted = profile::resolve(&profile_text)?;
    let arch = kbuild::Arch::parse(&a.arch)?;
    let k = match (&a.kernel, &a.modules, &a.kernel_config) {
        (Some(img), Some(m), _) => kernel::user_kernel(img, m)?,
        (_, _, Some(config)) => kbuild::build(config, arch)?,
        _ if arch == kbuild::Arch::I686 => kernel::fetch_686()?,
        _ => kernel::cached()
            .context("no kernel in the cache; run `bootvault kernel fetch` or pass --kernel/--modules")?,
    };
    let index = kernel::index(&k.modules)?;
    let init_path = match a.init {
        Some(p) => p,
        None => default_init(arch)?,
    };
    let init = fs::read(&init_path).with_context(|| format!("reading init {}", init_path.display()))?;
    check_init_arch(&init, arch).with_context(|| format!("init {}", init_path.display()))?;
    let out = a.out.unwrap_or_else(|| PathBuf::from("out").join(&pc.config.pc));
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let sealing = keys::for_backups(a.key_file.as_deref(), a.no_encryption)?;
    if let Some((_, file)) = sealing.as_ref().filter(|_| a.media.iter().any(|m| m == "pxe")) {
        bail!(
            "--media pxe: the server publishes network-boot files and must never hold the data key ({}); boot \
             such PCs from an ISO or USB image, or build with --no-encryption",
            file.display()
        );
    }
    let key = sealing.as_ref().map(|(_, file)| keys::text_of(file)).transpose()?;
    let config_text = pc.config.to_file();
    let (entries, mut report) =
        initramfs::entries(&init, &k, &index, &wanted, &config_text, key.as_ref().map(|t| t.as_str()))?;
    // Network boot: the same initramfs without this PC's configuration too,
    // the site's template for PCs approved in the web console.
    if a.media.iter().any(|m| m == "pxe") {
        let base = entries.iter().filter(|e| e.path != initramfs::CONFIG_PATH).cloned().collect();
        initramfs::write(base, &out.join("base.img"), &mut initramfs::Report::default(), initramfs::Compression::Gzip)?;
    }
    // The floppy needs every byte: xz there, gzip elsewhere.
    let compression = if a.media.iter().any(|m| m.starts_with("floppy")) {
        initramfs::Compression::Xz
    } else {
        initramfs::Compression::Gzip
    };
    initramfs::write(entries, &out.join("initrd.img"), &mut report, compression)?;
    let kernel_bytes =
        fs::copy(&k.image, out.join("vmlinuz")).with_context(|| format!("copying {}", k.image.display()))?;
    let cmdline = pc.cmdline();
    fs::write(out.join("cmdline"), format!("{cmdline}\n"))?;

    println!("built PC {} in {}", pc.config.pc, out.display());
    println!("  kernel     {} ({})  {}", human_bytes(kernel_bytes), k.release, out.join("vmlinuz").display());
    println!(
        "  initramfs  {} {}, {} cpio  {}",
        human_bytes(report.compressed_bytes),
        compression.name(),
        human_bytes(report.cpio_bytes),
        out.join("initrd.img").display()
    );
    println!("  init       {}", human_bytes(report.init_bytes));
    match &sealing {
        Some((k, file)) => {
            println!("  encrypted  backups sealed on the PC with data key {} ({})", k.fingerprint(), file.display())
        }
        None => println!("  encrypted  no (--no-encryption): the store can read this PC's backups"),
    }
    if index.modules.is_empty() {
        // Our own kernels: nothing to pick, nothing to list as missing.
        println!("  modules    none: everything is built into this kernel");
    } else {
        println!(
            "  modules    {} ({}, gzipped {}, profile {}): {}",
            report.modules.len(),
            human_bytes(report.module_bytes),
            human_bytes(report.module_packed),
            a.profile_file.as_ref().map(|p| p.display().to_string()).unwrap_or(pc.profile.clone()),
            report.modules.join(" ")
        );
        if !report.missing.is_empty() {
            println!("  not in this kernel (built in, or absent): {}", report.missing.join(" "));
        }
    }
    println!("  cmdline    {cmdline}");
    let mut images = Vec::new();
    for m in &a.media {
        match m.as_str() {
            "pxe" => {
                let vault = vault.as_ref().context("--media pxe needs --data (the server's data directory)")?;
                let (bytes, dir) = netboot::publish(vault, &pc.config.pc, &out, &config_text)?;
                println!("  pxe        {}  {} (served by MAC to iPXE: /boot/ipxe)", human_bytes(bytes), dir.display());
            }
            "iso" => images.push(media::iso(&out, &pc.config.pc)?),
            "usb" => images.push(media::usb(&out, &pc.config.pc)?),
            "floppy" => images.push(media::floppy(&out, &pc.config.pc, media::FLOPPY_144)?),
            "floppy288" => images.push(media::floppy(&out, &pc.config.pc, media::FLOPPY_288)?),
            other => bail!("--media {other}: expected pxe, iso, usb, floppy or floppy288"),
        }
    }
    for image in &images {
        println!("{}", image.report_line());
    }
    if let Some(device) = &a.write {
        media::write_to_device(&images, device, a.yes)?;
    }
    Ok(())
}

/// The fingerprint a PC of `server` pins: `--fingerprint`, else (with
/// --data) the server's own certificate; none for an `http://` server.
fn pin_for_build(
    server: Option<&str>,
    given: Option<&str>,
    data: Option<&Path>,
) -> Result<Option<bootvault_common::fingerprint::Fingerprint>> {
    use bootvault_common::fingerprint::Fingerprint;
    if let Some(text) = given {
        return Fingerprint::parse(text).map(Some).map_err(|e| anyhow::anyhow!("--fingerprint: {e}"));
    }
    let Some(url) = server.filter(|s| s.split(',').any(|u| u.trim().starts_with("https://"))) else {
        return Ok(None);
    };
    let Some(data) = data else {
        bail!("{url} is https: give --fingerprint (`bootvault fingerprint` on the server prints it), or --data");
    };
    bootvault_server::tls::fingerprint_in(data)?.map(Some).with_context(|| {
        format!(
            "{url} is https, but {} has no certificate yet: start the server once (`bootvault serve --data {}`), or \
             give --fingerprint",
            data.join(bootvault_server::tls::DIR).display(),
            data.display()
        )
    })
}

fn inspect(path: &Path) -> Result<()> {
    let raw = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let data = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut d = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut d)
            .with_context(|| format!("decompressing {}", path.display()))?;
        d
    } else if raw.starts_with(b"\xFD7zXZ\0") {
        let out = std::process::Command::new("xz")
            .args(["-dc", "--"])
            .arg(path)
            .output()
            .context("running xz -d (Debian package xz-utils)")?;
        if !out.status.success() {
            bail!("decompressing {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        out.stdout
    } else {
        raw
    };
    let entries = cpio::read_archive(&data).with_context(|| format!("reading {}", path.display()))?;
    for e in &entries {
        let (kind, size) = match &e.kind {
            cpio::Kind::Dir => ("d", 0),
            cpio::Kind::File(d) => ("f", d.len()),
            cpio::Kind::Symlink(t) => ("l", t.len()),
            cpio::Kind::CharDev { .. } => ("c", 0),
            cpio::Kind::BlockDev { .. } => ("b", 0),
        };
        println!("{kind} {:o} {:>10} {}", e.mode, size, e.path);
    }
    println!("{} entries, checksums ok", entries.len());
    Ok(())
}
