//! Builders for the retry policy and its parts, validated when built.
//!
//! Every builder returns `Result<_, tower_red::ConfigError>` naming the layer
//! ([`names::layer::RETRY`](tower_red::names::layer::RETRY)), the bad setting as its builder
//! method spells it, the value and why it cannot work.
//!
//! ```
//! use std::time::Duration;
//! use tower_retry_jitter::backoff::Jitter;
//! use tower_retry_jitter::RetryPolicy;
//!
//! let policy = RetryPolicy::builder().build().expect("the defaults are valid");
//! assert_eq!(policy.max_attempts(), 3);
//! assert_eq!(policy.backoff().jitter(), Jitter::Full);
//!
//! let err = RetryPolicy::builder()
//!     .base(Duration::from_secs(2))
//!     .cap(Duration::from_secs(1))
//!     .build()
//!     .unwrap_err();
//! assert_eq!(err.layer(), "retry");
//! assert_eq!(err.field(), "base");
//! assert_eq!(err.value(), "2s");
//! assert_eq!(err.to_string(), "invalid retry config: base = 2s: must not exceed cap (1s)");
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower_red::ConfigError;
use tower_red::names::layer::RETRY;

use crate::backoff::{Backoff, Jitter, MAX_STEPS_TO_CAP, Seeds, saturating_nanos};
use crate::budget::{MILLI, RetryBudget, RetryCost};
use crate::layer::RetryLayer;
use crate::policy::RetryPolicy;
use crate::replay::{BufferBody, CloneRequest};
use crate::retry_on::RetryOn;
use crate::safety::{AlwaysSafe, Idempotent, SafeFn, safe_if};
use tower_red::classify::AnyError;

fn error(
    field: &'static str,
    value: impl std::fmt::Debug,
    reason: impl Into<std::borrow::Cow<'static, str>>,
) -> ConfigError {
    ConfigError::new(RETRY, field, value, reason)
}

/// Builds a [`Backoff`]. Defaults: base 100 ms, multiplier 2, cap 10 s, [`Jitter::Full`].
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct BackoffBuilder {
    base: Duration,
    multiplier: f64,
    cap: Duration,
    jitter: Jitter,
}

impl Default for BackoffBuilder {
    fn default() -> Self {
        BackoffBuilder {
            base: Duration::from_millis(100),
            multiplier: 2.0,
            cap: Duration::from_secs(10),
            jitter: Jitter::Full,
        }
    }
}

