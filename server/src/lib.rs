//! The bootvault server: docs/PROTOCOL.md over HTTP, by responsibility.
//!
//! * [`api`] — the HTTP handlers, by resource, and the one place the
//!   caller is authenticated;
//! * [`vault`] — the coordinator the handlers and the admin CLI call:
//!   the rules of backups, grants, jobs and gc;
//! * [`db`] — the management database behind a trait (SQLite, or
//!   PostgreSQL shared by several servers);
//! * [`blobs`] — the chunk and manifest store behind a trait: files, or
//!   S3-compatible object storage ([`blobs_s3`] over the client in [`s3`]);
//! * [`unlock`] — restore passwords: challenges, tickets, waits;
//! * [`netboot`] — published boot files and iPXE scripts;
//! * [`listener`] — the accept loop, TLS, timeouts and connection caps;
//! * [`tls`] — the server's certificate, made on first start;
//! * [`web`] — the admin's web console (`/admin/`) and live progress;
//!   [`refusals`] — keeping unauthenticated floods out of the log.
//!
//! Blocking work (SQLite, fsync, inflating and hashing chunks) runs on
//! tokio's blocking pool. The server binds exactly the address it is
//! given (tests use 127.0.0.1:0 and read the chosen port from the first
//! line printed).
//!
//! Password-protected backups: a PC reads a locked backup's manifest and
//! chunks only with a ticket from `POST backups/ID/unlock` (or one handed
//! out with a restore job the admin unlocked); the admin token needs none,
//! since the admin owns the store the images sit in.

// Handlers return `Result<_, Response>`: the error is the HTTP answer itself,
// built once where the failure is understood; its size does not matter here.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod blobs;
pub mod blobs_s3;
pub mod db;
mod durable;
pub mod listener;
pub mod netboot;
mod refusals;
pub mod s3;
mod secrets;
pub mod storage;
/// Services the tests and benches start on 127.0.0.1.
pub mod testenv;
pub mod testenv_s3;
pub mod tls;
pub mod unlock;
pub mod vault;
pub mod web;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use vault::Vault;

pub struct Options {
    pub listen: SocketAddr,
    pub data: PathBuf,
    /// Timeouts and connection caps (docs/PROTOCOL.md "Server limits").
    pub limits: listener::Limits,
    /// HTTPS (the default) or plain HTTP.
    pub tls: tls::Mode,
    /// Makes a PC's boot media for the web console (`bootvault serve`
    /// passes the builder's; without it the console offers none).
    pub media: Option<web::MediaMaker>,
    /// Told the bound address once the server accepts connections (tests
    /// starting a server in-process).
    pub ready: Option<std::sync::mpsc::Sender<SocketAddr>>,
}

/// Starts a plain-HTTP server on a free port of 127.0.0.1 in a background
/// thread and returns the port once it accepts connections (tests and
/// benchmarks of everything but the transport).
pub fn spawn_on_loopback(data: &std::path::Path, limits: listener::Limits) -> anyhow::Result<u16> {
    spawn_on_loopback_with(data, limits, tls::Mode::Plain)
}

/// [`spawn_on_loopback`] with the transport `tls`; an HTTPS server's
/// fingerprint is then in [`tls::fingerprint_in`] (for [`tls::Mode::Made`]).
pub fn spawn_on_loopback_with(data: &std::path::Path, limits: listener::Limits, tls: tls::Mode) -> anyhow::Result<u16> {
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("finding a free port")?.port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = Options { listen, data: data.to_owned(), limits, tls, media: None, ready: Some(tx) };
    // The server says when it is up: a connection probe could "succeed"
    // before it binds (a TCP self-connect to the free port), and a test
    // would then read its data directory before the server made it.
    let server = std::thread::spawn(move || serve(opts));
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(_) => Ok(port),
        // The server ended (its sender with it) before it was up.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match server.join() {
            Ok(Err(e)) => Err(e.context(format!("starting the server on {listen}"))),
            _ => anyhow::bail!("the server on {listen} stopped before it started"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            anyhow::bail!("the server on {listen} did not start within 20 s")
        }
    }
}

/// Starts the server and runs until Ctrl-C / SIGTERM.
pub fn serve(opts: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(run(opts))
}

async fn run(opts: Options) -> anyhow::Result<()> {
    // Off the async workers, as every database call: PostgreSQL's client
    // blocks on a runtime of its own.
    let data = opts.data.clone();
    let (vault, unfinished) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vault, usize)> {
        let vault = Vault::open(&data)?;
        let unfinished = vault.list_backups(None, true)?.iter().filter(|b| b.state == "uploading").count();
        Ok((vault, unfinished))
    })
    .await
    .context("opening the data directory")??;
    let events_path = opts.data.join("events.log");
    let events = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&events_path)
        .with_context(|| format!("opening {}", events_path.display()))?;
    let mut limits = opts.limits;
    let fds = listener::raise_fd_limit();
    let fd_capped = fds.filter(|f| limits.max_connections > listener::fd_budget(*f).max(8));
    if let Some(f) = fd_capped {
        limits.max_connections = listener::fd_budget(f).max(8);
    }
    let names = [opts.listen.ip().to_string()];
    let tls = tls::setup(&opts.data, &opts.tls, &names)?;
    let mut app = api::App::new(vault, events, tls.is_some())?;
    app.media = opts.media.clone();
    let app = Arc::new(app);
    let listener =
        tokio::net::TcpListener::bind(opts.listen).await.with_context(|| format!("binding {}", opts.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    if let Some(ready) = &opts.ready {
        let _ = ready.send(local);
    }
    // Tests and the Makefile parse these lines for the port and the fingerprint.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("bootvault server listening on {scheme}://{local} (data {})", opts.data.display());
    match &tls {
        Some(t) => {
            let made = if t.made { ", made now" } else { "" };
            println!("certificate fingerprint {} ({}{made})", t.fingerprint, t.cert.display());
            println!("plain http on this port serves network-boot files only; tokens are refused on it");
        }
        None => println!("plain http only (--plain-http): PC tokens and restore keys cross the network in clear"),
    }
    println!("admin token in {} (PCs authenticate with their own tokens)", app.vault.admin_token_path().display());
    if unfinished > 0 {
        println!("{unfinished} backups were left uploading (never complete; `bootvault gc` clears them)");
    }
    if let Some(f) = fd_capped {
        println!(
            "at most {} connections (not {}): the open-file limit is {f}",
            limits.max_connections, opts.limits.max_connections
        );
    }
    // Refusal summaries are written when their minute ends, also when
    // the flood has stopped.
    let flusher = app.clone();
    let summaries = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            flusher.flush_refusals();
        }
    });
    let refusing = app.clone();
    let on_refusal = move |peer: IpAddr, kind: &'static str, reason: String| {
        refusing.aggregated(peer, refusals::Kind::new("conn-refused", kind), || {
            format!("conn-refused peer={peer} reason={reason:?}")
        });
    };
    let tls = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config));
    listener::serve(listener, api::router(app.clone()), limits, tls, on_refusal, shutdown_signal()).await;
    summaries.abort();
    println!("bootvault server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
