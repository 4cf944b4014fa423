//! Authentication (who is calling) and authorisation (may they call this route).
//!
//! [`authenticate`] runs once per request, before rate limiting so limits apply per subject, and puts
//! the [`Principal`] into the request's [`RequestFacts`], where handlers take it as an extractor.
//! Routes then declare the scopes they need with [`RequireScopeLayer`].

pub mod apikey;
pub mod jwt;

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready, ready};
use serde_json::{Map, Value};
use tower::{Layer, Service};

use crate::edge::RequestFacts;
use crate::error::{AuthFailure, GatewayError};
use apikey::{ApiKeyStore, KeyHash, MAX_KEY_BYTES};
use jwt::JwtVerifier;

/// `X-User-Id`: the user a backend is called for.
static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
/// `X-Partner-Id`: the partner a backend is called for.
static X_PARTNER_ID: HeaderName = HeaderName::from_static("x-partner-id");
/// `X-User-Scopes`: the caller's scopes, space-separated.
static X_USER_SCOPES: HeaderName = HeaderName::from_static("x-user-scopes");
/// `X-User-Tier`: the caller's rate-limit tier.
static X_USER_TIER: HeaderName = HeaderName::from_static("x-user-tier");

/// The header partners may use instead of `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Who is calling, established once per request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user id (`sub`) or the partner id.
    pub subject: Arc<str>,
    /// Granted scopes.
    pub scopes: Arc<[String]>,
    /// Rate-limit tier, if the credential names one.
    pub tier: Option<Arc<str>>,
    /// User or partner.
    pub kind: PrincipalKind,
    /// The identity headers a backend is sent, made on first use and shared by every clone: the
    /// verified-token cache hands each request a clone of the same principal.
    identity: Arc<OnceLock<Vec<(HeaderName, HeaderValue)>>>,
}

/// The caller, for a handler behind authentication; 401 `UNAUTHENTICATED` where nobody
/// authenticated (a route the gateway's pipeline does not cover).
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        RequestFacts::of(&parts.extensions)
            .and_then(|f| f.principal.clone())
            .ok_or(GatewayError::Unauthenticated(AuthFailure::Missing))
    }
}

/// The kind of credential a principal presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    /// An end user with a JWT.
    User,
    /// A partner with an API key.
    Partner {
        /// API version pinned to the key.
        version: Option<Arc<str>>,
    },
}

impl Principal {
    /// A principal with these facts.
    pub fn new(
        subject: Arc<str>,
        scopes: Arc<[String]>,
        tier: Option<Arc<str>>,
        kind: PrincipalKind,
    ) -> Self {
        Self {
            subject,
            scopes,
            tier,
            kind,
            identity: Arc::default(),
        }
    }

    /// Who is calling, as the headers a backend is sent: `x-user-id` (or `x-partner-id`),
    /// `x-user-scopes` when there are scopes, `x-user-tier` when there is a tier. A value that
    /// is no valid header value is left out. The names are the gateway's own statics, so each
    /// call clones them for nothing where a name made from text would be checked every time.
    pub fn identity_headers(&self) -> &[(HeaderName, HeaderValue)] {
        self.identity.get_or_init(|| {
            let id = match self.kind {
                PrincipalKind::User => &X_USER_ID,
                PrincipalKind::Partner { .. } => &X_PARTNER_ID,
            };
            let scopes = (!self.scopes.is_empty()).then(|| self.scopes.join(" "));
            [
                (id, Some(&*self.subject)),
                (&X_USER_SCOPES, scopes.as_deref()),
                (&X_USER_TIER, self.tier.as_deref()),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some((name.clone(), HeaderValue::from_str(value?).ok()?)))
            .collect()
        })
    }

    /// Builds a principal from verified claims: `sub`, then `scope` (space-separated) or `scp` (array).
    pub fn from_claims(claims: &Map<String, Value>, tier_claim: &str) -> Option<Self> {
        let subject = claims.get("sub")?.as_str().filter(|s| !s.is_empty())?;
        let scopes: Vec<String> = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) => s.split_whitespace().map(str::to_owned).collect(),
            (_, Some(Value::Array(items))) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Some(Self::new(
            subject.into(),
            scopes.into(),
            claims
                .get(tier_claim)
                .and_then(Value::as_str)
                .map(Into::into),
            PrincipalKind::User,
        ))
    }

    /// Whether the principal was granted `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// How one BFF authenticates.
