//! Fixtures for integration and end-to-end tests: real servers on port 0, never fixed ports, so
//! tests run in parallel.
//!
//! - [`Stack`]: the demo backends and the identity provider, in process.
//! - [`TestBff`]: one BFF serving on a free port, configured against a [`Stack`].
//! - [`RedisServer`]: a private `redis-server` on a free port; skipped loudly when the machine has
//!   none, unless `BFF_REQUIRE_REDIS=1`, which turns the skip into a failure (CI sets it).
//! - [`RedisCluster`]: a private three-primary Redis Cluster on free ports, with the same skip rule.
//! - [`Process`]: a spawned binary of this workspace, killed when dropped.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use demo_backends::DemoBackends;
use dev_idp::IdentityProvider;
use gateway_core::auth::apikey::{ApiKeyStore, MemoryApiKeyStore};
use gateway_core::cli::Bff;
use gateway_core::config::Config;
use gateway_core::server::Gateway;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A port that was free a moment ago, for processes that must be told their port up front.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Demo backends and the identity provider, in this process, on free ports.
pub struct Stack {
    /// `http://` base of the gRPC backends.
    pub grpc: String,
    /// `http://` base of the REST backends and admin API.
    pub rest: String,
    /// `http://` base of the identity provider (also its issuer name).
    pub idp: String,
    /// The identity provider, to mint tokens and keys directly.
    pub provider: IdentityProvider,
    /// The store partner keys are written to.
    pub keys: Arc<dyn ApiKeyStore>,
    /// A client for the test's own calls.
    pub http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Stack {
    /// Starts the backends and the identity provider, with partner keys held in memory.
    pub async fn start() -> Self {
        Self::start_with_keys(Arc::new(MemoryApiKeyStore::default())).await
    }

    /// Starts the backends and the identity provider, which writes partner keys to `keys` (shared
    /// with every [`TestBff`] of this stack).
    pub async fn start_with_keys(keys: Arc<dyn ApiKeyStore>) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let rest = TcpListener::bind("127.0.0.1:0").await.expect("bind rest");
        let idp_l = TcpListener::bind("127.0.0.1:0").await.expect("bind idp");
        let (grpc_url, rest_url, idp_url) = (url(&grpc), url(&rest), url(&idp_l));
        let stop = CancellationToken::new();
        tokio::spawn(DemoBackends::new().serve(grpc, rest, stop.clone().cancelled_owned()));
        let provider =
            IdentityProvider::new(idp_url.clone(), keys.clone()).expect("identity provider");
        let router = provider.router();
        let idp_stop = stop.clone();
        tokio::spawn(async move {
            axum_serve(idp_l, router, idp_stop).await;
        });
        Self {
            grpc: grpc_url,
            rest: rest_url,
            idp: idp_url,
            provider,
            keys,
            http: reqwest::Client::new(),
            stop,
        }
    }

    /// Starts one more instance of the demo backends; returns its gRPC and REST bases and the
    /// token that stops it.
    pub async fn extra_backends() -> (String, String, CancellationToken) {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let rest = TcpListener::bind("127.0.0.1:0").await.expect("bind rest");
        let (grpc_url, rest_url) = (url(&grpc), url(&rest));
        let stop = CancellationToken::new();
        tokio::spawn(DemoBackends::new().serve(grpc, rest, stop.clone().cancelled_owned()));
        (grpc_url, rest_url, stop)
    }

    /// Points a BFF configuration at this stack.
    pub fn point<C: Default>(&self, cfg: &mut Config<C>) {
        cfg.point_at(&self.idp, &self.grpc, &self.rest);
    }

    /// Writes `bff`'s defaults, pointed at this stack and adjusted by `tweak`, to a TOML file for a
    /// spawned binary to read.
    pub fn config_file<C>(&self, bff: &Bff<C>, tweak: impl FnOnce(&mut Config<C>)) -> PathBuf
    where
        C: Serialize + DeserializeOwned + Default,
    {
        let mut cfg = (bff.defaults)();
        self.point(&mut cfg);
        tweak(&mut cfg);
        let text = toml::to_string(&cfg).expect("configuration as TOML");
        let path = std::env::temp_dir().join(format!(
            "{}-{}-{}.toml",
            bff.name,
            std::process::id(),
            free_port()
        ));
        std::fs::write(&path, text).expect("write configuration");
        path
    }

