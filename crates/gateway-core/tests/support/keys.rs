//! Fresh keys of every algorithm the gateway verifies (made with aws-lc-rs), their public halves
//! as JWK and PEM, and token signing. Shared by the auth tests and the auth benchmarks.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key and its public half.
pub struct TestKey {
    /// What it signs with.
    pub alg: Algorithm,
    /// Its `kid` in a JWKS and in token headers.
    pub kid: String,
    /// The private half.
    pub encoding: EncodingKey,
    /// The public half as a JWK, with `kid` and `alg`.
    pub jwk: Value,
    /// The public half as a SubjectPublicKeyInfo PEM.
    pub pem: String,
}

impl TestKey {
    /// A new key for `alg` (RS256, PS256, ES256 or EdDSA).
    pub fn generate(alg: Algorithm, kid: &str) -> Self {
        let alg_name = format!("{alg:?}");
        let (encoding, mut jwk, spki) = match alg {
            Algorithm::RS256 | Algorithm::PS256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
                let pkcs8 = pair.as_der().expect("PKCS#8");
                let encoding =
                    EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
                        .expect("RSA encoding key");
                let public = pair.public_key();
                let jwk = json!({
                    "kty": "RSA",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                });
                let spki = public.as_der().expect("SPKI").as_ref().to_vec();
                (encoding, jwk, spki)
            }
            Algorithm::ES256 => {
                let rng = SystemRandom::new();
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .expect("EC key");
                let pair =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                        .expect("EC key pair");
                let point = pair.public_key().as_ref();
                let jwk = json!({
                    "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]),
                });
                let spki = pair.public_key().as_der().expect("SPKI").as_ref().to_vec();
                (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk, spki)
            }
            Algorithm::EdDSA => {
                let rng = SystemRandom::new();
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key pair");
                let jwk =
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
                let spki = pair.public_key().as_der().expect("SPKI").as_ref().to_vec();
                (EncodingKey::from_ed_der(pkcs8.as_ref()), jwk, spki)
            }
            other => panic!("no test keys for {other:?}"),
        };
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(alg_name);
        jwk["use"] = json!("sig");
        Self {
            alg,
            kid: kid.to_owned(),
            encoding,
            jwk,
            pem: pem("PUBLIC KEY", &spki),
        }
    }

    /// A token with `claims`, signed by this key, naming it by `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(&header, claims)
    }

    /// A token with `header` and `claims`, signed by this key.
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("sign")
    }

    /// A token whose header is exactly `header` (any JSON, even one the library would not write),
    /// signed by this key.
    pub fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        sign_raw(&self.encoding, self.alg, header, claims)
    }
}

/// A token whose header is exactly `header`, signed by `key` with `alg` whatever the header says.
pub fn sign_raw(key: &EncodingKey, alg: Algorithm, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("sign");
    format!("{input}.{sig}")
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Claims valid for an hour, from `iss` for `aud`.
pub fn claims(iss: &str, aud: &str, sub: &str) -> Value {
    let now = now();
    json!({
        "iss": iss, "aud": aud, "sub": sub, "scope": "profile:read feed:read", "tier": "gold",
        "iat": now, "nbf": now, "exp": now + 3600,
    })
}

/// Unpadded base64url, as JOSE writes it.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A PEM block.
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}
