//! The connections of pass-through, REST and GraphQL calls to one `http://` instance, made with
//! hyper's connection API and pooled by the instance itself: HTTP/1.1 keep-alive connections, or
//! HTTP/2 connections that carry many calls at once for an upstream configured with
//! `protocol = "http2"`.
//!
//! A client shared by every backend would key its pool by scheme and authority, hash that key
//! twice a call and spawn a task per call to notice when the connection is free again; the
//! instance already knows where it is, so its HTTP/1.1 pool is a stack of idle connections. A
//! connection goes back on the stack when the answer's body has been read to its end, and comes
//! off it most recently used first (warm, and the least likely to have been closed by the
//! backend). A connection the backend closed while idle gives the request back unsent: it goes
//! out on the next idle connection, or on a new one.
//!
//! Over HTTP/2 a call takes a stream on the first open connection with fewer than
//! [`STREAMS_PER_CONNECTION`] calls in flight, and a new connection is opened (one at a time) when
//! every one is full: a thousand calls in flight need ten connections to the backend, not a
//! thousand, each with its buffers.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::ServiceExt as _;

use super::{CountConnections, Protocol};

/// Idle HTTP/1.1 connections kept per instance, at most, when the upstream sets no cap on its
/// calls in flight; beyond, the longest idle is closed. An upstream with a cap keeps as many idle
/// as it may have calls in flight: a connection closed when it comes back would be opened again
/// by the next burst (and leave a socket waiting out `TIME_WAIT` each time).
pub(crate) const DEFAULT_MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed rather than used.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long making a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Calls one HTTP/2 connection carries at once before another is opened: the least a server
/// should allow (RFC 9113 recommends no fewer than 100; nginx allows 128, hyper 200). A server
/// that allows fewer makes the calls beyond its limit wait for a stream on the connection.
const STREAMS_PER_CONNECTION: usize = 100;
/// Time between pings on an HTTP/2 connection with calls in flight, and how long an answer to
/// one may take before the connection is taken for dead.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a call whose connection closed before the call went out on it.
const UNSENT_ATTEMPTS: usize = 3;

/// Why a pass-through call got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PassError {
    /// No connection could be made.
    #[error("connect: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The exchange failed: the connection, or the request's body.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// Every connection tried closed before the call could go out on it.
    #[error("no connection took the call")]
    Unsent,
}

/// The pooled connections to one instance; a clone shares them.
#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// Where connections go, as the connector takes it: `http://authority`.
    origin: http::Uri,
    connector: CountConnections<HttpConnector>,
    conns: Conns,
    /// Whether the task that closes connections idle too long has started (with the first
    /// connection: a pool may be made outside a runtime).
    reaping: AtomicBool,
}

enum Conns {
    Http1(Http1Conns),
    Http2(Http2Conns),
}

/// HTTP/1.1: the idle connections, how many are open, and the calls waiting for one.
struct Http1Conns {
    state: Mutex<Http1State>,
    /// Idle connections kept, at most.
    max_idle: usize,
    /// Connections open at most (idle, carrying a call, or being made); 0: no cap.
    max_open: usize,
}

#[derive(Default)]
struct Http1State {
    /// The idle connections, oldest first; taken from the back.
    idle: VecDeque<Idle>,
    /// Connections open: each counted by the [`Slot`] its task holds.
    open: usize,
    /// Calls waiting for a connection under the cap, oldest first; some may have given up.
    waiting: VecDeque<tokio::sync::oneshot::Sender<Offer>>,
    /// The length of `waiting` at which those that gave up are swept out.
    sweep_at: usize,
}

/// What a call gets to send on: a connection (idle, or given back while it waited), or a place
/// under the cap to open one in.
enum Offer {
    Conn(http1::SendRequest<Body>),
    Slot(Slot),
}

/// What a call gets from an HTTP/1.1 pool.
enum Checkout {
    Idle(http1::SendRequest<Body>),
    /// Room for a new connection.
    Dial(Slot),
    /// The cap is reached: wait for an offer.
    Wait(tokio::sync::oneshot::Receiver<Offer>),
}

/// One open HTTP/1.1 connection's place under the cap, held by the connection's task (or by
/// the call opening it); when dropped, the place goes to the oldest waiting call, or is freed.
struct Slot(Option<Weak<Shared>>);

