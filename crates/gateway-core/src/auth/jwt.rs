//! JWT bearer verification against JWKS URLs, PEM keys or (for development) an HS256 secret, for
//! several issuers.
//!
//! The token is treated as hostile until its signature verifies: its length is capped before any
//! decoding, its header is pre-parsed by us (so `crit` can be refused and `jwk`/`jku`/`x5u`/`x5c` are
//! never looked at, let alone fetched), `kid` is only ever a map key, and the algorithm must be one
//! the key itself is for (no HMAC keyed with a public key, no `none`). An issuer's keys are either
//! public keys or one HMAC secret, never both.
//!
//! Keys of a JWKS issuer are fetched in the background and on an unknown `kid`, at most once per
//! cooldown; a failed fetch keeps the keys we had. Tokens that verified are remembered (by the
//! SHA-256 of their exact bytes, until their `exp`) so a repeated token skips the signature work.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use moka::Expiry;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Principal;
use crate::config::{AuthConfig, ConfigError, IssuerConfig};
use crate::error::{AuthFailure, GatewayError};

/// Bound on a JWKS document, so a hostile or broken endpoint cannot exhaust memory.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Bound on one JWKS fetch.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// With no keys at all every token is refused anyway, so a failed fetch is retried this soon (when
/// shorter than the cooldown) rather than keeping the issuer dark for a whole cooldown.
const COLD_RETRY: Duration = Duration::from_secs(1);

/// Verifies bearer tokens and turns them into a [`Principal`].
pub struct JwtVerifier {
    issuers: HashMap<String, Arc<Issuer>>,
    leeway_secs: u64,
    max_token_bytes: usize,
    tier_claim: String,
    verified: Option<VerifiedCache>,
}

/// Tokens that verified, by the SHA-256 of their exact bytes: a token differing in any byte has
/// another key, so it can never be answered with someone else's principal. Only tokens that
/// verified get in, and their keys are digests nobody can choose, so the table's own hash need
/// not resist chosen collisions: foldhash, seeded per process, not the standard library's
/// SipHash (about 270 instructions a lookup).
type VerifiedCache = moka::sync::Cache<[u8; 32], Verified, foldhash::fast::RandomState>;

#[derive(Clone)]
struct Verified {
    principal: Principal,
    /// The token's `exp`, in seconds since the epoch: the entry is never used at or after it.
    exp: u64,
}

/// Evicts an entry when its token expires, so expired tokens do not hold space.
struct UntilExp;

impl Expiry<[u8; 32], Verified> for UntilExp {
    fn expire_after_create(&self, _: &[u8; 32], v: &Verified, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(
            v.exp.saturating_sub(jsonwebtoken::get_current_timestamp()),
        ))
    }
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
    /// Forgotten when this issuer withdraws a key, so tokens it signed stop verifying at once.
    verified: Option<VerifiedCache>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Keys without a `kid` (PEM files, HS256 secrets, or JWKS entries that omit it).
    anonymous: Vec<Arc<VerifyKey>>,
    /// Each JWKS entry as published, to notice a key being withdrawn or replaced.
    published: HashSet<String>,
}

struct VerifyKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The fields of the JOSE header we look at. Everything else (`jwk`, `jku`, `x5u`, `x5c`, ...) is
/// ignored, deliberately: keys come from configuration, never from the token.
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

/// What a token says about itself before any signature work: the fields that choose the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preparsed {
    /// The signing algorithm, one this gateway accepts.
    pub alg: Algorithm,
    /// The key id, if the header names one.
    pub kid: Option<String>,
    /// The issuer claim.
    pub iss: String,
}

/// Pre-parses a compact JWS without verifying it: exactly three segments, a header with a known
/// `alg` and no `crit`, a payload with a string `iss`. Everything here is hostile input; nothing
/// is trusted until the signature is verified with a key of the issuer named. Fuzzed
/// (`fuzz/fuzz_targets/token.rs`).
pub fn preparse(token: &str) -> Result<Preparsed, AuthFailure> {
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(AuthFailure::Invalid);
    };
    let header: RawHeader = decode_segment(header).ok_or(AuthFailure::Invalid)?;
    if header.crit.is_some() {
        return Err(AuthFailure::Invalid);
    }
    let alg = parse_algorithm(&header.alg).ok_or(AuthFailure::Invalid)?;
    let raw: RawIssuer = decode_segment(payload).ok_or(AuthFailure::Invalid)?;
    match raw.iss {
        Some(Value::String(iss)) => Ok(Preparsed {
            alg,
            kid: header.kid,
            iss,
        }),
        Some(_) => Err(AuthFailure::Invalid),
        None => Err(AuthFailure::WrongIssuer),
    }
}

