//! One expression for a production stack (feature `stack`): [`ServerStack`] for axum routes
//! and tonic services, [`ClientStack`] for reqwest clients and tonic channels. Each puts every
//! layer in the order below, gives them **one classifier**, and checks the invariants between
//! them when it is built, refusing a broken combination with a
//! [`ConfigError`] that names both values. Each layer stays usable
//! alone; the stack only builds them.
//!
//! # Why here
//!
//! The stack builder is the one place that knows every layer crate, and layer crates depend
//! only on `tower-red` and `tower-timeout-budget`. It cannot live in `tower-red` (every layer
//! crate depends on it: a cycle), and the workspace's crates are fixed. It lives in
//! `tower-idempotency`, behind a feature that is off by default (so the crate alone pulls in no
//! other layer), because idempotency is the one layer both standard stacks put above all the
//! others that do work: on a server above the bulkhead and the breaker, on a client above the
//! retry. The crate that owns the top of both stacks composes what lies beneath it.
//!
//! # Server order (outermost first)
//!
//! | layer | why here |
//! |---|---|
//! | `RedLayer::server()` | sees every request as the caller did, refusals included; records the request's one duration |
//! | fallback (optional) | answers a refusal or failure from the last good response or a function; inside RED so RED sees the answer the caller got, above every layer whose refusals it answers, so the breaker still sees the handler's failure |
//! | `ProblemLayer` (or tonic's `StatusLayer`) | turns every refusal below it into a status (503 + `Retry-After`, 504, 409, 422, 400), so the route stays `Infallible` |
//! | `InboundDeadlineLayer` | the caller's budget (`grpc-timeout` or a header, capped) bounds every wait below it, the idempotency store's included; when it passes it drops the call, and the layers below count a timeout |
//! | idempotency (optional) | a replay answers before any permit is taken; a duplicate in flight gets 409 without holding one |
//! | `BulkheadLayer` | limits concurrency before a request can reach a slow handler |
//! | `BreakerLayer` | innermost, so it judges only the handler: its timeouts (the deadline above cut it), its failures, never another layer's refusal |
//!
//! # Client order (outermost first)
//!
//! | layer | why here |
//! |---|---|
//! | `RedLayer::client()` | what the caller waited for, retries included; records the call's one duration |
//! | fallback (optional) | answers once the retries or the budget are spent (stale or a function); above the budget, so a spent budget cannot cancel the fallback itself |
//! | `IdempotencyKeyLayer` | one key per logical request, above the retry, so every attempt carries the same key and a retried POST is safe |
//! | `TimeoutBudgetLayer` | the whole call's budget: retries, backoff and queue waits all spend it |
//! | `RetryLayer` | at one point only (AWS Builders' Library): above the breaker, so an open circuit fails an attempt fast and a refusal is not retried (a refusal means back off) |
//! | `BreakerLayer` | sees every attempt and its timeout; refuses before any queue |
//! | `BulkheadLayer` | limits in-flight attempts to the dependency |
//! | `OutboundDeadlineLayer` | innermost: the budget it writes into `grpc-timeout` or the header is what is left after every wait above it |
//!
//! # What `build` checks
//!
//! - **Attempt timeout within the total budget** (client): a longer attempt timeout never
//!   fires, and no retry could run.
//! - **Breaker time window at least twice the attempt timeout** (client; the total budget
//!   without one) or **the deadline cap** (server): a shorter window rolls over before the
//!   calls that time out in it are counted, so a hanging backend never opens the breaker.
//!   Count windows have no such bound.
//! - **Worst-case summed retry delays within the total budget** (client), for the jitter mode
//!   in use (decorrelated jitter can triple a delay; gRPC A6 adds 20 %).
//! - **One classifier for every layer.** The stack sets the same classifier on every layer
//!   that judges outcomes, so they cannot disagree. The retry may be given a narrower one
//!   ([`RetryOn`]: not every failure is worth retrying), which
//!   must retry only outcomes the stack's classifier judges failures: every HTTP status,
//!   every gRPC code and a transport error are tried against both.
//!
//! # RED in a stack
//!
//! The layers are built inside [`tower_red::red::counts_only`]: the outermost `RedLayer`
//! records the one duration that matters, and the layers inside it count their outcomes
//! (`resilience_requests_total`) without a duration histogram each. A layer built alone
//! records both.
//!
//! # Where the deadline travels
//!
//! Every layer of a built stack stays on the caller's task, so the deadline layers keep the
//! deadline in the task-local scope only
//! ([`carry_in_extensions(false)`](tower_timeout_budget::TimeoutBudgetBuilder::carry_in_extensions)):
//! the layers below, the service the stack wraps and a handler read it with
//! [`Deadline::current`](tower_timeout_budget::Deadline::current) (which
//! [`DeadlineCarrier::deadline`](tower_timeout_budget::DeadlineCarrier::deadline) also reads),
//! and the request carries none in its extensions. Storing it there would cost 3 allocations per
//! request, and every copy the retry makes would clone them. A handler that extracts
//! `Extension<Deadline>`, or a service below that moves the request to another task, turns it
//! back on: `.deadline(|d| d.carry_in_extensions(true))` (server) or
//! `.outbound_deadline(|o| o.carry_in_extensions(true))` (client).
//!
//! ```
//! # fn main() -> Result<(), tower_red::ConfigError> {
//! use std::time::Duration;
//! use tower_idempotency::stack::{ClientStack, ServerStack};
//! use tower_retry_jitter::RetryOn;
//!
//! let client = ClientStack::builder("payments")
//!     .http_status()
//!     .total_budget(Duration::from_secs(2))
//!     .attempt_timeout(Duration::from_millis(500))
//!     .retry_on(RetryOn::new())
//!     .retry(|r| r.max_attempts(3).base(Duration::from_millis(50)))
//!     .breaker(|b| b.time_window(Duration::from_secs(10), 10))
//!     .bulkhead(|b| b.max_concurrent(32))
//!     .build()?;
//! // `ServiceBuilder::new().layer(client).service(transport)`
//!
//! let err = ClientStack::builder("payments")
//!     .total_budget(Duration::from_secs(1))
//!     .attempt_timeout(Duration::from_secs(2))
//!     .build()
//!     .unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "invalid stack config: attempt_timeout = 2s: exceeds the total budget (1s): the budget \
//!      would cut the first attempt before its own timeout, and no retry could run"
//! );
//!
//! let server = ServerStack::builder("api")
//!     .http_status()
//!     .deadline_cap(Duration::from_secs(2))
//!     .bulkhead(|b| b.max_concurrent(64))
//!     .build()?;
//! // `Router::new().route(...).route_layer(server)`
//! # let _ = (client, server);
//! # Ok(()) }
//! ```

