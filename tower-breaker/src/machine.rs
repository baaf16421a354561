//! The breaker's state machine, shared by every clone of a layer and its services. No Tower in
//! here: [`Machine::admit`] says whether a call may go, [`Machine::complete`] and
//! [`Machine::cancel`] say how it ended.
//!
//! The closed path is lock-free: one atomic load to admit, the window's few atomic operations
//! to record. A `Mutex` guards only what is rare: transitions, half-open probe slots, the open
//! time's backoff state. Hooks, tracing and metrics of a transition run after it is released.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_red::red::RedMetrics;

use crate::config::{BreakerConfig, OpenTime};
use crate::event::{Reason, Rejected, State, Transition};
use crate::metrics::Metrics;
use crate::sync::{AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};
use crate::window::{Counts, Padded, Sample, Window};

// The state word: the state in bits 0..3, the ramp flag in bit 3, the epoch above bit 8. Every
// transition bumps the epoch, so a call admitted before it is recognised when it completes.
const STATE_MASK: u64 = 0x7;
const RAMP: u64 = 0x8;
const EPOCH_ONE: u64 = 1 << 8;

const CLOSED: u64 = State::Closed as u64;
const OPEN: u64 = State::Open as u64;
const HALF_OPEN: u64 = State::HalfOpen as u64;
const FORCED_OPEN: u64 = State::ForcedOpen as u64;
const DISABLED: u64 = State::Disabled as u64;
const METRICS_ONLY: u64 = State::MetricsOnly as u64;

/// What an admitted call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Measured; may trip the circuit.
    Closed,
    /// Holds a half-open probe slot.
    Probe,
    /// Measured; never trips.
    MetricsOnly,
    /// Not measured.
    Disabled,
}

/// An admitted call: what it is and the state word it was admitted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    pub(crate) word: u64,
    pub(crate) kind: Kind,
}

// An admission packed in one word, as a permit carries it: the state word's bits 4..8 are
// always clear, so the kind goes in bits 4..6 and bit 7 is left to the permit.
const KIND_SHIFT: u32 = 4;
const KIND_BITS: u64 = 3 << KIND_SHIFT;
const PACKED_BITS: u64 = 0xf0;

impl Admission {
    /// This admission in one word; see [`unpack`](Self::unpack).
    #[inline]
    pub(crate) fn pack(self) -> u64 {
        self.word | (self.kind as u64) << KIND_SHIFT
    }

    /// The admission packed in `packed`, ignoring bit 7.
    #[inline]
    pub(crate) fn unpack(packed: u64) -> Admission {
        let kind = match (packed >> KIND_SHIFT) & 3 {
            0 => Kind::Closed,
            1 => Kind::Probe,
            2 => Kind::MetricsOnly,
            _ => Kind::Disabled,
        };
        Admission {
            word: packed & !PACKED_BITS,
            kind,
        }
    }
}

/// A refused call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) state: State,
    /// When a call may be admitted again (or, forced open, the open time): exact, for the
    /// backpressure timer; a rejection rounds it up to at least a second.
    pub(crate) retry_after: Duration,
}

#[derive(Debug, Default)]
struct Probes {
    admitted: u32,
    done: u32,
    failures: u32,
    slow: u32,
    since: u64,
}

struct Inner {
    /// Consecutive trips without a healthy close: the exponent of a growing open time.
    trips: u32,
    rng: SmallRng,
    probes: Probes,
}