// === impl JwtVerifier ===

impl JwtVerifier {
    /// Builds the verifier, reading PEM files now. JWKS keys are fetched at once in the background
    /// (when a Tokio runtime is running), then every `jwks_refresh_secs`, and on an unknown `kid`.
    pub fn new(cfg: &AuthConfig, http: reqwest::Client) -> Result<Arc<Self>, ConfigError> {
        let verified = (cfg.verified_cache_max_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cfg.verified_cache_max_entries)
                .expire_after(UntilExp)
                .build_with_hasher(foldhash::fast::RandomState::default())
        });
        let mut issuers = HashMap::new();
        for (i, iss) in cfg.issuers.iter().enumerate() {
            let keys = match (&iss.pem_file, &iss.hs256_secret) {
                (Some(path), _) => pem_key_set(iss, path)
                    .map_err(|e| ConfigError(format!("auth.issuers[{i}].pem_file: {e}")))?,
                (None, Some(secret)) => {
                    tracing::warn!(issuer = %iss.issuer, "HS256 shared secret configured: for development only");
                    KeySet::single(
                        DecodingKey::from_secret(secret.as_bytes()),
                        Algorithm::HS256,
                    )
                }
                (None, None) => KeySet::default(),
            };
            let issuer = Issuer {
                name: iss.issuer.clone(),
                audiences: iss.audiences.clone(),
                jwks_url: iss.jwks_url.clone(),
                cooldown: Duration::from_secs(iss.jwks_cooldown_secs),
                keys: RwLock::new(Arc::new(keys)),
                fetch: tokio::sync::Mutex::new(None),
                http: http.clone(),
                verified: verified.clone(),
            };
            issuers.insert(iss.issuer.clone(), Arc::new(issuer));
        }
        let verifier = Arc::new(Self {
            issuers,
            leeway_secs: cfg.leeway_secs,
            max_token_bytes: cfg.max_token_bytes,
            tier_claim: cfg.tier_claim.clone(),
            verified,
        });
        for cfg in &cfg.issuers {
            if let Some(iss) = verifier.issuers.get(&cfg.issuer)
                && iss.jwks_url.is_some()
                && tokio::runtime::Handle::try_current().is_ok()
            {
                spawn_refresher(
                    Arc::downgrade(iss),
                    Duration::from_secs(cfg.jwks_refresh_secs.max(1)),
                );
            }
        }
        Ok(verifier)
    }

    /// What can be said of `token` without verifying it: refused for its size, or its principal
    /// from the verified-token cache (`Ok`); otherwise (`Err`) the digest to remember it under once
    /// verified, `None` without a cache.
    fn lookup(&self, token: &str) -> Result<Result<Principal, GatewayError>, Option<[u8; 32]>> {
        if token.len() > self.max_token_bytes {
            return Ok(Err(GatewayError::Unauthenticated(AuthFailure::Invalid)));
        }
        let Some(cache) = &self.verified else {
            return Err(None);
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match cache.get(&digest) {
            Some(hit) if jsonwebtoken::get_current_timestamp() < hit.exp => Ok(Ok(hit.principal)),
            _ => Err(Some(digest)),
        }
    }

    /// What [`JwtVerifier::verify`] answers for `token` when it can answer without waiting: a
    /// refusal for its size, or its principal from the verified-token cache. `None` when the token
    /// needs full verification.
    pub(crate) fn verify_now(&self, token: &str) -> Option<Result<Principal, GatewayError>> {
        self.lookup(token).ok()
    }

    /// Verifies `token` and returns its principal: from the verified-token cache when this exact
    /// token verified before and has not expired, otherwise by full verification.
    pub async fn verify(&self, token: &str) -> Result<Principal, GatewayError> {
        let digest = match self.lookup(token) {
            Ok(known) => return known,
            Err(digest) => digest,
        };
        let verified = self.verify_uncached(token).await?;
        // A token accepted only thanks to the leeway is not remembered: the cache ends at `exp`.
        if let (Some(digest), Some(cache)) = (digest, &self.verified)
            && jsonwebtoken::get_current_timestamp() < verified.exp
        {
            cache.insert(digest, verified.clone());
        }
        Ok(verified.principal)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Verified, GatewayError> {
        let invalid = GatewayError::Unauthenticated(AuthFailure::Invalid);
        let Preparsed { alg, kid, iss } = preparse(token).map_err(GatewayError::Unauthenticated)?;
        let issuer = self
            .issuers
            .get(&iss)
            .ok_or(GatewayError::Unauthenticated(AuthFailure::WrongIssuer))?;
        let key = issuer.key_for(kid.as_deref(), alg).await?;

        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&issuer.name]);
        validation.set_audience(&issuer.audiences);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
                .map_err(|e| GatewayError::Unauthenticated(classify(e.kind())))?;
        // `exp` was required and validated as a number above; a fractional one is refused here.
        let exp = data
            .claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(invalid.clone())?;
        let principal = Principal::from_claims(&data.claims, &self.tier_claim).ok_or(invalid)?;
        Ok(Verified { principal, exp })
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

/// A base64url segment holding a JSON object. Only an object: serde would also fill a struct from
/// an array, and a JOSE header or claims set is never one.
fn decode_segment<T: for<'de> Deserialize<'de>>(segment: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// The algorithms we accept at all; `none` and anything unknown are refused here. HS256 is only
/// ever usable with an issuer configured with an `hs256_secret`.
fn parse_algorithm(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "HS256" => Algorithm::HS256,
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

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Whether `alg` names a public-key algorithm we verify (what `pem_algorithm` may say).
pub(crate) fn is_public_key_algorithm(alg: &str) -> bool {
    parse_algorithm(alg).is_some_and(|a| !is_hmac(a))
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
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, GatewayError> {
        if let Some(key) = self.current().find(kid, alg) {
            return Ok(key);
        }
        // A JWKS never yields an HMAC key (see `verify_key_from_jwk`), so such a token is refused
        // without costing a fetch.
        if self.jwks_url.is_none() || is_hmac(alg) {
            return Err(GatewayError::Unauthenticated(AuthFailure::Invalid));
        }
        // Unknown kid (or no keys yet): refetch, at most once per cooldown, shared by all waiters.
        let min_age = if self.current().is_empty() {
            self.cooldown.min(COLD_RETRY)
        } else {
            self.cooldown
        };
        self.refetch(min_age).await;
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

    /// Fetches the JWKS unless a fetch started less than `min_age` ago. Callers queue on the lock,
    /// so those that arrive during a fetch wait for it and then find it recent: they share it. A
    /// failed fetch keeps the keys we had.
    async fn refetch(self: &Arc<Self>, min_age: Duration) {
        if self.jwks_url.is_none() {
            return;
        }
        let mut last = self.fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < min_age) {
            return;
        }
        *last = Some(Instant::now());
        // The fetch runs in its own task: a client that hangs up must not cancel it for every
        // request waiting on it. The lock is held until it ends, so waiters see its keys.
        let issuer = self.clone();
        let _ = tokio::spawn(async move { issuer.fetch_and_store().await }).await;
    }

    async fn fetch_and_store(&self) {
        let Some(url) = &self.jwks_url else { return };
        match fetch_jwks(&self.http, url).await {
            Ok(set) => {
                let keys = jwks_key_set(&set);
                let withdrawn = self
                    .current()
                    .published
                    .iter()
                    .any(|k| !keys.published.contains(k));
                tracing::debug!(issuer = %self.name, keys = keys.published.len(), withdrawn, "JWKS refreshed");
                *self
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
                // Tokens of every issuer are forgotten (the cache does not know whose they are):
                // withdrawals are rare, and the price is one verification per token.
                if withdrawn && let Some(cache) = &self.verified {
                    cache.invalidate_all();
                }
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
            // Half the interval: a fetch an unknown kid caused just now makes this one redundant,
            // while timer jitter never makes the refresher skip its own turn.
            issuer.refetch(every / 2).await;
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
    /// One key without a `kid`, for exactly one algorithm.
    fn single(key: DecodingKey, alg: Algorithm) -> Self {
        Self {
            anonymous: vec![Arc::new(VerifyKey {
                key,
                algorithms: vec![alg],
            })],
            ..Self::default()
        }
    }

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
        keys.published
            .insert(serde_json::to_string(jwk).unwrap_or_default());
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
    let alg = parse_algorithm(alg_name)
        .filter(|a| !is_hmac(*a))
        .ok_or(format!("unsupported pem_algorithm {alg_name:?}"))?;
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
        _ => DecodingKey::from_rsa_pem(&pem),
    }
    .map_err(|_| format!("{path} is not a {alg_name} public key in PEM form"))?;
    Ok(KeySet::single(key, alg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthConfig, IssuerConfig};
    use jsonwebtoken::{EncodingKey, Header, get_current_timestamp};
    use serde_json::json;

    const SECRET: &str = "a development secret of at least 32 bytes";
    const ISS: &str = "https://dev.test";

    fn verifier(cache_entries: u64, leeway_secs: u64) -> Arc<JwtVerifier> {
        let cfg = AuthConfig {
            issuers: vec![IssuerConfig::hs256(ISS, &["bff-test"], SECRET)],
            leeway_secs,
            verified_cache_max_entries: cache_entries,
            ..AuthConfig::default()
        };
        JwtVerifier::new(&cfg, reqwest::Client::new()).expect("verifier")
    }

    fn token(sub: &str, exp_in: i64) -> String {
        let now = get_current_timestamp() as i64;
        let claims =
            json!({"iss": ISS, "aud": "bff-test", "sub": sub, "iat": now, "exp": now + exp_in});
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    }

    /// Takes the issuer's keys away: from then on only the verified-token cache can say yes.
    fn forget_keys(v: &JwtVerifier) {
        *v.issuers[ISS].keys.write().expect("lock") = Arc::new(KeySet::default());
    }

    #[tokio::test]
    async fn a_repeated_token_skips_the_signature_work() {
        let v = verifier(100, 30);
        let t = token("user-1", 3600);
        assert_eq!(&*v.verify(&t).await.expect("verifies").subject, "user-1");
        forget_keys(&v);
        assert_eq!(&*v.verify(&t).await.expect("cached").subject, "user-1");
        assert!(
            v.verify(&token("user-1", 3599)).await.is_err(),
            "a new token needs keys"
        );
    }

    #[tokio::test]
    async fn a_remembered_token_is_refused_from_its_exp() {
        let v = verifier(100, 0);
        let t = token("user-1", 1);
        assert!(v.verify(&t).await.is_ok());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(matches!(
            v.verify(&t).await,
            Err(GatewayError::Unauthenticated(AuthFailure::Expired))
        ));
    }

    #[tokio::test]
    async fn a_token_past_exp_but_within_the_leeway_is_not_remembered() {
        let v = verifier(100, 30);
        let t = token("user-1", -5);
        assert!(v.verify(&t).await.is_ok(), "within the leeway");
        let digest: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        assert!(!v.verified.as_ref().expect("cache").contains_key(&digest));
    }

    #[tokio::test]
    async fn zero_entries_disables_the_cache() {
        let v = verifier(0, 30);
        assert!(v.verified.is_none());
        let t = token("user-1", 3600);
        assert!(v.verify(&t).await.is_ok());
        forget_keys(&v);
        assert!(v.verify(&t).await.is_err(), "every call verifies");
    }

    #[test]
    fn only_json_objects_are_headers() {
        let seg = |s: &str| URL_SAFE_NO_PAD.encode(s);
        assert!(decode_segment::<RawHeader>(&seg(r#" {"alg":"ES256"}"#)).is_some());
        assert!(decode_segment::<RawHeader>(&seg(r#"["ES256"]"#)).is_none());
        assert!(decode_segment::<RawHeader>(&seg(r#"{"alg":"ES256","alg":"none"}"#)).is_none());
    }

    #[test]
    fn pem_algorithms_are_public_key_algorithms() {
        assert!(is_public_key_algorithm("ES256") && is_public_key_algorithm("EdDSA"));
        assert!(!is_public_key_algorithm("HS256") && !is_public_key_algorithm("none"));
    }
}
