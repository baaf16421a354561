//! A slow endpoint and a fast one behind one bulkhead, the slow one flooded: three setups, each
//! measured over the same window: the default (a limit that refuses at once when full), the
//! same limit with a queue, and the slow endpoint in its own partition. Prints the first
//! refusal as a caller receives it, then each endpoint's rates and the fast one's latency side
//! by side.
//!
//! ```text
//! cargo run -p examples --bin bulkhead
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
/// Clients calling the fast endpoint in a loop.
const FAST_CLIENTS: usize = 4;
const LIMIT: usize = 8;
const SLOW_PARTITION: usize = 6;
/// What every client waits after a refusal before calling again.
const BACK_OFF: Duration = Duration::from_millis(10);
/// Let the flood fill the bulkhead before measuring.
const WARM_UP: Duration = Duration::from_millis(300);
/// Every setup is measured over this same window.
const WINDOW: Duration = Duration::from_secs(2);

/// What one endpoint's clients saw of the calls that ended in the window.
#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    refused: usize,
}

struct Run {
    fast: Seen,
    slow: Seen,
}

/// The first refusal any client received, as text.
static FIRST_REFUSAL: OnceLock<String> = OnceLock::new();

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    println!(
        "{SLOW_CLIENTS} clients loop on GET /slow ({} ms of work), {FAST_CLIENTS} on GET /fast; \
         a refused client waits {} ms before calling again",
        SLOW_WORK.as_millis(),
        BACK_OFF.as_millis()
    );
    println!(
        "each setup: {} ms for the flood to fill the bulkhead, then {} ms measured\n",
        WARM_UP.as_millis(),
        WINDOW.as_millis()
    );

    let default = BulkheadLayer::builder()
        .name("api")
        .max_concurrent(LIMIT)
        .build()?;
    let queued = BulkheadLayer::builder()
        .name("api")
        .max_concurrent(LIMIT)
        .queue(256, Duration::from_secs(2))
        .build()?;
    let partitioned = BulkheadLayer::builder()
        .name("api")
        .max_concurrent(LIMIT)
        .queue(256, Duration::from_secs(2))
        .partition(Partition::new("slow", SLOW_PARTITION).queue(64, Duration::from_secs(2)))
        .partition_by(|req: &http::Request<Body>| (req.uri().path() == "/slow").then_some("slow"))
        .build()?;

    println!("1. the default: at most {LIMIT} calls at once, the rest refused at once");
    let handle = default.handle();
    let a = run(app(default), handle).await?;
    if let Some(refusal) = FIRST_REFUSAL.get() {
        println!("   a refusal, as the caller received it:\n{refusal}");
    }
    println!("2. the same limit of {LIMIT} with a queue (256 calls, 2 s each at most)");
    let handle = queued.handle();
    let b = run(app(queued), handle).await?;
    println!(
        "3. /slow in its own partition of {SLOW_PARTITION} (queue 64), /fast in the default \
         partition of {LIMIT}"
    );
    let handle = partitioned.handle();
    let c = run(app(partitioned), handle).await?;

    let per_s = |n: usize| format!("{:.0}/s", n as f64 / WINDOW.as_secs_f64());
    let ms =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
    println!("\nover the same {} ms window each:", WINDOW.as_millis());
    println!(
        "{:<22} {:>16} {:>16} {:>16}",
        "", "1. default", "2. queue", "3. partitioned"
    );
    let row = |label: &str, f: &dyn Fn(&Run) -> String| {
        println!("{label:<22} {:>16} {:>16} {:>16}", f(&a), f(&b), f(&c));
    };
    row("/fast answered (200)", &|r| per_s(r.fast.latencies.len()));
    row("/fast refused (503)", &|r| per_s(r.fast.refused));
    row("/fast p50", &|r| ms(percentile(&r.fast, 0.50)));
    row("/fast p99", &|r| ms(percentile(&r.fast, 0.99)));
    row("/slow answered (200)", &|r| per_s(r.slow.latencies.len()));
    row("/slow refused (503)", &|r| per_s(r.slow.refused));
    println!(
        "\n1. the default keeps /fast quick but refuses most of it: a /fast call must win one of \
         the {LIMIT} slots from the flood.\n\
         2. a queue refuses nothing, but /fast waits behind every queued /slow call.\n\
         3. a partition gives /fast slots of its own: quick and never refused; /slow keeps its \
         {SLOW_PARTITION}."
    );
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
                // Refusals become HTTP answers: 503, problem+json.
                .layer(ProblemLayer::new())
                .layer(bulkhead),
        )
}

