//! [`ClientStack`]: a reqwest `Client` or a tonic `Channel` wrapped in every client layer.

use std::fmt;
use std::time::Duration;

use tower_breaker::{BreakerBuilder, BreakerLayer};
use tower_bulkhead::{BulkheadLayer, FromScope, OnResponse, Unpartitioned};
use tower_layer::{Identity, Stack};
use tower_red::classify::{AnyError, GrpcStatus, HttpStatus};
use tower_red::red::counts_only;
use tower_red::{ConfigError, RedLayer};
use tower_retry_jitter::{CloneRequest, Idempotent, RetryLayer, RetryLayerBuilder};
use tower_timeout_budget::outbound::{OutboundDeadlineBuilder, OutboundDeadlineLayer};
use tower_timeout_budget::{DefaultCap, TimeoutBudgetLayer};

use super::check::{self, STACK};
use super::{FallbackSlot, NoFallback, RetryClassifier, SameAsStack, WithFallback};
use crate::client::IdempotencyKeyLayer;
use crate::fallback::FallbackLayerBuilder;

/// The total budget of a call when none is set: 10 s, retries and waits included.
pub const DEFAULT_TOTAL_BUDGET: Duration = Duration::from_secs(10);

type Tweak<B> = Box<dyn FnOnce(B) -> B + Send>;

/// The layers of a [`ClientStack`], innermost first (as [`tower_layer::Stack`] nests them).
pub type ClientLayers<K, RC, R, F = Identity, P = Unpartitioned> = Stack<
    OutboundDeadlineLayer<K>,
    Stack<
        BulkheadLayer<P, OnResponse, K, FromScope>,
        Stack<
            BreakerLayer<K>,
            Stack<
                RetryLayer<RC, Idempotent, R>,
                Stack<
                    TimeoutBudgetLayer<DefaultCap, K>,
                    Stack<IdempotencyKeyLayer, Stack<F, RedLayer>>,
                >,
            >,
        >,
    >,
>;

built_stack! {
    /// Every client layer in the documented order, built and checked together: a tower
    /// [`Layer`](tower_layer::Layer) for a reqwest `Client` or a tonic `Channel`. See the
    /// [module docs](super) for the order and the invariants [`ClientStackBuilder::build`]
    /// checks.
    ClientStack
}

impl ClientStack<()> {
    /// A builder; `name` labels every layer's metrics (keep it bounded: one per dependency).
    pub fn builder(name: impl Into<String>) -> ClientStackBuilder {
        ClientStackBuilder {
            settings: Settings {
                name: name.into(),
                total_budget: DEFAULT_TOTAL_BUDGET,
                attempt_timeout: None,
                retry: Box::new(|r| r),
                breaker: Box::new(|b| b),
                outbound: Box::new(|o| o),
            },
            classifier: AnyError,
            retry_on: SameAsStack,
            replay: CloneRequest,
            fallback: NoFallback,
            bulkhead: Box::new(|b| b),
        }
    }
}

/// Builds a [`ClientStack`]; see [`ClientStack::builder`].
///
/// `K` is the one classifier of every layer, `RK` what the retry retries (the stack's
/// classifier by default, or a narrower [`RetryOn`](tower_retry_jitter::RetryOn)), `R` how a
/// request is replayed.
#[must_use]
pub struct ClientStackBuilder<
    K = AnyError,
    RK = SameAsStack,
    R = CloneRequest,
    F = NoFallback,
    P = Unpartitioned,
> {
    settings: Settings,
    classifier: K,
    retry_on: RK,
    replay: R,
    fallback: F,
    bulkhead: Box<dyn FnOnce(tower_bulkhead::Builder) -> tower_bulkhead::Builder<P> + Send>,
}

/// The settings whose setters keep the builder's type.
struct Settings {
    name: String,
    total_budget: Duration,
    attempt_timeout: Option<Duration>,
    retry: Tweak<RetryLayerBuilder>,
    breaker: Tweak<BreakerBuilder>,
    outbound: Tweak<OutboundDeadlineBuilder>,
}

impl<K: fmt::Debug, RK: fmt::Debug, R: fmt::Debug, F: fmt::Debug, P> fmt::Debug
    for ClientStackBuilder<K, RK, R, F, P>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStackBuilder")
            .field("name", &self.settings.name)
            .field("classifier", &self.classifier)
            .field("retry_on", &self.retry_on)
            .field("replay", &self.replay)
            .field("fallback", &self.fallback)
            .field("total_budget", &self.settings.total_budget)
            .field("attempt_timeout", &self.settings.attempt_timeout)
            .finish_non_exhaustive()
    }
}

