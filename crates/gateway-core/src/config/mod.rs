//! Configuration: defaults < TOML file < `BFF_*` environment variables (`__` nests).
//!
//! Every struct refuses unknown keys, so a typo is an error that names the key rather than a setting
//! silently ignored. [`Config::validate`] then checks values and names the key and the bad value, e.g.
//! `ratelimit.policies.default.burst must be > 0, got 0`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Default bound on a request body, in bytes.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 1024 * 1024;
/// Default bound on a whole request, in milliseconds.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Default time given to in-flight requests after SIGTERM, in milliseconds.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
/// Default JWT clock leeway, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Default JWKS refresh interval, in seconds.
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 300;
/// Default minimum time between two JWKS fetches caused by unknown `kid`s, in seconds.
pub const DEFAULT_JWKS_COOLDOWN_SECS: u64 = 30;
/// Default upper bound on a bearer token's length, checked before any decoding.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default bound on the verified tokens remembered so a repeated token skips signature work.
pub const DEFAULT_VERIFIED_CACHE_MAX_ENTRIES: u64 = 10_000;
/// Largest clock leeway accepted: beyond it `exp` would stop meaning much.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// Most runtime threads `server.workers` may ask for.
pub const MAX_WORKERS: usize = 1024;
/// Shortest HS256 secret accepted: RFC 7518 section 3.2 asks for at least the hash's 256 bits.
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Default bound on one rate-limit decision against a shared store, in milliseconds.
pub const DEFAULT_DECISION_TIMEOUT_MS: u64 = 50;
/// Default bound on the number of keys the in-memory limiter tracks.
pub const DEFAULT_LIMITER_MAX_KEYS: usize = 1_000_000;
/// Default bound on the number of responses the in-memory cache holds.
pub const DEFAULT_CACHE_MAX_ENTRIES: u64 = 100_000;
/// Default bound on the bytes the in-memory cache holds: 64 MiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default bound on the bytes in-memory idempotency records hold: 64 MiB.
pub const DEFAULT_IDEMPOTENCY_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default bound on one cache operation against a shared store, in milliseconds.
pub const DEFAULT_CACHE_TIMEOUT_MS: u64 = 50;
/// Default per-call upstream timeout, in milliseconds.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 1_000;
/// Default consecutive failures that open an upstream's circuit.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// Default time an open circuit stays open, in milliseconds.
pub const DEFAULT_BREAKER_OPEN_MS: u64 = 10_000;
/// Default label of a traffic split's alternate version.
pub const DEFAULT_SPLIT_NAME: &str = "canary";
/// The primary version's label in metrics and logs; a split may not take it.
pub const PRIMARY_VARIANT: &str = "primary";
/// Default Redis connection pool size.
pub const DEFAULT_REDIS_POOL_SIZE: usize = 4;
/// Default bound on waiting for, creating or recycling a Redis connection, in milliseconds.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 200;

/// Where devstack serves its identity provider, the base of the built-in defaults.
pub const DEV_IDP_URL: &str = "http://127.0.0.1:8090";
/// Where devstack serves the demo gRPC backends.
pub const DEV_GRPC_URL: &str = "http://127.0.0.1:50051";
/// Where devstack serves the demo REST backends.
pub const DEV_REST_URL: &str = "http://127.0.0.1:9001";

/// The whole configuration of one BFF. `C` is the BFF's own `[client]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config<C> {
    /// Listener, limits and shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// How clients authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Shared state. When `redis.url` (or `redis.cluster_urls`) is set, limits, cache, API keys and
    /// idempotency records live in Redis.
    #[serde(default)]
    pub redis: RedisConfig,
    /// Rate-limit policies and where they apply.
    #[serde(default)]
    pub ratelimit: RateLimitConfig,
    /// Response cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Idempotency records of writes (`Idempotency-Key`).
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    /// Backends this BFF calls, by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Pass-through routes: path prefixes proxied to one upstream.
    #[serde(default)]
    pub proxy: Vec<ProxyConfig>,
    /// Settings only this BFF understands.
    #[serde(default)]
    pub client: C,
}

