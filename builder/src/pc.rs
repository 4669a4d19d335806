//! A PC description for the builder: a small TOML file and/or flags.
//!
//! ```toml
//! pc = "lab-3"                       # required: the PC's name
//! server = "http://10.0.2.2:8080"
//! profile = "pc"                     # module profile (built-in name)
//! console = ["ttyS0,115200", "tty0"] # kernel consoles; the last is the init's
//! append = "mitigations=off"         # extra kernel parameters
//!
//! [config]                           # any other per-PC setting
//! ip = "192.168.1.30/24"
//! gateway = "192.168.1.1"
//! finish = "reboot"
//! ```
//!
//! Every setting is checked by the same parser the init uses
//! (`bootvault_common::config`), so a bad value fails the build, not the boot.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use bootvault_common::config::Config;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcFile {
    pub pc: Option<String>,
    pub server: Option<String>,
    pub profile: Option<String>,
    pub console: Option<Vec<String>>,
    pub append: Option<String>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Everything the build needs to know about one PC.
#[derive(Debug, Clone)]
pub struct Pc {
    pub config: Config,
    pub profile: String,
    pub consoles: Vec<String>,
    pub append: String,
}

pub const DEFAULT_CONSOLES: &[&str] = &["ttyS0,115200", "tty0"];

/// What the server's database says about a registered PC, as settings.
#[derive(Debug, Clone)]
pub struct Registered {
    /// `KEY=VALUE` settings: token, network, disk, action.
    pub settings: Vec<String>,
    pub server: Option<String>,
}

/// Reads PC `name` from the server's database.
pub fn registered(vault: &bootvault_server::vault::Vault, name: &str) -> Result<Registered> {
    let row = vault.pc(name)?.with_context(|| {
        format!("PC {name} is not registered in {} (bootvault pc add {name} --mac ...)", vault.dir().display())
    })?;
    // Every URL: a PC goes on with the next when one does not answer.
    let server = vault
        .setting(bootvault_server::vault::SERVER_URLS)?
        .map(|v| v.split(',').map(str::trim).filter(|u| !u.is_empty()).collect::<Vec<_>>().join(","))
        .filter(|v| !v.is_empty());
    Ok(Registered { settings: row.settings(), server })
}

pub struct Overrides<'a> {
    pub name: Option<&'a str>,
    pub server: Option<&'a str>,
    pub profile: Option<&'a str>,
    pub consoles: &'a [String],
    pub append: Option<&'a str>,
    /// `KEY=VALUE` settings.
    pub set: &'a [String],
}

impl Pc {
    pub fn from_parts(file: Option<(&str, &str)>, o: &Overrides<'_>) -> Result<Pc> {
        let f: PcFile = match file {
            Some((path, text)) => toml::from_str(text).with_context(|| format!("reading PC file {path}"))?,
            None => PcFile::default(),
        };
        let mut config = Config::default();
        let mut set = |k: &str, v: &str| -> Result<()> {
            match config.set(k, v) {
                Ok(true) => Ok(()),
                Ok(false) => bail!("unknown setting {k:?}"),
                Err(e) => bail!("{e}"),
            }
        };
        let name = o.name.map(str::to_owned).or(f.pc).context("the PC needs a name")?;
        set("pc", &name)?;
        if let Some(s) = o.server.map(str::to_owned).or(f.server) {
            set("server", &s)?;
        }
        for (k, v) in &f.config {
            set(k, v)?;
        }
        for kv in o.set {
            let (k, v) = kv.split_once('=').with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
            set(k, v)?;
        }
        let consoles = if !o.consoles.is_empty() {
            o.consoles.to_vec()
        } else {
            f.console.unwrap_or_else(|| DEFAULT_CONSOLES.iter().map(|s| s.to_string()).collect())
        };
        Ok(Pc {
            config,
            profile: o.profile.map(str::to_owned).or(f.profile).unwrap_or_else(|| "pc".into()),
            consoles,
            append: o.append.map(str::to_owned).or(f.append).unwrap_or_default(),
        })
    }

    /// The kernel command line for this PC. The PC name goes on it too (it
    /// is short and shows in the boot loader); everything else is in the
    /// embedded config file.
    pub fn cmdline(&self) -> String {
        let mut parts: Vec<String> = self.consoles.iter().map(|c| format!("console={c}")).collect();
        parts.push("quiet".into());
        parts.push("panic=10".into());
        parts.push(self.config.to_cmdline(&["pc"]));
        if !self.append.trim().is_empty() {
            parts.push(self.append.trim().to_owned());
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Overrides<'static> {
        Overrides { name: None, server: None, profile: None, consoles: &[], append: None, set: &[] }
    }

    #[test]
    fn file_and_flags() {
        let text = "pc = \"lab-3\"\nserver = \"http://10.0.2.2:8080\"\nprofile = \"qemu\"\n[config]\nip = \"10.1.1.5/24\"\nfinish = \"reboot\"\n";
        let set = vec!["verbose=yes".to_string()];
        let pc = Pc::from_parts(Some(("pc.toml", text)), &Overrides { set: &set, ..none() }).expect("valid");
        assert_eq!(pc.config.pc, "lab-3");
        assert_eq!(pc.profile, "qemu");
        assert!(pc.config.verbose);
        assert_eq!(pc.config.get("ip").as_deref(), Some("10.1.1.5/24"));
        assert_eq!(pc.cmdline(), "console=ttyS0,115200 console=tty0 quiet panic=10 bootvault.pc=lab-3");
    }

    #[test]
    fn registered_settings() {
        let mut row = bootvault_server::vault::PcRow::new("lab-3", "52:54:00:12:34:56");
        row.token = "ab12".into();
        row.ip = "10.1.1.5/24".into();
        row.gateway = "10.1.1.1".into();
        row.default_action = "backup".into();
        let set = row.settings();
        let pc = Pc::from_parts(None, &Overrides { name: Some("lab-3"), set: &set, ..none() }).expect("valid");
        assert_eq!(pc.config.token, "ab12");
        assert_eq!(pc.config.get("ip").as_deref(), Some("10.1.1.5/24"));
        assert_eq!(pc.config.get("action").as_deref(), Some("backup"));
        assert!(!pc.cmdline().contains("ab12"), "the token never goes on the command line");
        row.default_action = "menu".into();
        assert!(row.settings().contains(&"action=menu".to_string()));
    }

    #[test]
    fn bad_settings_fail_the_build() {
        let bad = vec!["ip=nonsense".to_string()];
        let e = Pc::from_parts(None, &Overrides { name: Some("x"), set: &bad, ..none() }).unwrap_err();
        assert!(e.to_string().contains("ip=\"nonsense\""), "{e}");
        let e = Pc::from_parts(Some(("f", "pc = \"a\"\ncolour = 1\n")), &none()).unwrap_err();
        assert!(format!("{e:#}").contains("colour"), "{e:#}");
        assert!(Pc::from_parts(None, &none()).is_err(), "a name is required");
    }
}
