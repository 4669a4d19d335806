//! The accept loop: TCP connections to HTTP/1.1 (hyper) to the axum
//! router, under the server's [`Limits`]: how long a request's head may
//! take (which also bounds idle keep-alive connections), how long a body
//! may go without data, how long a peer may leave our answer unread, and
//! how many connections are open at once, in all and per peer address.
//!
//! With TLS on, a connection's first byte says what it is: a TLS
//! handshake is served as HTTPS; anything else is served as plain HTTP
//! with [`Insecure`] on its requests, which the API refuses to take a
//! token on (network-boot files stay reachable for iPXE).
//!
//! A connection over a cap is answered `503` by this loop itself (a
//! fixed, minimal answer, no hyper) and closed; the loop never waits on a
//! peer. [`read_body`] is the handlers' way to read a body under a size
//! limit. This module owns the sockets; what requests mean is lib.rs's.
//! docs/PROTOCOL.md "Server limits" lists what a client sees.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bootvault_common::units::human_bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// The peer's IP address, set by the accept loop on every request (a copy
/// sent by the client is removed first), so code that sees only the
/// headers (authentication, on the blocking pool) can name the peer.
pub const PEER_HEADER: &str = "x-bootvault-peer";

/// Every timeout and cap of the HTTP side, set by `bootvault serve` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request's line and headers must arrive within this, counted from
    /// the connection's start or the end of the previous answer; so it is
    /// also how long an idle keep-alive connection stays open. Longer than
    /// the engine's idle keep-alive age (engine/src/http.rs: 15 s), so the PC always
    /// drops an idle connection before the server does and never sends a
    /// request on a connection the server is closing.
    pub header_timeout: Duration,
    /// A request body that is being read gets no data for this long: the
    /// request is answered 408 and the connection closed.
    pub body_idle: Duration,
    /// Our answer makes no progress into the socket for this long (the
    /// peer stopped reading): the connection is closed. Generous, since a
    /// restoring PC may pause reading while its disk catches up.
    pub write_stall: Duration,
    /// Connections open at once, in all; lowered at start to what the
    /// file descriptor limit allows (see [`fd_budget`]).
    pub max_connections: usize,
    /// Connections open at once from one IP address. A PC's engine uses
    /// up to 8 worker connections plus one; 64 lets a handful of PCs share
    /// an address (NAT) at full speed, and keeps one address from taking
    /// more than an eighth of `max_connections`.
    pub max_per_address: usize,
}

impl Limits {
    /// The defaults, as a constant for flag definitions.
    pub const DEFAULT: Limits = Limits {
        header_timeout: Duration::from_secs(20),
        body_idle: Duration::from_secs(30),
        write_stall: Duration::from_secs(60),
        max_connections: 512,
        max_per_address: 64,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// File descriptors kept free of connections: the database, events.log,
/// chunk and temporary files the blocking pool opens, and the sockets
/// being refused.
const RESERVED_FDS: u64 = 256;

/// Refused connections lingering at once (answer sent, the peer's request
/// drained so the close does not reset the answer away); past this they
/// are closed at once.
const MAX_LINGERING: usize = 64;
/// How long a refused connection lingers at most.
const LINGER: Duration = Duration::from_secs(1);

/// Raises the soft RLIMIT_NOFILE to the hard limit; the soft limit in
/// effect afterwards (None: not known).
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// How many connections `fd_limit` descriptors carry: each connection
/// may hold a file besides its socket while its request runs, and
/// [`RESERVED_FDS`] stay free.
pub fn fd_budget(fd_limit: u64) -> usize {
    usize::try_from(fd_limit.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX)
}

/// Why a connection was not taken; the text is the 503's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Full {
    Server { max: usize },
    Address { max: usize },
}

impl Full {
    pub fn reason(&self) -> String {
        match self {
            Full::Server { max } => {
                format!("the server has {max} connections open, its limit; retry in a few seconds")
            }
            Full::Address { max } => format!(
                "this address has {max} connections open to the server, the limit per address \
                 (bootvault serve --max-connections-per-address); retry in a few seconds"
            ),
        }
    }