impl<C: Default> Config<C> {
    /// The built-in defaults of a BFF on `port`: JWTs from devstack's identity provider for
    /// `audience`, 100 requests a minute per principal, in-memory state, no upstreams yet.
    pub fn local(port: u16, audience: &str) -> Self {
        Self {
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], port)),
                ..ServerConfig::default()
            },
            telemetry: TelemetryConfig::default(),
            auth: AuthConfig {
                issuers: vec![IssuerConfig {
                    issuer: DEV_IDP_URL.to_owned(),
                    audiences: vec![audience.to_owned()],
                    jwks_url: Some(format!("{DEV_IDP_URL}/.well-known/jwks.json")),
                    pem_file: None,
                    pem_algorithm: None,
                    hs256_secret: None,
                    jwks_refresh_secs: DEFAULT_JWKS_REFRESH_SECS,
                    jwks_cooldown_secs: DEFAULT_JWKS_COOLDOWN_SECS,
                }],
                ..AuthConfig::default()
            },
            redis: RedisConfig::default(),
            ratelimit: RateLimitConfig::default(),
            cache: CacheConfig::default(),
            idempotency: IdempotencyConfig::default(),
            upstreams: BTreeMap::new(),
            proxy: Vec::new(),
            client: C::default(),
        }
    }

    /// Re-points the built-in devstack addresses (identity provider, gRPC and REST backends) at
    /// where they actually run; other addresses are left alone.
    pub fn point_at(&mut self, idp: &str, grpc: &str, rest: &str) {
        for iss in &mut self.auth.issuers {
            iss.issuer = iss.issuer.replace(DEV_IDP_URL, idp);
            iss.jwks_url = iss.jwks_url.as_ref().map(|u| u.replace(DEV_IDP_URL, idp));
        }
        for up in self.upstreams.values_mut() {
            for url in std::iter::once(&mut up.url).chain(up.instances.iter_mut()) {
                *url = url.replace(DEV_GRPC_URL, grpc).replace(DEV_REST_URL, rest);
            }
        }
    }

    /// Adds an upstream at `url` with a per-call timeout.
    pub fn upstream(mut self, name: &str, url: &str, timeout_ms: u64) -> Self {
        self.upstreams.insert(
            name.to_owned(),
            UpstreamConfig {
                timeout_ms,
                ..UpstreamConfig::at(url)
            },
        );
        self
    }
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (413 beyond).
    pub body_limit_bytes: usize,
    /// Longest a whole request may take, in milliseconds.
    pub request_timeout_ms: u64,
    /// After SIGTERM, how long in-flight requests may take to finish, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Longest request target (path and query) accepted, in bytes (414 beyond).
    pub max_uri_bytes: usize,
    /// Largest request head (request line and headers) accepted, in bytes (431 beyond); at
    /// least 8192.
    pub max_header_bytes: usize,
    /// Most request headers accepted (431 beyond).
    pub max_headers: usize,
    /// How long a client may take to send a request's head, in milliseconds; the connection is
    /// closed after it (slow-header attacks).
    pub header_read_timeout_ms: u64,
    /// How long a client may pause while sending a body, in milliseconds (408 after it).
    pub body_read_timeout_ms: u64,
    /// How long a write to a client may wait for the client to take any of it, in milliseconds;
    /// the connection is closed after it (slow-read attacks; nginx's `send_timeout`). An HTTP/2
    /// answer may wait as long for the client's flow-control window; its stream is reset after it.
    pub send_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Threads that run requests: 0 for `TOKIO_WORKER_THREADS` when set, otherwise one per CPU
    /// the process may use. One runs the whole gateway on a single-threaded runtime (no work
    /// stealing, no cross-thread wake-ups); more share the work by stealing it.
    pub workers: usize,
    /// HTTP/2 streams a client may open at once on one connection.
    pub http2_max_concurrent_streams: u32,
    /// Requests one connection may carry; 0 for no cap (nginx's `keepalive_requests`, Envoy's
    /// `max_requests_per_connection`). HTTP/1.1's last is answered with `Connection: close`;
    /// HTTP/2's connection is sent a GOAWAY once its last has begun, and the requests it has
    /// begun get `shutdown_grace_ms` to finish.
    pub max_requests_per_connection: u64,
    /// Longest a connection stays open, in milliseconds; 0 for no bound (nginx's
    /// `keepalive_time`, Envoy's `max_connection_duration`). Each connection's bound is drawn
    /// between 90% and 100% of this, so that connections opened together do not all close
    /// together. After it the connection closes as on shutdown: at once when idle, otherwise
    /// after the requests in flight, which get `shutdown_grace_ms` to finish.
    pub max_connection_age_ms: u64,
    /// TLS: serve HTTPS (HTTP/2 by ALPN) with this certificate and key.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM file of CAs whose client certificates are accepted (mutual TLS); none when absent.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: refuse clients without a certificate (`true`), or accept them
    /// and verify only the certificates presented (`false`).
    #[serde(default = "yes")]
    pub client_cert_required: bool,
}

fn yes() -> bool {
    true
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            trusted_proxies: Vec::new(),
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            send_timeout_ms: 60_000,
            max_connections: 10_000,
            workers: 0,
            http2_max_concurrent_streams: 100,
            max_requests_per_connection: 0,
            max_connection_age_ms: 0,
            tls: None,
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `pretty` for people, `json` for log pipelines.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `info,gateway_core=debug`; `RUST_LOG` overrides it.
    pub log_level: String,
    /// OTLP/gRPC endpoint of an OpenTelemetry collector (`http://otel-collector:4317`): export a
    /// span per request there. Off when absent.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0 to 1; a request that continues a trace follows its
    /// caller's decision.
    pub trace_sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_level: "info".to_owned(),
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, coloured when a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `jwt` (user-facing BFFs) or `api_key` (partner BFF).
    pub mode: AuthMode,
    /// Trusted token issuers.
    pub issuers: Vec<IssuerConfig>,
    /// Clock leeway for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Longest bearer token accepted, in bytes, checked before any decoding.
    pub max_token_bytes: usize,
    /// Claim that carries the principal's tier (for rate-limit policies).
    pub tier_claim: String,
    /// API keys known from the configuration file (in addition to the shared store).
    pub api_keys: Vec<ApiKeyConfig>,
    /// Verified tokens remembered until their `exp`, so a repeated token skips signature work;
    /// 0 disables the cache.
    pub verified_cache_max_entries: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Jwt,
            issuers: Vec::new(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            tier_claim: "tier".to_owned(),
            api_keys: Vec::new(),
            verified_cache_max_entries: DEFAULT_VERIFIED_CACHE_MAX_ENTRIES,
        }
    }
}

/// How a BFF authenticates its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// JWT bearer tokens.
    Jwt,
    /// API keys in `Authorization: Bearer` or `X-Api-Key`.
    ApiKey,
}

/// One trusted issuer under `[[auth.issuers]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` claim value.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Where the issuer publishes its keys.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A PEM public key, instead of a JWKS URL.
    #[serde(default)]
    pub pem_file: Option<String>,
    /// Algorithm of the PEM key (`RS256`, `PS256`, `ES256`, `EdDSA`).
    #[serde(default)]
    pub pem_algorithm: Option<String>,
    /// Development only: an HS256 shared secret (at least 32 bytes) instead of public keys. An
    /// issuer with a secret accepts HS256 and nothing else; one with public keys never HS256.
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// Seconds between background refreshes of the JWKS.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_secs: u64,
    /// Minimum seconds between fetches caused by an unknown `kid`.
    #[serde(default = "default_jwks_cooldown")]
    pub jwks_cooldown_secs: u64,
}

