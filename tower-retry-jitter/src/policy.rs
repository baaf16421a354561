//! The retry decision: after a failed attempt, retry after some delay or stop, and why.
//!
//! [`RetryPolicy::decide`] puts the parts together, in this order:
//!
//! 1. **Attempts**: no retry once `max_attempts` attempts were made ([`Stop::Attempts`]).
//! 2. **Pushback**: a server's "do not retry" stops ([`Stop::Pushback`]); a server's delay
//!    replaces the computed backoff, unless it is longer than the backoff's cap, which also
//!    stops ([`Stop::PushbackOverCap`]): the caller gets the last response as it was.
//! 3. **Deadline**: no sleep and no attempt starts that cannot finish before the request's
//!    deadline, judged by the latency of the attempt that just failed ([`Stop::Deadline`]).
//! 4. **Budget**: asked last, so a retry stopped for any other reason is never paid for
//!    ([`Stop::Budget`]). A retry decided but then not sent (its caller left during the
//!    backoff, the request could not be copied, the service failed to become ready) is given
//!    back with [`RetryBudget::refund`], as the retry layer does: the budget pays only for
//!    retries that go.
//!
//! Pure: the time, the deadline and the random numbers are passed in, and a decision takes no
//! lock and allocates nothing.
//!
//! ```
//! use std::time::Duration;
//! use tower_red::classify::FailureClass;
//! use tower_retry_jitter::policy::{Decision, Failure, RetryState, Stop};
//! use tower_retry_jitter::{Jitter, Pushback, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let policy = RetryPolicy::builder()
//!     .jitter(Jitter::None)
//!     .no_budget()
//!     .build()
//!     .expect("valid");
//! let now = tokio::time::Instant::now();
//! let mut rng = policy.rng();
//! let mut state = RetryState::new(); // the first attempt is out
//! let failed = Failure::new(FailureClass::Timeout);
//! assert_eq!(
//!     policy.decide(&mut state, failed, now, None, &mut rng),
//!     Decision::Retry(Duration::from_millis(100)),
//! );
//! let told = failed.with_pushback(Pushback::Delay(Duration::from_secs(1)));
//! assert_eq!(
//!     policy.decide(&mut state, told, now, None, &mut rng),
//!     Decision::Retry(Duration::from_secs(1)),
//! );
//! assert_eq!(policy.decide(&mut state, failed, now, None, &mut rng), Decision::Stop(Stop::Attempts));
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tower_red::classify::FailureClass;
use tower_timeout_budget::Deadline;

use crate::backoff::{Backoff, BackoffState, Seeds};
use crate::budget::RetryBudget;
use crate::config::RetryPolicyBuilder;
use crate::pushback::Pushback;

/// The whole retry policy: how many attempts, the backoff between them, the budget they
/// draw on and the random numbers of the jitter. Built by [`RetryPolicy::builder`]; clones
/// share the budget and the seeds.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    budget: Option<RetryBudget>,
    seeds: Arc<Seeds>,
}

/// A failed attempt, as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    class: FailureClass,
    pushback: Pushback,
    latency: Duration,
}

impl Failure {
    /// An attempt that failed with this class, no pushback, no latency known.
    pub fn new(class: FailureClass) -> Self {
        Failure {
            class,
            pushback: Pushback::Absent,
            latency: Duration::ZERO,
        }
    }

    /// What the server said about retrying (see [`crate::pushback`]).
    pub fn with_pushback(mut self, pushback: Pushback) -> Self {
        self.pushback = pushback;
        self
    }

    /// How long the failed attempt took: the next attempt is expected to take as long.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Why the attempt failed.
    pub fn class(&self) -> FailureClass {
        self.class
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sleep this long, then send the next attempt.
    Retry(Duration),
    /// Return the last response or error as it was.
    Stop(Stop),
}

/// Why a failed attempt is not retried. A small, bounded set: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stop {
    /// `max_attempts` attempts were made.
    Attempts,
    /// The server said not to retry (a negative or malformed gRPC pushback).
    Pushback,
    /// The server asked for a delay longer than the backoff's cap.
    PushbackOverCap,
    /// The delay and another attempt would not finish before the request's deadline.
    Deadline,
    /// The retry budget is spent.
    Budget,
}

