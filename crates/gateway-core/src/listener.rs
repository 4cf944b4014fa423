//! The listener: accepting connections, TLS, and the bounds every connection lives under, built on
//! hyper's HTTP/1.1 and HTTP/2 servers as Envoy's edge-hardening guide asks.
//!
//! - A request head must arrive within `server.header_read_timeout_ms` (slow-header attacks) and
//!   fit in `server.max_header_bytes` and `server.max_headers` (431 beyond). A new connection
//!   must show within that time which protocol it speaks (HTTP/2's preface, or anything else for
//!   HTTP/1.1); one that sends nothing is closed, not left holding its place. A connection
//!   with no request open is closed after that time too: HTTP/1.1's while it waits for the
//!   next request's head, HTTP/2's (with a GOAWAY) between one and two such times after its last
//!   answer.
//! - A write to a client may wait at most `server.send_timeout_ms` for the client to take any of
//!   it (slow-read attacks); the connection is closed after it. An HTTP/2 answer may wait that
//!   long for the client to open its flow-control window; that stream alone is reset after it.
//! - At most `server.max_connections` connections are served at once; further ones wait in the
//!   kernel's backlog instead of costing memory.
//! - A connection may carry at most `server.max_requests_per_connection` requests and stay open
//!   at most `server.max_connection_age_ms` (both off by default), so that long-lived clients
//!   spread again over the instances behind a load balancer after a scale-out.
//! - HTTP/2: `server.http2_max_concurrent_streams` per connection, a bounded header list, and
//!   hyper's caps on streams a client resets before they are answered (the "rapid reset" attack,
//!   CVE-2023-44487) and on streams it makes the server reset.
//! - TLS through rustls with the aws-lc-rs provider, HTTP/2 by ALPN, optionally verifying client
//!   certificates; a handshake must finish within the header timeout too.
//!
//! Graceful shutdown: stop accepting, let each connection finish its in-flight requests, close
//! what is left after the grace period.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::DerefMut;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower::util::Oneshot;

use crate::app::App;
use crate::config::{ConfigError, ServerConfig, TlsConfig};
use crate::stall::Stall;

/// HTTP/2 streams a client may reset before the server answered them, pending at once.
const MAX_PENDING_RESETS: usize = 20;
/// HTTP/2 streams a client may cause the server to reset, per connection.
const MAX_LOCAL_RESETS: usize = 1024;

/// How connections are accepted and bounded. Built once from `[server]`.
#[derive(Clone)]
pub struct Connections {
    /// After shutdown begins, how long in-flight requests get.
    pub grace: Duration,
    header_read_timeout: Duration,
    send_timeout: Duration,
    max_header_bytes: usize,
    max_headers: usize,
    max_connections: usize,
    http2_max_streams: u32,
    /// Requests a connection may carry; `u64::MAX` for no cap.
    max_requests: u64,
    /// How long a connection may stay open, at most.
    max_age: Option<Duration>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// The bounds of `[server]`, with its certificate and keys loaded.
    pub fn from_config(cfg: &ServerConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            grace: Duration::from_millis(cfg.shutdown_grace_ms),
            header_read_timeout: Duration::from_millis(cfg.header_read_timeout_ms),
            send_timeout: Duration::from_millis(cfg.send_timeout_ms),
            max_header_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers,
            max_connections: cfg.max_connections,
            http2_max_streams: cfg.http2_max_concurrent_streams,
            max_requests: match cfg.max_requests_per_connection {
                0 => u64::MAX,
                n => n,
            },
            max_age: (cfg.max_connection_age_ms > 0)
                .then(|| Duration::from_millis(cfg.max_connection_age_ms)),
            tls: cfg.tls.as_ref().map(acceptor).transpose()?,
        })
    }

    /// The defaults, plain HTTP, with a grace period (internal servers, tests).
    pub fn plain(grace: Duration) -> Self {
        let mut defaults = Self::from_config(&ServerConfig::default())
            .unwrap_or_else(|_| unreachable!("the defaults have no TLS files"));
        defaults.grace = grace;
        defaults
    }

    fn protocols(&self) -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.max_header_bytes)
            .max_headers(self.max_headers);
        let mut http2 = http2::Builder::new(StreamExec {
            send_timeout: self.send_timeout,
        });
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.http2_max_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .max_local_error_reset_streams(MAX_LOCAL_RESETS)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        Protocols {
            http1,
            http2,
            opening: self.header_read_timeout,
            send_timeout: self.send_timeout,
            max_requests: self.max_requests,
            max_age: self.max_age,
            grace: self.grace,
        }
    }
}

