//! Authentication on real sockets: a gateway in front of a real JWKS server (both on port 0), with
//! tokens signed by fresh RSA, EC and Ed25519 keys, and a catalogue of hostile tokens.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use gateway_core::auth::apikey::{KeyHash, generate_key};
use gateway_core::config::{ApiKeyConfig, AuthMode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::keys::{TestKey, b64, claims, now, sign_raw};
use support::{AUDIENCE, JwksServer, Seen, TestGateway, hmac_issuer, jwks_issuer, pem_issuer};

const ISSUER: &str = "https://issuer.test";
const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];
/// Text that would betray a library message or internal detail in a problem body.
const LEAKS: [&str; 12] = [
    "jsonwebtoken",
    "Base64",
    "base64",
    "Json",
    "serde",
    "InvalidToken",
    "InvalidSignature",
    "ErrorKind",
    "error:",
    "line ",
    "column",
    "127.0.0.1",
];

fn assert_ok(seen: &Seen, sub: &str, what: &str) {
    assert_eq!(seen.status, StatusCode::OK, "{what}: {}", seen.body);
    assert_eq!(seen.json()["sub"], sub, "{what}");
}

/// 401, problem+json with `code`, the challenge, and nothing a library wrote.
fn assert_refused(seen: &Seen, code: &str, what: &str) {
    assert_eq!(
        seen.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        seen.body
    );
    assert_eq!(
        seen.header("content-type"),
        "application/problem+json",
        "{what}"
    );
    assert_eq!(
        seen.header("www-authenticate"),
        "Bearer error=\"invalid_token\"",
        "{what}"
    );
    assert_eq!(seen.code(), code, "{what}: {}", seen.body);
    for leak in LEAKS {
        assert!(
            !seen.body.contains(leak),
            "{what}: {leak:?} in {}",
            seen.body
        );
    }
    assert!(
        seen.header("x-ratelimit-limit").is_empty(),
        "{what}: refused before the limiter"
    );
}

/// Polls until `f` holds, for at most `timeout`.
async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

// === algorithms ===

#[tokio::test]
async fn every_algorithm_verifies_through_a_jwks() {
    let keys = ALGORITHMS.map(|a| TestKey::generate(a, &format!("key-{a:?}")));
    let jwks = JwksServer::start().await;
    jwks.publish(&keys.iter().collect::<Vec<_>>());
    let gw = TestGateway::start(vec![jwks_issuer(ISSUER, &jwks.url(), 30)], |_| {}).await;
    for key in &keys {
        let seen = gw
            .call(&key.sign(&claims(ISSUER, AUDIENCE, "user-1")))
            .await;
        assert_ok(&seen, "user-1", &format!("{:?}", key.alg));
        assert_eq!(seen.json()["tier"], "gold");
        assert_eq!(seen.json()["scopes"], json!(["profile:read", "feed:read"]));
    }
    // Each key verifies only its own algorithm: an RSA key published for RS256 refuses PS256.
    let rs = &keys[0];
    let mut header = Header::new(Algorithm::PS256);
    header.kid = Some(rs.kid.clone());
    let ps_with_rs_key = rs.sign_with(&header, &claims(ISSUER, AUDIENCE, "user-1"));
    assert_refused(
        &gw.call(&ps_with_rs_key).await,
        "TOKEN_INVALID",
        "PS256 on an RS256 key",
    );
}

/// What the pipeline learns of a request (its id and client, the principal, the deadline) goes
/// with it as one value: one box a request, where a value per stage would cost a box each, and
/// a table that does not grow.
#[tokio::test]
async fn the_pipelines_facts_travel_as_one_extension() {
    let key = TestKey::generate(Algorithm::ES256, "key-1");
    let jwks = JwksServer::start().await;
    jwks.publish(&[&key]);
    let gw = TestGateway::start(vec![jwks_issuer(ISSUER, &jwks.url(), 30)], |_| {}).await;
    let seen = gw
        .call(&key.sign(&claims(ISSUER, AUDIENCE, "user-1")))
        .await;
    assert_ok(&seen, "user-1", "ES256");
    // The peer's address, axum's four (the original URI, the matched route, the path's
    // parameters, the body limit), and the gateway's facts: nothing else of the gateway's.
    assert_eq!(seen.json()["extensions"], 6, "{}", seen.body);
}