impl<K, RK, R, F, P> ClientStackBuilder<K, RK, R, F, P> {
    /// The one classifier of every layer (default: any `Err` is a failure).
    pub fn classifier<K2>(self, classifier: K2) -> ClientStackBuilder<K2, RK, R, F, P> {
        ClientStackBuilder {
            settings: self.settings,
            classifier,
            retry_on: self.retry_on,
            replay: self.replay,
            fallback: self.fallback,
            bulkhead: self.bulkhead,
        }
    }

    /// [`HttpStatus`] for every layer: 5xx (and errors) are failures.
    pub fn http_status(self) -> ClientStackBuilder<HttpStatus, RK, R, F, P> {
        self.classifier(HttpStatus::new())
    }

    /// [`GrpcStatus`] for every layer, for a tonic `Channel`.
    pub fn grpc_status(self) -> ClientStackBuilder<GrpcStatus, RK, R, F, P> {
        self.classifier(GrpcStatus::new())
    }

    /// What the retry retries, when narrower than the stack's classifier (such as
    /// [`RetryOn::new`](tower_retry_jitter::RetryOn::new): errors, 502, 503, 504). It may
    /// retry only outcomes the stack's classifier judges failures: checked by `build`.
    pub fn retry_on<RK2>(self, retry_on: RK2) -> ClientStackBuilder<K, RK2, R, F, P> {
        ClientStackBuilder {
            settings: self.settings,
            classifier: self.classifier,
            retry_on,
            replay: self.replay,
            fallback: self.fallback,
            bulkhead: self.bulkhead,
        }
    }

    /// How the retry replays a request (default [`CloneRequest`]: `http::Request<B>` with a
    /// `Clone` body, or any `Clone` request).
    pub fn replay<R2>(self, replay: R2) -> ClientStackBuilder<K, RK, R2, F, P> {
        ClientStackBuilder {
            settings: self.settings,
            classifier: self.classifier,
            retry_on: self.retry_on,
            replay,
            fallback: self.fallback,
            bulkhead: self.bulkhead,
        }
    }

    /// Replays `reqwest::Request`s with `try_clone` (a streaming body is not retried).
    #[cfg(feature = "reqwest")]
    pub fn reqwest(
        self,
    ) -> ClientStackBuilder<K, RK, tower_retry_jitter::replay::TryCloneRequest, F, P> {
        self.replay(tower_retry_jitter::replay::TryCloneRequest)
    }

    /// Adds a [`FallbackLayer`](crate::fallback::FallbackLayer) tuned by `tweak` (its answer:
    /// `stale_on_error`, `from_fn` or both; its triggers), just inside RED: above the total
    /// budget and the retry, so it answers once the retries are spent or the budget is, and the
    /// breaker still sees every failure. The stack sets its name and classifier.
    pub fn fallback(
        self,
        tweak: impl FnOnce(FallbackLayerBuilder) -> FallbackLayerBuilder + Send + 'static,
    ) -> ClientStackBuilder<K, RK, R, WithFallback, P> {
        ClientStackBuilder {
            settings: self.settings,
            classifier: self.classifier,
            retry_on: self.retry_on,
            replay: self.replay,
            fallback: WithFallback::new(tweak),
            bulkhead: self.bulkhead,
        }
    }

    /// The whole call's budget, retries, backoff and queue waits included (default
    /// [`DEFAULT_TOTAL_BUDGET`]). A deadline the caller already set (a `Deadline` in scope, or
    /// one read from the request) is kept when it is shorter.
    pub fn total_budget(mut self, budget: Duration) -> Self {
        self.settings.total_budget = budget;
        self
    }