    /// The refusal's kind in events.log.
    pub fn kind(&self) -> &'static str {
        match self {
            Full::Server { .. } => "server-full",
            Full::Address { .. } => "address-full",
        }
    }
}

/// Open connections, in all and per address.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    max_per_address: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place in [`Slots`], given back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
}

impl Slots {
    pub fn new(max: usize, max_per_address: usize) -> Arc<Slots> {
        Arc::new(Slots { max, max_per_address, open: Mutex::new((0, HashMap::new())) })
    }

    /// A place for a connection from `peer`, or which cap it is over.
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Full> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.max {
            return Err(Full::Server { max: self.max });
        }
        let of_peer = open.1.entry(peer).or_insert(0);
        if *of_peer >= self.max_per_address {
            return Err(Full::Address { max: self.max_per_address });
        }
        *of_peer += 1;
        open.0 += 1;
        Ok(Slot { slots: self.clone(), peer })
    }

    /// Connections open (in all, from `peer`).
    pub fn open(&self, peer: IpAddr) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        (open.0, open.1.get(&peer).copied().unwrap_or(0))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                // The map holds only peers with open connections.
                open.1.remove(&self.peer);
            }
        }
    }
}

/// Marks a request that came over plain HTTP to a server that speaks
/// TLS: nothing secret may be taken from it.
#[derive(Debug, Clone, Copy)]
pub struct Insecure;

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// requests under way finish. `on_refusal(peer, kind, reason)` hears of
/// every connection refused over a cap. With `tls`, connections that
/// start a TLS handshake are served over it (see the module's docs).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    on_refusal: impl Fn(IpAddr, &'static str, String) + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Slots::new(limits.max_connections, limits.max_per_address);
    let lingering = Arc::new(AtomicUsize::new(0));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let mut last_accept_error: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory, or the peer gave up
                    // before we took it: pause briefly rather than spin.
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        eprintln!("accepting a connection: {e} (pausing 50 ms; reported once a minute)");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match slots.take(peer.ip()) {
            Ok(s) => s,
            Err(full) => {
                let reason = full.reason();
                refuse(stream, &reason, &lingering);
                on_refusal(peer.ip(), full.kind(), reason);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let body_idle = limits.body_idle;
        let (http, tls, watcher) = (http.clone(), tls.clone(), graceful.watcher());
        let (write_stall, handshake) = (limits.write_stall, limits.header_timeout);
        tokio::spawn(async move {
            let service = move |insecure: bool| {
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mut router = router.clone();
                    let req = prepare(req, peer, body_idle, insecure);
                    async move { tower_service::Service::call(&mut router, req).await }
                })
            };
            // Timeouts, resets and failed handshakes end here; nothing to tell anyone.
            match tls {
                Some(acceptor) if starts_tls(&stream, handshake).await => {
                    // rustls reads 4 KiB at a time: a buffer under it makes
                    // that one system call per 64 KiB of an upload.
                    let buffered = tokio::io::BufReader::with_capacity(64 << 10, StallGuard::new(stream, write_stall));
                    let accept = acceptor.accept(buffered);
                    if let Ok(Ok(stream)) = tokio::time::timeout(handshake, accept).await {
                        let io = TokioIo::new(stream);
                        let _ = watcher.watch(http.serve_connection(io, service(false))).await;
                    }
                }
                tls => {
                    let io = TokioIo::new(StallGuard::new(stream, write_stall));
                    let _ = watcher.watch(http.serve_connection(io, service(tls.is_some()))).await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Whether a connection starts with a TLS handshake record (0x16), read
/// without taking it; false if nothing comes within `wait`.
async fn starts_tls(stream: &TcpStream, wait: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(tokio::time::timeout(wait, stream.peek(&mut first)).await, Ok(Ok(1))) && first[0] == 0x16
}

/// What every request carries into the router: the peer as
/// `ConnectInfo` and [`PEER_HEADER`], [`Insecure`] when it came over
/// plain HTTP to a TLS server, and a body that fails after `body_idle`
/// without data.
fn prepare(req: Request<Incoming>, peer: SocketAddr, body_idle: Duration, insecure: bool) -> Request<Body> {
    let mut req = req.map(|b| Body::new(IdleBody::new(b, body_idle)));
    req.extensions_mut().insert(ConnectInfo(peer));
    if insecure {
        req.extensions_mut().insert(Insecure);
    }
    let headers = req.headers_mut();
    headers.remove(PEER_HEADER);
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert(PEER_HEADER, v);
    }
    req
}

/// The whole answer to a connection over a cap.
fn refusal_answer(reason: &str) -> String {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
         retry-after: 5\r\nconnection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    )
}

/// Answers 503 without waiting: the answer fits a fresh socket's send
/// buffer. The socket then lingers a moment (bounded in time and number),
/// reading what the peer sent, so that closing it does not reset the
/// answer away before the peer reads it.
fn refuse(stream: TcpStream, reason: &str, lingering: &Arc<AtomicUsize>) {
    use std::io::Write;
    // A direct write: tokio's `try_write` would wait for a readiness event
    // a socket this fresh has not had yet.
    let Ok(mut std_stream) = stream.into_std() else { return };
    if std_stream.write(refusal_answer(reason).as_bytes()).is_err() {
        return;
    }
    if lingering.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
        lingering.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let Ok(mut stream) = TcpStream::from_std(std_stream) else {
        lingering.fetch_sub(1, Ordering::Relaxed);
        return;
    };
    let lingering = lingering.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER, async {
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut drained = 0;
            while drained < 64 << 10 {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            io::Result::Ok(())
        })
        .await;
        lingering.fetch_sub(1, Ordering::Relaxed);
    });
}

