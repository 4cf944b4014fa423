//! `demo-backends`: runs the demo gRPC and REST backends until Ctrl-C or SIGTERM.

use anyhow::Context as _;
use clap::Parser;
use demo_backends::DemoBackends;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Seeded demo backends (gRPC user/preferences/subscription, REST content/ads/recommendations).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address of the gRPC listener.
    #[arg(
        long,
        env = "DEMO_BACKENDS_GRPC_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    grpc_listen: String,
    /// Address of the REST and admin listener.
    #[arg(
        long,
        env = "DEMO_BACKENDS_REST_LISTEN",
        default_value = "127.0.0.1:9001"
    )]
    rest_listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    // Installed before anything listens, so an early SIGTERM drains instead of killing.
    let shutdown = gateway_core::server::shutdown_signal();
    let grpc = TcpListener::bind(&args.grpc_listen)
        .await
        .with_context(|| format!("binding gRPC listener {}", args.grpc_listen))?;
    let rest = TcpListener::bind(&args.rest_listen)
        .await
        .with_context(|| format!("binding REST listener {}", args.rest_listen))?;
    DemoBackends::new().serve(grpc, rest, shutdown).await
}