/// A built stack's type: its layers, and the handles of its breaker and bulkhead. Client and
/// server stacks are distinct types with the same shape.
macro_rules! built_stack {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        #[must_use]
        pub struct $name<L> {
            layers: L,
            breaker: tower_breaker::BreakerHandle,
            bulkhead: tower_bulkhead::BulkheadHandle,
        }

        impl<L> $name<L> {
            /// The stack's breaker, to watch it or register it for readiness.
            pub fn breaker(&self) -> tower_breaker::BreakerHandle {
                self.breaker.clone()
            }

            /// The stack's bulkhead, to watch it or register it for readiness.
            pub fn bulkhead(&self) -> tower_bulkhead::BulkheadHandle {
                self.bulkhead.clone()
            }
        }

        impl<L> std::fmt::Debug for $name<L> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("breaker", &self.breaker.name())
                    .field("bulkhead", &self.bulkhead.name())
                    .finish_non_exhaustive()
            }
        }

        impl<S, L: tower_layer::Layer<S>> tower_layer::Layer<S> for $name<L> {
            type Service = L::Service;

            fn layer(&self, inner: S) -> Self::Service {
                self.layers.layer(inner)
            }
        }
    };
}

mod check;
mod client;
mod server;

use std::fmt;

use tower_red::classify::Classify;
use tower_red::{BoxError, ConfigError};
use tower_retry_jitter::RetryOn;

use tower_layer::Identity;

use crate::fallback::{FallbackLayer, FallbackLayerBuilder};

pub use self::client::{ClientLayers, ClientStack, ClientStackBuilder, DEFAULT_TOTAL_BUDGET};
pub use self::server::{DEFAULT_DEADLINE_CAP, ServerLayers, ServerStack, ServerStackBuilder};

/// What the retry of a [`ClientStack`] retries: [`SameAsStack`] (every failure of the stack's
/// classifier, the default) or a [`RetryOn`] checked against it.
pub trait RetryClassifier<K> {
    /// The classifier the retry layer gets.
    type Classifier;

    /// The retry's classifier, or the [`ConfigError`] that says why it disagrees with the
    /// stack's classifier `stack`.
    fn resolve(self, stack: &K) -> Result<Self::Classifier, ConfigError>;
}

/// The retry retries every failure of the stack's classifier.
#[derive(Debug, Clone, Copy, Default)]
pub struct SameAsStack;

impl<K: Clone> RetryClassifier<K> for SameAsStack {
    type Classifier = K;

    fn resolve(self, stack: &K) -> Result<K, ConfigError> {
        Ok(stack.clone())
    }
}

impl<K> RetryClassifier<K> for RetryOn
where
    K: Classify<http::Response<()>, BoxError> + fmt::Debug,
{
    type Classifier = RetryOn;

    fn resolve(self, stack: &K) -> Result<RetryOn, ConfigError> {
        check::retry_within_classifier(stack, &self)?;
        Ok(self)
    }
}

/// The optional fallback of a stack: [`NoFallback`] (the default) or [`WithFallback`], given the
/// stack's classifier when the stack is built.
pub trait FallbackSlot<K> {
    /// The layer: [`Identity`] or a [`FallbackLayer`].
    type Layer;

    /// Builds the layer named `name`, judging outcomes with the stack's `classifier`.
    fn make(self, name: &str, classifier: K) -> Result<Self::Layer, ConfigError>;
}

/// No fallback: a refusal or failure reaches the caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFallback;

impl<K> FallbackSlot<K> for NoFallback {
    type Layer = Identity;

    fn make(self, _: &str, _: K) -> Result<Identity, ConfigError> {
        Ok(Identity::new())
    }
}

/// A [`FallbackLayer`] tuned by a closure; the stack sets its name and classifier.
pub struct WithFallback(Box<dyn FnOnce(FallbackLayerBuilder) -> FallbackLayerBuilder + Send>);

impl fmt::Debug for WithFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WithFallback")
    }
}

impl WithFallback {
    pub(crate) fn new(
        tweak: impl FnOnce(FallbackLayerBuilder) -> FallbackLayerBuilder + Send + 'static,
    ) -> Self {
        WithFallback(Box::new(tweak))
    }
}

impl<K> FallbackSlot<K> for WithFallback {
    type Layer = FallbackLayer<K>;

    fn make(self, name: &str, classifier: K) -> Result<FallbackLayer<K>, ConfigError> {
        (self.0)(FallbackLayer::builder().name(name))
            .classifier(classifier)
            .build()
    }
}
