//! JWT bearer verification against PEM keys or JWKS URLs of several issuers.
//!
//! The token is treated as hostile until its signature verifies: its length is capped before any
//! decoding, its header is pre-parsed by us (so `crit` can be refused and `jwk`/`jku`/`x5u`/`x5c` are
//! never looked at), `kid` is only ever a map key, and the algorithm must be one the key itself is for
//! (no HMAC keyed with a public key, no `none`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::Principal;
use crate::config::{AuthConfig, ConfigError, IssuerConfig};
use crate::error::{AuthFailure, GatewayError};

/// Bound on a JWKS document, so a hostile or broken endpoint cannot exhaust memory.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Bound on one JWKS fetch.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Verifies bearer tokens and turns them into a [`Principal`].
pub struct JwtVerifier {
    issuers: HashMap<String, Arc<Issuer>>,
    leeway_secs: u64,
    max_token_bytes: usize,
    tier_claim: String,
}

/// One trusted issuer and its current keys.
struct Issuer {
    name: String,
    audiences: Vec<String>,
    jwks_url: Option<String>,
    cooldown: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// Serialises fetches and remembers when the last one started: concurrent requests with an
    /// unknown `kid` share a single fetch, and at most one happens per cooldown.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Keys without a `kid` (PEM files, or JWKS entries that omit it).
    anonymous: Vec<Arc<VerifyKey>>,
}

struct VerifyKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The fields of the JOSE header we look at. Everything else is ignored, deliberately.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

#[derive(Deserialize)]
struct RawIssuer {
    #[serde(default)]
    iss: Option<Value>,
}

// === impl JwtVerifier ===

impl JwtVerifier {
    /// Builds the verifier, reading PEM files now. JWKS keys are fetched on first use and then
    /// refreshed in the background every `jwks_refresh_secs`.
    pub fn new(cfg: &AuthConfig, http: reqwest::Client) -> Result<Arc<Self>, ConfigError> {
        let mut issuers = HashMap::new();
        for (i, iss) in cfg.issuers.iter().enumerate() {
            let keys = match &iss.pem_file {
                Some(path) => pem_key_set(iss, path)
                    .map_err(|e| ConfigError(format!("auth.issuers[{i}].pem_file: {e}")))?,
                None => KeySet::default(),
            };
            let issuer = Issuer {
                name: iss.issuer.clone(),
                audiences: iss.audiences.clone(),
                jwks_url: iss.jwks_url.clone(),
                cooldown: Duration::from_secs(iss.jwks_cooldown_secs),
                keys: RwLock::new(Arc::new(keys)),
                fetch: tokio::sync::Mutex::new(None),
                http: http.clone(),
            };
            issuers.insert(iss.issuer.clone(), Arc::new(issuer));
        }
        let verifier = Arc::new(Self {
            issuers,
            leeway_secs: cfg.leeway_secs,
            max_token_bytes: cfg.max_token_bytes,
            tier_claim: cfg.tier_claim.clone(),
        });
        for (iss, cfg) in verifier.issuers.values().zip(cfg.issuers.iter()) {
            if iss.jwks_url.is_some() && tokio::runtime::Handle::try_current().is_ok() {
                spawn_refresher(
                    Arc::downgrade(iss),
                    Duration::from_secs(cfg.jwks_refresh_secs.max(1)),
                );
            }
        }
        Ok(verifier)
    }

    /// Verifies `token` and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, GatewayError> {
        let invalid = GatewayError::Unauthenticated(AuthFailure::Invalid);
        if token.len() > self.max_token_bytes {
            return Err(invalid);
        }
        let mut segments = token.split('.');
        let (Some(header), Some(payload), Some(_sig), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(invalid);
        };
        let header: RawHeader = decode_segment(header).ok_or(invalid.clone())?;
        if header.crit.is_some() {
            return Err(invalid);
        }
        let alg = parse_algorithm(&header.alg).ok_or(invalid.clone())?;
        let raw: RawIssuer = decode_segment(payload).ok_or(invalid.clone())?;
        let iss = match raw.iss {
            Some(Value::String(iss)) => iss,
            Some(_) => return Err(invalid),
            None => return Err(GatewayError::Unauthenticated(AuthFailure::WrongIssuer)),
        };
        let issuer = self
            .issuers
            .get(&iss)
            .ok_or(GatewayError::Unauthenticated(AuthFailure::WrongIssuer))?;
        let key = issuer.key_for(header.kid.as_deref(), alg).await?;

        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&issuer.name]);
        validation.set_audience(&issuer.audiences);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
                .map_err(|e| GatewayError::Unauthenticated(classify(e.kind())))?;
        Principal::from_claims(&data.claims, &self.tier_claim).ok_or(invalid)
    }
}

fn classify(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidIssuer => AuthFailure::WrongIssuer,
        ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
        _ => AuthFailure::Invalid,
    }
}

