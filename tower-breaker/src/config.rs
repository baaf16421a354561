//! The breaker's configuration and its validation.
//!
//! Defaults follow Resilience4j 2.4's `CircuitBreakerConfig` where it has one (failure rate
//! 50 %, a count window of 100 calls, 100 minimum calls, 10 half-open probes, 60 s open), and
//! differ where the issue asks for more: slow calls are off unless a duration is set, and a
//! half-open circuit whose probes have not all finished after `max_probe_wait` (60 s) reopens,
//! where Resilience4j waits forever by default.
//!
//! ```
//! use std::time::Duration;
//! use tower_breaker::{BreakerLayer, OpenTime};
//!
//! let breaker = BreakerLayer::builder()
//!     .name("payments")
//!     .failure_rate_threshold(0.25)
//!     .time_window(Duration::from_secs(30), 10)
//!     .minimum_calls(20)
//!     .consecutive_failures(5)
//!     .slow_calls(Duration::from_secs(2), 0.5)
//!     .open_time(OpenTime::exponential(Duration::from_secs(1), Duration::from_secs(60)))
//!     .permitted_probes(3)
//!     .http_status()
//!     .build()
//!     .expect("a valid configuration");
//! assert_eq!(breaker.handle().name(), "payments");
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_red::ConfigError;
use tower_red::classify::{AnyError, GrpcStatus, HttpStatus};
use tower_red::clock::NEVER;
use tower_red::names;

use crate::event::{Rejected, Transition};
use crate::keyed::KeyedBreakerLayer;
use crate::layer::BreakerLayer;

/// The error for the breaker's setting `field`.
fn config_error(field: &'static str, value: impl fmt::Debug, reason: &'static str) -> ConfigError {
    ConfigError::new(names::layer::BREAKER, field, value, reason)
}

/// The largest count window, in calls.
pub const MAX_COUNT_WINDOW: u32 = 1 << 20;
/// The most buckets a time window may have.
pub const MAX_TIME_BUCKETS: u32 = 1_000;
/// The most probes a half-open circuit may admit at once.
pub const MAX_PERMITTED_PROBES: u32 = 10_000;
/// The minimum number of calls of a time window when none is set.
const DEFAULT_MINIMUM_CALLS: u32 = 100;

/// Over which calls the failure and slow-call rates are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `size` calls (a ring; memory O(size) bytes).
    Count {
        /// How many calls.
        size: u32,
    },
    /// The calls of the last `length`, counted in `buckets` rolling buckets (memory O(buckets)).
    Time {
        /// How far back.
        length: Duration,
        /// Into how many buckets `length` is divided; older buckets expire whole.
        buckets: u32,
    },
}

/// How long the circuit stays open after a trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OpenTime {
    /// Always the same.
    Fixed(Duration),
    /// `min(max, initial · multiplier^n)` on the n-th consecutive trip (n from 0), of which a
    /// random share up to `jitter` is taken off, so the circuit never stays open longer than the
    /// cap and clients of many breakers do not come back in step. The count of consecutive trips
    /// resets when the circuit closes healthily (after the ramp, with graded recovery).
    Exponential {
        /// The first open time.
        initial: Duration,
        /// The growth factor, at least 1 (default 2).
        multiplier: f64,
        /// The cap.
        max: Duration,
        /// The largest share of the time taken off at random, in `[0, 1]` (default 0.5).
        jitter: f64,
    },
}

impl OpenTime {
    /// A fixed open time.
    pub const fn fixed(duration: Duration) -> Self {
        OpenTime::Fixed(duration)
    }

    /// An open time doubling from `initial` up to `max` on consecutive trips, with up to half of
    /// it taken off at random.
    pub const fn exponential(initial: Duration, max: Duration) -> Self {
        OpenTime::Exponential {
            initial,
            multiplier: 2.0,
            max,
            jitter: 0.5,
        }
    }

    /// Sets the growth factor of an exponential open time (no effect on a fixed one).
    #[must_use]
    pub const fn multiplier(mut self, factor: f64) -> Self {
        if let OpenTime::Exponential { multiplier, .. } = &mut self {
            *multiplier = factor;
        }
        self
    }

