//! Marc Brooker's "Exponential Backoff And Jitter" experiment (AWS Architecture Blog, 2015),
//! reproduced through `tower-retry-jitter`: clients that each update one row under optimistic
//! concurrency control (read the version, write if it is unchanged, back off and start again if
//! not), over a network whose one-way delay is |N(10 ms, 2 ms)|, base 5 ms, cap 2 s. One run
//! per jitter mode (None, Full, Equal, Decorrelated, and gRPC A6's multiplicative jitter),
//! averaged over many runs, next to the figures the post's simulator published; and an SVG
//! plot of calls over time per mode.
//!
//! ```text
//! cargo run --release -p examples --bin retry_storm               # 100 clients, 100 runs
//! cargo run --release -p examples --bin retry_storm -- 100 20 out.svg  # clients, runs, plot
//! ```
//!
//! The plot goes to `retry_storm.svg` in the temporary directory unless a path is given.
//!
//! Each client is a real retry service wrapping its OCC attempt, on tokio's paused clock: the
//! runtime jumps from timer to timer, so minutes of contention take a fraction of a second.
//! Tokio's timers tick in whole milliseconds, far too coarse for 10 ms network hops; so the
//! experiment runs 1,000 times slower (one experiment millisecond is one tokio second) and
//! the timer grain is one experiment microsecond. Figures are printed in experiment time.
//!
//! The post's simulator counts a client's first exponential sleep as `base · 2¹`, so the
//! exponential modes here start from 10 ms, as there; Decorrelated starts from `base` = 5 ms,
//! as there.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use plotters::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_retry_jitter::{Jitter, RetryLayer};

/// One experiment millisecond, in tokio time (see the module docs).
const MS: Duration = Duration::from_secs(1);
const NET_MEAN_MS: f64 = 10.0;
const NET_SD_MS: f64 = 2.0;
const BASE: Duration = Duration::from_secs(5); // 5 ms
const CAP: Duration = Duration::from_secs(2_000); // 2 s

/// A jitter mode, its first delay, and what the post's simulator published for it
/// (100 clients, 100 runs): total calls and completion time in seconds.
struct Mode {
    name: &'static str,
    jitter: Jitter,
    base: Duration,
    published: Option<(u32, f64)>,
    colour: RGBColor,
}

const MODES: [Mode; 5] = [
    Mode {
        name: "None",
        jitter: Jitter::None,
        base: Duration::from_secs(10),
        published: Some((1_857, 63.3)),
        colour: RGBColor(214, 39, 40),
    },
    Mode {
        name: "Full",
        jitter: Jitter::Full,
        base: Duration::from_secs(10),
        published: Some((794, 4.9)),
        colour: RGBColor(44, 160, 44),
    },
    Mode {
        name: "Equal",
        jitter: Jitter::Equal,
        base: Duration::from_secs(10),
        published: Some((812, 6.5)),
        colour: RGBColor(31, 119, 180),
    },
    Mode {
        name: "Decorrelated",
        jitter: Jitter::Decorrelated,
        base: BASE,
        published: Some((1_003, 4.4)),
        colour: RGBColor(255, 127, 14),
    },
    Mode {
        name: "gRPC A6",
        jitter: Jitter::Grpc,
        base: Duration::from_secs(10),
        published: None,
        colour: RGBColor(148, 103, 189),
    },
];

/// The row: one version, written under optimistic concurrency. Every write is a call.
#[derive(Default)]
struct Row {
    version: AtomicU64,
    calls: AtomicU64,
    /// When each write arrived, in experiment milliseconds, for the plot.
    log: Mutex<Vec<f64>>,
}

/// Another client wrote the row between this client's read and write.
#[derive(Debug)]
struct Conflict;

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("version conflict")
    }
}

impl std::error::Error for Conflict {}

/// |N(mean, sd)| milliseconds, by Box-Muller (as the simulator's `abs(normalvariate)`).
fn net_delay(rng: &mut SmallRng) -> Duration {
    let (u1, u2): (f64, f64) = (rng.random(), rng.random());
    let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    MS.mul_f64((NET_MEAN_MS + NET_SD_MS * z).abs())
}