impl BackoffBuilder {
    /// The un-jittered delay before the first retry (and the least delay of
    /// [`Jitter::Decorrelated`]). Must be positive and at most the cap.
    pub fn base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The factor the un-jittered delay grows by at each retry: at least 1 (1 is a constant
    /// delay), finite, and not so close to 1 that the delay needs more than 10,000 retries to
    /// reach the cap.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The most any delay can be, jitter included.
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// The jitter mode.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Backoff, ConfigError> {
        if self.base.is_zero() {
            return Err(error(
                "base",
                self.base,
                "must be positive: a zero delay never grows",
            ));
        }
        if self.base > self.cap {
            return Err(error(
                "base",
                self.base,
                format!("must not exceed cap ({:?})", self.cap),
            ));
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(error(
                "multiplier",
                self.multiplier,
                "must be a finite number of at least 1",
            ));
        }
        Backoff::from_parts(
            saturating_nanos(self.base),
            saturating_nanos(self.cap),
            self.multiplier,
            self.jitter,
        )
        .ok_or_else(|| {
            error(
                "multiplier",
                self.multiplier,
                format!(
                    "so close to 1 that the delay takes more than {MAX_STEPS_TO_CAP} retries to grow \
                     from base ({:?}) to cap ({:?}); use 1 for a constant delay",
                    self.base, self.cap
                ),
            )
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum BudgetChoice {
    Ratio {
        ratio: f64,
        min_per_second: u32,
        window: Duration,
        buckets: u32,
    },
    GrpcThrottling {
        max_tokens: f64,
        token_ratio: f64,
    },
    Quota {
        max_tokens: u32,
        success_credit: f64,
    },
}

/// Builds a [`RetryBudget`]. The kind is the last one chosen:
///
/// - [`ratio`](Self::ratio) (the default): Finagle's defaults, 20% of requests plus 10 retries
///   per second over a 10 s window of 10 buckets, each retry costing 1.
/// - [`grpc_throttling`](Self::grpc_throttling): gRPC A6; each failure costs 1 token.
/// - [`quota`](Self::quota): the AWS SDKs' quota; costs [`RetryCost::AWS_2026`], one token back
///   per success.
///
/// [`cost`](Self::cost) overrides the kind's cost. Settings of another kind are ignored.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct BudgetBuilder {
    choice: BudgetChoice,
    cost: Option<RetryCost>,
}

const FINAGLE_RATIO: BudgetChoice = BudgetChoice::Ratio {
    ratio: 0.2,
    min_per_second: 10,
    window: Duration::from_secs(10),
    buckets: 10,
};

impl Default for BudgetBuilder {
    fn default() -> Self {
        BudgetBuilder {
            choice: FINAGLE_RATIO,
            cost: None,
        }
    }
}

/// The longest ratio window.
const MAX_WINDOW: Duration = Duration::from_secs(86_400);

impl BudgetBuilder {
    fn ratio_fields(&mut self) -> (&mut f64, &mut u32, &mut Duration, &mut u32) {
        if !matches!(self.choice, BudgetChoice::Ratio { .. }) {
            self.choice = FINAGLE_RATIO;
        }
        match &mut self.choice {
            BudgetChoice::Ratio {
                ratio,
                min_per_second,
                window,
                buckets,
            } => (ratio, min_per_second, window, buckets),
            _ => unreachable!("set to a ratio just above"),
        }
    }

    /// A ratio budget allowing `ratio` retries per request (0.1 = 10%), in `[0, 1000]`, kept
    /// to three decimals (rounded to the nearest thousandth).
    pub fn ratio(mut self, ratio: f64) -> Self {
        *self.ratio_fields().0 = ratio;
        self
    }

    /// A ratio budget's floor: retries per second allowed whatever the requests.
    pub fn min_per_second(mut self, min_per_second: u32) -> Self {
        *self.ratio_fields().1 = min_per_second;
        self
    }

    /// How long a ratio budget's deposits and withdrawals count: from 1 ms to one day.
    pub fn window(mut self, window: Duration) -> Self {
        *self.ratio_fields().2 = window;
        self
    }

    /// How many buckets a ratio budget's window is divided in (1 to 1000): it slides by
    /// `window / buckets`.
    pub fn buckets(mut self, buckets: u32) -> Self {
        *self.ratio_fields().3 = buckets;
        self
    }

    /// gRPC A6 throttling: `max_tokens` in `(0, 1000]`, `token_ratio` positive; both kept to
    /// three decimals (rounded), as A6 specifies.
    pub fn grpc_throttling(mut self, max_tokens: f64, token_ratio: f64) -> Self {
        self.choice = BudgetChoice::GrpcThrottling {
            max_tokens,
            token_ratio,
        };
        self
    }

    /// A quota of `max_tokens` tokens (the AWS SDKs use 500), one token back per success.
    pub fn quota(mut self, max_tokens: u32) -> Self {
        self.choice = BudgetChoice::Quota {
            max_tokens,
            success_credit: 1.0,
        };
        self
    }

    /// What a quota gets back per success (three decimals); selects a 500-token quota if no
    /// quota was chosen.
    pub fn success_credit(mut self, credit: f64) -> Self {
        match &mut self.choice {
            BudgetChoice::Quota { success_credit, .. } => *success_credit = credit,
            _ => {
                self.choice = BudgetChoice::Quota {
                    max_tokens: 500,
                    success_credit: credit,
                }
            }
        }
        self
    }

    /// What a retry costs, by failure class.
    pub fn cost(mut self, cost: RetryCost) -> Self {
        self.cost = Some(cost);
        self
    }

    /// Validates and builds a budget whose window starts now.
    pub fn build(self) -> Result<RetryBudget, ConfigError> {
        self.build_at(Instant::now())
    }

    /// Validates and builds a budget whose window starts at `epoch`.
    pub fn build_at(self, epoch: Instant) -> Result<RetryBudget, ConfigError> {
        match self.choice {
            BudgetChoice::Ratio {
                ratio,
                min_per_second,
                window,
                buckets,
            } => {
                if !(0.0..=1000.0).contains(&ratio) {
                    return Err(error("ratio", ratio, "must be in [0, 1000]"));
                }
                if window < Duration::from_millis(1) || window > MAX_WINDOW {
                    return Err(error("window", window, "must be from 1ms to 1 day"));
                }
                if !(1..=1000).contains(&buckets) {
                    return Err(error("buckets", buckets, "must be in [1, 1000]"));
                }
                let window_nanos = saturating_nanos(window);
                // At most 4.3e9 × 8.64e7 ms: fits an i64.
                let reserve = u128::from(min_per_second) * u128::from(window_nanos) / 1_000_000;
                Ok(RetryBudget::ratio(
                    milli(ratio),
                    i64::try_from(reserve).unwrap_or(i64::MAX),
                    window_nanos,
                    buckets,
                    self.cost.unwrap_or_default(),
                    epoch,
                ))
            }
            BudgetChoice::GrpcThrottling {
                max_tokens,
                token_ratio,
            } => {
                if !(max_tokens > 0.0 && max_tokens <= 1000.0) || milli(max_tokens) == 0 {
                    return Err(error(
                        "max_tokens",
                        max_tokens,
                        "must be in (0, 1000] with three decimals",
                    ));
                }
                if !(token_ratio.is_finite() && token_ratio > 0.0) || milli(token_ratio) == 0 {
                    return Err(error(
                        "token_ratio",
                        token_ratio,
                        "must be at least 0.001 (A6 keeps three decimals)",
                    ));
                }
                Ok(RetryBudget::throttle(
                    milli(max_tokens),
                    milli(token_ratio),
                    self.cost.unwrap_or_default(),
                ))
            }
            BudgetChoice::Quota {
                max_tokens,
                success_credit,
            } => {
                if max_tokens == 0 {
                    return Err(error("quota", max_tokens, "must be positive"));
                }
                if !(0.0..=1e9).contains(&success_credit) {
                    return Err(error(
                        "success_credit",
                        success_credit,
                        "must be in [0, 1e9]",
                    ));
                }
                Ok(RetryBudget::quota(
                    i64::from(max_tokens) * MILLI,
                    milli(success_credit),
                    self.cost.unwrap_or(RetryCost::AWS_2026),
                ))
            }
        }
    }
}

/// Thousandths, rounded to the nearest: `0.29 * 1000` is `289.99…` in floating point.
fn milli(x: f64) -> i64 {
    (x * MILLI as f64).round() as i64
}

#[derive(Debug, Clone)]
enum BudgetSetting {
    Default,
    None,
    Given(RetryBudget),
}

/// Builds a [`RetryPolicy`]; see [`RetryPolicy::builder`] for the defaults.
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryPolicyBuilder {
    max_attempts: u32,
    backoff: BackoffBuilder,
    budget: BudgetSetting,
    seed: Option<u64>,
}

impl Default for RetryPolicyBuilder {
    fn default() -> Self {
        RetryPolicyBuilder {
            max_attempts: 3,
            backoff: BackoffBuilder::default(),
            budget: BudgetSetting::Default,
            seed: None,
        }
    }
}

impl RetryPolicyBuilder {
    /// The most attempts per request, the first included: at least 1 (1 never retries). No
    /// upper limit here (gRPC A6 caps its `maxAttempts` at 5; the Google SRE book advises 3).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// See [`BackoffBuilder::base`].
    pub fn base(mut self, base: Duration) -> Self {
        self.backoff = self.backoff.base(base);
        self
    }

    /// See [`BackoffBuilder::multiplier`].
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.backoff = self.backoff.multiplier(multiplier);
        self
    }

    /// See [`BackoffBuilder::cap`].
    pub fn cap(mut self, cap: Duration) -> Self {
        self.backoff = self.backoff.cap(cap);
        self
    }

    /// See [`BackoffBuilder::jitter`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.backoff = self.backoff.jitter(jitter);
        self
    }

    /// Draws retries on this budget, which may be shared with other policies.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = BudgetSetting::Given(budget);
        self
    }

