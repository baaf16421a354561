//! Integration-test support: real servers and stores on loopback.

use std::io::Write as _;

/// The variable that makes Redis tests mandatory (set by `.ci/run`).
pub const REDIS_REQUIRED: &str = "TOWER_REDIS_REQUIRED";
/// The variable naming the Redis to use; default `redis://127.0.0.1:6379/`.
pub const REDIS_URL: &str = "TOWER_REDIS_URL";

/// A connection to the test Redis, or `None` (after saying so on the terminal) when Redis is
/// not reachable and not required. Panics when it is required but unreachable.
pub async fn redis_connection(test: &str) -> Option<redis::aio::MultiplexedConnection> {
    let url = std::env::var(REDIS_URL).unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_string());
    let required = std::env::var(REDIS_REQUIRED).is_ok_and(|v| v == "1" || v == "true");
    let attempt = async {
        let client = redis::Client::open(url.as_str())?;
        let connect = client.get_multiplexed_async_connection();
        match tokio::time::timeout(std::time::Duration::from_secs(3), connect).await {
            Ok(conn) => conn,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "connect timed out",
            ))),
        }
    };
    match attempt.await {
        Ok(conn) => Some(conn),
        Err(err) if required => {
            panic!("{REDIS_REQUIRED} is set but Redis at {url} is unreachable: {err}")
        }
        Err(err) => {
            // Written straight to the terminal: the test harness captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: Redis at {url} is unreachable ({err}); set {REDIS_REQUIRED}=1 to make this a failure"
            );
            None
        }
    }
}

/// The variable listing the nodes of the test Redis Cluster, comma-separated (set by `.ci/run`);
/// default `redis://127.0.0.1:7000/,redis://127.0.0.1:7001/,redis://127.0.0.1:7002/`.
pub const REDIS_CLUSTER_URLS: &str = "TOWER_REDIS_CLUSTER_URLS";

/// How long a helper waits for a Redis to accept connections or answer.
const REDIS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether Redis tests must fail, rather than skip, when Redis is missing.
pub fn redis_required() -> bool {
    std::env::var(REDIS_REQUIRED).is_ok_and(|v| v == "1" || v == "true")
}

/// The URL of the test Redis: [`REDIS_URL`], or `redis://127.0.0.1:6379/`.
pub fn redis_url() -> String {
    std::env::var(REDIS_URL).unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_string())
}

/// Says on the terminal that `test` skipped because `what` is missing, or panics when Redis is
/// required.
fn redis_missing(test: &str, what: &str) {
    if redis_required() {
        panic!("{REDIS_REQUIRED} is set but {what}");
    }
    // Written straight to the terminal: the test harness captures `eprintln!`.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {what}; set {REDIS_REQUIRED}=1 to make this a failure"
    );
}

/// The node URLs of the test Redis Cluster once every one of them reports `cluster_state:ok`,
/// or `None` (after saying so) when the cluster is not there and not required. Panics when it is
/// required but not there.
pub async fn redis_cluster_urls(test: &str) -> Option<Vec<String>> {
    let urls: Vec<String> = std::env::var(REDIS_CLUSTER_URLS)
        .unwrap_or_else(|_| {
            "redis://127.0.0.1:7000/,redis://127.0.0.1:7001/,redis://127.0.0.1:7002/".to_string()
        })
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    for url in &urls {
        let state = async {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async::<String>(&mut conn)
                .await
        };
        let ok = match tokio::time::timeout(REDIS_WAIT, state).await {
            Ok(Ok(info)) if info.lines().any(|l| l.trim() == "cluster_state:ok") => continue,
            Ok(Ok(_)) => "its cluster_state is not ok".to_string(),
            Ok(Err(err)) => format!("it is unreachable or not a cluster node ({err})"),
            Err(_) => "it did not answer in time".to_string(),
        };
        redis_missing(
            test,
            &format!("Redis Cluster node {url} is not usable: {ok}"),
        );
        return None;
    }
    Some(urls)
}

