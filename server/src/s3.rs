//! A small blocking S3 client: the six requests the chunk store needs
//! (PutObject, GetObject, HeadObject, DeleteObject, ListObjectsV2 with
//! its pages, CopyObject), signed with AWS Signature Version 4, each
//! with timeouts and retried with backoff on 5xx answers and lost
//! connections (all six are idempotent).
//!
//! Owns the wire: the configuration from `s3://bucket/prefix` and the
//! environment, URLs, signatures, dates and the XML answers; not what
//! the objects mean (`blobs_s3.rs`). Everything but [`S3Client`] is pure
//! and tested on AWS's published signing example and literal answers.
//! The secret key is never printed: [`Credentials`]' `Debug` hides it
//! and errors name the operation, bucket, key and S3's code and message.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bootvault_common::units::{civil, days_from_civil};
use ring::{digest, hmac};
use ureq::http;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::DefaultConnector;

/// SHA-256 of no bytes (the payload hash of bodiless requests).
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The most of an error answer read (its XML names code and message).
const ERROR_BODY_LIMIT: u64 = 64 << 10;

/// How buckets appear in URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `http://endpoint/bucket/key`: custom endpoints (Garage, MinIO, Ceph).
    Path,
    /// `https://bucket.endpoint/key`: AWS.
    Virtual,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Temporary credentials' token (`x-amz-security-token`).
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<hidden>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Where requests go: `scheme://host[:port]`, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    /// A name or an address (IPv6 in brackets), lower case.
    pub host: String,
    pub port: Option<u16>,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            bail!("S3 endpoint {url:?} is not http:// or https://");
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            bail!("S3 endpoint {url:?}: only scheme://host[:port] (no path, no user)");
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => {
                (h, Some(p.parse::<u16>().map_err(|_| anyhow!("S3 endpoint {url:?}: bad port {p:?}"))?))
            }
            _ => (authority, None),
        };
        if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
            bail!("S3 endpoint {url:?}: bad host (IPv6 addresses go in brackets)");
        }
        Ok(Endpoint { https, host: host.to_ascii_lowercase(), port })
    }

    fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// `host[:port]` as a Host header carries it: the port only when it
    /// is not the scheme's.
    fn authority(&self, host: &str) -> String {
        let default = if self.https { 443 } else { 80 };
        match self.port {
            Some(p) if p != default => format!("{host}:{p}"),
            _ => host.to_owned(),
        }
    }
}

/// A store's bucket, key prefix, endpoint and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Prepended to every key: empty or ending in `/`.
    pub prefix: String,
    pub endpoint: Endpoint,
    pub region: String,
    pub addressing: Addressing,
    pub credentials: Credentials,
}

/// The names a credentials file may set (`NAME = value` lines).
const CREDENTIAL_NAMES: [&str; 3] = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

impl S3Config {
    /// [`S3Config::parse`] with this process's environment and files.
    pub fn from_env(url: &str) -> Result<S3Config> {
        S3Config::parse(url, &|name| std::env::var(name).ok(), &|path| std::fs::read_to_string(path))
    }

    /// The store `s3://bucket[/prefix]` configured by the variables `var`
    /// looks up (AWS's names; see docs for `bootvault serve --store`):
    /// endpoint `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` (default AWS in
    /// the region), region `AWS_REGION`, `AWS_DEFAULT_REGION` (default
    /// us-east-1), credentials `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN` or the same names in the file
    /// `BOOTVAULT_S3_CREDENTIALS` names (read with `read`), addressing
    /// `BOOTVAULT_S3_ADDRESSING=path|virtual` (default: path for a custom
    /// endpoint, virtual-hosted on AWS). Empty variables count as unset.
    pub fn parse(
        url: &str,
        var: &dyn Fn(&str) -> Option<String>,
        read: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Result<S3Config> {
        let var = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let (bucket, prefix) = parse_store_url(url)?;
        let region = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into());
        // The region is in the signature's scope and AWS's host name.
        if !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            bail!("S3 region {region:?}: only a-z, 0-9 and '-'");
        }
        let custom = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
        let endpoint = match &custom {
            Some(u) => Endpoint::parse(u)?,
            None => Endpoint { https: true, host: format!("s3.{region}.amazonaws.com"), port: None },
        };
        let addressing = match var("BOOTVAULT_S3_ADDRESSING").as_deref() {
            None if custom.is_some() => Addressing::Path,
            None => Addressing::Virtual,
            Some("path") => Addressing::Path,
            Some("virtual") => Addressing::Virtual,
            Some(other) => bail!("BOOTVAULT_S3_ADDRESSING={other:?}: path or virtual"),
        };
        // A dotted bucket name does not match the endpoint's wildcard
        // certificate (`*.s3.amazonaws.com` covers one label).
        if addressing == Addressing::Virtual && endpoint.https && bucket.contains('.') {
            bail!("S3 bucket {bucket:?} has dots: virtual-hosted HTTPS fails its certificate; set BOOTVAULT_S3_ADDRESSING=path");
        }
        let credentials = match var("BOOTVAULT_S3_CREDENTIALS") {
            Some(file) => {
                let text = read(Path::new(&file)).with_context(|| format!("reading the S3 credentials file {file}"))?;
                parse_credentials_file(&text).with_context(|| format!("S3 credentials file {file}"))?
            }
            None => credentials_from(&var).context("S3 credentials (or BOOTVAULT_S3_CREDENTIALS=FILE)")?,
        };
        Ok(S3Config { bucket, prefix, endpoint, region, addressing, credentials })
    }

    /// Where a request for `key` (None: the bucket itself) goes, with the
    /// query `query` (names and values as they are, encoded here).
    pub fn target(&self, key: Option<&str>, query: &[(&str, String)]) -> Target {
        let key_path = key.map(|k| format!("/{}", uri_encode(k, false))).unwrap_or_default();
        let (host, path) = match self.addressing {
            Addressing::Path => (self.endpoint.authority(&self.endpoint.host), format!("/{}{key_path}", self.bucket)),
            Addressing::Virtual => {
                let host = self.endpoint.authority(&format!("{}.{}", self.bucket, self.endpoint.host));
                (host, if key_path.is_empty() { "/".to_owned() } else { key_path })
            }
        };
        let query = canonical_query(query);
        let mut url = format!("{}://{host}{path}", self.endpoint.scheme());
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        Target { url, host, path, query }
    }

    /// `s3://bucket/key`, for messages.
    pub fn object_name(&self, key: Option<&str>) -> String {
        format!("s3://{}/{}", self.bucket, key.unwrap_or(""))
    }
}

