//! [`ServerStack`]: an axum route or a tonic service behind every server layer.

use std::fmt;
use std::time::Duration;

use tower_breaker::{BreakerBuilder, BreakerLayer};
use tower_bulkhead::{BulkheadLayer, FromScope, OnResponse, Unpartitioned};
use tower_layer::{Identity, Stack};
use tower_red::classify::{AnyError, GrpcStatus, HttpStatus};
use tower_red::problem::ProblemLayer;
use tower_red::red::counts_only;
use tower_red::{ConfigError, RedLayer};
use tower_timeout_budget::inbound::{InboundDeadlineBuilder, InboundDeadlineLayer};

use super::check::{self, STACK};
use super::{FallbackSlot, NoFallback, WithFallback};
use crate::fallback::FallbackLayerBuilder;

/// The inbound deadline's cap when none is set: 10 s.
pub const DEFAULT_DEADLINE_CAP: Duration = Duration::from_secs(10);

type Tweak<B> = Box<dyn FnOnce(B) -> B + Send>;
type MakeLayer<I> = Box<dyn FnOnce() -> Result<I, ConfigError> + Send>;

/// The layers of a [`ServerStack`], innermost first (as [`tower_layer::Stack`] nests them).
pub type ServerLayers<K, I, A, F = Identity, P = Unpartitioned> = Stack<
    BreakerLayer<K>,
    Stack<
        BulkheadLayer<P, OnResponse, K, FromScope>,
        Stack<I, Stack<InboundDeadlineLayer<K>, Stack<A, Stack<F, RedLayer>>>>,
    >,
>;

built_stack! {
    /// Every server layer in the documented order, built and checked together: a tower
    /// [`Layer`](tower_layer::Layer) for an axum route (`Router::route_layer`) or a tonic
    /// service. See the [module docs](super) for the order and the invariants
    /// [`ServerStackBuilder::build`] checks.
    ServerStack
}

impl ServerStack<()> {
    /// A builder; `name` labels every layer's metrics (keep it bounded: one per route group).
    pub fn builder(name: impl Into<String>) -> ServerStackBuilder {
        ServerStackBuilder {
            settings: Settings {
                name: name.into(),
                deadline_cap: DEFAULT_DEADLINE_CAP,
                deadline: Box::new(|d| d),
                breaker: Box::new(|b| b),
            },
            classifier: AnyError,
            adapter: ProblemLayer::new(),
            idempotency: Box::new(|| Ok(Identity::new())),
            fallback: NoFallback,
            bulkhead: Box::new(|b| b),
        }
    }
}

/// Builds a [`ServerStack`]; see [`ServerStack::builder`].
///
/// `K` is the one classifier of every layer, `I` the idempotency layer (none by default), `A`
/// the adapter that turns refusals into responses ([`ProblemLayer`] by default; tonic servers
/// use `tower_red::grpc::StatusLayer`).
#[must_use]
pub struct ServerStackBuilder<
    K = AnyError,
    I = Identity,
    A = ProblemLayer,
    F = NoFallback,
    P = Unpartitioned,
> {
    settings: Settings,
    classifier: K,
    adapter: A,
    idempotency: MakeLayer<I>,
    fallback: F,
    bulkhead: Box<dyn FnOnce(tower_bulkhead::Builder) -> tower_bulkhead::Builder<P> + Send>,
}

/// The settings whose setters keep the builder's type.
struct Settings {
    name: String,
    deadline_cap: Duration,
    deadline: Tweak<InboundDeadlineBuilder>,
    breaker: Tweak<BreakerBuilder>,
}

impl<K: fmt::Debug, I, A: fmt::Debug, F: fmt::Debug> fmt::Debug for ServerStackBuilder<K, I, A, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStackBuilder")
            .field("name", &self.settings.name)
            .field("classifier", &self.classifier)
            .field("adapter", &self.adapter)
            .field("fallback", &self.fallback)
            .field("deadline_cap", &self.settings.deadline_cap)
            .finish_non_exhaustive()
    }
}

impl<K, I, A, F, P> ServerStackBuilder<K, I, A, F, P> {
    /// The one classifier of every layer (default: any `Err` is a failure).
    pub fn classifier<K2>(self, classifier: K2) -> ServerStackBuilder<K2, I, A, F, P> {
        ServerStackBuilder {
            settings: self.settings,
            classifier,
            adapter: self.adapter,
            idempotency: self.idempotency,
            fallback: self.fallback,
            bulkhead: self.bulkhead,
        }
    }

    /// [`HttpStatus`] for every layer: 5xx (and errors) are failures.
    pub fn http_status(self) -> ServerStackBuilder<HttpStatus, I, A, F, P> {
        self.classifier(HttpStatus::new())
    }

    /// [`GrpcStatus`] for every layer, for a tonic service.
    pub fn grpc_status(self) -> ServerStackBuilder<GrpcStatus, I, A, F, P> {
        self.classifier(GrpcStatus::new())
    }

    /// The layer that turns refusals into responses, in place of [`ProblemLayer`] (such as
    /// `tower_red::grpc::StatusLayer::new()` for tonic).
    pub fn adapter<A2>(self, adapter: A2) -> ServerStackBuilder<K, I, A2, F, P> {
        ServerStackBuilder {
            settings: self.settings,
            classifier: self.classifier,
            adapter,
            idempotency: self.idempotency,
            fallback: self.fallback,
            bulkhead: self.bulkhead,
        }
    }

