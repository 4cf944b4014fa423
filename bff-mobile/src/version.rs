//! `X-Client-Version: iOS-2.3.1` (or `Android-2.3.1`): apps older than the configured minimum get
//! 426 with a problem naming the minimum. Requests without the header pass (browsers, tools).

use axum::extract::Request;
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};
use gateway_core::GatewayError;

/// The header apps send.
pub static CLIENT_VERSION: HeaderName = HeaderName::from_static("x-client-version");

/// A parsed `X-Client-Version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientVersion(pub u32, pub u32, pub u32);

impl ClientVersion {
    /// Parses `MAJOR.MINOR.PATCH` (PATCH optional).
    pub fn parse_semver(s: &str) -> Option<Self> {
        let mut it = s.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let patch = it.next().map_or(Some(0), |p| p.parse().ok())?;
        it.next().is_none().then_some(Self(major, minor, patch))
    }

    /// Parses `iOS-2.3.1` or `Android-2.3.1`.
    pub fn parse_header(s: &str) -> Option<Self> {
        let (platform, version) = s.split_once('-')?;
        matches!(platform, "iOS" | "Android").then_some(())?;
        Self::parse_semver(version)
    }
}

/// The configured floor, if any.
#[derive(Debug, Clone)]
pub struct Minimum(Option<(ClientVersion, String)>);

impl Minimum {
    /// Parses the configured minimum; an empty string disables the check.
    pub fn parse(s: &str) -> Self {
        Self(ClientVersion::parse_semver(s).map(|v| (v, s.to_owned())))
    }
}

/// The answer refusing `req`, if its app is refused: 400 for an unreadable version, 426 for an
/// old one. Run by the gateway on every API and pass-through request, after authentication and
/// rate limits ([`gateway_core::RequestCheck`]).
pub fn refusal(min: &Minimum, req: &Request) -> Option<Response> {
    let (Some((floor, text)), Some(sent)) = (&min.0, req.headers().get(&CLIENT_VERSION)) else {
        return None;
    };
    let refused = match sent.to_str().ok().and_then(ClientVersion::parse_header) {
        None => GatewayError::BadRequest {
            code: "CLIENT_VERSION_INVALID",
            detail: "`X-Client-Version` must look like `iOS-2.3.1` or `Android-2.3.1`.".into(),
        },
        Some(v) if v < *floor => GatewayError::UpgradeRequired {
            minimum: text.clone(),
        },
        Some(_) => return None,
    };
    Some(refused.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(
            ClientVersion::parse_header("iOS-2.3.1"),
            Some(ClientVersion(2, 3, 1))
        );
        assert_eq!(
            ClientVersion::parse_header("Android-10.0"),
            Some(ClientVersion(10, 0, 0))
        );
        assert_eq!(ClientVersion::parse_header("Symbian-1.0.0"), None);
        assert_eq!(ClientVersion::parse_header("iOS-2.x"), None);
        assert!(ClientVersion(1, 9, 9) < ClientVersion(2, 0, 0));
        assert!(ClientVersion(2, 10, 0) > ClientVersion(2, 9, 9));
    }
}
