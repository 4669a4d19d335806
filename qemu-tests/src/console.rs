//! The web console over HTTPS as a script sees it (the benches, and the
//! tests that download what a browser would): signing in for a session
//! cookie and GET requests with it, over rustls taking the server's own
//! certificate ([`crate::mitm::trust_anything`]; 127.0.0.1 only).

use std::io::{Read, Write};
use std::net::TcpStream;

use rustls::pki_types::ServerName;

use crate::{mitm, Result};

pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the server on 127.0.0.1:`port`.
pub fn connect(port: u16) -> Result<Tls> {
    let name = ServerName::try_from("bootvault").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(mitm::trust_anything()?, name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// One request (`Connection: close`); (status, head, body).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String, Vec<u8>)> {
    let mut s = connect(port)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).and_then(|()| s.write_all(body)).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    // A peer closing without close_notify ends the body all the same.
    let _ = s.read_to_end(&mut answer);
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no answer head")?;
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let status = head.get(9..12).and_then(|c| c.parse().ok()).ok_or("no status")?;
    Ok((status, head, answer[end + 4..].to_vec()))
}

/// A header of an answer's head.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// Signs in; the session cookie (`bv_session=...`).
pub fn sign_in(port: u16, name: &str, password: &str) -> Result<String> {
    let form: String = form_pair("name", name) + "&" + &form_pair("password", password);
    let (status, head, _) = request(
        port,
        "POST",
        "/admin/sign-in",
        &[("content-type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )?;
    header(&head, "set-cookie")
        .and_then(|c| c.split(';').next().map(str::to_owned))
        .ok_or_else(|| format!("sign-in answered {status} without a session"))
}

fn form_pair(k: &str, v: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect::<String>()
    };
    format!("{}={}", enc(k), enc(v))
}
