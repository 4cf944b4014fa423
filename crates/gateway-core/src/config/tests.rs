// figment's Jail dictates the closure's error type.
#![allow(clippy::result_large_err)]

use super::*;

fn defaults() -> Config<()> {
    Config::local(8081, "bff-mobile").upstream("user", DEV_GRPC_URL, 800)
}

fn load_with(toml: &str, env: &[(&str, &str)]) -> Result<Config<()>, String> {
    let mut out = Err(String::new());
    figment::Jail::expect_with(|jail| {
        jail.create_file("bff.toml", toml)?;
        for (k, v) in env {
            jail.set_env(k, v);
        }
        out = Config::load(&defaults(), Some(Path::new("bff.toml"))).map_err(|e| e.0);
        Ok(())
    });
    out
}

#[test]
fn file_overrides_defaults_and_env_overrides_file() {
    let cfg = load_with(
        "[server]\nlisten = \"127.0.0.1:9999\"\n[ratelimit.policies.default]\nlimit = 5\nperiod_secs = 1\n",
        &[("BFF_RATELIMIT__POLICIES__DEFAULT__LIMIT", "7")],
    )
    .expect("valid");
    assert_eq!(cfg.server.listen.port(), 9999);
    assert_eq!(cfg.ratelimit.policies["default"].limit, 7);
    assert_eq!(cfg.upstreams["user"].url, DEV_GRPC_URL);
}

#[test]
fn unrelated_bff_variables_are_ignored() {
    let cfg = load_with("", &[("BFF_REQUIRE_REDIS", "1")]);
    assert!(cfg.is_ok(), "{cfg:?}");
}

#[test]
fn unknown_key_in_file_is_named() {
    let err = load_with("[server]\nlisten_addr = \"127.0.0.1:1\"\n", &[]).expect_err("unknown key");
    assert!(err.contains("listen_addr"), "{err}");
    assert!(err.contains("server"), "{err}");
}

#[test]
fn unknown_key_in_env_is_named() {
    let err = load_with("", &[("BFF_SERVER__LISTN", "x")]).expect_err("unknown key");
    assert!(err.contains("listn"), "{err}");
}

#[test]
fn bad_value_names_key_and_value() {
    let err = load_with(
        "[ratelimit.policies.default]\nalgorithm = \"gcra\"\nlimit = 10\nperiod_secs = 1\nburst = 0\n",
        &[],
    )
    .expect_err("zero burst");
    assert_eq!(err, "ratelimit.policies.default.burst must be > 0, got 0");
}

#[test]
fn the_memory_stores_are_bounded_in_entries_and_bytes() {
    let cfg = load_with("[cache]\nmax_bytes = 1048576\n", &[]).expect("valid");
    assert_eq!(cfg.cache.max_bytes, 1_048_576);
    assert_eq!(defaults().cache.max_bytes, DEFAULT_CACHE_MAX_BYTES);
    for table in ["cache", "idempotency"] {
        for key in ["max_entries", "max_bytes"] {
            let err = load_with(&format!("[{table}]\n{key} = 0\n"), &[]).expect_err(key);
            assert_eq!(err, format!("{table}.{key} must be > 0, got 0"));
        }
    }
}

#[test]
fn workers_are_bounded() {
    let err = load_with("", &[("BFF_SERVER__WORKERS", "1025")]).expect_err("too many workers");
    assert_eq!(err, "server.workers must be at most 1024, got 1025");
    let ok = load_with("[server]\nworkers = 1\n", &[]).expect("one worker");
    assert_eq!(ok.server.workers, 1);
}

#[test]
fn tier_naming_a_missing_policy_is_refused() {
    let err = load_with("[ratelimit.tiers]\ngold = \"platinum\"\n", &[]).expect_err("bad tier");
    assert!(
        err.starts_with("ratelimit.tiers.\"gold\" must name a policy"),
        "{err}"
    );
}