/// The shared breaker.
pub(crate) struct Machine {
    pub(crate) config: BreakerConfig,
    base: Instant,
    /// Read by every call, written on transitions only: kept off the lines every call writes
    /// (the `Arc`'s counts before the machine, the window's sequence).
    word: Padded<AtomicU64>,
    /// Nanoseconds since `base` at which an open circuit may let a probe through.
    open_until: AtomicU64,
    ramp_start: AtomicU64,
    ramp_seq: AtomicU64,
    consecutive: AtomicU32,
    window: Window,
    inner: Mutex<Inner>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// The RED handles of `metrics` when they record: registered while no recorder was
    /// installed, they are no-ops for life, and calls skip them.
    pub(crate) red: Option<RedMetrics>,
    /// Whether this machine owns the state gauge (a keyed breaker's keys do not).
    gauge: bool,
    pub(crate) needs_clock: bool,
    rejected: AtomicU64,
    /// The model's clock, in nanoseconds since `base`: real time would make loom's executions
    /// of one schedule differ. Set by the model before its threads run, never raced.
    #[cfg(loom)]
    clock: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("name", &self.config.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Nothing panics while the lock is held except a bug; the data stays consistent enough to
    // go on, so recover rather than poison every caller.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Machine {
    pub(crate) fn new(config: BreakerConfig) -> Machine {
        let metrics = config.metrics.then(|| Arc::new(Metrics::new(&config.name)));
        Machine::with_metrics(config, metrics, true)
    }

    pub(crate) fn with_metrics(
        config: BreakerConfig,
        metrics: Option<Arc<Metrics>>,
        gauge: bool,
    ) -> Machine {
        // From the handles this machine records into, not from the recorder installed now: a
        // keyed breaker builds machines long after its shared handles. Handles built inside
        // `tower_red::red::counts_only` record no duration: only the rules need the clock.
        let recording = metrics.as_ref().is_some_and(|m| m.red.records_durations());
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        Machine {
            base: Instant::now(),
            word: Padded(AtomicU64::new(CLOSED)),
            open_until: AtomicU64::new(0),
            ramp_start: AtomicU64::new(0),
            ramp_seq: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            window: Window::new(config.window),
            inner: Mutex::new(Inner {
                trips: 0,
                rng,
                probes: Probes::default(),
            }),
            notify: Arc::new(Notify::new()),
            red: metrics
                .as_ref()
                .map(|m| m.red.clone())
                .filter(RedMetrics::is_recording),
            metrics,
            gauge,
            needs_clock: config.needs_clock(recording),
            rejected: AtomicU64::new(0),
            #[cfg(loom)]
            clock: std::sync::atomic::AtomicU64::new(0),
            config,
        }
    }

    /// Nanoseconds since this machine was built, on tokio's clock.
    #[inline]
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    #[cfg(not(loom))]
    fn now(&self) -> u64 {
        self.nanos(Instant::now())
    }

    #[cfg(loom)]
    fn now(&self) -> u64 {
        // Relaxed: a std atomic the model sets before it spawns its threads or after it joins
        // them, which order the store before every load.
        self.clock.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }

    pub(crate) fn state(&self) -> State {
        State::from_bits(self.word.load(Ordering::Acquire))
    }

    pub(crate) fn counts(&self) -> Counts {
        self.window.counts(self.now())
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        // Relaxed: a reading for the handle; it publishes nothing else.
        self.consecutive.load(Ordering::Relaxed)
    }

    pub(crate) fn rejected_total(&self) -> u64 {
        // Relaxed: a statistic; it publishes nothing else.
        self.rejected.load(Ordering::Relaxed)
    }

    /// When an open circuit will let a probe through.
    pub(crate) fn open_until(&self) -> Instant {
        self.instant(self.open_until.load(Ordering::Acquire))
    }

    /// Decides whether a call may go now; a refusal is counted and reported to the hooks.
    #[inline]
    pub(crate) fn admit(&self) -> Result<Admission, Refusal> {
        let w = self.word.load(Ordering::Acquire);
        match w & STATE_MASK {
            CLOSED if w & RAMP == 0 => Ok(Admission {
                word: w,
                kind: Kind::Closed,
            }),
            _ => self.admit_slow(w, true),
        }
    }

    /// Whether `adm` was admitted under the current state (no transition since, a graded
    /// recovery's ramp aside).
    #[inline]
    pub(crate) fn is_current(&self, adm: Admission) -> bool {
        (self.word.load(Ordering::Acquire) ^ adm.word) & !RAMP == 0
    }

    /// Whether the circuit is closed (ramping up or not): one atomic load and one test, the
    /// closed path of `poll_ready`. A closed circuit refuses nothing without asking the lock
    /// (see [`refuses_now`](Self::refuses_now)).
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.word.load(Ordering::Acquire) & STATE_MASK == CLOSED
    }

    /// Whether a call made now would be refused without asking the lock: open with open time
    /// left, or forced open.
    pub(crate) fn refuses_now(&self) -> bool {
        let w = self.word.load(Ordering::Acquire);
        match w & STATE_MASK {
            FORCED_OPEN => true,
            OPEN => self.now() < self.open_until.load(Ordering::Acquire),
            _ => false,
        }
    }

    /// Like [`admit`](Self::admit), but a refusal is not reported: the caller waits instead.
    pub(crate) fn try_admit(&self) -> Result<Admission, Refusal> {
        self.admit_slow(self.word.load(Ordering::Acquire), false)
    }

