//! Network boot, what does not speak HTTP: the boot files published per
//! PC and the iPXE scripts a PC's firmware runs before our init.
//!
//! ```text
//! DATA/boot/NAME/vmlinuz      the files `bootvault build NAME --media pxe`
//! DATA/boot/NAME/initrd.img   publishes (each written whole: a PC booting
//! DATA/boot/NAME/cmdline      meanwhile gets the old file or the new one)
//! ```
//!
//! ```text
//! DATA/boot-site/vmlinuz      the site's template, published with every
//! DATA/boot-site/base.img     `--media pxe` build: the kernel, the
//! DATA/boot-site/cmdline      initramfs without a PC's configuration,
//! DATA/boot-site/config       and that PC's command line and settings
//! DATA/boot-site/pc
//! ```
//!
//! A PC approved in the web console gets its boot files from the
//! template at once ([`overlay_initrd`]): `base.img` followed by a second,
//! small gzipped cpio holding its `/etc/bootvault.conf` (the kernel
//! unpacks concatenated archives in order), the template's settings with
//! the PC's own name, token, network, disk and action. Network-boot images
//! never hold a data key (`--media pxe` refuses one), so neither does the
//! template.
//!
//! The HTTP side (`/boot/...`, unauthenticated: firmware cannot carry a
//! token) is [`crate::api::boot`]; the PC records are the database's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::db::PcRow;
use crate::durable::DurableWriter;

/// Files a PC may fetch from its boot directory.
pub const BOOT_FILES: &[&str] = &["vmlinuz", "initrd.img"];

/// The site template's files.
pub const SITE_FILES: &[&str] = &["vmlinuz", "base.img", "cmdline", "config", "pc"];