impl IssuerConfig {
    /// A development issuer of `audiences` that signs with an HS256 `secret`.
    pub fn hs256(issuer: &str, audiences: &[&str], secret: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audiences: audiences.iter().map(|&a| a.to_owned()).collect(),
            jwks_url: None,
            pem_file: None,
            pem_algorithm: None,
            hs256_secret: Some(secret.to_owned()),
            jwks_refresh_secs: DEFAULT_JWKS_REFRESH_SECS,
            jwks_cooldown_secs: DEFAULT_JWKS_COOLDOWN_SECS,
        }
    }
}

fn default_jwks_refresh() -> u64 {
    DEFAULT_JWKS_REFRESH_SECS
}
fn default_jwks_cooldown() -> u64 {
    DEFAULT_JWKS_COOLDOWN_SECS
}

/// One API key under `[[auth.api_keys]]`: only its SHA-256 hash is ever stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// The partner the key belongs to.
    pub partner: String,
    /// Rate-limit tier.
    #[serde(default = "default_tier")]
    pub tier: String,
    /// API version pinned to the key (`YYYY-MM-DD`); the current version when absent.
    #[serde(default)]
    pub version: Option<String>,
}

fn default_tier() -> String {
    "standard".to_owned()
}

/// `[redis]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`. When set, every shared store uses Redis.
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster (`redis://host:port` each), instead of `url`. The others are
    /// learnt from the cluster. In the environment, a comma-separated list is accepted too.
    #[serde(deserialize_with = "list_or_commas")]
    pub cluster_urls: Vec<String>,
    /// Prefix of every key this gateway writes, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Connections the pool may hold. Operations share one multiplexed connection and go back to
    /// the pool only after a failure.
    pub pool_size: usize,
    /// Bound on waiting for, creating or recycling a connection, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            cluster_urls: Vec::new(),
            key_prefix: "bff".to_owned(),
            pool_size: DEFAULT_REDIS_POOL_SIZE,
            timeout_ms: DEFAULT_REDIS_TIMEOUT_MS,
        }
    }
}

/// A list of strings, or one string of comma-separated items (as an environment variable is
/// easiest written).
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCommas {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match ListOrCommas::deserialize(d)? {
        ListOrCommas::List(items) => items,
        ListOrCommas::Commas(s) => s
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// `[ratelimit]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Named policies; `default` applies where nothing else does.
    pub policies: BTreeMap<String, PolicyConfig>,
    /// Policy by principal tier (`tier -> policy`).
    pub tiers: BTreeMap<String, String>,
    /// Policy by route path as declared (`"/api/home-feed" -> policy`); wins over the tier.
    pub routes: BTreeMap<String, String>,
    /// What to do when the shared store cannot answer.
    pub failure_mode: FailureMode,
    /// Gateways sharing the store; the local fallback admits `limit / instances`.
    pub instances: u32,
    /// Bound on one decision against the shared store, in milliseconds.
    pub decision_timeout_ms: u64,
    /// Bound on keys tracked in memory.
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            policies: BTreeMap::from([("default".to_owned(), PolicyConfig::per_minute(100))]),
            tiers: BTreeMap::new(),
            routes: BTreeMap::new(),
            failure_mode: FailureMode::FailOpenLocal,
            instances: 1,
            decision_timeout_ms: DEFAULT_DECISION_TIMEOUT_MS,
            max_keys: DEFAULT_LIMITER_MAX_KEYS,
        }
    }
}

/// One policy under `[ratelimit.policies.NAME]`: `limit` requests per `period_secs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `sliding_window` (at most `limit` in any `period_secs`) or `gcra` (a sustained rate of `limit`
    /// per `period_secs`, with up to `burst` back to back).
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Requests admitted per period.
    pub limit: u64,
    /// The period, in seconds.
    pub period_secs: u64,
    /// Requests admitted back to back; `limit` when absent.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Shrink this policy while an upstream the routes need has its circuit open.
    #[serde(default)]
    pub adaptive: Option<AdaptiveConfig>,
    /// What the limit is counted per: `subject` (the user or partner) or `client_ip`.
    #[serde(default)]
    pub key: LimitKey,
    /// A fixed quota per longer window on top of the rate (a partner's daily quota).
    #[serde(default)]
    pub quota: Option<QuotaConfig>,
}

/// `[ratelimit.policies.NAME.quota]`: at most `limit` requests per `window_secs`, windows aligned
/// to the Unix epoch (a daily quota resets at midnight UTC).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Requests per window.
    pub limit: u64,
    /// The window, in seconds.
    #[serde(default = "default_quota_window")]
    pub window_secs: u64,
}

fn default_quota_window() -> u64 {
    86_400
}

/// What a policy counts requests per.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    /// The authenticated principal (user id or partner id).
    #[default]
    Subject,
    /// The client's address, from the trusted-proxy chain.
    ClientIp,
}

/// `[ratelimit.policies.NAME.adaptive]`: while any of `upstreams` has an open (or probing)
/// circuit, the policy admits `limit * factor` (and `burst * factor`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Upstreams whose breakers shrink the policy.
    pub upstreams: Vec<String>,
    /// The factor, in (0, 1].
    pub factor: f64,
}

impl PolicyConfig {
    /// `limit` requests a minute, all of them at once if need be.
    pub fn per_minute(limit: u64) -> Self {
        Self {
            algorithm: Algorithm::SlidingWindow,
            limit,
            period_secs: 60,
            burst: None,
            adaptive: None,
            key: LimitKey::Subject,
            quota: None,
        }
    }
}

/// How a policy counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// At most `limit` requests in any sliding `period`.
    #[default]
    SlidingWindow,
    /// The generic cell rate algorithm: a sustained rate with a burst.
    Gcra,
}

