//! The circuit breaker in a gateway in front of a real failing backend: two axum servers on
//! loopback, the backend failing for a while and then healing, the gateway's `GET /stock` route
//! behind `ProblemLayer` and `tower-breaker`, and callers using plain reqwest. Prints the
//! breaker's configuration, its state timeline as it happens, one refusal exactly as a caller
//! receives it, and how many failing calls the backend was spared.
//!
//! ```text
//! cargo run -p examples --bin breaker
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State as AxumState;
use axum::routing::get;
use http::StatusCode;
use tower::ServiceBuilder;
use tower_breaker::{BreakerLayer, OpenTime, Reason, Transition};
use tower_red::BoxError;
use tower_red::problem::{PROBLEM_JSON, ProblemLayer};

/// How long the backend fails before it heals.
const OUTAGE: Duration = Duration::from_millis(1_500);
/// How long the load runs.
const LOAD: Duration = Duration::from_millis(3_500);
const CALLERS: usize = 4;
const PAUSE: Duration = Duration::from_millis(5);

const WINDOW: u32 = 20;
const MINIMUM_CALLS: u32 = 10;
const FAILURE_RATE: f64 = 0.5;
const IN_A_ROW: u32 = 5;
const OPEN_FIRST: Duration = Duration::from_millis(200);
const OPEN_MAX: Duration = Duration::from_secs(1);
const JITTER: f64 = 0.2;
const PROBES: u32 = 3;

#[derive(Default)]
struct Backend {
    healthy: AtomicBool,
    served: AtomicU64,
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Refused while the backend was down: calls that would have failed there.
    refused_down: AtomicU64,
    /// Refused after it had healed, before the probes showed it.
    refused_healed: AtomicU64,
    /// The first refusal as the caller received it.
    first_refusal: Mutex<Option<String>>,
}

#[derive(Clone)]
struct Gateway {
    client: reqwest::Client,
    backend: String,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The recorder goes in first: the breaker registers its handles when it is built.
    let prometheus = tower_red::prometheus::install()?;

    let backend = Arc::new(Backend::default());
    let app = Router::new()
        .route("/stock", get(stock))
        .with_state(backend.clone());
    let backend_addr = serve(app).await?;

    let start = Instant::now();
    let healed_at = Arc::new(Mutex::new(None::<Duration>));
    let breaker = BreakerLayer::builder()
        .name("stock")
        .count_window(WINDOW)
        .minimum_calls(MINIMUM_CALLS)
        .failure_rate_threshold(FAILURE_RATE)
        .consecutive_failures(IN_A_ROW)
        .open_time(OpenTime::exponential(OPEN_FIRST, OPEN_MAX).jitter(JITTER))
        .permitted_probes(PROBES)
        .on_transition(move |t| timeline(start, t))
        .http_status()
        .build()?;
    let handle = breaker.handle();
    let gateway = Router::new()
        .route("/stock", get(proxy))
        // ProblemLayer answers the breaker's refusals as HTTP: 503, Retry-After, problem+json.
        .route_layer(
            ServiceBuilder::new()
                .layer(ProblemLayer::new())
                .layer(breaker),
        )
        .with_state(Gateway {
            client: reqwest::Client::new(),
            backend: format!("http://{backend_addr}/stock"),
        });
    let gateway_addr = serve(gateway).await?;

    println!(
        "caller -> gateway http://{gateway_addr}/stock -> backend http://{backend_addr}/stock"
    );
    println!(
        "the backend answers 500 for the first {} ms, then 200\n",
        OUTAGE.as_millis()
    );
    println!("breaker \"stock\" on the gateway's route:");
    println!(
        "  a failure    a 5xx response (the http_status classifier)\n  \
         trips when   {IN_A_ROW} calls fail in a row, or {:.0}% of the last {WINDOW} calls fail \
         (judged once {MINIMUM_CALLS} are in)\n  \
         stays open   {} ms, doubled on each re-open up to {} ms, up to {:.0}% less at random; \
         every call is refused meanwhile\n  \
         then         half-open: {PROBES} probe calls go through; it closes if fewer than {:.0}% \
         of them fail, else re-opens",
        FAILURE_RATE * 100.0,
        OPEN_FIRST.as_millis(),
        OPEN_MAX.as_millis(),
        JITTER * 100.0,
        FAILURE_RATE * 100.0,
    );
    println!(
        "\nload: {CALLERS} callers, each one GET every {} ms for {} ms\n",
        PAUSE.as_millis(),
        LOAD.as_millis()
    );
    println!(
        "state timeline (an open breaker refuses every call for its open time, then lets {PROBES} \
         probes through):"
    );
    println!("  {:>5} ms  closed", 0);

