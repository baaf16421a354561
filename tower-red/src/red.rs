//! The RED (rate, errors, duration) vocabulary every layer records through the `metrics` crate.
//!
//! A layer builds one [`RedMetrics`] when it is built; the handles are registered then, with
//! whatever recorder is installed at that moment, and every call afterwards only indexes an
//! array and bumps a handle: no key is built, no label allocated, no lock taken.
//!
//! Layers time calls with [`clock::now`](crate::clock::now) inside a
//! [`clock::Scope`](crate::clock::Scope), so a stack of layers shares one clock pair per call.
//!
//! ```
//! use std::time::Duration;
//! use tower_red::red::{Outcome, RedMetrics};
//! use tower_red::names;
//!
//! let red = RedMetrics::new(names::layer::BREAKER, "payments");
//! red.record(Outcome::Ok, Duration::from_millis(3));
//! red.record_rejection(Outcome::CircuitOpen);
//! ```

use std::cell::Cell;
use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram, Label, SharedString, Unit};

use crate::classify::{FailureClass, Verdict, refusal_of};
use crate::names::{self, label};
use crate::rejection::Rejection;

/// The bounded values of the `outcome` label, shared by every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Outcome {
    /// The call succeeded (or its classifier ignored it).
    Ok,
    /// The call failed.
    Error,
    /// The call ran out of time.
    Timeout,
    /// A breaker refused the call.
    CircuitOpen,
    /// A bulkhead or load shedder refused the call.
    Shed,
    /// A retry budget refused a retry.
    BudgetExhausted,
    /// The response was replayed from an idempotency store.
    Replayed,
    /// Another refusal of the layer's own (idempotency conflict, bad key, store down, …).
    Rejected,
    /// The caller dropped the future before it finished.
    Cancelled,
    /// A layer inside this one refused the call (a [`Rejection`] came up from below, or a
    /// response built from one). That layer counted the refusal under its own outcome
    /// (`circuit_open`, `shed`, `timeout`, …); outer layers count it here, so summing one
    /// refusal outcome over every layer gives the calls actually refused.
    InnerRefusal,
    /// A fallback layer answered in place of the call (from a function or a stale response),
    /// because an inner layer refused it or its classifier judged it a failure.
    Fallback,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 11] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::CircuitOpen,
        Outcome::Shed,
        Outcome::BudgetExhausted,
        Outcome::Replayed,
        Outcome::Rejected,
        Outcome::Cancelled,
        Outcome::InnerRefusal,
        Outcome::Fallback,
    ];

    /// The label value, such as `circuit_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::CircuitOpen => "circuit_open",
            Outcome::Shed => "shed",
            Outcome::BudgetExhausted => "budget_exhausted",
            Outcome::Replayed => "replayed",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::InnerRefusal => "inner_refusal",
            Outcome::Fallback => "fallback",
        }
    }

    /// The outcome of a classified call.
    pub fn from_verdict(verdict: Verdict) -> Outcome {
        match verdict {
            Verdict::Success | Verdict::Ignored => Outcome::Ok,
            Verdict::Failure(FailureClass::Timeout) => Outcome::Timeout,
            Verdict::Failure(_) => Outcome::Error,
            Verdict::Refused(_) => Outcome::InnerRefusal,
        }
    }

    /// The outcome a layer records for a call that finished with `result`, judged `verdict`
    /// (by [`judge`](crate::classify::judge)): [`Outcome::InnerRefusal`] when an inner layer
    /// refused it (even when the verdict counts an inner deadline as the backend's timeout: the
    /// layer that enforced it counted the `timeout`), else the verdict's outcome.
    #[inline]
    pub fn judged<T, E: 'static>(verdict: Verdict, result: &Result<T, E>) -> Outcome {
        if let Err(err) = result
            && refusal_of(err).is_some()
        {
            return Outcome::InnerRefusal;
        }
        Outcome::from_verdict(verdict)
    }

    /// The outcome an outer layer records for an error that came up from inside it:
    /// [`Outcome::InnerRefusal`] for a [`Rejection`] of an inner layer (that layer counted it
    /// under its own outcome, [`Rejection::outcome`]), else [`Outcome::Error`].
    pub fn from_error(err: &(dyn Error + 'static)) -> Outcome {
        match Rejection::find(err) {
            Some(_) => Outcome::InnerRefusal,
            None => Outcome::Error,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One layer instance's RED handles: a counter and a duration histogram per [`Outcome`].
///
/// Cloning shares the handles.
#[derive(Clone)]
pub struct RedMetrics {
    inner: Arc<Handles>,
}

struct Handles {
    recording: bool,
    layer: &'static str,
    name: SharedString,
    /// Bit `o` set when outcome `o` has real handles.
    registered: u16,
    /// `false` for handles registered inside [`counts_only`].
    durations_on: bool,
    requests: [Counter; Outcome::ALL.len()],
    durations: [Histogram; Outcome::ALL.len()],
    _live: Option<LiveName>,
}

/// Logs, once per process, that a layer was built before any metrics recorder.
#[cold]
fn warn_not_recording(layer: &'static str, name: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    // Relaxed: a flag that only limits a log line to once; no other memory depends on it.
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            layer,
            name,
            "a resilience layer was built before any metrics recorder was installed: its metrics \
             (and those of every layer built so far) are no-ops for life; install the recorder \
             first (this is logged once per process)"
        );
    }
}

/// The live (layer, name) pairs, to warn when two instances would merge their series.
fn live_names() -> &'static Mutex<HashMap<(&'static str, String), usize>> {
    static LIVE: OnceLock<Mutex<HashMap<(&'static str, String), usize>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// One instance's claim on its (layer, name) pair; released when its handles are dropped.
struct LiveName {
    layer: &'static str,
    name: String,
}

impl LiveName {
    /// Build-time only: takes a lock and allocates.
    fn register(layer: &'static str, name: &str) -> LiveName {
        let mut live = live_names().lock().unwrap_or_else(|e| e.into_inner());
        let count = live.entry((layer, name.to_owned())).or_insert(0);
        *count += 1;
        if *count > 1 {
            tracing::warn!(
                layer,
                name,
                instances = *count,
                "two live resilience layers share a layer kind and name: their metric series \
                 merge and gauges such as the breaker state stop meaning anything; give each a \
                 distinct name"
            );
        }
        LiveName {
            layer,
            name: name.to_owned(),
        }
    }
}

impl Drop for LiveName {
    fn drop(&mut self) {
        let mut live = live_names().lock().unwrap_or_else(|e| e.into_inner());
        let key = (self.layer, std::mem::take(&mut self.name));
        if let Some(count) = live.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                live.remove(&key);
            }
        }
    }
}