    /// Retries without a budget: only the attempt limit bounds them.
    pub fn no_budget(mut self) -> Self {
        self.budget = BudgetSetting::None;
        self
    }

    /// Seeds the jitter's randomness, for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<RetryPolicy, ConfigError> {
        if self.max_attempts == 0 {
            return Err(error(
                "max_attempts",
                self.max_attempts,
                "must be at least 1 (the first attempt)",
            ));
        }
        let backoff = self.backoff.build()?;
        let budget = match self.budget {
            BudgetSetting::Default => Some(BudgetBuilder::default().build()?),
            BudgetSetting::None => None,
            BudgetSetting::Given(budget) => Some(budget),
        };
        let seeds = self.seed.map_or_else(Seeds::from_os, Seeds::from_seed);
        Ok(RetryPolicy::from_parts(
            self.max_attempts,
            backoff,
            budget,
            Arc::new(seeds),
        ))
    }
}

/// Builds a [`RetryLayer`]; see [`RetryLayer::builder`].
///
/// The type parameters are the classifier `C` (what is a failure worth retrying), the safety
/// policy `P` (which requests may be sent twice) and the replay `R` (how a request is copied);
/// the methods that set them change the builder's type.
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryLayerBuilder<C = AnyError, P = Idempotent, R = CloneRequest> {
    name: String,
    policy: RetryPolicyBuilder,
    given: Option<RetryPolicy>,
    classifier: C,
    safety: P,
    replay: R,
    retry_refusals: bool,
    attempt_timeout: Option<Duration>,
}