/// A limit on how long an operation may stay pending without progress:
/// the timer runs only while it is pending and restarts after progress.
struct StallTimer {
    limit: Duration,
    running: Option<Pin<Box<Sleep>>>,
}

impl StallTimer {
    fn new(limit: Duration) -> StallTimer {
        StallTimer { limit, running: None }
    }

    /// After polling the operation: `pending` says whether it made no
    /// progress. True once it has made none for the limit (the waker is
    /// registered until then).
    fn expired(&mut self, cx: &mut Context<'_>, pending: bool) -> bool {
        if !pending {
            self.running = None;
            return false;
        }
        let limit = self.limit;
        self.running.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit))).as_mut().poll(cx).is_ready()
    }
}

/// A stream whose writes fail with `TimedOut` once a write has made no
/// progress for `limit`: a peer that stops reading our answer does not
/// hold the connection (and a buffer of our answer) forever.
pub struct StallGuard<S> {
    inner: S,
    /// Runs while writes are blocked.
    stalled: StallTimer,
}

impl<S> StallGuard<S> {
    pub fn new(inner: S, limit: Duration) -> StallGuard<S> {
        StallGuard { inner, stalled: StallTimer::new(limit) }
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if !self.stalled.expired(cx, r.is_pending()) {
            return r;
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer read nothing of the answer for {} s", self.stalled.limit.as_secs()),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, r)
    }
}

/// The error of a body that got no data for its idle limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyIdle(pub Duration);

impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no request data for {} s", self.0.as_secs_f32())
    }
}

