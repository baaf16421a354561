//! How much throughput the full stack costs an axum hello-world: the same handler served bare
//! and behind `RedLayer`, `ProblemLayer`, an inbound deadline, a bulkhead and a breaker, with the
//! Prometheus recorder installed by `tower_red::prometheus::install()` (buckets, upkeep).
//!
//! ```text
//! bash benches/e2e.sh                 # the measurement: wrk against `--serve`, pinned cores
//! cargo run --release -p examples --bin loadcheck [-- --requests 40000 --concurrency 32]
//! cargo run --release -p examples --bin loadcheck -- --serve [--for 300]
//! ```
//!
//! Without `--serve` a reqwest client in this process drives both servers in alternating rounds
//! (a quick look; client and servers share the cores). With `--serve` it prints
//! `bare URL full URL metrics URL` on one line and serves until Ctrl-C or `--for` seconds, for an
//! external load generator: `benches/e2e.sh` pins it to one core and wrk to the other. A second
//! line lists variants of the stack (`name=URL`), to see what each part costs.
//!
//! Inside the stack only the outermost `RedLayer::server()` records a duration; the layers
//! inside it are built in `tower_red::red::counts_only` and count their outcomes. Not part of CI.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use futures::{StreamExt, stream};
use tower::ServiceBuilder;
use tower_breaker::BreakerLayer;
use tower_bulkhead::BulkheadLayer;
use tower_red::problem::ProblemLayer;
use tower_red::prometheus::PrometheusHandle;
use tower_red::{BoxError, RedLayer};
use tower_timeout_budget::inbound::InboundDeadlineLayer;

const TIME_LIMIT: Duration = Duration::from_secs(60);
const ROUNDS: usize = 3;

fn arg(args: &[String], name: &str, default: usize) -> Result<usize, BoxError> {
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).ok_or("a value")?.parse()?),
        None => Ok(default),
    }
}

fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// The inner layers of the server stack, counting their outcomes only: `RedLayer::server()`
/// outside them times the request once. (A macro: the stack's type is long.)
macro_rules! inner {
    () => {
        tower_red::red::counts_only(|| -> Result<_, BoxError> { inner!(build) })?
    };
    (build) => {
        Ok(ServiceBuilder::new()
            .layer(ProblemLayer::new())
            .layer(
                InboundDeadlineLayer::builder()
                    .name("api")
                    .cap(Duration::from_secs(5))
                    // As `tower_idempotency::stack` builds it: the deadline in the scope only.
                    .carry_in_extensions(false)
                    .build()?,
            )
            .layer(
                BulkheadLayer::builder()
                    .name("api")
                    .max_concurrent(1_024)
                    .build()?,
            )
            .layer(BreakerLayer::builder().name("api").http_status().build()?))
    };
}

/// The hello-world behind the recommended server stack, as the README builds it: the inner
/// layers on the routes, `RedLayer` around the router; `/metrics` stays outside both.
fn stacked(prometheus: PrometheusHandle) -> Result<Router, BoxError> {
    Ok(hello()
        .layer(inner!())
        .layer(RedLayer::server())
        .route("/metrics", get(move || async move { prometheus.render() })))
}

/// Variants of the stack for `--serve`, to see what each part costs: (name, app).
fn variants() -> Result<Vec<(&'static str, Router)>, BoxError> {
    let quiet = metrics::NoopRecorder;
    Ok(vec![
        ("red", hello().layer(RedLayer::server())),
        ("inner", hello().layer(inner!())),
        (
            // One `Router::layer` call: axum boxes and clones the stack once per request, not twice.
            "one_layer",
            hello().layer(
                ServiceBuilder::new()
                    .layer(RedLayer::server())
                    .layer(inner!()),
            ),
        ),
        (
            // Every inner layer also records a duration histogram, as it does alone.
            "timed_inner",
            hello()
                .layer((|| -> Result<_, BoxError> { inner!(build) })()?)
                .layer(RedLayer::server()),
        ),
        (
            // Built under the no-op recorder: every layer skips its metrics for life.
            "no_recorder",
            metrics::with_local_recorder(&quiet, || -> Result<_, BoxError> {
                Ok(hello().layer(inner!()).layer(RedLayer::server()))
            })?,
        ),
    ])
}

async fn serve(app: Router) -> Result<std::net::SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// Requests per second over `requests` GETs, `concurrency` at a time, stopped at the time limit.
async fn drive(
    addr: std::net::SocketAddr,
    requests: usize,
    concurrency: usize,
) -> Result<f64, BoxError> {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/");
    let start = Instant::now();
    let mut done = 0usize;
    let load = stream::iter(0..requests)
        .map(|_| client.get(&url).send())
        .buffer_unordered(concurrency);
    tokio::pin!(load);
    while let Some(res) = load.next().await {
        if !res?.status().is_success() {
            return Err("a request failed".into());
        }
        done += 1;
        if start.elapsed() > TIME_LIMIT {
            break;
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let requests = arg(&args, "--requests", 40_000)?;
    let concurrency = arg(&args, "--concurrency", 32)?;
    // Before any layer is built: layers decide at build time whether they record.
    let prometheus = tower_red::prometheus::install()?;

    let bare = serve(hello()).await?;
    let full = serve(stacked(prometheus.clone())?).await?;
    if args.iter().any(|a| a == "--serve") {
        // For an external load generator, such as `wrk -t1 -c32 -d10s http://ADDR/`.
        let limit = Duration::from_secs(arg(&args, "--for", 3_600)? as u64);
        println!("bare http://{bare}/ full http://{full}/ metrics http://{full}/metrics");
        let mut more = Vec::new();
        for (name, app) in variants()? {
            more.push(format!("{name}=http://{}/", serve(app).await?));
        }
        println!("variants {}", more.join(" "));
        tokio::select! {
            res = tokio::signal::ctrl_c() => res?,
            () = tokio::time::sleep(limit) => {}
        }
        return Ok(());
    }
    // Warm both up (connections, series registration), then alternate rounds.
    drive(bare, 2_000, concurrency).await?;
    drive(full, 2_000, concurrency).await?;
    let mut rates = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        rates.0.push(drive(bare, requests, concurrency).await?);
        rates.1.push(drive(full, requests, concurrency).await?);
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let rounds = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (bare_rps, full_rps) = (best(&rates.0), best(&rates.1));
    println!("{requests} requests per round, {concurrency} at a time, best of {ROUNDS} rounds:");
    println!(
        "  bare axum hello-world   {bare_rps:>9.0} req/s  (rounds: {})",
        rounds(&rates.0)
    );
    println!(
        "  full stack + Prometheus {full_rps:>9.0} req/s  (rounds: {})",
        rounds(&rates.1)
    );
    println!(
        "  kept {:.1}% of the bare rate",
        100.0 * full_rps / bare_rps
    );
    let series = prometheus
        .render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    println!("  ({series} Prometheus sample lines recorded)");
    Ok(())
}