    /// Sets the jitter share of an exponential open time (no effect on a fixed one).
    #[must_use]
    pub const fn jitter(mut self, share: f64) -> Self {
        if let OpenTime::Exponential { jitter, .. } = &mut self {
            *jitter = share;
        }
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            OpenTime::Fixed(d) if d.is_zero() => {
                Err(config_error("open_time", d, "must be more than zero"))
            }
            OpenTime::Fixed(d) => at_most_never("open_time", d),
            OpenTime::Exponential {
                initial,
                multiplier,
                max,
                jitter,
            } => {
                if initial.is_zero() {
                    return Err(config_error(
                        "open_time.initial",
                        initial,
                        "must be more than zero",
                    ));
                }
                if !(multiplier.is_finite() && multiplier >= 1.0) {
                    return Err(config_error(
                        "open_time.multiplier",
                        multiplier,
                        "must be a finite number of at least 1",
                    ));
                }
                if max < initial {
                    return Err(config_error(
                        "open_time.max",
                        max,
                        "must be at least open_time.initial",
                    ));
                }
                if !(0.0..=1.0).contains(&jitter) {
                    return Err(config_error(
                        "open_time.jitter",
                        jitter,
                        "must be in [0, 1]",
                    ));
                }
                at_most_never("open_time.initial", initial)?;
                at_most_never("open_time.max", max)
            }
        }
    }
}

/// An open time is added to clock readings (a waiter's wake-up, a refusal's `Retry-After`):
/// it is bounded by [`NEVER`] (30 years), so none overflows. `force_open` holds a circuit open
/// for good.
fn at_most_never(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d > NEVER {
        return Err(config_error(
            field,
            d,
            "must be at most 30 years (tower_red::clock::NEVER); use BreakerHandle::force_open to hold a circuit open",
        ));
    }
    Ok(())
}

impl OpenTime {
    /// The open time a forced-open refusal gives as `Retry-After`: the fixed time, or the
    /// first of a growing one.
    pub(crate) fn nominal(&self) -> Duration {
        match *self {
            OpenTime::Fixed(d) => d,
            OpenTime::Exponential { initial, .. } => initial,
        }
    }
}

impl From<Duration> for OpenTime {
    fn from(d: Duration) -> Self {
        OpenTime::Fixed(d)
    }
}

/// Graded recovery: after the half-open probes succeed, admit only a growing share of calls
/// (the rest are refused as if open) instead of jumping to full load at once.
///
/// `steps` are the shares admitted in successive equal parts of `duration`; after `duration`
/// every call is admitted. A trip during the ramp reopens at once and keeps growing the open
/// time.
#[derive(Debug, Clone, PartialEq)]
pub struct GradedRecovery {
    pub(crate) permille: Box<[u16]>,
    pub(crate) duration: Duration,
}

impl GradedRecovery {
    /// Ramps through `steps` (shares in `(0, 1]`, not decreasing) over `duration`, such as
    /// `[0.1, 0.5, 1.0]` over 30 s: 10 % for 10 s, 50 % for 10 s, then all for 10 s and after.
    pub fn new(steps: &[f64], duration: Duration) -> Result<Self, ConfigError> {
        if steps.is_empty() || steps.len() > 100 {
            return Err(config_error(
                "graded_recovery.steps",
                steps,
                "must have between 1 and 100 steps",
            ));
        }
        if steps
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0 && *s <= 1.0))
        {
            return Err(config_error(
                "graded_recovery.steps",
                steps,
                "every share must be in (0, 1]",
            ));
        }
        if steps.windows(2).any(|w| w[1] < w[0]) {
            return Err(config_error(
                "graded_recovery.steps",
                steps,
                "shares must not decrease",
            ));
        }
        if duration.is_zero() {
            return Err(config_error(
                "graded_recovery.duration",
                duration,
                "must be more than zero",
            ));
        }
        Ok(GradedRecovery {
            // In (0, 1] so the product is in 1..=1000 and fits.
            permille: steps
                .iter()
                .map(|s| ((s * 1000.0).round() as u16).max(1))
                .collect(),
            duration,
        })
    }
}

pub(crate) type TransitionHook = Arc<dyn Fn(&Transition) + Send + Sync>;
pub(crate) type RejectionHook = Arc<dyn Fn(&Rejected) + Send + Sync>;