    let tally = Arc::new(Tally::default());
    let url = format!("http://{gateway_addr}/stock");
    let client = reqwest::Client::new();
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (client, url) = (client.clone(), url.clone());
        let (tally, backend) = (tally.clone(), backend.clone());
        callers.push(tokio::spawn(async move {
            while start.elapsed() < LOAD {
                let sent = Instant::now();
                let res = client.get(&url).send().await?;
                let took = sent.elapsed();
                let status = res.status();
                let refused = res
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v == PROBLEM_JSON);
                if status.is_success() {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                } else if !refused {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                } else {
                    let healthy = backend.healthy.load(Ordering::Relaxed);
                    let count = if healthy {
                        &tally.refused_healed
                    } else {
                        &tally.refused_down
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    let first = tally.first_refusal.lock().map(|f| f.is_none());
                    if first.unwrap_or(false) {
                        let shown = format!(
                            "{}\n  (answered in {:.2} ms, without a call to the backend)",
                            show_response(res).await,
                            took.as_secs_f64() * 1e3
                        );
                        if let Ok(mut first) = tally.first_refusal.lock() {
                            first.get_or_insert(shown);
                        }
                    }
                }
                tokio::time::sleep(PAUSE).await;
            }
            Ok::<_, BoxError>(())
        }));
    }
    tokio::time::sleep(OUTAGE).await;
    backend.healthy.store(true, Ordering::Relaxed);
    *healed_at.lock().map_err(|_| "poisoned")? = Some(start.elapsed());
    println!(
        "  {:>5} ms  (the backend heals; the breaker learns it from its next probes)",
        start.elapsed().as_millis()
    );
    for c in callers {
        c.await??;
    }

    let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let (ok, failed) = (load(&tally.ok), load(&tally.failed));
    let (down, healed) = (load(&tally.refused_down), load(&tally.refused_healed));
    if let Ok(first) = tally.first_refusal.lock()
        && let Some(shown) = first.as_ref()
    {
        println!("\none refusal, as the caller received it:");
        println!("{shown}");
    }
    println!("\nfinal state: {}", handle.state());
    println!(
        "the callers made {} calls: {ok} answered 200, {failed} got the backend's 500, {} were \
         refused by the breaker",
        ok + failed + down + healed,
        down + healed
    );
    println!(
        "the backend received {} calls: the breaker spared it {down} calls during the outage, \
         every one of which would have failed",
        load(&backend.served)
    );
    println!(
        "the price: {healed} calls refused after the backend had healed, until the open time ran \
         out and the probes succeeded"
    );
    println!("\nits metrics (Prometheus; GET /metrics would serve these):");
    for line in prometheus.render().lines() {
        let ours = line.starts_with("resilience_requests_total")
            || line.starts_with("resilience_breaker_transitions_total");
        if ours && !line.ends_with(" 0") {
            println!("  {line}");
        }
    }
    Ok(())
}

/// One line of the timeline, printed by the breaker's `on_transition` hook.
fn timeline(start: Instant, t: &Transition) {
    let rate = t
        .failure_rate
        .map(|r| format!(" ({:.0}% failed)", r * 100.0))
        .unwrap_or_default();
    let why = match t.reason {
        Reason::ConsecutiveFailures => format!("{IN_A_ROW} failures in a row"),
        Reason::FailureRate => format!(
            "failure rate at or above {:.0}%{rate}",
            FAILURE_RATE * 100.0
        ),
        Reason::OpenTimeElapsed => format!("open time over: the next {PROBES} calls are probes"),
        Reason::ProbesFailed => format!("the probes failed{rate}"),
        Reason::ProbesSucceeded => format!("the probes succeeded{rate}"),
        other => other.as_str().to_owned(),
    };
    let open_for = t
        .open_for
        .map(|d| format!("; refusing every call for {} ms", d.as_millis()))
        .unwrap_or_default();
    println!(
        "  {:>5} ms  {:<9} -> {:<9}  {why}{open_for}",
        start.elapsed().as_millis(),
        t.from.to_string(),
        t.to.to_string(),
    );
}

/// A response as an HTTP/1.1 status line, headers (but the date) and body.
async fn show_response(res: reqwest::Response) -> String {
    let mut shown = format!("  HTTP/1.1 {}\n", res.status());
    for (name, value) in res.headers() {
        if name != http::header::DATE {
            let value = value.to_str().unwrap_or("(not text)");
            shown.push_str(&format!("  {name}: {value}\n"));
        }
    }
    let body = res.text().await.unwrap_or_default();
    shown.push_str(&format!("\n  {body}"));
    shown
}

async fn serve(app: Router) -> Result<std::net::SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// The gateway's handler: passes the backend's answer on.
async fn proxy(AxumState(gateway): AxumState<Gateway>) -> (StatusCode, String) {
    match gateway.client.get(&gateway.backend).send().await {
        Ok(res) => (res.status(), res.text().await.unwrap_or_default()),
        Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()),
    }
}

async fn stock(AxumState(backend): AxumState<Arc<Backend>>) -> (StatusCode, &'static str) {
    backend.served.fetch_add(1, Ordering::Relaxed);
    if backend.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "42 in stock\n")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "database unreachable\n")
    }
}
