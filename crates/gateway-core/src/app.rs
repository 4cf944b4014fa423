//! [`App`]: what a BFF serves. Its own routes and the operational endpoints go through axum's
//! router; the pass-through routes (`[[proxy]]`) are served ahead of it, by one service.
//!
//! axum wraps every route in every layer on its own: a request to a route costs the router's
//! match and its wildcard parameter, then a clone of a boxed service and a boxed future at each
//! layer, and the handler's extraction. A pass-through route needs none of that: its prefix is
//! the match, and its pipeline (edge hygiene, access log, bounds, authentication, rate limits,
//! the forward) runs as one future. The layers a BFF adds on top ([`App::layer`]: compression,
//! CORS) wrap both.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::Route;
use futures::future::{BoxFuture, Either};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::proxy::ProxyTable;

/// The pass-through routes' service, boxed once per layer a BFF adds.
pub type PassThrough = BoxCloneSyncService<Request, Response, Infallible>;

/// A BFF's application: axum's router and, ahead of it, the pass-through routes. Cheap to clone.
#[derive(Clone)]
pub struct App {
    router: Router,
    passes: Option<Passes>,
}

#[derive(Clone)]
struct Passes {
    table: Arc<ProxyTable>,
    service: PassThrough,
}

impl App {
    /// `router` ahead of which `table`'s routes are served by `service`.
    pub(crate) fn new(router: Router, table: Arc<ProxyTable>, service: PassThrough) -> Self {
        let passes = (!table.is_empty()).then_some(Passes { table, service });
        Self { router, passes }
    }

    /// Wraps every route in `layer`, as [`Router::layer`] does: the router's routes and the
    /// pass-through routes alike.
    pub fn layer<L>(self, layer: L) -> Self
    where
        L: Layer<Route> + Layer<PassThrough> + Clone + Send + Sync + 'static,
        <L as Layer<Route>>::Service: Service<Request> + Clone + Send + Sync + 'static,
        <<L as Layer<Route>>::Service as Service<Request>>::Response: IntoResponse + 'static,
        <<L as Layer<Route>>::Service as Service<Request>>::Error: Into<Infallible> + 'static,
        <<L as Layer<Route>>::Service as Service<Request>>::Future: Send + 'static,
        <L as Layer<PassThrough>>::Service:
            Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
        <<L as Layer<PassThrough>>::Service as Service<Request>>::Response: IntoResponse + 'static,
        <<L as Layer<PassThrough>>::Service as Service<Request>>::Future: Send + 'static,
    {
        let passes = self.passes.map(|p| Passes {
            table: p.table,
            service: BoxCloneSyncService::new(
                Layer::<PassThrough>::layer(&layer, p.service)
                    .map_response(IntoResponse::into_response),
            ),
        });
        Self {
            router: self.router.layer(layer),
            passes,
        }
    }
}

impl From<Router> for App {
    /// An application without pass-through routes.
    fn from(router: Router) -> Self {
        Self {
            router,
            passes: None,
        }
    }
}

impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        axum::routing::future::RouteFuture<Infallible>,
        BoxFuture<'static, Result<Response, Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready; the pass-through stack is as ready as its layers.
        match &mut self.passes {
            Some(p) => p.service.poll_ready(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match &mut self.passes {
            Some(p) if p.table.find(req.uri().path()).is_some() => {
                Either::Right(p.service.call(req))
            }
            _ => Either::Left(self.router.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{HeaderValue, StatusCode};
    use axum::routing::get;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    use super::*;
    use crate::config::{Config, IssuerConfig, ProxyConfig};
    use crate::server::Gateway;

    const SECRET: &str = "a development secret of at least 32 bytes";
    const ISS: &str = "https://app.test";

    /// What a BFF's own layer does: marks every answer.
    fn mark(mut res: Response) -> Response {
        res.headers_mut()
            .insert("x-layer", HeaderValue::from_static("on"));
        res
    }

    /// A gateway named `bff` with one API route (`/api/own`) and the pass-through routes
    /// `/api/catalog` (to a backend that answers with the path it saw), `/api/mux` (to the same
    /// backend over HTTP/2, which says so) and `/api/catalog/special` (to nothing), under a layer
    /// of the BFF's own.
    async fn app(bff: &'static str) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let backend = Router::new().fallback(|req: Request<Body>| async move {
            let seen = req.uri().path_and_query().map_or("", |p| p.as_str());
            match req.version() {
                axum::http::Version::HTTP_2 => format!("h2 {seen}"),
                _ => seen.to_owned(),
            }
        });
        tokio::spawn(async move { axum::serve(listener, backend).await });
        let mut cfg: Config<()> = Config::local(0, bff)
            .upstream("content", &url, 2_000)
            .upstream("mux", &url, 2_000)
            .upstream("nothing", "http://127.0.0.1:9", 200);
        if let Some(mux) = cfg.upstreams.get_mut("mux") {
            mux.protocol = crate::upstream::Protocol::Http2;
        }
        cfg.auth.issuers = vec![IssuerConfig::hs256(ISS, &[bff], SECRET)];
        for (prefix, upstream) in [
            ("/api/catalog", "content"),
            ("/api/mux", "mux"),
            ("/api/catalog/special", "nothing"),
        ] {
            cfg.proxy.push(ProxyConfig {
                prefix: prefix.into(),
                upstream: upstream.into(),
                rewrite: Some("/catalog".into()),
                scopes: Vec::new(),
                methods: vec!["GET".into()],
            });
        }
        cfg.validate().expect("valid");
        let gw = Gateway::builder(bff, cfg).build().expect("gateway");
        gw.router(Router::new().route("/api/own", get(|| async { "own" })))
            .layer(tower::util::MapResponseLayer::new(mark))
    }

    fn token(bff: &str) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({"iss": ISS, "aud": bff, "sub": "user-1", "iat": now, "exp": now + 600});
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    }

    async fn send(app: &App, path: &str, token: Option<&str>) -> (StatusCode, Response, String) {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let (parts, body) = res.into_parts();
        let body = axum::body::to_bytes(body, 1 << 16).await.expect("body");
        let text = String::from_utf8_lossy(&body).into_owned();
        (
            parts.status,
            Response::from_parts(parts, Body::empty()),
            text,
        )
    }

    #[test]
    fn a_prefix_takes_itself_and_what_lies_below_it() {
        let mut cfg: Config<()> =
            Config::local(0, "table").upstream("content", "http://127.0.0.1:9", 500);
        for prefix in ["/api", "/api/catalog"] {
            cfg.proxy.push(ProxyConfig {
                prefix: prefix.into(),
                upstream: "content".into(),
                rewrite: None,
                scopes: Vec::new(),
                methods: vec!["GET".into()],
            });
        }
        let upstreams = crate::upstream::Upstreams::new(&cfg.upstreams).expect("upstreams");
        let routes =
            crate::proxy::ProxyRoute::resolve(&cfg.proxy, &upstreams, 1024).expect("routes");
        let table = ProxyTable::new(&routes);
        let found = |path: &str| {
            table
                .find(path)
                .map(|(r, p)| (r.prefix.clone(), p.0.to_string()))
        };
        let at = |prefix: &str, pattern: &str| Some((prefix.to_owned(), pattern.to_owned()));
        assert_eq!(found("/api/catalog"), at("/api/catalog", "/api/catalog"));
        assert_eq!(
            found("/api/catalog/items/1"),
            at("/api/catalog", "/api/catalog/{*rest}")
        );
        // The longer prefix first; a sibling of it belongs to the shorter one.
        assert_eq!(found("/api/catalogue"), at("/api", "/api/{*rest}"));
        assert_eq!(found("/api"), at("/api", "/api"));
        // Nothing after the slash, or no segment boundary: not a pass-through path.
        assert_eq!(found("/api/catalog/"), at("/api", "/api/{*rest}"));
        assert_eq!(found("/api/"), None);
        assert_eq!(found("/apis"), None);
        assert_eq!(found("/"), None);
        assert!(ProxyTable::new(&[]).is_empty());
    }

    #[tokio::test]
    async fn pass_through_routes_run_the_whole_pipeline_ahead_of_the_router() {
        const BFF: &str = "app-test";
        let app = app(BFF).await;
        let token = token(BFF);

        // Forwarded, with the BFF's layer, the limits and the edge's headers on the answer.
        let (status, res, body) = send(&app, "/api/catalog/items?page=2", Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "/catalog/items?page=2");
        for name in [
            "x-layer",
            "x-ratelimit-limit",
            "x-request-id",
            "traceparent",
        ] {
            assert!(res.headers().contains_key(name), "{name} missing");
        }
        let (status, _, body) = send(&app, "/api/catalog", Some(&token)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "/catalog"));
        // An upstream that speaks HTTP/2 gets the same request over it.
        let (status, res, body) = send(&app, "/api/mux/items?page=2", Some(&token)).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "h2 /catalog/items?page=2")
        );
        assert!(res.headers().contains_key("x-ratelimit-limit"));
        // The nested prefix is its own route.
        let (status, _, body) = send(&app, "/api/catalog/special/1", Some(&token)).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");

        // Authentication, the path check and the router's own answers.
        let (status, res, _) = send(&app, "/api/catalog/items", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["x-layer"], "on");
        let (status, res, _) = send(&app, "/api/catalog/a/../b", Some(&token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()["x-layer"], "on");
        let (status, _, _) = send(&app, "/api/catalog/", Some(&token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, res, body) = send(&app, "/api/own", Some(&token)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "own"));
        assert_eq!(res.headers()["x-layer"], "on");

        // Metrics name the route patterns, as for the router's routes.
        let text = crate::telemetry::metrics_handle().render();
        for series in [
            r#"bff_requests_total{bff="app-test",route="/api/catalog/{*rest}",status="200"} 1"#,
            r#"bff_requests_total{bff="app-test",route="/api/catalog",status="200"} 1"#,
            r#"bff_requests_total{bff="app-test",route="/api/catalog/special/{*rest}",status="502"} 1"#,
            r#"bff_requests_total{bff="app-test",route="/api/catalog/{*rest}",status="401"} 1"#,
            r#"bff_requests_total{bff="app-test",route="/api/own",status="200"} 1"#,
        ] {
            assert!(text.contains(series), "missing {series}\n{text}");
        }
    }
}
