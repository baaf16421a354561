//! The bounded loopback load: a fixed number of requests per phase at a fixed rate, a mix of
//! item reads, report reads and order POSTs (with an `Idempotency-Key`, over a link that drops
//! some responses after the gateway answered, so callers retry), and what the callers saw.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::backend::{Backend, Fault};

/// One phase of the load.
pub(crate) struct Phase {
    /// Its name on screen.
    pub(crate) name: &'static str,
    /// What the backend does wrong meanwhile.
    pub(crate) fault: Fault,
    /// The fault, in words.
    pub(crate) what: &'static str,
}

/// The phases, in order.
pub(crate) const PHASES: [Phase; 6] = [
    Phase {
        name: "steady",
        fault: Fault::None,
        what: "a healthy backend",
    },
    Phase {
        name: "errors 20%",
        fault: Fault::Errors(20),
        what: "20% of backend calls answer 503",
    },
    Phase {
        name: "latency spikes",
        fault: Fault::Spikes(15),
        what: "15% of backend reads take 800 ms",
    },
    Phase {
        name: "outage",
        fault: Fault::Outage,
        what: "every backend call hangs 300 ms, then 503",
    },
    Phase {
        name: "recovery",
        fault: Fault::None,
        what: "the backend is healthy again",
    },
    Phase {
        name: "slow dependency",
        fault: Fault::SlowDependency,
        what: "each report holds 1 of 8 pool connections for 3 s",
    },
];

/// Requests per second.
pub(crate) const RATE: u64 = 120;
/// Requests per phase (2.5 s at [`RATE`]).
pub(crate) const PER_PHASE: u64 = 300;
/// Requests per run.
pub(crate) const TOTAL: u64 = PER_PHASE * PHASES.len() as u64;
/// The deadline callers send (`x-request-timeout-ms`).
pub(crate) const CALLER_BUDGET: Duration = Duration::from_secs(2);
/// When a caller stops waiting, its own retries included.
pub(crate) const CALLER_TIMEOUT: Duration = Duration::from_millis(2200);
/// Attempts per order POST by the caller, the first included.
pub(crate) const CALLER_ATTEMPTS: u32 = 3;
/// Requests in flight at most; one more is not sent (and counted).
const MAX_IN_FLIGHT: usize = 512;
/// How long the end of a run waits for answers still in flight.
const DRAIN: Duration = Duration::from_secs(3);

/// Whether the link between callers and the gateway loses the response to this attempt of
/// this order, after the gateway answered: the first attempt of every 3rd order and the second
/// of every 15th.
pub(crate) fn loses_response(order: u64, attempt: u32) -> bool {
    match attempt {
        1 => order.is_multiple_of(3),
        2 => order.is_multiple_of(15),
        _ => false,
    }
}

/// How a logical request ended, as its caller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 2xx.
    Ok,
    /// A 5xx of the backend, passed on by the gateway.
    BackendError,
    /// Refused fast by an open circuit (503 problem+json).
    CircuitOpen,
    /// Refused fast by a full bulkhead (503 problem+json).
    BulkheadFull,
    /// The deadline passed (504 problem+json).
    Deadline,
    /// The gateway could not reach the backend (502).
    BadGateway,
    /// The caller gave up waiting ([`CALLER_TIMEOUT`]).
    CallerTimeout,
    /// Anything else: another refusal, a 4xx, a transport error, every response lost.
    Other,
}

impl Kind {
    /// Every kind, in display order.
    pub(crate) const ALL: [Kind; 8] = [
        Kind::Ok,
        Kind::BackendError,
        Kind::CircuitOpen,
        Kind::BulkheadFull,
        Kind::Deadline,
        Kind::BadGateway,
        Kind::CallerTimeout,
        Kind::Other,
    ];

    /// A short label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::BackendError => "backend 5xx",
            Kind::CircuitOpen => "circuit open",
            Kind::BulkheadFull => "bulkhead full",
            Kind::Deadline => "deadline",
            Kind::BadGateway => "bad gateway",
            Kind::CallerTimeout => "caller timeout",
            Kind::Other => "other",
        }
    }

    fn index(self) -> usize {
        Kind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or(Kind::ALL.len() - 1)
    }
}

