//! The server's certificate (docs/DESIGN.md "Transport").
//!
//! `bootvault serve` speaks HTTPS with a certificate it made on its first
//! start: a self-signed Ed25519 certificate and its key in `DATA/tls/`
//! (`server.crt`, `server.key`, the key readable by the server's user
//! only). PCs and the host CLI trust it by its SHA-256 fingerprint, pinned
//! when a PC is built, so it needs no CA and nothing on a PC expires; they
//! speak only Ed25519 (engine/src/tls.rs, to keep the init small).
//!
//! Browsers verify no Ed25519 certificate, so the server makes a second
//! one for them on first start, ECDSA P-256 (`browser.crt`,
//! `browser.key`): the web console works at once, behind the browser's
//! warning about a certificate it does not know. An admin may add their
//! own certificate chain and key (an ACME client's files, for browsers):
//! a client that can verify it gets it, one that offers Ed25519 (our PCs
//! and CLI) gets the made one, any other the browsers' one. So renewing
//! the admin's certificate never breaks a PC's pin.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bootvault_common::fingerprint::Fingerprint;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// `DATA/tls`.
pub const DIR: &str = "tls";
pub const CERT: &str = "server.crt";
pub const KEY: &str = "server.key";
/// The certificate for browsers (ECDSA P-256) and its key.
pub const BROWSER_CERT: &str = "browser.crt";
pub const BROWSER_KEY: &str = "browser.key";

/// How the server is reached.
#[derive(Debug, Clone, Default)]
pub enum Mode {
    /// HTTPS with `DATA/tls/server.crt`, made on first start.
    #[default]
    Made,
    /// HTTPS with the admin's own certificate chain and key (PEM).
    Own { cert: PathBuf, key: PathBuf },
    /// Plain HTTP only, as the admin asked (`--plain-http`): tokens cross
    /// the network in clear.
    Plain,
}

/// A server's TLS set-up, ready to accept connections.
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    /// Of the made certificate: what PCs pin.
    pub fingerprint: Fingerprint,
    /// The made certificate's file.
    pub cert: PathBuf,
    /// It was made now (first start).
    pub made: bool,
    /// The admin's own certificate, for clients that can verify it.
    pub own: Option<PathBuf>,
}

/// The admin's certificate for clients that can verify it, else ours
/// for clients that speak Ed25519, else the browsers' one.
#[derive(Debug)]
struct Choose {
    made: Arc<CertifiedKey>,
    own: Option<Arc<CertifiedKey>>,
    browser: Arc<CertifiedKey>,
}

impl ResolvesServerCert for Choose {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = hello.signature_schemes();
        match &self.own {
            Some(own) if own.key.choose_scheme(offered).is_some() => Some(own.clone()),
            _ if self.made.key.choose_scheme(offered).is_some() => Some(self.made.clone()),
            _ => Some(self.browser.clone()),
        }
    }
}

/// The fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of_file(cert: &Path) -> Result<Fingerprint> {
    let chain = read_chain(cert)?;
    Ok(Fingerprint::of_der(&chain[0]))
}

/// The fingerprint PCs of the server with data directory `data` pin,
/// if the server has made (or been given) `DATA/tls/server.crt`.
pub fn fingerprint_in(data: &Path) -> Result<Option<Fingerprint>> {
    let cert = data.join(DIR).join(CERT);
    if !cert.exists() {
        return Ok(None);
    }
    fingerprint_of_file(&cert).map(Some)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let chain: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
    if chain.is_empty() {
        bail!("{}: no certificate in it", path.display());
    }
    Ok(chain)
}