/// A validated breaker configuration, for a [`KeyedBreakerLayer`] or to build several
/// layers alike ([`BreakerLayer::from_config`]). Build one with
/// [`BreakerBuilder::build_config`]; the default is valid.
#[derive(Clone)]
pub struct BreakerConfig {
    pub(crate) name: Arc<str>,
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) slow_call_rate_threshold: f64,
    pub(crate) window: Window,
    pub(crate) minimum_calls: u32,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) open_time: OpenTime,
    pub(crate) permitted_probes: u32,
    pub(crate) max_probe_wait: Duration,
    pub(crate) graded_recovery: Option<GradedRecovery>,
    pub(crate) backpressure: bool,
    pub(crate) metrics: bool,
    pub(crate) seed: Option<u64>,
    pub(crate) max_keys: usize,
    pub(crate) idle_key_timeout: Duration,
    pub(crate) on_transition: Vec<TransitionHook>,
    pub(crate) on_rejection: Vec<RejectionHook>,
}

impl fmt::Debug for BreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerConfig")
            .field("name", &self.name)
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("slow_call_rate_threshold", &self.slow_call_rate_threshold)
            .field("window", &self.window)
            .field("minimum_calls", &self.minimum_calls)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("open_time", &self.open_time)
            .field("permitted_probes", &self.permitted_probes)
            .field("max_probe_wait", &self.max_probe_wait)
            .field("graded_recovery", &self.graded_recovery)
            .field("backpressure", &self.backpressure)
            .field("metrics", &self.metrics)
            .field("max_keys", &self.max_keys)
            .field("idle_key_timeout", &self.idle_key_timeout)
            .field("on_transition", &self.on_transition.len())
            .field("on_rejection", &self.on_rejection.len())
            .finish_non_exhaustive()
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            name: Arc::from("default"),
            failure_rate_threshold: 0.5,
            slow_call_duration: None,
            slow_call_rate_threshold: 1.0,
            window: Window::Count { size: 100 },
            minimum_calls: DEFAULT_MINIMUM_CALLS,
            consecutive_failures: None,
            open_time: OpenTime::Fixed(Duration::from_secs(60)),
            permitted_probes: 10,
            max_probe_wait: Duration::from_secs(60),
            graded_recovery: None,
            backpressure: false,
            metrics: true,
            seed: None,
            max_keys: 1024,
            idle_key_timeout: Duration::from_secs(300),
            on_transition: Vec::new(),
            on_rejection: Vec::new(),
        }
    }
}

impl BreakerConfig {
    /// The instance name, used in metric labels, rejections and events.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The window the rates are measured over.
    pub fn window(&self) -> Window {
        self.window
    }

    /// How many calls the window must hold before its rates are acted on.
    pub fn minimum_calls(&self) -> u32 {
        self.minimum_calls
    }

    /// Whether calls need a clock reading at their start and end: durations are only worth
    /// two clock reads when the breaker's handles record them (`recording`: registered while
    /// a recorder was installed, outside `tower_red::red::counts_only`), or when a rule needs
    /// them.
    pub(crate) fn needs_clock(&self, recording: bool) -> bool {
        (self.metrics && recording)
            || self.slow_call_duration.is_some()
            || matches!(self.window, Window::Time { .. })
    }
}

/// Builds a [`BreakerLayer`] (from [`BreakerLayer::builder`]); [`build`](Self::build)
/// validates every value. `C` classifies outcomes: any `Err` is a failure by default, see
/// [`http_status`](Self::http_status) and [`grpc_status`](Self::grpc_status).
#[derive(Debug)]
#[must_use]
pub struct BreakerBuilder<C = AnyError> {
    config: BreakerConfig,
    recovery: Option<(Vec<f64>, Duration)>,
    /// `None` until set: then the count window's size (or 100 for a time window).
    minimum_calls: Option<u32>,
    classifier: C,
}

impl Default for BreakerBuilder {
    fn default() -> Self {
        BreakerBuilder {
            config: BreakerConfig::default(),
            recovery: None,
            minimum_calls: None,
            classifier: AnyError,
        }
    }
}

impl<C> BreakerBuilder<C> {
    /// Classify outcomes with `classifier` (any [`tower_red::Classify`]) instead.
    pub fn classifier<C2>(self, classifier: C2) -> BreakerBuilder<C2> {
        BreakerBuilder {
            config: self.config,
            recovery: self.recovery,
            minimum_calls: self.minimum_calls,
            classifier,
        }
    }

    /// Classify `http::Response`s by status ([`HttpStatus`]: 5xx and 429 fail): the choice
    /// for an axum router or a reqwest client. With the default classifier only an `Err`
    /// fails, and an axum handler (`Infallible`) never opens the circuit.
    pub fn http_status(self) -> BreakerBuilder<HttpStatus> {
        self.classifier(HttpStatus::new())
    }