fn decode_segment<T: for<'de> Deserialize<'de>>(segment: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The algorithms we accept at all; `none` and anything unknown are refused here.
fn parse_algorithm(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

// === impl Issuer ===

impl Issuer {
    fn current(&self) -> Arc<KeySet> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc; the value is still whole.
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, GatewayError> {
        if let Some(key) = self.current().find(kid, alg) {
            return Ok(key);
        }
        if self.jwks_url.is_none() {
            return Err(GatewayError::Unauthenticated(AuthFailure::Invalid));
        }
        // Unknown kid (or no keys yet): refetch, at most once per cooldown, shared by all waiters.
        self.refetch(false).await;
        let keys = self.current();
        if let Some(key) = keys.find(kid, alg) {
            return Ok(key);
        }
        if keys.is_empty() {
            Err(GatewayError::KeysUnavailable)
        } else {
            Err(GatewayError::Unauthenticated(AuthFailure::Invalid))
        }
    }

    /// Fetches the JWKS unless another fetch started within the cooldown (`force` skips that check,
    /// for the background refresher). A failed fetch keeps the keys we had.
    async fn refetch(&self, force: bool) {
        let Some(url) = &self.jwks_url else { return };
        let mut last = self.fetch.lock().await;
        if !force && last.is_some_and(|at| at.elapsed() < self.cooldown) {
            return;
        }
        *last = Some(Instant::now());
        match fetch_jwks(&self.http, url).await {
            Ok(set) => {
                let keys = jwks_key_set(&set);
                tracing::debug!(issuer = %self.name, keys = keys.by_kid.len() + keys.anonymous.len(), "JWKS refreshed");
                *self
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
            }
            Err(err) => {
                tracing::warn!(issuer = %self.name, error = %err, "JWKS fetch failed; keeping cached keys");
            }
        }
    }
}

fn spawn_refresher(issuer: Weak<Issuer>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            // The verifier owns the issuer; once it is gone, so is this task.
            let Some(issuer) = issuer.upgrade() else {
                return;
            };
            issuer.refetch(true).await;
        }
    });
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<JwkSet, String> {
    let res = http
        .get(url)
        .timeout(JWKS_FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("status {}", res.status()));
    }
    if res
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err("JWKS document too large".into());
    }
    let body = res.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MAX_JWKS_BYTES {
        return Err("JWKS document too large".into());
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

// === impl KeySet ===

impl KeySet {
    fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.anonymous.is_empty()
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerifyKey>> {
        let fits = |k: &&Arc<VerifyKey>| k.algorithms.contains(&alg);
        // `kid` is only ever a map key. Keys published without one (PEM files) serve any token.
        kid.and_then(|kid| self.by_kid.get(kid))
            .filter(fits)
            .or_else(|| self.anonymous.iter().find(fits))
            .cloned()
    }
}

fn jwks_key_set(set: &JwkSet) -> KeySet {
    let mut keys = KeySet::default();
    for jwk in &set.keys {
        let Some(key) = verify_key_from_jwk(jwk) else {
            continue;
        };
        match &jwk.common.key_id {
            Some(kid) => {
                keys.by_kid.insert(kid.clone(), Arc::new(key));
            }
            None => keys.anonymous.push(Arc::new(key)),
        }
    }
    keys
}

/// Asymmetric keys only: a JWKS that publishes an HMAC secret is refused, so a token can never be
/// verified with a "secret" anybody can read.
fn verify_key_from_jwk(jwk: &Jwk) -> Option<VerifyKey> {
    let algorithms = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::OctetKey(_), _) => return None,
        (_, Some(KeyAlgorithm::RS256)) => vec![Algorithm::RS256],
        (_, Some(KeyAlgorithm::PS256)) => vec![Algorithm::PS256],
        (_, Some(KeyAlgorithm::ES256)) => vec![Algorithm::ES256],
        (_, Some(KeyAlgorithm::ES384)) => vec![Algorithm::ES384],
        (_, Some(KeyAlgorithm::EdDSA)) => vec![Algorithm::EdDSA],
        (_, Some(_)) => return None,
        (AlgorithmParameters::RSA(_), None) => vec![Algorithm::RS256, Algorithm::PS256],
        (AlgorithmParameters::EllipticCurve(p), None) => match p.curve {
            jsonwebtoken::jwk::EllipticCurve::P256 => vec![Algorithm::ES256],
            jsonwebtoken::jwk::EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        (AlgorithmParameters::OctetKeyPair(_), None) => vec![Algorithm::EdDSA],
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey { key, algorithms })
}

fn pem_key_set(iss: &IssuerConfig, path: &str) -> Result<KeySet, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let alg_name = iss.pem_algorithm.as_deref().unwrap_or_default();
    let alg = parse_algorithm(alg_name).ok_or(format!("unsupported pem_algorithm {alg_name:?}"))?;
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
        _ => DecodingKey::from_rsa_pem(&pem),
    }
    .map_err(|_| format!("{path} is not a {alg_name} public key in PEM form"))?;
    Ok(KeySet {
        by_kid: HashMap::new(),
        anonymous: vec![Arc::new(VerifyKey {
            key,
            algorithms: vec![alg],
        })],
    })
}
