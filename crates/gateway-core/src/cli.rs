//! The command line every BFF binary shares:
//!
//! ```text
//! bff-mobile [--config FILE] [--listen ADDR]     serve
//! bff-mobile check --config FILE                 validate a configuration and exit
//! ```
//!
//! A bad configuration prints one line naming the key and exits with code 64 (`EX_USAGE`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::config::{Config, ConfigError};
use crate::server::{Gateway, shutdown_signal};
use crate::telemetry;

/// Exit code for a bad configuration (`EX_USAGE` in sysexits.h).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// What a BFF binary is: its name, its defaults, the upstreams it calls and its routes.
pub struct Bff<C: 'static> {
    /// Name in logs and metrics, and the binary's name.
    pub name: &'static str,
    /// Built-in defaults (the devstack setup).
    pub defaults: fn() -> Config<C>,
    /// Upstreams the routes call; each must be configured.
    pub upstreams: &'static [&'static str],
    /// Builds the whole application from a gateway.
    pub app: fn(Gateway<C>) -> App,
}

impl<C> Bff<C>
where
    C: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    /// Loads the configuration (defaults < `file` < `BFF_*` environment).
    pub fn load(&self, file: Option<&std::path::Path>) -> Result<Config<C>, ConfigError> {
        Config::load(&(self.defaults)(), file)
    }

    /// Builds the gateway and checks that every upstream the routes call is configured.
    pub fn gateway(&self, config: Config<C>) -> Result<Gateway<C>, ConfigError> {
        let gw = Gateway::builder(self.name, config).build()?;
        gw.upstreams.require(self.upstreams)?;
        Ok(gw)
    }
}

#[derive(Parser)]
struct Cli {
    /// TOML configuration file, layered over the built-in defaults.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Address to listen on; overrides `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration and exit: 0 when valid, 64 naming the bad key otherwise.
    Check,
}

/// Runs a BFF binary: parses the command line, then serves or checks.
pub fn main<C>(bff: &Bff<C>) -> ExitCode
where
    C: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    let cli = Cli::parse();
    let config = match bff.load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("{}: invalid configuration: {err}", bff.name);
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Some(Command::Check) = cli.command {
        if cli.config.is_none() {
            eprintln!("{}: check needs --config FILE", bff.name);
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
        return match bff.gateway(config) {
            Ok(_) => {
                println!("{}: configuration is valid", bff.name);
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{}: invalid configuration: {err}", bff.name);
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        };
    }
    let workers = match workers(config.server.workers) {
        Ok(n) => n,
        Err(err) => {
            eprintln!("{}: invalid configuration: {err}", bff.name);
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match runtime(workers) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{}: cannot start the runtime: {err}", bff.name);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(bff, config, cli.listen))
}

/// The runtime threads to start: `server.workers`, or when it is 0 `TOKIO_WORKER_THREADS`,
/// or one per CPU the process may use (its CPU affinity and its cgroup's CPU quota count).
fn workers(configured: usize) -> Result<usize, ConfigError> {
    if configured > 0 {
        return Ok(configured);
    }
    match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=crate::config::MAX_WORKERS).contains(&n) => Ok(n),
            _ => Err(ConfigError(format!(
                "TOKIO_WORKER_THREADS must be between 1 and {}, got {v:?}",
                crate::config::MAX_WORKERS
            ))),
        },
        Err(_) => Ok(std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(crate::config::MAX_WORKERS)),
    }
}

/// One worker runs everything on the thread that serves, on tokio's single-threaded scheduler:
/// no stealing between queues and no wake-ups sent to another thread, which measured 1.12x the
/// throughput of a work-stealing runtime with one worker. More share the work by stealing it.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build()
}

async fn run<C>(bff: &Bff<C>, mut config: Config<C>, listen: Option<SocketAddr>) -> ExitCode
where
    C: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    telemetry::init(&config.telemetry, bff.name);
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    let addr = config.server.listen;
    let gw = match bff.gateway(config) {
        Ok(gw) => gw,
        Err(err) => {
            eprintln!("{}: invalid configuration: {err}", bff.name);
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(err) => {
            eprintln!("{}: cannot listen on {addr}: {err}", bff.name);
            return ExitCode::FAILURE;
        }
    };
    let shutdown = shutdown_signal();
    let app = (bff.app)(gw.clone());
    let conns = gw.connections.clone();
    let scheme = if gw.config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(bff = bff.name, %addr, %scheme, workers, "listening");
    match crate::listener::serve(app, listener, conns, shutdown, move || gw.set_draining()).await {
        Ok(()) => {
            tracing::info!(bff = bff.name, "stopped");
            telemetry::shutdown_tracing().await;
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(bff = bff.name, error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}