/// Behaviour when the shared rate-limit store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Decide locally at `limit / instances` until the store is back.
    FailOpenLocal,
    /// Refuse with 503 until the store is back.
    FailClosed,
    /// Admit everything until the store is back.
    FailOpen,
}

/// `[cache]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Turn the response cache off entirely.
    pub enabled: bool,
    /// Bound on entries held in memory.
    pub max_entries: u64,
    /// Bound on the bytes held in memory: each entry's body and key, and
    /// [`crate::cache::ENTRY_OVERHEAD`] bytes of bookkeeping.
    pub max_bytes: u64,
    /// Bound on one operation against the shared store, in milliseconds.
    pub timeout_ms: u64,
    /// Time-to-live overrides by route path as declared, in seconds.
    pub ttl_secs: BTreeMap<String, u64>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: DEFAULT_CACHE_MAX_ENTRIES,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            timeout_ms: DEFAULT_CACHE_TIMEOUT_MS,
            ttl_secs: BTreeMap::new(),
        }
    }
}

/// One `[[proxy]]`: requests at `prefix` or below it, forwarded to an upstream as they are
/// (streamed both ways), after authentication, scopes and rate limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Path prefix, matched on segment boundaries: `/api/catalog` takes `/api/catalog` and
    /// `/api/catalog/...`, not `/api/catalogue`, ahead of the BFF's own routes; of two nested
    /// prefixes, the longer takes its paths.
    pub prefix: String,
    /// Name of the `[upstreams.NAME]` (HTTP) that answers.
    pub upstream: String,
    /// Replaces `prefix` in the forwarded path; the prefix is kept when absent.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Scopes the caller must hold, all of them.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Methods forwarded; others answer 405.
    #[serde(default = "default_proxy_methods")]
    pub methods: Vec<String>,
}

fn default_proxy_methods() -> Vec<String> {
    vec!["GET".to_owned(), "HEAD".to_owned()]
}

/// `[idempotency]`: how writes sent with an `Idempotency-Key` are remembered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// How long a completed write's answer is kept for replay, in seconds.
    pub ttl_secs: u64,
    /// How long a write in progress holds its key, in milliseconds. A gateway that dies mid-write
    /// frees the key after this.
    pub lock_ms: u64,
    /// How long a concurrent duplicate waits for the first request's answer before it is refused
    /// with 409, in milliseconds.
    pub wait_ms: u64,
    /// Bound on records held in memory (without Redis).
    pub max_entries: u64,
    /// Bound on the bytes records hold in memory (without Redis): each record as JSON, as it is
    /// held, its key and [`crate::cache::ENTRY_OVERHEAD`] bytes of bookkeeping.
    pub max_bytes: u64,
    /// Bound on one operation against the shared store, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 86_400,
            lock_ms: 30_000,
            wait_ms: 5_000,
            max_entries: 100_000,
            max_bytes: DEFAULT_IDEMPOTENCY_MAX_BYTES,
            timeout_ms: 250,
        }
    }
}

/// One backend under `[upstreams.NAME]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL, e.g. `http://127.0.0.1:50051` (gRPC) or `http://127.0.0.1:9001` (REST).
    pub url: String,
    /// Per-call timeout, in milliseconds.
    #[serde(default = "default_upstream_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failures (timeouts, errors) that open the circuit breaker; 0 disables it.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before one probe may go through, in milliseconds.
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// Share of failures among the last 20 calls that opens the circuit; 0 disables this trigger.
    #[serde(default = "default_breaker_error_rate")]
    pub breaker_error_rate: f64,
    /// More instances of the same upstream, besides `url`.
    #[serde(default)]
    pub instances: Vec<String>,
    /// The HTTP version of REST and pass-through calls: `http1`, or `http2` for a backend that
    /// speaks HTTP/2 (cleartext with prior knowledge to `http://`), whose calls in flight then
    /// share connections. gRPC upstreams speak HTTP/2 whatever this says.
    #[serde(default)]
    pub protocol: crate::upstream::Protocol,
    /// How calls spread over the instances: `round_robin` or `power_of_two_choices`.
    #[serde(default)]
    pub balance: crate::upstream::balance::Balance,
    /// How the instances are found: `static` (the URLs as written) or `dns` (every address each
    /// URL's host resolves to, resolved again every `dns_refresh_ms`).
    #[serde(default)]
    pub discovery: crate::upstream::discovery::Discovery,
    /// Time between resolutions with `discovery = "dns"`, in milliseconds.
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh_ms: u64,
    /// Time between active health checks of each instance (with several instances, or a
    /// `health_path`), in milliseconds.
    #[serde(default = "default_health_check_interval")]
    pub health_check_interval_ms: u64,
    /// `GET` path that answers 2xx when an instance is healthy; without it a TCP connection is
    /// the check.
    #[serde(default)]
    pub health_path: Option<String>,
    /// Hedge idempotent calls: one that has not answered after this many milliseconds is sent to
    /// a second instance too, and the first answer wins. Off when absent; needs several instances.
    #[serde(default)]
    pub hedge_after_ms: Option<u64>,
    /// Calls in flight at most; more are shed at once (`overloaded`). 0: no cap. Also the idle
    /// connections each instance keeps, at most (1,024 with no cap).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    /// HTTP/1.1 connections each instance holds open for pass-through calls to `http://`, at
    /// most; a call that finds none idle and this many open waits for one, within its timeout.
    /// 0: no cap (then `max_concurrent` bounds them).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Retries of a failed idempotent call (never of writes, never after a timeout).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Retries allowed on top of calls, as a percentage of calls over the last 10 s.
    #[serde(default = "default_retry_budget_percent")]
    pub retry_budget_percent: u32,
    /// Retries allowed per second whatever the call volume.
    #[serde(default = "default_retry_min_per_sec")]
    pub retry_min_per_sec: u32,
    /// A traffic experiment: a share of principals goes to an alternate version. Off when absent.
    #[serde(default)]
    pub split: Option<SplitConfig>,
    /// Injected latency and errors, for resilience drills. Off when absent.
    #[serde(default)]
    pub fault: Option<FaultConfig>,
}