#[tokio::test]
async fn every_algorithm_verifies_with_a_pem_key() {
    let keys = ALGORITHMS.map(|a| TestKey::generate(a, "unused"));
    let issuer = |k: &TestKey| format!("https://pem-{:?}.test", k.alg);
    let issuers = keys.iter().map(|k| pem_issuer(&issuer(k), k)).collect();
    let gw = TestGateway::start(issuers, |_| {}).await;
    for key in &keys {
        let seen = gw
            .call(&key.sign(&claims(&issuer(key), AUDIENCE, "user-2")))
            .await;
        assert_ok(&seen, "user-2", &format!("{:?} from PEM", key.alg));
    }
    // A token is checked against its own issuer's key only.
    let wrong = keys[2].sign(&claims(&issuer(&keys[3]), AUDIENCE, "user-2"));
    assert_refused(
        &gw.call(&wrong).await,
        "TOKEN_INVALID",
        "ES256 token naming the EdDSA issuer",
    );
}

#[tokio::test]
async fn hs256_is_accepted_only_from_an_issuer_configured_with_a_secret() {
    let secret = "a development secret of 32+ bytes!";
    let es = TestKey::generate(Algorithm::ES256, "es");
    let jwks = JwksServer::start().await;
    jwks.publish(&[&es]);
    let dev = "https://dev.test";
    let gw = TestGateway::start(
        vec![
            hmac_issuer(dev, secret),
            jwks_issuer(ISSUER, &jwks.url(), 30),
        ],
        |_| {},
    )
    .await;
    let hs = |secret: &str, iss: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(iss, AUDIENCE, "dev-user"),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    };
    assert_ok(
        &gw.call(&hs(secret, dev)).await,
        "dev-user",
        "HS256 from the dev issuer",
    );
    assert_refused(
        &gw.call(&hs("another secret, also 32 bytes long", dev))
            .await,
        "TOKEN_INVALID",
        "HS256 with the wrong secret",
    );
    assert_refused(
        &gw.call(&es.sign(&claims(dev, AUDIENCE, "dev-user"))).await,
        "TOKEN_INVALID",
        "ES256 naming the HMAC issuer",
    );
    assert_ok(
        &gw.call(&es.sign(&claims(ISSUER, AUDIENCE, "u"))).await,
        "u",
        "ES256",
    );
    let fetches = jwks.fetches();
    assert_refused(
        &gw.call(&hs(secret, ISSUER)).await,
        "TOKEN_INVALID",
        "HS256 naming the JWKS issuer",
    );
    assert_eq!(jwks.fetches(), fetches, "an HMAC token costs no JWKS fetch");
}

#[tokio::test]
async fn a_jwks_publishing_an_oct_key_never_makes_hs256_acceptable() {
    let secret = b"the secret everybody can read in the JWKS";
    let es = TestKey::generate(Algorithm::ES256, "es");
    let jwks = JwksServer::start().await;
    let oct = json!({"kty": "oct", "kid": "oct", "alg": "HS256", "k": b64(secret)});
    jwks.publish_raw(vec![oct, es.jwk.clone()]);
    let gw = TestGateway::start(vec![jwks_issuer(ISSUER, &jwks.url(), 30)], |_| {}).await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("oct".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims(ISSUER, AUDIENCE, "u"),
        &EncodingKey::from_secret(secret),
    )
    .expect("sign");
    assert_refused(
        &gw.call(&token).await,
        "TOKEN_INVALID",
        "HS256 with a JWKS oct key",
    );
    assert_ok(
        &gw.call(&es.sign(&claims(ISSUER, AUDIENCE, "u"))).await,
        "u",
        "the EC key of the same JWKS still works",
    );
}

// === hostile tokens ===