    /// Mints a token through the identity provider's HTTP API.
    pub async fn token(&self, body: Value) -> String {
        let res: Value = self
            .http
            .post(format!("{}/token", self.idp))
            .json(&body)
            .send()
            .await
            .expect("POST /token")
            .json()
            .await
            .expect("token JSON");
        res["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// A token for `sub` with `scope`, valid an hour.
    pub async fn user_token(&self, sub: &str, scope: &str) -> String {
        self.token(json!({"sub": sub, "scope": scope})).await
    }

    /// Creates a partner key through the identity provider's HTTP API.
    pub async fn partner_key(&self, partner: &str) -> String {
        self.partner_key_pinned(partner, None).await
    }

    /// Creates a partner key pinned to an API version (`None`: unpinned).
    pub async fn partner_key_pinned(&self, partner: &str, version: Option<&str>) -> String {
        let res: Value = self
            .http
            .post(format!("{}/partner-keys", self.idp))
            .json(&json!({"partner": partner, "version": version}))
            .send()
            .await
            .expect("POST /partner-keys")
            .json()
            .await
            .expect("key JSON");
        res["api_key"].as_str().expect("api_key").to_owned()
    }

    /// Sets a fault on a demo service.
    pub async fn fault(&self, service: &str, latency_ms: u64, error_rate: f64) {
        let res = self
            .http
            .post(format!("{}/admin/faults", self.rest))
            .json(&json!({"service": service, "latency_ms": latency_ms, "error_rate": error_rate}))
            .send()
            .await
            .expect("POST /admin/faults");
        assert!(res.status().is_success(), "fault not set: {}", res.status());
    }

    /// Clears every fault.
    pub async fn reset(&self) {
        self.http
            .post(format!("{}/admin/reset", self.rest))
            .send()
            .await
            .expect("POST /admin/reset");
    }

    /// Call counts per service.
    pub async fn hits(&self) -> Value {
        self.http
            .get(format!("{}/admin/hits", self.rest))
            .send()
            .await
            .expect("GET /admin/hits")
            .json()
            .await
            .expect("hits")
    }

    /// The sum of all call counts.
    pub async fn total_hits(&self) -> u64 {
        self.hits()
            .await
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    }
}

async fn axum_serve(listener: TcpListener, router: axum::Router, stop: CancellationToken) {
    let _ = gateway_core::server::serve(
        router,
        listener,
        Duration::from_secs(1),
        stop.cancelled_owned(),
        || {},
    )
    .await;
}

fn url(l: &TcpListener) -> String {
    format!("http://{}", l.local_addr().expect("local addr"))
}

/// One BFF serving on a free port.
pub struct TestBff {
    /// Its address.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub url: String,
    stop: CancellationToken,
}

impl TestBff {
    /// Starts draining it, as SIGTERM would: readiness goes 503, in-flight requests finish.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for TestBff {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestBff {
    /// Serves `bff` with its defaults pointed at `stack`, after `tweak` adjusts them.
    pub async fn start<C>(bff: &Bff<C>, stack: &Stack, tweak: impl FnOnce(&mut Config<C>)) -> Self
    where
        C: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
    {
        let mut cfg = (bff.defaults)();
        stack.point(&mut cfg);
        tweak(&mut cfg);
        cfg.validate().expect("valid test configuration");
        let gw = Gateway::builder(bff.name, cfg)
            .api_key_store(stack.keys.clone())
            .build()
            .expect("gateway");
        gw.upstreams.require(bff.upstreams).expect("upstreams");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind bff");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let app = (bff.app)(gw.clone());
        tokio::spawn(gateway_core::listener::serve(
            app,
            listener,
            gw.connections.clone(),
            stop.clone().cancelled_owned(),
            move || {
                gw.set_draining();
            },
        ));
        Self {
            addr,
            url: format!("http://{addr}"),
            stop,
        }
    }
}

/// A private `redis-server` on a free port, shut down when dropped.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    /// `redis://127.0.0.1:port`.
    pub url: String,
    child: Child,
}

impl RedisServer {
    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        signal(self.child.id(), "-CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    /// Starts one, or returns `None` (after saying so on stderr) when the machine has no
    /// `redis-server`. With `BFF_REQUIRE_REDIS=1` a missing server fails the test instead.
    pub fn start(test: &str) -> Option<Self> {
        let required = std::env::var("BFF_REQUIRE_REDIS").is_ok_and(|v| v == "1");
        match Self::spawn(free_port()) {
            Ok(server) => Some(server),
            Err(err) => {
                assert!(
                    !required,
                    "{test}: BFF_REQUIRE_REDIS=1 but redis-server cannot start: {err}"
                );
                eprintln!(
                    "SKIPPED {test}: no redis-server on this machine ({err}); set BFF_REQUIRE_REDIS=1 to fail instead"
                );
                None
            }
        }
    }

    /// Starts one on `port` again (after a test killed the previous one there).
    pub fn start_on(port: u16) -> Self {
        Self::spawn(port).expect("redis-server restarts")
    }

    fn spawn(port: u16) -> std::io::Result<Self> {
        let spawned = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = spawned?;
        let server = Self {
            port,
            url: format!("redis://127.0.0.1:{port}"),
            child,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other(format!(
            "redis-server on port {port} did not start"
        )))
    }
}

/// A private Redis Cluster: three primaries (no replicas) on free ports, every slot assigned,
/// shut down (and its files removed) when dropped.
pub struct RedisCluster {
    /// The nodes' client ports.
    pub ports: Vec<u16>,
    /// `redis://127.0.0.1:port` of every node: the seed list for `redis.cluster_urls`.
    pub urls: Vec<String>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisCluster {
    /// Primaries in the cluster.
    pub const NODES: usize = 3;

    /// Starts one, or returns `None` (after saying so on stderr) when the machine has no
    /// `redis-server` or `redis-cli`. With `BFF_REQUIRE_REDIS=1` that fails the test instead.
    pub fn start(test: &str) -> Option<Self> {
        let required = std::env::var("BFF_REQUIRE_REDIS").is_ok_and(|v| v == "1");
        match Self::spawn() {
            Ok(cluster) => Some(cluster),
            Err(err) => {
                assert!(
                    !required,
                    "{test}: BFF_REQUIRE_REDIS=1 but a Redis Cluster cannot start: {err}"
                );
                eprintln!(
                    "SKIPPED {test}: no Redis Cluster on this machine ({err}); set BFF_REQUIRE_REDIS=1 to fail instead"
                );
                None
            }
        }
    }

    /// How many keys matching `pattern` (a `KEYS` glob) each node holds, in the order of
    /// [`Self::ports`].
    pub fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        self.ports
            .iter()
            .map(|port| {
                cli(*port, &["KEYS", pattern])
                    .expect("KEYS")
                    .lines()
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .collect()
    }

    fn spawn() -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self {
            ports: Vec::new(),
            urls: Vec::new(),
            children: Vec::new(),
            dir,
        };
        for _ in 0..Self::NODES {
            let port = cluster_port()?;
            let conf = cluster.dir.join(format!("nodes-{port}.conf"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(&conf)
                .arg("--dir")
                .arg(&cluster.dir)
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| std::io::Error::new(e.kind(), format!("redis-server: {e}")))?;
            cluster.children.push(child);
            cluster.ports.push(port);
            cluster.urls.push(format!("redis://127.0.0.1:{port}"));
        }
        for port in &cluster.ports {
            wait_for(|| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok())
                .map_err(|()| std::io::Error::other(format!("node {port} did not start")))?;
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| std::io::Error::new(e.kind(), format!("redis-cli: {e}")))?;
        if !created.status.success() {
            return Err(std::io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            )));
        }
        for port in &cluster.ports {
            wait_for(|| {
                cli(*port, &["CLUSTER", "INFO"]).is_ok_and(|info| info.contains("cluster_state:ok"))
            })
            .map_err(|()| std::io::Error::other(format!("node {port} never saw the cluster ok")))?;
        }
        Ok(cluster)
    }
}

/// A free port whose cluster bus port (`port + 10000`) is free too.
fn cluster_port() -> std::io::Result<u16> {
    for _ in 0..100 {
        let port = free_port();
        if port > u16::MAX - 10_000 {
            continue;
        }
        if StdListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free pair of ports for a cluster node",
    ))
}

/// `redis-cli -p port args...`, its standard output.
fn cli(port: u16, args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(std::io::Error::other(format!(
            "redis-cli exited {}",
            out.status
        )))
    }
}

