//! A slow endpoint and a fast one behind one bulkhead, flooded with slow calls: run once with a
//! single limit for both, and once with the slow endpoint in its own partition. Prints the fast
//! endpoint's p50 and p99 side by side.
//!
//! ```text
//! cargo run -p examples --bin bulkhead
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use tower::ServiceBuilder;
use tower_bulkhead::{BulkheadHandle, BulkheadLayer, Partition};
use tower_red::BoxError;
use tower_red::problem::ProblemLayer;

/// How long the slow endpoint works.
const SLOW_WORK: Duration = Duration::from_millis(100);
/// Clients calling the slow endpoint in a loop: three times the limit.
const SLOW_CLIENTS: usize = 24;
/// Clients calling the fast endpoint, and how many calls they make in all.
const FAST_CLIENTS: usize = 4;
const FAST_CALLS: usize = 100;
/// No run lasts longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(12);

struct Run {
    fast_latencies: Vec<Duration>,
    fast_refused: usize,
    slow_done: usize,
    slow_refused: usize,
    elapsed: Duration,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let shared = BulkheadLayer::builder()
        .name("shared")
        .max_concurrent(8)
        .queue(256, Duration::from_secs(2))
        .build()?;
    let partitioned = BulkheadLayer::builder()
        .name("partitioned")
        .max_concurrent(8)
        .queue(256, Duration::from_secs(2))
        .partition(Partition::new("slow", 6).queue(64, Duration::from_secs(2)))
        .partition_by(|req: &http::Request<Body>| (req.uri().path() == "/slow").then_some("slow"))
        .build()?;

    println!(
        "{SLOW_CLIENTS} clients loop on /slow ({} ms of work), {FAST_CLIENTS} clients make {FAST_CALLS} calls to /fast",
        SLOW_WORK.as_millis()
    );
    println!("one limit of 8 with a queue, then /slow in its own partition of 6\n");
    let handle = shared.handle();
    let without = run(app(shared), handle).await?;
    let handle = partitioned.handle();
    let with = run(app(partitioned), handle).await?;

    println!();
    println!("{:<28} {:>16} {:>16}", "", "one limit", "partitioned");
    let row = |label: &str, a: String, b: String| println!("{label:<28} {a:>16} {b:>16}");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    row(
        "/fast p50",
        ms(percentile(&without, 0.50)),
        ms(percentile(&with, 0.50)),
    );
    row(
        "/fast p99",
        ms(percentile(&without, 0.99)),
        ms(percentile(&with, 0.99)),
    );
    row(
        "/fast answered / refused",
        format!(
            "{} / {}",
            without.fast_latencies.len(),
            without.fast_refused
        ),
        format!("{} / {}", with.fast_latencies.len(), with.fast_refused),
    );
    row(
        "/slow answered / refused",
        format!("{} / {}", without.slow_done, without.slow_refused),
        format!("{} / {}", with.slow_done, with.slow_refused),
    );
    row("run time", ms(without.elapsed), ms(with.elapsed));
    Ok(())
}

fn app<P, H>(bulkhead: BulkheadLayer<P, H>) -> Router
where
    BulkheadLayer<P, H>: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
    <BulkheadLayer<P, H> as tower::Layer<axum::routing::Route>>::Service: tower::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(SLOW_WORK).await;
                "slow"
            }),
        )
        .route("/fast", get(|| async { "fast" }))
        .layer(
            ServiceBuilder::new()
                .layer(ProblemLayer::new())
                .layer(bulkhead),
        )
}

async fn run(app: Router, handle: BulkheadHandle) -> Result<Run, BoxError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let slow_done = Arc::new(AtomicUsize::new(0));
    let slow_refused = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();

    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            let (done, refused) = (slow_done.clone(), slow_refused.clone());
            let url = format!("http://{addr}/slow");
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) && started.elapsed() < RUN_LIMIT {
                    match client.get(&url).send().await {
                        Ok(res) if res.status().is_success() => {
                            done.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    // Let the flood fill the bulkhead before measuring.
    tokio::time::sleep(SLOW_WORK * 3).await;
    println!(
        "{}: {:?}",
        handle.name(),
        handle
            .stats()
            .iter()
            .map(|s| format!("{} in flight {}, queued {}", s.name, s.in_flight, s.queued))
            .collect::<Vec<_>>()
    );

    let next = Arc::new(AtomicUsize::new(0));
    let fast: Vec<_> = (0..FAST_CLIENTS)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            let url = format!("http://{addr}/fast");
            tokio::spawn(async move {
                let (mut latencies, mut refused) = (Vec::new(), 0);
                while next.fetch_add(1, Ordering::Relaxed) < FAST_CALLS
                    && started.elapsed() < RUN_LIMIT
                {
                    let t = Instant::now();
                    match client.get(&url).send().await {
                        Ok(res) if res.status().is_success() => latencies.push(t.elapsed()),
                        _ => refused += 1,
                    }
                }
                (latencies, refused)
            })
        })
        .collect();
    let mut run = Run {
        fast_latencies: Vec::new(),
        fast_refused: 0,
        slow_done: 0,
        slow_refused: 0,
        elapsed: Duration::ZERO,
    };
    for task in fast {
        let (latencies, refused) = task.await?;
        run.fast_latencies.extend(latencies);
        run.fast_refused += refused;
    }
    run.elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in slow {
        task.await?;
    }
    run.slow_done = slow_done.load(Ordering::Relaxed);
    run.slow_refused = slow_refused.load(Ordering::Relaxed);
    server.abort();
    run.fast_latencies.sort();
    Ok(run)
}

fn percentile(run: &Run, q: f64) -> Duration {
    let n = run.fast_latencies.len();
    if n == 0 {
        return Duration::ZERO;
    }
    let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
    run.fast_latencies[i]
}
