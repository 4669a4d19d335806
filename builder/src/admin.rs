//! Admin commands over a server's data directory: backups, jobs and
//! results, garbage collection. They open the vault directly (SQLite in
//! WAL mode, so this works while the server runs). Tables for people,
//! `--json` for scripts.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bootvault_common::units::human_bytes;
use bootvault_engine::lock::Zeroizing;
use bootvault_server::vault::{self, BackupRow, PcRow, Vault};

#[derive(clap::Subcommand)]
pub enum BackupsCmd {
    /// List backups (complete ones; --all adds uploading and failed).
    List {
        #[arg(long)]
        pc: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Details of one backup.
    Show { id: i64 },
    /// Re-read every stored chunk of a backup and check its hash.
    Verify { id: i64 },
    /// Write a backup as one file (the single-file form).
    Export { id: i64, file: PathBuf },
    /// Read a single-file backup (verifying it) into the store.
    Import {
        file: PathBuf,
        /// Whose backup it becomes (default: the PC it was made on).
        #[arg(long)]
        pc: Option<String>,
    },
    /// Copy the complete backups of a local store (made by `backup --to`;
    /// PATH is the store or a drive with one in bootvault/) into the
    /// server's store: chunks verified, only those the server lacks;
    /// restore passwords kept; backups already imported skipped.
    ImportDir {
        path: PathBuf,
        /// Whose backups they become (default: the PC each was made on).
        #[arg(long)]
        pc: Option<String>,
    },
    /// Copy complete backups out of the server's store into a local store
    /// at PATH (created if needed; `restore --from PATH` reads it).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["backup", "pc", "all"])))]
    ExportDir {
        path: PathBuf,
        /// Backup ids (repeatable).
        #[arg(long, num_args = 1..)]
        backup: Vec<i64>,
        /// Every complete backup of this PC.
        #[arg(long)]
        pc: Option<String>,
        /// Every complete backup.
        #[arg(long)]
        all: bool,
    },
    /// Remove a backup (its chunks go at the next gc).
    Rm { id: i64 },
    /// Let other PCs restore this backup (one master image, many PCs).
    Grant {
        id: i64,
        /// Registered PCs.
        pcs: Vec<String>,
        /// Every registered PC, present and future.
        #[arg(long, conflicts_with = "pcs")]
        all: bool,
    },
    /// Take a grant back (`--all` takes back the every-PC grant).
    Revoke {
        id: i64,
        pcs: Vec<String>,
        #[arg(long, conflicts_with = "pcs")]
        all: bool,
    },
}

/// Server-wide settings kept in the database.
#[derive(clap::Subcommand)]
pub enum SettingsCmd {
    /// Show the settings and where the admin token is.
    Show,
    /// The server's own URLs as PCs reach it (comma list; the first goes
    /// into PCs built without --server).
    ServerUrls { urls: String },
    /// List unknown MACs that network-boot (`pc pending`): yes or no.
    RegisterUnknown { value: String },
}

/// The web console's admin accounts (`/admin/` on the server).
#[derive(clap::Subcommand)]
pub enum AdminCmd {
    /// Add an account; its password is the first line of --password-file
    /// (`-`: standard input), at least 10 characters.
    Add {
        name: String,
        #[arg(long, default_value = "-")]
        password_file: PathBuf,
    },
    /// Set an account's password (its open sessions end).
    Passwd {
        name: String,
        #[arg(long, default_value = "-")]
        password_file: PathBuf,
    },
    /// The accounts.
    List,
    /// Remove an account (its open sessions end).
    Rm { name: String },
}

#[derive(clap::Subcommand)]
pub enum JobsCmd {
    /// Queued, running and finished jobs.
    List {
        #[arg(long)]
        pc: Option<String>,
    },
    /// Queue a job for a PC booted with action=job or menu (a job runs
    /// before the menu).
    Add {
        pc: String,
        /// backup or restore
        action: String,
        #[arg(long, default_value = "auto")]
        disk: String,
        #[arg(long)]
        name: Option<String>,
        /// Backup id to restore (default: the PC's latest).
        #[arg(long)]
        backup: Option<i64>,
        /// Restore password, the first line of FILE (`-`: standard input).
        /// A backup job locks the backup with it; a restore job of a
        /// locked backup proves it now, for this PC.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// The site's data key (default: the site key, if there is one):
        /// with a password, the job carries the password's wrap key to
        /// the PC sealed with it, so a backup gets (or a restore opens) a
        /// key of its own that the server never sees.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// Results reported by PCs (jobs and headless runs).
    Results {
        #[arg(long)]
        pc: Option<String>,
    },
}

/// How a PC is set up; shared by `pc add` and `pc edit`.
#[derive(clap::Args, Clone, Default)]
pub struct PcSettings {
    /// MAC address of the PC's network card (aa:bb:cc:dd:ee:ff).
    #[arg(long)]
    mac: Option<String>,
    /// Static address ADDR/PREFIX (with --gateway); the default is DHCP.
    #[arg(long, conflicts_with = "dhcp")]
    ip: Option<String>,
    #[arg(long, requires = "ip")]
    gateway: Option<String>,
    /// Resolvers, comma-separated.
    #[arg(long)]
    dns: Option<String>,
    /// Get the address by DHCP.
    #[arg(long)]
    dhcp: bool,
    /// network (boots from the server) or local (boots from its media).
    #[arg(long)]
    mode: Option<String>,
    /// Disk to back up or restore: auto or a name like sda.
    #[arg(long)]
    disk: Option<String>,
    /// What the PC does when it boots: menu, backup or restore.
    #[arg(long)]
    default_action: Option<String>,
    /// Storage the PC's backups may take on the server (new bytes it
    /// sends, after deduplication and compression): a size such as 500G
    /// or 2T, or `none`. Past it, its uploads are refused (HTTP 507).
    #[arg(long)]
    quota: Option<String>,
}

impl PcSettings {
    /// The changes these flags ask for, checked by the vault
    /// ([`vault::PcChanges`]: the web console's PC page checks the same).
    pub fn changes(&self) -> vault::PcChanges {
        vault::PcChanges {
            mac: self.mac.clone(),
            ip: if self.dhcp { Some("dhcp".into()) } else { self.ip.clone() },
            gateway: self.gateway.clone(),
            dns: self.dns.clone(),
            mode: self.mode.clone(),
            disk: self.disk.clone(),
            default_action: self.default_action.clone(),
            quota: self.quota.clone(),
        }
    }
}

#[derive(clap::Subcommand)]
pub enum PcCmd {
    /// Register a PC; prints its secret token once.
    Add {
        name: String,
        #[command(flatten)]
        settings: PcSettings,
    },
    /// Registered PCs.
    List,
    /// One PC's settings (--token to show its secret).
    Show {
        name: String,
        #[arg(long)]
        token: bool,
    },
    /// Change a PC's settings (the token stays).
    Edit {
        name: String,
        #[command(flatten)]
        settings: PcSettings,
    },
    /// Unknown MACs that network-booted (with `settings register-unknown
    /// yes`); `pc add NAME --mac MAC` approves one.
    Pending,
    /// Unregister a PC (refused while it has backups, unless --with-backups).
    Rm {
        name: String,
        #[arg(long)]
        with_backups: bool,
    },
}

/// A PC as `pc show --json` and `pc add --json` print it: its settings,
/// quota and what its backups take.
pub fn print_pc(view: &vault::PcView, token: bool) {
    print_pc_row(&view.pc, token);
    println!(
        "quota          {} ({} used)",
        view.quota.map(human_bytes).unwrap_or_else(|| "none".into()),
        human_bytes(view.used)
    );
}

fn print_pc_row(p: &PcRow, token: bool) {
    println!("pc             {}", p.name);
    println!("mac            {}", if p.mac.is_empty() { "-" } else { &p.mac });
    println!(
        "ip             {}{}",
        p.ip,
        if p.gateway.is_empty() { String::new() } else { format!(" via {}", p.gateway) }
    );
    println!("dns            {}", if p.dns.is_empty() { "-" } else { &p.dns });
    println!("mode           {}", p.mode);
    println!("disk           {}", p.disk);
    println!("default action {}", p.default_action);
    println!("last seen      {}", p.last_seen.map(when).unwrap_or_else(|| "never".into()));
    if token {
        println!("token          {}", p.token);
    }
}

pub fn pcs(data: &Path, as_json: bool, cmd: PcCmd) -> Result<()> {
    let v = Vault::open(data)?;
    match cmd {
        PcCmd::Add { name, settings } => {
            let view = v.pc_view(v.add_pc_with(&name, &settings.changes())?, true)?;
            print_added(&view, as_json)
        }
        PcCmd::List => print_pc_list(&v.list_pcs()?, as_json),
        PcCmd::Show { name, token } => {
            let pc = v.pc(&name)?.with_context(|| format!("no registered PC {name}"))?;
            print_view(&v.pc_view(pc, token)?, token, as_json)
        }
        PcCmd::Edit { name, settings } => {
            print_view(&v.pc_view(v.edit_pc_with(&name, &settings.changes())?, false)?, false, as_json)
        }
        PcCmd::Pending => print_pending(&v.list_pending(vault::now())?, as_json),
        PcCmd::Rm { name, with_backups } => {
            print_removed(&name, v.remove_pc(&name, with_backups)?);
            Ok(())
        }
    }
}

pub fn print_added(view: &vault::PcView, as_json: bool) -> Result<()> {
    if as_json {
        return json(view);
    }
    print_pc(view, true);
    println!("registered; the token above goes into the PC's boot media");
    Ok(())
}

pub fn print_view(view: &vault::PcView, token: bool, as_json: bool) -> Result<()> {
    if as_json {
        return json(view);
    }
    print_pc(view, token);
    Ok(())
}

pub fn print_removed(name: &str, backups: u64) {
    println!(
        "PC {name} unregistered{}",
        if backups > 0 { format!(", {backups} backups removed") } else { String::new() }
    );
}

pub fn print_pc_list(rows: &[PcRow], as_json: bool) -> Result<()> {
    if as_json {
        let rows: Vec<PcRow> = rows
            .iter()
            .cloned()
            .map(|mut p| {
                p.token.clear();
                p
            })
            .collect();
        return json(&rows);
    }
    println!("{:<16} {:<17} {:<18} {:<8} {:<6} {:<8} LAST SEEN (UTC)", "PC", "MAC", "IP", "MODE", "DISK", "ACTION");
    for p in rows {
        println!(
            "{:<16} {:<17} {:<18} {:<8} {:<6} {:<8} {}",
            p.name,
            p.mac,
            p.ip,
            p.mode,
            p.disk,
            p.default_action,
            p.last_seen.map(when).unwrap_or_else(|| "never".into())
        );
    }
    Ok(())
}

pub fn print_pending(rows: &[vault::PendingRow], as_json: bool) -> Result<()> {
    if as_json {
        return json(&rows);
    }
    println!("{:<17} {:<16} {:<16} {:>5}  ADDRESS", "MAC", "FIRST (UTC)", "LAST (UTC)", "BOOTS");
    for p in rows {
        println!("{:<17} {:<16} {:<16} {:>5}  {}", p.mac, when(p.first_seen), when(p.last_seen), p.count, p.addr);
    }
    Ok(())
}

fn when(t: i64) -> String {
    bootvault_common::units::utc_datetime(t)
}

pub fn json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn print_backups(rows: &[BackupRow]) {
    println!(
        "{:>5}  {:<16} {:<16} {:<10} {:<16} {:>10} {:>7} {:>10}  PASSWORD",
        "ID", "PC", "NAME", "STATE", "CREATED (UTC)", "DISK", "CHUNKS", "STORED"
    );
    for b in rows {
        println!(
            "{:>5}  {:<16} {:<16} {:<10} {:<16} {:>10} {:>7} {:>10}  {}",
            b.id,
            b.pc,
            b.name,
            b.state,
            when(b.created),
            human_bytes(b.disk_bytes),
            b.chunks,
            human_bytes(b.blob_bytes),
            if b.locked { "yes" } else { "-" }
        );
    }
}

pub fn backups(data: &Path, as_json: bool, cmd: BackupsCmd) -> Result<()> {
    let v = Vault::open(data)?;
    match cmd {
        BackupsCmd::List { pc, all } => {
            let rows = v.list_backups(pc.as_deref(), all)?;
            if as_json {
                json(&rows)
            } else {
                print_backups(&rows);
                Ok(())
            }
        }
        BackupsCmd::Show { id } => {
            let b = v.backup(id)?.with_context(|| format!("no backup {id}"))?;
            // How each partition was taken, from the manifest (complete backups only).
            // An encrypted backup's partition records are sealed: opened
            // here with the site key (this machine's, if it has it).
            let mut sealed_note = None;
            let partitions = match v.manifest(id) {
                Ok(bytes) => {
                    let m = bootvault_common::image::Manifest::decode(&bytes)
                        .with_context(|| format!("manifest of backup {id} is damaged"))?;
                    match &m.sealed {
                        None => m.partitions,
                        Some(_) => {
                            let key = crate::keys::for_restores(None).ok().flatten();
                            match m.unsealed(key.as_ref()) {
                                Ok(real) => real.partitions,
                                Err(e) => {
                                    sealed_note = Some(format!("partitions: sealed ({e})"));
                                    Vec::new()
                                }
                            }
                        }
                    }
                }
                Err(_) => Vec::new(),
            };
            if as_json {
                let mut value = serde_json::to_value(&b)?;
                value["partitions"] = partitions
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "number": p.number, "start": p.start, "bytes": p.bytes, "fs": p.fs,
                            "mode": if p.used_only { "used-only" } else { "whole" },
                            "used_bytes": p.used_bytes, "note": p.note,
                        })
                    })
                    .collect();
                return json(&value);
            }
            print_backups(std::slice::from_ref(&b));
            for p in &partitions {
                println!("{}", p.describe());
            }
            if let Some(note) = &sealed_note {
                println!("{note}");
            }
            if b.locked {
                println!("protected by a restore password (PCs need it, or a job made with --password-file)");
            }
            let grants = v.grants(id)?;
            if !grants.is_empty() {
                println!("also restorable by: {}", grants.join(" "));
            }
            println!(
                "zero chunks {}, received {} in {} new chunks, digest {}{}",
                b.zero_chunks,
                human_bytes(b.received_bytes),
                b.received_chunks,
                if b.digest.is_empty() { "-" } else { &b.digest },
                if b.reason.is_empty() { String::new() } else { format!(", reason: {}", b.reason) }
            );
            Ok(())
        }
        BackupsCmd::Verify { id } => {
            let n = v.verify_backup(id).with_context(|| format!("backup {id} is damaged"))?;
            if as_json {
                json(&serde_json::json!({ "id": id, "ok": true, "chunks_checked": n }))
            } else {
                println!("backup {id}: {n} stored chunks verified");
                Ok(())
            }
        }
        BackupsCmd::Export { id, file } => {
            let f = File::create(&file).with_context(|| format!("creating {}", file.display()))?;
            let mut w = BufWriter::new(f);
            v.export(id, &mut w)?;
            w.flush()?;
            println!("backup {id} written to {}", file.display());
            Ok(())
        }
        BackupsCmd::Import { file, pc } => {
            let f = File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let id =
                v.import(BufReader::new(f), pc.as_deref()).with_context(|| format!("importing {}", file.display()))?;
            if as_json {
                json(&serde_json::json!({ "id": id }))
            } else {
                println!("imported {} as backup {id}", file.display());
                Ok(())
            }
        }
        BackupsCmd::ImportDir { path, pc } => crate::local_dir::import_dir(&v, &path, pc.as_deref(), as_json),
        BackupsCmd::ExportDir { path, backup, pc, all } => {
            use crate::local_dir::Selection;
            let which = match (pc, all) {
                (Some(pc), _) => Selection::Pc(pc),
                (None, true) => Selection::All,
                (None, false) => Selection::Ids(backup),
            };
            crate::local_dir::export_dir(&v, &path, which, as_json)
        }
        BackupsCmd::Rm { id } => {
            v.delete_backup(id)?;
            println!("backup {id} removed; run `bootvault gc` to free its chunks");
            Ok(())
        }
        BackupsCmd::Grant { id, pcs, all } => {
            let who = if all { vec!["*".to_string()] } else { pcs };
            if who.is_empty() {
                bail!("backups grant {id}: name the PCs, or --all");
            }
            for p in &who {
                v.grant(id, p)?;
            }
            println!("backup {id} may be restored by {}", v.grants(id)?.join(" "));
            Ok(())
        }
        BackupsCmd::Revoke { id, pcs, all } => {
            let who = if all { vec!["*".to_string()] } else { pcs };
            for p in &who {
                if !v.revoke(id, p)? {
                    bail!("backup {id} was not granted to {p}");
                }
            }
            let left = v.grants(id)?;
            println!(
                "backup {id} grants: {}",
                if left.is_empty() { "none (owner only)".into() } else { left.join(" ") }
            );
            Ok(())
        }
    }
}

