//! The breaker layer: one shared breaker for every service it builds.

use std::sync::Arc;

use tower_layer::Layer;
use tower_red::classify::AnyError;

use crate::config::BreakerConfig;
use crate::handle::BreakerHandle;
use crate::machine::Machine;
use crate::service::Breaker;

/// Builds [`Breaker`]s sharing one state: every service this layer builds, and every clone of
/// them, trips and recovers together.
///
/// The breaker (and its metric handles) is built once, in [`BreakerLayer::new`].
#[derive(Debug, Clone)]
#[must_use]
pub struct BreakerLayer<C = AnyError> {
    machine: Arc<Machine>,
    classifier: C,
}

impl BreakerLayer<AnyError> {
    /// A breaker counting any `Err` as a failure; see
    /// [`with_classifier`](Self::with_classifier) for HTTP or gRPC statuses.
    pub fn new(config: BreakerConfig) -> Self {
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
