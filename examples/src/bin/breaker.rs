//! The circuit breaker against a real failing backend: an axum server on loopback that fails
//! for a while and then heals, a reqwest client sending load through `tower-breaker`, the state
//! timeline as it happens, calls sent vs refused, and the RED metrics at the end.
//!
//! ```text
//! cargo run -p examples --bin breaker
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State as AxumState;
use axum::routing::get;
use http::StatusCode;
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{Layer, Service, ServiceExt};
use tower_breaker::{BreakerLayer, OpenTime};
use tower_red::{BoxError, Rejection};

/// How long the backend fails before it heals.
const OUTAGE: Duration = Duration::from_millis(1_500);
/// How long the load runs.
const LOAD: Duration = Duration::from_millis(3_500);
const WORKERS: usize = 4;
const PAUSE: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Backend {
    healthy: AtomicBool,
    served: AtomicU64,
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The recorder goes in first: the breaker registers its handles when it is built.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    tower_red::describe_metrics();

    let backend = Arc::new(Backend::default());
    let app = Router::new()
        .route("/stock", get(stock))
        .with_state(backend.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let start = Instant::now();
    let breaker = BreakerLayer::builder()
        .name("stock")
        .count_window(20)
        .minimum_calls(10)
        .failure_rate_threshold(0.5)
        .consecutive_failures(5)
        .open_time(
            OpenTime::exponential(Duration::from_millis(200), Duration::from_secs(1)).jitter(0.2),
        )
        .permitted_probes(3)
        .on_transition(move |t| {
            let open_for = t
                .open_for
                .map(|d| format!(" for {} ms", d.as_millis()))
                .unwrap_or_default();
            println!(
                "  {:>5} ms  {:<9} -> {:<9} ({}{open_for})",
                start.elapsed().as_millis(),
                t.from.to_string(),
                t.to.to_string(),
                t.reason
            );
        })
        .http_status()
        .build()?;
    let handle = breaker.handle();
    let client = breaker.layer(reqwest::Client::new());

    println!("backend on http://{addr}/stock: failing for {OUTAGE:?}, then healthy");
    println!("load: {WORKERS} workers for {LOAD:?}, through the breaker\n\nstate timeline:");
    println!("  {:>5} ms  closed", 0);

    let tally = Arc::new(Tally::default());
    let url: reqwest::Url = format!("http://{addr}/stock").parse()?;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let mut client = client.clone();
        let tally = tally.clone();
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            while start.elapsed() < LOAD {
                let req = reqwest::Request::new(reqwest::Method::GET, url.clone());
                match client.ready().await?.call(req).await {
                    Ok(res) if res.status().is_success() => {
                        tally.ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(_) => tally.failed.fetch_add(1, Ordering::Relaxed),
                    Err(e) if Rejection::find_in(&e).is_some() => {
                        tally.refused.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => return Err(e),
                };
                tokio::time::sleep(PAUSE).await;
            }
            Ok::<_, BoxError>(())
        }));
    }
    tokio::time::sleep(OUTAGE).await;
    backend.healthy.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }

    let (ok, failed, refused) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
    );
    println!("\nfinal state: {}", handle.state());
    println!(
        "calls: {} attempted, {} sent to the backend ({} ok, {} failed), {} refused by the breaker",
        ok + failed + refused,
        backend.served.load(Ordering::Relaxed),
        ok,
        failed,
        refused
    );
    println!("\nRED metrics (Prometheus text format; zero series and quantiles left out):");
    for line in prometheus.render().lines() {
        let ours = line.starts_with("resilience_");
        let noise = line.ends_with(" 0") || line.contains("quantile=");
        if ours && !noise {
            println!("{line}");
        }
    }
    Ok(())
}

async fn stock(AxumState(backend): AxumState<Arc<Backend>>) -> (StatusCode, &'static str) {
    backend.served.fetch_add(1, Ordering::Relaxed);
    if backend.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "42 in stock\n")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "database unreachable\n")
    }
}
