//! The main demo: a gateway in front of a backend that fails on purpose, driven through six
//! phases of bounded loopback load (steady, errors, latency spikes, outage, recovery, a slow
//! dependency), once with the layers and once without, with a live view and a closing
//! side-by-side table.
//!
//! ```text
//! cargo run -p examples --bin demo                               # ~35 s, in-memory store
//! cargo run -p examples --bin demo -- --serve                    # then stay up for curl and Prometheus
//! cargo run -p examples --bin demo -- --redis redis://127.0.0.1:6379   # idempotency keys in Redis
//! ```
//!
//! - **backend** (axum, `127.0.0.1:0`): `/items/{id}`, `/reports/{id}` and `POST /orders`
//!   (a side effect per order, counted), sharing a pool of 8 connections. Its fault changes
//!   with the phase.
//! - **gateway** (axum, `127.0.0.1:0`): the same routes, forwarded with reqwest. With the
//!   layers, built by `tower_idempotency::stack`: a `ClientStack` per dependency (RED,
//!   idempotency key, total budget, retry with attempt timeout and budget, breaker, bulkhead,
//!   outbound deadline; `reports`, the slow dependency, gets a bulkhead of 2) and a
//!   `ServerStack` around its routes (RED, a stale-on-error fallback for `/items/{id}`,
//!   problem+json, inbound deadline, idempotency keys, bulkhead, breaker), plus `/ready` from
//!   `tower_red::readiness`. Without, plain reqwest and nothing else.
//! - **callers**: 120 requests a second, 300 per phase; every 10th is an order POST with an
//!   `Idempotency-Key` over a link that loses some responses after the gateway answered, and
//!   its caller sends it again.
//!
//! `/metrics` (Prometheus text, installed with `tower_red::prometheus::install()`) is served
//! on a separate loopback listener while the demo runs.

#[path = "../demo/backend.rs"]
mod backend;
#[path = "../demo/gateway.rs"]
mod gateway;
#[path = "../demo/load.rs"]
mod load;
#[path = "../demo/view.rs"]
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use tower_idempotency::store::{MemoryStore, Store};
use tower_red::BoxError;
use tower_red::prometheus::PrometheusHandle;

use crate::load::{Kind, PHASES, Snapshot, Stats};

const USAGE: &str = "usage: demo [--serve] [--redis redis://127.0.0.1:6379]
  --serve        keep the gateway, /ready and /metrics up after the run (Ctrl-C to stop)
  --redis URL    keep idempotency keys in Redis instead of memory";

/// The command line.
struct Args {
    serve: bool,
    redis: Option<String>,
}

fn args() -> Result<Args, BoxError> {
    let mut parsed = Args {
        serve: false,
        redis: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--serve" => parsed.serve = true,
            "--redis" => parsed.redis = Some(args.next().ok_or("--redis needs a URL")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}; {USAGE}").into()),
        }
    }
    Ok(parsed)
}

/// What one run left behind, for the table.
struct Outcome {
    stats: Snapshot,
    backend: backend::BackendCounts,
    elapsed: Duration,
}