impl Default for RetryLayerBuilder {
    fn default() -> Self {
        RetryLayerBuilder {
            name: "default".to_owned(),
            policy: RetryPolicyBuilder::default(),
            given: None,
            classifier: AnyError,
            safety: Idempotent,
            replay: CloneRequest,
            retry_refusals: false,
            attempt_timeout: None,
        }
    }
}

impl<C, P, R> RetryLayerBuilder<C, P, R> {
    /// The instance name (default `"default"`): a metric label, so keep it bounded.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Attempts per request, the first included (default 3).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.policy = self.policy.max_attempts(max_attempts);
        self
    }

    /// The first retry's delay before jitter (default 100 ms).
    pub fn base(mut self, base: Duration) -> Self {
        self.policy = self.policy.base(base);
        self
    }

    /// How much each retry's delay grows (default 2).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.policy = self.policy.multiplier(multiplier);
        self
    }

    /// The largest delay, and the largest server pushback honoured (default 10 s).
    pub fn cap(mut self, cap: Duration) -> Self {
        self.policy = self.policy.cap(cap);
        self
    }

    /// The jitter (default [`Jitter::Full`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.policy = self.policy.jitter(jitter);
        self
    }

    /// The retry budget, shared by every service the layer builds and their clones (default:
    /// Finagle's 20% of requests plus 10 per second over 10 s). Pass a clone of one budget to
    /// several layers to share it between them.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.policy = self.policy.budget(budget);
        self
    }

    /// No retry budget: only the attempts, the deadline and pushback bound retries.
    pub fn no_budget(mut self) -> Self {
        self.policy = self.policy.no_budget();
        self
    }

    /// Seeds the jitter, for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.policy = self.policy.seed(seed);
        self
    }

    /// A whole policy built beforehand; it replaces the attempts, backoff, budget and seed
    /// set on this builder.
    pub fn policy(mut self, policy: RetryPolicy) -> Self {
        self.given = Some(policy);
        self
    }

    /// Also retry a call that a layer below refused with a
    /// [`Rejection`](tower_red::Rejection) (open circuit, full bulkhead, …). Default `false`:
    /// a refusal means back off, and the layer that refused counted it.
    pub fn retry_refusals(mut self, retry: bool) -> Self {
        self.retry_refusals = retry;
        self
    }

    /// Bounds each attempt to `timeout` (and always to the request's deadline). An attempt
    /// that runs out of time fails with a
    /// [`Rejection`](tower_red::Rejection) of kind `DeadlineExceeded` (reason `call`, a
    /// [`FailureClass::Timeout`](tower_red::FailureClass::Timeout)) and may be retried. Arming
    /// it costs a timer per attempt that is still pending after its first poll.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Uses `classifier` to decide which outcomes are failures worth retrying: a
    /// [`Verdict::Failure`](tower_red::Verdict::Failure) is retried. Default
    /// [`AnyError`]: every `Err`.
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayerBuilder<C2, P, R> {
        RetryLayerBuilder {
            name: self.name,
            policy: self.policy,
            given: self.given,
            classifier,
            safety: self.safety,
            replay: self.replay,
            retry_refusals: self.retry_refusals,
            attempt_timeout: self.attempt_timeout,
        }
    }

    /// Retries what `retry_on` says (HTTP 502, 503, 504, gRPC `UNAVAILABLE` and errors by
    /// default): the classifier for HTTP and gRPC services.
    pub fn retry_on(self, retry_on: RetryOn) -> RetryLayerBuilder<RetryOn, P, R> {
        self.classifier(retry_on)
    }

    /// Uses `safety` to decide which requests may be retried (default [`Idempotent`]).
    pub fn safety<P2>(self, safety: P2) -> RetryLayerBuilder<C, P2, R> {
        RetryLayerBuilder {
            name: self.name,
            policy: self.policy,
            given: self.given,
            classifier: self.classifier,
            safety,
            replay: self.replay,
            retry_refusals: self.retry_refusals,
            attempt_timeout: self.attempt_timeout,
        }
    }

    /// Every request may be retried ([`AlwaysSafe`]).
    pub fn always_safe(self) -> RetryLayerBuilder<C, AlwaysSafe, R> {
        self.safety(AlwaysSafe)
    }

    /// Requests for which `f` returns `true` may be retried ([`SafeFn`]).
    pub fn safe_if<F>(self, f: F) -> RetryLayerBuilder<C, SafeFn<F>, R> {
        self.safety(safe_if(f))
    }

    /// Uses `replay` to copy requests for their retries (default [`CloneRequest`]).
    pub fn replay<R2>(self, replay: R2) -> RetryLayerBuilder<C, P, R2> {
        RetryLayerBuilder {
            name: self.name,
            policy: self.policy,
            given: self.given,
            classifier: self.classifier,
            safety: self.safety,
            replay,
            retry_refusals: self.retry_refusals,
            attempt_timeout: self.attempt_timeout,
        }
    }

    /// Replays `http::Request<B>` of any body type by buffering bodies of at most `limit`
    /// bytes ([`BufferBody`]; use [`DEFAULT_BODY_LIMIT`](crate::replay::DEFAULT_BODY_LIMIT)
    /// for 64 KiB; 0 buffers nothing, so every request is sent once). The inner service then sees `http::Request<RetryBody<B>>`.
    pub fn buffer_body(self, limit: usize) -> RetryLayerBuilder<C, P, BufferBody> {
        self.replay(BufferBody::new(limit))
    }

    /// Replays `reqwest::Request`s with `try_clone` (feature `reqwest`).
    #[cfg(feature = "reqwest")]
    pub fn reqwest(self) -> RetryLayerBuilder<C, P, crate::replay::TryCloneRequest> {
        self.replay(crate::replay::TryCloneRequest)
    }

    /// Checks every setting and builds the layer, registering its metric handles with the
    /// recorder installed now.
    pub fn build(self) -> Result<RetryLayer<C, P, R>, ConfigError> {
        if self.name.is_empty() {
            return Err(error("name", &self.name, "must not be empty"));
        }
        if let Some(timeout) = self.attempt_timeout
            && timeout.is_zero()
        {
            return Err(error(
                "attempt_timeout",
                timeout,
                "must be positive: no attempt could finish",
            ));
        }
        let policy = match self.given {
            Some(policy) => policy,
            None => self.policy.build()?,
        };
        Ok(RetryLayer::from_parts(
            LayerConfig {
                name: self.name,
                policy,
                retry_refusals: self.retry_refusals,
                attempt_timeout: self.attempt_timeout,
            },
            self.classifier,
            self.safety,
            self.replay,
        ))
    }
}