/// The number of live layer instances registered under `layer` and `name` (with a recorder
/// installed when they were built). Builders that must refuse duplicates read it.
pub fn live_instances(layer: &'static str, name: &str) -> usize {
    let live = live_names().lock().unwrap_or_else(|e| e.into_inner());
    live.get(&(layer, name.to_owned())).copied().unwrap_or(0)
}

impl fmt::Debug for RedMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedMetrics")
            .field("layer", &self.inner.layer)
            .field("name", &&*self.inner.name)
            .finish_non_exhaustive()
    }
}

impl RedMetrics {
    /// Registers handles for every [`Outcome`] (a counter and a duration histogram each) of the
    /// layer kind `layer` (one of [`names::layer`]) and instance `name`, with the recorder
    /// installed now (global, or local to this thread). Layers use
    /// [`RedMetrics::with_outcomes`] to register only the series they can produce.
    pub fn new(layer: &'static str, name: impl Into<SharedString>) -> Self {
        Self::with_outcomes(layer, name, &Outcome::ALL, &[])
    }

    /// Registers only the series a layer can produce: a counter and a duration histogram for
    /// each outcome in `timed` (recorded with [`RedMetrics::record`]), a counter alone for each
    /// refusal in `refusals` (recorded with [`RedMetrics::record_rejection`]). An exporter then
    /// shows no series that can never move (such as a bulkhead's `circuit_open`).
    ///
    /// Recording an outcome that was not registered records nothing (and fails a debug
    /// assertion, so tests catch it).
    ///
    /// A second live instance with the same `layer` and `name` would merge its series with the
    /// first (and a state gauge would then lie): it is logged as a `tracing` warning. So is
    /// building the first layer of a process before any metrics recorder is installed, which
    /// leaves that layer's handles as no-ops for life.
    pub fn with_outcomes(
        layer: &'static str,
        name: impl Into<SharedString>,
        timed: &[Outcome],
        refusals: &[Outcome],
    ) -> Self {
        let name = name.into();
        let labels = |outcome: Outcome| {
            [
                Label::from_static_parts(label::LAYER, layer),
                Label::new(label::NAME, name.clone()),
                Label::from_static_parts(label::OUTCOME, outcome.as_str()),
            ]
        };
        let mut registered = 0u16;
        let requests = Outcome::ALL.map(|o| {
            if timed.contains(&o) || refusals.contains(&o) {
                registered |= 1 << o as u16;
                metrics::counter!(names::REQUESTS_TOTAL, labels(o).iter())
            } else {
                Counter::noop()
            }
        });
        let counts_only = COUNTS_ONLY.with(Cell::get);
        let durations = Outcome::ALL.map(|o| {
            if timed.contains(&o) && !counts_only {
                metrics::histogram!(names::REQUEST_DURATION_SECONDS, labels(o).iter())
            } else {
                Histogram::noop()
            }
        });
        let recording = recorder_installed();
        if !recording {
            warn_not_recording(layer, &name);
        }
        let live = recording.then(|| LiveName::register(layer, &name));
        RedMetrics {
            inner: Arc::new(Handles {
                recording,
                layer,
                name,
                registered,
                durations_on: !counts_only,
                requests,
                durations,
                _live: live,
            }),
        }
    }