pub fn settings(data: &Path, as_json: bool, cmd: SettingsCmd) -> Result<()> {
    let v = Vault::open(data)?;
    match cmd {
        SettingsCmd::Show => {
            let urls = v.setting(vault::SERVER_URLS)?.unwrap_or_default();
            let reg = v.setting(vault::REGISTER_UNKNOWN)?.unwrap_or_else(|| "no".into());
            if as_json {
                return json(&serde_json::json!({
                    "server_urls": urls, "register_unknown": reg,
                    "admin_token_file": v.admin_token_path(),
                }));
            }
            println!("server urls       {}", if urls.is_empty() { "- (builds need --server)" } else { &urls });
            println!("register unknown  {reg}");
            println!("admin token       {}", v.admin_token_path().display());
            Ok(())
        }
        SettingsCmd::ServerUrls { urls } => {
            let list: Vec<&str> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
            for u in &list {
                bootvault_common::config::Config::default().set("server", u).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            v.set_setting(vault::SERVER_URLS, (!list.is_empty()).then(|| list.join(",")).as_deref())?;
            println!("server urls: {}", if list.is_empty() { "-".into() } else { list.join(", ") });
            Ok(())
        }
        SettingsCmd::RegisterUnknown { value } => {
            let on = match value.as_str() {
                "yes" | "on" => "yes",
                "no" | "off" => "no",
                _ => bail!("register-unknown: expected yes or no"),
            };
            v.set_setting(vault::REGISTER_UNKNOWN, Some(on))?;
            println!("unknown MACs that network-boot are {}listed", if on == "yes" { "" } else { "not " });
            Ok(())
        }
    }
}

pub fn print_jobs(rows: &[vault::JobRow], as_json: bool) -> Result<()> {
    if as_json {
        return json(&rows);
    }
    println!(
        "{:>5}  {:<16} {:<8} {:<8} {:<12} {:<8} {:<16}",
        "ID", "PC", "ACTION", "DISK", "NAME", "STATE", "CREATED (UTC)"
    );
    for j in rows {
        println!(
            "{:>5}  {:<16} {:<8} {:<8} {:<12} {:<8} {:<16}",
            j.id,
            j.pc,
            j.action,
            j.disk,
            j.name,
            j.state,
            when(j.created)
        );
    }
    Ok(())
}

pub fn print_results(rows: &[vault::ResultRow], as_json: bool) -> Result<()> {
    if as_json {
        return json(&rows);
    }
    for r in rows {
        println!(
            "{} {} {} {} disk {}: {} ({}, {:.1} s) {}",
            when(r.at),
            r.pc,
            r.action,
            if r.ok { "ok" } else { "FAILED" },
            r.disk,
            human_bytes(r.bytes),
            human_bytes(r.sent),
            r.seconds,
            r.message
        );
    }
    Ok(())
}

pub fn jobs(data: &Path, as_json: bool, cmd: JobsCmd) -> Result<()> {
    let v = Vault::open(data)?;
    match cmd {
        JobsCmd::List { pc } => print_jobs(&v.list_jobs(pc.as_deref())?, as_json),
        JobsCmd::Add { pc, action, disk, name, backup, password_file, key_file } => {
            let name = name.as_deref().unwrap_or("");
            let Some(file) = password_file else {
                if action == "restore" && backup.is_none() {
                    eprintln!("note: no --backup given; the PC restores its latest backup");
                }
                let id = v.add_job(&pc, &action, &disk, name, backup)?;
                println!("job {id} queued for {pc}");
                return Ok(());
            };
            let password = read_password(&file)?;
            let site = crate::keys::for_restores(key_file.as_deref())?;
            let seal_for_pc = |wrap: &[u8; 32]| -> Result<String> {
                let Some(k) = &site else { bail!("no site key to seal the password's key with") };
                let mut nonce = [0u8; bootvault_common::seal::NONCE_BYTES];
                bootvault_engine::lock::random_bytes(&mut nonce)?;
                Ok(bootvault_common::wire::to_hex(&k.seal_secret(wrap, &nonce)))
            };
            match action.as_str() {
                "backup" => {
                    // The key is derived here; the job carries the lock, never the password.
                    let made = bootvault_engine::lock::Lock::new(password.as_bytes())?;
                    let lock = vault::BackupLock::from_text(&Zeroizing::new(made.to_text()))?;
                    // With the site key, the wrap key goes along sealed: the
                    // PC seals the backup with a key of its own.
                    let wrap = match (&site, &made.wrap) {
                        (Some(_), Some(w)) => Some(seal_for_pc(w)?),
                        _ => None,
                    };
                    let id = v.add_job_with(&pc, &action, &disk, name, backup, Some(&lock), false, wrap.as_deref())?;
                    println!("job {id} queued for {pc}: the backup will be protected by the password");
                }
                "restore" => {
                    let b = match backup {
                        Some(b) => b,
                        None => v
                            .latest(&pc, (!name.is_empty()).then_some(name))?
                            .with_context(|| format!("no complete backup of {pc} to restore"))?,
                    };
                    if v.backup_lock(b)?.is_none() {
                        bail!("backup {b} has no password; queue the job without --password-file");
                    }
                    let wrap = prove(&v, &pc, b, &password)?;
                    let manifest = bootvault_common::image::Manifest::decode(&v.manifest(b)?)
                        .map_err(|e| anyhow::anyhow!("manifest of backup {b}: {e}"))?;
                    let own = manifest.sealed.as_ref().is_some_and(|s| s.wrapped.is_some());
                    let wrap = match (own, &site) {
                        (false, _) => None,
                        (true, Some(_)) => Some(seal_for_pc(&wrap)?),
                        (true, None) => bail!(
                            "backup {b} is encrypted with a key of its own: give --key-file (the site's data key) so \
                             the job can carry the password's key to {pc} sealed"
                        ),
                    };
                    let id = v.add_job_with(&pc, &action, &disk, name, Some(b), None, true, wrap.as_deref())?;
                    println!("job {id} queued for {pc}: restore of backup {b}, unlocked with its password");
                }
                other => bail!("action must be backup or restore, not {other:?}"),
            }
            Ok(())
        }
        JobsCmd::Results { pc } => print_results(&v.list_results(pc.as_deref())?, as_json),
    }
}

pub fn admins(data: &Path, as_json: bool, cmd: AdminCmd) -> Result<()> {
    let v = Vault::open(data)?;
    match cmd {
        AdminCmd::Add { name, password_file } => {
            v.add_admin(&name, &read_password(&password_file)?)?;
            println!("admin {name} added; sign in at the server's /admin/");
        }
        AdminCmd::Passwd { name, password_file } => {
            v.set_admin_password(&name, &read_password(&password_file)?)?;
            println!("admin {name}: password changed, open sessions ended");
        }
        AdminCmd::List => {
            let rows = v.list_admins()?;
            if as_json {
                let rows: Vec<_> = rows.iter().map(|(n, c)| serde_json::json!({"name": n, "created": c})).collect();
                return json(&rows);
            }
            for (name, created) in rows {
                println!("{name:<24} added {}", when(created));
            }
        }
        AdminCmd::Rm { name } => {
            v.remove_admin(&name)?;
            println!("admin {name} removed, open sessions ended");
        }
    }
    Ok(())
}

/// The first line of `file` (`-`: standard input), without its line end.
pub fn read_password(file: &Path) -> Result<Zeroizing<String>> {
    let mut all = Zeroizing::new(String::new());
    if file == Path::new("-") {
        std::io::stdin().read_to_string(&mut all).context("reading the password from standard input")?;
    } else {
        File::open(file)
            .and_then(|mut f| f.read_to_string(&mut all))
            .with_context(|| format!("reading the password from {}", file.display()))?;
    }
    let first = Zeroizing::new(all.lines().next().unwrap_or("").to_owned());
    if first.is_empty() {
        bail!("{}: the first line (the password) is empty", file.display());
    }
    Ok(first)
}

/// Answers the backup's challenge as PC `pc` would, counting towards the
/// same wrong-password limit; the job then hands `pc` a ticket.
/// The password's wrap key, once the password is proven.
fn prove(v: &Vault, pc: &str, backup: i64, password: &str) -> Result<bootvault_engine::lock::WrapKey> {
    use bootvault_engine::lock;
    let ch = v.challenge(pc, backup, vault::now())?.with_context(|| format!("backup {backup} has no password"))?;
    let (key, wrap) = lock::keys(password.as_bytes(), ch.kdf, &ch.salt, &ch.params)?;
    let proof = lock::proof(&key, &ch.nonce, pc, backup);
    v.verify_unlock(pc, backup, &ch.nonce, &proof, vault::now())?;
    Ok(wrap)
}

pub fn gc(data: &Path, as_json: bool, max_age: i64) -> Result<()> {
    if max_age < 0 {
        bail!("--max-age must not be negative");
    }
    print_gc(&Vault::open(data)?.gc(max_age)?, as_json)
}

pub fn print_gc(r: &vault::GcReport, as_json: bool) -> Result<()> {
    if as_json {
        return json(r);
    }
    println!(
        "gc: {} abandoned uploads closed, {} chunks removed ({} freed), {} kept",
        r.stale_uploads,
        r.chunks_removed,
        human_bytes(r.bytes_freed),
        r.chunks_kept
    );
    if r.recent_kept > 0 {
        println!(
            "gc: {} unreferenced chunks kept: touched after {} UTC ({} min before gc started{})",
            r.recent_kept,
            when(r.cutoff),
            vault::gc_margins().0 / 60,
            if r.open_uploads.is_empty() { "" } else { ", or before the oldest upload still open" }
        );
    }
    for u in &r.open_uploads {
        println!(
            "gc: upload {} of PC {} is open (since {} UTC, last active {} UTC): chunks it may use are kept",
            u.id,
            u.pc,
            when(u.created),
            when(u.last_active)
        );
    }
    Ok(())
}