/// What the callers of one run saw, updated as answers come.
#[derive(Default)]
pub(crate) struct Stats {
    phase: AtomicUsize,
    sent: AtomicU64,
    answered: AtomicU64,
    not_sent: AtomicU64,
    kinds: [AtomicU64; Kind::ALL.len()],
    ok_by_phase: [AtomicU64; PHASES.len()],
    replays: AtomicU64,
    fallbacks: AtomicU64,
    lost: AtomicU64,
    caller_retries: AtomicU64,
    /// (phase, latency in microseconds) of every answered request (bounded by [`TOTAL`]).
    latencies: Mutex<Vec<(usize, u32)>>,
    /// (when, latency) of the answers of the last second or so.
    recent: Mutex<Vec<(Instant, u32)>>,
}

/// Stats at a moment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) phase: usize,
    pub(crate) sent: u64,
    pub(crate) answered: u64,
    pub(crate) not_sent: u64,
    pub(crate) kinds: [u64; Kind::ALL.len()],
    pub(crate) ok_by_phase: [u64; PHASES.len()],
    pub(crate) replays: u64,
    pub(crate) fallbacks: u64,
    pub(crate) lost: u64,
    pub(crate) caller_retries: u64,
    /// Answers in the last second.
    pub(crate) rate: u64,
    /// Over the last second.
    pub(crate) recent_p50: Duration,
    pub(crate) recent_p99: Duration,
    /// Over the whole run.
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    /// By the phase the request started in.
    pub(crate) p50_by_phase: [Duration; PHASES.len()],
    pub(crate) p99_by_phase: [Duration; PHASES.len()],
}

impl Snapshot {
    /// Answers of this kind.
    pub(crate) fn count(&self, kind: Kind) -> u64 {
        self.kinds[kind.index()]
    }

    /// Answers that were not 2xx.
    pub(crate) fn errors(&self) -> u64 {
        self.answered.saturating_sub(self.count(Kind::Ok))
    }
}

fn percentile(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    Duration::from_micros(u64::from(sorted[i]))
}

impl Stats {
    fn record(&self, phase: usize, kind: Kind, latency: Duration, replayed: bool, fallback: bool) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.kinds[kind.index()].fetch_add(1, Ordering::Relaxed);
        if kind == Kind::Ok
            && let Some(n) = self.ok_by_phase.get(phase)
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
        if replayed {
            self.replays.fetch_add(1, Ordering::Relaxed);
        }
        if fallback {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut all) = self.latencies.lock() {
            all.push((phase, micros));
        }
        if let Ok(mut recent) = self.recent.lock() {
            let now = Instant::now();
            recent.retain(|(at, _)| now.duration_since(*at) < Duration::from_secs(1));
            recent.push((now, micros));
        }
    }

    /// The current phase's index.
    pub(crate) fn phase(&self) -> usize {
        self.phase.load(Ordering::Relaxed)
    }

    /// Everything now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut recent: Vec<u32> = self
            .recent
            .lock()
            .map(|mut r| {
                let now = Instant::now();
                r.retain(|(at, _)| now.duration_since(*at) < Duration::from_secs(1));
                r.iter().map(|(_, l)| *l).collect()
            })
            .unwrap_or_default();
        recent.sort_unstable();
        let mut by_phase = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        by_phase.sort_unstable_by_key(|(_, l)| *l);
        let all: Vec<u32> = by_phase.iter().map(|(_, l)| *l).collect();
        let of_phase = |p: usize| -> Vec<u32> {
            by_phase
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, l)| *l)
                .collect()
        };
        let p50_by_phase = std::array::from_fn(|p| percentile(&of_phase(p), 0.50));
        let p99_by_phase = std::array::from_fn(|p| percentile(&of_phase(p), 0.99));
        Snapshot {
            phase: self.phase(),
            sent: load(&self.sent),
            answered: load(&self.answered),
            not_sent: load(&self.not_sent),
            kinds: std::array::from_fn(|i| load(&self.kinds[i])),
            ok_by_phase: std::array::from_fn(|i| load(&self.ok_by_phase[i])),
            replays: load(&self.replays),
            fallbacks: load(&self.fallbacks),
            lost: load(&self.lost),
            caller_retries: load(&self.caller_retries),
            rate: recent.len() as u64,
            recent_p50: percentile(&recent, 0.50),
            recent_p99: percentile(&recent, 0.99),
            p50: percentile(&all, 0.50),
            p99: percentile(&all, 0.99),
            p50_by_phase,
            p99_by_phase,
        }
    }
}

/// The outcome of one answered request.
struct Answer {
    kind: Kind,
    replayed: bool,
    fallback: bool,
    status: StatusCode,
}

