//! Path hygiene before any handler: the path that is authorised must be the path a backend
//! would see, so anything a backend or proxy might resolve differently is refused rather than
//! guessed at: dot segments, encoded slashes and backslashes, encoded dots, empty segments.

use crate::error::GatewayError;

/// Checks the request target: 414 past `max_uri_bytes`, 400 `PATH_INVALID` for an ambiguous path.
pub fn check(path: &str, uri_len: usize, max_uri_bytes: usize) -> Result<(), GatewayError> {
    if uri_len > max_uri_bytes {
        return Err(GatewayError::UriTooLong);
    }
    let invalid = |why: &str| GatewayError::BadRequest {
        code: "PATH_INVALID",
        detail: format!("The path {why}."),
    };
    if !path.starts_with('/') {
        return Err(invalid("must start with /"));
    }
    if path.contains('\\') {
        return Err(invalid("must not contain a backslash"));
    }
    // One pass, nothing allocated: this runs on every request.
    if path
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && forbidden_escape(w[1], w[2]))
    {
        return Err(invalid("must not encode slashes, backslashes, dots or NUL"));
    }
    // Every segment after the leading slash must be a real name; a trailing slash is allowed.
    let body = &path[1..];
    let body = body.strip_suffix('/').unwrap_or(body);
    if !body.is_empty()
        && body
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(invalid("must not contain empty, '.' or '..' segments"));
    }
    Ok(())
}

/// Whether `%` followed by `hi lo` encodes a slash, a backslash, a dot or NUL (either case).
fn forbidden_escape(hi: u8, lo: u8) -> bool {
    matches!(
        (hi, lo.to_ascii_lowercase()),
        (b'2', b'f' | b'e') | (b'5', b'c') | (b'0', b'0')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> bool {
        check(p, p.len(), 8192).is_ok()
    }

    #[test]
    fn plain_paths_pass() {
        for p in [
            "/",
            "/healthz",
            "/api/v2/user/profile",
            "/api/home/",
            "/content/items/item-001",
            "/a%20b",
        ] {
            assert!(ok(p), "{p}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/api/../healthz",
            "/api/./profile",
            "/api//profile",
            "/api/%2e%2e/admin",
            "/api/%2E./admin",
            "/api/v2%2fuser",
            "/api/v2%2Fuser",
            "/api\\..\\admin",
            "/api/%5c",
            "/api/%00",
            "..",
            "/..",
        ] {
            assert!(!ok(p), "{p}");
        }
    }

    #[test]
    fn long_targets_are_414() {
        let long = format!("/{}", "a".repeat(9000));
        assert!(matches!(
            check(&long, long.len(), 8192),
            Err(GatewayError::UriTooLong)
        ));
    }
}