/// A request's URL and the parts of it that are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    /// The Host header (`host[:port]`).
    pub host: String,
    /// The path as sent: URI-encoded.
    pub path: String,
    /// The query string as sent: encoded and sorted.
    pub query: String,
}

/// `s3://bucket[/prefix]` → (bucket, prefix: empty or ending in `/`).
fn parse_store_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| anyhow!("store {url:?} is not s3://bucket[/prefix]"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-';
    if !(3..=63).contains(&bucket.len()) || !bucket.bytes().all(valid) {
        bail!("store {url:?}: bucket {bucket:?} is not 3 to 63 of a-z, 0-9, '.' and '-'");
    }
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Ok((bucket.to_owned(), String::new()));
    }
    // Empty and dot segments: HTTP stacks may rewrite them in a path,
    // and the signature would no longer match.
    if prefix.split('/').any(|s| s.is_empty() || s == "." || s == "..") || prefix.contains(['?', '#']) {
        bail!("store {url:?}: the prefix {prefix:?} has an empty, '.' or '..' segment or a '?' or '#'");
    }
    Ok((bucket.to_owned(), format!("{prefix}/")))
}

/// The credentials the variables `var` looks up set.
fn credentials_from(var: &dyn Fn(&str) -> Option<String>) -> Result<Credentials> {
    let [id, secret, token] = CREDENTIAL_NAMES;
    Ok(Credentials {
        access_key_id: var(id).ok_or_else(|| anyhow!("{id} is not set"))?,
        secret_access_key: var(secret).ok_or_else(|| anyhow!("{secret} is not set"))?,
        session_token: var(token),
    })
}

/// A credentials file: `NAME = value` lines with the variables' names,
/// `#` comments, values optionally quoted.
pub fn parse_credentials_file(text: &str) -> Result<Credentials> {
    let mut values: Vec<(&str, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once('=').ok_or_else(|| anyhow!("line {}: not NAME = value", n + 1))?;
        let name = name.trim().strip_prefix("export ").map(str::trim).unwrap_or(name.trim());
        let Some(known) = CREDENTIAL_NAMES.iter().find(|k| **k == name) else {
            bail!("line {}: unknown name {name:?} (one of {})", n + 1, CREDENTIAL_NAMES.join(", "));
        };
        let value = value.trim();
        let unquoted = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(a, b)| value.strip_prefix(*a).and_then(|v| v.strip_suffix(*b)))
            .unwrap_or(value);
        values.push((known, unquoted.to_owned()));
    }
    credentials_from(&|name| values.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))
}

// Signature Version 4.

/// `s` with everything but A-Z a-z 0-9 - . _ ~ (and `/` unless
/// `encode_slash`) as %XX of its UTF-8 bytes: SigV4's URI encoding, also
/// the one the request is sent with (S3 encodes the path once).
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (b == b'/' && !encode_slash) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical query string: names and values encoded, sorted.
pub fn canonical_query(query: &[(&str, String)]) -> String {
    let mut pairs: Vec<(String, String)> =
        query.iter().map(|(k, v)| (uri_encode(k, true), uri_encode(v, true))).collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// A request as SigV4 sees it.
pub struct Canonical<'a> {
    pub method: &'a str,
    /// URI-encoded, as sent.
    pub path: &'a str,
    /// [`canonical_query`], as sent.
    pub query: &'a str,
    /// Every header signed, names in lower case (host and the x-amz-*
    /// ones at least).
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the body (the `x-amz-content-sha256` header).
    pub payload_sha256: &'a str,
}

impl Canonical<'_> {
    fn sorted_headers(&self) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect();
        h.sort();
        h
    }

    fn signed_headers(&self) -> String {
        self.sorted_headers().into_iter().map(|(k, _)| k).collect::<Vec<_>>().join(";")
    }

    /// The canonical request (AWS's step 1).
    pub fn request(&self) -> String {
        let headers: String = self.sorted_headers().iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        format!(
            "{}\n{}\n{}\n{headers}\n{}\n{}",
            self.method,
            self.path,
            self.query,
            self.signed_headers(),
            self.payload_sha256
        )
    }
}

/// The string to sign (AWS's step 2) at `amz_date` (`20130524T000000Z`).
pub fn string_to_sign(region: &str, amz_date: &str, req: &Canonical<'_>) -> String {
    let scope = format!("{}/{region}/s3/aws4_request", &amz_date[..amz_date.len().min(8)]);
    format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(sha256(req.request().as_bytes()).as_ref()))
}