impl std::error::Error for BodyIdle {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that fails with [`BodyIdle`] when it is being read and
/// no data arrives for `idle`. Every request gets one, so a handler that
/// reads its body by any means (extractor, stream, [`read_body`]) cannot
/// be held by a peer dripping a byte a minute.
pub struct IdleBody<B> {
    inner: B,
    /// Runs while no frame comes.
    waiting: StallTimer,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> IdleBody<B> {
        IdleBody { inner, waiting: StallTimer::new(idle) }
    }
}

impl<B> HttpBody for IdleBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if this.waiting.expired(cx, r.is_pending()) {
            return Poll::Ready(Some(Err(Box::new(BodyIdle(this.waiting.limit)))));
        }
        r.map(|f| f.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request body was not read; as a response, the answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than `limit` bytes (as declared in Content-Length, or as
    /// read).
    TooLarge { limit: usize },
    /// No data came for `idle`.
    Idle { idle: Duration },
    /// The body broke off (the peer closed, bad chunked encoding).
    Broken { cause: String },
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge { limit } => {
                write!(f, "the request body is larger than this request's limit of {}", human_bytes(*limit as u64))
            }
            BodyError::Idle { idle } => {
                write!(f, "no request data for {} s: the server stopped waiting for the body", idle.as_secs_f32())
            }
            BodyError::Broken { cause } => write!(f, "the request body broke off: {cause}"),
        }
    }
}

impl std::error::Error for BodyError {}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Idle { .. } => StatusCode::REQUEST_TIMEOUT,
            BodyError::Broken { .. } => StatusCode::BAD_REQUEST,
        }
    }

    fn of(e: axum::Error) -> BodyError {
        let inner = e.into_inner();
        match inner.downcast_ref::<BodyIdle>() {
            Some(BodyIdle(idle)) => BodyError::Idle { idle: *idle },
            None => BodyError::Broken { cause: inner.to_string() },
        }
    }
}

impl IntoResponse for BodyError {
    /// One line for the PC's console; the rest of the body is not read,
    /// so the connection closes after the answer.
    fn into_response(self) -> Response {
        (self.status(), [(header::CONNECTION, "close")], format!("{self}\n")).into_response()
    }
}

