//! The layer: a small cloneable holder of the shared bulkhead.

use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::Arc;

use tower_layer::Layer;

use crate::body::OnResponse;
use crate::config::{Builder, Unpartitioned};
use crate::handle::{BulkheadHandle, Shared};
use crate::service::Bulkhead;

/// Applies a [`Bulkhead`] to services. Every service it builds, and every clone of those,
/// shares one set of permits and queues.
#[must_use]
pub struct BulkheadLayer<P = Unpartitioned, H = OnResponse> {
    shared: Arc<Shared>,
    partitioner: P,
    _release: PhantomData<fn() -> H>,
}

impl BulkheadLayer {
    /// A bulkhead of `max_concurrent` calls that rejects the rest at once, with metrics under
    /// the name `bulkhead`.
    pub fn new(max_concurrent: NonZeroUsize) -> Self {
        match Builder::default()
            .max_concurrent(max_concurrent.get())
            .build()
        {
            Ok(layer) => layer,
            // Every other default is valid, and the limit is not zero.
            Err(err) => unreachable!("the default configuration is valid: {err}"),
        }
    }

    /// A builder for every option.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<P, H> BulkheadLayer<P, H> {
    pub(crate) fn from_parts(shared: Arc<Shared>, partitioner: P) -> Self {
        BulkheadLayer {
            shared,
            partitioner,
            _release: PhantomData,
        }
    }

    /// A handle on the live bulkhead: counts per partition, limits changed at run time.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.shared.clone())
    }
}

impl<P: Clone, H> Clone for BulkheadLayer<P, H> {
    fn clone(&self) -> Self {
        BulkheadLayer::from_parts(self.shared.clone(), self.partitioner.clone())
    }
}

impl<P, H> fmt::Debug for BulkheadLayer<P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("bulkhead", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S, P: Clone, H> Layer<S> for BulkheadLayer<P, H> {
    type Service = Bulkhead<S, P, H>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::from_parts(inner, self.shared.clone(), self.partitioner.clone())
    }
}
