//! The retry layer: a small `Clone` holder of the configuration, building [`Retry`] services
//! that share one policy, one budget and one set of metric handles.

use std::sync::Arc;

use tower_layer::Layer;
use tower_red::classify::AnyError;

use crate::config::{LayerConfig, RetryLayerBuilder};
use crate::metrics::Metrics;
use crate::policy::RetryPolicy;
use crate::replay::CloneRequest;
use crate::safety::Idempotent;
use crate::service::{Retry, Shared};

/// Builds [`Retry`] services. Every service it builds, and every clone of them, shares one
/// [`RetryPolicy`] (so one [`RetryBudget`](crate::RetryBudget)) and one set of metrics.
///
/// `C` classifies outcomes (a failure is retried), `P` says which requests are safe to send
/// twice and `R` how they are copied; see [`RetryLayer::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryLayer<C = AnyError, P = Idempotent, R = CloneRequest> {
    shared: Arc<Shared>,
    classifier: C,
    safety: P,
    replay: R,
}

impl RetryLayer {
    /// The defaults: 3 attempts, full jitter from 100 ms capped at 10 s, Finagle's budget
    /// (20% of requests plus 10 retries per second over 10 s), errors retried, only
    /// idempotent HTTP requests (or ones with an `Idempotency-Key`), `Clone` requests. For
    /// HTTP and gRPC responses add [`RetryOn`](crate::RetryOn) with
    /// [`RetryLayerBuilder::retry_on`].
    pub fn new() -> Self {
        match RetryLayer::builder().build() {
            Ok(layer) => layer,
            Err(err) => unreachable!("the default configuration is valid: {err}"),
        }
    }

    /// A builder for every setting; `build` checks them all and returns
    /// `Result<RetryLayer, ConfigError>`.
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder::default()
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl<C, P, R> RetryLayer<C, P, R> {
    pub(crate) fn from_parts(config: LayerConfig, classifier: C, safety: P, replay: R) -> Self {
        let metrics = Metrics::new(&config.name);
        RetryLayer {
            shared: Arc::new(Shared::new(
                Arc::from(config.name),
                config.policy,
                metrics,
                config.retry_refusals,
                config.attempt_timeout,
            )),
            classifier,
            safety,
            replay,
        }
    }

    /// The policy: attempts, backoff and budget.
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The bound on each attempt, if one was set
    /// ([`RetryLayerBuilder::attempt_timeout`](crate::RetryLayerBuilder::attempt_timeout)).
    pub fn attempt_timeout(&self) -> Option<std::time::Duration> {
        self.shared.attempt_timeout
    }
}

impl<S, C: Clone, P: Clone, R: Clone> Layer<S> for RetryLayer<C, P, R> {
    type Service = Retry<S, C, P, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_parts(
            inner,
            self.shared.clone(),
            self.classifier.clone(),
            self.safety.clone(),
            self.replay.clone(),
        )
    }
}