    /// Classify gRPC responses by `grpc-status` ([`GrpcStatus`]: UNAVAILABLE,
    /// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL and UNKNOWN fail): the choice for a
    /// tonic server or channel, whose errors travel as statuses in `Ok` responses.
    pub fn grpc_status(self) -> BreakerBuilder<GrpcStatus> {
        self.classifier(GrpcStatus::new())
    }

    /// Validates every value and builds the layer.
    pub fn build(self) -> Result<BreakerLayer<C>, ConfigError> {
        let (config, classifier) = self.validate()?;
        Ok(BreakerLayer::from_config(config).with_classifier(classifier))
    }

    /// Validates every value and builds a [`KeyedBreakerLayer`]: one breaker with this
    /// configuration per key that `key_fn` takes from a request.
    pub fn build_keyed<K, F>(self, key_fn: F) -> Result<KeyedBreakerLayer<K, F, C>, ConfigError>
    where
        K: std::hash::Hash + Eq + Clone,
    {
        let (config, classifier) = self.validate()?;
        Ok(KeyedBreakerLayer::new(config, key_fn).with_classifier(classifier))
    }

    /// Validates every value and returns the configuration alone (the classifier is
    /// dropped), for [`BreakerLayer::from_config`] or [`KeyedBreakerLayer::new`].
    pub fn build_config(self) -> Result<BreakerConfig, ConfigError> {
        self.validate().map(|(config, _)| config)
    }

