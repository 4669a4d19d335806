//! Changes to a registered PC's settings, checked once for every caller
//! (the CLI's `pc add`/`pc edit`, the web console's PC page) with the
//! same parsers the init uses, so a bad value is refused here, not at
//! the PC's next boot.

use anyhow::{bail, Context, Result};
use bootvault_common::config::Config;

use super::{normalize_mac, PcRow, Vault};

/// What to change; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PcChanges {
    pub mac: Option<String>,
    /// `dhcp` or `ADDR/PREFIX`.
    pub ip: Option<String>,
    /// An address, or empty for none.
    pub gateway: Option<String>,
    /// Comma-separated addresses, or empty for none.
    pub dns: Option<String>,
    /// `network` or `local`.
    pub mode: Option<String>,
    /// `auto` or a disk name.
    pub disk: Option<String>,
    /// `menu`, `backup` or `restore`.
    pub default_action: Option<String>,
    /// A size such as `500G`, or `none`.
    pub quota: Option<String>,
}

impl PcChanges {
    /// Applies the changes over `pc`, each checked; DHCP drops the gateway.
    pub fn apply(&self, pc: &mut PcRow) -> Result<()> {
        let mut check = Config::default();
        let mut set = |k: &str, v: &str| -> Result<()> { check.set(k, v).map_err(anyhow::Error::msg).map(|_| ()) };
        set("pc", &pc.name)?;
        if let Some(m) = &self.mac {
            pc.mac = normalize_mac(m).with_context(|| format!("mac {m:?}: expected aa:bb:cc:dd:ee:ff"))?;
        }
        if let Some(ip) = &self.ip {
            set("ip", ip)?;
            pc.ip = ip.clone();
            if ip == "dhcp" {
                pc.gateway.clear();
            }
        }
        if let Some(g) = &self.gateway {
            if !g.is_empty() && pc.ip == "dhcp" {
                bail!("gateway {g}: a gateway goes with a static address (ip ADDR/PREFIX), not DHCP");
            }
            set("gateway", g)?;
            pc.gateway = g.clone();
        }
        if let Some(d) = &self.dns {
            set("dns", d)?;
            pc.dns = d.clone();
        }
        if let Some(m) = &self.mode {
            if !matches!(m.as_str(), "network" | "local") {
                bail!("mode {m:?}: expected network or local");
            }
            pc.mode = m.clone();
        }
        if let Some(d) = &self.disk {
            set("disk", d)?;
            pc.disk = d.clone();
        }
        if let Some(a) = &self.default_action {
            if !matches!(a.as_str(), "menu" | "backup" | "restore") {
                bail!("default action {a:?}: expected menu, backup or restore");
            }
            pc.default_action = a.clone();
        }
        Ok(())
    }

    /// The quota change: `Some(None)` clears it, `Some(Some(bytes))` sets it.
    pub fn quota(&self) -> Result<Option<Option<u64>>> {
        let Some(q) = &self.quota else { return Ok(None) };
        if q == "none" || q.is_empty() {
            return Ok(Some(None));
        }
        let bytes = bootvault_common::units::parse_size(q)
            .with_context(|| format!("quota {q:?}: expected a size such as 500G, 2T or 800M, or none"))?;
        Ok(Some(Some(bytes)))
    }
}

/// A PC as the admin sees it: its settings (the token only when asked
/// for), its quota and what its backups take.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PcView {
    #[serde(flatten)]
    pub pc: PcRow,
    pub quota: Option<u64>,
    pub used: u64,
}

impl Vault {
    /// `pc` with its quota and usage; its token kept only with `token`.
    pub fn pc_view(&self, mut pc: PcRow, token: bool) -> Result<PcView> {
        if !token {
            pc.token.clear();
        }
        Ok(PcView { quota: self.pc_quota(&pc.name)?, used: self.pc_usage(&pc.name)?, pc })
    }

    /// Registers a PC with `changes` over the defaults (`mac` required).
    pub fn add_pc_with(&self, name: &str, changes: &PcChanges) -> Result<PcRow> {
        if changes.mac.is_none() {
            bail!("PC {name}: a MAC is required (the server knows a booting PC by its MAC)");
        }
        let mut pc = PcRow::new(name, "");
        changes.apply(&mut pc)?;
        let quota = changes.quota()?;
        let pc = self.add_pc(&pc)?;
        if let Some(q) = quota {
            self.set_pc_quota(&pc.name, q)?;
        }
        self.forget_pending(&pc.mac)?;
        Ok(pc)
    }

    /// Changes a registered PC's settings (the token stays).
    pub fn edit_pc_with(&self, name: &str, changes: &PcChanges) -> Result<PcRow> {
        let mut pc = self.pc(name)?.with_context(|| format!("no registered PC {name}"))?;
        changes.apply(&mut pc)?;
        let quota = changes.quota()?;
        let pc = self.edit_pc(&pc)?;
        if let Some(q) = quota {
            self.set_pc_quota(&pc.name, q)?;
        }
        Ok(pc)
    }

    /// A new token for a registered PC: its boot media made before stop
    /// working (the server refuses the old token at once).
    pub fn rotate_token(&self, name: &str) -> Result<PcRow> {
        if !self.db.set_pc_token(name, &super::new_token()?)? {
            bail!("no registered PC {name}");
        }
        self.pc(name)?.with_context(|| format!("PC {name} vanished"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_checked_as_the_init_checks_them() {
        let mut pc = PcRow::new("lab-3", "52:54:00:00:00:01");
        let ok = PcChanges {
            ip: Some("192.168.1.30/24".into()),
            gateway: Some("192.168.1.1".into()),
            dns: Some("192.168.1.1,9.9.9.9".into()),
            disk: Some("sda".into()),
            default_action: Some("backup".into()),
            ..PcChanges::default()
        };
        ok.apply(&mut pc).expect("valid");
        assert_eq!((pc.ip.as_str(), pc.gateway.as_str(), pc.disk.as_str()), ("192.168.1.30/24", "192.168.1.1", "sda"));
        let bad = |c: PcChanges, pc: &PcRow| c.apply(&mut pc.clone()).expect_err("refused").to_string();
        assert!(bad(PcChanges { ip: Some("300.1.1.1/24".into()), ..PcChanges::default() }, &pc).contains("ip"));
        assert!(bad(PcChanges { disk: Some("sda\nserver=evil".into()), ..PcChanges::default() }, &pc).contains("disk"));
        assert!(
            bad(PcChanges { mode: Some("floppy".into()), ..PcChanges::default() }, &pc).contains("network or local")
        );
        assert!(bad(PcChanges { mac: Some("nope".into()), ..PcChanges::default() }, &pc).contains("mac"));
        // Back to DHCP: the gateway goes; a gateway with DHCP is refused.
        PcChanges { ip: Some("dhcp".into()), ..PcChanges::default() }.apply(&mut pc).expect("dhcp");
        assert_eq!(pc.gateway, "");
        assert!(bad(PcChanges { gateway: Some("10.0.0.1".into()), ..PcChanges::default() }, &pc).contains("static"));
        assert_eq!(
            PcChanges { quota: Some("2G".into()), ..PcChanges::default() }.quota().expect("q"),
            Some(Some(2 << 30))
        );
        assert_eq!(PcChanges { quota: Some("none".into()), ..PcChanges::default() }.quota().expect("q"), Some(None));
    }
}