/// What a [`RetryLayerBuilder`] hands the layer.
#[derive(Debug)]
pub(crate) struct LayerConfig {
    pub(crate) name: String,
    pub(crate) policy: RetryPolicy,
    pub(crate) retry_refusals: bool,
    pub(crate) attempt_timeout: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::BudgetKind;
    use rand::Rng;
    use tower_red::classify::FailureClass;

    fn field_of<T: std::fmt::Debug>(r: Result<T, ConfigError>) -> (String, String) {
        let e = r.expect_err("a bad value");
        assert_eq!(e.layer(), RETRY);
        (e.field().to_owned(), e.value().to_owned())
    }

    #[test]
    fn defaults_are_three_attempts_full_jitter_and_a_finagle_budget() {
        let p = RetryPolicy::builder().build().expect("valid");
        assert_eq!(p.max_attempts(), 3);
        assert_eq!(p.backoff().jitter(), Jitter::Full);
        assert_eq!(p.backoff().base(), Duration::from_millis(100));
        assert_eq!(p.backoff().multiplier(), 2.0);
        assert_eq!(p.backoff().cap(), Duration::from_secs(10));
        let budget = p.budget().expect("a default budget");
        assert_eq!(budget.kind(), BudgetKind::Ratio);
        // The floor: 10 per second over 10 s.
        assert_eq!(budget.balance(Instant::now()), 100.0);
        assert!(
            RetryPolicy::builder()
                .no_budget()
                .build()
                .expect("valid")
                .budget()
                .is_none()
        );
    }

