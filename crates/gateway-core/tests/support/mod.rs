//! Fixtures for the auth tests: a JWKS server that counts its fetches and can switch keys, slow
//! down or fail on demand, and a gateway serving one authenticated route, both on port 0.

#![allow(dead_code)]

pub mod keys;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gateway_core::auth::PrincipalKind;
use gateway_core::config::{Config, IssuerConfig, PolicyConfig};
use gateway_core::{Gateway, Principal};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The audience every test gateway accepts.
pub const AUDIENCE: &str = "bff-test";

#[derive(Default)]
struct JwksState {
    keys: Mutex<Vec<Value>>,
    failing: AtomicBool,
    delay_ms: AtomicU64,
    fetches: AtomicUsize,
    stray: AtomicUsize,
}

/// A JWKS endpoint at `/jwks.json`; every other path counts as a stray hit (what a gateway
/// following a token's `jku` or `x5u` would cause).
pub struct JwksServer {
    /// `http://addr`.
    pub base: String,
    state: Arc<JwksState>,
    stop: CancellationToken,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl JwksServer {
    /// Starts one serving an empty key set.
    pub async fn start() -> Self {
        let state = Arc::new(JwksState::default());
        let app = Router::new()
            .route("/jwks.json", get(serve_jwks))
            .fallback(stray)
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind jwks");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Self { base, state, stop }
    }

    /// The JWKS URL.
    pub fn url(&self) -> String {
        format!("{}/jwks.json", self.base)
    }

    /// A URL on this server that is not the JWKS (for `jku`, `x5u`, ...).
    pub fn stray_url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// Publishes these keys from now on.
    pub fn publish(&self, keys: &[&keys::TestKey]) {
        self.publish_raw(keys.iter().map(|k| k.jwk.clone()).collect());
    }

    /// Publishes these JWKs, as given.
    pub fn publish_raw(&self, keys: Vec<Value>) {
        *self.state.keys.lock().expect("keys") = keys;
    }

    /// Answers 503 from now on (or again the keys).
    pub fn fail(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Delays every answer by `ms`.
    pub fn delay(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Requests for the JWKS so far, failed ones included.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Requests for anything else so far.
    pub fn stray_hits(&self) -> usize {
        self.state.stray.load(Ordering::SeqCst)
    }
}

async fn serve_jwks(State(s): State<Arc<JwksState>>) -> Response {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if s.failing.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys = s.keys.lock().expect("keys").clone();
    Json(json!({ "keys": keys })).into_response()
}

async fn stray(State(s): State<Arc<JwksState>>) -> StatusCode {
    s.stray.fetch_add(1, Ordering::SeqCst);
    StatusCode::NOT_FOUND
}

/// An issuer whose keys come from `jwks_url`; no background refresh during a test unless asked.
pub fn jwks_issuer(issuer: &str, jwks_url: &str, cooldown_secs: u64) -> IssuerConfig {
    IssuerConfig {
        issuer: issuer.to_owned(),
        audiences: vec![AUDIENCE.to_owned()],
        jwks_url: Some(jwks_url.to_owned()),
        pem_file: None,
        pem_algorithm: None,
        hs256_secret: None,
        jwks_refresh_secs: 3600,
        jwks_cooldown_secs: cooldown_secs,
    }
}

/// An issuer with one PEM public key, written to a temporary file.
pub fn pem_issuer(issuer: &str, key: &keys::TestKey) -> IssuerConfig {
    let path = std::env::temp_dir().join(format!(
        "gateway-auth-{}-{}.pem",
        std::process::id(),
        keys::b64(issuer)
    ));
    std::fs::write(&path, &key.pem).expect("write PEM");
    IssuerConfig {
        jwks_url: None,
        pem_file: Some(path.display().to_string()),
        pem_algorithm: Some(format!("{:?}", key.alg)),
        ..jwks_issuer(issuer, "http://unused", 30)
    }
}

/// A development issuer with an HS256 secret.
pub fn hmac_issuer(issuer: &str, secret: &str) -> IssuerConfig {
    IssuerConfig {
        jwks_url: None,
        hs256_secret: Some(secret.to_owned()),
        ..jwks_issuer(issuer, "http://unused", 30)
    }
}

/// A gateway serving `GET /whoami` (the principal as JSON) behind the whole pipeline.
pub struct TestGateway {
    /// `http://addr`.
    pub url: String,
    /// An HTTP/2 (prior knowledge) client, so concurrent calls really are concurrent.
    pub http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a client saw.
pub struct Seen {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body, as text.
    pub body: String,
}

impl Seen {
    /// The body as JSON (`null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The problem `code`, if any.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl TestGateway {
    /// Starts one with `issuers` after `tweak` adjusts the rest.
    pub async fn start(issuers: Vec<IssuerConfig>, tweak: impl FnOnce(&mut Config<()>)) -> Self {
        let mut cfg = Config::<()>::local(0, AUDIENCE);
        cfg.auth.issuers = issuers;
        // Limits are not what these tests are about.
        cfg.ratelimit
            .policies
            .insert("default".into(), PolicyConfig::per_minute(1_000_000));
        tweak(&mut cfg);
        cfg.validate().expect("valid test configuration");
        let gw = Gateway::builder("bff-test", cfg).build().expect("gateway");
        let app = gw.router(Router::new().route("/whoami", get(whoami)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        tokio::spawn(gateway_core::server::serve(
            app,
            listener,
            Duration::from_secs(1),
            stop.clone().cancelled_owned(),
            || {},
        ));
        let http = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("client");
        Self { url, http, stop }
    }

    /// `GET /whoami` with `Authorization: Bearer <token>`.
    pub async fn call(&self, token: &str) -> Seen {
        self.call_with(&[("authorization", &format!("Bearer {token}"))])
            .await
    }

    /// `GET /whoami` with these headers.
    pub async fn call_with(&self, headers: &[(&str, &str)]) -> Seen {
        let mut req = self.http.get(format!("{}/whoami", self.url));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let res = req.send().await.expect("request");
        Seen {
            status: res.status(),
            headers: res.headers().clone(),
            body: res.text().await.expect("body"),
        }
    }
}

/// The principal as the handler got it, and how many values the request's extensions hold.
async fn whoami(p: Principal, extensions: axum::http::Extensions) -> Json<Value> {
    let version = match &p.kind {
        PrincipalKind::User => None,
        PrincipalKind::Partner { version } => Some(version.as_deref().unwrap_or("")),
    };
    Json(json!({
        "sub": &*p.subject, "scopes": &*p.scopes, "tier": p.tier.as_deref(), "partner_version": version,
        "extensions": extensions.len(),
    }))
}