/// The TLS set-up for `mode` (None for [`Mode::Plain`]), making the
/// certificate on first start.
pub fn setup(data: &Path, mode: &Mode, names: &[String]) -> Result<Option<Tls>> {
    if let Mode::Plain = mode {
        return Ok(None);
    }
    let dir = data.join(DIR);
    let (cert, key) = (dir.join(CERT), dir.join(KEY));
    let made = !cert.exists();
    if made {
        make(&dir, names, &rcgen::PKCS_ED25519, (KEY, CERT))?;
    }
    // Data directories from before the browsers' certificate get it now.
    if !dir.join(BROWSER_CERT).exists() {
        make(&dir, names, &rcgen::PKCS_ECDSA_P256_SHA256, (BROWSER_KEY, BROWSER_CERT))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ours = certified(&provider, &cert, &key)?;
    let fingerprint = Fingerprint::of_der(&ours.cert[0]);
    let own = match mode {
        Mode::Own { cert, key } => Some((certified(&provider, cert, key)?, cert.clone())),
        _ => None,
    };
    let browser = Arc::new(certified(&provider, &dir.join(BROWSER_CERT), &dir.join(BROWSER_KEY))?);
    let choose = Choose { made: Arc::new(ours), own: own.as_ref().map(|(k, _)| Arc::new(k.clone())), browser };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(choose));
    Ok(Some(Tls { config: Arc::new(config), fingerprint, cert, made, own: own.map(|(_, p)| p) }))
}

/// A certificate chain and its key from PEM files, checked to belong together.
fn certified(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let chain = read_chain(cert)?;
    let private = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading the key {}", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .with_context(|| format!("{}: not a key this server can use", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .with_context(|| format!("{} and {} do not make a certificate and its key", cert.display(), key.display()))?;
    Ok(certified)
}

/// A self-signed certificate for `names` (and `bootvault`) and its key
/// (`files`: the key's name, the certificate's), written as complete files
/// or not at all.
fn make(dir: &Path, names: &[String], alg: &'static rcgen::SignatureAlgorithm, files: (&str, &str)) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut sans = vec!["bootvault".to_owned()];
    sans.extend(names.iter().filter(|n| !n.is_empty()).cloned());
    let signing_key = rcgen::KeyPair::generate_for(alg).context("making the server's key")?;
    let cert = rcgen::CertificateParams::new(sans)
        .and_then(|p| p.self_signed(&signing_key))
        .context("making the server's certificate")?;
    let made = rcgen::CertifiedKey { cert, signing_key };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: String, mode: u32| -> Result<()> {
        let tmp = dir.join(format!("{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {}", tmp.display()))
    };
    // The key first: a certificate on disk always has its key.
    write(files.0, made.signing_key.serialize_pem(), 0o600)?;
    write(files.1, made.cert.pem(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept_with_its_fingerprint() {
        let dir = std::env::temp_dir().join(format!("bootvault-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(fingerprint_in(&dir).expect("no cert yet"), None);
        let first = setup(&dir, &Mode::Made, &["127.0.0.1".into()]).expect("setup").expect("tls");
        assert!(first.made);
        let again = setup(&dir, &Mode::Made, &[]).expect("setup").expect("tls");
        assert!(!again.made);
        assert_eq!(first.fingerprint, again.fingerprint);
        assert_eq!(fingerprint_in(&dir).expect("read"), Some(first.fingerprint));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join(DIR).join(KEY)).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The browsers' certificate: ECDSA P-256, its key as private.
        let mode = fs::metadata(dir.join(DIR).join(BROWSER_KEY)).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let browser = fs::read_to_string(dir.join(DIR).join(BROWSER_KEY)).expect("key");
        let key = rcgen::KeyPair::from_pem(&browser).expect("a key");
        assert!(key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
        // The admin's own files, swapped: refused with the file's name.
        let swapped = Mode::Own { cert: dir.join(DIR).join(KEY), key: dir.join(DIR).join(CERT) };
        let e = format!("{:#}", setup(&dir, &swapped, &[]).err().expect("swapped files refused"));
        assert!(e.contains("server.key"), "{e}");
        assert!(setup(&dir, &Mode::Plain, &[]).expect("plain").is_none());
        let _ = fs::remove_dir_all(&dir);
    }
}