    /// The instance name (default `"default"`): a metric label, so keep it bounded.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.config.name = Arc::from(name.as_ref());
        self
    }

    /// Trip when the failure rate is at or above this share, in `(0, 1]` (default 0.5).
    pub fn failure_rate_threshold(mut self, share: f64) -> Self {
        self.config.failure_rate_threshold = share;
        self
    }

    /// Count a call as slow when it takes at least `duration`, success or not, and trip when
    /// the slow-call rate is at or above `share` (default: slow calls are not measured).
    pub fn slow_calls(mut self, duration: Duration, share: f64) -> Self {
        self.config.slow_call_duration = Some(duration);
        self.config.slow_call_rate_threshold = share;
        self
    }

    /// Measure rates over the last `size` calls (the default, 100).
    pub fn count_window(mut self, size: u32) -> Self {
        self.config.window = Window::Count { size };
        self
    }

    /// Measure rates over the last `length`, in `buckets` rolling buckets.
    pub fn time_window(mut self, length: Duration, buckets: u32) -> Self {
        self.config.window = Window::Time { length, buckets };
        self
    }

    /// Rates are not acted on until the window holds this many calls (default: the count
    /// window's size, or 100 calls for a time window).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = Some(calls);
        self
    }

    /// Also trip after this many failures in a row, whatever the window says (default off).
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.config.consecutive_failures = Some(failures);
        self
    }

    /// How long the circuit stays open: a [`Duration`] or an [`OpenTime`] (default 60 s), more
    /// than zero and at most 30 years ([`tower_red::clock::NEVER`]; `build` refuses more: to hold
    /// a circuit open, use [`BreakerHandle::force_open`](crate::BreakerHandle::force_open)).
    pub fn open_time(mut self, open_time: impl Into<OpenTime>) -> Self {
        self.config.open_time = open_time.into();
        self
    }

    /// How many probes a half-open circuit admits (default 10); their rates decide.
    pub fn permitted_probes(mut self, probes: u32) -> Self {
        self.config.permitted_probes = probes;
        self
    }

    /// A half-open circuit whose probes have not all finished after this long reopens
    /// (default 60 s).
    pub fn max_probe_wait(mut self, wait: Duration) -> Self {
        self.config.max_probe_wait = wait;
        self
    }

    /// Ramp traffic back after closing; see [`GradedRecovery::new`] (default off).
    pub fn graded_recovery(mut self, steps: &[f64], duration: Duration) -> Self {
        self.recovery = Some((steps.to_vec(), duration));
        self
    }

    /// Make `poll_ready` return `Pending` while the circuit refuses calls, waking when a probe
    /// may go, instead of rejecting in `call` (default off).
    pub fn backpressure(mut self, enabled: bool) -> Self {
        self.config.backpressure = enabled;
        self
    }

    /// Record RED metrics, the state gauge and the transitions counter (default on). Off, the
    /// closed path reads no clock unless slow calls or a time window need it.
    pub fn metrics(mut self, enabled: bool) -> Self {
        self.config.metrics = enabled;
        self
    }

    /// For a [`KeyedBreakerLayer`]: hold at most `max_keys` live
    /// breakers (default 1024), and forget a key unused for `idle_timeout` (default 5 min).
    /// When a new key arrives and none is idle, the least recently used closed key goes. A key
    /// whose breaker is busy (a call in flight, a probe out, a readiness reserved, or a
    /// [`BreakerHandle`](crate::BreakerHandle) held) is never forgotten or evicted; when every
    /// key is busy, a new key's call gets a breaker of its own that the table does not keep.
    pub fn keys(mut self, max_keys: usize, idle_timeout: Duration) -> Self {
        self.config.max_keys = max_keys;
        self.config.idle_key_timeout = idle_timeout;
        self
    }

    /// Seed the open-time jitter, for reproducible tests (default: seeded from the OS).
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// Call `hook` on every state transition, outside any lock of the breaker.
    pub fn on_transition(mut self, hook: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.config.on_transition.push(Arc::new(hook));
        self
    }

    /// Call `hook` on every refused call, outside any lock of the breaker.
    pub fn on_rejection(mut self, hook: impl Fn(&Rejected) + Send + Sync + 'static) -> Self {
        self.config.on_rejection.push(Arc::new(hook));
        self
    }

    fn validate(self) -> Result<(BreakerConfig, C), ConfigError> {
        let mut c = self.config;
        c.minimum_calls = self.minimum_calls.unwrap_or(match c.window {
            Window::Count { size } => size,
            Window::Time { .. } => DEFAULT_MINIMUM_CALLS,
        });
        if c.name.is_empty() {
            return Err(config_error("name", &*c.name, "must not be empty"));
        }
        let share = |field, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(config_error(field, v, "must be in (0, 1]"))
            }
        };
        share("failure_rate_threshold", c.failure_rate_threshold)?;
        if let Some(d) = c.slow_call_duration {
            if d.is_zero() {
                return Err(config_error(
                    "slow_call_duration",
                    d,
                    "must be more than zero",
                ));
            }
            share("slow_call_rate_threshold", c.slow_call_rate_threshold)?;
        }
        match c.window {
            Window::Count { size } => {
                if !(1..=MAX_COUNT_WINDOW).contains(&size) {
                    return Err(config_error(
                        "count_window",
                        size,
                        "must be between 1 and 1048576 calls",
                    ));
                }
                if c.minimum_calls > size {
                    return Err(config_error(
                        "minimum_calls",
                        c.minimum_calls,
                        "must not exceed the count window, or the circuit could never trip on rates",
                    ));
                }
            }
            Window::Time { length, buckets } => {
                if !(1..=MAX_TIME_BUCKETS).contains(&buckets) {
                    return Err(config_error(
                        "time_window.buckets",
                        buckets,
                        "must be between 1 and 1000",
                    ));
                }
                if length < Duration::from_millis(u64::from(buckets)) {
                    return Err(config_error(
                        "time_window.length",
                        length,
                        "must give each bucket at least 1 ms",
                    ));
                }
            }
        }
        if c.minimum_calls == 0 {
            return Err(config_error(
                "minimum_calls",
                c.minimum_calls,
                "must be at least 1",
            ));
        }
        if c.consecutive_failures == Some(0) {
            return Err(config_error(
                "consecutive_failures",
                0,
                "must be at least 1",
            ));
        }
        c.open_time.validate()?;
        if !(1..=MAX_PERMITTED_PROBES).contains(&c.permitted_probes) {
            return Err(config_error(
                "permitted_probes",
                c.permitted_probes,
                "must be between 1 and 10000",
            ));
        }
        if c.max_probe_wait.is_zero() {
            return Err(config_error(
                "max_probe_wait",
                c.max_probe_wait,
                "must be more than zero",
            ));
        }
        if c.max_keys == 0 {
            return Err(config_error("max_keys", c.max_keys, "must be at least 1"));
        }
        if c.idle_key_timeout.is_zero() {
            return Err(config_error(
                "idle_key_timeout",
                c.idle_key_timeout,
                "must be more than zero",
            ));
        }
        if let Some((steps, duration)) = self.recovery {
            c.graded_recovery = Some(GradedRecovery::new(&steps, duration)?);
        }
        Ok((c, self.classifier))
    }
}