/// The least length of a pool's waiting list that is swept of calls that gave up.
const SWEEP_WAITING_AT: usize = 64;

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// HTTP/2: the open connections, and a lock that lets one call at a time open another.
#[derive(Default)]
struct Http2Conns {
    open: Mutex<Vec<Multiplexed>>,
    dialing: tokio::sync::Mutex<()>,
}

struct Multiplexed {
    sender: http2::SendRequest<Body>,
    /// Calls in flight on the connection: taken by a call, given back when its answer is done.
    streams: Arc<AtomicUsize>,
    last_used: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("origin", &self.shared.origin)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for the instance at `authority`, speaking `protocol`, empty until the first call,
    /// keeping at most `max_idle` idle HTTP/1.1 connections (at least one) and holding at most
    /// `max_open` open (0: no cap).
    pub(crate) fn new(
        authority: &http::uri::Authority,
        protocol: Protocol,
        max_idle: usize,
        max_open: usize,
    ) -> Option<Self> {
        let origin = http::Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Some(Self {
            shared: Arc::new(Shared {
                origin,
                connector: CountConnections(connector),
                conns: match protocol {
                    Protocol::Http1 => Conns::Http1(Http1Conns {
                        state: Mutex::default(),
                        max_idle: match max_open {
                            0 => max_idle.max(1),
                            cap => max_idle.clamp(1, cap),
                        },
                        max_open,
                    }),
                    Protocol::Http2 => Conns::Http2(Http2Conns::default()),
                },
                reaping: AtomicBool::new(false),
            }),
        })
    }

    /// Sends `req` (its URI in origin form, its `Host` set) on a pooled connection, or on a new
    /// one. Over HTTP/1.1 the answer's body hands the connection back when it has been read to
    /// its end; over HTTP/2 it gives its stream back then, or when dropped.
    pub(crate) async fn send(
        &self,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<Body>, PassError> {
        let conns = match &self.shared.conns {
            Conns::Http1(conns) => conns,
            // Boxed: the HTTP/1.1 call, the common one, carries no room for this one.
            Conns::Http2(conns) => return Box::pin(self.send_multiplexed(conns, req)).await,
        };
        loop {
            let got = match conns.checkout(&self.shared) {
                Checkout::Idle(sender) => Offer::Conn(sender),
                Checkout::Dial(slot) => Offer::Slot(slot),
                Checkout::Wait(offer) => match offer.await {
                    Ok(offer) => offer,
                    // Never while the pool is here: it sends to every call it lists.
                    Err(_) => return Err(PassError::Unsent),
                },
            };
            let mut sender = match got {
                Offer::Conn(sender) => sender,
                Offer::Slot(slot) => {
                    // Boxed: a call that finds an idle connection carries no room for opening one.
                    let mut sender = Box::pin(self.connect_http1(slot)).await?;
                    let res = sender.send_request(req).await?;
                    return Ok(self.returning(sender, res));
                }
            };
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(self.returning(sender, res)),
                // Closed before the request was written: it goes out on another connection.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// How many connections are idle now (HTTP/1.1), or open (HTTP/2).
    #[cfg(test)]
    pub(crate) fn connections(&self) -> usize {
        match &self.shared.conns {
            Conns::Http1(c) => c.lock().idle.len(),
            Conns::Http2(c) => c.lock().len(),
        }
    }

    /// A new TCP connection to the instance; the first starts the task that closes connections
    /// idle too long.
    async fn dial(&self) -> Result<TokioIo<tokio::net::TcpStream>, PassError> {
        let io = self
            .shared
            .connector
            .clone()
            .oneshot(self.shared.origin.clone())
            .await
            .map_err(|e| PassError::Connect(e.into()))?;
        if !self.shared.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(&self.shared)));
        }
        Ok(io)
    }

    /// A new HTTP/1.1 connection, in the place `slot` holds under the cap: its task keeps it.
    async fn connect_http1(&self, slot: Slot) -> Result<http1::SendRequest<Body>, PassError> {
        let (sender, conn) = http1::handshake(self.dial().await?).await?;
        drive(conn, Some(slot));
        Ok(sender)
    }

