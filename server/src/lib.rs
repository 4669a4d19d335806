//! The bootvault server.
//!
//! Owns the data directory: for now `events.log`, one line per PC contact
//! (`unix-time event pc=NAME mac=MAC addr=ADDR peer=IP:PORT`), which is what
//! tests and admins read to see which PC called. Image storage and the
//! management database arrive with the backup engine.
//!
//! The server binds exactly the address it is given (tests use
//! 127.0.0.1:0 and read the chosen port from the first line it prints).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use bootvault_common::wire;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

pub struct Options {
    pub listen: SocketAddr,
    pub data: PathBuf,
}

struct Shared {
    events: Mutex<tokio::fs::File>,
}

/// Starts the server and runs until Ctrl-C / SIGTERM.
pub fn serve(opts: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(run(opts))
}

async fn run(opts: Options) -> anyhow::Result<()> {
    tokio::fs::create_dir_all(&opts.data)
        .await
        .with_context(|| format!("creating data directory {}", opts.data.display()))?;
    let events_path = opts.data.join("events.log");
    let events = open_append(&events_path).await?;
    let shared = Arc::new(Shared { events: Mutex::new(events) });
    let listener =
        tokio::net::TcpListener::bind(opts.listen).await.with_context(|| format!("binding {}", opts.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    // Tests and the Makefile parse this line for the port.
    println!("bootvault server listening on http://{local} (data {})", opts.data.display());
    let app = router(shared);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    println!("bootvault server stopped");
    Ok(())
}

async fn open_append(path: &Path) -> anyhow::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new().route(wire::HELLO, get(hello)).with_state(shared)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
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

/// A header value fit for a one-line log: printable ASCII without spaces.
fn header(headers: &HeaderMap, name: &str) -> String {
    let v = headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
    let clean: String = v.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    if clean.is_empty() {
        "-".into()
    } else {
        clean
    }
}

async fn hello(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let pc = header(&headers, wire::PC_HEADER);
    let mac = header(&headers, wire::MAC_HEADER);
    let addr = header(&headers, wire::ADDR_HEADER);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let line = format!("{now} hello pc={pc} mac={mac} addr={addr} peer={peer}\n");
    print!("{line}");
    let mut f = shared.events.lock().await;
    if let Err(e) = async {
        f.write_all(line.as_bytes()).await?;
        f.sync_data().await
    }
    .await
    {
        eprintln!("writing events.log: {e}");
        return (StatusCode::INTERNAL_SERVER_ERROR, "event log write failed\n".into());
    }
    (StatusCode::OK, format!("{} {}: hello {pc}, seen at {addr}\n", wire::HELLO_PREFIX, env!("CARGO_PKG_VERSION")))
}
