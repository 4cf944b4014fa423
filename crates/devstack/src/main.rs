//! `devstack`: demo backends, the dev identity provider and all four BFFs, in one command.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use clap::Parser;
use devstack::Options;

/// Runs the whole BFF system locally. Every port can be changed.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address every component listens on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Move all shared state (limits, cache, API keys) to this Redis, e.g. redis://127.0.0.1:6379.
    #[arg(long)]
    redis: Option<String>,
    #[arg(long, default_value_t = 50051)]
    grpc_port: u16,
    #[arg(long, default_value_t = 9001)]
    rest_port: u16,
    #[arg(long, default_value_t = 8090)]
    idp_port: u16,
    #[arg(long, default_value_t = 8081)]
    mobile_port: u16,
    #[arg(long, default_value_t = 8082)]
    web_port: u16,
    #[arg(long, default_value_t = 8083)]
    tv_port: u16,
    #[arg(long, default_value_t = 8084)]
    partner_port: u16,
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = Args::parse();
    gateway_core::telemetry::init_logging(&gateway_core::config::TelemetryConfig::default());
    let redis = a.redis.clone();
    let opts = Options {
        host: a.host,
        grpc_port: a.grpc_port,
        rest_port: a.rest_port,
        idp_port: a.idp_port,
        mobile_port: a.mobile_port,
        web_port: a.web_port,
        tv_port: a.tv_port,
        partner_port: a.partner_port,
        redis: a.redis,
    };
    // A closed stdout (`devstack | head`) must not take the system down: the banner is best effort.
    let ready = |r: &devstack::Running| {
        let mut out = std::io::stdout().lock();
        let _ =
            writeln!(out, "{}", devstack::banner(r, redis.as_deref())).and_then(|()| out.flush());
    };
    match devstack::run(opts, gateway_core::server::shutdown_signal(), ready).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("devstack: {err:#}");
            ExitCode::FAILURE
        }
    }
}