/// A `redis-server` of the test's own on a free loopback port, so a test may stop, freeze and
/// restart it without disturbing any other test. Killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    dir: std::path::PathBuf,
    /// Extra `redis-server` arguments (cluster mode).
    args: Vec<String>,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts one, or returns `None` (after saying so) when `redis-server` is not installed and
    /// Redis is not required. Panics when it is required but cannot start.
    pub async fn start(test: &str) -> Option<Self> {
        Self::start_with(test, false).await
    }

    /// Starts one as above, in cluster mode (its own `nodes.conf`, cluster bus on a second free
    /// port) when `cluster` is true.
    async fn start_with(test: &str, cluster: bool) -> Option<Self> {
        let mut last_failure = String::new();
        // A port found free may be taken before the server binds it: then try another.
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("tower-tests-redis-{}-{port}", std::process::id()));
            let mut args = Vec::new();
            if cluster {
                let bus = free_port();
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-port",
                    ]
                    .map(str::to_owned),
                );
                args.push(bus.to_string());
            }
            let mut redis = Self {
                port,
                dir,
                args,
                child: None,
            };
            if let Err(err) = redis.spawn() {
                redis_missing(test, &format!("redis-server could not start ({err})"));
                return None;
            }
            match redis.wait_until_up().await {
                Ok(()) => return Some(redis),
                Err(failure) => last_failure = failure,
            }
        }
        panic!("no private redis-server came up: {last_failure}");
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let child = std::process::Command::new("redis-server")
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits (at most five seconds) until this process's own server answers on its port (not
    /// another one that got the port first).
    async fn wait_until_up(&mut self) -> Result<(), String> {
        let url = self.url();
        let started = std::time::Instant::now();
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err("not started".into());
            };
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server on port {} exited: {status}",
                    self.port
                ));
            }
            let pid = child.id();
            let attempt = async {
                let client = redis::Client::open(url.as_str())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut conn)
                    .await
            };
            let answered =
                tokio::time::timeout(std::time::Duration::from_millis(500), attempt).await;
            let ours = format!("process_id:{pid}");
            if let Ok(Ok(info)) = answered
                && info.lines().any(|l| l.trim() == ours)
            {
                return Ok(());
            }
            if started.elapsed() > REDIS_WAIT {
                return Err(format!(
                    "redis-server on port {} did not answer within {REDIS_WAIT:?}",
                    self.port
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Its URL, `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A fresh connection for the test's own commands (`INFO`, `CONFIG RESETSTAT`).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("a valid URL");
        tokio::time::timeout(REDIS_WAIT, client.get_multiplexed_async_connection())
            .await
            .expect("the private redis-server did not accept a connection in time")
            .expect("the private redis-server refused a connection")
    }

    /// Kills the server (`SIGKILL`: what it holds is lost, as in a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port, and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().expect("redis-server restarts");
        if let Err(failure) = self.wait_until_up().await {
            panic!("the private redis-server did not restart: {failure}");
        }
    }

    /// Freezes the server (`SIGSTOP`): it keeps its connections but answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self
            .child
            .as_ref()
            .expect("the private redis-server is running");
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // SIGKILL works on a frozen process too.
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(err) => panic!("no free loopback port: {err}"),
    }
}

/// A three-master Redis Cluster of the test's own ([`PrivateRedis`] nodes in cluster mode), so a
/// test may kill and restart a master. A restarted node keeps its `nodes.conf` and rejoins with
/// its slots (empty: nothing is persisted). Needs `redis-server` 7.0 or later (`--cluster-port`).
#[derive(Debug)]
pub struct PrivateRedisCluster {
    nodes: Vec<PrivateRedis>,
}

impl PrivateRedisCluster {
    /// Starts three nodes, joins them with `redis-cli --cluster create` and waits for
    /// `cluster_state:ok`; `None` (after saying so) when `redis-server` or `redis-cli` is not
    /// installed and Redis is not required.
    pub async fn start(test: &str) -> Option<Self> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(PrivateRedis::start_with(test, true).await?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let create = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .output();
        let output = match tokio::time::timeout(std::time::Duration::from_secs(20), create).await {
            Ok(Ok(output)) => output,
            Ok(Err(err)) => {
                redis_missing(test, &format!("redis-cli could not run ({err})"));
                return None;
            }
            Err(_) => panic!("redis-cli --cluster create did not finish in 20 s"),
        };
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_until_ok().await;
        Some(cluster)
    }

    /// The nodes' URLs, in start order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateRedis::url).collect()
    }

    /// Node `i` (0 to 2), to stop, freeze or restart.
    pub fn node(&mut self, i: usize) -> &mut PrivateRedis {
        &mut self.nodes[i]
    }

    /// Waits (at most fifteen seconds) until every node reports `cluster_state:ok`; panics
    /// otherwise.
    pub async fn wait_until_ok(&self) {
        let started = std::time::Instant::now();
        loop {
            let mut ok = true;
            for node in &self.nodes {
                let state = async {
                    let client = redis::Client::open(node.url())?;
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async::<String>(&mut conn)
                        .await
                };
                ok &= matches!(
                    tokio::time::timeout(std::time::Duration::from_millis(500), state).await,
                    Ok(Ok(info)) if info.lines().any(|l| l.trim() == "cluster_state:ok")
                );
            }
            if ok {
                return;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(15),
                "the private cluster is not ok after 15 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Calls, per command, since the last `CONFIG RESETSTAT`, from `INFO commandstats` (names as
/// Redis spells them: `evalsha`, `config|resetstat`). Scripts' own `redis.call`s count too.
pub async fn redis_command_calls(
    conn: &mut redis::aio::MultiplexedConnection,
) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Serves `app` on a free loopback port, in a spawned task, and returns its address.
///
/// ```no_run
/// # async fn demo() {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
/// let addr = tests::serve_axum(app).await;
/// let body = reqwest::get(format!("http://{addr}/")).await.unwrap().text().await.unwrap();
/// assert_eq!(body, "hi");
/// # }
/// ```
pub async fn serve_axum(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Serves the `tonic-health` service behind `layer` (the server's layers, outermost first as
/// in a `tower::ServiceBuilder`; `tower::layer::util::Identity` for none) on a free loopback
/// port, in a spawned task. Returns its reporter (the service `""` is `SERVING`) and address.
///
/// ```no_run
/// # async fn demo() {
/// let (_reporter, addr) = tests::serve_health(tower::layer::util::Identity::new()).await;
/// let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
///     .unwrap()
///     .connect_lazy();
/// # drop(channel);
/// # }
/// ```
pub async fn serve_health<L, ResBody>(
    layer: L,
) -> (tonic_health::server::HealthReporter, std::net::SocketAddr)
where
    L: tower::Layer<tonic::service::Routes> + Clone + Send + 'static,
    L::Service: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    (reporter, addr)
}

/// A client-side layer for tests that refuses, as a breaker or bulkhead in a client stack would,
/// every request whose `x-refuse` header names a [`tower_red::RejectionKind`] (its `as_str`): the
/// rejection carries the layer's name and a `Retry-After` of 2.5 s. Other requests pass through.
#[derive(Clone, Copy, Debug)]
pub struct RefuseOnHeaderLayer {
    name: &'static str,
}

impl RefuseOnHeaderLayer {
    /// A layer whose rejections carry `name`.
    pub fn named(name: &'static str) -> Self {
        RefuseOnHeaderLayer { name }
    }
}

impl<S> tower::Layer<S> for RefuseOnHeaderLayer {
    type Service = RefuseOnHeader<S>;
    fn layer(&self, inner: S) -> RefuseOnHeader<S> {
        RefuseOnHeader {
            inner,
            name: self.name,
        }
    }
}

/// The service of [`RefuseOnHeaderLayer`].
#[derive(Clone, Debug)]
pub struct RefuseOnHeader<S> {
    inner: S,
    name: &'static str,
}

impl<S, B> tower::Service<http::Request<B>> for RefuseOnHeader<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<tower_red::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower_red::BoxError;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, tower_red::BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), tower_red::BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use tower_red::{Rejection, RejectionKind};
        let kind = req.headers().get("x-refuse").and_then(|v| {
            RejectionKind::ALL
                .into_iter()
                .find(|k| k.as_str().as_bytes() == v.as_bytes())
        });
        if let Some(kind) = kind {
            let rejection = Rejection::new(kind)
                .with_name(std::sync::Arc::from(self.name))
                .with_retry_after(std::time::Duration::from_millis(2_500));
            return Box::pin(async move { Err(rejection.into()) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

/// The workspace README's Rust examples, compiled as doctests of this crate (which depends on
/// every layer crate with every feature), so the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
