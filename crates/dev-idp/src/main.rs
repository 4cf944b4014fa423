//! `dev-idp`: the development identity provider on its own.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use gateway_core::auth::apikey::{ApiKeyStore, MemoryApiKeyStore, RedisApiKeyStore};
use gateway_core::config::{RedisConfig, TelemetryConfig};
use gateway_core::store::Redis;

/// Development identity provider: JWKS, token minting, demo partner keys.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The `iss` of minted tokens; `http://<listen>` when absent.
    #[arg(long)]
    issuer: Option<String>,
    /// Store partner keys in this Redis (so standalone partner BFFs see them).
    #[arg(long)]
    redis: Option<String>,
    /// Store partner keys in this Redis Cluster instead: seed nodes, comma-separated
    /// (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`).
    #[arg(long, value_delimiter = ',', conflicts_with = "redis")]
    redis_cluster: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    gateway_core::telemetry::init_logging(&TelemetryConfig::default());
    let cfg = RedisConfig {
        url: args.redis,
        cluster_urls: args.redis_cluster,
        ..RedisConfig::default()
    };
    let keys: Arc<dyn ApiKeyStore> = match Redis::from_config(&cfg)? {
        Some(redis) => Arc::new(RedisApiKeyStore::new(
            redis,
            std::time::Duration::from_millis(cfg.timeout_ms),
        )),
        None => Arc::new(MemoryApiKeyStore::default()),
    };
    let issuer = args
        .issuer
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let idp = dev_idp::IdentityProvider::new(issuer, keys)?;
    let shutdown = gateway_core::server::shutdown_signal();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %args.listen, issuer = idp.issuer(), "dev identity provider listening");
    axum::serve(listener, idp.router())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
