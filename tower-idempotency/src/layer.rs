//! The server-side layer.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::config::{Config, IdempotencyLayerBuilder, Wrap};
use crate::service::Idempotency;
use crate::store::Store;

/// Deduplicates requests that carry an `Idempotency-Key`: the first runs, a duplicate gets its
/// stored response (or 409 while it runs, or 422 when its payload differs). See the
/// [crate docs](crate) for the whole behaviour.
///
/// Clones share the store, the settings and the metric handles.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_idempotency::IdempotencyLayer;
/// use tower_idempotency::store::MemoryStore;
///
/// let layer = IdempotencyLayer::new(MemoryStore::new());
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|_req: http::Request<tower_idempotency::RequestBody<String>>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
///     });
/// # let _ = svc;
/// ```
#[must_use]
pub struct IdempotencyLayer<St, M = Wrap> {
    config: Arc<Config<St>>,
    map: M,
}

impl<St> IdempotencyLayer<St> {
    /// A layer with the default settings (no principal: see
    /// [`IdempotencyLayerBuilder::principal`] before using it with more than one caller).
    pub fn new(store: St) -> Self
    where
        St: Store,
    {
        IdempotencyLayerBuilder::new(store)
            .build()
            .expect("the default settings are valid")
    }

    /// A builder to choose the settings.
    pub fn builder(store: St) -> IdempotencyLayerBuilder<St>
    where
        St: Store,
    {
        IdempotencyLayerBuilder::new(store)
    }
}

impl<St, M> IdempotencyLayer<St, M> {
    pub(crate) fn from_config(config: Arc<Config<St>>, map: M) -> Self {
        Self { config, map }
    }

    /// The store this layer uses.
    pub fn store(&self) -> &St {
        &self.config.store
    }
}

impl<St, M: Clone> Clone for IdempotencyLayer<St, M> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            map: self.map.clone(),
        }
    }
}

impl<St, M> fmt::Debug for IdempotencyLayer<St, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("name", &self.config.name)
            .field("header", &self.config.header)
            .field("in_flight", &self.config.in_flight)
            .field("ttl", &self.config.ttl)
            .finish_non_exhaustive()
    }
}

impl<S, St, M: Clone> Layer<S> for IdempotencyLayer<St, M> {
    type Service = Idempotency<S, St, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::from_parts(inner, self.config.clone(), self.map.clone())
    }
}