#[test]
fn missing_file_is_an_error() {
    let err =
        Config::load(&defaults(), Some(Path::new("/nonexistent/bff.toml"))).expect_err("missing");
    assert!(err.0.contains("does not exist"));
}

#[test]
fn burst_needs_gcra() {
    let err = load_with(
        "[ratelimit.policies.default]\nlimit = 10\nperiod_secs = 1\nburst = 5\n",
        &[],
    )
    .expect_err("burst with a sliding window");
    assert_eq!(
        err,
        "ratelimit.policies.default.burst only applies with algorithm = \"gcra\", got 5"
    );
}

fn issuer_toml(extra: &str) -> String {
    format!(
        "[auth]\n[[auth.issuers]]\nissuer = \"https://dev.test\"\naudiences = [\"bff-mobile\"]\n{extra}"
    )
}

#[test]
fn an_issuer_never_mixes_hmac_and_public_keys() {
    let err = load_with(
        &issuer_toml(
            "jwks_url = \"http://idp/jwks\"\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n",
        ),
        &[],
    )
    .expect_err("HMAC and JWKS");
    assert!(
        err.starts_with(
            "auth.issuers[0].hs256_secret cannot be combined with jwks_url or pem_file"
        ),
        "{err}"
    );
    assert!(
        !err.contains("0123456789abcdef"),
        "the secret is never echoed: {err}"
    );
}

#[test]
fn a_short_hs256_secret_is_refused_without_being_echoed() {
    let err = load_with(&issuer_toml("hs256_secret = \"short-secret\"\n"), &[])
        .expect_err("short secret");
    assert_eq!(
        err,
        "auth.issuers[0].hs256_secret must be at least 32 bytes, got 12 bytes"
    );
}

#[test]
fn an_hs256_issuer_alone_is_valid() {
    let cfg = load_with(
        &issuer_toml("hs256_secret = \"0123456789abcdef0123456789abcdef\"\n"),
        &[],
    )
    .expect("valid");
    assert_eq!(cfg.auth.issuers.len(), 1);
    assert!(cfg.auth.issuers[0].jwks_url.is_none());
}

#[test]
fn pem_algorithm_must_be_a_public_key_algorithm() {
    let err = load_with(
        &issuer_toml("pem_file = \"k.pem\"\npem_algorithm = \"HS256\"\n"),
        &[],
    )
    .expect_err("HS256 PEM");
    assert_eq!(
        err,
        "auth.issuers[0].pem_algorithm must be RS256, PS256, ES256 or EdDSA (HS256 takes hs256_secret), got \"HS256\""
    );
}

#[test]
fn an_issuer_needs_exactly_one_key_source() {
    let err = load_with(&issuer_toml(""), &[]).expect_err("no keys");
    assert_eq!(
        err,
        "auth.issuers[0] must set exactly one of jwks_url, pem_file and hs256_secret, got none"
    );
}

#[test]
fn issuers_are_unique_and_leeway_is_bounded() {
    let twice = format!(
        "{}[[auth.issuers]]\nissuer = \"https://dev.test\"\naudiences = [\"x\"]\njwks_url = \"http://b/jwks\"\n",
        issuer_toml("jwks_url = \"http://a/jwks\"\n")
    );
    let err = load_with(&twice, &[]).expect_err("duplicate issuer");
    assert_eq!(
        err,
        "auth.issuers[1].issuer must be unique, got \"https://dev.test\" twice"
    );
    let err = load_with("[auth]\nleeway_secs = 3600\n", &[]).expect_err("huge leeway");
    assert_eq!(err, "auth.leeway_secs must be <= 300, got 3600");
}

#[test]
fn the_verified_token_cache_can_be_sized_or_disabled() {
    let cfg = load_with("[auth]\nverified_cache_max_entries = 0\n", &[]).expect("valid");
    assert_eq!(cfg.auth.verified_cache_max_entries, 0);
    assert_eq!(
        defaults().auth.verified_cache_max_entries,
        DEFAULT_VERIFIED_CACHE_MAX_ENTRIES
    );
}