/// `[upstreams.NAME.split]`: a traffic experiment (an A/B test or a canary). The calls of
/// `percent` of the principals go to an alternate version of the upstream, always the same
/// principals: a principal's share is a stable hash of the variant's `name` and its subject.
/// Anonymous calls always go to the primary version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Base URL of the alternate version.
    pub url: String,
    /// More instances of the alternate version, besides `url`.
    #[serde(default)]
    pub instances: Vec<String>,
    /// Share of principals sent to the alternate version, in percent: 0 to 100, fractions
    /// allowed (`0.5`).
    pub percent: f64,
    /// The variant's label in metrics and logs. Splits sharing a name pick the same principals
    /// (at equal percentages), so an experiment across several upstreams sees one cohort.
    #[serde(default = "default_split_name")]
    pub name: String,
}

fn default_split_name() -> String {
    DEFAULT_SPLIT_NAME.to_owned()
}

/// `[upstreams.NAME.fault]`: injected faults, for resilience drills. An injected error is an
/// upstream failure like any other (breaker, retries, partial answers); an injected delay comes
/// out of the call's timeout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Latency added to the delayed calls, in milliseconds.
    pub delay_ms: u64,
    /// Share of calls delayed, in percent (0 to 100).
    pub delay_percent: f64,
    /// Share of calls failed without reaching the upstream, in percent (0 to 100).
    pub error_percent: f64,
}

fn default_breaker_error_rate() -> f64 {
    0.5
}
fn default_dns_refresh() -> u64 {
    5_000
}
fn default_health_check_interval() -> u64 {
    1_000
}
fn default_max_concurrent() -> u32 {
    1024
}
/// A quarter of the calls in flight: a backend answering in 20 ms still takes 12,800 calls a
/// second over them, and a thousand client connections cost the gateway a quarter of the
/// backend connections' memory they would without it (BENCHMARKS.md).
fn default_max_connections() -> u32 {
    256
}
fn default_retries() -> u32 {
    2
}
fn default_retry_budget_percent() -> u32 {
    20
}
fn default_retry_min_per_sec() -> u32 {
    10
}

fn default_upstream_timeout() -> u64 {
    DEFAULT_UPSTREAM_TIMEOUT_MS
}
fn default_breaker_failures() -> u32 {
    DEFAULT_BREAKER_FAILURES
}
fn default_breaker_open_ms() -> u64 {
    DEFAULT_BREAKER_OPEN_MS
}

impl UpstreamConfig {
    /// An upstream at `url` with the default timeout and breaker.
    pub fn at(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout_ms: DEFAULT_UPSTREAM_TIMEOUT_MS,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_open_ms: DEFAULT_BREAKER_OPEN_MS,
            breaker_error_rate: default_breaker_error_rate(),
            instances: Vec::new(),
            protocol: crate::upstream::Protocol::Http1,
            balance: crate::upstream::balance::Balance::RoundRobin,
            discovery: crate::upstream::discovery::Discovery::Static,
            dns_refresh_ms: default_dns_refresh(),
            health_check_interval_ms: default_health_check_interval(),
            health_path: None,
            hedge_after_ms: None,
            max_concurrent: default_max_concurrent(),
            max_connections: default_max_connections(),
            retries: default_retries(),
            retry_budget_percent: default_retry_budget_percent(),
            retry_min_per_sec: default_retry_min_per_sec(),
            split: None,
            fault: None,
        }
    }
}