/// The boot files of PC `row` made from the template: `(vmlinuz,
/// initrd.img, cmdline)`. `files` are the template's, in [`SITE_FILES`]
/// order.
pub fn overlay_initrd(files: &[Vec<u8>], row: &PcRow) -> Result<[(&'static str, Vec<u8>); 3]> {
    use bootvault_common::config::Config;
    use bootvault_common::cpio::{write_archive, Entry, Format, Kind};
    let [vmlinuz, base, cmdline, config_text, template_pc] = files else {
        anyhow::bail!("the network-boot template is incomplete");
    };
    let text =
        |b: &[u8], what: &str| String::from_utf8(b.to_vec()).map_err(|_| anyhow::anyhow!("template {what}: not UTF-8"));
    let (cmdline, config_text, template_pc) =
        (text(cmdline, "cmdline")?, text(config_text, "config")?, text(template_pc, "pc")?);
    let mut config = Config::default();
    let mut problems = Vec::new();
    config.apply_file(&config_text, &mut problems);
    if let Some(p) = problems.first() {
        anyhow::bail!("the network-boot template's settings: {}", p.message);
    }
    let mut own = vec![format!("pc={}", row.name)];
    own.extend(row.settings());
    if row.gateway.is_empty() {
        own.push("gateway=".into());
    }
    if row.dns.is_empty() {
        own.push("dns=".into());
    }
    for kv in &own {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        config.set(k, v).map_err(|e| anyhow::anyhow!("PC {}: {e}", row.name))?;
    }
    // What the init will make of it, checked as the init checks it.
    let text = config.to_file();
    if let Some(p) = Config::load(Some(&text), "").1.iter().find(|p| p.fatal) {
        anyhow::bail!("PC {}'s settings from the network-boot template: {}", row.name, p.message);
    }
    let conf = Entry { path: "etc/bootvault.conf".into(), mode: 0o644, kind: Kind::File(text.into_bytes()) };
    let etc = Entry { path: "etc".into(), mode: 0o755, kind: Kind::Dir };
    let mut cpio = Vec::new();
    write_archive(vec![etc, conf], Format::NewcCrc, &mut cpio)?;
    let mut initrd = base.clone();
    initrd.extend(bootvault_common::gz::gzip(&cpio, 9));
    // The template PC's name on the command line becomes this PC's.
    let old = format!("bootvault.pc={}", template_pc.trim());
    let new = format!("bootvault.pc={}", row.name);
    let cmdline: Vec<String> =
        cmdline.split_whitespace().map(|w| if w == old { new.clone() } else { w.to_owned() }).collect();
    Ok([
        ("vmlinuz", vmlinuz.clone()),
        ("initrd.img", initrd),
        ("cmdline", format!("{}\n", cmdline.join(" ")).into_bytes()),
    ])
}

/// New MACs one peer address may add to `pending` per [`NEW_PENDING_WINDOW`]:
/// a PC network-boots with one MAC (a few with several NICs); a peer
/// inventing MACs stops here.
/// Counted in the database, so the limit holds across servers sharing it
/// ([`crate::vault::Vault::note_pending_from`]).
pub const NEW_PENDING_PER_PEER: i64 = 8;
pub const NEW_PENDING_WINDOW: Duration = Duration::from_secs(600);

/// The published boot files (`DATA/boot/`).
pub struct BootFiles {
    dir: PathBuf,
    writer: DurableWriter,
}

impl BootFiles {
    /// `data`: the server's data directory (its `tmp/` holds the writes).
    pub fn new(data: &Path) -> BootFiles {
        BootFiles { dir: data.join("boot"), writer: DurableWriter::new(&data.join("tmp")) }
    }

    /// `DATA/boot/NAME`: the files published for PC `pc`.
    pub fn dir(&self, pc: &str) -> PathBuf {
        self.dir.join(pc)
    }

    /// Publishes PC `pc`'s files (`vmlinuz`, `initrd.img`, `cmdline`),
    /// each written durably; the bytes published.
    pub fn publish(&self, pc: &str, files: &[(&str, Vec<u8>)]) -> Result<u64> {
        let dir = self.dir(pc);
        for (name, bytes) in files {
            self.writer.write(&dir.join(name), bytes)?;
        }
        Ok(files.iter().map(|(_, b)| b.len() as u64).sum())
    }

    /// The kernel command line published for `pc`, if both boot files are
    /// there too.
    pub fn ready(&self, pc: &str) -> Option<String> {
        let dir = self.dir(pc);
        let cmdline = fs::read_to_string(dir.join("cmdline")).ok()?;
        BOOT_FILES.iter().all(|f| dir.join(f).is_file()).then_some(cmdline)
    }

    /// One published file (`file` one of [`BOOT_FILES`], checked by the caller).
    pub fn read(&self, pc: &str, file: &str) -> io::Result<Vec<u8>> {
        fs::read(self.dir(pc).join(file))
    }

    fn site_dir(&self) -> PathBuf {
        self.dir.with_file_name("boot-site")
    }

    /// Publishes the site's template ([`SITE_FILES`], each written durably).
    pub fn publish_site(&self, files: &[(&str, Vec<u8>)]) -> Result<()> {
        for (name, bytes) in files {
            self.writer.write(&self.site_dir().join(name), bytes)?;
        }
        Ok(())
    }

    /// The site's template, in [`SITE_FILES`] order, if one was published.
    pub fn site(&self) -> Option<Vec<Vec<u8>>> {
        SITE_FILES.iter().map(|f| fs::read(self.site_dir().join(f)).ok()).collect()
    }
}

/// The entry script: the same for every PC, so DHCP needs one boot file
/// name. iPXE resolves the relative URL against this script's URL.
pub fn entry_script() -> String {
    "#!ipxe\necho bootvault: asking the server for this PC's boot files (MAC ${netX/mac})\n\
     chain mac/${netX/mac:hexhyp} || goto failed\nexit\n:failed\n\
     echo bootvault: the server did not answer; retrying in 10 s\nsleep 10\nchain mac/${netX/mac:hexhyp}\n"
        .to_owned()
}

/// The per-PC script: the boot files of `pc` with its command line.
pub fn pc_script(pc: &PcRow, cmdline: &str) -> String {
    // `initrd=` names the initrd for EFI-stub kernels under UEFI iPXE;
    // the BIOS path ignores it.
    format!(
        "#!ipxe\necho bootvault: PC {name} ({mac}) boots over the network\n\
         kernel /boot/pc/{name}/vmlinuz initrd=initrd.img {cmdline}\n\
         initrd /boot/pc/{name}/initrd.img\nboot\n",
        name = pc.name,
        mac = pc.mac,
        cmdline = cmdline.trim()
    )
}

/// What an unknown, or not network-bootable, PC is told on its screen.
pub fn refusal_script(lines: &[String]) -> String {
    let mut s = String::from("#!ipxe\n");
    for l in lines {
        // iPXE expands ${...}; keep the message literal.
        s.push_str(&format!("echo bootvault: {}\n", l.replace('$', "")));
    }
    s.push_str("echo bootvault: powering off in 60 s\nsleep 60\npoweroff\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approved_pc_gets_the_template_with_its_own_settings() {
        use bootvault_common::config::Config;
        use bootvault_common::cpio::{read_archive, write_archive, Entry, Format, Kind};
        let file = |p: &str, b: &[u8]| Entry { path: p.into(), mode: 0o644, kind: Kind::File(b.to_vec()) };
        let mut raw = Vec::new();
        write_archive(vec![file("init", b"\x7fELF the init")], Format::NewcCrc, &mut raw).expect("cpio");
        let base = bootvault_common::gz::gzip(&raw, 6);
        let template_config = "pc = \"lab-1\"\nserver = \"http://10.0.2.2:8080\"\ntoken = \"aaaa\"\ngateway = \"10.0.2.2\"\nerror_wait = \"7\"\n";
        let files = vec![
            b"KERNEL".to_vec(),
            base.clone(),
            b"console=ttyS0,115200 quiet panic=10 bootvault.pc=lab-1 mitigations=off\n".to_vec(),
            template_config.as_bytes().to_vec(),
            b"lab-1".to_vec(),
        ];
        let mut row = PcRow::new("lab-9", "52:54:00:00:00:09");
        row.token = "bbbb".into();
        row.default_action = "backup".into();
        let [(k, kernel), (i, initrd), (c, cmdline)] = overlay_initrd(&files, &row).expect("overlay");
        assert_eq!((k, i, c), ("vmlinuz", "initrd.img", "cmdline"));
        assert_eq!(kernel, b"KERNEL");
        assert_eq!(
            String::from_utf8_lossy(&cmdline),
            "console=ttyS0,115200 quiet panic=10 bootvault.pc=lab-9 mitigations=off\n"
        );
        // The template's archive first, unchanged; then the PC's own.
        assert!(initrd.starts_with(&base));
        let own = bootvault_common::gz::gunzip(&initrd[base.len()..], 1 << 20).expect("a second gzip member");
        let entries = read_archive(&own).expect("cpio");
        let conf = entries.iter().find(|e| e.path == "etc/bootvault.conf").expect("the PC's configuration");
        let Kind::File(text) = &conf.kind else { panic!("not a file") };
        let (config, problems) = Config::load(Some(&String::from_utf8_lossy(text)), "");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((config.pc.as_str(), config.token.as_str()), ("lab-9", "bbbb"));
        assert_eq!(config.get("action").as_deref(), Some("backup"));
        assert_eq!(config.get("server").as_deref(), Some("http://10.0.2.2:8080"), "the site's settings stay");
        assert_eq!(config.get("error_wait").as_deref(), Some("7"));
        assert_eq!(config.gateway, None, "the template PC's gateway is not this PC's");
        assert!(overlay_initrd(&files[..4], &row).is_err());
        // A template the init would refuse makes no boot files.
        let mut https = files.clone();
        https[3] = template_config.replace("http://10.0.2.2:8080", "https://10.0.2.2:8443").into_bytes();
        let e = overlay_initrd(&https, &row).expect_err("refused");
        assert!(e.to_string().contains("fingerprint"), "{e}");
    }

    #[test]
    fn scripts() {
        let mut pc = PcRow::new("lab-3", "52:54:00:12:34:56");
        pc.token = "secret".into();
        let s = pc_script(&pc, "console=ttyS0 bootvault.pc=lab-3\n");
        assert!(s.starts_with("#!ipxe\n"));
        assert!(
            s.contains("kernel /boot/pc/lab-3/vmlinuz initrd=initrd.img console=ttyS0 bootvault.pc=lab-3\n"),
            "{s}"
        );
        assert!(s.contains("initrd /boot/pc/lab-3/initrd.img\nboot\n"));
        assert!(!s.contains("secret"), "the token is in the initrd, never in a script");
        let r = refusal_script(&["costs ${x}".into()]);
        assert!(r.contains("echo bootvault: costs {x}\n") && r.ends_with("poweroff\n"), "{r}");
        assert!(entry_script().contains("chain mac/${netX/mac:hexhyp}"));
    }
}