#[test]
fn proxy_routes_are_checked_and_named() {
    let route = |body: &str| format!("[[proxy]]\nupstream = \"user\"\n{body}\n");
    let ok = load_with(
        &route("prefix = \"/api/catalog\"\nrewrite = \"/catalog\"\nmethods = [\"GET\", \"POST\"]"),
        &[],
    )
    .expect("valid");
    assert_eq!(ok.proxy[0].methods, ["GET", "POST"]);
    let defaulted = load_with(&route("prefix = \"/x\""), &[]).expect("valid");
    assert_eq!(defaulted.proxy[0].methods, ["GET", "HEAD"]);
    for (body, named) in [
        ("prefix = \"api\"", "proxy[0].prefix"),
        ("prefix = \"/api/\"", "proxy[0].prefix"),
        ("prefix = \"/api/../admin\"", "proxy[0].prefix"),
        ("prefix = \"/api/%2e\"", "proxy[0].prefix"),
        ("prefix = \"/\"", "proxy[0].prefix"),
        ("prefix = \"/metrics\"", "proxy[0].prefix"),
        ("prefix = \"/healthz\"", "proxy[0].prefix"),
        ("prefix = \"/a\"\nrewrite = \"b\"", "proxy[0].rewrite"),
        ("prefix = \"/a\"\nmethods = [\"get\"]", "proxy[0].methods"),
        ("prefix = \"/a\"\nmethods = []", "proxy[0].methods"),
        ("prefix = \"/a\"\nscopes = [\"a b\"]", "proxy[0].scopes"),
    ] {
        let err = load_with(&route(body), &[]).expect_err(body);
        assert!(err.contains(named), "{body}: {err}");
    }
    let err = load_with("[[proxy]]\nprefix = \"/a\"\nupstream = \"nope\"\n", &[])
        .expect_err("unknown upstream");
    assert!(err.contains("proxy[0].upstream"), "{err}");
    let twice = format!("{}{}", route("prefix = \"/a\""), route("prefix = \"/a\""));
    let err = load_with(&twice, &[]).expect_err("twice");
    assert!(err.contains("proxy[1].prefix"), "{err}");
}

#[test]
fn a_split_takes_a_percentage_and_defaults_its_name() {
    let cfg = load_with(
        "[upstreams.user.split]\nurl = \"http://10.0.0.2:50051\"\npercent = 10\n",
        &[],
    )
    .expect("valid");
    let split = cfg.upstreams["user"].split.as_ref().expect("split");
    assert_eq!(split.percent, 10.0);
    assert_eq!(split.name, DEFAULT_SPLIT_NAME);
    assert!(split.instances.is_empty());
    let cfg = load_with(
        "[upstreams.user.split]\nurl = \"http://a:1\"\ninstances = [\"http://b:1\"]\npercent = 0.5\nname = \"v2\"\n",
        &[],
    )
    .expect("fractions and names");
    let split = cfg.upstreams["user"].split.as_ref().expect("split");
    assert_eq!((split.percent, split.name.as_str()), (0.5, "v2"));
    assert!(
        defaults().upstreams["user"].split.is_none(),
        "off by default"
    );
}

