//! Which certificate the host CLI trusts for an `https://` server: the
//! `--fingerprint` given, else the server's line in the known-servers
//! file, as ssh's known_hosts and Proxmox's fingerprint cache do.
//!
//! The file (`$BOOTVAULT_KNOWN_SERVERS`, else
//! `~/.config/bootvault/known_servers`) has one server per line:
//! `URL FINGERPRINT`; `#` starts a comment. The CLI never adds to it: a
//! first connection trusts nothing it was not told.

use std::path::PathBuf;

use anyhow::{bail, Result};
use bootvault_common::fingerprint::Fingerprint;

/// The known-servers file.
pub fn file() -> Option<PathBuf> {
    config_file("BOOTVAULT_KNOWN_SERVERS", "known_servers")
}

/// `$VAR`, else `NAME` in `$XDG_CONFIG_HOME/bootvault` (`~/.config/...`):
/// where the CLI keeps what it trusts and the site key.
pub fn config_file(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("bootvault").join(name))
}

/// The fingerprint `text` names for `url` (trailing slashes ignored).
pub fn lookup(text: &str, url: &str) -> Result<Option<Fingerprint>, String> {
    let want = url.trim_end_matches('/');
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let (Some(u), Some(fp)) = (words.next(), words.next()) else { continue };
        if u.trim_end_matches('/') == want {
            return Fingerprint::parse(fp).map(Some).map_err(|e| format!("line {}: {e}", n + 1));
        }
    }
    Ok(None)
}

/// The pin for `url`: None for `http://`; `given`, else the known-servers
/// file's; an `https://` server with neither is refused before anything
/// is sent.
pub fn pin_for(url: &str, given: Option<&str>) -> Result<Option<Fingerprint>> {
    if !url.starts_with("https://") {
        return Ok(None);
    }
    if let Some(text) = given {
        return Fingerprint::parse(text).map(Some).map_err(|e| anyhow::anyhow!("--fingerprint: {e}"));
    }
    let file = file();
    if let Some(f) = file.as_ref().filter(|f| f.exists()) {
        let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?;
        if let Some(fp) = lookup(&text, url).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))? {
            return Ok(Some(fp));
        }
    }
    bail!(
        "{url} is https and its certificate is not known here: give --fingerprint (`bootvault fingerprint --data DIR` \
         on the server prints it) or add `{url} FINGERPRINT` to {}",
        file.map(|f| f.display().to_string()).unwrap_or_else(|| "$BOOTVAULT_KNOWN_SERVERS".into())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_servers_line() {
        let fp = Fingerprint([7; 32]);
        let text = format!("# ours\nhttps://a:8080 {}\nhttps://b:8080/ {fp}  # lab\n", Fingerprint([1; 32]));
        assert_eq!(lookup(&text, "https://b:8080"), Ok(Some(fp)));
        assert_eq!(lookup(&text, "https://c:8080"), Ok(None));
        assert!(lookup("https://c zz", "https://c").expect_err("bad line").contains("line 1"));
        assert_eq!(pin_for("http://x:1", None).expect("plain"), None);
    }
}
