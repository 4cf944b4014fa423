//! A development identity provider: an ES256 key made at start, its JWKS, token minting for any
//! subject and scope, and demo partner API keys written to the same store the partner BFF reads.
//!
//! For local use and tests only: it authenticates nobody.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/.well-known/jwks.json` | | the public key set |
//! | POST | `/token` | `{"sub", "scope"?, "aud"?, "ttl"?, "tier"?}` | `{"access_token", "token_type", "expires_in"}` |
//! | POST | `/partner-keys` | `{"partner", "tier"?, "version"?}` | `{"api_key", "partner", "tier", "version"}` |
//! | GET | `/healthz` | | `ok` |

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_core::GatewayError;
use gateway_core::auth::apikey::{ApiKeyRecord, ApiKeyStore, KeyHash, generate_key};
use gateway_core::extract::JsonBody;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Audiences a token gets when the request names none: the three user-facing BFFs.
pub const DEFAULT_AUDIENCES: [&str; 3] = ["bff-mobile", "bff-web", "bff-tv"];
/// Token lifetime when the request names none, in seconds.
pub const DEFAULT_TTL_SECS: i64 = 3600;
/// Longest lifetime (either sign) a token may be minted with, in seconds.
pub const MAX_TTL_SECS: i64 = 86_400;

/// The identity provider: its signing key, issuer name and the partner-key store.
#[derive(Clone)]
pub struct IdentityProvider {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    kid: String,
    encoding: EncodingKey,
    jwks: Value,
    keys: Arc<dyn ApiKeyStore>,
}

/// `POST /token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Subject (the user id).
    pub sub: String,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// One audience or several; the three user-facing BFFs when absent.
    #[serde(default)]
    pub aud: Option<Audience>,
    /// Lifetime in seconds; negative mints an already-expired token.
    #[serde(default)]
    pub ttl: Option<i64>,
    /// Rate-limit tier claim.
    #[serde(default)]
    pub tier: Option<String>,
}

/// One audience or a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `POST /partner-keys`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerKeyRequest {
    /// Partner id: 1 to 64 of `a-z 0-9 - _`.
    pub partner: String,
    /// Rate-limit tier; `standard` when absent.
    #[serde(default)]
    pub tier: Option<String>,
    /// API version to pin (`YYYY-MM-DD`).
    #[serde(default)]
    pub version: Option<String>,
}

fn bad(detail: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest {
        code: "BODY_INVALID",
        detail: detail.into(),
    }
}

fn is_slug(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether `s` is a `YYYY-MM-DD` date.
pub fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && matches!(s[5..7].parse::<u8>(), Ok(1..=12))
        && matches!(s[8..10].parse::<u8>(), Ok(1..=31))
}

impl IdentityProvider {
    /// A provider named `issuer` with a fresh ES256 key, writing partner keys to `keys`.
    pub fn new(issuer: impl Into<String>, keys: Arc<dyn ApiKeyStore>) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate an ES256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("cannot load the generated ES256 key"))?;
        // An uncompressed P-256 point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        anyhow::ensure!(
            point.len() == 65 && point[0] == 4,
            "unexpected public key encoding"
        );
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..]),
        );
        let kid = format!("dev-{}", &x[..12]);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid, "x": x, "y": y
        }]});
        Ok(Self {
            inner: Arc::new(Inner {
                issuer: issuer.into(),
                kid,
                encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
                jwks,
                keys,
            }),
        })
    }

    /// The `iss` of every token.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Mints a token.
    pub fn mint(&self, req: &TokenRequest) -> Result<String, GatewayError> {
        if req.sub.is_empty() || req.sub.len() > 256 {
            return Err(bad("`sub` must be 1 to 256 characters."));
        }
        if req.scope.len() > 2048 {
            return Err(bad("`scope` must be at most 2048 characters."));
        }
        let ttl = req.ttl.unwrap_or(DEFAULT_TTL_SECS);
        if !(-MAX_TTL_SECS..=MAX_TTL_SECS).contains(&ttl) || ttl == 0 {
            return Err(bad(format!(
                "`ttl` must be non-zero and within ±{MAX_TTL_SECS} seconds, got {ttl}."
            )));
        }
        let aud: Vec<String> = match &req.aud {
            None => DEFAULT_AUDIENCES.iter().map(|s| (*s).to_owned()).collect(),
            Some(Audience::One(a)) => vec![a.clone()],
            Some(Audience::Many(a)) if !a.is_empty() => a.clone(),
            Some(Audience::Many(_)) => return Err(bad("`aud` must not be an empty list.")),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let exp = now + ttl;
        let iat = now.min(exp - 1);
        let mut claims = json!({
            "iss": self.inner.issuer, "sub": req.sub, "aud": aud, "scope": req.scope,
            "iat": iat, "nbf": iat, "exp": exp, "jti": uuid_like(),
        });
        if let Some(tier) = &req.tier {
            claims["tier"] = json!(tier);
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.inner.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.inner.encoding).map_err(|err| {
            tracing::error!(error = %err, "signing failed");
            GatewayError::Internal
        })
    }

    /// Creates a partner key and stores its hash; returns the key, shown only this once.
    pub async fn create_partner_key(
        &self,
        req: &PartnerKeyRequest,
    ) -> Result<(String, ApiKeyRecord), GatewayError> {
        if !is_slug(&req.partner, 64) {
            return Err(bad("`partner` must be 1 to 64 of a-z, 0-9, '-' and '_'."));
        }
        let tier = req.tier.clone().unwrap_or_else(|| "standard".to_owned());
        if !is_slug(&tier, 32) {
            return Err(bad("`tier` must be 1 to 32 of a-z, 0-9, '-' and '_'."));
        }
        if let Some(v) = &req.version
            && !is_date(v)
        {
            return Err(bad(format!(
                "`version` must be a date like 2024-01-01, got {v:?}."
            )));
        }
        let key = generate_key();
        let record = ApiKeyRecord {
            partner: req.partner.clone(),
            tier,
            version: req.version.clone(),
        };
        self.inner
            .keys
            .insert(KeyHash::of(&key), record.clone())
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "cannot store partner key");
                GatewayError::Unavailable
            })?;
        Ok((key, record))
    }

    /// The HTTP API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/token", post(token))
            .route("/partner-keys", post(partner_key))
            .route("/healthz", get(|| async { "ok" }))
            .fallback(|| async { GatewayError::NotFound("such route".into()) })
            .with_state(self.clone())
    }
}

fn uuid_like() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

async fn jwks(State(idp): State<IdentityProvider>) -> Json<Value> {
    Json(idp.inner.jwks.clone())
}

async fn token(
    State(idp): State<IdentityProvider>,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<Json<Value>, GatewayError> {
    let token = idp.mint(&req)?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": req.ttl.unwrap_or(DEFAULT_TTL_SECS),
    })))
}

async fn partner_key(
    State(idp): State<IdentityProvider>,
    JsonBody(req): JsonBody<PartnerKeyRequest>,
) -> Result<(axum::http::StatusCode, Json<Value>), GatewayError> {
    let (key, record) = idp.create_partner_key(&req).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(
            json!({"api_key": key, "partner": record.partner, "tier": record.tier, "version": record.version}),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_checked() {
        assert!(is_date("2024-01-01"));
        assert!(!is_date("2024-13-01") && !is_date("2024-1-01") && !is_date("20240101xx"));
    }
}