/// A configuration that could not be loaded or is invalid. The message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl<C> Config<C>
where
    C: Serialize + DeserializeOwned + Default,
{
    /// Layers `defaults` < the TOML `file` < `BFF_*` variables of `env`, then validates.
    ///
    /// Only variables with a `__` are read (`BFF_SERVER__LISTEN`), so unrelated `BFF_*` variables in
    /// the environment cannot break start-up, while a typo inside a section still fails loudly.
    pub fn load(defaults: &Self, file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(defaults));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "configuration file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(
            Env::prefixed("BFF_")
                .split("__")
                .filter(|key| key.as_str().contains('.')),
        );
        let cfg: Self = figment.extract().map_err(|e| ConfigError(describe(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value and names the key of the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: String, rule: &str, got: String| {
            Err(ConfigError(format!("{key} {rule}, got {got}")))
        };
        if self.server.body_limit_bytes == 0 {
            return bad("server.body_limit_bytes".into(), "must be > 0", "0".into());
        }
        for (i, cidr) in self.server.trusted_proxies.iter().enumerate() {
            if crate::edge::proxies::Cidr::parse(cidr).is_none() {
                return bad(
                    format!("server.trusted_proxies[{i}]"),
                    "must be an address or CIDR range",
                    format!("{cidr:?}"),
                );
            }
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !endpoint.starts_with("http://")
            && !endpoint.starts_with("https://")
        {
            return bad(
                "telemetry.otlp_endpoint".into(),
                "must be an http(s) URL",
                format!("{endpoint:?}"),
            );
        }
        if !(0.0..=1.0).contains(&self.telemetry.trace_sample_ratio) {
            return bad(
                "telemetry.trace_sample_ratio".into(),
                "must be between 0 and 1",
                self.telemetry.trace_sample_ratio.to_string(),
            );
        }
        if self.server.workers > MAX_WORKERS {
            return bad(
                "server.workers".into(),
                &format!("must be at most {MAX_WORKERS}"),
                self.server.workers.to_string(),
            );
        }
        if self.server.max_header_bytes < 8192 {
            return bad(
                "server.max_header_bytes".into(),
                "must be at least 8192",
                self.server.max_header_bytes.to_string(),
            );
        }
        for (key, value) in [
            ("server.max_headers", self.server.max_headers as u64),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
            ("server.send_timeout_ms", self.server.send_timeout_ms),
            ("server.max_connections", self.server.max_connections as u64),
            (
                "server.http2_max_concurrent_streams",
                u64::from(self.server.http2_max_concurrent_streams),
            ),
        ] {
            if value == 0 {
                return bad(key.into(), "must be > 0", "0".into());
            }
        }
        if let Some(tls) = &self.server.tls {
            let files = [
                ("server.tls.cert_file", Some(&tls.cert_file)),
                ("server.tls.key_file", Some(&tls.key_file)),
                ("server.tls.client_ca_file", tls.client_ca_file.as_ref()),
            ];
            for (key, file) in files {
                if let Some(f) = file
                    && !f.is_file()
                {
                    return bad(key.into(), "must be a readable file", format!("{f:?}"));
                }
            }
        }
        if self.server.request_timeout_ms == 0 {
            return bad(
                "server.request_timeout_ms".into(),
                "must be > 0",
                "0".into(),
            );
        }
        match self.auth.mode {
            AuthMode::Jwt if self.auth.issuers.is_empty() => {
                return bad(
                    "auth.issuers".into(),
                    "must name at least one issuer when auth.mode = \"jwt\"",
                    "none".into(),
                );
            }
            _ => {}
        }
        for (i, iss) in self.auth.issuers.iter().enumerate() {
            let key = format!("auth.issuers[{i}]");
            if iss.issuer.is_empty() {
                return bad(format!("{key}.issuer"), "must not be empty", "\"\"".into());
            }
            if self.auth.issuers[..i]
                .iter()
                .any(|o| o.issuer == iss.issuer)
            {
                return bad(
                    format!("{key}.issuer"),
                    "must be unique",
                    format!("{:?} twice", iss.issuer),
                );
            }
            if iss.audiences.is_empty() {
                return bad(format!("{key}.audiences"), "must not be empty", "[]".into());
            }
            if let Some(secret) = &iss.hs256_secret {
                // HMAC and public-key algorithms for one issuer is the classic key-confusion setup.
                if let Some(other) = [("jwks_url", &iss.jwks_url), ("pem_file", &iss.pem_file)]
                    .into_iter()
                    .find_map(|(name, v)| v.as_ref().map(|_| name))
                {
                    return bad(
                        format!("{key}.hs256_secret"),
                        "cannot be combined with jwks_url or pem_file (an issuer never mixes HMAC and public-key algorithms)",
                        format!("{other} as well"),
                    );
                }
                // Never echo the secret itself.
                if secret.len() < MIN_HS256_SECRET_BYTES {
                    return bad(
                        format!("{key}.hs256_secret"),
                        &format!("must be at least {MIN_HS256_SECRET_BYTES} bytes"),
                        format!("{} bytes", secret.len()),
                    );
                }
            }
            if let Some(alg) = &iss.pem_algorithm {
                if iss.pem_file.is_none() {
                    return bad(
                        format!("{key}.pem_algorithm"),
                        "only applies with pem_file",
                        format!("{alg:?}"),
                    );
                }
                if !crate::auth::jwt::is_public_key_algorithm(alg) {
                    return bad(
                        format!("{key}.pem_algorithm"),
                        "must be RS256, PS256, ES256 or EdDSA (HS256 takes hs256_secret)",
                        format!("{alg:?}"),
                    );
                }
            }
            match (&iss.jwks_url, &iss.pem_file) {
                (Some(_), Some(_)) => {
                    return bad(
                        key,
                        "must set exactly one of jwks_url, pem_file and hs256_secret",
                        "jwks_url and pem_file".into(),
                    );
                }
                (None, None) if iss.hs256_secret.is_none() => {
                    return bad(
                        key,
                        "must set exactly one of jwks_url, pem_file and hs256_secret",
                        "none".into(),
                    );
                }
                (Some(url), None)
                    if !url.starts_with("http://") && !url.starts_with("https://") =>
                {
                    return bad(
                        format!("{key}.jwks_url"),
                        "must be an http(s) URL",
                        format!("{url:?}"),
                    );
                }
                (None, Some(_)) if iss.pem_algorithm.is_none() => {
                    return bad(
                        format!("{key}.pem_algorithm"),
                        "must be set with pem_file",
                        "none".into(),
                    );
                }
                _ => {}
            }
            if iss.jwks_cooldown_secs == 0 {
                return bad(
                    format!("{key}.jwks_cooldown_secs"),
                    "must be > 0",
                    "0".into(),
                );
            }
        }
        if self.auth.leeway_secs > MAX_LEEWAY_SECS {
            return bad(
                "auth.leeway_secs".into(),
                &format!("must be <= {MAX_LEEWAY_SECS}"),
                self.auth.leeway_secs.to_string(),
            );
        }
        if self.auth.max_token_bytes < 64 {
            return bad(
                "auth.max_token_bytes".into(),
                "must be >= 64",
                self.auth.max_token_bytes.to_string(),
            );
        }
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(
                    format!("auth.api_keys[{i}].sha256"),
                    "must be 64 hex digits",
                    format!("{:?}", key.sha256),
                );
            }
        }
        if let Some(url) = &self.redis.url
            && !url.starts_with("redis://")
            && !url.starts_with("rediss://")
        {
            return bad(
                "redis.url".into(),
                "must start with redis:// or rediss://",
                format!("{url:?}"),
            );
        }
        if self.redis.url.is_some() && !self.redis.cluster_urls.is_empty() {
            return bad(
                "redis.cluster_urls".into(),
                "cannot be combined with redis.url (set one of them)",
                "both".into(),
            );
        }
        for (i, url) in self.redis.cluster_urls.iter().enumerate() {
            let key = format!("redis.cluster_urls[{i}]");
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                // Only the scheme: the rest may hold a password.
                let scheme = url.split_once("://").map_or("none", |(s, _)| s);
                return bad(
                    key,
                    "must start with redis:// or rediss://",
                    format!("scheme {scheme:?}"),
                );
            }
            match crate::store::redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                Err(e) => return bad(key, "is not a usable Redis URL", e.to_string()),
                Ok(info) if info.redis_settings().db() != 0 => {
                    return bad(
                        key,
                        "must not select a database: a cluster has only database 0",
                        info.redis_settings().db().to_string(),
                    );
                }
                Ok(_) => {}
            }
        }
        if !self.redis.cluster_urls.is_empty() && self.redis.key_prefix.contains(['{', '}']) {
            // A brace in the prefix would move the hash tag out of the id, splitting a rate and its
            // quota over two slots, which one script cannot update together.
            return bad(
                "redis.key_prefix".into(),
                "must not contain `{` or `}` with redis.cluster_urls",
                format!("{:?}", self.redis.key_prefix),
            );
        }
        if self.redis.pool_size == 0 {
            return bad("redis.pool_size".into(), "must be > 0", "0".into());
        }
        if !self.ratelimit.policies.contains_key("default") {
            return bad(
                "ratelimit.policies".into(),
                "must define a `default` policy",
                "none".into(),
            );
        }
        for (name, p) in &self.ratelimit.policies {
            let key = format!("ratelimit.policies.{name}");
            if p.limit == 0 {
                return bad(format!("{key}.limit"), "must be > 0", "0".into());
            }
            if p.period_secs == 0 {
                return bad(format!("{key}.period_secs"), "must be > 0", "0".into());
            }
            if p.burst == Some(0) {
                return bad(format!("{key}.burst"), "must be > 0", "0".into());
            }
            if let Some(q) = &p.quota {
                if q.limit == 0 {
                    return bad(format!("{key}.quota.limit"), "must be > 0", "0".into());
                }
                if q.window_secs == 0 {
                    return bad(
                        format!("{key}.quota.window_secs"),
                        "must be > 0",
                        "0".into(),
                    );
                }
            }
            if let Some(a) = &p.adaptive {
                if !(a.factor > 0.0 && a.factor <= 1.0) {
                    return bad(
                        format!("{key}.adaptive.factor"),
                        "must be in (0, 1]",
                        a.factor.to_string(),
                    );
                }
                if let Some(up) = a
                    .upstreams
                    .iter()
                    .find(|u| !self.upstreams.contains_key(*u))
                {
                    return bad(
                        format!("{key}.adaptive.upstreams"),
                        "must name configured upstreams",
                        format!("{up:?}"),
                    );
                }
            }
            if let (Some(burst), Algorithm::SlidingWindow) = (p.burst, p.algorithm) {
                return bad(
                    format!("{key}.burst"),
                    "only applies with algorithm = \"gcra\"",
                    burst.to_string(),
                );
            }
        }
        for (section, map) in [
            ("ratelimit.tiers", &self.ratelimit.tiers),
            ("ratelimit.routes", &self.ratelimit.routes),
        ] {
            for (k, policy) in map {
                if !self.ratelimit.policies.contains_key(policy) {
                    return bad(
                        format!("{section}.{k:?}"),
                        "must name a policy in ratelimit.policies",
                        format!("{policy:?}"),
                    );
                }
            }
        }
        if self.ratelimit.instances == 0 {
            return bad("ratelimit.instances".into(), "must be > 0", "0".into());
        }
        if self.ratelimit.decision_timeout_ms == 0 {
            return bad(
                "ratelimit.decision_timeout_ms".into(),
                "must be > 0",
                "0".into(),
            );
        }
        if self.ratelimit.max_keys == 0 {
            return bad("ratelimit.max_keys".into(), "must be > 0", "0".into());
        }
        for (key, value) in [
            ("idempotency.ttl_secs", self.idempotency.ttl_secs),
            ("idempotency.lock_ms", self.idempotency.lock_ms),
            ("idempotency.wait_ms", self.idempotency.wait_ms),
            ("idempotency.max_entries", self.idempotency.max_entries),
            ("idempotency.max_bytes", self.idempotency.max_bytes),
            ("idempotency.timeout_ms", self.idempotency.timeout_ms),
        ] {
            if value == 0 {
                return bad(key.into(), "must be > 0", "0".into());
            }
        }
        if self.idempotency.wait_ms >= self.idempotency.lock_ms {
            return bad(
                "idempotency.wait_ms".into(),
                "must be shorter than idempotency.lock_ms",
                self.idempotency.wait_ms.to_string(),
            );
        }
        if self.cache.max_entries == 0 {
            return bad("cache.max_entries".into(), "must be > 0", "0".into());
        }
        if self.cache.max_bytes == 0 {
            return bad("cache.max_bytes".into(), "must be > 0", "0".into());
        }
        self.validate_proxies()?;
        for (name, up) in &self.upstreams {
            if !up.url.starts_with("http://") && !up.url.starts_with("https://") {
                return bad(
                    format!("upstreams.{name}.url"),
                    "must be an http(s) URL",
                    format!("{:?}", up.url),
                );
            }
            for (i, url) in up.instances.iter().enumerate() {
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    return bad(
                        format!("upstreams.{name}.instances[{i}]"),
                        "must be an http(s) URL",
                        format!("{url:?}"),
                    );
                }
            }
            if up.discovery == crate::upstream::discovery::Discovery::Dns {
                if let Some(url) = std::iter::once(&up.url)
                    .chain(&up.instances)
                    .chain(
                        up.split
                            .iter()
                            .flat_map(|s| std::iter::once(&s.url).chain(&s.instances)),
                    )
                    .find(|u| !u.starts_with("http://"))
                {
                    return bad(
                        format!("upstreams.{name}.discovery"),
                        "\"dns\" needs http:// URLs: it connects to the addresses found, and a TLS certificate names the host",
                        format!("{url:?}"),
                    );
                }
                if !(100..=86_400_000).contains(&up.dns_refresh_ms) {
                    return bad(
                        format!("upstreams.{name}.dns_refresh_ms"),
                        "must be between 100 and 86400000",
                        up.dns_refresh_ms.to_string(),
                    );
                }
            }
            if let Some(path) = &up.health_path
                && !path.starts_with('/')
            {
                return bad(
                    format!("upstreams.{name}.health_path"),
                    "must start with /",
                    format!("{path:?}"),
                );
            }
            if !(0.0..=1.0).contains(&up.breaker_error_rate) {
                return bad(
                    format!("upstreams.{name}.breaker_error_rate"),
                    "must be between 0 and 1",
                    up.breaker_error_rate.to_string(),
                );
            }
            if up.retry_min_per_sec > 1_000_000 {
                return bad(
                    format!("upstreams.{name}.retry_min_per_sec"),
                    "must be at most 1000000",
                    up.retry_min_per_sec.to_string(),
                );
            }
            if up.retry_budget_percent > 1000 {
                return bad(
                    format!("upstreams.{name}.retry_budget_percent"),
                    "must be at most 1000",
                    up.retry_budget_percent.to_string(),
                );
            }
            if up.timeout_ms == 0 {
                return bad(
                    format!("upstreams.{name}.timeout_ms"),
                    "must be > 0",
                    "0".into(),
                );
            }
            if let Some(split) = &up.split {
                let key = format!("upstreams.{name}.split");
                for (k, url) in std::iter::once(("url".to_owned(), &split.url)).chain(
                    split
                        .instances
                        .iter()
                        .enumerate()
                        .map(|(i, u)| (format!("instances[{i}]"), u)),
                ) {
                    if !url.starts_with("http://") && !url.starts_with("https://") {
                        return bad(
                            format!("{key}.{k}"),
                            "must be an http(s) URL",
                            format!("{url:?}"),
                        );
                    }
                }
                if !is_percent(split.percent) {
                    return bad(
                        format!("{key}.percent"),
                        "must be between 0 and 100",
                        split.percent.to_string(),
                    );
                }
                if split.name.is_empty()
                    || split.name.len() > 64
                    || !split
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return bad(
                        format!("{key}.name"),
                        "must be 1 to 64 of A-Z a-z 0-9 - _ .",
                        format!("{:?}", split.name),
                    );
                }
                if split.name == PRIMARY_VARIANT {
                    return bad(
                        format!("{key}.name"),
                        "must not be \"primary\" (the label of the primary version)",
                        format!("{:?}", split.name),
                    );
                }
            }
            if let Some(fault) = &up.fault {
                let key = format!("upstreams.{name}.fault");
                for (k, v) in [
                    ("delay_percent", fault.delay_percent),
                    ("error_percent", fault.error_percent),
                ] {
                    if !is_percent(v) {
                        return bad(
                            format!("{key}.{k}"),
                            "must be between 0 and 100",
                            v.to_string(),
                        );
                    }
                }
                if fault.delay_percent > 0.0 && fault.delay_ms == 0 {
                    return bad(
                        format!("{key}.delay_ms"),
                        "must be > 0 when delay_percent is set",
                        "0".into(),
                    );
                }
            }
        }
        Ok(())
    }
}