    #[cold]
    fn admit_slow(&self, w: u64, report: bool) -> Result<Admission, Refusal> {
        let result = self.decide(w);
        if let (Err(refusal), true) = (&result, report) {
            self.report(refusal);
        }
        result
    }

    /// Counts a refused call (`rejected_calls`), logs it and tells the `on_rejection` hooks.
    pub(crate) fn report(&self, refusal: &Refusal) {
        // Relaxed: a statistic; the RMW alone keeps it exact.
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "tower_breaker",
            breaker = &*self.config.name,
            state = refusal.state.as_str(),
            retry_after_ms = refusal.retry_after.as_millis() as u64,
            "circuit breaker refused a call"
        );
        if !self.config.on_rejection.is_empty() {
            let event = Rejected {
                state: refusal.state,
                retry_after: Some(refusal.retry_after),
            };
            for hook in &self.config.on_rejection {
                hook(&event);
            }
        }
    }

    fn decide(&self, mut w: u64) -> Result<Admission, Refusal> {
        loop {
            let kind = match w & STATE_MASK {
                CLOSED if w & RAMP == 0 => Kind::Closed,
                CLOSED => return self.admit_ramp(w),
                DISABLED => Kind::Disabled,
                METRICS_ONLY => Kind::MetricsOnly,
                FORCED_OPEN => {
                    // No open time ends a forced open: say the configured one.
                    return Err(Refusal {
                        state: State::ForcedOpen,
                        retry_after: self.config.open_time.nominal(),
                    });
                }
                OPEN => {
                    let now = self.now();
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        return Err(Refusal {
                            state: State::Open,
                            retry_after: Duration::from_nanos(until - now),
                        });
                    }
                    match self.admit_locked(now) {
                        Some(result) => return result,
                        None => {
                            w = self.word.load(Ordering::Acquire);
                            continue;
                        }
                    }
                }
                _ => match self.admit_locked(self.now()) {
                    Some(result) => return result,
                    None => {
                        w = self.word.load(Ordering::Acquire);
                        continue;
                    }
                },
            };
            return Ok(Admission { word: w, kind });
        }
    }

    /// Open (with the open time passed) or half-open: decided under the lock. `None` when the
    /// state is neither any more.
    fn admit_locked(&self, now: u64) -> Option<Result<Admission, Refusal>> {
        let mut event = None;
        let result = {
            let mut inner = lock(&self.inner);
            let w = self.word.load(Ordering::Acquire);
            match w & STATE_MASK {
                OPEN => {
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        Err(Refusal {
                            state: State::Open,
                            retry_after: Duration::from_nanos(until - now),
                        })
                    } else {
                        let (word, t) = self.transition(
                            &mut inner,
                            w,
                            State::HalfOpen,
                            Reason::OpenTimeElapsed,
                            now,
                            None,
                        );
                        event = Some(t);
                        inner.probes.admitted = 1;
                        Ok(Admission {
                            word,
                            kind: Kind::Probe,
                        })
                    }
                }
                HALF_OPEN => {
                    let waited = now.saturating_sub(inner.probes.since);
                    if waited >= nanos_of(self.config.max_probe_wait) {
                        let (_, t) = self.transition(
                            &mut inner,
                            w,
                            State::Open,
                            Reason::ProbesHung,
                            now,
                            None,
                        );
                        let retry_after = t.open_for.unwrap_or_default();
                        event = Some(t);
                        Err(Refusal {
                            state: State::Open,
                            retry_after,
                        })
                    } else if inner.probes.admitted < self.config.permitted_probes {
                        inner.probes.admitted += 1;
                        Ok(Admission {
                            word: w,
                            kind: Kind::Probe,
                        })
                    } else {
                        // Every slot is busy: a slot frees, or the probes are declared hung,
                        // by then.
                        let left = nanos_of(self.config.max_probe_wait) - waited;
                        Err(Refusal {
                            state: State::HalfOpen,
                            retry_after: Duration::from_nanos(left),
                        })
                    }
                }
                _ => return None,
            }
        };
        if let Some(t) = event {
            self.emit(t);
        }
        Some(result)
    }

    /// Closed, ramping up after a recovery: admits the step's share of calls.
    fn admit_ramp(&self, w: u64) -> Result<Admission, Refusal> {
        let Some(ramp) = &self.config.graded_recovery else {
            return Ok(Admission {
                word: w,
                kind: Kind::Closed,
            });
        };
        let now = self.now();
        let elapsed = now.saturating_sub(self.ramp_start.load(Ordering::Acquire));
        let total = nanos_of(ramp.duration);
        if elapsed >= total {
            let mut inner = lock(&self.inner);
            if self
                .word
                .compare_exchange(w, w & !RAMP, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // The ramp ended without a trip: a healthy close.
                inner.trips = 0;
            }
            drop(inner);
            return Ok(Admission {
                word: w & !RAMP,
                kind: Kind::Closed,
            });
        }
        let steps = ramp.permille.len() as u64;
        let step = (u128::from(elapsed) * u128::from(steps) / u128::from(total.max(1))) as usize;
        // `elapsed < total`, so `step < steps`.
        let share = u64::from(ramp.permille[step.min(ramp.permille.len() - 1)]);
        // Relaxed: the RMW hands each call its own place in the ramp; nothing else is
        // published through it.
        let k = self.ramp_seq.fetch_add(1, Ordering::Relaxed);
        // Spread admissions evenly: admit when the running quota (rounded up, so the first
        // call of a ramp goes) crosses a whole call.
        if ((k + 1) * share).div_ceil(1000) > (k * share).div_ceil(1000) {
            Ok(Admission {
                word: w,
                kind: Kind::Closed,
            })
        } else {
            // The first nanosecond of the next step: rounded up, as `step` was rounded down,
            // so a refusal in a step's last nanosecond says "in 1 ns", never "now".
            let step_end =
                (u128::from(step as u64 + 1) * u128::from(total)).div_ceil(u128::from(steps));
            let step_end = u64::try_from(step_end).unwrap_or(u64::MAX);
            Err(Refusal {
                state: State::Closed,
                retry_after: Duration::from_nanos(step_end.saturating_sub(elapsed)),
            })
        }
    }

    /// Records how an admitted call ended: `None` when its classifier ignored it. The
    /// admission comes packed, as a permit carries it ([`Admission::pack`]): a closed one is
    /// recognised by one test of its bits, before anything is unpacked.
    #[inline]
    pub(crate) fn complete(&self, packed: u64, sample: Option<Sample>, now: u64) {
        if packed & KIND_BITS == (Kind::Closed as u64) << KIND_SHIFT {
            let adm = Admission {
                word: packed & !PACKED_BITS,
                kind: Kind::Closed,
            };
            self.complete_closed(adm, sample, now);
        } else {
            self.complete_other(Admission::unpack(packed), sample, now);
        }
    }

    /// The closed path: inline up to the window's record, the rest is rare.
    #[inline]
    fn complete_closed(&self, adm: Admission, sample: Option<Sample>, now: u64) {
        let w = self.word.load(Ordering::Acquire);
        if (w ^ adm.word) & !RAMP != 0 {
            return; // admitted before a transition: stale
        }
        let Some(sample) = sample else { return };
        if self.config.consecutive_failures.is_some() && self.count_consecutive(w, sample) {
            return;
        }
        let minimum = if w & RAMP != 0 {
            self.config.minimum_calls.min(self.config.permitted_probes)
        } else {
            self.config.minimum_calls
        };
        if self.window.record(sample, now, minimum) {
            self.check_rates(w, minimum, now);
        }
    }

    /// Counts a closed call towards the consecutive-failure limit; `true` when it tripped.
    #[inline(never)]
    fn count_consecutive(&self, w: u64, sample: Sample) -> bool {
        let Some(limit) = self.config.consecutive_failures else {
            return false;
        };
        // Relaxed: the streak is a counter read and written on its own; a success racing a
        // failure may reset it either side, which is the same as the calls finishing in the
        // other order. The trip itself is decided under the lock against the state word.
        if sample.failure {
            let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= limit {
                self.trip(w, Reason::ConsecutiveFailures, None);
                return true;
            }
        } else if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        false
    }

    /// The window asked for a check: trips when a rate is over its threshold.
    #[inline(never)]
    fn check_rates(&self, w: u64, minimum: u32, now: u64) {
        let counts = self.window.counts(now);
        if let Some(reason) = self.rates_trip(&counts, minimum) {
            let reason = if w & RAMP != 0 {
                Reason::RecoveryFailed
            } else {
                reason
            };
            self.trip(w, reason, Some(counts.failure_rate()));
        }
    }

    /// Every kind but closed.
    #[inline(never)]
    fn complete_other(&self, adm: Admission, sample: Option<Sample>, now: u64) {
        match adm.kind {
            Kind::Disabled | Kind::Closed => {}
            Kind::MetricsOnly => {
                if self.word.load(Ordering::Acquire) != adm.word {
                    return;
                }
                if let Some(sample) = sample {
                    // Relaxed: as in `count_consecutive`; never trips here.
                    if sample.failure {
                        self.consecutive.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.consecutive.store(0, Ordering::Relaxed);
                    }
                    self.window.record(sample, now, self.config.minimum_calls);
                }
            }
            Kind::Probe => self.complete_probe(adm, sample),
        }
    }

    #[inline(never)]
    fn rates_trip(&self, counts: &Counts, minimum: u32) -> Option<Reason> {
        if counts.calls < u64::from(minimum) || counts.calls == 0 {
            return None;
        }
        if counts.failure_rate() >= self.config.failure_rate_threshold {
            return Some(Reason::FailureRate);
        }
        if self.config.slow_call_duration.is_some()
            && counts.slow_rate() >= self.config.slow_call_rate_threshold
        {
            return Some(Reason::SlowCallRate);
        }
        None
    }

    #[inline(never)]
    fn complete_probe(&self, adm: Admission, sample: Option<Sample>) {
        let now = self.now();
        let event = {
            let mut inner = lock(&self.inner);
            let w = self.word.load(Ordering::Acquire);
            if w != adm.word {
                return; // the half-open period this probe belonged to is over
            }
            let Some(sample) = sample else {
                // Ignored: the slot goes back without a verdict.
                inner.probes.admitted = inner.probes.admitted.saturating_sub(1);
                drop(inner);
                self.notify.notify_waiters();
                return;
            };
            let p = &mut inner.probes;
            p.done += 1;
            p.failures += u32::from(sample.failure);
            p.slow += u32::from(sample.slow);
            if p.done < self.config.permitted_probes {
                return;
            }
            let counts = Counts {
                calls: u64::from(p.done),
                failures: u64::from(p.failures),
                slow: u64::from(p.slow),
            };
            let rate = Some(counts.failure_rate());
            let (_, t) = if self.rates_trip(&counts, 1).is_some() {
                self.transition(&mut inner, w, State::Open, Reason::ProbesFailed, now, rate)
            } else {
                self.transition(
                    &mut inner,
                    w,
                    State::Closed,
                    Reason::ProbesSucceeded,
                    now,
                    rate,
                )
            };
            t
        };
        self.emit(event);
    }

    /// A call's future was dropped before it finished: a probe gives its slot back, nothing is
    /// recorded.
    #[cold]
    pub(crate) fn cancel(&self, adm: Admission) {
        if adm.kind != Kind::Probe {
            return;
        }
        let mut inner = lock(&self.inner);
        if self.word.load(Ordering::Acquire) == adm.word {
            inner.probes.admitted = inner.probes.admitted.saturating_sub(1);
            drop(inner);
            self.notify.notify_waiters();
        }
    }

    #[cold]
    #[inline(never)]
    fn trip(&self, expected: u64, reason: Reason, failure_rate: Option<f64>) {
        // The call's end time is not read when nothing needs it: read the clock here, trips
        // are rare.
        let now = self.now();
        let event = {
            let mut inner = lock(&self.inner);
            let w = self.word.load(Ordering::Acquire);
            if (w ^ expected) & !RAMP != 0 {
                return; // someone else moved the state on
            }
            self.transition(&mut inner, w, State::Open, reason, now, failure_rate)
                .1
        };
        self.emit(event);
    }

    /// Moves to `to` by the handle's order.
    pub(crate) fn force(&self, to: State) {
        let event = {
            let mut inner = lock(&self.inner);
            let w = self.word.load(Ordering::Acquire);
            let now = self.now();
            if to == State::Closed {
                // A reset also forgets the open-time backoff.
                inner.trips = 0;
            }
            self.transition(&mut inner, w, to, Reason::Forced, now, None)
                .1
        };
        if event.from != event.to {
            self.emit(event);
        } else {
            self.notify.notify_waiters();
        }
    }

    /// Performs a transition; the caller holds the lock and emits the event after releasing it.
    fn transition(
        &self,
        inner: &mut Inner,
        w: u64,
        to: State,
        reason: Reason,
        now: u64,
        failure_rate: Option<f64>,
    ) -> (u64, Transition) {
        let from = State::from_bits(w);
        let mut new = ((w & !0xff) + EPOCH_ONE) | to as u64;
        let mut open_for = None;
        match to {
            State::Open => {
                let d = self.open_time(inner);
                inner.trips = inner.trips.saturating_add(1);
                self.open_until
                    .store(now.saturating_add(nanos_of(d)), Ordering::Release);
                open_for = Some(d);
            }
            State::HalfOpen => {
                inner.probes = Probes {
                    since: now,
                    ..Probes::default()
                };
            }
            State::Closed | State::MetricsOnly | State::Disabled => {
                self.window.reset();
                // Relaxed: calls admitted before this transition are stale and not counted;
                // the state word's release store below publishes the new epoch.
                self.consecutive.store(0, Ordering::Relaxed);
                if to == State::Closed && from == State::HalfOpen {
                    if self.config.graded_recovery.is_some() {
                        self.ramp_start.store(now, Ordering::Release);
                        // Relaxed: published by the state word's release store below.
                        self.ramp_seq.store(0, Ordering::Relaxed);
                        new |= RAMP;
                    } else {
                        inner.trips = 0;
                    }
                }
            }
            State::ForcedOpen => {}
        }
        self.word.store(new, Ordering::Release);
        (
            new,
            Transition {
                name: self.config.name.clone(),
                from,
                to,
                reason,
                open_for,
                failure_rate,
            },
        )
    }

    fn open_time(&self, inner: &mut Inner) -> Duration {
        match self.config.open_time {
            OpenTime::Fixed(d) => d,
            OpenTime::Exponential {
                initial,
                multiplier,
                max,
                jitter,
            } => {
                let exp = i32::try_from(inner.trips).unwrap_or(i32::MAX).min(1_000);
                let grown = initial.as_secs_f64() * multiplier.powi(exp);
                let capped = grown.min(max.as_secs_f64());
                let off: f64 = if jitter > 0.0 {
                    inner.rng.random::<f64>() * jitter
                } else {
                    0.0
                };
                Duration::from_secs_f64((capped * (1.0 - off)).max(1e-9))
            }
        }
    }

    fn emit(&self, t: Transition) {
        if let Some(m) = &self.metrics {
            m.transition(t.from, t.to, self.gauge);
        }
        tracing::info!(
            target: "tower_breaker",
            breaker = &*t.name,
            from = t.from.as_str(),
            to = t.to.as_str(),
            reason = t.reason.as_str(),
            open_for_ms = t.open_for.map(|d| d.as_millis() as u64),
            failure_rate = t.failure_rate,
            "circuit breaker transition"
        );
        for hook in &self.config.on_transition {
            hook(&t);
        }
        self.notify.notify_waiters();
    }
}

fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(all(test, loom))]
mod loom_models {
    //! Every interleaving of calls racing a transition, where only the second look under the
    //! lock sees that the state moved on. Run with
    //! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p tower-breaker --release --lib loom`
    //! (in a target directory of its own: the flag rebuilds every dependency).

    use loom::sync::Arc;
    use loom::thread;

    use super::*;
    use crate::BreakerLayer;

    const OPEN_FOR: Duration = Duration::from_secs(60);
    const PROBE_WAIT: Duration = Duration::from_secs(30);
    /// When the model's circuit trips.
    const TRIPPED_AT: u64 = 1_000_000_000;
    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };

    /// The transitions the hook saw. A std lock: the hook runs outside the machine's lock and
    /// holds this one across no operation of the model.
    type Log = std::sync::Arc<std::sync::Mutex<Vec<(State, State)>>>;

    /// A circuit that trips on one failure and admits one probe at a time.
    fn machine() -> (Arc<Machine>, Log) {
        let log = Log::default();
        let seen = log.clone();
        let config = BreakerLayer::builder()
            .name("loom")
            .metrics(false)
            .seed(1)
            .consecutive_failures(1)
            .open_time(OPEN_FOR)
            .permitted_probes(1)
            .max_probe_wait(PROBE_WAIT)
            .on_transition(move |t| seen.lock().unwrap().push((t.from, t.to)))
            .build_config()
            .expect("a valid configuration");
        (Arc::new(Machine::new(config)), log)
    }

    fn set_clock(m: &Machine, nanos: u64) {
        // Relaxed: see `Machine::now`; no other thread runs yet.
        m.clock.store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    /// A circuit that tripped at `TRIPPED_AT`, its open time just over: the next call probes.
    fn open_time_over() -> (Arc<Machine>, Log) {
        let (m, log) = machine();
        set_clock(&m, TRIPPED_AT);
        let call = m.admit().expect("a closed circuit admits");
        m.complete(call.pack(), Some(FAIL), TRIPPED_AT);
        set_clock(&m, TRIPPED_AT + nanos_of(OPEN_FOR));
        (m, log)
    }

    /// A call made now, failing if it goes.
    fn failing_call(m: &Machine) -> Result<Kind, Refusal> {
        let adm = m.admit()?;
        m.complete(adm.pack(), Some(FAIL), m.now());
        Ok(adm.kind)
    }

    #[test]
    fn loom_two_failures_racing_to_trip_open_the_circuit_once() {
        loom::model(|| {
            let (m, log) = machine();
            set_clock(&m, TRIPPED_AT);
            let mine = m.admit().expect("a closed circuit admits");
            let theirs = m.admit().expect("a closed circuit admits");
            let other = {
                let m = m.clone();
                thread::spawn(move || m.complete(theirs.pack(), Some(FAIL), TRIPPED_AT))
            };
            m.complete(mine.pack(), Some(FAIL), TRIPPED_AT);
            other.join().unwrap();
            // Both may pass the stale check before either trips: the second trip must see,
            // under the lock, that the first moved the state on.
            assert_eq!(
                *log.lock().unwrap(),
                [(State::Closed, State::Open)],
                "the state moved once"
            );
            assert_eq!(
                m.word.load(Ordering::Acquire),
                EPOCH_ONE | OPEN,
                "one epoch"
            );
            assert_eq!(lock(&m.inner).trips, 1, "one trip towards the backoff");
        });
    }

    #[test]
    fn loom_a_call_racing_a_failed_probe_is_refused_for_the_new_open_time() {
        loom::model(|| {
            let (m, log) = open_time_over();
            let other = {
                let m = m.clone();
                thread::spawn(move || failing_call(&m))
            };
            let mine = failing_call(&m);
            let theirs = other.join().unwrap();
            // One takes the probe slot and fails it. The other is refused: half-open while the
            // probe runs, open again after it, even when it saw the old open time over before
            // it took the lock, and then for the whole new open time from now.
            let mut probes = 0;
            for result in [mine, theirs] {
                match result {
                    Ok(kind) => {
                        assert_eq!(kind, Kind::Probe);
                        probes += 1;
                    }
                    Err(Refusal {
                        state: State::Open,
                        retry_after,
                    }) => assert_eq!(
                        retry_after, OPEN_FOR,
                        "refused open: the new open time from now"
                    ),
                    Err(Refusal {
                        state: State::HalfOpen,
                        retry_after,
                    }) => assert_eq!(retry_after, PROBE_WAIT, "refused half-open: the probe wait"),
                    Err(refusal) => panic!("{refusal:?}"),
                }
            }
            assert_eq!(probes, 1, "one probe slot");
            assert_eq!(
                *log.lock().unwrap(),
                [
                    (State::Closed, State::Open),
                    (State::Open, State::HalfOpen),
                    (State::HalfOpen, State::Open),
                ]
            );
        });
    }

    #[test]
    fn loom_a_probe_cancelled_racing_an_admission_hands_its_slot_over_once() {
        loom::model(|| {
            let (m, _) = open_time_over();
            let probe = m.admit().expect("the open time is over: a probe");
            assert_eq!(probe.kind, Kind::Probe);
            let canceller = {
                let m = m.clone();
                thread::spawn(move || m.cancel(probe))
            };
            let mine = m.admit();
            canceller.join().unwrap();
            match mine {
                // After the cancel: the slot it gave back.
                Ok(adm) => assert_eq!(adm.kind, Kind::Probe),
                // Before: the slot comes back for the next call.
                Err(refusal) => {
                    assert_eq!(
                        (refusal.state, refusal.retry_after),
                        (State::HalfOpen, PROBE_WAIT)
                    );
                    assert_eq!(m.admit().map(|a| a.kind), Ok(Kind::Probe));
                }
            }
            assert_eq!(lock(&m.inner).probes.admitted, 1, "one slot, held once");
            assert!(m.admit().is_err(), "two probes in one slot");
        });
    }
}