/// One attempt: read the version, write it back incremented if nobody else did.
async fn attempt(row: Arc<Row>, start: Instant, rng: Arc<Mutex<SmallRng>>) -> Result<(), Conflict> {
    let hop = || net_delay(&mut rng.lock().expect("not poisoned"));
    tokio::time::sleep(hop()).await; // the read travels to the row
    let seen = row.version.load(Ordering::SeqCst);
    tokio::time::sleep(hop() + hop()).await; // the version comes back, the write goes out
    row.calls.fetch_add(1, Ordering::SeqCst);
    let at = start.elapsed().as_secs_f64(); // tokio seconds are experiment milliseconds
    row.log.lock().expect("not poisoned").push(at);
    let won = row
        .version
        .compare_exchange(seen, seen + 1, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    tokio::time::sleep(hop()).await; // the answer comes back
    if won { Ok(()) } else { Err(Conflict) }
}

/// What one run of one mode measured.
struct Run {
    calls: u64,
    /// Experiment milliseconds until the last client was done.
    completion_ms: f64,
    /// When each call arrived, experiment milliseconds.
    log: Vec<f64>,
}

fn run(mode: &Mode, clients: u64, seed: u64) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let row = Arc::new(Row::default());
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..clients {
            let seed = seed.wrapping_mul(1_000_003).wrapping_add(client);
            let layer = RetryLayer::builder()
                .name("retry_storm")
                .max_attempts(u32::MAX) // every client retries until its write lands
                .base(mode.base)
                .multiplier(2.0)
                .cap(CAP)
                .jitter(mode.jitter)
                .no_budget()
                .seed(seed)
                .always_safe() // a read-modify-write under OCC is safe to start again
                .build()
                .expect("a valid layer");
            let row = row.clone();
            let net = Arc::new(Mutex::new(SmallRng::seed_from_u64(!seed)));
            let occ = tower::service_fn(move |()| attempt(row.clone(), start, net.clone()));
            let client = layer.layer(occ);
            tasks.spawn(async move {
                // A `Conflict` is an error, so the default classifier retries it.
                client.oneshot(()).await.expect("retried until it landed");
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a client finished");
        }
        let completion_ms = start.elapsed().as_secs_f64();
        let log = std::mem::take(&mut *row.log.lock().expect("not poisoned"));
        Run {
            calls: row.calls.load(Ordering::SeqCst),
            completion_ms,
            log,
        }
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let clients: u64 = args.next().map_or(Ok(100), |a| a.parse())?;
    let runs: u64 = args.next().map_or(Ok(100), |a| a.parse())?;
    let svg = args.next().map_or_else(
        || std::env::temp_dir().join("retry_storm.svg"),
        std::path::PathBuf::from,
    );
    assert!((1..=10_000).contains(&clients) && (1..=1_000).contains(&runs));

    println!(
        "{clients} clients on one row, network |N(10 ms, 2 ms)|, base 5 ms, cap 2 s, {runs} runs per mode"
    );
    println!(
        "each client reads the row's version and writes if it is unchanged, backing off and \
         starting again if not;\ncalls: attempts of all clients, averaged over the runs; time: \
         when the last client got its write in (experiment time); post: the AWS post's figures\n"
    );
    println!(
        "{:<13} {:>8} {:>10}   {:>10} {:>10}",
        "mode", "calls", "time (s)", "post: calls", "time (s)"
    );
    let mut curves = Vec::new();
    let mut results = Vec::new();
    for (m, mode) in MODES.iter().enumerate() {
        let (mut calls, mut time, mut log) = (0u64, 0f64, Vec::new());
        for r in 0..runs {
            let run = run(mode, clients, (m as u64) << 32 | r);
            calls += run.calls;
            time += run.completion_ms;
            log.extend(run.log);
        }
        let (calls, secs) = (calls as f64 / runs as f64, time / runs as f64 / 1_000.0);
        let published = match mode.published {
            Some((c, t)) if clients == 100 => format!("{c:>11} {t:>10.1}"),
            _ => format!("{:>11} {:>10}", "-", "-"),
        };
        println!("{:<13} {calls:>8.0} {secs:>10.2}   {published}", mode.name);
        results.push((calls, secs));
        curves.push((mode, cumulative(&mut log, runs)));
    }
    plot(&svg, clients, runs, &curves)?;
    if let [(none_calls, none_secs), (full_calls, full_secs), ..] = results[..] {
        println!(
            "\nwithout jitter the clients collide again on every retry: {:.1}x the calls and \
             {:.1}x the time of Full jitter",
            none_calls / full_calls,
            none_secs / full_secs
        );
    }
    println!("calls over time per mode: {}", svg.display());
    Ok(())
}

/// Average calls made by each instant: (seconds, calls), one point per call.
fn cumulative(log: &mut [f64], runs: u64) -> Vec<(f64, f64)> {
    log.sort_by(f64::total_cmp);
    let step = (log.len() / 2_000).max(1); // at most ~2,000 points per curve
    log.iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == log.len())
        .map(|(i, ms)| (ms / 1_000.0, (i + 1) as f64 / runs as f64))
        .collect()
}

fn plot(
    path: &std::path::Path,
    clients: u64,
    runs: u64,
    curves: &[(&Mode, Vec<(f64, f64)>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let max_t = curves
        .iter()
        .filter_map(|(_, c)| c.last().map(|p| p.0))
        .fold(0.1, f64::max);
    let max_calls = curves
        .iter()
        .filter_map(|(_, c)| c.last().map(|p| p.1))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut caption = String::new();
    write!(
        caption,
        "OCC on one row: {clients} clients, mean of {runs} runs"
    )?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0.01f64..max_t * 1.05).log_scale(), 0f64..max_calls * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("time (s, log scale)")
        .y_desc("calls made (cumulative)")
        .y_label_formatter(&|calls| format!("{calls:.0}"))
        .draw()?;
    for (mode, curve) in curves {
        let colour = mode.colour;
        chart
            .draw_series(LineSeries::new(
                curve.iter().map(|&(t, c)| (t.max(0.01), c)),
                colour.stroke_width(2),
            ))?
            .label(mode.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