impl<C> Config<C> {
    fn validate_proxies(&self) -> Result<(), ConfigError> {
        let bad = |i: usize, key: &str, rule: &str, got: &str| {
            Err(ConfigError(format!("proxy[{i}].{key} {rule}, got {got:?}")))
        };
        let path_ok = |p: &str| {
            p.starts_with('/')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
                && !p.split('/').any(|seg| seg == "." || seg == "..")
                && !p.contains("//")
        };
        for (i, p) in self.proxy.iter().enumerate() {
            if !path_ok(&p.prefix) || p.prefix.len() < 2 || p.prefix.ends_with('/') {
                return bad(
                    i,
                    "prefix",
                    "must be a path like /api/catalog (no trailing /, no dot segments)",
                    &p.prefix,
                );
            }
            if matches!(p.prefix.as_str(), "/healthz" | "/readyz" | "/metrics") {
                // A prefix takes its paths ahead of every other route.
                return bad(
                    i,
                    "prefix",
                    "must not take the gateway's own /healthz, /readyz or /metrics",
                    &p.prefix,
                );
            }
            if self.proxy[..i].iter().any(|q| q.prefix == p.prefix) {
                return bad(i, "prefix", "is declared twice", &p.prefix);
            }
            if !self.upstreams.contains_key(&p.upstream) {
                return bad(i, "upstream", "must name an [upstreams.NAME]", &p.upstream);
            }
            if let Some(r) = &p.rewrite
                && !path_ok(r)
            {
                return bad(i, "rewrite", "must be a path starting with /", r);
            }
            if p.methods.is_empty() {
                return bad(i, "methods", "must name at least one method", "[]");
            }
            for m in &p.methods {
                if axum::http::Method::from_bytes(m.as_bytes()).is_err()
                    || m.bytes().any(|b| b.is_ascii_lowercase())
                {
                    return bad(i, "methods", "must be upper-case HTTP methods", m);
                }
            }
            for scope in &p.scopes {
                if scope.is_empty() || scope.contains(char::is_whitespace) {
                    return bad(i, "scopes", "must be non-empty names", scope);
                }
            }
        }
        Ok(())
    }
}

/// A percentage: finite, 0 to 100.
fn is_percent(v: f64) -> bool {
    (0.0..=100.0).contains(&v)
}

/// Figment's errors already name the key path; keep them on one line and drop the provider noise.
fn describe(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let what = e.kind.to_string();
            if key.is_empty() {
                what
            } else {
                format!("{key}: {what}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