/// The HTTP/1.1 and HTTP/2 servers' settings, shared by every connection.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<StreamExec>,
    /// How long a new connection (and a TLS handshake) may take to show which protocol it speaks.
    opening: Duration,
    /// How long a write may wait for the client to take any of it.
    send_timeout: Duration,
    /// Requests a connection may carry; `u64::MAX` for no cap.
    max_requests: u64,
    /// How long a connection may stay open, at most.
    max_age: Option<Duration>,
    /// How long the requests in flight on a connection past its age get to finish.
    grace: Duration,
}

impl Protocols {
    /// Resolves when a connection opened now has lived its age: a time drawn between 90% and
    /// 100% of `server.max_connection_age_ms`, as gRPC's `MAX_CONNECTION_AGE` jitters it, so
    /// that the connections a client pool opened together are not all closed together. Never
    /// without an age.
    fn aged(&self) -> impl Future<Output = ()> + use<> {
        let age = self
            .max_age
            .map(|age| age.mul_f64(rand::random_range(0.9..=1.0)));
        async move {
            match age {
                Some(age) => {
                    tokio::time::sleep(age).await;
                    retired("age");
                }
                None => std::future::pending().await,
            }
        }
    }
}

/// A TLS acceptor for `[server.tls]`: rustls on aws-lc-rs, TLS 1.2 and 1.3, ALPN `h2` then
/// `http/1.1`.
fn acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, ConfigError> {
    let bad = |key: &str, e: &dyn std::fmt::Display| ConfigError(format!("server.tls.{key}: {e}"));
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| bad("cert_file", &e))?;
    if certs.is_empty() {
        return Err(bad("cert_file", &"holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| bad("key_file", &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("cert_file", &e))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(file) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(file).map_err(|e| bad("client_ca_file", &e))? {
                roots
                    .add(ca.map_err(|e| bad("client_ca_file", &e))?)
                    .map_err(|e| bad("client_ca_file", &e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.client_cert_required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder
                .with_client_cert_verifier(verifier.build().map_err(|e| bad("client_ca_file", &e))?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("key_file", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown` resolves; then calls `on_drain`, stops accepting,
/// lets in-flight requests finish within the grace period, and returns.
pub async fn serve(
    app: impl Into<App>,
    listener: TcpListener,
    conns: Connections,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_drain: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let app: App = app.into();
    let protocols = Arc::new(conns.protocols());
    let (drain, draining) = watch::channel(());
    let slots = Arc::new(Semaphore::new(conns.max_connections));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let Some((slot, tcp, peer)) = accepted else {
            continue;
        };
        let conn = Connection {
            protocols: protocols.clone(),
            service: PeerService {
                app: app.clone(),
                peer,
            },
            draining: draining.clone(),
            _slot: slot,
        };
        // Each transport's task is sized for its own state: a plain connection's does not carry
        // a TLS session's room.
        match &conns.tls {
            None => tokio::spawn(conn.serve(tcp)),
            Some(tls) => tokio::spawn(conn.serve_tls(tls.clone(), tcp)),
        };
    }
    drop(listener);
    on_drain();
    drop(draining);
    // Every connection holds a receiver until it closes: tell them, then wait for the last.
    let _ = drain.send(());
    if tokio::time::timeout(conns.grace, drain.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = conns.grace.as_millis() as u64,
            "grace period over; closing remaining connections"
        );
    }
    Ok(())
}

/// One accepted connection and what serving it needs.
struct Connection {
    /// Shared by every connection; each borrows it for as long as it is served.
    protocols: Arc<Protocols>,
    service: PeerService,
    /// Changes, or closes, when the server begins to drain.
    draining: watch::Receiver<()>,
    /// The connection's place under `server.max_connections`, given back when it closes.
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    /// Serves HTTP/2 (when `io` opens with its preface) or HTTP/1.1 on `io` until the client
    /// closes it or the server's draining ends it. A connection that has not shown which within
    /// the header timeout is closed: it would otherwise hold its place under
    /// `server.max_connections` for as long as the client liked.
    async fn serve<I>(mut self, mut io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.service.peer;
        let opened = tokio::select! {
            opened = tokio::time::timeout(self.protocols.opening, Opening::read(&mut io)) => opened,
            _ = self.draining.changed() => return,
        };
        let opening = match opened {
            Ok(Ok(Some(opening))) => opening,
            Ok(Ok(None)) => return,
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "connection failed before its first request");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no request began within the header timeout");
                return;
            }
        };
        let http2 = opening.is_http2_preface();
        let io = TokioIo::new(ClientIo::new(
            opening,
            io,
            Stall::new(self.protocols.send_timeout),
        ));
        let protocols = &self.protocols;
        let aged = protocols.aged();
        // Each connection is made where it is pinned and driven, not handed to a function that
        // drives it: an `async fn` would hold it twice, its argument and its pinned copy.
        let served = if http2 {
            let streams = Arc::new(Streams::new(protocols.max_requests));
            let service = StreamService {
                inner: self.service,
                streams: streams.clone(),
            };
            // Boxed: HTTP/2's state is twice HTTP/1.1's, and most connections never need it.
            let conn = Box::pin(protocols.http2.serve_connection(io, service));
            let idle = || streams.idled(protocols.opening);
            let retire = async {
                tokio::select! {
                    () = aged => {}
                    () = streams.last.notified() => {}
                }
            };
            let ends = Ends {
                retire,
                grace: protocols.grace,
            };
            until_drained(conn, &mut self.draining, idle, ends).await
        } else {
            // HTTP/1.1 bounds an idle connection itself: the header timeout runs while it waits
            // for the next request's head. Past its age, hyper closes it at once when idle, or
            // says `Connection: close` in the answer in flight if its head is not sent yet.
            let idle = std::future::pending::<()>;
            let ends = Ends {
                retire: aged,
                grace: protocols.grace,
            };
            if protocols.max_requests == u64::MAX {
                // Without a cap on its requests, hyper calls the application as it is: its
                // HTTP/1.1 dispatcher, generic over the service, is then compiled as it always was.
                let conn = protocols.http1.serve_connection(io, self.service);
                until_drained(pin!(conn.with_upgrades()), &mut self.draining, idle, ends).await
            } else {
                // With a cap, its last request's answer says `Connection: close`.
                let service = Http1Service {
                    inner: self.service,
                    left: Cell::new(protocols.max_requests),
                };
                let conn = protocols.http1.serve_connection(io, service);
                until_drained(pin!(conn.with_upgrades()), &mut self.draining, idle, ends).await
            }
        };
        if let Err(err) = served {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
        }
    }

    /// The TLS handshake, within the header timeout, then [`Connection::serve`] on the session.
    async fn serve_tls(mut self, tls: TlsAcceptor, tcp: TcpStream) {
        let peer = self.service.peer;
        let handshake = tokio::time::timeout(self.protocols.opening, tls.accept(tcp));
        let shaken = tokio::select! {
            shaken = handshake => shaken,
            _ = self.draining.changed() => return,
        };
        match shaken {
            Ok(Ok(stream)) => self.serve(stream).await,
            Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }
}

/// How a connection ends of itself: `retire` resolves when it has lived its age or begun its
/// last request; its requests in flight then get `grace` to finish.
struct Ends<R> {
    retire: R,
    grace: Duration,
}

/// Drives `conn` to its end; once the server begins to drain, `idle()` finds the connection
/// idle, or the connection retires, asks it to finish the requests it has begun and close. A
/// connection that is idle again after that (a client that never acknowledges HTTP/2's GOAWAY)
/// is dropped, and so is a retired one whose requests are not done within the grace period (the
/// server's own drain has its grace period for every connection at once).
async fn until_drained<C, F, R>(
    mut conn: Pin<C>,
    draining: &mut watch::Receiver<()>,
    idle: impl Fn() -> F,
    ends: Ends<R>,
) -> Result<(), hyper::Error>
where
    C: DerefMut<Target: Drain>,
    F: Future<Output = ()>,
    R: Future<Output = ()>,
{
    let retired = tokio::select! {
        served = conn.as_mut() => return served,
        _ = draining.changed() => false,
        () = idle() => false,
        () = ends.retire => true,
    };
    conn.as_mut().drain();
    let grace = async {
        match retired {
            true => tokio::time::sleep(ends.grace).await,
            false => std::future::pending().await,
        }
    };
    tokio::select! {
        served = conn => served,
        () = idle() => Ok(()),
        () = grace => {
            tracing::debug!("requests still in flight at the end of a retired connection's grace period");
            Ok(())
        }
    }
}

/// What an HTTP/2 connection's requests are doing, for closing it once it idles, as HTTP/1.1
/// closes a connection that waits longer than the header timeout for a request, or once it has
/// begun as many as it may carry.
struct Streams {
    /// Requests begun on the connection.
    begun: AtomicU64,
    /// Requests whose answers are not yet sent whole (nor given up).
    open: AtomicUsize,
    /// Requests the connection may carry.
    cap: u64,
    /// Told when the last of them begins.
    last: tokio::sync::Notify,
}

impl Streams {
    fn new(cap: u64) -> Self {
        Self {
            begun: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            cap,
            last: tokio::sync::Notify::new(),
        }
    }

    /// Resolves once no request has been open, nor begun, for a whole `period`: between one and
    /// two periods after the last answer.
    async fn idled(&self, period: Duration) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut seen = 0;
        loop {
            ticks.tick().await;
            let begun = self.begun.load(Ordering::Relaxed);
            if begun == seen && self.open.load(Ordering::Relaxed) == 0 {
                return;
            }
            seen = begun;
        }
    }
}

/// One of an HTTP/2 connection's requests, counted open from its beginning until its answer's
/// body is sent or dropped.
struct Open(Arc<Streams>);

impl Open {
    fn begin(streams: &Arc<Streams>) -> Self {
        let begun = streams.begun.fetch_add(1, Ordering::Relaxed) + 1;
        streams.open.fetch_add(1, Ordering::Relaxed);
        if begun == streams.cap {
            retired("requests");
            // A permit is kept if the connection is not waiting for it yet.
            streams.last.notify_one();
        }
        Self(streams.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`PeerService`] for an HTTP/2 connection: it keeps count of the requests open.
struct StreamService {
    inner: PeerService,
    streams: Arc<Streams>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for StreamService {
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let open = Open::begin(&self.streams);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answer = answer.await?;
            // Next, hyper sends the head and waits for the client's window for the body.
            Turn::Client.take();
            Ok(answer.map(|body| Body::new(OpenBody { body, _open: open })))
        })
    }
}

/// An answer's body that keeps its request counted open until it is sent or dropped.
struct OpenBody {
    body: Body,
    _open: Open,
}

impl HttpBody for OpenBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.get_mut().body).poll_frame(cx);
        // A frame given to hyper is sent as the client's window allows; a body that has none
        // ready waits on its backend.
        if polled.is_pending() {
            Turn::Backend.take();
        } else {
            Turn::Client.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Whom an HTTP/2 stream's answer waits on: its backend (for the answer, or its body's next
/// frame), or the client (for flow-control window to send what it has).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    Backend,
    Client,
}

thread_local! {
    /// Where the stream being polled on this thread last found itself: set by its answer and
    /// body as they are polled, read by [`StreamExec`]'s task around each poll of the stream.
    static TURN: Cell<Option<Turn>> = const { Cell::new(None) };
}

impl Turn {
    /// The stream being polled now waits on `self`.
    fn take(self) {
        TURN.set(Some(self));
    }
}

/// The executor of an HTTP/2 connection's streams. hyper runs each stream (its answer, then its
/// body, sent as the client's flow-control window allows) as a task of its own; this one resets
/// a stream whose answer waits longer than the send timeout for the client to open its window.
/// Without it, a client that reads every frame but never grants window would hold the stream,
/// its backend's answer and the connection open for good: the socket never stalls, so the
/// connection's send timeout never runs. nginx bounds such a stream with `send_timeout`, Envoy
/// with `stream_idle_timeout`.
#[derive(Clone)]
struct StreamExec {
    send_timeout: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let mut stall = Stall::new(self.send_timeout);
        tokio::spawn(async move {
            let mut stream = pin!(stream);
            let mut turn = Turn::Backend;
            std::future::poll_fn(|cx| {
                let outer = TURN.replace(None);
                let polled = stream.as_mut().poll(cx);
                // Whatever the answer or body did in this poll is progress, and says whom the
                // stream waits on now.
                if let Some(now) = TURN.replace(outer) {
                    turn = now;
                    stall.progressed();
                }
                if polled.is_ready() || turn == Turn::Backend {
                    return polled;
                }
                std::task::ready!(stall.poll_waited(cx));
                tracing::debug!(
                    send_timeout_ms = stall.after().as_millis() as u64,
                    "the client granted no window for an answer; stream reset"
                );
                // Dropping the stream resets it (RST_STREAM, CANCEL); the connection goes on.
                Poll::Ready(())
            })
            .await;
        });
    }
}

/// A served connection that can be asked to close once its requests in flight are answered.
trait Drain: Future<Output = Result<(), hyper::Error>> {
    fn drain(self: Pin<&mut Self>);
}

/// HTTP/1.1, whichever service answers: the application's, or [`Http1Service`] under a cap.
impl<I, S> Drain for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I> Drain for http2::Connection<I, StreamService, StreamExec>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// HTTP/2's connection preface (RFC 9113, 3.4), which a client with prior knowledge sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first bytes of a connection: enough to tell HTTP/2's preface from anything else, which is
/// left to HTTP/1.1 to read (and refuse, when it is not a request).
struct Opening {
    bytes: [u8; PREFACE.len()],
    /// How many of `bytes` were read.
    len: u8,
    /// How many of them have been handed on.
    given: u8,
}

impl Opening {
    /// Reads until the bytes stop matching the preface or match all of it, never past it. `None`
    /// when the client closes first.
    async fn read<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Option<Self>> {
        let mut opening = Self {
            bytes: [0; PREFACE.len()],
            len: 0,
            given: 0,
        };
        loop {
            let len = usize::from(opening.len);
            let n = io.read(&mut opening.bytes[len..]).await?;
            if n == 0 {
                return Ok(None);
            }
            let read = &opening.bytes[..len + n];
            opening.len = u8::try_from(read.len()).expect("at most the preface's 24 bytes");
            if read.len() == PREFACE.len() || read != &PREFACE[..read.len()] {
                return Ok(Some(opening));
            }
        }
    }

    fn is_http2_preface(&self) -> bool {
        &self.bytes[..usize::from(self.len)] == PREFACE
    }

    /// What is read but not yet handed on.
    fn rest(&self) -> &[u8] {
        &self.bytes[usize::from(self.given)..usize::from(self.len)]
    }
}

/// A client's connection as the protocols see it: its opening put back in front, for the
/// protocol that reads it again, and its writes bounded by the send timeout.
struct ClientIo<I> {
    opening: Opening,
    io: I,
    /// The send timeout.
    send: Stall,
    /// An error of the read that followed the opening's bytes into the same buffer, returned by
    /// the next read: those bytes are handed on first.
    deferred: Option<std::io::Error>,
}

impl<I> ClientIo<I> {
    fn new(opening: Opening, io: I, send: Stall) -> Self {
        Self {
            opening,
            io,
            send,
            deferred: None,
        }
    }

    /// `write` on the connection; while it waits for the client, for at most the send timeout.
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut I>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>>
    where
        I: Unpin,
    {
        if let Poll::Ready(done) = write(Pin::new(&mut self.io), cx) {
            self.send.progressed();
            return Poll::Ready(done);
        }
        std::task::ready!(self.send.poll_waited(cx));
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client took nothing of its answer for the send timeout",
        )))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(err) = this.deferred.take() {
            return Poll::Ready(Err(err));
        }
        let rest = this.opening.rest();
        if rest.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.opening.given += u8::try_from(n).expect("at most the preface's 24 bytes");
        // What the client sent after the opening, already here, comes in the same read: HTTP/1.1
        // then finds the whole head at once. Handed the opening alone, it makes room for the
        // rest behind those bytes, and its read buffer doubles from 8 to 16 KB, which the
        // connection keeps while it lives. Pending leaves the waker with the connection, as the
        // next read would.
        if this.opening.rest().is_empty()
            && buf.remaining() > 0
            && let Poll::Ready(Err(err)) = Pin::new(&mut this.io).poll_read(cx, buf)
        {
            this.deferred = Some(err);
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().bounded(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut()
            .bounded(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().bounded(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().bounded(cx, |io, cx| io.poll_shutdown(cx))
    }
}

/// The application as one connection's requests see it: each request learns the peer's address
/// (axum's [`ConnectInfo`]) and goes through its own clone of the application.
#[derive(Clone)]
struct PeerService {
    app: App,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for PeerService {
    type Response = Response;
    type Error = Infallible;
    type Future = Oneshot<App, Request>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.app.clone().oneshot(req.map(Body::new))
    }
}

/// [`PeerService`] for an HTTP/1.1 connection: the answer to the last request it may carry says
/// `Connection: close`, and hyper closes the connection once it is sent, as nginx does at
/// `keepalive_requests`. Said in the answer itself, rather than by draining the connection: an
/// answer ready at once would otherwise be sent, unmarked, before the drain begins.
struct Http1Service {
    inner: PeerService,
    /// Requests the connection may still carry.
    left: Cell<u64>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Http1Service {
    type Response = Response;
    type Error = Infallible;
    type Future = Http1Answer;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let left = self.left.get();
        self.left.set(left.saturating_sub(1));
        if left == 1 {
            retired("requests");
        }
        Http1Answer {
            // The last, or (pipelined) one read after it.
            last: left <= 1,
            answer: self.inner.call(req),
        }
    }
}

/// The answer to one HTTP/1.1 request, closing the connection when it is its last.
struct Http1Answer {
    answer: Oneshot<App, Request>,
    last: bool,
}

impl Future for Http1Answer {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let answer = std::task::ready!(Pin::new(&mut this.answer).poll(cx));
        Poll::Ready(match this.last {
            true => answer.map(closing),
            false => answer,
        })
    }
}

/// Counts a connection that ends of itself, by `reason`: `requests` (it began the last it may
/// carry) or `age`.
fn retired(reason: &'static str) {
    metrics::counter!("bff_connections_retired_total", "reason" => reason).increment(1);
}

/// The answer to a connection's last request: `Connection: close`. A switch of protocols
/// (WebSocket) keeps its own `Connection: upgrade`: the connection is the new protocol's then.
fn closing(mut res: Response) -> Response {
    if res.status() != axum::http::StatusCode::SWITCHING_PROTOCOLS {
        res.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    res
}

/// The next connection, once a slot is free. `None` after a failed accept (a client that reset
/// before being accepted, or no file descriptors left: then a short pause, not a busy loop).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((tcp, peer)) => {
            let _ = tcp.set_nodelay(true);
            Some((slot, tcp, peer))
        }
        Err(err) => {
            tracing::warn!(error = %err, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const REQUEST: &[u8] = b"GET /api/catalog/items HTTP/1.1\r\nHost: gateway\r\n\r\n";

    fn client_io<I>(opening: Opening, io: I) -> ClientIo<I> {
        ClientIo::new(opening, io, Stall::new(Duration::from_secs(5)))
    }

    #[tokio::test]
    async fn the_opening_and_what_followed_it_come_in_one_read() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(REQUEST).await.expect("write");
        let opening = Opening::read(&mut server)
            .await
            .expect("read")
            .expect("an opening");
        assert!(!opening.is_http2_preface());
        let mut io = client_io(opening, server);
        let mut buf = vec![0; 8192];
        let n = io.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], REQUEST, "one read, the whole head");
    }

    #[tokio::test]
    async fn the_opening_alone_when_nothing_followed_it_yet() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&REQUEST[..30]).await.expect("write");
        let opening = Opening::read(&mut server)
            .await
            .expect("read")
            .expect("an opening");
        let mut io = client_io(opening, server);
        let mut buf = vec![0; 8192];
        let n = io.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], &REQUEST[..30], "the opening and what was there");
        client.write_all(&REQUEST[30..]).await.expect("write");
        let m = io.read(&mut buf[n..]).await.expect("read");
        assert_eq!(&buf[..n + m], REQUEST, "the rest on the next read");
    }

    /// A connection that fails on every read.
    struct Failing;

    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)))
        }
    }

    #[tokio::test]
    async fn an_error_after_the_opening_comes_after_its_bytes() {
        let mut bytes = [0; PREFACE.len()];
        bytes.copy_from_slice(&REQUEST[..PREFACE.len()]);
        let opening = Opening {
            bytes,
            len: u8::try_from(PREFACE.len()).expect("24 bytes"),
            given: 0,
        };
        let mut io = client_io(opening, Failing);
        let mut buf = vec![0; 8192];
        let n = io.read(&mut buf).await.expect("the opening's bytes first");
        assert_eq!(&buf[..n], &REQUEST[..PREFACE.len()]);
        let err = io.read(&mut buf).await.expect_err("then the error");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