/// Serves `/metrics` on its own loopback listener.
async fn serve_metrics(prometheus: PrometheusHandle) -> Result<SocketAddr, BoxError> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let prometheus = prometheus.clone();
            async move { prometheus.render() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// Drives the load into `gateway` with the live view on, and collects the result.
async fn run(
    number: usize,
    label: &'static str,
    gateway: SocketAddr,
    backend: Arc<backend::Backend>,
    handles: Option<gateway::Handles>,
) -> Outcome {
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let view = tokio::spawn(view::show(
        view::Run {
            label,
            number,
            stats: stats.clone(),
            backend: backend.clone(),
            handles,
            started,
        },
        stop.clone(),
    ));
    load::drive(gateway, &backend, stats.clone(), number as u64).await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = view.await;
    Outcome {
        stats: stats.snapshot(),
        backend: backend.counts(),
        elapsed,
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// At most five characters: `12ms`, `1.6s`.
fn short(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The closing table: the run without the layers next to the run with them.
fn table(without: &Outcome, with: &Outcome) {
    type Cell = fn(&Outcome) -> String;
    let row = |label: &str, cell: Cell| {
        println!("{label:<44} {:>16} {:>16}", cell(without), cell(with));
    };
    println!();
    println!(
        "{:<44} {:>16} {:>16}",
        "", "without layers", "with the layers"
    );
    row("requests", |o| o.stats.sent.to_string());
    row("successes", |o| o.stats.count(Kind::Ok).to_string());
    row("  of which stale answers (fallback)", |o| {
        o.stats.fallbacks.to_string()
    });
    row("errors", |o| o.stats.errors().to_string());
    for kind in Kind::ALL.iter().skip(1) {
        let (a, b) = (without.stats.count(*kind), with.stats.count(*kind));
        if a + b > 0 {
            println!("{:<44} {a:>16} {b:>16}", format!("  {}", kind.label()));
        }
    }
    row("p50 latency", |o| ms(o.stats.p50));
    row("p99 latency", |o| ms(o.stats.p99));
    row("calls that reached the backend", |o| {
        o.backend.calls.to_string()
    });
    row("  of which the gateway's retries", |o| {
        o.backend.retries.to_string()
    });
    row("orders placed (side effects)", |o| {
        o.backend.side_effects.to_string()
    });
    row("duplicate side effects", |o| {
        o.backend.duplicates.to_string()
    });
    row("order responses lost on the link", |o| {
        o.stats.lost.to_string()
    });
    row("order POSTs re-sent by callers", |o| {
        o.stats.caller_retries.to_string()
    });
    row("idempotent replays", |o| o.stats.replays.to_string());
    println!("by phase: successes of {}, p50/p99", load::PER_PHASE);
    for (i, phase) in PHASES.iter().enumerate() {
        let cell = |o: &Outcome| {
            format!(
                "{} {}/{}",
                o.stats.ok_by_phase[i],
                short(o.stats.p50_by_phase[i]),
                short(o.stats.p99_by_phase[i])
            )
        };
        println!(
            "{:<44} {:>16} {:>16}",
            format!("  {} {}", i + 1, phase.name),
            cell(without),
            cell(with)
        );
    }
    row("time", |o| format!("{:.1} s", o.elapsed.as_secs_f64()));
}

async fn demo<St: Store + Clone>(
    args: &Args,
    store: St,
    store_name: String,
) -> Result<(), BoxError> {
    let prometheus = tower_red::prometheus::install()?;
    let metrics = serve_metrics(prometheus).await?;
    // Keys of an earlier run (in Redis) must not replay into this one.
    let prefix = format!(
        "demo-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let (backend_addr, backend) = backend::start().await?;
    let (gateway_addr, handles) = gateway::start_layered(backend_addr, store, prefix).await?;
    println!("tower resilience kit demo: a gateway in front of a backend that fails on purpose");
    println!(
        "  {} requests per run at {}/s in {} phases; order POSTs carry an Idempotency-Key over a link that drops some responses",
        load::TOTAL,
        load::RATE,
        PHASES.len()
    );
    println!("  idempotency store: {store_name}");
    println!(
        "  metrics: http://{metrics}/metrics   gateway: http://{gateway_addr} (/ready)   backend: http://{backend_addr}"
    );
    println!();

    let with = run(
        1,
        "with the layers",
        gateway_addr,
        backend.clone(),
        Some(handles.clone()),
    )
    .await;
    println!();
    let (bare_backend_addr, bare_backend) = backend::start().await?;
    let bare = gateway::start_bare(bare_backend_addr).await?;
    let without = run(2, "without the layers", bare, bare_backend, None).await;
    table(&without, &with);
    println!(
        "\nwith the layers: {}/{} succeeded ({} without), {} backend calls ({}), {} duplicate side effects ({})",
        with.stats.count(Kind::Ok),
        with.stats.sent,
        without.stats.count(Kind::Ok),
        with.backend.calls,
        without.backend.calls,
        with.backend.duplicates,
        without.backend.duplicates
    );

    if args.serve {
        println!("\nserving (Ctrl-C to stop); the backend is healthy now:");
        println!("  curl -i http://{gateway_addr}/items/7");
        println!("  curl -i http://{gateway_addr}/reports/7");
        println!(
            "  curl -i -X POST -H 'idempotency-key: k1' -H 'x-order: 1000' -d '{{}}' http://{gateway_addr}/orders   # twice: the second is replayed"
        );
        println!(
            "  curl -i http://{gateway_addr}/ready   # 200, or 503 while the backend's circuit is open"
        );
        println!("  curl -s http://{metrics}/metrics | grep resilience_");
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match start().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn start() -> Result<(), BoxError> {
    let args = args()?;
    match &args.redis {
        None => demo(&args, MemoryStore::new(), "in memory".to_owned()).await,
        Some(url) => {
            let store = tower_idempotency::store::redis::RedisStore::connect(url)
                .await
                .map_err(|err| format!("cannot reach Redis at {url}: {err}"))?;
            demo(&args, store, format!("Redis at {url}")).await
        }
    }
}
