//! The mobile BFF's compression layer on one answer: what it costs to send a JSON answer
//! uncompressed, with gzip and with brotli, at two sizes (a catalogue item of 1 KB, a page of 20
//! items of about 6 KB), and how many bytes each makes.
//!
//! `cargo bench -p bff-mobile --bench compression -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::hint::black_box;

use axum::body::Body;
use axum::http::{Request, Response, header};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::executor::block_on;
use http_body_util::BodyExt as _;
use serde_json::json;
use tower::{Layer as _, ServiceExt as _};

/// A catalogue item as the demo content service writes one, `i` making it distinct.
fn item(i: usize) -> serde_json::Value {
    json!({
        "id": format!("item-{i:03}"),
        "title": format!("The long way home, part {i}"),
        "kind": if i.is_multiple_of(3) { "series" } else { "movie" },
        "genres": ["drama", "mystery"],
        "year": 1990 + i % 30,
        "rating": 3.5 + (i % 3) as f64 * 0.5,
        "duration_minutes": 90 + i % 40,
        "synopsis": "Two strangers share a night train across the mountains and find that their pasts meet at the same station.",
        "images": {
            "poster": format!("https://img.example/posters/item-{i:03}.jpg"),
            "backdrop": format!("https://img.example/backdrops/item-{i:03}.jpg"),
        },
        "availability": {"regions": ["GB", "IE", "FR", "DE"], "until": "2027-12-31"},
    })
}

/// The answers: one item padded to 1 KB, and a page of 20.
fn answers() -> [(&'static str, Bytes); 2] {
    let mut one = item(18);
    let len = one.to_string().len();
    one["padding"] = json!("x".repeat(1024usize.saturating_sub(len + 14)));
    let page = json!({"items": (1..=20).map(item).collect::<Vec<_>>(), "next": 21});
    [
        ("1k", Bytes::from(one.to_string())),
        ("page20", Bytes::from(page.to_string())),
    ]
}

/// Sends one request asking for `encoding` through the layer; the answer's body length.
fn send<S>(svc: &mut S, encoding: &str) -> usize
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let req = Request::get("/api/catalog/items")
        .header(header::ACCEPT_ENCODING, encoding)
        .body(Body::empty())
        .expect("request");
    let res = block_on(async {
        let svc = svc.ready().await.expect("ready");
        svc.call(req).await.expect("infallible")
    });
    block_on(res.into_body().collect())
        .expect("body")
        .to_bytes()
        .len()
}

fn compression(c: &mut Criterion) {
    let mut group = c.benchmark_group("compression");
    for (size, body) in answers() {
        let backend = tower::service_fn(move |_: Request<Body>| {
            let body = body.clone();
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(body))
                        .expect("answer"),
                )
            }
        });
        let mut svc = bff_mobile::compression().layer(backend);
        group.throughput(Throughput::Elements(1));
        for encoding in ["identity", "gzip", "br"] {
            let sent = send(&mut svc, encoding);
            println!("compression/{encoding}/{size}: {sent} bytes sent");
            group.bench_function(format!("{encoding}/{size}"), |b| {
                b.iter(|| black_box(send(&mut svc, black_box(encoding))));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, compression);
criterion_main!(benches);