async fn classify(res: reqwest::Response) -> Answer {
    let status = res.status();
    let replayed = res.headers().contains_key(tower_idempotency::REPLAYED);
    let fallback = res
        .headers()
        .contains_key(tower_idempotency::fallback::FALLBACK);
    let kind = if status.is_success() {
        Kind::Ok
    } else {
        let body = res.text().await.unwrap_or_default();
        let refusal = body
            .split(tower_red::problem::TYPE_PREFIX)
            .nth(1)
            .map(|rest| rest.split('"').next().unwrap_or_default());
        match refusal {
            Some("circuit_open") => Kind::CircuitOpen,
            Some("bulkhead_full" | "queue_timeout" | "load_shed") => Kind::BulkheadFull,
            Some("deadline_exceeded") => Kind::Deadline,
            Some(_) => Kind::Other,
            None if status == StatusCode::BAD_GATEWAY => Kind::BadGateway,
            None if status.is_server_error() => Kind::BackendError,
            None => Kind::Other,
        }
    };
    Answer {
        kind,
        replayed,
        fallback,
        status,
    }
}

/// One logical request `i` of run `run`: a read, or an order POST retried by its caller.
async fn request(
    client: reqwest::Client,
    gateway: SocketAddr,
    run: u64,
    i: u64,
    stats: &Stats,
) -> Answer {
    let budget = CALLER_BUDGET.as_millis().to_string();
    if !i.is_multiple_of(10) {
        // A catalogue of 50 items, read again and again (what a stale answer can stand in for);
        // every report is new.
        let url = if i % 10 == 5 {
            format!("http://{gateway}/reports/{i}")
        } else {
            format!("http://{gateway}/items/{}", i % 50)
        };
        let sent = client
            .get(url)
            .header("x-request-timeout-ms", &budget)
            .send()
            .await;
        return match sent {
            Ok(res) => classify(res).await,
            Err(_) => Answer {
                kind: Kind::Other,
                replayed: false,
                fallback: false,
                status: StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
    }
    let order = i / 10;
    let mut last = Answer {
        kind: Kind::Other,
        replayed: false,
        fallback: false,
        status: StatusCode::INTERNAL_SERVER_ERROR,
    };
    for attempt in 1..=CALLER_ATTEMPTS {
        if attempt > 1 {
            stats.caller_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
        }
        let sent = client
            .post(format!("http://{gateway}/orders"))
            .header("x-request-timeout-ms", &budget)
            .header("idempotency-key", format!("order-{run}-{order}"))
            .header("x-order", order.to_string())
            .header("content-type", "application/json")
            .body(format!("{{\"order\":{order},\"amount\":\"10.00 EUR\"}}"))
            .send()
            .await;
        match sent {
            Ok(res) if loses_response(order, attempt) => {
                // The gateway answered (and the backend placed the order, or not): the
                // caller never hears of it.
                drop(res);
                stats.lost.fetch_add(1, Ordering::Relaxed);
            }
            Ok(res) => {
                last = classify(res).await;
                let transient = matches!(last.status.as_u16(), 502..=504);
                if !transient {
                    return last;
                }
            }
            Err(_) => {}
        }
    }
    last
}

/// Drives `TOTAL` requests at `RATE` into `gateway`, switching the backend's fault at each
/// phase, then waits at most [`DRAIN`] for the answers still out.
pub(crate) async fn drive(gateway: SocketAddr, backend: &Backend, stats: Arc<Stats>, run: u64) {
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    let mut i = 0u64;
    for (p, phase) in PHASES.iter().enumerate() {
        backend.set_fault(phase.fault);
        stats.phase.store(p, Ordering::Relaxed);
        for _ in 0..PER_PHASE {
            tick.tick().await;
            // Reap what finished, so the set stays as small as what is in flight.
            while tasks.try_join_next().is_some() {}
            i += 1;
            if tasks.len() >= MAX_IN_FLIGHT {
                stats.not_sent.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            stats.sent.fetch_add(1, Ordering::Relaxed);
            let (client, stats) = (client.clone(), stats.clone());
            tasks.spawn(async move {
                let start = Instant::now();
                let answer =
                    tokio::time::timeout(CALLER_TIMEOUT, request(client, gateway, run, i, &stats))
                        .await;
                let (kind, replayed, fallback) = match answer {
                    Ok(a) => (a.kind, a.replayed, a.fallback),
                    Err(_) => (Kind::CallerTimeout, false, false),
                };
                stats.record(p, kind, start.elapsed(), replayed, fallback);
            });
        }
    }
    let _ = tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    backend.set_fault(Fault::None);
}
