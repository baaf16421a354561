//! The backend that fails on purpose: a small axum service on loopback whose faults the load
//! driver switches phase by phase, and which counts what reached it (calls, retries, side
//! effects per order).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use tokio::sync::Semaphore;
use tower_red::BoxError;

/// Connections in the backend's database pool, shared by every route.
pub(crate) const POOL_SIZE: usize = 8;
/// How long an outage keeps a caller waiting before it answers 503.
pub(crate) const OUTAGE_HANG: Duration = Duration::from_millis(300);
/// A latency spike.
pub(crate) const SPIKE: Duration = Duration::from_millis(800);
/// How long the slow dependency holds a pool connection for a report.
pub(crate) const SLOW_REPORT: Duration = Duration::from_secs(3);

/// What the backend does wrong in a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Nothing: every call answers in a few milliseconds.
    None,
    /// This share of calls (percent) answers 503 at once, before any side effect.
    Errors(u8),
    /// This share of reads (percent) takes [`SPIKE`].
    Spikes(u8),
    /// Every call hangs [`OUTAGE_HANG`], then answers 503.
    Outage,
    /// Reports hold a pool connection for [`SLOW_REPORT`]: without a limit they take the
    /// whole pool, and every other route queues behind them.
    SlowDependency,
}

impl Fault {
    /// Kind in the high byte, percent in the low one.
    fn encode(self) -> u16 {
        let (kind, percent) = match self {
            Fault::None => (0, 0),
            Fault::Errors(p) => (1, p),
            Fault::Spikes(p) => (2, p),
            Fault::Outage => (3, 0),
            Fault::SlowDependency => (4, 0),
        };
        (kind << 8) | u16::from(percent)
    }

    fn decode(v: u16) -> Fault {
        let percent = (v & 0xff) as u8;
        match v >> 8 {
            1 => Fault::Errors(percent),
            2 => Fault::Spikes(percent),
            3 => Fault::Outage,
            4 => Fault::SlowDependency,
            _ => Fault::None,
        }
    }
}

/// The backend's shared state: the current fault and what it counted.
pub(crate) struct Backend {
    fault: AtomicU16,
    seq: AtomicU64,
    calls: AtomicU64,
    retries: AtomicU64,
    pool: Semaphore,
    side_effects: Mutex<HashMap<u64, u32>>,
}

/// What the backend counted, at a moment.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BackendCounts {
    /// Calls that reached a handler, retries included.
    pub(crate) calls: u64,
    /// Of which the gateway marked as retries (`x-retry-attempt`).
    pub(crate) retries: u64,
    /// Pool connections in use.
    pub(crate) pool_in_use: usize,
    /// Orders placed (side effects), duplicates included.
    pub(crate) side_effects: u64,
    /// Side effects beyond the first of each order.
    pub(crate) duplicates: u64,
}

impl Backend {
    fn new() -> Self {
        Self {
            fault: AtomicU16::new(Fault::None.encode()),
            seq: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            pool: Semaphore::new(POOL_SIZE),
            side_effects: Mutex::new(HashMap::new()),
        }
    }

    /// Switches the fault (the load driver does, at each phase).
    pub(crate) fn set_fault(&self, fault: Fault) {
        // Relaxed: a handler that reads the previous phase's fault for a moment is fine.
        self.fault.store(fault.encode(), Ordering::Relaxed);
    }

    fn fault(&self) -> Fault {
        Fault::decode(self.fault.load(Ordering::Relaxed))
    }

    /// Counts a call, and whether the gateway's retry layer marked it as a retry.
    fn arrive(&self, headers: &HeaderMap) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if headers.contains_key("x-retry-attempt") {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A deterministic roll: true for `percent` of calls, spread evenly.
    fn roll(&self, percent: u8) -> bool {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        // SplitMix64: a cheap, well-spread hash of the sequence number.
        let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % 100 < u64::from(percent)
    }

    /// Counts now.
    pub(crate) fn counts(&self) -> BackendCounts {
        let effects = self.side_effects.lock().map(|m| {
            let total: u64 = m.values().map(|n| u64::from(*n)).sum();
            let duplicates: u64 = m.values().map(|n| u64::from(n.saturating_sub(1))).sum();
            (total, duplicates)
        });
        let (side_effects, duplicates) = effects.unwrap_or_default();
        BackendCounts {
            calls: self.calls.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            pool_in_use: POOL_SIZE.saturating_sub(self.pool.available_permits()),
            side_effects,
            duplicates,
        }
    }

    /// The common part of every handler: apply the fault read on arrival, and hold a pool
    /// connection while working. `Err` is the response to answer instead of doing the work.
    async fn work(
        &self,
        read: bool,
        report: bool,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, Response> {
        let unavailable =
            |why: &'static str| (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
        let fault = self.fault();
        match fault {
            Fault::Outage => {
                tokio::time::sleep(OUTAGE_HANG).await;
                return Err(unavailable("backend: down\n"));
            }
            Fault::Errors(p) if self.roll(p) => {
                return Err(unavailable("backend: injected failure\n"));
            }
            _ => {}
        }
        // FIFO: when slow work holds every connection, everything else queues behind it.
        let conn = self
            .pool
            .acquire()
            .await
            .map_err(|_| unavailable("backend: pool closed\n"))?;
        let took = match fault {
            Fault::Spikes(p) if read && self.roll(p) => SPIKE,
            Fault::SlowDependency if report => SLOW_REPORT,
            _ if report => Duration::from_millis(10),
            _ => Duration::from_millis(2),
        };
        tokio::time::sleep(took).await;
        Ok(conn)
    }
}

async fn item(State(b): State<Arc<Backend>>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    b.arrive(&headers);
    match b.work(true, false).await {
        Ok(_conn) => {
            format!("{{\"item\":{id},\"price\":\"{}.00\"}}\n", 10 + id % 90).into_response()
        }
        Err(res) => res,
    }
}

async fn report(
    State(b): State<Arc<Backend>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    b.arrive(&headers);
    match b.work(true, true).await {
        Ok(_conn) => format!("{{\"report\":{id},\"rows\":42}}\n").into_response(),
        Err(res) => res,
    }
}

/// `POST /orders`: places the order named by `x-order` (the side effect, counted), 201.
async fn order(State(b): State<Arc<Backend>>, headers: HeaderMap) -> Response {
    b.arrive(&headers);
    let Some(id) = headers
        .get("x-order")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return (StatusCode::BAD_REQUEST, "missing x-order\n").into_response();
    };
    match b.work(false, false).await {
        Ok(_conn) => {
            let n = match b.side_effects.lock() {
                Ok(mut m) => {
                    let n = m.entry(id).or_default();
                    *n += 1;
                    *n
                }
                Err(_) => 0,
            };
            (
                StatusCode::CREATED,
                format!("{{\"order\":{id},\"placed\":{n}}}\n"),
            )
                .into_response()
        }
        Err(res) => res,
    }
}

/// Starts a fresh backend on `127.0.0.1:0`.
pub(crate) async fn start() -> Result<(SocketAddr, Arc<Backend>), BoxError> {
    let backend = Arc::new(Backend::new());
    let app = Router::new()
        .route("/items/{id}", get(item))
        .route("/reports/{id}", get(report))
        .route("/orders", post(order))
        .with_state(backend.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, backend))
}
