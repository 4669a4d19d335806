//! Network boot, what does not speak HTTP: the boot files published per
//! PC and the iPXE scripts a PC's firmware runs before our init.
//!
//! ```text
//! DATA/boot/NAME/vmlinuz      the files `bootvault build NAME --media pxe`
//! DATA/boot/NAME/initrd.img   publishes (each written whole: a PC booting
//! DATA/boot/NAME/cmdline      meanwhile gets the old file or the new one)
//! ```
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
use crate::refusals::PeerRate;

/// Files a PC may fetch from its boot directory.
pub const BOOT_FILES: &[&str] = &["vmlinuz", "initrd.img"];

/// New MACs one peer address may add to `pending` per [`NEW_PENDING_WINDOW`]:
/// a PC network-boots with one MAC (a few with several NICs); a peer
/// inventing MACs stops here.
const NEW_PENDING_PER_PEER: u32 = 8;
pub const NEW_PENDING_WINDOW: Duration = Duration::from_secs(600);
/// Peer addresses tracked for that; more at once wait for the window.
const NEW_PENDING_PEERS: usize = 1024;

/// The limit on new `pending` MACs per peer address.
pub fn new_pending_rate() -> PeerRate {
    PeerRate::new(NEW_PENDING_WINDOW, NEW_PENDING_PER_PEER, NEW_PENDING_PEERS)
}

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
