//! Which answers the mobile BFF compresses, and how whole answers are compressed at once.
//!
//! One layer, [`Compress`], decides as tower-http's
//! [`CompressionLayer`](tower_http::compression) would (`Accept-Encoding`, then the answer's
//! type and size; tests hold the two together), and sends each answer one of three ways:
//!
//! - **Whole**, when its size is known and small ([`ONE_SHOT_MAX`]): the JSON the BFF builds,
//!   and pass-through answers with a `Content-Length`. It reads the answer and compresses it in
//!   one call, on an encoder kept by the worker thread from one answer to the next, where a
//!   streaming encoder allocates and clears its tables (half a megabyte for brotli) for every
//!   answer. The codings and levels are the streaming encoders' (gzip 6, brotli 4); the brotli
//!   encoder is another port of Google's, so its bytes may differ from theirs by a few.
//! - **Streamed** by tower-http's encoders: larger answers, those of unknown size, answers to
//!   `HEAD` (never read: no body is sent), and requests whose `Accept-Encoding` leaves tower-http
//!   to choose identity or answer 406.
//! - **As it is**, with `Vary: Accept-Encoding` where it could have been compressed: an answer
//!   that is not compressible, or a request with no `Accept-Encoding`. Its body is not wrapped:
//!   tower-http's body type holds room for every encoder's state (some 5.8 KB), which every
//!   answer would otherwise be copied into, and moved with, on its way out.

use std::cell::RefCell;
use std::convert::Infallible;
use std::io;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Either};
use http_body_util::{BodyExt as _, Limited};
use tower::{Layer, Service, ServiceExt as _};
use tower_http::compression::{CompressionLayer, Predicate};

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

/// The largest answer [`Compress`] compresses whole; larger ones, and those of unknown size,
/// stream through tower-http's encoders. One call compresses it without yielding to the
/// runtime: at this size brotli takes a few hundred microseconds of the worker thread.
pub(crate) const ONE_SHOT_MAX: u64 = 64 * 1024;

/// gzip's level, as tower-http's default.
const GZIP_LEVEL: u32 = 6;

/// What a client's `Accept-Encoding` chose, when it chose a compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Gzip,
    Brotli,
}

impl Coding {
    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
        })
    }
}

/// The codings the client may be answered with, as tower-http ranks them: identity below gzip
/// below brotli when their weights tie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Offered {
    Identity,
    Gzip,
    Brotli,
}

/// A weight (`q=`), in thousandths; `None` if malformed, which drops the entry.
fn weight(param: &str) -> Option<u16> {
    let rest = param
        .strip_prefix(['q', 'Q'])
        .and_then(|r| r.strip_prefix('='))?;
    let mut chars = rest.chars();
    let mut value: u16 = match chars.next()? {
        '0' => 0,
        '1' => 1000,
        _ => return None,
    };
    match chars.next() {
        None => return Some(value),
        Some('.') => {}
        Some(_) => return None,
    }
    let mut factor = 100;
    for c in chars {
        let digit = c.to_digit(10)?;
        if factor == 0 {
            return None;
        }
        value += factor * digit as u16;
        factor /= 10;
    }
    (value <= 1000).then_some(value)
}

/// The entries of every `Accept-Encoding` value: each coding's name and weight.
fn entries(headers: &HeaderMap) -> impl Iterator<Item = (&str, Option<u16>)> {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|entry| {
            let mut parts = entry.splitn(2, ';');
            let name = parts.next().unwrap_or_default().trim();
            (name, parts.next().map_or(Some(1000), |p| weight(p.trim())))
        })
}

