//! Which answers the mobile BFF compresses.

use axum::body::HttpBody;
use axum::http::{Response, header};
use tower_http::compression::Predicate;

/// tower-http's default rule (nothing under 32 bytes; not gRPC, but gRPC-Web; not images, but
/// SVG; not server-sent events), with the answer's `content-type` read once instead of once per
/// rule: this runs on every answer, also when the client asked for no compression (the answer
/// then still says `Vary: Accept-Encoding`). A test holds it to the default's decisions.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Compressible;

/// The smallest answer worth compressing, as tower-http's default.
const MIN_SIZE: u64 = 32;

impl Predicate for Compressible {
    fn should_compress<B: HttpBody>(&self, res: &Response<B>) -> bool {
        let size = res.body().size_hint().exact().or_else(|| {
            res.headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        });
        if size.is_some_and(|n| n < MIN_SIZE) {
            return false;
        }
        let kind = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let grpc =
            kind.starts_with("application/grpc") && !kind.starts_with("application/grpc-web");
        let image = kind.starts_with("image/") && !kind.starts_with("image/svg+xml");
        !(grpc || image || kind.starts_with("text/event-stream"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower_http::compression::DefaultPredicate;

    #[test]
    fn decides_as_tower_https_default() {
        let kinds = [
            None,
            Some("application/json"),
            Some("application/problem+json"),
            Some("text/html; charset=utf-8"),
            Some("application/grpc"),
            Some("application/grpc+proto"),
            Some("application/grpc-web"),
            Some("application/grpc-web+proto"),
            Some("image/png"),
            Some("image/svg+xml"),
            Some("text/event-stream"),
            Some("text/event-streaming"),
            Some("IMAGE/PNG"),
        ];
        let bodies: [(&str, Option<&str>); 6] = [
            ("", None),
            ("x", None),
            (&"x".repeat(31), None),
            (&"x".repeat(32), None),
            (&"x".repeat(1024), None),
            ("", Some("not a number")),
        ];
        let mut cases = 0;
        for kind in kinds {
            for (text, length) in &bodies {
                for streamed in [false, true] {
                    let body = if streamed {
                        // No exact size: the `content-length` header decides, if any.
                        Body::from_stream(futures::stream::iter([Ok::<_, std::io::Error>(
                            text.to_string(),
                        )]))
                    } else {
                        Body::from(text.to_string())
                    };
                    let mut res = Response::new(body);
                    if let Some(kind) = kind {
                        res.headers_mut()
                            .insert(header::CONTENT_TYPE, kind.parse().expect("value"));
                    }
                    let length = length.map(str::to_owned).unwrap_or(text.len().to_string());
                    if streamed {
                        res.headers_mut()
                            .insert(header::CONTENT_LENGTH, length.parse().expect("value"));
                    }
                    assert_eq!(
                        Compressible.should_compress(&res),
                        DefaultPredicate::new().should_compress(&res),
                        "{kind:?}, {} bytes, content-length {length}, streamed {streamed}",
                        text.len()
                    );
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 13 * 6 * 2);
    }
}
