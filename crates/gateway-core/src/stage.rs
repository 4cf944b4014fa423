//! The gateway's own middleware layers: a [`Stage`] runs around the rest of the pipeline like an
//! axum `from_fn` middleware, at a lower price per request. `from_fn` boxes the wrapped service a
//! second time to make its `Next`, and that boxed service boxes the wrapped call's future again;
//! here the service made ready for the request is called directly, so a layer costs one boxed
//! future and one clone of the service it wraps.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use futures::future::BoxFuture;
use tower::{Layer, Service};

/// One step of the pipeline: does its work around `next`, the rest of the pipeline. What it
/// returns may hold `next` and borrow the stage for `'a`: a stage that must wait before calling
/// `next` (authentication, the shared limiter) boxes that wait, with `next` inside.
pub(crate) trait Stage: Send + Sync + 'static {
    fn run<'a, N, F>(&'a self, req: Request, next: N) -> impl Future<Output = Response> + Send + 'a
    where
        N: FnOnce(Request) -> F + Send + 'a,
        F: Future<Output = Response> + Send + 'a;
}

/// A layer running a [`Stage`] around the service it wraps.
pub(crate) struct StageLayer<T>(Arc<T>);

impl<T> StageLayer<T> {
    /// A layer running `stage` (shared, when something else runs it too).
    pub(crate) fn new(stage: impl Into<Arc<T>>) -> Self {
        Self(stage.into())
    }
}

impl<T> Clone for StageLayer<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T, S> Layer<S> for StageLayer<T> {
    type Service = Staged<T, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Staged {
            stage: self.0.clone(),
            inner,
        }
    }
}

/// The service of a [`StageLayer`].
pub(crate) struct Staged<T, S> {
    stage: Arc<T>,
    inner: S,
}

impl<T, S: Clone> Clone for Staged<T, S> {
    fn clone(&self) -> Self {
        Self {
            stage: self.stage.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<T, S> Service<Request> for Staged<T, S>
where
    T: Stage,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The service made ready goes with this request; a clone stays for the next one.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let stage = self.stage.clone();
        Box::pin(async move {
            let next = move |req| {
                let call = ready.call(req);
                async move {
                    match call.await {
                        Ok(res) => res,
                        Err(never) => match never {},
                    }
                }
            };
            Ok(stage.run(req, next).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::HeaderValue;
    use axum::routing::get;
    use tower::ServiceExt;

    /// Marks the request on the way in and the answer on the way out.
    struct Mark(&'static str);

    impl Stage for Mark {
        async fn run<'a, N, F>(&'a self, mut req: Request, next: N) -> Response
        where
            N: FnOnce(Request) -> F + Send + 'a,
            F: Future<Output = Response> + Send + 'a,
        {
            req.headers_mut()
                .insert("x-in", HeaderValue::from_static(self.0));
            let mut res = next(req).await;
            res.headers_mut()
                .insert("x-out", HeaderValue::from_static(self.0));
            res
        }
    }

    #[tokio::test]
    async fn a_stage_runs_around_the_route_on_every_request() {
        let app = Router::new()
            .route(
                "/",
                get(|req: Request| async move {
                    req.headers()
                        .get("x-in")
                        .map_or("none", |v| v.to_str().unwrap_or("bad"))
                        .to_owned()
                }),
            )
            .layer(StageLayer::new(Mark("marked")));
        for _ in 0..3 {
            let res = app
                .clone()
                .oneshot(Request::get("/").body(Body::empty()).expect("request"))
                .await
                .expect("infallible");
            assert_eq!(res.headers()["x-out"], "marked");
            let body = axum::body::to_bytes(res.into_body(), 64)
                .await
                .expect("body");
            assert_eq!(&body[..], b"marked");
        }
    }
}