pub enum Authenticator {
    /// JWT bearer tokens.
    Jwt(Arc<JwtVerifier>),
    /// Partner API keys.
    ApiKey(Arc<dyn ApiKeyStore>),
}

impl Authenticator {
    /// What [`Authenticator::authenticate`] answers when it can without waiting: a missing or
    /// malformed credential, or a token in the verified-token cache. `None` when it must wait.
    fn authenticate_now(&self, headers: &HeaderMap) -> Option<Result<Principal, GatewayError>> {
        match self {
            Self::Jwt(verifier) => match bearer(headers) {
                Ok(Some(token)) => verifier.verify_now(token),
                Ok(None) => Some(Err(GatewayError::Unauthenticated(AuthFailure::Missing))),
                Err(err) => Some(Err(err)),
            },
            Self::ApiKey(_) => None,
        }
    }

    /// Establishes the principal from the request headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, GatewayError> {
        match self {
            Self::Jwt(verifier) => {
                let token =
                    bearer(headers)?.ok_or(GatewayError::Unauthenticated(AuthFailure::Missing))?;
                verifier.verify(token).await
            }
            Self::ApiKey(store) => {
                let key = match bearer(headers)? {
                    Some(key) => key,
                    None => headers
                        .get(API_KEY_HEADER)
                        .map(|v| {
                            v.to_str().map_err(|_| {
                                GatewayError::Unauthenticated(AuthFailure::UnknownApiKey)
                            })
                        })
                        .transpose()?
                        .ok_or(GatewayError::Unauthenticated(AuthFailure::Missing))?,
                };
                if key.len() > MAX_KEY_BYTES {
                    return Err(GatewayError::Unauthenticated(AuthFailure::UnknownApiKey));
                }
                let record = store.lookup(&KeyHash::of(key)).await.map_err(|err| {
                    tracing::warn!(error = %err, "API key store unavailable");
                    GatewayError::Unavailable
                })?;
                let record =
                    record.ok_or(GatewayError::Unauthenticated(AuthFailure::UnknownApiKey))?;
                Ok(Principal::new(
                    record.partner.into(),
                    Arc::from([]),
                    Some(record.tier.into()),
                    PrincipalKind::Partner {
                        version: record.version.map(Into::into),
                    },
                ))
            }
        }
    }
}

/// The credential of `Authorization: Bearer <credential>`, if that header is present.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = GatewayError::Unauthenticated(AuthFailure::Invalid);
    let value = value.to_str().map_err(|_| invalid.clone())?;
    let (scheme, credential) = value.split_once(' ').ok_or(invalid.clone())?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(invalid);
    }
    let credential = credential.trim();
    if credential.is_empty() {
        return Err(GatewayError::Unauthenticated(AuthFailure::Missing));
    }
    Ok(Some(credential))
}

/// Middleware: authenticate, or answer 401/503 without calling anything further.
pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    req: Request,
    next: Next,
) -> Response {
    authenticated(&auth, req, |req| next.run(req)).await
}

/// What [`authenticate`] does, around `next` (the rest of the pipeline), so that the gateway can
/// run authentication and rate limits as one layer.
///
/// Not an `async fn`: most requests are decided without a wait (a token in the verified-token
/// cache, or no usable credential), and then the future returned is `next`'s and little more.
/// Only a credential that needs a wait (a token to verify in full, an API key to look up) gets a
/// boxed future holding the request and `next` besides. An `async fn` would hold the request,
/// the authentication's future and `next`'s side by side in every case, and every stage above
/// it moves what it holds as it builds its own.
pub fn authenticated<'a, F, Fut>(
    auth: &'a Authenticator,
    req: Request,
    next: F,
) -> impl Future<Output = Response> + Send + 'a
where
    F: FnOnce(Request) -> Fut + Send + 'a,
    Fut: Future<Output = Response> + Send + 'a,
{
    use futures::future::{BoxFuture, Either};
    match auth.authenticate_now(req.headers()) {
        Some(Ok(principal)) => Either::Left(admitted(req, principal, next)),
        Some(Err(err)) => Either::Right(Either::Left(std::future::ready(err.into_response()))),
        None => {
            let waited: BoxFuture<'a, Response> = Box::pin(async move {
                match auth.authenticate(req.headers()).await {
                    Ok(principal) => admitted(req, principal, next).await,
                    Err(err) => err.into_response(),
                }
            });
            Either::Right(Either::Right(waited))
        }
    }
}