/// The Authorization header's value for `req` at `amz_date`.
pub fn authorization(creds: &Credentials, region: &str, amz_date: &str, req: &Canonical<'_>) -> String {
    let date = &amz_date[..amz_date.len().min(8)];
    let mut key = format!("AWS4{}", creds.secret_access_key).into_bytes();
    for part in [date, region, "s3", "aws4_request"] {
        key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes()).as_ref().to_vec();
    }
    let signature =
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), string_to_sign(region, amz_date, req).as_bytes());
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{date}/{region}/s3/aws4_request,SignedHeaders={},Signature={}",
        creds.access_key_id,
        req.signed_headers(),
        hex(signature.as_ref())
    )
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 with padding (the checksum header's encoding).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// Dates: SigV4's `20130524T000000Z`, the XML's `2013-05-24T00:00:00.000Z`,
// HTTP's `Fri, 24 May 2013 00:00:00 GMT` (days from `bootvault_common::units`).

/// `20130524T000000Z` for a unix time.
pub fn amz_date(unix: i64) -> String {
    let (y, m, d, s) = civil(unix);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

fn unix_of(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    let valid = (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && s <= 60;
    valid.then(|| days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s)
}

fn digits(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

/// `2013-05-24T00:00:00[.000]Z` → unix seconds (fractions dropped).
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let time = time.split_once('.').map_or(time, |(t, frac)| if digits(frac).is_some() { t } else { "" });
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    let ([y, mo, da], [h, mi, se]) = (d.as_slice(), t.as_slice()) else { return None };
    unix_of(digits(y)?, digits(mo)?, digits(da)?, digits(h)?, digits(mi)?, digits(se)?)
}

/// `Fri, 24 May 2013 00:00:00 GMT` (HTTP's IMF-fixdate) → unix seconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let words: Vec<&str> = s.split_whitespace().collect();
    let [_, d, mo, y, time, "GMT"] = words.as_slice() else { return None };
    let mo = MONTHS.iter().position(|m| m == mo)? as i64 + 1;
    let t: Vec<&str> = time.split(':').collect();
    let [h, mi, se] = t.as_slice() else { return None };
    unix_of(digits(y)?, mo, digits(d)?, digits(h)?, digits(mi)?, digits(se)?)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

// The XML answers. Three fixed shapes from a server we signed a request
// to (a list page, an error, a copy result): tags are found by name, which
// is unambiguous because text cannot hold a raw '<' (S3 sends no CDATA or
// comments; markup where text is expected is refused). A general XML
// parser (quick-xml) would add a dependency for these ~50 lines.

/// The raw text of each `<name>…</name>` in `xml`, in order.
fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// The decoded text of the first `<name>` in `xml`.
fn text(xml: &str, name: &str) -> Result<Option<String>, String> {
    elements(xml, name).first().map(|t| unescape(t).map_err(|e| format!("<{name}>: {e}"))).transpose()
}

/// XML text with its entities (`&amp;` `&lt;` `&gt;` `&quot;` `&apos;`
/// `&#N;` `&#xH;`) decoded.
pub fn unescape(s: &str) -> Result<String, String> {
    if s.contains('<') {
        return Err(format!("markup where text was expected: {:?}", s.chars().take(60).collect::<String>()));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after.find(';').filter(|e| *e <= 10).ok_or_else(|| format!("bad entity in {s:?}"))?;
        let c = match &after[..end] {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e => match e.strip_prefix("#x").or_else(|| e.strip_prefix("#X")) {
                Some(h) if h.bytes().all(|b| b.is_ascii_hexdigit()) => u32::from_str_radix(h, 16).ok(),
                Some(_) => None,
                None => e.strip_prefix('#').and_then(digits).and_then(|n| u32::try_from(n).ok()),
            }
            .and_then(char::from_u32),
        };
        out.push(c.ok_or_else(|| format!("bad entity &{}; in {s:?}", &after[..end]))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One object of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    /// LastModified, unix seconds.
    pub last_modified: i64,
}

/// One page of ListObjectsV2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    /// The continuation token of the next page (None: this was the last).
    pub next: Option<String>,
}

/// A ListObjectsV2 answer (`<ListBucketResult>`).
pub fn parse_list(xml: &str) -> Result<ListPage, String> {
    if !xml.contains("<ListBucketResult") {
        return Err("not a ListBucketResult".into());
    }
    let mut objects = Vec::new();
    for c in elements(xml, "Contents") {
        let key = text(c, "Key")?.ok_or("<Contents> without <Key>")?;
        let size = text(c, "Size")?.and_then(|s| s.trim().parse().ok()).ok_or_else(|| format!("{key}: bad <Size>"))?;
        let last_modified = text(c, "LastModified")?
            .and_then(|t| parse_iso8601(&t))
            .ok_or_else(|| format!("{key}: bad <LastModified>"))?;
        objects.push(ListedObject { key, size, last_modified });
    }
    let truncated = match text(xml, "IsTruncated")?.as_deref().map(str::trim) {
        Some("true") => true,
        Some("false") | None => false,
        Some(other) => return Err(format!("bad <IsTruncated> {other:?}")),
    };
    let next = match (truncated, text(xml, "NextContinuationToken")?) {
        (false, _) => None,
        (true, Some(t)) if !t.is_empty() => Some(t),
        (true, _) => return Err("truncated without <NextContinuationToken>".into()),
    };
    Ok(ListPage { objects, next })
}

/// An error answer's (code, message); None: not an `<Error>`.
pub fn parse_error(xml: &str) -> Option<(String, String)> {
    let error = *elements(xml, "Error").first()?;
    let code = text(error, "Code").ok().flatten().unwrap_or_default();
    let message = text(error, "Message").ok().flatten().unwrap_or_default();
    Some((code, message.split_whitespace().collect::<Vec<_>>().join(" ")))
}

// The client.

/// What failed, with the operation and the object: one line.
#[derive(Debug)]
pub struct S3Error {
    /// `PutObject`, `GetObject`, ...
    pub op: &'static str,
    /// `s3://bucket/key at http://endpoint`.
    pub object: String,
    pub kind: S3ErrorKind,
}

#[derive(Debug)]
pub enum S3ErrorKind {
    /// The store answered `status` (with S3's error code and message when
    /// it sent them).
    Refused { status: u16, code: String, message: String },
    /// No answer after `attempts` tries.
    Unreachable { attempts: u32, error: String },
    /// An object over the caller's limit (len: as announced).
    TooLarge { len: Option<u64>, limit: u64 },
    /// An answer that does not parse.
    BadAnswer(String),
}

impl fmt::Display for S3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3 {} {}: ", self.op, self.object)?;
        match &self.kind {
            S3ErrorKind::Refused { status, code, message } if message.is_empty() => write!(f, "{status} {code}"),
            S3ErrorKind::Refused { status, code, message } => write!(f, "{status} {code}: {message}"),
            S3ErrorKind::Unreachable { attempts, error } => write!(f, "no answer after {attempts} attempts: {error}"),
            S3ErrorKind::TooLarge { len: Some(len), limit } => write!(f, "{len} bytes, over {limit}"),
            S3ErrorKind::TooLarge { len: None, limit } => write!(f, "over {limit} bytes"),
            S3ErrorKind::BadAnswer(e) => write!(f, "unreadable answer: {e}"),
        }
    }
}

impl std::error::Error for S3Error {}

/// Timeouts and retries.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub connect: Duration,
    /// One attempt, from sending to the last byte of the answer.
    pub request: Duration,
    /// Tries of one request: lost connections, timeouts and 5xx answers
    /// are tried again.
    pub attempts: u32,
    /// The wait before the first retry, doubled before each next.
    pub backoff: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        // Blobs are a few MiB: 60 s is 100 KiB/s for the largest.
        Timing {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
            attempts: 4,
            backoff: Duration::from_millis(250),
        }
    }
}