#[tokio::test]
async fn hostile_tokens_are_401_problems_with_no_library_text_and_no_fetches() {
    let good = TestKey::generate(Algorithm::ES256, "good");
    let attacker = TestKey::generate(Algorithm::ES256, "good");
    let attacker_rsa = TestKey::generate(Algorithm::RS256, "good");
    let pem_key = TestKey::generate(Algorithm::RS256, "pem");
    let jwks = JwksServer::start().await;
    jwks.publish(&[&good]);
    let pem_iss = "https://pem.test";
    // A long cooldown: however many unknown kids arrive, at most one refetch.
    let gw = TestGateway::start(
        vec![
            jwks_issuer(ISSUER, &jwks.url(), 600),
            pem_issuer(pem_iss, &pem_key),
        ],
        |_| {},
    )
    .await;
    assert_ok(
        &gw.call(&good.sign(&claims(ISSUER, AUDIENCE, "u"))).await,
        "u",
        "warm-up",
    );
    let fetches = jwks.fetches();

    let c = || claims(ISSUER, AUDIENCE, "user-0042");
    let with = |patch: Value| {
        let mut c = c();
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let es = |kid: &str| json!({"alg": "ES256", "kid": kid});
    let valid = good.sign(&c());
    let parts: Vec<&str> = valid.split('.').collect();
    let (head, payload, sig) = (parts[0], parts[1], parts[2]);
    let hmac = |secret: &[u8], header: Value, claims: &Value| {
        sign_raw(
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
            &header,
            claims,
        )
    };
    let spki_der = {
        let body: String = pem_key
            .pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).expect("DER")
    };
    let mut tampered_sig = sig.to_owned().into_bytes();
    tampered_sig[20] = if tampered_sig[20] == b'A' { b'B' } else { b'A' };
    let tampered_sig = String::from_utf8(tampered_sig).expect("ascii");
    let mut big = c();
    big["padding"] = json!("x".repeat(9000));

    let cases: Vec<(&str, String, &str)> = vec![
        // `none`, in every spelling, with and without a signature.
        (
            "alg none",
            format!("{}.{payload}.", b64(r#"{"alg":"none"}"#)),
            "TOKEN_INVALID",
        ),
        (
            "alg None",
            format!("{}.{payload}.", b64(r#"{"alg":"None","kid":"good"}"#)),
            "TOKEN_INVALID",
        ),
        (
            "alg NONE + signature",
            format!("{}.{payload}.{sig}", b64(r#"{"alg":"NONE"}"#)),
            "TOKEN_INVALID",
        ),
        (
            "alg missing",
            format!("{}.{payload}.{sig}", b64(r#"{"kid":"good"}"#)),
            "TOKEN_INVALID",
        ),
        (
            "alg unknown",
            format!("{}.{payload}.{sig}", b64(r#"{"alg":"ES999","kid":"good"}"#)),
            "TOKEN_INVALID",
        ),
        // HMAC keyed with public material the attacker can read.
        (
            "HS256 keyed with the PEM",
            hmac(
                pem_key.pem.as_bytes(),
                json!({"alg": "HS256"}),
                &claims(pem_iss, AUDIENCE, "x"),
            ),
            "TOKEN_INVALID",
        ),
        (
            "HS256 keyed with the SPKI DER",
            hmac(
                &spki_der,
                json!({"alg": "HS256"}),
                &claims(pem_iss, AUDIENCE, "x"),
            ),
            "TOKEN_INVALID",
        ),
        (
            "HS256 keyed with the JWK",
            hmac(
                good.jwk.to_string().as_bytes(),
                json!({"alg": "HS256", "kid": "good"}),
                &c(),
            ),
            "TOKEN_INVALID",
        ),
        (
            "HS256 keyed with the JWK's x",
            hmac(
                good.jwk["x"].as_str().unwrap_or_default().as_bytes(),
                json!({"alg": "HS256", "kid": "good"}),
                &c(),
            ),
            "TOKEN_INVALID",
        ),
        // Keys the token brings along, or points at.
        (
            "embedded jwk with the real kid",
            attacker.sign_raw(
                &json!({"alg": "ES256", "kid": "good", "jwk": attacker.jwk}),
                &c(),
            ),
            "TOKEN_INVALID",
        ),
        (
            "embedded jwk, no kid",
            attacker.sign_raw(&json!({"alg": "ES256", "jwk": attacker.jwk}), &c()),
            "TOKEN_INVALID",
        ),
        (
            "jku",
            attacker.sign_raw(
                &json!({"alg": "ES256", "kid": "evil", "jku": jwks.stray_url("jku")}),
                &c(),
            ),
            "TOKEN_INVALID",
        ),
        (
            "jku with the real kid",
            attacker.sign_raw(
                &json!({"alg": "ES256", "kid": "good", "jku": jwks.stray_url("jku2")}),
                &c(),
            ),
            "TOKEN_INVALID",
        ),
        (
            "x5u",
            attacker.sign_raw(
                &json!({"alg": "ES256", "kid": "good", "x5u": jwks.stray_url("x5u")}),
                &c(),
            ),
            "TOKEN_INVALID",
        ),
        (
            "x5c",
            attacker.sign_raw(&json!({"alg": "ES256", "x5c": [b64(&spki_der)]}), &c()),
            "TOKEN_INVALID",
        ),
        (
            "RS256 with the EC key's kid",
            attacker_rsa.sign(&c()),
            "TOKEN_INVALID",
        ),
        (
            "forged signature, real kid",
            attacker.sign(&c()),
            "TOKEN_INVALID",
        ),
        // `kid` is a map key and nothing else.
        (
            "kid path traversal",
            attacker.sign_raw(&es("../../../../etc/passwd"), &c()),
            "TOKEN_INVALID",
        ),
        (
            "kid SQL",
            attacker.sign_raw(&es("' OR '1'='1' --"), &c()),
            "TOKEN_INVALID",
        ),
        (
            "kid NUL and newline",
            attacker.sign_raw(&es("good\u{0}\r\nx-evil: 1"), &c()),
            "TOKEN_INVALID",
        ),
        (
            "kid 4000 bytes",
            attacker.sign_raw(&es(&"k".repeat(4000)), &c()),
            "TOKEN_INVALID",
        ),
        (
            "kid a number",
            attacker.sign_raw(&json!({"alg": "ES256", "kid": 7}), &c()),
            "TOKEN_INVALID",
        ),
        (
            "kid an object",
            attacker.sign_raw(&json!({"alg": "ES256", "kid": {"$ne": ""}}), &c()),
            "TOKEN_INVALID",
        ),
        // Malformed segments.
        ("one segment", head.to_owned(), "TOKEN_INVALID"),
        ("two segments", format!("{head}.{payload}"), "TOKEN_INVALID"),
        ("four segments", format!("{valid}.{sig}"), "TOKEN_INVALID"),
        ("empty segments", "..".to_owned(), "TOKEN_INVALID"),
        (
            "bad base64 header",
            format!("!!!$.{payload}.{sig}"),
            "TOKEN_INVALID",
        ),
        (
            "padded base64 header",
            format!("{head}==.{payload}.{sig}"),
            "TOKEN_INVALID",
        ),
        (
            "non-JSON header",
            format!("{}.{payload}.{sig}", b64("not json")),
            "TOKEN_INVALID",
        ),
        (
            "header a JSON array",
            format!("{}.{payload}.{sig}", b64("[\"ES256\"]")),
            "TOKEN_INVALID",
        ),
        (
            "duplicate alg",
            format!(
                "{}.{payload}.{sig}",
                b64(r#"{"alg":"ES256","alg":"none","kid":"good"}"#)
            ),
            "TOKEN_INVALID",
        ),
        (
            "non-JSON payload",
            format!("{head}.{}.{sig}", b64("nope")),
            "TOKEN_INVALID",
        ),
        (
            "bad base64 signature",
            format!("{head}.{payload}.@@@@"),
            "TOKEN_INVALID",
        ),
        (
            "truncated signature",
            format!("{head}.{payload}.{}", &sig[..sig.len() - 8]),
            "TOKEN_INVALID",
        ),
        (
            "tampered signature",
            format!("{head}.{payload}.{tampered_sig}"),
            "TOKEN_INVALID",
        ),
        (
            "swapped payload",
            format!(
                "{head}.{}.{sig}",
                b64(with(json!({"sub": "admin"})).to_string())
            ),
            "TOKEN_INVALID",
        ),
        // Claims.
        (
            "expired",
            good.sign(&with(json!({"exp": now() - 120}))),
            "TOKEN_EXPIRED",
        ),
        (
            "not yet valid",
            good.sign(&with(json!({"nbf": now() + 120}))),
            "TOKEN_NOT_YET_VALID",
        ),
        (
            "wrong issuer",
            good.sign(&with(json!({"iss": "https://evil.test"}))),
            "TOKEN_ISSUER_UNTRUSTED",
        ),
        (
            "no issuer",
            good.sign(&with(json!({"iss": null}))),
            "TOKEN_ISSUER_UNTRUSTED",
        ),
        (
            "issuer not a string",
            good.sign(&with(json!({"iss": [ISSUER]}))),
            "TOKEN_INVALID",
        ),
        (
            "wrong audience",
            good.sign(&with(json!({"aud": "bff-other"}))),
            "TOKEN_AUDIENCE_MISMATCH",
        ),
        (
            "no audience",
            good.sign(&with(json!({"aud": null}))),
            "TOKEN_INVALID",
        ),
        (
            "no exp",
            good.sign(&with(json!({"exp": null}))),
            "TOKEN_INVALID",
        ),
        (
            "exp a string",
            good.sign(&with(json!({"exp": "tomorrow"}))),
            "TOKEN_INVALID",
        ),
        (
            "no sub",
            good.sign(&with(json!({"sub": null}))),
            "TOKEN_INVALID",
        ),
        (
            "empty sub",
            good.sign(&with(json!({"sub": ""}))),
            "TOKEN_INVALID",
        ),
        (
            "crit",
            good.sign_raw(
                &json!({"alg": "ES256", "kid": "good", "crit": ["exp"]}),
                &c(),
            ),
            "TOKEN_INVALID",
        ),
        (
            "crit empty",
            good.sign_raw(&json!({"alg": "ES256", "kid": "good", "crit": []}), &c()),
            "TOKEN_INVALID",
        ),
        ("oversize, validly signed", good.sign(&big), "TOKEN_INVALID"),
    ];
    for (what, token, code) in &cases {
        assert_refused(&gw.call(token).await, code, what);
    }
    assert_eq!(
        jwks.stray_hits(),
        0,
        "no URL named in a token was ever fetched"
    );
    assert!(
        jwks.fetches() <= fetches + 1,
        "{} unknown-kid tokens cost at most one refetch, got {}",
        cases.len(),
        jwks.fetches() - fetches
    );
    // The genuine token still works after all that.
    assert_ok(&gw.call(&valid).await, "user-0042", "the genuine token");
}

#[tokio::test]
async fn leeway_applies_to_exp_and_nbf_and_is_configurable() {
    let key = TestKey::generate(Algorithm::EdDSA, "ed");
    let iss = "https://leeway.test";
    let skewed = |exp: i64, nbf: i64| {
        let mut c = claims(iss, AUDIENCE, "u");
        c["exp"] = json!(now() + exp);
        c["nbf"] = json!(now() + nbf);
        key.sign(&c)
    };
    let default = TestGateway::start(vec![pem_issuer(iss, &key)], |_| {}).await;
    assert_ok(
        &default.call(&skewed(-10, -3600)).await,
        "u",
        "expired 10 s ago, 30 s leeway",
    );
    assert_ok(
        &default.call(&skewed(3600, 10)).await,
        "u",
        "valid in 10 s, 30 s leeway",
    );
    assert_refused(
        &default.call(&skewed(-60, -3600)).await,
        "TOKEN_EXPIRED",
        "expired 60 s ago",
    );
    let strict = TestGateway::start(vec![pem_issuer(iss, &key)], |c| c.auth.leeway_secs = 0).await;
    assert_refused(
        &strict.call(&skewed(-10, -3600)).await,
        "TOKEN_EXPIRED",
        "no leeway: exp",
    );
    assert_refused(
        &strict.call(&skewed(3600, 10)).await,
        "TOKEN_NOT_YET_VALID",
        "no leeway: nbf",
    );
}

// === key rotation and JWKS availability ===

#[tokio::test]
async fn a_newly_published_key_is_accepted_after_one_refetch_and_a_withdrawn_one_stops_at_once() {
    let (a, b, c) = (
        TestKey::generate(Algorithm::ES256, "a"),
        TestKey::generate(Algorithm::ES256, "b"),
        TestKey::generate(Algorithm::ES256, "c"),
    );
    let jwks = JwksServer::start().await;
    jwks.publish(&[&a]);
    let gw = TestGateway::start(vec![jwks_issuer(ISSUER, &jwks.url(), 1)], |_| {}).await;
    let token_a = a.sign(&claims(ISSUER, AUDIENCE, "user-a"));
    assert_ok(&gw.call(&token_a).await, "user-a", "key a");
    assert_eq!(jwks.fetches(), 1);

    jwks.publish(&[&a, &b]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_ok(
        &gw.call(&b.sign(&claims(ISSUER, AUDIENCE, "user-b"))).await,
        "user-b",
        "new key b",
    );
    assert_eq!(jwks.fetches(), 2, "one refetch found the new key");
    assert_ok(
        &gw.call(&b.sign(&claims(ISSUER, AUDIENCE, "user-b2"))).await,
        "user-b2",
        "b again",
    );
    assert_ok(&gw.call(&token_a).await, "user-a", "a still published");
    assert_eq!(jwks.fetches(), 2, "known keys cost no fetch");

    // The issuer withdraws a; the next refetch (here caused by an unknown kid) drops it, and the
    // token it signed stops verifying although it verified, and was remembered, before.
    jwks.publish(&[&b]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_refused(
        &gw.call(&c.sign(&claims(ISSUER, AUDIENCE, "x"))).await,
        "TOKEN_INVALID",
        "unpublished c",
    );
    assert_eq!(jwks.fetches(), 3);
    assert_refused(&gw.call(&token_a).await, "TOKEN_INVALID", "withdrawn key a");
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_one_shared_fetch_per_cooldown() {
    let key = TestKey::generate(Algorithm::ES256, "known");
    let jwks = JwksServer::start().await;
    jwks.publish(&[&key]);
    let gw = TestGateway::start(vec![jwks_issuer(ISSUER, &jwks.url(), 2)], |_| {}).await;
    assert_ok(
        &gw.call(&key.sign(&claims(ISSUER, AUDIENCE, "u"))).await,
        "u",
        "warm-up",
    );
    let before = jwks.fetches();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // A slow JWKS, so the requests really wait on the same fetch.
    jwks.delay(300);

    let flood = |round: usize| {
        let gw = &gw;
        let key = &key;
        futures::future::join_all((0..50).map(move |i| async move {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(format!("unknown-{round}-{i}"));
            gw.call(&key.sign_with(&header, &claims(ISSUER, AUDIENCE, "u")))
                .await
        }))
    };
    for seen in flood(1).await {
        assert_refused(&seen, "TOKEN_INVALID", "unknown kid");
    }
    assert_eq!(
        jwks.fetches(),
        before + 1,
        "50 concurrent unknown kids, one fetch"
    );
    for seen in flood(2).await {
        assert_refused(&seen, "TOKEN_INVALID", "unknown kid, within the cooldown");
    }
    assert_eq!(jwks.fetches(), before + 1, "no fetch within the cooldown");
}

#[tokio::test]
async fn with_a_warm_cache_a_jwks_outage_changes_nothing() {
    let key = TestKey::generate(Algorithm::RS256, "rsa");
    let jwks = JwksServer::start().await;
    jwks.publish(&[&key]);
    let gw = TestGateway::start(vec![jwks_issuer(ISSUER, &jwks.url(), 1)], |c| {
        c.auth.issuers[0].jwks_refresh_secs = 1;
    })
    .await;
    assert_ok(
        &gw.call(&key.sign(&claims(ISSUER, AUDIENCE, "u1"))).await,
        "u1",
        "before",
    );
    jwks.fail(true);
    let before = jwks.fetches();
    assert!(
        eventually(Duration::from_secs(5), async || jwks.fetches()
            >= before + 2)
        .await,
        "the background refresh kept trying"
    );
    // A token never seen before, so the keys (not the verified-token cache) answer.
    assert_ok(
        &gw.call(&key.sign(&claims(ISSUER, AUDIENCE, "u2"))).await,
        "u2",
        "during the outage",
    );
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("unknown".into());
    assert_refused(
        &gw.call(&key.sign_with(&header, &claims(ISSUER, AUDIENCE, "u3")))
            .await,
        "TOKEN_INVALID",
        "unknown kid during the outage is still a 401",
    );
}

#[tokio::test]
async fn with_a_cold_cache_a_jwks_outage_is_503_keys_unavailable_until_it_recovers() {
    let key = TestKey::generate(Algorithm::EdDSA, "ed");
    let jwks = JwksServer::start().await;
    jwks.publish(&[&key]);
    jwks.fail(true);
    let gw = TestGateway::start(vec![jwks_issuer(ISSUER, &jwks.url(), 30)], |_| {}).await;
    let token = key.sign(&claims(ISSUER, AUDIENCE, "u"));
    let seen = gw.call(&token).await;
    assert_eq!(
        seen.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        seen.body
    );
    assert_eq!(seen.code(), "KEYS_UNAVAILABLE");
    assert_eq!(seen.header("retry-after"), "1");
    assert!(
        seen.header("www-authenticate").is_empty(),
        "not a credentials problem"
    );

    // Without keys the gateway retries well within the 30 s cooldown.
    jwks.fail(false);
    assert!(
        eventually(Duration::from_secs(5), async || gw
            .call(&token)
            .await
            .status
            == StatusCode::OK)
        .await,
        "keys arrived once the JWKS was back"
    );
}

// === the verified-token cache ===

#[tokio::test]
async fn a_remembered_token_never_vouches_for_a_token_differing_in_one_byte() {
    let key = TestKey::generate(Algorithm::ES256, "k");
    let jwks = JwksServer::start().await;
    jwks.publish(&[&key]);
    let gw = TestGateway::start(vec![jwks_issuer(ISSUER, &jwks.url(), 30)], |_| {}).await;
    let token = key.sign(&claims(ISSUER, AUDIENCE, "user-1"));
    for _ in 0..3 {
        assert_ok(&gw.call(&token).await, "user-1", "repeated token");
    }
    let other = key.sign(&claims(ISSUER, AUDIENCE, "user-2"));
    assert_ok(
        &gw.call(&other).await,
        "user-2",
        "another token, another principal",
    );
    let (head, rest) = token.split_once('.').expect("segments");
    let (payload, sig) = rest.split_once('.').expect("segments");
    let mut forged = sig.to_owned().into_bytes();
    forged[30] = if forged[30] == b'x' { b'y' } else { b'x' };
    let forged = format!(
        "{head}.{payload}.{}",
        String::from_utf8(forged).expect("ascii")
    );
    assert_refused(
        &gw.call(&forged).await,
        "TOKEN_INVALID",
        "one byte of the signature changed",
    );
    let other_payload = other.split('.').nth(1).expect("payload");
    assert_refused(
        &gw.call(&format!("{head}.{other_payload}.{sig}")).await,
        "TOKEN_INVALID",
        "a cached token's signature on another payload",
    );
}

// === partner API keys ===

#[tokio::test]
async fn configured_api_keys_map_to_partner_tier_and_version_through_either_header() {
    let key = generate_key();
    let gw = TestGateway::start(vec![], |c| {
        c.auth.mode = AuthMode::ApiKey;
        c.auth.api_keys.push(ApiKeyConfig {
            sha256: KeyHash::of(&key).to_hex(),
            partner: "acme".into(),
            tier: "gold".into(),
            version: Some("2024-01-01".into()),
        });
    })
    .await;
    let bearer = format!("Bearer {key}");
    for (what, header) in [
        ("X-Api-Key", ("x-api-key", key.as_str())),
        ("Bearer", ("authorization", bearer.as_str())),
    ] {
        let seen = gw.call_with(&[header]).await;
        assert_ok(&seen, "acme", what);
        assert_eq!(seen.json()["tier"], "gold", "{what}");
        assert_eq!(seen.json()["partner_version"], "2024-01-01", "{what}");
        assert!(
            !seen.header("x-ratelimit-limit").is_empty(),
            "{what}: limited once known"
        );
    }

    let mut off_by_one = key.clone().into_bytes();
    let last = off_by_one.len() - 1;
    off_by_one[last] = if off_by_one[last] == b'A' { b'B' } else { b'A' };
    let off_by_one = String::from_utf8(off_by_one).expect("ascii");
    let jwt = TestKey::generate(Algorithm::ES256, "k").sign(&claims(ISSUER, AUDIENCE, "u"));
    let long = format!("bffk_{}", "A".repeat(200));
    for (what, header, code) in [
        (
            "unknown key",
            ("x-api-key", "bffk_unknown"),
            "API_KEY_INVALID",
        ),
        (
            "one character off",
            ("x-api-key", off_by_one.as_str()),
            "API_KEY_INVALID",
        ),
        ("too long", ("x-api-key", long.as_str()), "API_KEY_INVALID"),
        ("empty key", ("x-api-key", ""), "API_KEY_INVALID"),
        (
            "a user's JWT",
            ("authorization", &format!("Bearer {jwt}")),
            "API_KEY_INVALID",
        ),
        (
            "another scheme",
            ("authorization", &format!("Basic {key}")),
            "TOKEN_INVALID",
        ),
        ("nothing", ("x-unrelated", "1"), "CREDENTIALS_MISSING"),
    ] {
        assert_refused(&gw.call_with(&[header]).await, code, what);
    }
}
