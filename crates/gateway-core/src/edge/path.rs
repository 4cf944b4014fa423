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
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(invalid("must start with /"));
    }
    // One pass over the bytes, nothing allocated: this runs on every request. A backslash is
    // refused first wherever it is; an encoded separator before an empty or dot segment.
    let mut escape = false;
    let mut segment = false;
    // Where the segment being read starts; every segment after the leading slash must be a real
    // name, and a trailing slash is allowed.
    let mut start = 1;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(invalid("must not contain a backslash")),
            b'%' => {
                escape |=
                    matches!(bytes.get(i + 1..i + 3), Some(&[hi, lo]) if forbidden_escape(hi, lo));
            }
            b'/' if i > 0 => {
                segment |= !real_name(&bytes[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    // The last segment, unless the path ends with a slash, which closed it.
    if start < bytes.len() {
        segment |= !real_name(&bytes[start..]);
    }
    if escape {
        return Err(invalid("must not encode slashes, backslashes, dots or NUL"));
    }
    // The root, written "/" or "//", has no segment to check.
    if segment && bytes != b"//" {
        return Err(invalid("must not contain empty, '.' or '..' segments"));
    }
    Ok(())
}

/// Whether a segment names something: not empty, `.` nor `..`.
fn real_name(segment: &[u8]) -> bool {
    !matches!(segment, b"" | b"." | b"..")
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

    /// The check as it was written before its single pass, kept to hold the pass to it.
    fn reference(path: &str) -> Result<(), &'static str> {
        if !path.starts_with('/') {
            return Err("start");
        }
        if path.contains('\\') {
            return Err("backslash");
        }
        if path
            .as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && forbidden_escape(w[1], w[2]))
        {
            return Err("escape");
        }
        let body = &path[1..];
        let body = body.strip_suffix('/').unwrap_or(body);
        if !body.is_empty()
            && body
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err("segment");
        }
        Ok(())
    }

    #[test]
    fn the_single_pass_decides_as_the_plain_reading_does() {
        // Every path of up to six characters over the bytes that matter.
        const ALPHABET: &[u8] = b"/.%2fe5c0\\a";
        let mut paths = vec![String::new()];
        let mut checked = 0;
        for _ in 0..6 {
            let mut longer = Vec::with_capacity(paths.len() * ALPHABET.len());
            for p in &paths {
                for &b in ALPHABET {
                    let mut q = p.clone();
                    q.push(b as char);
                    longer.push(q);
                }
            }
            for p in &longer {
                let got = check(p, p.len(), 8192).map_err(|e| match e {
                    GatewayError::BadRequest { detail, .. } => match detail.as_str() {
                        "The path must start with /." => "start",
                        "The path must not contain a backslash." => "backslash",
                        "The path must not encode slashes, backslashes, dots or NUL." => "escape",
                        "The path must not contain empty, '.' or '..' segments." => "segment",
                        _ => "other",
                    },
                    _ => "other",
                });
                assert_eq!(got, reference(p), "{p:?}");
                checked += 1;
            }
            paths = longer;
        }
        assert!(checked > 1_000_000, "{checked}");
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