/// Polls `ready` every 50 ms for at most 10 s.
fn wait_for(mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    for _ in 0..200 {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(())
}

/// A file of this repository, by its path from the workspace root.
pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// Runs `<exe> check --config <file>`.
pub fn check_config(exe: &str, file: &std::path::Path) -> std::process::Output {
    Command::new(exe)
        .args(["check", "--config"])
        .arg(file)
        .output()
        .expect("run check")
}

/// A spawned binary, killed when dropped.
pub struct Process {
    /// The child process.
    pub child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Spawns the binary `exe` (a package's `CARGO_BIN_EXE_<name>`, which cargo builds for that
    /// package's integration tests) with `args` and `env`. Standard output is piped (read it, or
    /// leave it: the binaries print little there); logs go to a file in the temporary directory,
    /// so a chatty process can never block on a full pipe.
    pub fn spawn(exe: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let name = std::path::Path::new(exe)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("process");
        let log =
            std::env::temp_dir().join(format!("{name}-{}-{}.log", std::process::id(), free_port()));
        let log = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("spawn"),
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("-TERM");
        self.wait()
    }

    /// Sends a signal (`-TERM`, `-STOP`, ...).
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }
}

/// Polls `url` until it answers 200, for at most `timeout`.
pub async fn wait_healthy(url: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let http = reqwest::Client::new();
    while tokio::time::Instant::now() < deadline {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not become healthy within {timeout:?}");
}

/// Where a spawned devstack listens.
pub struct DevstackPorts {
    /// gRPC backends, REST backends, identity provider, mobile, web, TV, partner.
    pub ports: [u16; 7],
}

impl DevstackPorts {
    /// Seven free ports.
    pub fn free() -> Self {
        Self {
            ports: std::array::from_fn(|_| free_port()),
        }
    }

    /// The command-line flags that put devstack on these ports.
    pub fn args(&self) -> Vec<String> {
        let flags = [
            "--grpc-port",
            "--rest-port",
            "--idp-port",
            "--mobile-port",
            "--web-port",
            "--tv-port",
            "--partner-port",
        ];
        flags
            .iter()
            .zip(self.ports)
            .flat_map(|(f, p)| [(*f).to_owned(), p.to_string()])
            .collect()
    }

    /// `http://127.0.0.1:<port>` of the REST backends.
    pub fn rest(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[1])
    }
    /// The identity provider.
    pub fn idp(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[2])
    }
    /// bff-mobile.
    pub fn mobile(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[3])
    }
    /// bff-web.
    pub fn web(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[4])
    }
    /// bff-tv.
    pub fn tv(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[5])
    }
    /// bff-partner.
    pub fn partner(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }
}

/// Sends `n` requests at once (HTTP/2 multiplexed, so they really are concurrent), round-robin over
/// `urls`, with `credential` as both bearer token and API key; returns (200s, 429s, anything else).
pub async fn burst(urls: &[String], credential: &str, n: usize) -> (usize, usize, usize) {
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let req = http
                .get(&urls[i % urls.len()])
                .bearer_auth(credential)
                .header("x-api-key", credential)
                .send();
            tokio::spawn(req)
        })
        .collect();
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for t in tasks {
        match t.await.expect("task").map(|r| r.status().as_u16()) {
            Ok(200) => ok += 1,
            Ok(429) => limited += 1,
            _ => other += 1,
        }
    }
    (ok, limited, other)
}