#[test]
fn bad_splits_are_named() {
    for (toml, expected) in [
        (
            "url = \"http://a:1\"\npercent = 150\n",
            "upstreams.user.split.percent must be between 0 and 100, got 150",
        ),
        (
            "url = \"http://a:1\"\npercent = -1\n",
            "upstreams.user.split.percent must be between 0 and 100, got -1",
        ),
        (
            "url = \"grpc://a:1\"\npercent = 5\n",
            "upstreams.user.split.url must be an http(s) URL, got \"grpc://a:1\"",
        ),
        (
            "url = \"http://a:1\"\ninstances = [\"a:2\"]\npercent = 5\n",
            "upstreams.user.split.instances[0] must be an http(s) URL, got \"a:2\"",
        ),
        (
            "url = \"http://a:1\"\npercent = 5\nname = \"primary\"\n",
            "upstreams.user.split.name must not be \"primary\" (the label of the primary version), got \"primary\"",
        ),
        (
            "url = \"http://a:1\"\npercent = 5\nname = \"new version\"\n",
            "upstreams.user.split.name must be 1 to 64 of A-Z a-z 0-9 - _ ., got \"new version\"",
        ),
    ] {
        let err = load_with(&format!("[upstreams.user.split]\n{toml}"), &[]).expect_err(toml);
        assert_eq!(err, expected);
    }
    let err = load_with(
        "[upstreams.user.split]\nurl = \"http://a:1\"\npercent = 5\nweight = 2\n",
        &[],
    )
    .expect_err("unknown key");
    assert!(
        err.contains("upstreams.user.split") && err.contains("weight"),
        "{err}"
    );
    let err =
        load_with("[upstreams.user.split]\nurl = \"http://a:1\"\n", &[]).expect_err("no percent");
    assert!(err.contains("percent"), "{err}");
}

#[test]
fn faults_are_off_by_default_and_set_from_file_or_environment() {
    assert!(defaults().upstreams["user"].fault.is_none());
    let cfg = load_with(
        "[upstreams.user.fault]\ndelay_ms = 250\ndelay_percent = 10\n",
        &[("BFF_UPSTREAMS__USER__FAULT__ERROR_PERCENT", "100")],
    )
    .expect("valid");
    let fault = cfg.upstreams["user"].fault.as_ref().expect("fault");
    assert_eq!(
        (fault.delay_ms, fault.delay_percent, fault.error_percent),
        (250, 10.0, 100.0)
    );
}

#[test]
fn bad_faults_are_named() {
    for (toml, expected) in [
        (
            "error_percent = 101\n",
            "upstreams.user.fault.error_percent must be between 0 and 100, got 101",
        ),
        (
            "delay_ms = 10\ndelay_percent = 100.5\n",
            "upstreams.user.fault.delay_percent must be between 0 and 100, got 100.5",
        ),
        (
            "delay_percent = 50\n",
            "upstreams.user.fault.delay_ms must be > 0 when delay_percent is set, got 0",
        ),
    ] {
        let err = load_with(&format!("[upstreams.user.fault]\n{toml}"), &[]).expect_err(toml);
        assert_eq!(err, expected);
    }
    let err =
        load_with("[upstreams.user.fault]\nabort_status = 503\n", &[]).expect_err("unknown key");
    assert!(err.contains("abort_status"), "{err}");
}

#[test]
fn cluster_seed_nodes_come_as_a_list_or_comma_separated() {
    let cfg = load_with(
        "[redis]\ncluster_urls = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\n",
        &[],
    )
    .expect("a list");
    assert_eq!(
        cfg.redis.cluster_urls,
        ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
    );
    let cfg = load_with(
        "",
        &[(
            "BFF_REDIS__CLUSTER_URLS",
            "redis://10.0.0.1:7000, redis://10.0.0.2:7000,redis://10.0.0.3:7000",
        )],
    )
    .expect("commas");
    assert_eq!(
        cfg.redis.cluster_urls,
        [
            "redis://10.0.0.1:7000",
            "redis://10.0.0.2:7000",
            "redis://10.0.0.3:7000"
        ]
    );
    assert!(cfg.redis.url.is_none());
    let redis = crate::store::Redis::from_config(&cfg.redis)
        .expect("usable")
        .expect("a cluster client");
    assert!(format!("{redis:?}").contains("cluster"), "{redis:?}");
}