/// An object's length and LastModified (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHead {
    pub len: u64,
    pub last_modified: i64,
}

/// Resolves `localhost` and `*.localhost` to 127.0.0.1 itself, as RFC
/// 6761 (6.3) asks of resolvers (glibc's does not), so a local endpoint
/// can be addressed virtual-hosted (`bucket.localhost:3900`); other names
/// go to ureq's resolver. (ureq's `unversioned` API: may move in a minor
/// ureq release.)
#[derive(Debug, Default)]
struct LoopbackNames(DefaultResolver);

impl Resolver for LoopbackNames {
    fn resolve(
        &self,
        uri: &http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or("").to_ascii_lowercase();
        if host == "localhost" || host.ends_with(".localhost") {
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
            let mut out = self.empty();
            out.push(SocketAddr::from(([127, 0, 0, 1], port)));
            return Ok(out);
        }
        self.0.resolve(uri, config, timeout)
    }
}

/// One request before signing.
struct Call<'a> {
    op: &'static str,
    method: &'static str,
    key: Option<&'a str>,
    query: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
    body: &'a [u8],
    /// SHA-256 of `body`.
    payload: [u8; 32],
    /// The largest successful answer body read.
    limit: u64,
}

impl<'a> Call<'a> {
    fn new(op: &'static str, method: &'static str, key: Option<&'a str>, body: &'a [u8]) -> Call<'a> {
        Call { op, method, key, query: Vec::new(), headers: Vec::new(), body, payload: sha256(body), limit: 0 }
    }
}

/// An answer read whole.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

enum AttemptError {
    /// Worth another try (a connection lost, a timeout).
    Transient(String),
    Final(S3ErrorKind),
}

/// A blocking S3 client for one bucket (see the module doc).
pub struct S3Client {
    config: S3Config,
    timing: Timing,
    agent: ureq::Agent,
}

impl S3Client {
    pub fn new(config: S3Config) -> S3Client {
        S3Client::with_timing(config, Timing::default())
    }