    async fn send_multiplexed(
        &self,
        conns: &Http2Conns,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, PassError> {
        let mut req = for_http2(req, &self.shared.origin);
        // A call without a body can go out again if the backend turns it away unprocessed; its
        // head is kept for that.
        let head = HttpBody::is_end_stream(req.body()).then(|| Head::of(&req));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (mut sender, stream) = match conns.pick() {
                Some(picked) => picked,
                None => self.connect_http2(conns).await?,
            };
            let unsent = match sender.try_send_request(req).await {
                Ok(res) => return Ok(returning(Back::Http2(stream), res)),
                Err(mut e) => match e.take_message() {
                    // The connection closed before the call went out on it.
                    Some(unsent) => Ok(unsent),
                    // The backend is closing the connection (GOAWAY) or refused the stream: the
                    // call was not processed (RFC 9113, 8.7). The connection takes no new calls.
                    None if turned_away(e.error()) => {
                        conns.retire(&stream);
                        head.as_ref().map(Head::request).ok_or(e.into_error())
                    }
                    None => Err(e.into_error()),
                },
            };
            match unsent {
                Ok(again) if attempts < UNSENT_ATTEMPTS => req = again,
                Ok(_) => return Err(PassError::Unsent),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A stream on a connection another call opened meanwhile, or on a new connection.
    async fn connect_http2(
        &self,
        conns: &Http2Conns,
    ) -> Result<(http2::SendRequest<Body>, Stream), PassError> {
        let _dialing = conns.dialing.lock().await;
        if let Some(picked) = conns.pick() {
            return Ok(picked);
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .handshake(self.dial().await?)
            .await?;
        drive(conn, None);
        Ok(conns.add(sender))
    }

    fn returning(
        &self,
        sender: http1::SendRequest<Body>,
        res: http::Response<Incoming>,
    ) -> http::Response<Body> {
        returning(Back::Http1(Arc::clone(&self.shared), sender), res)
    }
}

/// `res` with a body that gives `back` its connection or stream when done.
fn returning(back: Back, res: http::Response<Incoming>) -> http::Response<Body> {
    res.map(|body| {
        let ended = body.is_end_stream();
        Body::new(Returning {
            body,
            ended,
            back: Some(back),
        })
    })
}

/// Runs a connection's task: it ends when the backend closes the connection, or when the pool
/// and the calls in flight have all let go of its sender; then its `slot` is given up.
fn drive<C>(conn: C, slot: Option<Slot>)
where
    C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target: "upstream", error = %e, "pass-through connection ended");
        }
        drop(slot);
    });
}

/// `req` as HTTP/2 sends it: the scheme and authority in the URI (`:scheme`, `:authority`)
/// rather than a `Host` header.
fn for_http2(mut req: http::Request<Body>, origin: &http::Uri) -> http::Request<Body> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = origin.authority().cloned();
    parts.path_and_query = req.uri().path_and_query().cloned();
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
        req.headers_mut().remove(http::header::HOST);
    }
    *req.version_mut() = http::Version::HTTP_2;
    req
}

/// Whether an HTTP/2 exchange failed because the backend turned the call away without processing
/// it: a GOAWAY that left the call's stream out, or a refused stream.
fn turned_away(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        source = err.source();
    }
    false
}