    #[test]
    fn bad_backoff_values_name_their_field() {
        let b = || RetryPolicy::builder();
        assert_eq!(
            field_of(b().base(Duration::from_secs(11)).build()),
            ("base".into(), "11s".into())
        );
        assert_eq!(
            field_of(b().base(Duration::ZERO).build()),
            ("base".into(), "0ns".into())
        );
        assert_eq!(
            field_of(b().multiplier(0.5).build()),
            ("multiplier".into(), "0.5".into())
        );
        assert_eq!(
            field_of(b().multiplier(f64::NAN).build()),
            ("multiplier".into(), "NaN".into())
        );
        assert_eq!(
            field_of(b().multiplier(f64::INFINITY).build()),
            ("multiplier".into(), "inf".into())
        );
        assert_eq!(
            field_of(b().multiplier(1.000_000_1).build()),
            ("multiplier".into(), "1.0000001".into())
        );
        assert_eq!(
            field_of(b().max_attempts(0).build()),
            ("max_attempts".into(), "0".into())
        );
        // Edges that are fine.
        b().multiplier(1.0).build().expect("constant delay");
        b().base(Duration::from_secs(10))
            .build()
            .expect("base = cap");
        b().max_attempts(1).build().expect("never retries");
        b().cap(Duration::MAX).build().expect("saturates");
    }