    pub fn with_timing(config: S3Config, timing: Timing) -> S3Client {
        let agent_config = ureq::Agent::config_builder()
            // Error answers are read for S3's code and message.
            .http_status_as_error(false)
            // A redirect (a bucket in another region) would need signing
            // again for another host: it is reported instead.
            .max_redirects(0)
            .timeout_connect(Some(timing.connect))
            .timeout_global(Some(timing.request))
            .user_agent("bootvault")
            .build();
        let agent = ureq::Agent::with_parts(agent_config, DefaultConnector::new(), LoopbackNames::default());
        S3Client { config, timing, agent }
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    fn error(&self, op: &'static str, key: Option<&str>, kind: S3ErrorKind) -> S3Error {
        let e = &self.config.endpoint;
        let object = format!("{} at {}://{}", self.config.object_name(key), e.scheme(), e.authority(&e.host));
        S3Error { op, object, kind }
    }

    /// The error an unexpected answer means.
    fn refused(&self, call: &Call<'_>, a: &Answer) -> S3Error {
        let text = String::from_utf8_lossy(&a.body);
        let (code, message) = parse_error(&text).unwrap_or_else(|| {
            let reason = http::StatusCode::from_u16(a.status).ok().and_then(|s| s.canonical_reason());
            (reason.unwrap_or("").to_owned(), String::new())
        });
        self.error(call.op, call.key, S3ErrorKind::Refused { status: a.status, code, message })
    }

    /// Sends `call`, again after a backoff on transient failures and 5xx
    /// answers; the last answer, whatever its status.
    fn call(&self, call: &Call<'_>) -> Result<Answer, S3Error> {
        let mut wait = self.timing.backoff;
        let mut attempt = 1;
        loop {
            let last = attempt >= self.timing.attempts.max(1);
            match self.attempt(call) {
                Ok(a) if !last && (a.status >= 500 || a.status == 408 || a.status == 429) => {}
                Ok(a) => return Ok(a),
                Err(AttemptError::Transient(_)) if !last => {}
                Err(AttemptError::Transient(error)) => {
                    return Err(self.error(call.op, call.key, S3ErrorKind::Unreachable { attempts: attempt, error }))
                }
                Err(AttemptError::Final(kind)) => return Err(self.error(call.op, call.key, kind)),
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(10));
            attempt += 1;
        }
    }

    /// One try: signed now, the answer read whole (a successful one up to
    /// the call's limit, announced or not).
    fn attempt(&self, call: &Call<'_>) -> Result<Answer, AttemptError> {
        let target = self.config.target(call.key, &call.query);
        let amz_date = amz_date(unix_now());
        let payload = hex(&call.payload);
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), target.host.clone()),
            ("x-amz-content-sha256".into(), payload.clone()),
            ("x-amz-date".into(), amz_date.clone()),
        ];
        if let Some(t) = &self.config.credentials.session_token {
            headers.push(("x-amz-security-token".into(), t.clone()));
        }
        headers.extend(call.headers.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let canonical = Canonical {
            method: call.method,
            path: &target.path,
            query: &target.query,
            headers: &headers,
            payload_sha256: &payload,
        };
        let auth = authorization(&self.config.credentials, &self.config.region, &amz_date, &canonical);
        let mut request = http::Request::builder().method(call.method).uri(&target.url);
        // Host included: ureq sends the one given, the one signed.
        for (k, v) in &headers {
            request = request.header(k.as_str(), v.as_str());
        }
        request = request.header("authorization", auth);
        let sent = if call.method == "PUT" {
            request.body(call.body).map(|r| self.agent.run(r))
        } else {
            request.body(()).map(|r| self.agent.run(r))
        };
        let mut response = match sent {
            Err(e) => return Err(AttemptError::Final(S3ErrorKind::BadAnswer(format!("building the request: {e}")))),
            Ok(Err(e)) => return Err(AttemptError::Transient(e.to_string())),
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        let success = (200..300).contains(&status);
        let limit = if success { call.limit } else { ERROR_BODY_LIMIT };
        let announced = response.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if success && call.method != "HEAD" && announced.is_some_and(|len| len > limit) {
            return Err(AttemptError::Final(S3ErrorKind::TooLarge { len: announced, limit }));
        }
        let body = if call.method == "HEAD" {
            Vec::new()
        } else {
            match response.body_mut().with_config().limit(limit).read_to_vec() {
                Ok(b) => b,
                Err(ureq::Error::BodyExceedsLimit(_)) if success => {
                    return Err(AttemptError::Final(S3ErrorKind::TooLarge { len: None, limit }))
                }
                // An error answer is read for its message only.
                Err(_) if !success => Vec::new(),
                Err(e) => return Err(AttemptError::Transient(format!("reading the answer: {e}"))),
            }
        };
        Ok(Answer { status, headers: response.headers().clone(), body })
    }

    /// Checks that the bucket answers to these credentials (one list of
    /// at most one key under the prefix).
    pub fn probe(&self) -> Result<(), S3Error> {
        let mut call = Call::new("ListObjectsV2", "GET", None, &[]);
        call.query = vec![("list-type", "2".into()), ("max-keys", "1".into()), ("prefix", self.config.prefix.clone())];
        call.limit = 1 << 20;
        let a = self.call(&call)?;
        if a.status != 200 {
            return Err(self.refused(&call, &a));
        }
        Ok(())
    }

    /// Stores `body` at `key` in one PUT, its SHA-256 checked by the store
    /// (signed `x-amz-content-sha256`, and `x-amz-checksum-sha256` kept
    /// with the object).
    pub fn put_object(&self, key: &str, body: &[u8]) -> Result<(), S3Error> {
        let mut call = Call::new("PutObject", "PUT", Some(key), body);
        call.headers.push(("x-amz-checksum-sha256", base64(&call.payload)));
        call.limit = 1 << 20;
        let a = self.call(&call)?;
        if a.status != 200 {
            return Err(self.refused(&call, &a));
        }
        Ok(())
    }

    /// The object at `key` (None: no such key), refused when over `limit`
    /// bytes before its body is read.
    pub fn get_object(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, S3Error> {
        let mut call = Call::new("GetObject", "GET", Some(key), &[]);
        call.limit = limit;
        let a = self.call(&call)?;
        match a.status {
            200 => Ok(Some(a.body)),
            404 if self.no_such_key(&a) => Ok(None),
            _ => Err(self.refused(&call, &a)),
        }
    }

    /// A 404 about the key, not the bucket.
    fn no_such_key(&self, a: &Answer) -> bool {
        parse_error(&String::from_utf8_lossy(&a.body)).is_none_or(|(code, _)| code == "NoSuchKey")
    }

    /// The object's length and LastModified (None: no such key; a HEAD
    /// answer has no body to tell a missing bucket from a missing key).
    pub fn head_object(&self, key: &str) -> Result<Option<ObjectHead>, S3Error> {
        let call = Call::new("HeadObject", "HEAD", Some(key), &[]);
        let a = self.call(&call)?;
        match a.status {
            200 => {}
            404 => return Ok(None),
            _ => return Err(self.refused(&call, &a)),
        }
        let len = a.header("content-length").and_then(|v| v.parse().ok());
        let last_modified = a.header("last-modified").and_then(parse_http_date);
        match (len, last_modified) {
            (Some(len), Some(last_modified)) => Ok(Some(ObjectHead { len, last_modified })),
            _ => Err(self.error(
                call.op,
                Some(key),
                S3ErrorKind::BadAnswer(format!(
                    "Content-Length {:?}, Last-Modified {:?}",
                    a.header("content-length"),
                    a.header("last-modified")
                )),
            )),
        }
    }

    /// Removes the object (none there is no error: S3 does not say).
    pub fn delete_object(&self, key: &str) -> Result<(), S3Error> {
        let call = Call::new("DeleteObject", "DELETE", Some(key), &[]);
        let a = self.call(&call)?;
        match a.status {
            200 | 204 => Ok(()),
            404 if self.no_such_key(&a) => Ok(()),
            _ => Err(self.refused(&call, &a)),
        }
    }

    /// Copies the object onto itself with its metadata replaced, which
    /// sets its LastModified to now; the new LastModified (None: no such
    /// key). On a versioned bucket this would add a version per touch.
    pub fn copy_onto_itself(&self, key: &str) -> Result<Option<i64>, S3Error> {
        let mut call = Call::new("CopyObject", "PUT", Some(key), &[]);
        call.headers.push(("x-amz-copy-source", format!("/{}/{}", self.config.bucket, uri_encode(key, false))));
        call.headers.push(("x-amz-metadata-directive", "REPLACE".into()));
        call.limit = 1 << 20;
        let a = self.call(&call)?;
        if a.status == 404 && self.no_such_key(&a) {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&a.body);
        // A copy can fail after its 200 was sent: the error is then the body.
        if a.status != 200 || parse_error(&text).is_some() {
            return Err(self.refused(&call, &a));
        }
        let bad = |e: String| self.error(call.op, Some(key), S3ErrorKind::BadAnswer(e));
        let result =
            elements(&text, "CopyObjectResult").first().copied().ok_or_else(|| bad("no <CopyObjectResult>".into()))?;
        let last_modified = text_of(result, "LastModified").map_err(&bad)?;
        parse_iso8601(&last_modified).map(Some).ok_or_else(|| bad(format!("bad <LastModified> {last_modified:?}")))
    }

    /// One page of the keys under `prefix` (up to 1000), from `token`.
    pub fn list_page(&self, prefix: &str, token: Option<&str>) -> Result<ListPage, S3Error> {
        let mut call = Call::new("ListObjectsV2", "GET", None, &[]);
        call.query = vec![("list-type", "2".into()), ("prefix", prefix.to_owned())];
        if let Some(t) = token {
            call.query.push(("continuation-token", t.to_owned()));
        }
        // 1000 keys of a few hundred bytes of XML each.
        call.limit = 16 << 20;
        let a = self.call(&call)?;
        if a.status != 200 {
            return Err(self.refused(&call, &a));
        }
        parse_list(&String::from_utf8_lossy(&a.body))
            .map_err(|e| self.error(call.op, Some(prefix), S3ErrorKind::BadAnswer(e)))
    }

    /// Every key under `prefix`, page after page.
    pub fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(prefix, token.as_deref())?;
            out.extend(page.objects);
            match page.next {
                // A store repeating its token would list forever.
                Some(next) if token.as_deref() == Some(next.as_str()) => {
                    let e = format!("the continuation token {next:?} came back");
                    return Err(self.error("ListObjectsV2", Some(prefix), S3ErrorKind::BadAnswer(e)));
                }
                Some(next) => token = Some(next),
                None => return Ok(out),
            }
        }
    }
}

