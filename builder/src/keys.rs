//! Data keys on the admin's side (docs/DESIGN.md "Encryption on the PC").
//!
//! Backups are encrypted by default: a command that makes backups (`build`
//! for a PC's initramfs, `backup`) uses `--key-file FILE` if given, else
//! the site key, made on first use: `$BOOTVAULT_KEY_FILE`, else
//! `~/.config/bootvault/data.key` (mode 0600, never overwritten). Only
//! `--no-encryption` makes plain backups. Restores use `--key-file`, else
//! the site key if there is one, and only for backups sealed with it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bootvault_common::seal::{
    escrow_ephemeral, escrow_pub_text, escrow_text, escrow_unwrap, key_text, parse_escrow_pub, parse_escrow_text,
    parse_key_text, DataKey,
};
use bootvault_engine::lock::{random_bytes, Zeroizing};

/// The site key's file: `$BOOTVAULT_KEY_FILE`, else
/// `$XDG_CONFIG_HOME/bootvault/data.key` (`~/.config/...`).
pub fn site_key_file() -> Option<PathBuf> {
    crate::known::config_file("BOOTVAULT_KEY_FILE", "data.key")
}

/// A new random data key in `file` (0600; an existing file is never
/// overwritten). The file appears whole or not at all, so commands racing
/// to make the site key all end up with the one that won.
pub fn new_key_file(file: &Path) -> Result<DataKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut master = Zeroizing::new([0u8; 32]);
    random_bytes(&mut master[..])?;
    if file.exists() {
        bail!("{} exists (an existing key is never overwritten)", file.display());
    }
    let mut tag = [0u8; 8];
    random_bytes(&mut tag)?;
    let tmp = file.with_extension(format!("new-{}", bootvault_common::wire::to_hex(&tag)));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let text = key_text(&master);
    let written = f.write_all(format!("{}\n", *text).as_bytes()).and_then(|()| f.sync_all());
    // A hard link never replaces: the first command to make the key wins.
    let linked = written.and_then(|()| fs::hard_link(&tmp, file));
    let _ = fs::remove_file(&tmp);
    linked.with_context(|| format!("creating {} (an existing key is never overwritten)", file.display()))?;
    Ok(DataKey::new(&master))
}

/// The key in `file` in its text form (what goes into an initramfs).
pub fn text_of(file: &Path) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?);
    let master = parse_key_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(key_text(&master))
}

pub fn read_key_file(file: &Path) -> Result<DataKey> {
    let text = Zeroizing::new(fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?);
    let master = parse_key_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(DataKey::new(&master))
}

/// The key new backups are sealed with, and its file: `given`, else the
/// site key (made now if missing, said on standard error); None only with
/// `no_encryption`.
pub fn for_backups(given: Option<&Path>, no_encryption: bool) -> Result<Option<(DataKey, PathBuf)>> {
    if no_encryption {
        return Ok(None);
    }
    if let Some(f) = given {
        return Ok(Some((read_key_file(f)?, f.to_owned())));
    }
    let file = site_key_file().context("no site key file: set BOOTVAULT_KEY_FILE or HOME, or give --key-file")?;
    if file.exists() {
        return Ok(Some((read_key_file(&file)?, file)));
    }
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key = match new_key_file(&file) {
        Ok(k) => {
            eprintln!(
                "made the site's data key {} in {}: backups are encrypted with it; keep a copy offline (without it \
                 they cannot be restored)",
                k.fingerprint(),
                file.display()
            );
            k
        }
        // Another command made it at the same moment.
        Err(_) if file.exists() => read_key_file(&file)?,
        Err(e) => return Err(e),
    };
    Ok(Some((key, file)))
}

/// The escrow public key new backups carry their own keys for: `given`
/// (a `.pub` file, or the private key's file next to it), else the site's
/// (`escrow.pub` next to the site key), if there is one.
pub fn escrow_public(given: Option<&Path>) -> Result<Option<[u8; 32]>> {
    let file = match given {
        Some(f) => f.to_owned(),
        None => match site_key_file().and_then(|f| f.parent().map(|d| d.join("escrow.pub"))).filter(|f| f.exists()) {
            Some(f) => f,
            None => return Ok(None),
        },
    };
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let public = parse_escrow_pub(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(Some(public))
}

/// A new escrow key: the private key in `file` (0600, never overwritten;
/// keep it offline) and its public half in `file.pub` (what PCs carry).
pub fn new_escrow(file: &Path) -> Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut private = Zeroizing::new([0u8; 32]);
    random_bytes(&mut private[..])?;
    let secret = x25519_dalek::StaticSecret::from(*private);
    let public = *x25519_dalek::PublicKey::from(&secret).as_bytes();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {} (an existing key is never overwritten)", file.display()))?;
    f.write_all(format!("{}\n", *escrow_text(&private)).as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", file.display()))?;
    let pub_file = PathBuf::from(format!("{}.pub", file.display()));
    fs::write(&pub_file, format!("{}\n", escrow_pub_text(&public)))
        .with_context(|| format!("writing {}", pub_file.display()))?;
    Ok(public)
}

/// A locked backup's own key, recovered with the escrow's private key in
/// `file` from the manifest's escrowed copy.
pub fn recover_with_escrow(file: &Path, manifest: &bootvault_common::image::Manifest) -> Result<DataKey> {
    let text = Zeroizing::new(fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?);
    let private = parse_escrow_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let Some(sealed) = &manifest.sealed else { bail!("the backup is not encrypted: it needs no escrow") };
    let Some(escrowed) = &sealed.escrowed else {
        bail!("the backup carries no escrowed key (not locked, or made by a PC without the escrow's public key)")
    };
    let secret = x25519_dalek::StaticSecret::from(*private);
    let public = *x25519_dalek::PublicKey::from(&secret).as_bytes();
    let ephemeral = escrow_ephemeral(escrowed).context("escrowed key too short")?;
    let shared = Zeroizing::new(*secret.diffie_hellman(&x25519_dalek::PublicKey::from(ephemeral)).as_bytes());
    let key = escrow_unwrap(&shared, &public, escrowed, &sealed.key).map_err(|_| {
        anyhow::anyhow!("the backup's key was not escrowed for {} (another escrow key?)", file.display())
    })?;
    Ok(DataKey::new(&key))
}

/// The key a restore may use: `given`, else the site key if it exists.
pub fn for_restores(given: Option<&Path>) -> Result<Option<DataKey>> {
    match given {
        Some(f) => read_key_file(f).map(Some),
        None => match site_key_file().filter(|f| f.exists()) {
            Some(f) => read_key_file(&f).map(Some),
            None => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_makers_end_with_one_key() {
        let dir = std::env::temp_dir().join(format!("bv-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("data.key");
        let made: Vec<_> = (0..4)
            .map(|_| {
                let f = file.clone();
                std::thread::spawn(move || new_key_file(&f).ok().map(|k| k.fingerprint()))
            })
            .collect();
        let won: Vec<_> = made.into_iter().filter_map(|h| h.join().expect("thread")).collect();
        assert_eq!(won.len(), 1, "exactly one maker wins");
        assert_eq!(read_key_file(&file).expect("read").fingerprint(), won[0]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&file).expect("meta").permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(&dir).expect("ls").count(), 1, "no temporary file left");
        let _ = fs::remove_dir_all(&dir);
    }
}