impl Stop {
    /// A snake_case name, for metric labels and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Stop::Attempts => "attempts",
            Stop::Pushback => "pushback",
            Stop::PushbackOverCap => "pushback_over_cap",
            Stop::Deadline => "deadline",
            Stop::Budget => "budget",
        }
    }
}

/// Where one request is in its retries: attempts made and the backoff sequence. `Copy` and a
/// few words, kept in the request's future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryState {
    attempts: u32,
    backoff: BackoffState,
}

impl Default for RetryState {
    fn default() -> Self {
        RetryState::new()
    }
}

impl RetryState {
    /// The state once the first attempt is sent.
    pub const fn new() -> Self {
        RetryState {
            attempts: 1,
            backoff: BackoffState::new(),
        }
    }

    /// Attempts made (or decided on), the first included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The backoff sequence so far.
    pub fn backoff(&self) -> &BackoffState {
        &self.backoff
    }
}

impl RetryPolicy {
    pub(crate) fn from_parts(
        max_attempts: u32,
        backoff: Backoff,
        budget: Option<RetryBudget>,
        seeds: Arc<Seeds>,
    ) -> Self {
        RetryPolicy {
            max_attempts,
            backoff,
            budget,
            seeds,
        }
    }

    /// A builder with the defaults: 3 attempts, the
    /// [`BackoffBuilder`](crate::config::BackoffBuilder) defaults (Full jitter), a fresh budget
    /// with the [`BudgetBuilder`](crate::config::BudgetBuilder) defaults, randomness from the
    /// OS.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder::default()
    }

    /// The most attempts per request, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff between attempts.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The budget retries draw on, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.budget.as_ref()
    }

    /// A fresh random number generator for one request's jitter; see [`Seeds`]. Make it when
    /// the request first fails, not before: a request that never retries needs none.
    pub fn rng(&self) -> SmallRng {
        self.seeds.rng()
    }

    /// Decides what follows the failed attempt `failure` at `now`, for a request with this
    /// `deadline` (if any); see the [module docs](self) for the order of the checks. On
    /// [`Decision::Retry`] the state counts the next attempt and the budget has paid for it;
    /// if that attempt is not sent after all, give it back with
    /// [`RetryBudget::refund`]`(failure.class(), now)`.
    pub fn decide<R: Rng + ?Sized>(
        &self,
        state: &mut RetryState,
        failure: Failure,
        now: Instant,
        deadline: Option<Deadline>,
        rng: &mut R,
    ) -> Decision {
        if state.attempts >= self.max_attempts {
            return Decision::Stop(Stop::Attempts);
        }
        let mut backoff = state.backoff;
        let delay = match failure.pushback {
            Pushback::Stop => return Decision::Stop(Stop::Pushback),
            Pushback::Delay(delay) if delay > self.backoff.cap() => {
                return Decision::Stop(Stop::PushbackOverCap);
            }
            Pushback::Delay(delay) => {
                backoff.record(delay);
                delay
            }
            Pushback::Absent => self.backoff.next_delay(&mut backoff, rng),
        };
        if let Some(deadline) = deadline {
            let done = now
                .checked_add(delay)
                .and_then(|t| t.checked_add(failure.latency));
            if done.is_none_or(|done| done > deadline.instant()) {
                return Decision::Stop(Stop::Deadline);
            }
        }
        if let Some(budget) = &self.budget
            && !budget.try_retry(failure.class, now)
        {
            return Decision::Stop(Stop::Budget);
        }
        state.attempts += 1;
        state.backoff = backoff;
        Decision::Retry(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;
    use proptest::prelude::*;

    fn policy(max_attempts: u32, jitter: Jitter, budget: Option<RetryBudget>) -> RetryPolicy {
        let b = RetryPolicy::builder()
            .max_attempts(max_attempts)
            .base(Duration::from_millis(10))
            .cap(Duration::from_secs(1))
            .jitter(jitter)
            .seed(1);
        match budget {
            Some(budget) => b.budget(budget),
            None => b.no_budget(),
        }
        .build()
        .expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_max_attempts() {
        let p = policy(3, Jitter::None, None);
        let (now, mut rng, mut state) = (Instant::now(), p.rng(), RetryState::new());
        let f = Failure::new(FailureClass::Error);
        assert_eq!(
            p.decide(&mut state, f, now, None, &mut rng),
            Decision::Retry(Duration::from_millis(10))
        );
        assert_eq!(
            p.decide(&mut state, f, now, None, &mut rng),
            Decision::Retry(Duration::from_millis(20))
        );
        assert_eq!(state.attempts(), 3);
        assert_eq!(
            p.decide(&mut state, f, now, None, &mut rng),
            Decision::Stop(Stop::Attempts)
        );
        let once = policy(1, Jitter::None, None);
        assert_eq!(
            once.decide(&mut RetryState::new(), f, now, None, &mut rng),
            Decision::Stop(Stop::Attempts)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pushback_replaces_the_backoff_or_stops() {
        let p = policy(5, Jitter::None, None);
        let (now, mut rng) = (Instant::now(), p.rng());
        let f = Failure::new(FailureClass::Error);
        let mut state = RetryState::new();
        let told = f.with_pushback(Pushback::Delay(Duration::from_millis(700)));
        assert_eq!(
            p.decide(&mut state, told, now, None, &mut rng),
            Decision::Retry(Duration::from_millis(700))
        );
        // The backoff sequence moved on: the next computed delay is the second one.
        assert_eq!(
            p.decide(&mut state, f, now, None, &mut rng),
            Decision::Retry(Duration::from_millis(20))
        );
        let over = f.with_pushback(Pushback::Delay(Duration::from_millis(1001)));
        assert_eq!(
            p.decide(&mut state, over, now, None, &mut rng),
            Decision::Stop(Stop::PushbackOverCap)
        );
        let stop = f.with_pushback(Pushback::Stop);
        assert_eq!(
            p.decide(&mut state, stop, now, None, &mut rng),
            Decision::Stop(Stop::Pushback)
        );
        assert_eq!(state.attempts(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pushback_of_exactly_the_cap_is_obeyed_and_counts_in_the_backoff_sequence() {
        let p = policy(5, Jitter::None, None);
        let (now, mut rng) = (Instant::now(), p.rng());
        let mut state = RetryState::new();
        assert_eq!(state.backoff().retries(), 0);
        let told =
            Failure::new(FailureClass::Error).with_pushback(Pushback::Delay(p.backoff().cap()));
        assert_eq!(
            p.decide(&mut state, told, now, None, &mut rng),
            Decision::Retry(Duration::from_secs(1)),
            "the cap itself is not over the cap"
        );
        assert_eq!(state.backoff().retries(), 1);
        assert_eq!(state.backoff().previous(), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_that_cannot_finish_before_the_deadline() {
        let p = policy(5, Jitter::None, None);
        let (now, mut rng) = (Instant::now(), p.rng());
        let deadline = Some(Deadline::at(now + Duration::from_millis(60)));
        let f = Failure::new(FailureClass::Timeout).with_latency(Duration::from_millis(50));
        let mut state = RetryState::new();
        // 10 ms of backoff + 50 ms of attempt = exactly the deadline: fine.
        assert_eq!(
            p.decide(&mut state, f, now, deadline, &mut rng),
            Decision::Retry(Duration::from_millis(10))
        );
        // 20 ms + 50 ms is past it.
        assert_eq!(
            p.decide(&mut state, f, now, deadline, &mut rng),
            Decision::Stop(Stop::Deadline)
        );
        let far = Some(Deadline::after_from(now, Duration::MAX));
        assert!(matches!(
            p.decide(&mut state, f, now, far, &mut rng),
            Decision::Retry(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_pays_only_for_retries_that_go() {
        let budget = RetryBudget::builder()
            .ratio(0.0)
            .min_per_second(1)
            .window(Duration::from_secs(1))
            .buckets(1)
            .build()
            .expect("valid");
        let p = policy(5, Jitter::None, Some(budget.clone()));
        let (now, mut rng) = (Instant::now(), p.rng());
        let f = Failure::new(FailureClass::Error);
        let stop = f.with_pushback(Pushback::Stop);
        assert_eq!(
            p.decide(&mut RetryState::new(), stop, now, None, &mut rng),
            Decision::Stop(Stop::Pushback)
        );
        let spent = Some(Deadline::at(now));
        assert_eq!(
            p.decide(&mut RetryState::new(), f, now, spent, &mut rng),
            Decision::Stop(Stop::Deadline)
        );
        assert_eq!(budget.balance(now), 1.0);
        let mut state = RetryState::new();
        assert!(matches!(
            p.decide(&mut state, f, now, None, &mut rng),
            Decision::Retry(_)
        ));
        assert_eq!(
            p.decide(&mut state, f, now, None, &mut rng),
            Decision::Stop(Stop::Budget)
        );
        assert_eq!(state.attempts(), 2);
        assert_eq!(Stop::Budget.as_str(), "budget");
    }

    #[test]
    fn stop_reasons_have_stable_labels() {
        let labels = [
            Stop::Attempts,
            Stop::Pushback,
            Stop::PushbackOverCap,
            Stop::Deadline,
            Stop::Budget,
        ]
        .map(Stop::as_str);
        assert_eq!(
            labels,
            [
                "attempts",
                "pushback",
                "pushback_over_cap",
                "deadline",
                "budget"
            ]
        );
    }

    fn any_pushback() -> impl Strategy<Value = Pushback> {
        prop_oneof![
            4 => Just(Pushback::Absent),
            1 => Just(Pushback::Stop),
            2 => (0u64..2_000).prop_map(|ms| Pushback::Delay(Duration::from_millis(ms))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the failures, pushbacks and deadline: at most `max_attempts` attempts, no
        /// delay over the cap, no retry that ends past the deadline, a server's delay obeyed
        /// exactly, a server's stop obeyed, and the budget charged only for retries that go.
        #[test]
        fn decisions_respect_every_bound(
            max_attempts in 1u32..8,
            jitter in prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Decorrelated), Just(Jitter::Grpc)],
            budget_floor in 0u32..6,
            deadline_ms in proptest::option::of(0u64..3_000),
            failures in proptest::collection::vec((any_pushback(), 0u64..500), 1..12),
        ) {
            let budget = RetryBudget::builder()
                .ratio(0.0)
                .min_per_second(budget_floor)
                .window(Duration::from_secs(1))
                .build()
                .expect("valid");
            let p = policy(max_attempts, jitter, Some(budget.clone()));
            let start = Instant::now();
            let deadline = deadline_ms.map(|ms| Deadline::at(start + Duration::from_millis(ms)));
            let mut rng = p.rng();
            let mut state = RetryState::new();
            let mut now = start;
            let mut retries = 0;
            for (pushback, latency) in failures {
                let latency = Duration::from_millis(latency);
                now += latency;
                let before = budget.balance(now);
                let f = Failure::new(FailureClass::Error).with_pushback(pushback).with_latency(latency);
                match p.decide(&mut state, f, now, deadline, &mut rng) {
                    Decision::Retry(delay) => {
                        retries += 1;
                        prop_assert!(delay <= p.backoff().cap());
                        if let Pushback::Delay(d) = pushback {
                            prop_assert_eq!(delay, d);
                        }
                        prop_assert!(pushback != Pushback::Stop);
                        if let Some(deadline) = deadline {
                            prop_assert!(now + delay + latency <= deadline.instant());
                        }
                        prop_assert_eq!(budget.balance(now), before - 1.0);
                        now += delay;
                    }
                    Decision::Stop(why) => {
                        prop_assert_eq!(budget.balance(now), before);
                        match why {
                            Stop::Attempts => prop_assert_eq!(state.attempts(), max_attempts),
                            Stop::Pushback => prop_assert_eq!(pushback, Pushback::Stop),
                            Stop::PushbackOverCap => prop_assert!(matches!(pushback, Pushback::Delay(d) if d > p.backoff().cap())),
                            Stop::Deadline => prop_assert!(deadline.is_some()),
                            Stop::Budget => prop_assert!(before < 1.0),
                        }
                    }
                }
                prop_assert_eq!(state.attempts(), 1 + retries);
                prop_assert!(state.attempts() <= max_attempts);
            }
            // The floor refills as the one-second window slides.
            let windows = u32::try_from((now - start).as_secs()).expect("short") + 1;
            prop_assert!(retries <= budget_floor * windows);
        }
    }
}