    /// Whether a recorder was installed when these handles were registered (see
    /// [`recorder_installed`]). When it was not, every handle is a no-op for life, and a layer
    /// can skip the clock reads a duration costs.
    pub fn is_recording(&self) -> bool {
        self.inner.recording
    }

    /// Whether [`RedMetrics::record`] records a duration: a recorder was installed and the
    /// handles were not registered inside [`counts_only`]. A layer whose only use of the clock
    /// is the duration can skip its clock reads when this is `false`.
    pub fn records_durations(&self) -> bool {
        self.inner.recording && self.inner.durations_on
    }

    /// The layer kind label.
    pub fn layer(&self) -> &'static str {
        self.inner.layer
    }

    /// The instance name label.
    pub fn name(&self) -> &SharedString {
        &self.inner.name
    }

    /// Counts one call and records its duration.
    #[inline]
    pub fn record(&self, outcome: Outcome, elapsed: Duration) {
        let i = outcome as usize;
        debug_assert!(
            !self.inner.recording || self.inner.registered & (1 << i) != 0,
            "outcome {outcome} not registered for {} {:?}",
            self.inner.layer,
            &*self.inner.name
        );
        self.inner.requests[i].increment(1);
        self.inner.durations[i].record(elapsed.as_secs_f64());
    }

    /// Counts one call refused before it started: no duration is recorded.
    #[inline]
    pub fn record_rejection(&self, outcome: Outcome) {
        let i = outcome as usize;
        debug_assert!(
            !self.inner.recording || self.inner.registered & (1 << i) != 0,
            "outcome {outcome} not registered for {} {:?}",
            self.inner.layer,
            &*self.inner.name
        );
        self.inner.requests[i].increment(1);
    }
}

