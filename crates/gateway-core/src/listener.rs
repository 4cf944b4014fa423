//! The listener: accepting connections, TLS, and the bounds every connection lives under, built on
//! hyper-util's HTTP/1.1 and HTTP/2 server as Envoy's edge-hardening guide asks.
//!
//! - A request head must arrive within `server.header_read_timeout_ms` (slow-header attacks) and
//!   fit in `server.max_header_bytes` and `server.max_headers` (431 beyond).
//! - At most `server.max_connections` connections are served at once; further ones wait in the
//!   kernel's backlog instead of costing memory.
//! - HTTP/2: `server.http2_max_concurrent_streams` per connection, a bounded header list, and
//!   hyper's caps on streams a client resets before they are answered (the "rapid reset" attack,
//!   CVE-2023-44487) and on streams it makes the server reset.
//! - TLS through rustls with the aws-lc-rs provider, HTTP/2 by ALPN, optionally verifying client
//!   certificates; a handshake must finish within the header timeout too.
//!
//! Graceful shutdown: stop accepting, let each connection finish its in-flight requests, close
//! what is left after the grace period.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower::util::Oneshot;

use crate::app::App;
use crate::config::{ConfigError, ServerConfig, TlsConfig};

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
    max_header_bytes: usize,
    max_headers: usize,
    max_connections: usize,
    http2_max_streams: u32,
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
            max_header_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers,
            max_connections: cfg.max_connections,
            http2_max_streams: cfg.http2_max_concurrent_streams,
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

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.max_header_bytes)
            .max_headers(self.max_headers);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.http2_max_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .max_local_error_reset_streams(MAX_LOCAL_RESETS)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        b
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
    let builder = Arc::new(conns.builder());
    let graceful = GracefulShutdown::new();
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
            builder: builder.clone(),
            service: PeerService {
                app: app.clone(),
                peer,
            },
            watcher: graceful.watcher(),
            _slot: slot,
        };
        // Each transport's task is sized for its own state: a plain connection's does not carry
        // a TLS session's room.
        match &conns.tls {
            None => tokio::spawn(conn.serve(TokioIo::new(tcp))),
            Some(tls) => tokio::spawn(conn.serve_tls(tls.clone(), tcp, conns.header_read_timeout)),
        };
    }
    drop(listener);
    on_drain();
    if tokio::time::timeout(conns.grace, graceful.shutdown())
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
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: PeerService,
    watcher: Watcher,
    /// The connection's place under `server.max_connections`, given back when it closes.
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    /// Serves HTTP/1.1 or HTTP/2 (by its preface) on `io` until the client closes it or the
    /// shutdown's grace period ends.
    async fn serve<I>(self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let peer = self.service.peer;
        let conn = self
            .builder
            .serve_connection_with_upgrades(io, self.service);
        if let Err(err) = self.watcher.watch(conn).await {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
        }
    }

    /// The TLS handshake, within `handshake`, then [`Connection::serve`] on the session.
    async fn serve_tls(self, tls: TlsAcceptor, tcp: TcpStream, handshake: Duration) {
        let peer = self.service.peer;
        match tokio::time::timeout(handshake, tls.accept(tcp)).await {
            Ok(Ok(stream)) => self.serve(TokioIo::new(stream)).await,
            Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
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