/// `next` for an authenticated request: the principal goes with the request, and with the answer
/// too when an access line (written outside this layer) names the subject.
fn admitted<F, Fut>(
    mut req: Request,
    principal: Principal,
    next: F,
) -> impl Future<Output = Response>
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let named = crate::telemetry::access_lines().then(|| principal.clone());
    RequestFacts::of_mut(req.extensions_mut()).principal = Some(principal);
    futures::FutureExt::map(next(req), move |mut res| {
        if let Some(principal) = named {
            res.extensions_mut().insert(principal);
        }
        res
    })
}

/// Refuses with 403 `INSUFFICIENT_SCOPE` unless the principal holds every scope required.
#[derive(Debug, Clone)]
pub struct RequireScopeLayer {
    scopes: Arc<[&'static str]>,
}

impl RequireScopeLayer {
    /// Requires `scope` on the routes this layer wraps.
    pub fn new(scope: &'static str) -> Self {
        Self::all(&[scope])
    }

    /// Requires every one of `scopes`.
    pub fn all(scopes: &[&'static str]) -> Self {
        Self {
            scopes: scopes.into(),
        }
    }
}

impl<S> Layer<S> for RequireScopeLayer {
    type Service = RequireScope<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireScope {
            inner,
            scopes: self.scopes.clone(),
        }
    }
}

/// The service of [`RequireScopeLayer`].
#[derive(Debug, Clone)]
pub struct RequireScope<S> {
    inner: S,
    scopes: Arc<[&'static str]>,
}

impl<S> Service<Request> for RequireScope<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let principal = RequestFacts::of(req.extensions()).and_then(|f| f.principal.as_ref());
        let missing = self
            .scopes
            .iter()
            .find(|s| !principal.is_some_and(|p| p.has_scope(s)));
        match missing {
            None => Either::Left(self.inner.call(req)),
            Some(scope) => Either::Right(ready(Ok(
                GatewayError::InsufficientScope(scope).into_response()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identity_headers_are_made_once_for_every_clone() {
        let names = |p: &Principal| {
            p.identity_headers()
                .iter()
                .map(|(n, v)| format!("{n}={}", v.to_str().expect("ascii")))
                .collect::<Vec<_>>()
        };
        let user = Principal::new(
            "user-1".into(),
            Arc::from(["a".to_owned(), "b".to_owned()]),
            Some("gold".into()),
            PrincipalKind::User,
        );
        let copy = user.clone();
        assert_eq!(
            names(&copy),
            ["x-user-id=user-1", "x-user-scopes=a b", "x-user-tier=gold"]
        );
        assert!(std::ptr::eq(
            user.identity_headers(),
            copy.identity_headers()
        ));
        let partner = Principal::new(
            "acme".into(),
            Arc::from([]),
            None,
            PrincipalKind::Partner { version: None },
        );
        assert_eq!(names(&partner), ["x-partner-id=acme"]);
        // A value no header may carry is left out, not sent mangled.
        let odd = Principal::new("a\nb".into(), Arc::from([]), None, PrincipalKind::User);
        assert!(odd.identity_headers().is_empty());
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let claims = json!({"sub": "user-1", "scope": "a b", "tier": "gold"});
        let p =
            Principal::from_claims(claims.as_object().expect("object"), "tier").expect("principal");
        assert!(p.has_scope("a") && p.has_scope("b") && !p.has_scope("c"));
        assert_eq!(p.tier.as_deref(), Some("gold"));
        let claims = json!({"sub": "user-1", "scp": ["x"]});
        let p =
            Principal::from_claims(claims.as_object().expect("object"), "tier").expect("principal");
        assert!(p.has_scope("x"));
    }

    #[test]
    fn empty_subject_is_refused() {
        let claims = json!({"sub": ""});
        assert!(Principal::from_claims(claims.as_object().expect("object"), "tier").is_none());
    }

    #[test]
    fn bearer_parsing_is_strict() {
        let mut h = HeaderMap::new();
        assert!(matches!(bearer(&h), Ok(None)));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert!(bearer(&h).is_err());
        h.insert(header::AUTHORIZATION, "bearer tok".parse().expect("header"));
        assert_eq!(bearer(&h).ok().flatten(), Some("tok"));
    }
}
