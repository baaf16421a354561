//! The main demo: an axum server on loopback behind the workspace's layers (RED metrics, the
//! problem+json adapter, an inbound deadline, a partitioned bulkhead and a circuit breaker),
//! driven by a bounded reqwest load in which some requests fail in the backend, some run out of
//! time and some are refused, then the RED metrics in Prometheus text format.
//!
//! ```text
//! cargo run -p examples --bin demo            # load, then print results and metrics
//! cargo run -p examples --bin demo -- --serve # keep the server up for curl (--port N to pick)
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use futures::{StreamExt, stream};
use http::StatusCode;
use tower::ServiceBuilder;
use tower_breaker::BreakerLayer;
use tower_bulkhead::{BulkheadLayer, Partition};
use tower_red::classify::HttpStatus;
use tower_red::problem::ProblemLayer;
use tower_red::{BoxError, RedLayer};
use tower_timeout_budget::inbound::InboundDeadlineLayer;

const REQUESTS: usize = 400;
const CONCURRENCY: usize = 8;
const LOAD_LIMIT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let serve = args.iter().any(|a| a == "--serve");
    let buckets_too = args.iter().any(|a| a == "--buckets");
    let port: u16 = match args.iter().position(|a| a == "--port") {
        Some(i) => args.get(i + 1).ok_or("--port needs a value")?.parse()?,
        None => 0,
    };

    // OpenTelemetry buckets for `_seconds` histograms, upkeep and descriptions, before any layer.
    let prometheus = tower_red::prometheus::install()?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let app = app()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    if serve {
        println!("demo server on http://{addr} (Ctrl-C to stop); try:");
        println!("  curl -i http://{addr}/orders/7      # ok");
        println!("  curl -i http://{addr}/orders/5      # the backend fails: 500");
        println!(
            "  curl -i http://{addr}/orders/10     # every 10th /orders request is refused: 503"
        );
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }

    println!("demo server on http://{addr}; sending {REQUESTS} requests, {CONCURRENCY} at a time");
    let client = reqwest::Client::new();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let load = stream::iter(0..REQUESTS)
        .map(|i| {
            let client = client.clone();
            let request = if i.is_multiple_of(4) {
                client.get(format!("http://{addr}/hello"))
            } else if i % 10 == 1 {
                client
                    .get(format!("http://{addr}/slow"))
                    .header("x-request-timeout-ms", "100")
            } else {
                client.get(format!("http://{addr}/orders/{i}"))
            };
            async move { request.send().await }
        })
        .buffer_unordered(CONCURRENCY);
    let load = tokio::time::timeout(LOAD_LIMIT, async {
        tokio::pin!(load);
        while let Some(res) = load.next().await {
            let res = res?;
            *by_status.entry(res.status().as_u16()).or_default() += 1;
            let status = res.status();
            let refused =
                status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::GATEWAY_TIMEOUT;
            if refused && !samples.contains_key(&status.as_u16()) {
                samples.insert(status.as_u16(), wire_format(res).await?);
            }
        }
        Ok::<_, BoxError>(())
    });
    match load.await {
        Ok(result) => result?,
        Err(_) => println!("load stopped after {LOAD_LIMIT:?}"),
    }

    println!("\nresponses by status:");
    for (status, count) in &by_status {
        println!("  {status}: {count}");
    }
    for sample in samples.values() {
        println!("\none refused request, as the client saw it:\n{sample}");
    }
    println!(
        "\nRED metrics, Prometheus text format (series still at zero left out; --buckets adds the histogram buckets):"
    );
    for line in prometheus.render().lines() {
        let ours = line.contains("http_server_") || line.contains("resilience_");
        let zero = line.ends_with(" 0");
        if ours && !zero && (buckets_too || !line.contains("_bucket{")) {
            println!("{line}");
        }
    }
    Ok(())
}

fn app() -> Result<Router, BoxError> {
    // The caller's budget (`x-request-timeout-ms` or `grpc-timeout`), capped at one second.
    let deadline = InboundDeadlineLayer::builder()
        .name("api")
        .cap(Duration::from_secs(1))
        .http_status()
        .build()?;
    // At most 12 calls at once, of which at most 3 may be `/orders` calls.
    let bulkhead = BulkheadLayer::builder()
        .name("api")
        .max_concurrent(12)
        .partition(Partition::new("orders", 3))
        .partition_by(|req: &http::Request<axum::body::Body>| {
            req.uri().path().starts_with("/orders").then_some("orders")
        })
        // The breaker's classifier: one verdict for the whole stack.
        .classifier(HttpStatus::new())
        .build()?;
    // Opens when half of the last 50 calls failed (5xx), once 20 are in.
    let breaker = BreakerLayer::builder()
        .name("backend")
        .count_window(50)
        .minimum_calls(20)
        .failure_rate_threshold(0.5)
        .open_time(Duration::from_secs(5))
        .http_status()
        .build()?;
    Ok(Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .route("/orders/{id}", get(order))
        .route("/slow", get(slow))
        .layer(
            ServiceBuilder::new()
                .layer(RedLayer::server())
                .layer(ProblemLayer::new())
                .layer(deadline)
                .layer(bulkhead)
                .layer(breaker),
        ))
}

/// A handler slower than the budget the load gives it: cut at the deadline (504).
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(300)).await;
    "finally\n"
}

/// The backend: orders whose id is a multiple of 5 fail, as a broken dependency would.
async fn order(Path(id): Path<u64>) -> Result<String, StatusCode> {
    tokio::time::sleep(Duration::from_millis(2 + id % 7)).await;
    if id.is_multiple_of(5) {
        return Err(StatusCode::INTERNAL_SERVER_ERROR);
    }
    Ok(format!("order {id}\n"))
}

async fn wire_format(res: reqwest::Response) -> Result<String, BoxError> {
    let mut out = format!("  {:?} {}\n", res.version(), res.status());
    for (name, value) in res.headers() {
        out.push_str(&format!(
            "  {name}: {}\n",
            value.to_str().unwrap_or("<binary>")
        ));
    }
    out.push_str(&format!("\n  {}", res.text().await?));
    Ok(out)
}