    #[test]
    fn bad_budget_values_name_their_field() {
        let b = RetryBudget::builder;
        assert_eq!(
            field_of(b().ratio(-0.1).build()),
            ("ratio".into(), "-0.1".into())
        );
        assert_eq!(
            field_of(b().ratio(f64::NAN).build()),
            ("ratio".into(), "NaN".into())
        );
        assert_eq!(
            field_of(b().ratio(1000.5).build()),
            ("ratio".into(), "1000.5".into())
        );
        assert_eq!(
            field_of(b().window(Duration::ZERO).build()),
            ("window".into(), "0ns".into())
        );
        assert_eq!(
            field_of(b().window(Duration::from_secs(86_401)).build()),
            ("window".into(), "86401s".into())
        );
        assert_eq!(
            field_of(b().buckets(0).build()),
            ("buckets".into(), "0".into())
        );
        assert_eq!(
            field_of(b().grpc_throttling(0.0, 0.1).build()),
            ("max_tokens".into(), "0.0".into())
        );
        assert_eq!(
            field_of(b().grpc_throttling(1001.0, 0.1).build()),
            ("max_tokens".into(), "1001.0".into())
        );
        assert_eq!(
            field_of(b().grpc_throttling(10.0, 0.0004).build()),
            ("token_ratio".into(), "0.0004".into())
        );
        assert_eq!(
            field_of(b().grpc_throttling(10.0, f64::INFINITY).build()),
            ("token_ratio".into(), "inf".into())
        );
        assert_eq!(field_of(b().quota(0).build()), ("quota".into(), "0".into()));
        assert_eq!(
            field_of(b().success_credit(-1.0).build()),
            ("success_credit".into(), "-1.0".into())
        );
        b().ratio(0.0).build().expect("no retries beyond the floor");
        b().ratio(1000.0).build().expect("the top");
        b().grpc_throttling(1000.0, 0.001)
            .build()
            .expect("A6 edges");
    }

    #[tokio::test(start_paused = true)]
    async fn ratios_are_kept_to_the_nearest_thousandth() {
        // 0.29 × 1000 is 289.99… in floating point: truncating would lose a retry.
        let budget = RetryBudget::builder()
            .ratio(0.29)
            .min_per_second(0)
            .build()
            .expect("valid");
        let now = Instant::now();
        for _ in 0..100 {
            budget.record_request(now);
        }
        assert_eq!(budget.balance(now), 29.0);
        let throttle = RetryBudget::builder()
            .grpc_throttling(10.0, 0.29)
            .build()
            .expect("valid");
        throttle.record_failure(FailureClass::Error);
        throttle.record_success();
        assert_eq!(throttle.balance(now), 9.29);
    }

    #[tokio::test(start_paused = true)]
    async fn each_kind_gets_its_default_cost() {
        let now = Instant::now();
        let quota = RetryBudget::builder().quota(20).build().expect("valid");
        assert_eq!(quota.kind(), BudgetKind::Quota);
        assert!(quota.try_retry(FailureClass::Error, now));
        assert_eq!(quota.balance(now), 6.0); // 14 for a transient error
        let quota = RetryBudget::builder()
            .quota(20)
            .cost(RetryCost::Flat(1))
            .build()
            .expect("valid");
        assert!(quota.try_retry(FailureClass::Error, now));
        assert_eq!(quota.balance(now), 19.0);
        let credit = RetryBudget::builder()
            .success_credit(0.5)
            .build()
            .expect("valid");
        assert_eq!(credit.kind(), BudgetKind::Quota);
        assert_eq!(credit.balance(now), 500.0);
        let grpc = RetryBudget::builder()
            .grpc_throttling(4.0, 1.0)
            .build()
            .expect("valid");
        assert_eq!(grpc.kind(), BudgetKind::GrpcThrottling);
        grpc.record_failure(FailureClass::Error);
        assert_eq!(grpc.balance(now), 3.0);
        let ratio = RetryBudget::builder()
            .quota(5)
            .window(Duration::from_secs(2))
            .build()
            .expect("valid");
        assert_eq!(ratio.kind(), BudgetKind::Ratio);
        assert_eq!(ratio.balance(now), 20.0); // 10 per second over 2 s
    }

    #[test]
    fn a_seeded_policy_draws_the_same_numbers() {
        let draw = |seed| {
            let p = RetryPolicy::builder().seed(seed).build().expect("valid");
            p.rng().random::<u64>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
