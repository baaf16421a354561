//! The layer: a small cloneable holder of the shared bulkhead.

use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::Arc;

use tower_layer::Layer;
use tower_red::classify::AnyError;

use crate::body::OnResponse;
use crate::config::{Builder, Unpartitioned};
use crate::deadline::FromScope;
use crate::handle::{BulkheadHandle, Shared};
use crate::service::Bulkhead;

/// Applies a [`Bulkhead`] to services. Every service it builds, and every clone of those,
/// shares one set of permits and queues.
///
/// `P` picks partitions, `H` says when a permit is given back, `C` judges outcomes and `D`
/// finds deadlines; [`BulkheadLayer::builder`] sets them.
#[must_use]
pub struct BulkheadLayer<P = Unpartitioned, H = OnResponse, C = AnyError, D = FromScope> {
    shared: Arc<Shared>,
    partitioner: P,
    classifier: C,
    deadline: D,
    _release: PhantomData<fn() -> H>,
}

impl BulkheadLayer {
    /// A bulkhead of `max_concurrent` calls that rejects the rest at once, with metrics under
    /// the name `bulkhead`: the common case of [`BulkheadLayer::builder`].
    pub fn new(max_concurrent: NonZeroUsize) -> Self {
        match Builder::default()
            .max_concurrent(max_concurrent.get().min(crate::permits::MAX_LIMIT))
            .build()
        {
            Ok(layer) => layer,
            // Every other default is valid, and the limit is between 1 and the maximum.
            Err(err) => unreachable!("the default configuration is valid: {err}"),
        }
    }

    /// A builder for every option; `build` checks them all and returns
    /// `Result<BulkheadLayer, ConfigError>`.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<P, H, C, D> BulkheadLayer<P, H, C, D> {
    pub(crate) fn from_parts(
        shared: Arc<Shared>,
        partitioner: P,
        classifier: C,
        deadline: D,
    ) -> Self {
        BulkheadLayer {
            shared,
            partitioner,
            classifier,
            deadline,
            _release: PhantomData,
        }
    }

    /// A handle on the live bulkhead: counts per partition, limits changed at run time.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.shared.clone())
    }
}

impl<P: Clone, H, C: Clone, D: Clone> Clone for BulkheadLayer<P, H, C, D> {
    fn clone(&self) -> Self {
        BulkheadLayer::from_parts(
            self.shared.clone(),
            self.partitioner.clone(),
            self.classifier.clone(),
            self.deadline.clone(),
        )
    }
}

impl<P, H, C: fmt::Debug, D> fmt::Debug for BulkheadLayer<P, H, C, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("bulkhead", &self.shared)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, P: Clone, H, C: Clone, D: Clone> Layer<S> for BulkheadLayer<P, H, C, D> {
    type Service = Bulkhead<S, P, H, C, D>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::from_parts(
            inner,
            self.shared.clone(),
            self.partitioner.clone(),
            self.classifier.clone(),
            self.deadline.clone(),
        )
    }
}
