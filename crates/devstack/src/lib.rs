//! The whole system on one machine, in one process: demo backends, the dev identity provider and
//! the four BFFs, sharing in-memory state by default or Redis when a URL is given.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use demo_backends::DemoBackends;
use dev_idp::{IdentityProvider, PartnerKeyRequest, TokenRequest};
use gateway_core::auth::apikey::{ApiKeyStore, MemoryApiKeyStore, RedisApiKeyStore};
use gateway_core::cli::Bff;
use gateway_core::config::{Config, RedisConfig};
use gateway_core::server::Gateway;
use gateway_core::store::Redis;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Where everything listens, and where shared state lives.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address every listener binds to.
    pub host: IpAddr,
    /// Demo gRPC backends.
    pub grpc_port: u16,
    /// Demo REST backends and their admin API.
    pub rest_port: u16,
    /// Identity provider.
    pub idp_port: u16,
    /// Mobile BFF.
    pub mobile_port: u16,
    /// Web BFF.
    pub web_port: u16,
    /// TV BFF.
    pub tv_port: u16,
    /// Partner BFF.
    pub partner_port: u16,
    /// Redis for all shared state; in memory when absent.
    pub redis: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            grpc_port: 50051,
            rest_port: 9001,
            idp_port: 8090,
            mobile_port: 8081,
            web_port: 8082,
            tv_port: 8083,
            partner_port: 8084,
            redis: None,
        }
    }
}

/// What a running devstack offers, for the banner and for tests.
#[derive(Debug, Clone)]
pub struct Running {
    /// `http://host:port` of each component.
    pub urls: Urls,
    /// A token for `user-0042` with every user scope.
    pub token: String,
    /// A standard-tier API key for partner `acme`.
    pub partner_key: String,
}

/// Base URLs.
#[derive(Debug, Clone)]
pub struct Urls {
    /// Demo gRPC backends.
    pub grpc: String,
    /// Demo REST backends and admin API.
    pub rest: String,
    /// Identity provider.
    pub idp: String,
    /// Mobile BFF.
    pub mobile: String,
    /// Web BFF.
    pub web: String,
    /// TV BFF.
    pub tv: String,
    /// Partner BFF.
    pub partner: String,
}

/// Scopes of the demo token.
pub const DEMO_SCOPES: &str = "profile:read feed:read events:read";

async fn bind(host: IpAddr, port: u16, what: &str) -> anyhow::Result<(TcpListener, String)> {
    let addr = SocketAddr::new(host, port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what} (is another devstack running? every port has a flag)"))?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((listener, url))
}