/// Reads a whole request body of at most `limit` bytes: refused at once
/// when its Content-Length says more, or as soon as more arrives. A body
/// that stops sending fails by its [`IdleBody`] (every request's, see
/// `prepare`), which comes out as [`BodyError::Idle`].
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    use futures_util::StreamExt;
    let declared = body.size_hint().lower();
    if declared > limit as u64 {
        return Err(BodyError::TooLarge { limit });
    }
    let mut stream = body.into_data_stream();
    // One piece is passed on as is; more are copied into one buffer.
    let mut first: Option<Bytes> = None;
    let mut all: Vec<u8> = Vec::new();
    loop {
        let piece = match stream.next().await {
            None => break,
            Some(Err(e)) => return Err(BodyError::of(e)),
            Some(Ok(b)) => b,
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + all.len();
        if so_far + piece.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        match first.take() {
            None if all.is_empty() => first = Some(piece),
            None => all.extend_from_slice(&piece),
            Some(f) => {
                all.reserve(usize::try_from(declared).unwrap_or(0).max(f.len() + piece.len()));
                all.extend_from_slice(&f);
                all.extend_from_slice(&piece);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(all)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body declaring `declared` bytes, giving `pieces` with `gap` between them.
    fn dripping(pieces: Vec<&'static [u8]>, gap: Duration, declared: Option<u64>) -> Body {
        struct Drip {
            pieces: std::collections::VecDeque<&'static [u8]>,
            gap: Duration,
            next: Option<Pin<Box<Sleep>>>,
            declared: Option<u64>,
        }
        impl HttpBody for Drip {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
                let this = self.get_mut();
                let gap = this.gap;
                let timer = this.next.get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.next = None;
                Poll::Ready(this.pieces.pop_front().map(|p| Ok(http_body::Frame::data(Bytes::from_static(p)))))
            }
            fn size_hint(&self) -> http_body::SizeHint {
                self.declared.map(http_body::SizeHint::with_exact).unwrap_or_default()
            }
        }
        Body::new(Drip { pieces: pieces.into(), gap, next: None, declared })
    }

    const MS: Duration = Duration::from_millis(1);

    /// `body` as the router hands it over: with the connection's idle limit.
    fn idle_after(body: Body, idle: Duration) -> Body {
        Body::new(IdleBody::new(body, idle))
    }

    #[tokio::test]
    async fn read_body_limits() {
        // Whole bodies, in one piece or several.
        let b = read_body(idle_after(dripping(vec![b"abc"], MS, Some(3)), 100 * MS), 3).await;
        assert_eq!(b.as_deref(), Ok(&b"abc"[..]));
        let b = read_body(idle_after(dripping(vec![b"ab", b"c", b"de"], MS, None), 100 * MS), 5).await;
        assert_eq!(b.as_deref(), Ok(&b"abcde"[..]));
        assert_eq!(read_body(Body::empty(), 0).await.as_deref(), Ok(&b""[..]));
        // Too large: declared (refused before any data, which would take
        // an hour), or as read.
        let t = Instant::now();
        let b = read_body(idle_after(dripping(vec![b"abcd"], Duration::from_secs(3600), Some(4)), 100 * MS), 3).await;
        assert_eq!(b, Err(BodyError::TooLarge { limit: 3 }));
        assert!(t.elapsed() < Duration::from_secs(1));
        let b = read_body(idle_after(dripping(vec![b"ab", b"cd"], MS, None), 100 * MS), 3).await;
        assert_eq!(b, Err(BodyError::TooLarge { limit: 3 }));
        // Dripping slower than the idle limit.
        let b = read_body(idle_after(dripping(vec![b"ab", b"cd"], 300 * MS, None), 100 * MS), 10).await;
        assert_eq!(b, Err(BodyError::Idle { idle: 100 * MS }));
        // The connection's own idle limit (IdleBody) is a 408 too.
        let idle = idle_after(dripping(vec![b"ab"], 300 * MS, None), 50 * MS);
        assert_eq!(read_body(idle, 10).await, Err(BodyError::Idle { idle: 50 * MS }));
        // A broken body.
        let broken = Body::from_stream(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(io::Error::other("peer closed")),
        ]));
        let e = read_body(idle_after(broken, 100 * MS), 10).await.expect_err("broken");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("peer closed"), "{e}");
        assert_eq!(BodyError::TooLarge { limit: 1 }.into_response().status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(BodyError::Idle { idle: MS }.into_response().status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[test]
    fn slots_cap_in_all_and_per_address() {
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let slots = Slots::new(3, 2);
        let a1 = slots.take(a).expect("a1");
        let a2 = slots.take(a).expect("a2");
        assert_eq!(slots.take(a).map(|_| ()), Err(Full::Address { max: 2 }));
        let b1 = slots.take(b).expect("b1");
        assert_eq!(slots.take(b).map(|_| ()), Err(Full::Server { max: 3 }));
        drop(a1);
        assert_eq!(slots.open(a), (2, 1));
        let b2 = slots.take(b).expect("b2 after a1 closed");
        drop((a2, b1, b2));
        assert_eq!(slots.open(a), (0, 0));
        assert!(slots.open.lock().expect("lock").1.is_empty(), "closed peers leave the map");
    }

    #[test]
    fn fd_budget_and_answer() {
        assert_eq!(fd_budget(1024), 384);
        assert_eq!(fd_budget(100), 0);
        let a = refusal_answer("full");
        assert!(a.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && a.ends_with("\r\n\r\nfull\n"), "{a}");
        assert!(a.contains("content-length: 5\r\n"));
    }

    #[tokio::test]
    async fn stall_guard_times_out_a_peer_that_does_not_read() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let mut w = StallGuard::new(ours, 200 * MS);
        let t = Instant::now();
        let e = w.write_all(&[0u8; 8192]).await.expect_err("the peer never reads");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= 200 * MS && t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        drop(theirs);
        // A slow reader that keeps making progress is never cut.
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut w = StallGuard::new(ours, 200 * MS);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 1024];
            while got < 8192 {
                tokio::time::sleep(100 * MS).await;
                got += theirs.read(&mut buf).await.expect("read");
            }
        });
        w.write_all(&[0u8; 8192]).await.expect("slow but steady");
        reader.await.expect("reader");
    }
}
