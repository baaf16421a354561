//! The breaker layer: one shared breaker for every service it builds.

use std::sync::Arc;

use tower_layer::Layer;
use tower_red::classify::AnyError;

use crate::config::{BreakerBuilder, BreakerConfig};
use crate::handle::BreakerHandle;
use crate::machine::Machine;
use crate::service::Breaker;

/// Builds [`Breaker`]s sharing one state: every service this layer builds, and every clone of
/// them, trips and recovers together.
///
/// The breaker (and its metric handles) is built once, with the layer.
#[derive(Debug, Clone)]
#[must_use]
pub struct BreakerLayer<C = AnyError> {
    machine: Arc<Machine>,
    classifier: C,
}

impl BreakerLayer<AnyError> {
    /// A breaker named `name` (a metric label: keep it bounded) with the default
    /// configuration, counting any `Err` as a failure: the common case of
    /// [`BreakerLayer::builder`]. An empty name is replaced by `default`.
    ///
    /// For an axum router or a tonic service, whose failures are statuses in `Ok` responses,
    /// use the builder's [`http_status`](BreakerBuilder::http_status) or
    /// [`grpc_status`](BreakerBuilder::grpc_status).
    pub fn new(name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        let builder = BreakerLayer::builder();
        let builder = if name.is_empty() {
            builder
        } else {
            builder.name(name)
        };
        match builder.build() {
            Ok(layer) => layer,
            // The defaults are valid and the name is not empty.
            Err(err) => unreachable!("the default configuration is valid: {err}"),
        }
    }

    /// A builder for every setting; `build` checks them all and returns
    /// `Result<BreakerLayer, ConfigError>`.
    pub fn builder() -> BreakerBuilder {
        BreakerBuilder::default()
    }

    /// A breaker with a configuration built beforehand
    /// ([`BreakerBuilder::build_config`]), counting any `Err` as a failure.
    pub fn from_config(config: BreakerConfig) -> Self {
        BreakerLayer {
            machine: Arc::new(Machine::new(config)),
            classifier: AnyError,
        }
    }
}

impl<C> BreakerLayer<C> {
    /// Uses `classifier` (any [`tower_red::Classify`]) to decide which outcomes are failures.
    pub fn with_classifier<C2>(self, classifier: C2) -> BreakerLayer<C2> {
        BreakerLayer {
            machine: self.machine,
            classifier,
        }
    }

    /// A handle on the shared state.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.machine.clone())
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = Breaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker::from_parts(inner, self.machine.clone(), self.classifier.clone())
    }
}