    /// Adds idempotency (an [`IdempotencyLayer`](crate::IdempotencyLayer) built by `make`),
    /// below the deadline so a replay costs no permit and above the bulkhead so a duplicate in
    /// flight is answered 409 without taking one. `make` runs inside `build`, so its RED
    /// series follow the stack's rule (counts only).
    pub fn idempotency<I2>(
        self,
        make: impl FnOnce() -> Result<I2, ConfigError> + Send + 'static,
    ) -> ServerStackBuilder<K, I2, A, F, P> {
        ServerStackBuilder {
            settings: self.settings,
            classifier: self.classifier,
            adapter: self.adapter,
            idempotency: Box::new(make),
            fallback: self.fallback,
            bulkhead: self.bulkhead,
        }
    }

    /// Adds a [`FallbackLayer`](crate::fallback::FallbackLayer) tuned by `tweak` (its answer:
    /// `stale_on_error`, `from_fn` or both; its triggers), just inside RED: above the adapter
    /// and every layer whose refusals it answers, so RED sees the answer the caller got and the
    /// breaker still sees the handler's failure. The stack sets its name and classifier.
    pub fn fallback(
        self,
        tweak: impl FnOnce(FallbackLayerBuilder) -> FallbackLayerBuilder + Send + 'static,
    ) -> ServerStackBuilder<K, I, A, WithFallback, P> {
        ServerStackBuilder {
            settings: self.settings,
            classifier: self.classifier,
            adapter: self.adapter,
            idempotency: self.idempotency,
            fallback: WithFallback::new(tweak),
            bulkhead: self.bulkhead,
        }
    }

    /// The most any request may take (default [`DEFAULT_DEADLINE_CAP`]); a caller's shorter
    /// `grpc-timeout` or deadline header wins. The breaker's time window must hold two of it.
    pub fn deadline_cap(mut self, cap: Duration) -> Self {
        self.settings.deadline_cap = cap;
        self
    }

    /// Tunes the inbound deadline (headers, margin, strictness): the stack sets its cap and
    /// classifier.
    pub fn deadline(
        mut self,
        tweak: impl FnOnce(InboundDeadlineBuilder) -> InboundDeadlineBuilder + Send + 'static,
    ) -> Self {
        self.settings.deadline = Box::new(tweak);
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
    ) -> ServerStackBuilder<K, I, A, F, P2> {
        ServerStackBuilder {
            settings: self.settings,
            classifier: self.classifier,
            adapter: self.adapter,
            idempotency: self.idempotency,
            fallback: self.fallback,
            bulkhead: Box::new(tweak),
        }
    }

    /// Checks every layer's settings and the invariants between them, and builds the layers
    /// (inside [`counts_only`]: the outermost `RedLayer` records the request's duration, the
    /// layers inside it count their outcomes).
    ///
    /// Refuses, with a [`ConfigError`] naming both values, a breaker time window shorter than
    /// twice the deadline cap.
    #[allow(clippy::type_complexity)]
    pub fn build(self) -> Result<ServerStack<ServerLayers<K, I, A, F::Layer, P>>, ConfigError>
    where
        K: Clone,
        F: FallbackSlot<K>,
    {
        let ServerStackBuilder {
            settings:
                Settings {
                    name,
                    deadline_cap,
                    deadline,
                    breaker,
                },
            classifier,
            adapter,
            idempotency,
            fallback,
            bulkhead,
        } = self;
        if name.is_empty() {
            return Err(ConfigError::new(STACK, "name", &name, "must not be empty"));
        }
        if deadline_cap.is_zero() {
            return Err(ConfigError::new(
                STACK,
                "deadline_cap",
                deadline_cap,
                "must be positive: no request could finish",
            ));
        }
        let breaker_config = breaker(BreakerLayer::builder().name(&name)).build_config()?;
        check::window_holds_two_timeouts(breaker_config.window(), deadline_cap, "deadline cap")?;
        // The outermost layer records the request's one duration: built outside `counts_only`.
        let red = RedLayer::server();
        counts_only(|| {
            let deadline = deadline(
                InboundDeadlineLayer::builder()
                    .carry_in_extensions(false)
                    .name(name.clone()),
            )
            .cap(deadline_cap)
            .classifier(classifier.clone())
            .build()?;
            let idempotency = idempotency()?;
            let fallback = fallback.make(&name, classifier.clone())?;
            let bulkhead = bulkhead(BulkheadLayer::builder().name(name.as_str()))
                .classifier(classifier.clone())
                .build()?;
            let breaker = BreakerLayer::from_config(breaker_config).with_classifier(classifier);
            let handles = (breaker.handle(), bulkhead.handle());
            let layers = Stack::new(
                breaker,
                Stack::new(
                    bulkhead,
                    Stack::new(
                        idempotency,
                        Stack::new(deadline, Stack::new(adapter, Stack::new(fallback, red))),
                    ),
                ),
            );
            Ok(ServerStack {
                layers,
                breaker: handles.0,
                bulkhead: handles.1,
            })
        })
    }
}