/// The decoded text of the first `<name>` in `xml`, which must be there.
fn text_of(xml: &str, name: &str) -> Result<String, String> {
    text(xml, name)?.ok_or_else(|| format!("no <{name}>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    fn headers(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// AWS's "Example: GET Object" (S3 API reference, "Signature
    /// Calculations for the Authorization Header").
    #[test]
    fn sigv4_matches_the_aws_get_object_example() {
        let h = headers(&[
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let req = Canonical { method: "GET", path: "/test.txt", query: "", headers: &h, payload_sha256: EMPTY_SHA256 };
        assert_eq!(
            req.request(),
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            string_to_sign("us-east-1", "20130524T000000Z", &req),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(
            authorization(&example_creds(), "us-east-1", "20130524T000000Z", &req),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        // Any change to what is signed changes the signature.
        let other = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-8"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let req2 = Canonical { headers: &other, ..req };
        assert!(!authorization(&example_creds(), "us-east-1", "20130524T000000Z", &req2).contains("f0e8bdb8"));
    }

    /// The same page's "PUT Object" (an encoded key, a body) and "GET
    /// Bucket (List Objects)" (a query string) examples.
    #[test]
    fn sigv4_matches_the_aws_put_and_list_examples() {
        let body_sha = hex(&sha256(b"Welcome to Amazon S3."));
        assert_eq!(body_sha, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
        let h = headers(&[
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", &body_sha),
        ]);
        let path = format!("/{}", uri_encode("test$file.text", false));
        let req = Canonical { method: "PUT", path: &path, query: "", headers: &h, payload_sha256: &body_sha };
        assert!(authorization(&example_creds(), "us-east-1", "20130524T000000Z", &req).ends_with(
            "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,\
             Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        ));
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", EMPTY_SHA256),
        ]);
        let query = canonical_query(&[("prefix", "J".into()), ("max-keys", "2".into())]);
        assert_eq!(query, "max-keys=2&prefix=J");
        let req = Canonical { method: "GET", path: "/", query: &query, headers: &h, payload_sha256: EMPTY_SHA256 };
        assert!(authorization(&example_creds(), "us-east-1", "20130524T000000Z", &req)
            .ends_with("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"));
    }

    fn config(addressing: Addressing, endpoint: Endpoint) -> S3Config {
        S3Config {
            bucket: "examplebucket".into(),
            prefix: "bv/".into(),
            endpoint,
            region: "us-east-1".into(),
            addressing,
            credentials: example_creds(),
        }
    }

    #[test]
    fn path_style_and_virtual_hosted_urls() {
        let local = Endpoint::parse("http://127.0.0.1:3900/").unwrap();
        let c = config(Addressing::Path, local.clone());
        let t = c.target(Some("bv/chunks/ab/ab01 x+é"), &[]);
        assert_eq!(t.url, "http://127.0.0.1:3900/examplebucket/bv/chunks/ab/ab01%20x%2B%C3%A9");
        assert_eq!(
            (t.host.as_str(), t.path.as_str(), t.query.as_str()),
            ("127.0.0.1:3900", "/examplebucket/bv/chunks/ab/ab01%20x%2B%C3%A9", "")
        );
        let t = c.target(
            None,
            &[("prefix", "bv/chunks/0a/".into()), ("list-type", "2".into()), ("continuation-token", "a=b/c".into())],
        );
        assert_eq!(
            t.url,
            "http://127.0.0.1:3900/examplebucket?continuation-token=a%3Db%2Fc&list-type=2&prefix=bv%2Fchunks%2F0a%2F"
        );
        let c = config(Addressing::Virtual, local);
        let t = c.target(Some("bv/manifests/7.bvm"), &[]);
        assert_eq!(
            (t.url.as_str(), t.host.as_str()),
            ("http://examplebucket.127.0.0.1:3900/bv/manifests/7.bvm", "examplebucket.127.0.0.1:3900")
        );
        let aws = Endpoint { https: true, host: "s3.us-east-1.amazonaws.com".into(), port: None };
        let c = config(Addressing::Virtual, aws.clone());
        let t = c.target(None, &[("list-type", "2".into())]);
        assert_eq!(
            (t.url.as_str(), t.path.as_str()),
            ("https://examplebucket.s3.us-east-1.amazonaws.com/?list-type=2", "/")
        );
        // The scheme's own port is left out of the Host header.
        let c = config(Addressing::Path, Endpoint { port: Some(443), ..aws });
        assert_eq!(c.target(Some("k"), &[]).host, "s3.us-east-1.amazonaws.com");
        assert_eq!(Endpoint::parse("https://[::1]:9000").unwrap().host, "[::1]");
        for bad in ["ftp://x", "http://", "http://h/path", "http://h:99999", "http://u@h", "http://::1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    fn no_files(p: &Path) -> std::io::Result<String> {
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} not here", p.display())))
    }

    #[test]
    fn config_from_the_url_and_variables() {
        let keys: &[(&str, &str)] = &[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "s3cr3t")];
        let c = S3Config::parse("s3://my-bucket", &vars(keys), &no_files).unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str(), c.region.as_str()), ("my-bucket", "", "us-east-1"));
        assert_eq!(c.endpoint, Endpoint { https: true, host: "s3.us-east-1.amazonaws.com".into(), port: None });
        assert_eq!(c.addressing, Addressing::Virtual);
        assert_eq!(c.credentials.session_token, None);
        assert!(!format!("{c:?}").contains("s3cr3t"), "Debug hides the secret");

        let all: &[(&str, &str)] = &[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("AWS_SESSION_TOKEN", "tok"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_ENDPOINT_URL", "http://ignored:1"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:3900"),
        ];
        let c = S3Config::parse("s3://b12/a/b/", &vars(all), &no_files).unwrap();
        assert_eq!((c.prefix.as_str(), c.region.as_str(), c.addressing), ("a/b/", "eu-west-3", Addressing::Path));
        assert_eq!(c.endpoint, Endpoint { https: false, host: "127.0.0.1".into(), port: Some(3900) });
        assert_eq!(c.credentials.session_token.as_deref(), Some("tok"));
        // AWS_REGION wins over AWS_DEFAULT_REGION; addressing forced.
        let forced: &[(&str, &str)] = &[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("AWS_REGION", "garage"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_ENDPOINT_URL", "http://localhost:3900"),
            ("BOOTVAULT_S3_ADDRESSING", "virtual"),
        ];
        let c = S3Config::parse("s3://bkt/p", &vars(forced), &no_files).unwrap();
        assert_eq!((c.region.as_str(), c.addressing, c.prefix.as_str()), ("garage", Addressing::Virtual, "p/"));

        let err = |url: &str, v: &'static [(&'static str, &'static str)]| {
            format!("{:#}", S3Config::parse(url, &vars(v), &no_files).unwrap_err())
        };
        assert!(err("s3://my-bucket", &[("AWS_ACCESS_KEY_ID", "AKID")]).contains("AWS_SECRET_ACCESS_KEY is not set"));
        assert!(err("http://b/x", keys).contains("not s3://"));
        assert!(err("s3://B_ad", keys).contains("bucket"));
        assert!(err("s3://ok-bucket/a//b", keys).contains("prefix"));
        assert!(err("s3://ok-bucket/a/../b", keys).contains("prefix"));
        assert!(err("s3://dotted.bucket", keys).contains("BOOTVAULT_S3_ADDRESSING=path"));
        let bad: &[(&str, &str)] =
            &[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "B"), ("BOOTVAULT_S3_ADDRESSING", "dns")];
        assert!(err("s3://bkt", bad).contains("path or virtual"));
        let wrong_secret: &[(&str, &str)] =
            &[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "hunter2"), ("AWS_REGION", "Bad Region")];
        let e = err("s3://bkt", wrong_secret);
        assert!(e.contains("region") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn credentials_file() {
        let file: &[(&str, &str)] = &[
            ("BOOTVAULT_S3_CREDENTIALS", "/etc/bv/s3"),
            // The file wins: an id from here and a secret from there would not pair.
            ("AWS_ACCESS_KEY_ID", "FROM-ENV"),
        ];
        let read = |p: &Path| -> std::io::Result<String> {
            assert_eq!(p, Path::new("/etc/bv/s3"));
            Ok("# bootvault\n\nAWS_ACCESS_KEY_ID = GK123\nexport AWS_SECRET_ACCESS_KEY=\"se = cret\"\n".into())
        };
        let c = S3Config::parse("s3://bkt", &vars(file), &read).unwrap();
        assert_eq!(
            c.credentials,
            Credentials { access_key_id: "GK123".into(), secret_access_key: "se = cret".into(), session_token: None }
        );
        let e = format!("{:#}", parse_credentials_file("AWS_ACCESS_KEY_ID=a\nAWS_SECRET_KEY=b\n").unwrap_err());
        assert!(e.contains("line 2") && e.contains("AWS_SECRET_KEY"), "{e}");
        let e = format!("{:#}", parse_credentials_file("AWS_ACCESS_KEY_ID=a\n").unwrap_err());
        assert!(e.contains("AWS_SECRET_ACCESS_KEY is not set"), "{e}");
        let e = format!("{:#}", S3Config::parse("s3://bkt", &vars(file), &no_files).unwrap_err());
        assert!(e.contains("/etc/bv/s3"), "{e}");
    }

    #[test]
    fn dates() {
        assert_eq!(amz_date(1369353600), "20130524T000000Z");
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951782400 + 86399), "20000229T235959Z");
        assert_eq!(parse_iso8601("2013-05-24T00:00:00.000Z"), Some(1369353600));
        assert_eq!(parse_iso8601("2000-02-29T23:59:59Z"), Some(951782400 + 86399));
        assert_eq!(parse_http_date("Fri, 24 May 2013 00:00:00 GMT"), Some(1369353600));
        assert_eq!(parse_http_date("Tue, 29 Feb 2000 23:59:59 GMT"), Some(951782400 + 86399));
        for bad in ["2013-05-24T00:00:00", "2013-13-24T00:00:00Z", "2013-05-24 00:00:00Z", "2013-05-24T00:00:00.x1Z"] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
        assert_eq!(parse_http_date("Fri, 24 Mai 2013 00:00:00 GMT"), None);
        for t in [0i64, 1, 86399, 951782400, 1369353600, 4102444800] {
            let d = amz_date(t);
            let iso = format!("{}-{}-{}T{}:{}:{}Z", &d[..4], &d[4..6], &d[6..8], &d[9..11], &d[11..13], &d[13..15]);
            assert_eq!(parse_iso8601(&iso), Some(t), "{iso}");
        }
    }

    #[test]
    fn base64_and_uri_encoding() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&sha256(b"")), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_eq!(uri_encode("a-b_c.d~e/f g%", false), "a-b_c.d~e/f%20g%25");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
    }

    #[test]
    fn list_pages_with_entities_and_truncation() {
        let page = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/chunks/0a/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>p/chunks/0a/0a01</Key><LastModified>2013-05-24T00:00:00.000Z</LastModified><ETag>&quot;x&quot;</ETag><Size>4100</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>p/chunks/0a/odd &amp; &lt;name&gt; &#233;&#x4E2D;</Key><LastModified>2013-05-24T00:00:01Z</LastModified><Size>0</Size></Contents>
<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=&amp;</NextContinuationToken></ListBucketResult>"#;
        let p = parse_list(page).unwrap();
        assert_eq!(
            p.objects,
            [
                ListedObject { key: "p/chunks/0a/0a01".into(), size: 4100, last_modified: 1369353600 },
                ListedObject { key: "p/chunks/0a/odd & <name> é中".into(), size: 0, last_modified: 1369353601 },
            ]
        );
        assert_eq!(p.next.as_deref(), Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=&"));
        let last = "<ListBucketResult><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(parse_list(last).unwrap(), ListPage { objects: vec![], next: None });
        for (bad, why) in [
            ("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>", "NextContinuationToken"),
            (
                "<ListBucketResult><Contents><Key>a &bogus; b</Key><Size>1</Size></Contents></ListBucketResult>",
                "entity",
            ),
            ("<ListBucketResult><Contents><Key>a</Key><Size>x</Size></Contents></ListBucketResult>", "Size"),
            ("<ListBucketResult><Contents><Key>a<b/></Key></Contents></ListBucketResult>", "markup"),
            ("<Error><Code>AccessDenied</Code></Error>", "ListBucketResult"),
        ] {
            let e = parse_list(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request\n  signature &amp; more</Message></Error>";
        assert_eq!(parse_error(e), Some(("SignatureDoesNotMatch".into(), "The request signature & more".into())));
        assert_eq!(parse_error("<CopyObjectResult/>"), None);
    }

    /// Answers a connection with nothing: it is held open unanswered.
    const HANG: &str = "hang";

    /// A local HTTP server answering each connection with the next canned
    /// answer (None: closed unanswered; [`HANG`]: held open); counts
    /// connections.
    fn canned(answers: Vec<Option<&'static str>>) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for (answer, conn) in answers.into_iter().zip(listener.incoming()) {
                let mut conn = conn.unwrap();
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // The whole request, body included (unread bytes would reset
                // the connection under the answer).
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                let mut want = usize::MAX;
                while got.len() < want {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                        let len = head.lines().find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok());
                        want = end + 4 + len.unwrap_or(0);
                    }
                }
                match answer {
                    Some(HANG) => held.push(conn),
                    Some(a) => {
                        let _ = conn.write_all(a.as_bytes());
                    }
                    None => {}
                }
            }
            std::thread::sleep(Duration::from_secs(10));
            drop(held);
        });
        (port, count)
    }

    fn local_client(port: u16) -> S3Client {
        let mut c = config(Addressing::Path, Endpoint { https: false, host: "127.0.0.1".into(), port: Some(port) });
        c.region = "garage".into();
        let timing = Timing {
            connect: Duration::from_secs(2),
            request: Duration::from_millis(800),
            attempts: 3,
            backoff: Duration::from_millis(10),
        };
        S3Client::with_timing(c, timing)
    }

    const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 71\r\nconnection: close\r\n\r\n<Error><Code>SlowDown</Code><Message>Please slow down</Message></Error>";
    const OK_BODY: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";

    #[test]
    fn retries_5xx_and_lost_connections_then_gives_up() {
        assert_eq!(UNAVAILABLE.split("\r\n\r\n").nth(1).unwrap().len(), 71);
        let (port, count) = canned(vec![Some(UNAVAILABLE), None, Some(OK_BODY)]);
        let body = local_client(port).get_object("k", 100).unwrap();
        assert_eq!((body.as_deref(), count.load(std::sync::atomic::Ordering::SeqCst)), (Some(&b"hello"[..]), 3));

        let (port, count) = canned(vec![Some(UNAVAILABLE); 3]);
        let e = local_client(port).put_object("bv/chunks/ab/abcd", b"x").unwrap_err().to_string();
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(
            e.contains("S3 PutObject s3://examplebucket/bv/chunks/ab/abcd at http://127.0.0.1:")
                && e.contains("503 SlowDown: Please slow down"),
            "{e}"
        );
        assert!(!e.contains('\n'));

        // A 4xx is final at once.
        let forbidden = "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let (port, count) = canned(vec![Some(forbidden), Some(OK_BODY)]);
        let e = local_client(port).head_object("k").unwrap_err().to_string();
        assert!(e.contains("403 Forbidden"), "{e}");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Connections closed, then held unanswered: tried 3 times, each
        // attempt ended by its timeout.
        let (port, _) = canned(vec![None; 3]);
        let e = local_client(port).delete_object("k").unwrap_err().to_string();
        assert!(e.contains("no answer after 3 attempts"), "{e}");
        let (port, count) = canned(vec![Some(HANG); 3]);
        let started = std::time::Instant::now();
        let e = local_client(port).delete_object("k").unwrap_err().to_string();
        assert!(e.contains("no answer after 3 attempts") && e.contains("timeout"), "{e}");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn get_refuses_over_the_limit_before_reading() {
        let big = "HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\nconnection: close\r\n\r\nabc";
        let (port, count) = canned(vec![Some(big), Some(big)]);
        let e = local_client(port).get_object("k", 10).unwrap_err();
        assert!(matches!(e.kind, S3ErrorKind::TooLarge { len: Some(1000000), limit: 10 }), "{e}");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1, "not retried");
        let (port, _) = canned(vec![Some(OK_BODY)]);
        assert!(matches!(local_client(port).get_object("k", 4).unwrap_err().kind, S3ErrorKind::TooLarge { .. }));
    }
}
