//! The per-PC configuration: what the builder embeds in the initramfs
//! (`/etc/bootvault.conf`) and what the kernel command line can override
//! (`bootvault.KEY=VALUE`).
//!
//! Both sources share one key set and one value parser, so a setting means
//! the same wherever it is written. Layering: built-in defaults, then the
//! file, then the command line (the boot loader has the last word).
//! Unknown keys outside the `bootvault.` namespace are none of our business;
//! unknown `bootvault.*` keys are reported as warnings; a known key with a
//! bad value is an error naming the key, the value and the source.

use std::fmt;
use std::net::Ipv4Addr;

use crate::cmdline;
use crate::fingerprint::Fingerprint;

/// Where the PC gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpConfig {
    Dhcp,
    Static { addr: Ipv4Addr, prefix: u8 },
}

/// What PID 1 does when it has finished, or has failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Poweroff,
    Reboot,
    /// A prompt on the console with a few commands (retry, disks, reboot…).
    Rescue,
}

/// What the PC does once it is up: `probe` lists the disks and greets the
/// server; `backup`/`restore` run headless; `job` asks the server what to
/// do (nothing, if it has no job for this PC); `menu` guides the person at
/// the PC's console through a backup or a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Probe,
    Backup,
    Restore,
    Job,
    Menu,
}

impl Action {
    pub fn parse(v: &str) -> Option<Action> {
        match v {
            "probe" => Some(Action::Probe),
            "backup" => Some(Action::Backup),
            "restore" => Some(Action::Restore),
            "job" => Some(Action::Job),
            "menu" => Some(Action::Menu),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Probe => "probe",
            Action::Backup => "backup",
            Action::Restore => "restore",
            Action::Job => "job",
            Action::Menu => "menu",
        }
    }
}

/// Where a backup goes (`dest`) or a restore comes from (`source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The bootvault server (`server`).
    Server,
    /// A filesystem on a drive of the PC, by its label or its kernel name
    /// (`local:BACKUPS`, `local:sdb1`): the backups live in its
    /// `bootvault/` directory.
    Local(String),
}

impl Place {
    pub fn parse(v: &str) -> Result<Place, String> {
        if v == "server" {
            return Ok(Place::Server);
        }
        let Some(spec) = v.strip_prefix("local:") else {
            return Err("expected server or local:LABEL (a filesystem label or a name like sdb1)".into());
        };
        check_volume_spec(spec)?;
        Ok(Place::Local(spec.to_owned()))
    }

    pub fn to_text(&self) -> String {
        match self {
            Place::Server => "server".into(),
            Place::Local(s) => format!("local:{s}"),
        }
    }
}

/// A filesystem label or a partition name: 1-64 printable characters,
/// no '/' (it is never a path).
pub fn check_volume_spec(v: &str) -> Result<(), String> {
    if v.is_empty() || v.chars().count() > 64 {
        return Err("the label or partition name must be 1-64 characters".into());
    }
    if v.chars().any(|c| c.is_control() || c == '/' || c == '"') {
        return Err("the label or partition name must not hold '/', '\"' or control characters".into());
    }
    Ok(())
}