/// The compression the client's `Accept-Encoding` asks for, decided as tower-http decides it
/// (a test holds the two together): the highest weight above zero among gzip, brotli and
/// identity, a `*` standing for those not named; `None` for identity, or when nothing is
/// acceptable (tower-http then answers 406).
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<Coding> {
    let offered = |name: &str| {
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            Some(Offered::Gzip)
        } else if name.eq_ignore_ascii_case("br") {
            Some(Offered::Brotli)
        } else if name.eq_ignore_ascii_case("identity") {
            Some(Offered::Identity)
        } else {
            None
        }
    };
    let wildcard = entries(headers).find_map(|(name, q)| (name == "*").then_some(q).flatten());
    let best = match wildcard {
        // Each coding weighs as its first well-formed entry says, else as the `*`.
        Some(any) => [Offered::Identity, Offered::Gzip, Offered::Brotli]
            .into_iter()
            .map(|coding| {
                let q = entries(headers)
                    .find_map(|(name, q)| q.filter(|_| offered(name) == Some(coding)));
                (q.unwrap_or(any), coding)
            })
            .filter(|&(q, _)| q > 0)
            .max(),
        None => entries(headers)
            .filter_map(|(name, q)| Some((q?, offered(name)?)))
            .filter(|&(q, _)| q > 0)
            .max(),
    };
    match best?.1 {
        Offered::Gzip => Some(Coding::Gzip),
        Offered::Brotli => Some(Coding::Brotli),
        Offered::Identity => None,
    }
}

/// The mobile BFF's compression layer (see the module's notes).
#[derive(Debug, Clone, Copy, Default)]
pub struct CompressLayer;

impl<S> Layer<S> for CompressLayer {
    type Service = Compress<S>;
    fn layer(&self, inner: S) -> Compress<S> {
        Compress { inner }
    }
}

/// The service of [`CompressLayer`].
#[derive(Debug, Clone)]
pub struct Compress<S> {
    inner: S,
}

/// An answer as it leaves [`Compress`] when the request asked for no coding: as tower-http
/// would leave it, with `Vary` added when it could have been compressed.
type Plain<E> = fn(Result<Response<Body>, E>) -> Result<Response<Body>, E>;

impl<S, B> Service<Request<B>> for Compress<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<
        futures::future::Map<S::Future, Plain<S::Error>>,
        BoxFuture<'static, Result<Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let head = req.method() == Method::HEAD;
        if !head && !req.headers().contains_key(header::ACCEPT_ENCODING) {
            let plain: Plain<S::Error> = |res| res.map(uncompressed);
            return Either::Left(self.inner.call(req).map(plain));
        }
        let coding = negotiate(req.headers()).filter(|_| !head);
        // Where tower-http is left to choose (a HEAD, identity, nothing acceptable), the header
        // as it came.
        let sent: Vec<HeaderValue> = match coding {
            Some(_) => Vec::new(),
            None => req
                .headers()
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .cloned()
                .collect(),
        };
        let answer = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let res = answer.await?;
            Ok(match coding {
                Some(coding) if fits_whole(&res) => whole(res, coding).await,
                Some(_) if !compressible(&res) => res,
                Some(coding) => streamed(res, [coding.header_value()]),
                None => streamed(res, sent),
            })
        }))
    }
}

/// Whether tower-http would compress `res` for a client that accepts a coding.
fn compressible(res: &Response<Body>) -> bool {
    !res.headers().contains_key(header::CONTENT_ENCODING)
        && !res.headers().contains_key(header::CONTENT_RANGE)
        && Compressible.should_compress(res)
}

/// Whether `res` is compressed whole: compressible, and of a known size up to [`ONE_SHOT_MAX`].
fn fits_whole(res: &Response<Body>) -> bool {
    res.body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= ONE_SHOT_MAX)
        && compressible(res)
}

/// `res` for a client that asked for no coding: as it is, saying `Vary: Accept-Encoding` when
/// another client could have had it compressed, as tower-http does. Its body is not wrapped:
/// tower-http's body holds room for every encoder's state, which every answer would carry.
fn uncompressed(mut res: Response<Body>) -> Response<Body> {
    if compressible(&res) {
        vary(res.headers_mut());
    }
    res
}

/// `res` through tower-http's streaming compression, as a client sending `accept` as its
/// `Accept-Encoding` gets it.
fn streamed(res: Response<Body>, accept: impl IntoIterator<Item = HeaderValue>) -> Response<Body> {
    let mut req = Request::new(());
    for value in accept {
        req.headers_mut().append(header::ACCEPT_ENCODING, value);
    }
    let mut res = Some(res);
    let answer = tower::service_fn(move |_: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(res.take().expect("answered once")))
    });
    let compressed = streaming()
        .layer(answer)
        .oneshot(req)
        .now_or_never()
        .expect("an answer already made is compressed at once");
    match compressed {
        Ok(res) => res.map(Body::new),
        Err(never) => match never {},
    }
}

