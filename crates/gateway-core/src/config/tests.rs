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
