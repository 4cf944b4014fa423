//! The connections of pass-through calls to one `http://` instance: HTTP/1.1 keep-alive
//! connections made with hyper's connection API and pooled by the instance itself.
//!
//! A client shared by every backend would key its pool by scheme and authority, hash that key
//! twice a call and spawn a task per call to notice when the connection is free again; the
//! instance already knows where it is, so its pool is a stack of idle connections. A
//! connection goes back on the stack when the answer's body has been read to its end, and comes
//! off it most recently used first (warm, and the least likely to have been closed by the
//! backend). A connection the backend closed while idle gives the request back unsent: it goes
//! out on the next idle connection, or on a new one.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use tower::ServiceExt as _;

use super::CountConnections;

/// Idle connections kept per instance, at most; beyond, the longest idle is closed.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than used.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long making a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a pass-through call got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PassError {
    /// No connection could be made.
    #[error("connect: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The exchange failed: the connection, or the request's body.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The pooled connections to one instance.
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// Where connections go, as the connector takes it: `http://authority`.
    origin: http::Uri,
    connector: CountConnections<HttpConnector>,
    /// Oldest first; taken from the back.
    idle: Mutex<VecDeque<Idle>>,
    /// Whether the task that closes connections idle too long has started (with the first
    /// connection: a pool may be made outside a runtime).
    reaping: AtomicBool,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("origin", &self.shared.origin)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for the instance at `authority`, empty until the first call.
    pub(crate) fn new(authority: &http::uri::Authority) -> Option<Self> {
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
                idle: Mutex::new(VecDeque::new()),
                reaping: AtomicBool::new(false),
            }),
        })
    }

    /// Sends `req` (its URI in origin form, its `Host` set) on an idle connection, or on a new
    /// one. The answer's body hands the connection back when it has been read to its end.
    pub(crate) async fn send(
        &self,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<Body>, PassError> {
        while let Some(mut sender) = self.shared.take() {
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
        // Boxed: a call that finds an idle connection carries no room for opening one.
        let mut sender = Box::pin(self.connect()).await?;
        let res = sender.send_request(req).await?;
        Ok(self.returning(sender, res))
    }

    /// How many connections are idle now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.shared.lock().len()
    }

    async fn connect(&self) -> Result<SendRequest<Body>, PassError> {
        let io = self
            .shared
            .connector
            .clone()
            .oneshot(self.shared.origin.clone())
            .await
            .map_err(|e| PassError::Connect(e.into()))?;
        let (sender, conn) = http1::handshake(io).await?;
        if !self.shared.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(&self.shared)));
        }
        // The connection's task: it ends when the backend closes the connection, or when the
        // pool and the call in flight have both let go of its sender.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target: "upstream", error = %e, "pass-through connection ended");
            }
        });
        Ok(sender)
    }

    fn returning(
        &self,
        sender: SendRequest<Body>,
        res: http::Response<Incoming>,
    ) -> http::Response<Body> {
        let shared = Arc::clone(&self.shared);
        res.map(|body| {
            let ended = body.is_end_stream();
            Body::new(Returning {
                body,
                ended,
                back: Some((shared, sender)),
            })
        })
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned connection still open and not too old.
    fn take(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        while let Some(c) = idle.pop_back() {
            if !c.sender.is_closed() && c.since.elapsed() < IDLE_TIMEOUT {
                return Some(c.sender);
            }
        }
        None
    }

    /// Closes the connections idle for [`IDLE_TIMEOUT`] by `now`, and forgets those the backend
    /// closed.
    fn evict(&self, now: Instant) {
        self.lock().retain(|c| {
            !c.sender.is_closed() && now.saturating_duration_since(c.since) < IDLE_TIMEOUT
        });
    }

    fn put(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        while idle
            .front()
            .is_some_and(|c| idle.len() >= MAX_IDLE || now.duration_since(c.since) >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        idle.push_back(Idle { sender, since: now });
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

/// An answer's body that gives its connection back to the pool once read to its end. Dropped
/// before that, the connection closes with it (hyper cannot reuse a connection whose answer was
/// not read).
struct Returning {
    body: Incoming,
    ended: bool,
    back: Option<(Arc<Shared>, SendRequest<Body>)>,
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
        let Some((shared, mut sender)) = self.back.take() else {
            return;
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

    /// A backend that answers `/n` with the caller's address and `/big` with 64 KB, and counts
    /// requests.
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
        let pool = Pool::new(&at).expect("pool");
        let mut peers = HashSet::new();
        for _ in 0..20 {
            let res = pool.send(get("/n", &at)).await.expect("answer");
            assert_eq!(res.status(), 200);
            peers.insert(text(res).await);
            assert_eq!(
                pool.idle(),
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
        let pool = Pool::new(&at).expect("pool");
        let head = http::Request::head("/n")
            .header(http::header::HOST, at.as_str())
            .body(Body::empty())
            .expect("request");
        let res = pool.send(head).await.expect("answer");
        assert_eq!(res.status(), 200);
        drop(res);
        assert_eq!(
            pool.idle(),
            1,
            "the connection of a HEAD answer was not kept"
        );
        let after = text(pool.send(get("/n", &at)).await.expect("answer")).await;
        assert!(after.starts_with("127.0.0.1:"), "{after}");
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn calls_at_once_get_connections_of_their_own_and_all_come_back() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at).expect("pool");
        let answers = futures::future::join_all((0..8).map(|_| pool.send(get("/big", &at)))).await;
        for res in answers {
            assert_eq!(text(res.expect("answer")).await.len(), 64 * 1024);
        }
        assert_eq!(pool.idle(), 8);
    }

    #[tokio::test]
    async fn an_answer_dropped_unread_takes_its_connection_with_it() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at).expect("pool");
        let res = pool.send(get("/big", &at)).await.expect("answer");
        let mut body = res.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.is_data());
        drop(body);
        assert_eq!(
            pool.idle(),
            0,
            "a connection with an answer half read was kept"
        );
        let res = pool.send(get("/n", &at)).await.expect("answer");
        assert_eq!(res.status(), 200);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closes_is_not_used_again() {
        let (at, _) = backend().await;
        let pool = Pool::new(&at).expect("pool");
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
        let pool = Pool::new(&at).expect("pool");
        let _ = text(pool.send(get("/n", &at)).await.expect("answer")).await;
        pool.shared.evict(Instant::now());
        assert_eq!(pool.idle(), 1, "a fresh idle connection was closed");
        pool.shared.evict(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(pool.idle(), 0);
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
        let pool = Pool::new(&at).expect("pool");
        let err = pool.send(get("/n", &at)).await.expect_err("no backend");
        assert!(matches!(err, PassError::Connect(_)), "{err:?}");
    }
}