/// Which backup a restore takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupRef {
    /// The newest complete backup of this PC (with `name`, if set).
    Latest,
    Id(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// PC name: hostname, and how the server knows this PC.
    pub pc: String,
    /// Base URL of the bootvault server, e.g. `https://10.0.2.2:8443`.
    pub server: Option<String>,
    /// The SHA-256 fingerprint of the server's certificate: the only one
    /// an `https://` server may present (the builder pins it).
    pub fingerprint: Option<Fingerprint>,
    /// The PC's secret, issued by the server (`bootvault pc add`), sent
    /// with every request. Only ever written into the initramfs.
    pub token: String,
    /// The admin's escrow public key (X25519): password-locked backups'
    /// own keys are also wrapped for it (not secret).
    pub escrow: Option<[u8; 32]>,
    /// Network interface to use; `None` = first Ethernet with carrier.
    pub iface: Option<String>,
    pub ip: IpConfig,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub action: Action,
    /// The disk to back up or restore: `auto` (the first non-removable
    /// disk) or a name like `sda`.
    pub disk: String,
    /// Backup name (backup: the name given; restore: which name `latest`
    /// looks for, empty = any).
    pub name: String,
    pub backup: BackupRef,
    /// Where backups go: the server (the default) or a local drive.
    pub dest: Place,
    /// Where restores come from: the server (the default) or a local drive.
    pub source: Place,
    /// Compression level for backups (0-10).
    pub level: u8,
    /// `mode=raw`: back up every byte, free space included (forensic
    /// copies); `mode=used` (the default): leave the free space of the
    /// filesystems the engine can read out.
    pub raw: bool,
    /// After a restore, read the disk back and compare.
    pub verify: bool,
    /// What to do when the action succeeded.
    pub finish: Finish,
    /// What to do after a fatal error (after `error_wait` seconds).
    pub on_error: Finish,
    /// Seconds the error stays on the console (Enter opens the rescue
    /// prompt) before `on_error` is carried out.
    pub error_wait: u32,
    pub dhcp_timeout: u32,
    /// Seconds to wait for a link with carrier.
    pub link_timeout: u32,
    /// Seconds coldplug keeps looking for new devices.
    pub coldplug_timeout: u32,
    /// Seconds to keep trying to reach the server.
    pub server_timeout: u32,
    pub verbose: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pc: "bootvault".into(),
            server: None,
            fingerprint: None,
            token: String::new(),
            escrow: None,
            iface: None,
            ip: IpConfig::Dhcp,
            gateway: None,
            dns: Vec::new(),
            action: Action::Probe,
            disk: "auto".into(),
            name: String::new(),
            backup: BackupRef::Latest,
            dest: Place::Server,
            source: Place::Server,
            level: crate::image::DEFAULT_LEVEL,
            raw: false,
            verify: false,
            finish: Finish::Poweroff,
            on_error: Finish::Poweroff,
            error_wait: 60,
            dhcp_timeout: 30,
            link_timeout: 10,
            coldplug_timeout: 10,
            server_timeout: 30,
            verbose: false,
        }
    }
}

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    File,
    Cmdline,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::File => "config file",
            Source::Cmdline => "kernel command line",
        })
    }
}

/// A problem with one setting. `fatal` problems mean the PC must not act on
/// the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub source: Source,
    pub line: Option<usize>,
    pub message: String,
    pub fatal: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "{} line {}: {}", self.source, n, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// The keys, in the order the builder writes them.
pub const KEYS: &[&str] = &[
    "pc",
    "server",
    "fingerprint",
    "token",
    "escrow",
    "iface",
    "ip",
    "gateway",
    "dns",
    "action",
    "disk",
    "name",
    "backup",
    "dest",
    "source",
    "level",
    "mode",
    "verify",
    "finish",
    "on_error",
    "error_wait",
    "dhcp_timeout",
    "link_timeout",
    "coldplug_timeout",
    "server_timeout",
    "verbose",
];

/// Prefix of our keys on the kernel command line.
pub const CMDLINE_PREFIX: &str = "bootvault.";

fn parse_finish(v: &str) -> Result<Finish, String> {
    match v {
        "poweroff" => Ok(Finish::Poweroff),
        "reboot" => Ok(Finish::Reboot),
        "rescue" => Ok(Finish::Rescue),
        _ => Err("expected poweroff, reboot or rescue".into()),
    }
}

fn finish_str(f: Finish) -> &'static str {
    match f {
        Finish::Poweroff => "poweroff",
        Finish::Reboot => "reboot",
        Finish::Rescue => "rescue",
    }
}

fn parse_seconds(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if n <= 86_400 => Ok(n),
        _ => Err("expected a number of seconds (0-86400)".into()),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        _ => Err("expected yes or no".into()),
    }
}

fn parse_ipv4(v: &str) -> Result<Ipv4Addr, String> {
    v.parse().map_err(|_| "expected an IPv4 address like 192.168.1.10".into())
}

/// `dhcp` or `ADDR/PREFIX`.
pub fn parse_ip(v: &str) -> Result<IpConfig, String> {
    if v == "dhcp" {
        return Ok(IpConfig::Dhcp);
    }
    let (a, p) = v.split_once('/').ok_or("expected dhcp or ADDR/PREFIX like 192.168.1.10/24")?;
    let addr = parse_ipv4(a)?;
    let prefix = match p.parse::<u8>() {
        Ok(n) if (1..=32).contains(&n) => n,
        _ => return Err("prefix length must be 1-32".into()),
    };
    Ok(IpConfig::Static { addr, prefix })
}