/// tower-http's streaming compression as this BFF configures it: gzip and brotli, at
/// tower-http's levels, for what [`Compressible`] allows.
fn streaming() -> CompressionLayer<Compressible> {
    CompressionLayer::new()
        .gzip(true)
        .br(true)
        .compress_when(Compressible)
}

/// Adds `Vary: Accept-Encoding` unless the answer says it already.
fn vary(headers: &mut HeaderMap) {
    let said = headers
        .get_all(header::VARY)
        .iter()
        .any(|v| contains_ignore_case(v.as_bytes(), b"accept-encoding"));
    if !said {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// `res`, which [`fits_whole`], compressed whole with `coding`.
async fn whole(res: Response<Body>, coding: Coding) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    // The size is known, but a body may still fail, or (a bug upstream) run past its size.
    let collected = match Limited::new(body, ONE_SHOT_MAX as usize).collect().await {
        Ok(collected) => collected,
        Err(e) => {
            // As the streaming encoder would: the head goes out, the body fails.
            let failed = futures::stream::once(async move { Err::<Bytes, _>(e) });
            return Response::from_parts(parts, Body::from_stream(failed));
        }
    };
    let trailers = collected.trailers().cloned();
    let packed = Bytes::from(compress(coding, &collected.to_bytes()));
    vary(&mut parts.headers);
    parts.headers.remove(header::ACCEPT_RANGES);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, coding.header_value());
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(packed.len()));
    let body = match trailers {
        None => Body::from(packed),
        Some(trailers) => {
            // Trailers follow the data, as they came; no length is promised then.
            parts.headers.remove(header::CONTENT_LENGTH);
            let frames = [
                Ok::<_, Infallible>(http_body::Frame::data(packed)),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            Body::new(http_body_util::StreamBody::new(futures::stream::iter(
                frames,
            )))
        }
    };
    Response::from_parts(parts, body)
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

thread_local! {
    /// The worker thread's gzip state, reset before each answer.
    static GZIP: RefCell<flate2::Compress> =
        RefCell::new(flate2::Compress::new(flate2::Compression::new(GZIP_LEVEL), false));
    /// The worker thread's brotli encoder, at tower-http's default quality (4); it keeps its
    /// tables between answers.
    static BROTLI: RefCell<Option<mbrotli::Compressor>> = const { RefCell::new(None) };
}

/// `input` compressed with `coding`, whole.
pub(crate) fn compress(coding: Coding, input: &[u8]) -> Vec<u8> {
    match coding {
        Coding::Gzip => gzip(input),
        Coding::Brotli => brotli(input),
    }
}

/// A gzip member (RFC 1952): a fixed header, the deflate stream, its CRC-32 and length.
fn gzip(input: &[u8]) -> Vec<u8> {
    // No name, no time, no flags; "unknown" operating system, as flate2 writes.
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut out = Vec::with_capacity(HEADER.len() + input.len() / 2 + 64);
    out.extend_from_slice(&HEADER);
    GZIP.with_borrow_mut(|z| {
        z.reset();
        loop {
            let read = usize::try_from(z.total_in()).expect("within the answer");
            out.reserve(256.max(input.len() - read));
            match z.compress_vec(&input[read..], &mut out, flate2::FlushCompress::Finish) {
                Ok(flate2::Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) => unreachable!("deflate refused its own state: {e}"),
            }
        }
    });
    let mut crc = flate2::Crc::new();
    crc.update(input);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE: the length modulo 2^32; answers here are far smaller.
    out.extend_from_slice(&(input.len() as u32).to_le_bytes());
    out
}

fn brotli(input: &[u8]) -> Vec<u8> {
    BROTLI.with_borrow_mut(|slot| {
        let encoder = slot.get_or_insert_with(|| {
            let config = mbrotli::EncoderConfig::default().with_quality(mbrotli::Quality::Q4);
            mbrotli::Compressor::new(config).expect("quality 4 is a valid configuration")
        });
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        encoder
            .compress_into(input, &mut out)
            .map_err(io::Error::other)
            .expect("an in-memory brotli stream within its size cannot fail");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::io::Read as _;
    use tower_http::compression::DefaultPredicate;

    /// A JSON answer of `len` bytes, varied so that it compresses as real answers do.
    fn json_of(len: usize) -> Bytes {
        let mut text = String::from("{\"items\":[");
        let mut i = 0;
        while text.len() + 40 < len {
            text.push_str(&format!(
                "{{\"id\":\"item-{i:04}\",\"n\":{}}},",
                i * 7919 % 1000
            ));
            i += 1;
        }
        text.push_str("{}],\"pad\":\"");
        while text.len() + 2 < len {
            text.push('x');
        }
        text.push_str("\"}");
        Bytes::from(text)
    }

    fn decode(coding: Option<&str>, packed: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            None => out.extend_from_slice(packed),
            Some("gzip") => {
                flate2::read::GzDecoder::new(packed)
                    .read_to_end(&mut out)
                    .expect("gzip");
            }
            Some("br") => {
                brotli::Decompressor::new(packed, 4096)
                    .read_to_end(&mut out)
                    .expect("brotli");
            }
            Some(other) => panic!("unexpected coding {other}"),
        }
        out
    }

    /// What the mobile BFF's compression sends for `text` asked with `accept`: the status, the
    /// coding, whether it says `Vary: accept-encoding`, its `Content-Length`, the decoded body.
    type Sent = (u16, Option<String>, bool, Option<String>, Vec<u8>);

    fn send(accept: Option<&str>, text: Bytes, streamed: bool) -> Sent {
        let backend = tower::service_fn(move |_: Request<Body>| {
            let text = text.clone();
            async move {
                let body = if streamed {
                    // No size known: tower-http's streaming encoders take it.
                    Body::from_stream(futures::stream::iter([Ok::<_, Infallible>(text)]))
                } else {
                    Body::from(text)
                };
                let res = Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .expect("answer");
                Ok::<_, Infallible>(res)
            }
        });
        let mut req = Request::get("/api/catalog")
            .body(Body::empty())
            .expect("request");
        if let Some(accept) = accept {
            req.headers_mut()
                .insert(header::ACCEPT_ENCODING, accept.parse().expect("value"));
        }
        let svc = crate::compression().layer(backend);
        let res = block_on(svc.oneshot(req)).expect("infallible");
        let text = |name| {
            res.headers()
                .get(name)
                .map(|v: &HeaderValue| v.to_str().expect("ascii").to_owned())
        };
        let coding = text(header::CONTENT_ENCODING);
        let length = text(header::CONTENT_LENGTH);
        let vary = text(header::VARY).is_some_and(|v| v.eq_ignore_ascii_case("accept-encoding"));
        let status = res.status().as_u16();
        let packed = block_on(res.into_body().collect())
            .expect("body")
            .to_bytes();
        let body = decode(coding.as_deref(), &packed);
        if let Some(length) = &length {
            assert_eq!(
                length,
                &packed.len().to_string(),
                "the length sent is the body's"
            );
        }
        (status, coding, vary, length, body)
    }

    /// `negotiate` against tower-http: every header below gets the same status, coding and
    /// `Vary` whether the answer is compressed whole (a known size) or streamed by tower-http,
    /// and both decode to the answer.
    #[test]
    fn whole_answers_are_answered_as_tower_http_streams_them() {
        let headers = [
            None,
            Some(""),
            Some("gzip"),
            Some("br"),
            Some("gzip, deflate, br"),
            Some("gzip, compress, deflate, br"),
            Some("deflate"),
            Some("zstd"),
            Some("identity"),
            Some("identity;q=0"),
            Some("*"),
            Some("*;q=0"),
            Some("*;q=0, gzip"),
            Some("br;q=0, *"),
            Some("gzip;q=0.5, br;q=0.4"),
            Some("gzip;q=0.5, br;q=0.5"),
            Some("gzip;q=1.0, br;q=0.999"),
            Some("br;q=0.0001, gzip;q=0.2"),
            Some("br;q=0.001, gzip;q=0"),
            Some("br;q=1.5, gzip;q=0.1"),
            Some("BR;Q=0.9, X-GZIP"),
            Some("gzip;q=0, br;q=0"),
            Some("gzip;q=0, br;q=0, identity;q=0"),
            Some("gzip;q=0, identity"),
            Some("br;q=0.3, gzip;q=0.2, *;q=0.9"),
            Some("br;q=0.3, *;q=0.9, br;q=1"),
            Some("identity;q=0, *;q=0.1"),
            Some(" br ; q=0.8 ,gzip"),
            Some("br;level=5, gzip"),
            Some("*;q=oops, br;q=0.2"),
            Some("br;q=1., gzip;q=0."),
            Some("br;q=1.000, gzip"),
            Some("br;q=1.0000, gzip;q=0.5"),
            Some("br;q=.5, gzip;q=0.1"),
            Some("\tbr\t;\tq=0.5, gzip;q=0.4"),
            Some("gzip;q=0, gzip"),
            Some(", ;q=1, br"),
            Some("*, br;q=oops"),
            Some("*;q=x, *;q=0"),
        ];
        for size in [1024, 9000] {
            let text = json_of(size);
            for accept in headers {
                let whole = send(accept, text.clone(), false);
                let streamed = send(accept, text.clone(), true);
                assert_eq!(whole.0, streamed.0, "status, {accept:?}");
                assert_eq!(whole.1, streamed.1, "coding, {accept:?}");
                assert_eq!(whole.2, streamed.2, "vary, {accept:?}");
                assert_eq!(whole.4, text, "decoded whole, {accept:?}");
                assert_eq!(streamed.4, text, "decoded streamed, {accept:?}");
                if whole.1.is_some() {
                    // Compressed whole, with its length; tower-http streams it without one.
                    assert!(whole.3.is_some(), "{accept:?}");
                    assert!(streamed.3.is_none(), "{accept:?}");
                }
            }
        }
    }

    /// The encoders a thread keeps start each answer afresh: a long answer, then short ones,
    /// each decodes to itself, and the bytes are the same each time.
    #[test]
    fn reused_encoders_start_each_answer_afresh() {
        let long = json_of(200_000);
        let short = json_of(700);
        // Bytes that do not compress: the output outgrows the room first made for it.
        let mut x: u32 = 0x9e37_79b9;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for coding in [Coding::Gzip, Coding::Brotli] {
            let name = Some(match coding {
                Coding::Gzip => "gzip",
                Coding::Brotli => "br",
            });
            let first = compress(coding, &short);
            assert_eq!(decode(name, &compress(coding, &long)), long);
            let again = compress(coding, &short);
            assert_eq!(decode(name, &again), short);
            assert_eq!(first, again, "{coding:?}");
            assert!(
                again.len() < short.len() / 2,
                "{coding:?}: {} bytes",
                again.len()
            );
            assert_eq!(decode(name, &compress(coding, b"")), b"");
            assert_eq!(decode(name, &compress(coding, &noise)), noise);
        }
    }

    /// Larger than `ONE_SHOT_MAX`, answering a `HEAD`, or already encoded: left to tower-http,
    /// or as they are.
    #[test]
    fn large_head_or_encoded_answers_are_not_compressed_whole() {
        let answer = tower::service_fn(|_: Request<Body>| async {
            let res = Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json_of(2000)))
                .expect("answer");
            Ok::<_, Infallible>(res)
        });
        let head = Request::head("/")
            .header(header::ACCEPT_ENCODING, "br")
            .body(Body::empty())
            .expect("request");
        let res = block_on(crate::compression().layer(answer).oneshot(head)).expect("infallible");
        assert_eq!(res.headers()[header::CONTENT_ENCODING], "br");
        assert!(!res.headers().contains_key(header::CONTENT_LENGTH));

        let big = json_of(ONE_SHOT_MAX as usize + 1);
        let (status, coding, _, length, body) = send(Some("br"), big.clone(), false);
        assert_eq!((status, coding.as_deref(), length), (200, Some("br"), None));
        assert_eq!(body, big);

        let backend = tower::service_fn(|_: Request<Body>| async {
            let res = Response::builder()
                .header(header::CONTENT_ENCODING, "gzip")
                .body(Body::from(vec![7u8; 100]))
                .expect("answer");
            Ok::<_, Infallible>(res)
        });
        let req = Request::get("/")
            .header(header::ACCEPT_ENCODING, "br")
            .body(Body::empty())
            .expect("request");
        let res = block_on(crate::compression().layer(backend).oneshot(req)).expect("infallible");
        assert_eq!(res.headers()[header::CONTENT_ENCODING], "gzip");
        let body = block_on(res.into_body().collect())
            .expect("body")
            .to_bytes();
        assert_eq!(body.as_ref(), [7u8; 100]);
    }

    /// Every answer, for every client, as tower-http's layer alone sends it: the same status,
    /// coding, `Vary`, and body once decoded; and its length where neither compressed it.
    #[test]
    fn answers_are_as_tower_http_alone_sends_them() {
        let accepts = [
            None,
            Some("gzip"),
            Some("br, gzip"),
            Some("identity"),
            Some("identity;q=0"),
            Some("*;q=0"),
            Some("deflate"),
        ];
        /// An answer's content type, a header of its own, its body, and whether it streams.
        type Kind = (
            &'static str,
            Option<(&'static str, &'static str)>,
            Bytes,
            bool,
        );
        let json = json_of(1024);
        let kinds: [Kind; 7] = [
            ("application/json", None, json.clone(), false),
            ("application/json", None, json.clone(), true),
            (
                "application/json",
                Some(("vary", "Origin")),
                json.clone(),
                false,
            ),
            (
                "application/json",
                Some(("content-encoding", "gzip")),
                json.clone(),
                false,
            ),
            (
                "application/json",
                Some(("content-range", "bytes 0-1023/2048")),
                json.clone(),
                false,
            ),
            ("image/png", None, json.clone(), false),
            ("application/json", None, Bytes::from_static(b"{}"), false),
        ];
        for method in [Method::GET, Method::HEAD] {
            for (kind, extra, text, streamed) in &kinds {
                for accept in accepts {
                    let answer = {
                        let (kind, extra, text, streamed) =
                            (*kind, *extra, text.clone(), *streamed);
                        move |_: Request<Body>| {
                            let text = text.clone();
                            async move {
                                let body = if streamed {
                                    Body::from_stream(futures::stream::iter([Ok::<_, Infallible>(
                                        text,
                                    )]))
                                } else {
                                    Body::from(text)
                                };
                                let mut res = Response::builder()
                                    .header(header::CONTENT_TYPE, kind)
                                    .body(body)
                                    .expect("answer");
                                if let Some((name, value)) = extra {
                                    res.headers_mut()
                                        .insert(name, value.parse().expect("value"));
                                }
                                Ok::<_, Infallible>(res)
                            }
                        }
                    };
                    let request = || {
                        let mut req = Request::builder()
                            .method(method.clone())
                            .uri("/")
                            .body(Body::empty())
                            .expect("request");
                        if let Some(accept) = accept {
                            req.headers_mut()
                                .insert(header::ACCEPT_ENCODING, accept.parse().expect("value"));
                        }
                        req
                    };
                    let ours = block_on(
                        crate::compression()
                            .layer(tower::service_fn(answer.clone()))
                            .oneshot(request()),
                    )
                    .expect("infallible");
                    let theirs = block_on(
                        streaming()
                            .layer(tower::service_fn(answer))
                            .oneshot(request()),
                    )
                    .expect("infallible")
                    .map(Body::new);
                    let case = format!("{method} {kind} {extra:?} streamed {streamed}, {accept:?}");
                    let head = |res: &Response<_>, name| {
                        res.headers()
                            .get_all(name)
                            .iter()
                            .map(|v: &HeaderValue| v.to_str().expect("ascii").to_owned())
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(ours.status(), theirs.status(), "{case}");
                    let coding = head(&ours, header::CONTENT_ENCODING);
                    assert_eq!(coding, head(&theirs, header::CONTENT_ENCODING), "{case}");
                    assert_eq!(
                        head(&ours, header::VARY),
                        head(&theirs, header::VARY),
                        "{case}"
                    );
                    // Compressed here, not by the backend.
                    let compressed =
                        !coding.is_empty() && extra.map(|e| e.0) != Some("content-encoding");
                    if !compressed {
                        assert_eq!(
                            head(&ours, header::CONTENT_LENGTH),
                            head(&theirs, header::CONTENT_LENGTH),
                            "{case}"
                        );
                    }
                    let body = |res: Response<Body>| {
                        let packed = block_on(res.into_body().collect())
                            .expect("body")
                            .to_bytes();
                        if compressed {
                            decode(coding.first().map(String::as_str), &packed)
                        } else {
                            packed.to_vec()
                        }
                    };
                    assert_eq!(body(ours), body(theirs), "{case}");
                }
            }
        }
    }

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