/// Runs everything until `shutdown` resolves, then stops it all cleanly. `ready` receives the
/// running system once every listener is bound.
pub async fn run(
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&Running),
) -> anyhow::Result<()> {
    let h = opts.host;
    let (grpc, grpc_url) = bind(h, opts.grpc_port, "the demo gRPC backends").await?;
    let (rest, rest_url) = bind(h, opts.rest_port, "the demo REST backends").await?;
    let (idp_l, idp_url) = bind(h, opts.idp_port, "the identity provider").await?;
    let (mobile, mobile_url) = bind(h, opts.mobile_port, "bff-mobile").await?;
    let (web, web_url) = bind(h, opts.web_port, "bff-web").await?;
    let (tv, tv_url) = bind(h, opts.tv_port, "bff-tv").await?;
    let (partner, partner_url) = bind(h, opts.partner_port, "bff-partner").await?;
    let urls = Urls {
        grpc: grpc_url,
        rest: rest_url,
        idp: idp_url,
        mobile: mobile_url,
        web: web_url,
        tv: tv_url,
        partner: partner_url,
    };

    let redis_cfg = RedisConfig {
        url: opts.redis.clone(),
        ..RedisConfig::default()
    };
    let keys: Arc<dyn ApiKeyStore> = match Redis::from_config(&redis_cfg)? {
        Some(redis) => Arc::new(RedisApiKeyStore::new(
            redis,
            Duration::from_millis(redis_cfg.timeout_ms),
        )),
        None => Arc::new(MemoryApiKeyStore::default()),
    };
    let idp = IdentityProvider::new(urls.idp.clone(), keys.clone())?;

    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    {
        let stop = stop.clone();
        tasks.spawn(async move {
            DemoBackends::new()
                .serve(grpc, rest, stop.cancelled_owned())
                .await
                .context("demo backends")
        });
    }
    {
        let (stop, router) = (stop.clone(), idp.router());
        tasks.spawn(async move {
            axum::serve(idp_l, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("identity provider")
        });
    }
    start(
        &mut tasks,
        &stop,
        &bff_mobile::BFF,
        mobile,
        &urls,
        &opts,
        None,
    )?;
    start(&mut tasks, &stop, &bff_web::BFF, web, &urls, &opts, None)?;
    start(&mut tasks, &stop, &bff_tv::BFF, tv, &urls, &opts, None)?;
    start(
        &mut tasks,
        &stop,
        &bff_partner::BFF,
        partner,
        &urls,
        &opts,
        Some(keys),
    )?;

    let token = idp
        .mint(&TokenRequest {
            sub: "user-0042".into(),
            scope: DEMO_SCOPES.into(),
            aud: None,
            ttl: Some(12 * 3600),
            tier: None,
        })
        .map_err(|e| anyhow::anyhow!("cannot mint the demo token: {e}"))?;
    let (partner_key, _) = idp
        .create_partner_key(&PartnerKeyRequest {
            partner: "acme".into(),
            tier: None,
            version: None,
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot create the demo partner key (is Redis reachable?): {e}")
        })?;
    ready(&Running {
        urls,
        token,
        partner_key,
    });

    tokio::select! {
        () = shutdown => {}
        Some(res) = tasks.join_next() => {
            // Something stopped on its own: stop the rest, and say why.
            stop.cancel();
            res.context("a devstack component panicked")??;
            anyhow::bail!("a devstack component stopped unexpectedly");
        }
    }
    stop.cancel();
    while let Some(res) = tasks.join_next().await {
        res.context("a devstack component panicked")??;
    }
    Ok(())
}

/// Points a BFF's defaults at the running components and starts it.
fn start<C>(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    stop: &CancellationToken,
    bff: &Bff<C>,
    listener: TcpListener,
    urls: &Urls,
    opts: &Options,
    keys: Option<Arc<dyn ApiKeyStore>>,
) -> anyhow::Result<()>
where
    C: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    let mut cfg: Config<C> = bff
        .load(None)
        .with_context(|| format!("{}: invalid configuration", bff.name))?;
    cfg.point_at(&urls.idp, &urls.grpc, &urls.rest);
    if opts.redis.is_some() {
        cfg.redis.url.clone_from(&opts.redis);
    }
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", bff.name))?;
    let mut builder = Gateway::builder(bff.name, cfg);
    if let Some(keys) = keys {
        builder = builder.api_key_store(keys);
    }
    let gw = builder
        .build()
        .with_context(|| format!("{}: invalid configuration", bff.name))?;
    gw.upstreams.require(bff.upstreams)?;
    let app = (bff.app)(gw.clone());
    let (stop, name) = (stop.clone(), bff.name);
    tasks.spawn(async move {
        let conns = gw.connections.clone();
        gateway_core::listener::serve(app, listener, conns, stop.cancelled_owned(), move || {
            gw.set_draining()
        })
        .await
        .with_context(|| format!("{name} failed"))
    });
    Ok(())
}

/// The banner: URLs, the demo credentials and copy-paste `curl` lines.
pub fn banner(r: &Running, redis: Option<&str>) -> String {
    let u = &r.urls;
    let state = redis.map_or_else(
        || "in memory".to_owned(),
        |url| format!("in Redis at {url}"),
    );
    format!(
        "\
devstack is up (shared state {state}).

  bff-mobile    {mobile}
  bff-web       {web}
  bff-tv        {tv}
  bff-partner   {partner}
  identity      {idp}   (JWKS: {idp}/.well-known/jwks.json)
  backends      gRPC {grpc}, REST {rest} (admin: {rest}/admin/hits)

A token for user-0042 (scopes: {DEMO_SCOPES}), valid 12 h:
  export TOKEN={token}

A partner API key for `acme` (standard tier):
  export PARTNER_KEY={key}

Try:
  curl -i {mobile}/api/v2/user/profile -H \"Authorization: Bearer $TOKEN\"
  curl -i {mobile}/api/home-feed -H \"Authorization: Bearer $TOKEN\"
  curl -i {mobile}/api/v2/start -H \"Authorization: Bearer $TOKEN\"
  curl -i {web}/api/profile -H \"Authorization: Bearer $TOKEN\"
  curl -N {web}/api/events -H \"Authorization: Bearer $TOKEN\"
  curl -i {tv}/api/home -H \"Authorization: Bearer $TOKEN\"
  curl -i {partner}/v1/subscriptions -H \"X-Api-Key: $PARTNER_KEY\"
  curl -i {partner}/v1/subscriptions -H \"X-Api-Key: $PARTNER_KEY\" -H 'Idempotency-Key: demo-1' -H 'content-type: application/json' -d '{{\"user_id\":\"user-0042\",\"plan\":\"premium\"}}'
  curl -s {idp}/token -H 'content-type: application/json' -d '{{\"sub\":\"user-0007\",\"scope\":\"profile:read\"}}'
  curl -s {rest}/admin/faults -H 'content-type: application/json' -d '{{\"service\":\"subscription\",\"latency_ms\":2000}}'

Ctrl-C stops everything.
",
        mobile = u.mobile,
        web = u.web,
        tv = u.tv,
        partner = u.partner,
        idp = u.idp,
        grpc = u.grpc,
        rest = u.rest,
        token = r.token,
        key = r.partner_key,
    )
}