    /// Each attempt's timeout (default: none, the total budget bounds each attempt). It must
    /// fit in the total budget, and the breaker's time window must hold two of it.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.settings.attempt_timeout = Some(timeout);
        self
    }

    /// Tunes the retry (attempts, backoff, budget): the stack sets its name, classifier and
    /// replay, and its [`attempt_timeout`](Self::attempt_timeout) when one is set. An attempt
    /// timeout set here instead is checked as the stack's own.
    pub fn retry(
        mut self,
        tweak: impl FnOnce(RetryLayerBuilder) -> RetryLayerBuilder + Send + 'static,
    ) -> Self {
        self.settings.retry = Box::new(tweak);
        self
    }

    /// Tunes the breaker (window, thresholds, open time): the stack sets its classifier.
    pub fn breaker(
        mut self,
        tweak: impl FnOnce(BreakerBuilder) -> BreakerBuilder + Send + 'static,
    ) -> Self {
        self.settings.breaker = Box::new(tweak);
        self
    }

    /// Tunes the bulkhead (limit, queue, adaptive limit, partitions with `partition_by`): the
    /// stack sets its classifier.
    pub fn bulkhead<P2>(
        self,
        tweak: impl FnOnce(tower_bulkhead::Builder) -> tower_bulkhead::Builder<P2> + Send + 'static,
    ) -> ClientStackBuilder<K, RK, R, F, P2> {
        ClientStackBuilder {
            settings: self.settings,
            classifier: self.classifier,
            retry_on: self.retry_on,
            replay: self.replay,
            fallback: self.fallback,
            bulkhead: Box::new(tweak),
        }
    }

    /// Tunes the outbound deadline (header, margin): the stack sets its classifier.
    pub fn outbound_deadline(
        mut self,
        tweak: impl FnOnce(OutboundDeadlineBuilder) -> OutboundDeadlineBuilder + Send + 'static,
    ) -> Self {
        self.settings.outbound = Box::new(tweak);
        self
    }

    /// Checks every layer's settings and the invariants between them, and builds the layers
    /// (inside [`counts_only`]: the outermost `RedLayer` records the call's duration, the
    /// layers inside it count their outcomes).
    ///
    /// Refuses, with a [`ConfigError`] naming both values:
    /// - an attempt timeout longer than the total budget;
    /// - a breaker time window shorter than twice the attempt timeout (or the total budget,
    ///   without one);
    /// - retries whose summed worst-case backoff delays reach the total budget;
    /// - a retry classifier that retries an outcome the stack's classifier calls a success.
    #[allow(clippy::type_complexity)]
    pub fn build(
        self,
    ) -> Result<ClientStack<ClientLayers<K, RK::Classifier, R, F::Layer, P>>, ConfigError>
    where
        K: Clone + fmt::Debug,
        RK: RetryClassifier<K>,
        F: FallbackSlot<K>,
    {
        let ClientStackBuilder {
            settings:
                Settings {
                    name,
                    total_budget,
                    attempt_timeout,
                    retry,
                    breaker,
                    outbound,
                },
            classifier,
            retry_on,
            replay,
            fallback,
            bulkhead,
        } = self;
        if name.is_empty() {
            return Err(ConfigError::new(STACK, "name", &name, "must not be empty"));
        }
        if total_budget.is_zero() {
            return Err(ConfigError::new(
                STACK,
                "total_budget",
                total_budget,
                "must be positive: no call could finish",
            ));
        }
        if let Some(attempt) = attempt_timeout {
            check::attempt_within_budget(attempt, total_budget)?;
        }
        let retry_classifier = retry_on.resolve(&classifier)?;
        let breaker_config = breaker(BreakerLayer::builder().name(&name)).build_config()?;
        // The outermost layer records the call's one duration: built outside `counts_only`.
        let red = RedLayer::client();
        counts_only(|| {
            let mut retry = retry(RetryLayer::builder().name(name.clone()));
            if let Some(attempt) = attempt_timeout {
                retry = retry.attempt_timeout(attempt);
            }
            let retry = retry.replay(replay).classifier(retry_classifier).build()?;
            // The stack's attempt timeout, or one set in `.retry(..)`: checked alike.
            let (per_attempt, per_attempt_name) = match retry.attempt_timeout() {
                Some(attempt) => {
                    check::attempt_within_budget(attempt, total_budget)?;
                    (attempt, "attempt timeout")
                }
                None => (total_budget, "total budget"),
            };
            check::window_holds_two_timeouts(
                breaker_config.window(),
                per_attempt,
                per_attempt_name,
            )?;
            let policy = retry.policy();
            check::delays_within_budget(policy.backoff(), policy.max_attempts(), total_budget)?;
            let fallback = fallback.make(&name, classifier.clone())?;
            // The layers below stay on the caller's task and read the deadline from its scope:
            // no copy in the request's extensions (3 allocations, cloned by every retry).
            let budget = TimeoutBudgetLayer::builder()
                .carry_in_extensions(false)
                .cap(total_budget)
                .name(name.clone())
                .classifier(classifier.clone())
                .build()?;
            let breaker =
                BreakerLayer::from_config(breaker_config).with_classifier(classifier.clone());
            let bulkhead = bulkhead(BulkheadLayer::builder().name(name.as_str()))
                .classifier(classifier.clone())
                .build()?;
            let outbound = outbound(
                OutboundDeadlineLayer::builder()
                    .carry_in_extensions(false)
                    .name(name.clone()),
            )
            .classifier(classifier)
            .build()?;
            let handles = (breaker.handle(), bulkhead.handle());
            let layers = Stack::new(
                outbound,
                Stack::new(
                    bulkhead,
                    Stack::new(
                        breaker,
                        Stack::new(
                            retry,
                            Stack::new(
                                budget,
                                Stack::new(IdempotencyKeyLayer::new(), Stack::new(fallback, red)),
                            ),
                        ),
                    ),
                ),
            );
            Ok(ClientStack {
                layers,
                breaker: handles.0,
                bulkhead: handles.1,
            })
        })
    }
}