thread_local! {
    /// Set while [`counts_only`] runs its closure.
    static COUNTS_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Builds layers that count their outcomes but record no durations: every [`RedMetrics`]
/// registered while `build` runs (on this thread) has its counters and no-op histograms.
///
/// This is how a layer records in a stack. Alone, a layer records a counter and a duration
/// histogram per outcome. In a stack, the stack's outermost RED layer records the one duration
/// that matters (what the caller waited), and every layer inside it counts its outcomes only:
/// with metrics-exporter-prometheus's recorder a duration sample costs ~300 instructions (its
/// clock reads, and the exporter keeps every sample until its upkeep) and a counter ~16. On the
/// README's client stack (`RedLayer::client()` over six layers), timing the five layers that
/// record adds ~1,500 instructions a call to the ~2,200 that counting inside it and
/// `RedLayer`'s one duration cost (the `production_stack` bench).
/// (Polly records one pipeline duration per stack and counters per strategy; Resilience4j
/// records durations in its breaker only.) Layer-specific metrics (breaker state, bulkhead
/// in-flight and queue wait, retry attempts, idempotency replays) are unaffected.
///
/// It costs nothing after build time: it only decides which handles are registered.
///
/// ```
/// use tower_red::red::{counts_only, RedMetrics};
/// use tower_red::names;
///
/// let quiet = counts_only(|| RedMetrics::new(names::layer::BREAKER, "payments"));
/// assert!(!quiet.records_durations());
/// let loud = RedMetrics::new(names::layer::BREAKER, "orders");
/// assert_eq!(loud.records_durations(), tower_red::red::recorder_installed());
/// ```
pub fn counts_only<R>(build: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            COUNTS_ONLY.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(COUNTS_ONLY.with(|c| c.replace(true)));
    build()
}

/// Whether a metrics recorder is installed for this thread now (a local one, or the global
/// one): `false` while the facade falls back to its no-op recorder.
///
/// Handles are bound to the recorder installed when they are registered, so a layer built
/// while this is `false` records into no-ops for its whole life; layers use this at build time
/// to skip the clock reads a duration needs. The `metrics` crate does not say which recorder
/// is installed; the no-op recorder is the only zero-sized one it ships, so a zero-sized
/// recorder is taken for it (a real recorder keeps its series somewhere).
pub fn recorder_installed() -> bool {
    metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

/// Describes every metric of this workspace (help text and unit) to the installed recorder.
/// Call once after installing a recorder, such as a Prometheus exporter.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::REQUESTS_TOTAL,
        Unit::Count,
        "Calls seen by a resilience layer, by outcome."
    );
    describe_histogram!(
        names::REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of calls through a resilience layer, by outcome."
    );
    describe_gauge!(
        names::BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics only."
    );
    describe_counter!(
        names::BREAKER_TRANSITIONS_TOTAL,
        Unit::Count,
        "Circuit breaker state transitions."
    );
    describe_gauge!(
        names::BULKHEAD_IN_FLIGHT,
        Unit::Count,
        "Calls holding a bulkhead permit."
    );
    describe_gauge!(
        names::BULKHEAD_QUEUE_DEPTH,
        Unit::Count,
        "Calls waiting in a bulkhead queue."
    );
    describe_gauge!(
        names::BULKHEAD_LIMIT,
        Unit::Count,
        "Current bulkhead concurrency limit."
    );
    describe_histogram!(
        names::BULKHEAD_QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time spent in a bulkhead queue."
    );
    describe_counter!(
        names::BULKHEAD_REJECTIONS_TOTAL,
        Unit::Count,
        "Bulkhead rejections by reason."
    );
    describe_counter!(
        names::BULKHEAD_UNKNOWN_PARTITION_TOTAL,
        Unit::Count,
        "Calls that named an unknown bulkhead partition and ran in the default one."
    );
    describe_counter!(
        names::RETRY_ATTEMPTS_TOTAL,
        Unit::Count,
        "Retry attempts after the first."
    );
    describe_gauge!(
        names::RETRY_BUDGET_BALANCE,
        "Tokens left in a retry budget."
    );
    describe_counter!(
        names::RETRY_STOPS_TOTAL,
        Unit::Count,
        "Failed attempts that were not retried, by reason."
    );
    describe_histogram!(
        names::RETRY_REQUEST_ATTEMPTS,
        Unit::Count,
        "Attempts per request through a retry layer."
    );
    describe_counter!(
        names::RETRY_BODY_OVERFLOW_TOTAL,
        Unit::Count,
        "Requests whose body was over the retry replay cap and were sent once."
    );
    describe_counter!(
        names::RETRY_DONT_RETRY_TOTAL,
        Unit::Count,
        "Responses a server answered with the don't-retry signal, by reason."
    );
    describe_counter!(
        names::DEADLINE_EXCEEDED_TOTAL,
        Unit::Count,
        "Deadlines exceeded, by stage."
    );
    describe_counter!(
        names::DEADLINE_HEADER_INVALID_TOTAL,
        Unit::Count,
        "Malformed inbound deadline headers."
    );
    describe_counter!(
        names::IDEMPOTENCY_REPLAYS_TOTAL,
        Unit::Count,
        "Responses replayed from an idempotency store."
    );
    describe_counter!(
        names::IDEMPOTENCY_STORE_ERRORS_TOTAL,
        Unit::Count,
        "Idempotency store errors."
    );
    describe_counter!(
        names::IDEMPOTENCY_DECISIONS_TOTAL,
        Unit::Count,
        "Requests with an idempotency key, by what the layer did with them."
    );
    describe_histogram!(
        names::IDEMPOTENCY_STORE_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of idempotency store operations."
    );
    describe_histogram!(
        names::HTTP_SERVER_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of HTTP server requests (OpenTelemetry http.server.request.duration)."
    );
    describe_gauge!(
        names::HTTP_SERVER_ACTIVE_REQUESTS,
        Unit::Count,
        "Active HTTP server requests (OpenTelemetry http.server.active_requests)."
    );
    describe_histogram!(
        names::HTTP_CLIENT_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of HTTP client requests (OpenTelemetry http.client.request.duration)."
    );
    describe_gauge!(
        names::HTTP_CLIENT_ACTIVE_REQUESTS,
        Unit::Count,
        "Active HTTP client requests (OpenTelemetry http.client.active_requests)."
    );
}