fn valid_pc_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !v.starts_with('-')
        && !v.starts_with('.');
    if ok {
        Ok(v.to_owned())
    } else {
        Err("PC name must be 1-63 letters, digits, '-', '_' or '.'".into())
    }
}

/// The `disk` setting: `auto`, or the kernel's name of a whole disk
/// (`sda`, `nvme0n1`) as `init`'s disk pick looks it up in `/sys/block`.
pub fn check_disk(v: &str) -> Result<(), String> {
    let ok = v == "auto" || (!v.is_empty() && v.len() <= 32 && v.chars().all(|c| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err("expected auto or a disk name like sda".into())
    }
}

/// The `backup` setting: `latest` or a backup id.
pub fn parse_backup_ref(v: &str) -> Result<BackupRef, String> {
    if v == "latest" {
        return Ok(BackupRef::Latest);
    }
    match v.parse::<i64>() {
        Ok(id) if check_backup_id(id).is_ok() => Ok(BackupRef::Id(id)),
        _ => Err("expected latest or a backup id".into()),
    }
}

/// A backup id: the server's row id, always positive.
pub fn check_backup_id(id: i64) -> Result<(), String> {
    if id > 0 {
        Ok(())
    } else {
        Err("expected a backup id (a positive number)".into())
    }
}

/// Backup names, as a person types them at the console and the server and
/// the PCs pass them on: 1-64 letters, digits, '-', '_' and '.', starting
/// with a letter or a digit, so a name is never a path, an option or a
/// second line.
pub fn check_backup_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.chars().count() > 64 {
        return Err(format!("the name is {} characters long; at most 64", name.chars().count()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!("{c:?} is not allowed; use letters, digits, '-', '_' and '.'"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("the name must start with a letter or a digit".into());
    }
    Ok(())
}

/// One server URL, or several comma-separated (servers sharing one
/// database, chunk store and certificate: the PC goes on with the next
/// when one does not answer).
fn valid_server(v: &str) -> Result<Option<String>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let mut urls = Vec::new();
    for url in v.split(',').map(str::trim) {
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err("server must be an https:// (or http://) URL, or several separated by commas".into());
        }
        urls.push(url.trim_end_matches('/'));
    }
    Ok(Some(urls.join(",")))
}

impl Config {
    /// Applies one setting. Returns `Err(message)` for a bad value and
    /// `Ok(false)` for a key we do not know.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let bad = |e: String| format!("{key}={value:?}: {e}");
        match key {
            "pc" => self.pc = valid_pc_name(value).map_err(bad)?,
            "server" => self.server = valid_server(value).map_err(bad)?,
            "fingerprint" => {
                self.fingerprint = if value.is_empty() { None } else { Some(Fingerprint::parse(value).map_err(bad)?) }
            }
            "escrow" => {
                self.escrow =
                    if value.is_empty() { None } else { Some(crate::seal::parse_escrow_pub(value).map_err(bad)?) }
            }
            "token" => {
                if value.len() > 128 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
                    // The value is a secret: never echo it.
                    return Err(format!("{key}: expected up to 128 letters and digits"));
                }
                self.token = value.to_owned();
            }
            "iface" => self.iface = (!value.is_empty()).then(|| value.to_owned()),
            "ip" => self.ip = parse_ip(value).map_err(bad)?,
            "gateway" => self.gateway = if value.is_empty() { None } else { Some(parse_ipv4(value).map_err(bad)?) },
            "dns" => {
                self.dns =
                    value.split(',').filter(|s| !s.is_empty()).map(parse_ipv4).collect::<Result<_, _>>().map_err(bad)?
            }
            "action" => {
                self.action =
                    Action::parse(value).ok_or_else(|| bad("expected probe, backup, restore, job or menu".into()))?
            }
            "disk" => {
                check_disk(value).map_err(bad)?;
                self.disk = value.to_owned();
            }
            "name" => {
                if value.len() > 100 || value.chars().any(|c| c.is_control()) {
                    return Err(bad("backup name must be up to 100 printable characters".into()));
                }
                self.name = value.to_owned();
            }
            "backup" => self.backup = parse_backup_ref(value).map_err(bad)?,
            "dest" => self.dest = Place::parse(value).map_err(bad)?,
            "source" => self.source = Place::parse(value).map_err(bad)?,
            "level" => {
                self.level =
                    value.parse::<u8>().ok().filter(|n| *n <= 10).ok_or_else(|| bad("expected a level 0-10".into()))?
            }
            "mode" => {
                self.raw = match value {
                    "used" => false,
                    "raw" => true,
                    _ => return Err(bad("expected used or raw".into())),
                }
            }
            "verify" => self.verify = parse_bool(value).map_err(bad)?,
            "finish" => self.finish = parse_finish(value).map_err(bad)?,
            "on_error" => self.on_error = parse_finish(value).map_err(bad)?,
            "error_wait" => self.error_wait = parse_seconds(value).map_err(bad)?,
            "dhcp_timeout" => self.dhcp_timeout = parse_seconds(value).map_err(bad)?,
            "link_timeout" => self.link_timeout = parse_seconds(value).map_err(bad)?,
            "coldplug_timeout" => self.coldplug_timeout = parse_seconds(value).map_err(bad)?,
            "server_timeout" => self.server_timeout = parse_seconds(value).map_err(bad)?,
            "verbose" => self.verbose = parse_bool(value).map_err(bad)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The value of `key` as the file and command line write it.
    pub fn get(&self, key: &str) -> Option<String> {
        let secs = |n: u32| Some(n.to_string());
        match key {
            "pc" => Some(self.pc.clone()),
            "server" => Some(self.server.clone().unwrap_or_default()),
            "fingerprint" => Some(self.fingerprint.map(|f| f.to_string()).unwrap_or_default()),
            "escrow" => Some(self.escrow.map(|e| crate::wire::to_hex(&e)).unwrap_or_default()),
            "token" => Some(self.token.clone()),
            "iface" => Some(self.iface.clone().unwrap_or_default()),
            "ip" => Some(match &self.ip {
                IpConfig::Dhcp => "dhcp".into(),
                IpConfig::Static { addr, prefix } => format!("{addr}/{prefix}"),
            }),
            "gateway" => Some(self.gateway.map(|g| g.to_string()).unwrap_or_default()),
            "dns" => Some(self.dns.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")),
            "action" => Some(self.action.as_str().into()),
            "disk" => Some(self.disk.clone()),
            "name" => Some(self.name.clone()),
            "backup" => Some(match self.backup {
                BackupRef::Latest => "latest".into(),
                BackupRef::Id(n) => n.to_string(),
            }),
            "dest" => Some(self.dest.to_text()),
            "source" => Some(self.source.to_text()),
            "level" => Some(self.level.to_string()),
            "mode" => Some(if self.raw { "raw" } else { "used" }.into()),
            "verify" => Some(if self.verify { "yes" } else { "no" }.into()),
            "finish" => Some(finish_str(self.finish).into()),
            "on_error" => Some(finish_str(self.on_error).into()),
            "error_wait" => secs(self.error_wait),
            "dhcp_timeout" => secs(self.dhcp_timeout),
            "link_timeout" => secs(self.link_timeout),
            "coldplug_timeout" => secs(self.coldplug_timeout),
            "server_timeout" => secs(self.server_timeout),
            "verbose" => Some(if self.verbose { "yes" } else { "no" }.into()),
            _ => None,
        }
    }

    /// Applies a config file (`key = value` lines, `#` comments, values
    /// optionally in double quotes).
    pub fn apply_file(&mut self, text: &str, problems: &mut Vec<Problem>) {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let problem =
                |message: String, fatal: bool| Problem { source: Source::File, line: Some(i + 1), message, fatal };
            let Some((k, v)) = line.split_once('=') else {
                problems.push(problem(format!("expected key = value, got {line:?}"), true));
                continue;
            };
            let (k, v) = (k.trim(), unquote(v.trim()));
            match self.set(k, v) {
                Ok(true) => {}
                Ok(false) => problems.push(problem(format!("unknown key {k:?} ignored"), false)),
                Err(e) => problems.push(problem(e, true)),
            }
        }
    }

    /// Applies the `bootvault.*` parameters of a kernel command line.
    pub fn apply_cmdline(&mut self, line: &str, problems: &mut Vec<Problem>) {
        for p in cmdline::parse(line) {
            let Some(key) = p.key.strip_prefix(CMDLINE_PREFIX) else {
                continue;
            };
            let problem =
                |message: String, fatal: bool| Problem { source: Source::Cmdline, line: None, message, fatal };
            let Some(value) = p.value.as_deref() else {
                problems.push(problem(
                    format!("{}{key} needs a value ({}{key}=...)", CMDLINE_PREFIX, CMDLINE_PREFIX),
                    true,
                ));
                continue;
            };
            match self.set(key, value) {
                Ok(true) => {}
                Ok(false) => problems.push(problem(format!("unknown key {CMDLINE_PREFIX}{key} ignored"), false)),
                Err(e) => problems.push(problem(format!("{CMDLINE_PREFIX}{e}"), true)),
            }
        }
    }

    /// Defaults, then the file, then the command line.
    pub fn load(file: Option<&str>, cmdline: &str) -> (Config, Vec<Problem>) {
        let mut config = Config::default();
        let mut problems = Vec::new();
        if let Some(text) = file {
            config.apply_file(text, &mut problems);
        }
        config.apply_cmdline(cmdline, &mut problems);
        if config.server.as_deref().is_some_and(|s| s.split(',').any(|u| u.starts_with("https://")))
            && config.fingerprint.is_none()
        {
            let on_cmdline = cmdline.split_whitespace().any(|w| w.starts_with("bootvault.server="));
            problems.push(Problem {
                source: if on_cmdline { Source::Cmdline } else { Source::File },
                line: None,
                message: "server: an https:// server needs the fingerprint of its certificate (fingerprint=, \
                          which `bootvault build` writes)"
                    .into(),
                fatal: true,
            });
        }
        (config, problems)
    }

    /// The file form, every key written, in a fixed order (reproducible).
    pub fn to_file(&self) -> String {
        let mut out = String::from("# bootvault per-PC configuration, written by `bootvault build`.\n");
        for key in KEYS {
            if let Some(v) = self.get(key) {
                out.push_str(&format!("{key} = \"{v}\"\n"));
            }
        }
        out
    }

    /// The command-line form of a few keys (those given), for the boot
    /// loader entry. Values that cannot be quoted are skipped.
    pub fn to_cmdline(&self, keys: &[&str]) -> String {
        keys.iter()
            .filter_map(|k| {
                let v = self.get(k)?;
                Some(format!("{CMDLINE_PREFIX}{k}={}", cmdline::quote(&v)?))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_file_then_cmdline() {
        let file = "# comment\npc = \"lab-3\"\nserver = http://10.0.2.2:8080/\nip = dhcp\n";
        let (c, p) = Config::load(Some(file), "quiet bootvault.pc=lab-4 bootvault.verbose=1");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.pc, "lab-4");
        assert_eq!(c.server.as_deref(), Some("http://10.0.2.2:8080"));
        assert!(c.verbose);
        assert_eq!(c.finish, Finish::Poweroff);
    }

    /// Several servers: each URL checked, slashes trimmed, one https://
    /// among them needs the fingerprint.
    #[test]
    fn several_servers() {
        let (c, p) = Config::load(None, "bootvault.server=http://10.0.2.2:8080/,http://10.0.2.3:8080");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.server.as_deref(), Some("http://10.0.2.2:8080,http://10.0.2.3:8080"));
        let (_, p) = Config::load(None, "bootvault.server=http://a:1,ftp://b");
        assert!(p.iter().any(|p| p.fatal && p.message.contains("several separated by commas")), "{p:?}");
        let (_, p) = Config::load(None, "bootvault.server=http://a:1,https://b:2");
        assert!(p.iter().any(|p| p.fatal && p.message.contains("needs the fingerprint")), "{p:?}");
    }

    #[test]
    fn static_address() {
        let (c, p) = Config::load(
            None,
            "bootvault.ip=192.168.7.20/24 bootvault.gateway=192.168.7.1 bootvault.dns=1.1.1.1,9.9.9.9",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.ip, IpConfig::Static { addr: Ipv4Addr::new(192, 168, 7, 20), prefix: 24 });
        assert_eq!(c.gateway, Some(Ipv4Addr::new(192, 168, 7, 1)));
        assert_eq!(c.dns.len(), 2);
    }

    #[test]
    fn problems_are_reported_with_their_source() {
        let table: &[(&str, &str, bool)] = &[
            ("bootvault.ip=10.0.0.1", "bootvault.ip=\"10.0.0.1\": expected dhcp or ADDR/PREFIX", true),
            ("bootvault.ip=10.0.0.1/33", "prefix length must be 1-32", true),
            ("bootvault.pc=bad/name", "PC name must be", true),
            ("bootvault.finish=explode", "expected poweroff, reboot or rescue", true),
            ("bootvault.action=dance", "expected probe, backup, restore, job or menu", true),
            ("bootvault.disk=/dev/sda", "expected auto or a disk name", true),
            ("bootvault.backup=-3", "expected latest or a backup id", true),
            ("bootvault.level=11", "expected a level 0-10", true),
            ("bootvault.mode=forensic", "expected used or raw", true),
            ("bootvault.dest=usb", "expected server or local:LABEL", true),
            ("bootvault.source=local:", "must be 1-64 characters", true),
            ("bootvault.dest=local:a/b", "must not hold '/'", true),
            ("bootvault.dhcp_timeout=soon", "expected a number of seconds", true),
            ("bootvault.server=ftp://x", "server must be an https:// (or http://) URL", true),
            ("bootvault.server=https://x", "needs the fingerprint of its certificate", true),
            ("bootvault.fingerprint=ab:cd", "not a certificate fingerprint", true),
            ("bootvault.pc", "bootvault.pc needs a value", true),
            ("bootvault.colour=blue", "unknown key bootvault.colour ignored", false),
        ];
        for (line, want, fatal) in table {
            let (_, p) = Config::load(None, line);
            assert_eq!(p.len(), 1, "{line}: {p:?}");
            assert!(p[0].message.contains(want), "{line}: {}", p[0]);
            assert_eq!(p[0].fatal, *fatal, "{line}");
            assert_eq!(p[0].source, Source::Cmdline);
        }
        // Keys of others are not ours to judge.
        let (_, p) = Config::load(None, "root=/dev/sda1 colour=blue ip=dhcp");
        assert!(p.is_empty());
    }

    #[test]
    fn file_problems_name_the_line() {
        let (_, p) = Config::load(Some("pc = a\n\nnonsense\nip = x\n"), "");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].line, Some(3));
        assert!(p[0].to_string().starts_with("config file line 3: expected key = value"));
        assert_eq!(p[1].line, Some(4));
    }

    #[test]
    fn disk_backup_and_name_rules() {
        for ok in ["auto", "sda", "nvme0n1", "mmcblk0"] {
            assert_eq!(check_disk(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/dev/sda", "sda1 ", "sda\nbackup=3", "../sda", &"a".repeat(33)] {
            assert!(check_disk(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_backup_ref("latest"), Ok(BackupRef::Latest));
        assert_eq!(parse_backup_ref("12"), Ok(BackupRef::Id(12)));
        for bad in ["0", "-3", "", "12 ", "1e3"] {
            assert!(parse_backup_ref(bad).is_err(), "{bad:?}");
        }
        assert!(check_backup_id(0).is_err() && check_backup_id(1).is_ok());

        assert!(check_backup_name("pc-one-2026-11-25").is_ok());
        assert!(check_backup_name("a").is_ok());
        assert_eq!(check_backup_name("").unwrap_err(), "the name is empty");
        assert!(check_backup_name(&"a".repeat(65)).unwrap_err().contains("at most 64"));
        assert!(check_backup_name("my backup").unwrap_err().contains("' ' is not allowed"));
        assert!(check_backup_name("a/b").unwrap_err().contains("'/' is not allowed"));
        assert!(check_backup_name("a\nb").unwrap_err().contains("'\\n' is not allowed"));
        assert!(check_backup_name(".hidden").unwrap_err().contains("must start with a letter"));
        assert!(check_backup_name("-x").unwrap_err().contains("must start with a letter"));
    }

    #[test]
    fn file_round_trip() {
        let c = Config {
            pc: "pc-1".into(),
            server: Some("http://10.0.2.2:9000".into()),
            ip: IpConfig::Static { addr: Ipv4Addr::new(10, 1, 2, 3), prefix: 16 },
            dns: vec![Ipv4Addr::new(10, 1, 0, 1)],
            finish: Finish::Rescue,
            verbose: true,
            action: Action::Restore,
            disk: "sdb".into(),
            name: "nightly full".into(),
            backup: BackupRef::Id(42),
            level: 6,
            raw: true,
            verify: true,
            dest: Place::Local("MY STICK".into()),
            source: Place::Local("sdb1".into()),
            ..Config::default()
        };
        let (back, p) = Config::load(Some(&c.to_file()), "");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(back, c);
        // And through the command line.
        let line = c.to_cmdline(KEYS);
        let (back, p) = Config::load(None, &line);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(back, c);
    }
}