/// The head of a call without a body, to send it again.
struct Head {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Head {
    fn of(req: &http::Request<Body>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    fn request(&self) -> http::Request<Body> {
        let mut req = http::Request::new(Body::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        *req.version_mut() = http::Version::HTTP_2;
        req
    }
}

impl Shared {
    /// Gives an HTTP/1.1 connection back to the idle ones.
    fn put(&self, sender: http1::SendRequest<Body>) {
        if let Conns::Http1(c) = &self.conns {
            c.put(sender);
        }
    }

    /// Closes the connections idle for [`IDLE_TIMEOUT`] by `now`, and forgets those the backend
    /// closed.
    fn evict(&self, now: Instant) {
        match &self.conns {
            Conns::Http1(c) => c.lock().idle.retain(|c| {
                !c.sender.is_closed() && now.saturating_duration_since(c.since) < IDLE_TIMEOUT
            }),
            Conns::Http2(c) => c.lock().retain(|c| {
                !c.sender.is_closed()
                    && (c.streams.load(Ordering::Relaxed) > 0
                        || now.saturating_duration_since(c.last_used) < IDLE_TIMEOUT)
            }),
        }
    }
}

impl Http1Conns {
    fn lock(&self) -> MutexGuard<'_, Http1State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned connection still open and not too old; else room for a new
    /// one; else, the cap reached, a place among the waiting calls.
    fn checkout(&self, shared: &Arc<Shared>) -> Checkout {
        let mut state = self.lock();
        while let Some(c) = state.idle.pop_back() {
            if !c.sender.is_closed() && c.since.elapsed() < IDLE_TIMEOUT {
                return Checkout::Idle(c.sender);
            }
        }
        if self.max_open == 0 || state.open < self.max_open {
            state.open += 1;
            return Checkout::Dial(Slot(Some(Arc::downgrade(shared))));
        }
        // Calls that gave up leave their place behind; swept once the list has doubled since.
        if state.waiting.len() >= state.sweep_at.max(SWEEP_WAITING_AT) {
            state.waiting.retain(|w| !w.is_closed());
            state.sweep_at = state.waiting.len() * 2;
        }
        let (offer, wait) = tokio::sync::oneshot::channel();
        state.waiting.push_back(offer);
        metrics::counter!("bff_upstream_connection_waits_total").increment(1);
        Checkout::Wait(wait)
    }

    /// Gives a connection ready for a call to the oldest waiting call, or to the idle ones.
    fn put(&self, mut sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut state = self.lock();
        while let Some(waiting) = state.waiting.pop_front() {
            match waiting.send(Offer::Conn(sender)) {
                Ok(()) => return,
                // That call gave up.
                Err(Offer::Conn(back)) => sender = back,
                // Never: a connection was offered.
                Err(Offer::Slot(_)) => return,
            }
        }
        let now = Instant::now();
        while state.idle.front().is_some_and(|c| {
            state.idle.len() >= self.max_idle || now.duration_since(c.since) >= IDLE_TIMEOUT
        }) {
            state.idle.pop_front();
        }
        state.idle.push_back(Idle { sender, since: now });
    }

    /// A connection closed (or was never made): its place goes to the oldest waiting call, or
    /// is freed.
    fn release(&self, mut place: Weak<Shared>) {
        let mut state = self.lock();
        while let Some(waiting) = state.waiting.pop_front() {
            match waiting.send(Offer::Slot(Slot(Some(place)))) {
                Ok(()) => return,
                // That call gave up: the place is taken back, not given up again (under the lock).
                Err(Offer::Slot(mut slot)) => match slot.0.take() {
                    Some(back) => place = back,
                    None => return,
                },
                // Never: a place was offered.
                Err(Offer::Conn(_)) => return,
            }
        }
        state.open = state.open.saturating_sub(1);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A pool already gone has no one to give the place to.
        if let Some(place) = self.0.take()
            && let Some(shared) = place.upgrade()
            && let Conns::Http1(conns) = &shared.conns
        {
            conns.release(place);
        }
    }
}

impl Http2Conns {
    fn lock(&self) -> MutexGuard<'_, Vec<Multiplexed>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A stream on the first open connection with room for one more call.
    fn pick(&self) -> Option<(http2::SendRequest<Body>, Stream)> {
        let mut open = self.lock();
        open.retain(|c| !c.sender.is_closed());
        let c = open
            .iter_mut()
            .find(|c| c.streams.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION)?;
        c.last_used = Instant::now();
        Some((c.sender.clone(), Stream::take(&c.streams)))
    }

    /// Takes the connection of `stream` out of the pool: it finishes the calls it has, and takes
    /// no more.
    fn retire(&self, stream: &Stream) {
        self.lock().retain(|c| !Arc::ptr_eq(&c.streams, &stream.0));
    }

    /// Keeps a new connection, and takes the first stream on it.
    fn add(&self, sender: http2::SendRequest<Body>) -> (http2::SendRequest<Body>, Stream) {
        let streams = Arc::new(AtomicUsize::new(0));
        let stream = Stream::take(&streams);
        self.lock().push(Multiplexed {
            sender: sender.clone(),
            streams,
            last_used: Instant::now(),
        });
        (sender, stream)
    }
}

/// Closes a pool's idle connections when they grow too old, also when no call comes to notice;
/// ends with the pool.
async fn reap(shared: Weak<Shared>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match shared.upgrade() {
            Some(shared) => shared.evict(Instant::now()),
            None => return,
        }
    }
}

/// One call's place on an HTTP/2 connection, given back when dropped.
struct Stream(Arc<AtomicUsize>);

impl Stream {
    fn take(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(streams))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body that gives what carried it back once read to its end: over HTTP/1.1 the
/// connection, to the pool; over HTTP/2 the call's stream. Dropped before that, an HTTP/1.1
/// connection closes with it (hyper cannot reuse a connection whose answer was not read), and an
/// HTTP/2 stream is reset and given back.
struct Returning {
    body: Incoming,
    ended: bool,
    back: Option<Back>,
}

/// What an answer's body gives back.
enum Back {
    Http1(Arc<Shared>, http1::SendRequest<Body>),
    Http2(Stream),
}

impl HttpBody for Returning {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.ended = true,
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) => self.ended = self.body.is_end_stream(),
        }
        if self.ended {
            self.give_back();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Returning {
    fn give_back(&mut self) {
        let (shared, mut sender) = match self.back.take() {
            Some(Back::Http1(shared, sender)) => (shared, sender),
            // The stream is free for another call once its answer is read.
            Some(Back::Http2(stream)) => return drop(stream),
            None => return,
        };
        if sender.is_ready() {
            shared.put(sender);
        } else if !sender.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // The exchange is not over (the request's body still going out, say): the
            // connection goes back when it is, rather than making the next call wait for it.
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    shared.put(sender);
                }
            });
        }
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if self.ended || self.body.is_end_stream() {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::ConnectInfo;
    use http_body_util::BodyExt as _;

    /// A backend, HTTP/1.1 and HTTP/2 alike, that answers `/n` with the caller's address, `/big`
    /// with 64 KB, `/echo` with the request's version and URI, `/slow` after 300 ms, and counts
    /// the requests to `/n`.
    async fn backend() -> (http::uri::Authority, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = axum::Router::new()
            .route(
                "/n",
                axum::routing::get(
                    move |ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                        counted.fetch_add(1, Ordering::SeqCst);
                        peer.to_string()
                    },
                ),
            )
            .route(
                "/big",
                axum::routing::get(|| async { "x".repeat(64 * 1024) }),
            )
            .route(
                "/echo",
                axum::routing::get(|req: http::Request<axum::body::Body>| async move {
                    format!("{:?} {}", req.version(), req.uri())
                }),
            )
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "late"
                }),
            )
            .route(
                "/close",
                axum::routing::get(|| async { ([(http::header::CONNECTION, "close")], "bye") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        (addr.to_string().parse().expect("authority"), hits)
    }

    fn get(path: &str, host: &http::uri::Authority) -> http::Request<Body> {
        http::Request::get(path)
            .header(http::header::HOST, host.as_str())
            .body(Body::empty())
            .expect("request")
    }

    async fn text(res: http::Response<Body>) -> String {
        let body = res.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(body.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn one_connection_serves_calls_one_after_another() {
        let (at, hits) = backend().await;
        let pool = Pool::new(&at, Protocol::Http1, DEFAULT_MAX_IDLE, 0).expect("pool");
        let mut peers = HashSet::new();
        for _ in 0..20 {
            let res = pool.send(get("/n", &at)).await.expect("answer");
            assert_eq!(res.status(), 200);
            peers.insert(text(res).await);
            assert_eq!(
                pool.connections(),
                1,
                "the connection is back once its answer was read"
            );
        }
        assert_eq!(hits.load(Ordering::SeqCst), 20);
        assert_eq!(peers.len(), 1, "connections used: {peers:?}");
    }

    #[tokio::test]
    async fn an_answer_without_a_body_gives_its_connection_back() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at, Protocol::Http1, DEFAULT_MAX_IDLE, 0).expect("pool");
        let head = http::Request::head("/n")
            .header(http::header::HOST, at.as_str())
            .body(Body::empty())
            .expect("request");
        let res = pool.send(head).await.expect("answer");
        assert_eq!(res.status(), 200);
        drop(res);
        assert_eq!(
            pool.connections(),
            1,
            "the connection of a HEAD answer was not kept"
        );
        let after = text(pool.send(get("/n", &at)).await.expect("answer")).await;
        assert!(after.starts_with("127.0.0.1:"), "{after}");
        assert_eq!(pool.connections(), 1);
    }

    #[tokio::test]
    async fn calls_at_once_get_connections_of_their_own_and_all_come_back() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at, Protocol::Http1, DEFAULT_MAX_IDLE, 0).expect("pool");
        let answers = futures::future::join_all((0..8).map(|_| pool.send(get("/big", &at)))).await;
        for res in answers {
            assert_eq!(text(res.expect("answer")).await.len(), 64 * 1024);
        }
        assert_eq!(pool.connections(), 8);
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_closed_and_the_rest_serve_the_next_burst() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at, Protocol::Http1, 3, 0).expect("pool");
        let burst = || futures::future::join_all((0..5).map(|_| pool.send(get("/n", &at))));
        let mut first = HashSet::new();
        for res in burst().await {
            first.insert(text(res.expect("answer")).await);
        }
        assert_eq!(first.len(), 5, "calls at once shared a connection");
        assert_eq!(
            pool.connections(),
            3,
            "idle connections kept beyond the cap"
        );
        let mut second = HashSet::new();
        for res in burst().await {
            second.insert(text(res.expect("answer")).await);
        }
        assert_eq!(
            second.intersection(&first).count(),
            3,
            "the kept connections did not serve the next burst"
        );
        assert_eq!(pool.connections(), 3);
    }

    #[tokio::test]
    async fn an_answer_dropped_unread_takes_its_connection_with_it() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at, Protocol::Http1, DEFAULT_MAX_IDLE, 0).expect("pool");
        let res = pool.send(get("/big", &at)).await.expect("answer");
        let mut body = res.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.is_data());
        drop(body);
        assert_eq!(
            pool.connections(),
            0,
            "a connection with an answer half read was kept"
        );
        let res = pool.send(get("/n", &at)).await.expect("answer");
        assert_eq!(res.status(), 200);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closes_is_not_used_again() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at, Protocol::Http1, DEFAULT_MAX_IDLE, 0).expect("pool");
        let first = pool.send(get("/n", &at)).await.expect("answer");
        let first = text(first).await;
        assert_eq!(
            text(pool.send(get("/close", &at)).await.expect("answer")).await,
            "bye"
        );
        // The closed connection may still sit in the pool until its task notices; either way
        // the next call gets an answer, on another connection.
        let again = text(pool.send(get("/n", &at)).await.expect("answer")).await;
        assert_ne!(
            first, again,
            "the call went out on the connection the backend closed"
        );
    }

    #[tokio::test]
    async fn idle_connections_are_closed_when_too_old() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at, Protocol::Http1, DEFAULT_MAX_IDLE, 0).expect("pool");
        let _ = text(pool.send(get("/n", &at)).await.expect("answer")).await;
        pool.shared.evict(Instant::now());
        assert_eq!(pool.connections(), 1, "a fresh idle connection was closed");
        pool.shared.evict(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(pool.connections(), 0);
    }

    /// Within this, a waiting call is served or the test fails (rather than hanging).
    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn calls_past_the_cap_wait_for_a_connection_rather_than_open_one() {
        let (at, hits) = backend().await;
        let pool = Pool::new(&at, Protocol::Http1, DEFAULT_MAX_IDLE, 2).expect("pool");
        let calls = futures::future::join_all((0..12).map(|_| async {
            let res = pool.send(get("/n", &at)).await.expect("answer");
            assert_eq!(res.status(), 200);
            text(res).await
        }));
        let peers: HashSet<String> = tokio::time::timeout(WAIT, calls)
            .await
            .expect("every call served")
            .into_iter()
            .collect();
        assert_eq!(hits.load(Ordering::SeqCst), 12);
        assert_eq!(peers.len(), 2, "connections used: {peers:?}");
        assert_eq!(pool.connections(), 2);
    }

    #[tokio::test]
    async fn a_waiting_call_takes_the_place_of_a_connection_that_closed() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at, Protocol::Http1, DEFAULT_MAX_IDLE, 1).expect("pool");
        let res = pool.send(get("/big", &at)).await.expect("answer");
        let first = res.into_body();
        let waiting = pool.send(get("/n", &at));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "a call went past the cap while the one connection was busy"
        );
        // Dropped half read, the connection closes: its place goes to the waiting call.
        drop(first);
        let res = tokio::time::timeout(WAIT, waiting)
            .await
            .expect("the waiting call was served")
            .expect("answer");
        assert_eq!(res.status(), 200);
        assert!(text(res).await.starts_with("127.0.0.1:"));
        assert_eq!(pool.connections(), 1);
    }

    #[tokio::test]
    async fn a_connection_given_back_skips_the_calls_that_gave_up() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at, Protocol::Http1, DEFAULT_MAX_IDLE, 1).expect("pool");
        let busy = pool.send(get("/n", &at)).await.expect("answer");
        for _ in 0..3 {
            let gave_up =
                tokio::time::timeout(Duration::from_millis(20), pool.send(get("/n", &at)));
            assert!(gave_up.await.is_err(), "served past the cap");
        }
        let first = text(busy).await;
        let next = tokio::time::timeout(WAIT, pool.send(get("/n", &at)))
            .await
            .expect("served")
            .expect("answer");
        assert_eq!(
            text(next).await,
            first,
            "the connection was lost to a call that had given up"
        );
        assert_eq!(pool.connections(), 1);
    }

    #[tokio::test]
    async fn calls_that_gave_up_are_swept_from_the_waiting_list() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at, Protocol::Http1, DEFAULT_MAX_IDLE, 1).expect("pool");
        let _busy = pool.send(get("/n", &at)).await.expect("answer");
        let Conns::Http1(conns) = &pool.shared.conns else {
            panic!("an HTTP/1.1 pool");
        };
        for _ in 0..10 * SWEEP_WAITING_AT {
            let gave_up = tokio::time::timeout(Duration::ZERO, pool.send(get("/n", &at)));
            assert!(gave_up.await.is_err(), "served past the cap");
        }
        let waiting = conns.lock().waiting.len();
        assert!(
            waiting <= SWEEP_WAITING_AT,
            "{waiting} calls that gave up still listed"
        );
    }

    #[tokio::test]
    async fn no_backend_is_a_connection_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let at: http::uri::Authority = listener
            .local_addr()
            .expect("addr")
            .to_string()
            .parse()
            .expect("authority");
        drop(listener);
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let pool = Pool::new(&at, protocol, DEFAULT_MAX_IDLE, 0).expect("pool");
            let err = pool.send(get("/n", &at)).await.expect_err("no backend");
            assert!(
                matches!(err, PassError::Connect(_)),
                "{protocol:?}: {err:?}"
            );
            assert_eq!(pool.connections(), 0);
        }
    }

    fn multiplexed(pool: &Pool) -> &Http2Conns {
        match &pool.shared.conns {
            Conns::Http2(c) => c,
            Conns::Http1(_) => panic!("an HTTP/1.1 pool"),
        }
    }

    fn streams_in_flight(pool: &Pool) -> usize {
        multiplexed(pool)
            .lock()
            .iter()
            .map(|c| c.streams.load(Ordering::Relaxed))
            .sum()
    }

    #[tokio::test]
    async fn over_http2_calls_at_once_share_one_connection() {
        let (at, hits) = backend().await;
        let pool = Pool::new(&at, Protocol::Http2, DEFAULT_MAX_IDLE, 0).expect("pool");
        let answers = futures::future::join_all((0..50).map(|_| pool.send(get("/n", &at)))).await;
        let mut peers = HashSet::new();
        for res in answers {
            let res = res.expect("answer");
            assert_eq!(res.version(), http::Version::HTTP_2);
            peers.insert(text(res).await);
        }
        assert_eq!(hits.load(Ordering::SeqCst), 50);
        assert_eq!(peers.len(), 1, "connections used: {peers:?}");
        assert_eq!(pool.connections(), 1);
        assert_eq!(
            streams_in_flight(&pool),
            0,
            "a finished call kept its stream"
        );
        // The path and query arrive as written, the authority in the URI.
        let echo = text(
            pool.send(get("/echo?q=a%20b&n=1", &at))
                .await
                .expect("answer"),
        )
        .await;
        assert_eq!(echo, format!("HTTP/2.0 http://{at}/echo?q=a%20b&n=1"));
    }

    #[tokio::test]
    async fn over_http2_a_full_connection_makes_another() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at, Protocol::Http2, DEFAULT_MAX_IDLE, 0).expect("pool");
        let calls = STREAMS_PER_CONNECTION + 20;
        let answers =
            futures::future::join_all((0..calls).map(|_| pool.send(get("/slow", &at)))).await;
        assert_eq!(
            pool.connections(),
            2,
            "calls in flight on each: at most {STREAMS_PER_CONNECTION}"
        );
        assert_eq!(
            streams_in_flight(&pool),
            calls,
            "answers unread hold their streams"
        );
        for res in answers {
            assert_eq!(text(res.expect("answer")).await, "late");
        }
        assert_eq!(streams_in_flight(&pool), 0);
        // Both stay open while fresh; the reaper closes them once idle too long.
        pool.shared.evict(Instant::now());
        assert_eq!(pool.connections(), 2);
        pool.shared.evict(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(pool.connections(), 0);
        assert_eq!(
            text(pool.send(get("/slow", &at)).await.expect("answer")).await,
            "late"
        );
    }

    #[tokio::test]
    async fn over_http2_a_dropped_answer_gives_its_stream_back() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at, Protocol::Http2, DEFAULT_MAX_IDLE, 0).expect("pool");
        let res = pool.send(get("/big", &at)).await.expect("answer");
        assert_eq!(streams_in_flight(&pool), 1);
        drop(res);
        assert_eq!(streams_in_flight(&pool), 0);
        // The connection is not lost with it: only the stream was reset.
        let again = pool.send(get("/n", &at)).await.expect("answer");
        assert_eq!(again.status(), 200);
        assert_eq!(pool.connections(), 1);
    }

    #[tokio::test]
    async fn over_http2_a_backend_that_went_away_gets_a_new_connection() {
        let serve = |listener: tokio::net::TcpListener| {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let app = axum::Router::new().route("/n", axum::routing::get(|| async { "up" }));
            let server = tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
            });
            (stop, server)
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let at: http::uri::Authority = addr.to_string().parse().expect("authority");
        let pool = Pool::new(&at, Protocol::Http2, DEFAULT_MAX_IDLE, 0).expect("pool");
        let (stop, server) = serve(listener);
        assert_eq!(
            text(pool.send(get("/n", &at)).await.expect("answer")).await,
            "up"
        );
        // The backend restarts: its connections close (HTTP/2 says GOAWAY) and it listens again.
        let _ = stop.send(());
        let _ = server.await;
        let (_stop, _server) = serve(tokio::net::TcpListener::bind(addr).await.expect("rebind"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while multiplexed(&pool)
            .lock()
            .iter()
            .any(|c| !c.sender.is_closed())
        {
            assert!(
                Instant::now() < deadline,
                "the closed connection looks open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..3 {
            assert_eq!(
                text(pool.send(get("/n", &at)).await.expect("answer")).await,
                "up"
            );
        }
        assert_eq!(pool.connections(), 1, "the closed connection was kept");
    }

    /// An HTTP/2 backend that closes each connection (GOAWAY) after `per_connection` calls and
    /// refuses the streams that arrive meanwhile, as nginx does after `keepalive_requests`; each
    /// answer takes 5 ms, so calls are in flight when it does. Counts the connections it accepted.
    async fn going_away_backend(per_connection: usize) -> (http::uri::Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let at = listener
            .local_addr()
            .expect("addr")
            .to_string()
            .parse()
            .expect("authority");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    let mut served = 0;
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        served += 1;
                        if served > per_connection {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            if let Ok(mut body) =
                                respond.send_response(http::Response::new(()), false)
                            {
                                let _ = body.send_data(bytes::Bytes::from_static(b"ok"), true);
                            }
                        });
                        if served == per_connection {
                            conn.graceful_shutdown();
                        }
                    }
                });
            }
        });
        (at, accepted)
    }

    #[tokio::test]
    async fn over_http2_calls_a_closing_backend_turned_away_go_out_again() {
        let (at, accepted) = going_away_backend(40).await;
        let pool = Pool::new(&at, Protocol::Http2, DEFAULT_MAX_IDLE, 0).expect("pool");
        // Fewer calls at once than one connection carries: only GOAWAYs open more.
        for wave in 0..3 {
            let answers =
                futures::future::join_all((0..90).map(|_| pool.send(get("/n", &at)))).await;
            let failed: Vec<String> = answers
                .iter()
                .filter_map(|a| a.as_ref().err().map(|e| format!("{e:?}")))
                .collect();
            assert!(
                failed.is_empty(),
                "wave {wave}: {} of 90 failed: {:?}",
                failed.len(),
                &failed[..failed.len().min(3)]
            );
            for res in answers {
                assert_eq!(text(res.expect("answer")).await, "ok");
            }
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!(
            opened >= 3,
            "the backend closed no connection: {opened} opened"
        );
    }
}