#[test]
fn bad_cluster_settings_are_named() {
    let err = load_with(
        "[redis]\nurl = \"redis://10.0.0.1:6379\"\ncluster_urls = [\"redis://10.0.0.1:7000\"]\n",
        &[],
    )
    .expect_err("both");
    assert!(
        err.starts_with("redis.cluster_urls cannot be combined with redis.url"),
        "{err}"
    );

    let err = load_with(
        "[redis]\ncluster_urls = [\"redis://10.0.0.1:7000\", \"http://:hunter2@10.0.0.2:7000\"]\n",
        &[],
    )
    .expect_err("scheme");
    assert_eq!(
        err,
        "redis.cluster_urls[1] must start with redis:// or rediss://, got scheme \"http\""
    );

    let err = load_with(
        "[redis]\ncluster_urls = [\"redis://10.0.0.1:notaport\"]\n",
        &[],
    )
    .expect_err("port");
    assert!(
        err.starts_with("redis.cluster_urls[0] is not a usable Redis URL"),
        "{err}"
    );

    let err = load_with(
        "[redis]\ncluster_urls = [\"redis://10.0.0.1:7000/3\"]\n",
        &[],
    )
    .expect_err("database");
    assert_eq!(
        err,
        "redis.cluster_urls[0] must not select a database: a cluster has only database 0, got 3"
    );

    let err = load_with(
        "[redis]\nkey_prefix = \"bff{eu}\"\ncluster_urls = [\"redis://10.0.0.1:7000\"]\n",
        &[],
    )
    .expect_err("braces");
    assert_eq!(
        err,
        "redis.key_prefix must not contain `{` or `}` with redis.cluster_urls, got \"bff{eu}\""
    );
    // One server has no slots: the same prefix is fine there.
    load_with(
        "[redis]\nkey_prefix = \"bff{eu}\"\nurl = \"redis://10.0.0.1:6379\"\n",
        &[],
    )
    .expect("a prefix with braces on one server");
}

#[test]
fn dns_discovery_is_static_by_default_and_checked() {
    let user = &defaults().upstreams["user"];
    assert_eq!(
        user.discovery,
        crate::upstream::discovery::Discovery::Static
    );
    let cfg = load_with(
        "[upstreams.user]\nurl = \"http://user-svc.internal:50051\"\ndiscovery = \"dns\"\n",
        &[("BFF_UPSTREAMS__USER__DNS_REFRESH_MS", "2000")],
    )
    .expect("valid");
    let user = &cfg.upstreams["user"];
    assert_eq!(user.discovery, crate::upstream::discovery::Discovery::Dns);
    assert_eq!(user.dns_refresh_ms, 2000);
    for (toml, expected) in [
        (
            "url = \"https://user-svc.internal\"\ndiscovery = \"dns\"\n",
            "upstreams.user.discovery \"dns\" needs http:// URLs: it connects to the addresses found, and a TLS certificate names the host, got \"https://user-svc.internal\"",
        ),
        (
            "url = \"http://user-svc.internal\"\ndiscovery = \"dns\"\ndns_refresh_ms = 10\n",
            "upstreams.user.dns_refresh_ms must be between 100 and 86400000, got 10",
        ),
    ] {
        let err = load_with(&format!("[upstreams.user]\n{toml}"), &[]).expect_err(toml);
        assert_eq!(err, expected);
    }
    let err = load_with("[upstreams.user]\ndiscovery = \"consul\"\n", &[]).expect_err("consul");
    assert!(err.contains("consul") && err.contains("discovery"), "{err}");
}

#[test]
fn an_upstream_speaks_http1_unless_told_http2() {
    use crate::upstream::Protocol;
    assert_eq!(defaults().upstreams["user"].protocol, Protocol::Http1);
    let cfg = load_with("[upstreams.user]\nprotocol = \"http2\"\n", &[]).expect("valid");
    assert_eq!(cfg.upstreams["user"].protocol, Protocol::Http2);
    let cfg = load_with(
        "[upstreams.content]\nurl = \"http://127.0.0.1:9001\"\n",
        &[("BFF_UPSTREAMS__CONTENT__PROTOCOL", "http2")],
    )
    .expect("valid");
    assert_eq!(cfg.upstreams["content"].protocol, Protocol::Http2);
    let err = load_with("[upstreams.user]\nprotocol = \"h3\"\n", &[]).expect_err("h3");
    assert!(err.contains("h3") && err.contains("protocol"), "{err}");
}