/// One client's loop: calls `url` until `stop`, adding to `seen` the calls that ended in the
/// window (from `measured_from` until `stop`).
async fn client_loop(
    client: reqwest::Client,
    url: String,
    stop: Arc<AtomicBool>,
    measured_from: Instant,
    seen: Arc<Mutex<Seen>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let answered = match client.get(&url).send().await {
            Ok(res) if res.status().is_success() => true,
            Ok(res) => {
                if FIRST_REFUSAL.get().is_none() {
                    let _ = FIRST_REFUSAL.set(show_response(res).await);
                }
                false
            }
            Err(_) => false,
        };
        if Instant::now() >= measured_from && !stop.load(Ordering::Relaxed) {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            if answered {
                seen.latencies.push(started.elapsed());
            } else {
                seen.refused += 1;
            }
        }
        if !answered {
            tokio::time::sleep(BACK_OFF).await;
        }
    }
}

async fn run(app: Router, handle: BulkheadHandle) -> Result<Run, BoxError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let measured_from = Instant::now() + WARM_UP;
    let (fast, slow) = (Arc::default(), Arc::default());
    let spawn = |path: &str, n: usize, seen: &Arc<Mutex<Seen>>| -> Vec<_> {
        (0..n)
            .map(|_| {
                let url = format!("http://{addr}{path}");
                let (client, stop, seen) = (client.clone(), stop.clone(), seen.clone());
                tokio::spawn(client_loop(client, url, stop, measured_from, seen))
            })
            .collect()
    };
    let mut tasks = spawn("/slow", SLOW_CLIENTS, &slow);
    tokio::time::sleep(WARM_UP).await;
    tasks.extend(spawn("/fast", FAST_CLIENTS, &fast));
    tokio::time::sleep(WINDOW / 2).await;
    let stats: Vec<String> = handle
        .stats()
        .iter()
        .map(|s| {
            format!(
                "partition {}: {} of {} in flight, {} queued",
                s.name, s.in_flight, s.limit, s.queued
            )
        })
        .collect();
    println!("   mid-window: {}", stats.join("; "));
    tokio::time::sleep(WINDOW / 2).await;
    // Calls still running or queued when the window ends are not counted.
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    server.abort();
    let take = |seen: Arc<Mutex<Seen>>| {
        std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()))
    };
    let mut run = Run {
        fast: take(fast),
        slow: take(slow),
    };
    run.fast.latencies.sort();
    Ok(run)
}

/// A response as an HTTP/1.1 status line, headers (but the date) and body, indented.
async fn show_response(res: reqwest::Response) -> String {
    let mut shown = format!("     HTTP/1.1 {}\n", res.status());
    for (name, value) in res.headers() {
        if name != http::header::DATE {
            let value = value.to_str().unwrap_or("(not text)");
            shown.push_str(&format!("     {name}: {value}\n"));
        }
    }
    shown.push_str(&format!(
        "\n     {}\n",
        res.text().await.unwrap_or_default()
    ));
    shown
}

fn percentile(seen: &Seen, q: f64) -> Option<Duration> {
    let n = seen.latencies.len();
    if n == 0 {
        return None;
    }
    let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
    Some(seen.latencies[i])
}
