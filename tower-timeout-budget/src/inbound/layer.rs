//! [`InboundDeadlineLayer`]: builds [`InboundDeadline`] services that share one configuration.

use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use tower_layer::Layer;
use tower_red::classify::AnyError;

use super::config::Config;
use super::{InboundDeadline, InboundDeadlineBuilder};
use crate::metrics::Shared;
use crate::wire::DEFAULT_HTTP_HEADER;

/// Layer that turns the caller's `grpc-timeout` or HTTP deadline header into the request's
/// deadline; see the [module docs](crate::inbound). `K` classifies finished calls for the RED
/// `outcome` ([`InboundDeadlineBuilder::classifier`]).
#[must_use]
pub struct InboundDeadlineLayer<K = AnyError> {
    pub(crate) config: Arc<Config>,
    pub(crate) shared: Shared<K>,
}

impl<K> Clone for InboundDeadlineLayer<K> {
    fn clone(&self) -> Self {
        InboundDeadlineLayer {
            config: self.config.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for InboundDeadlineLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundDeadlineLayer")
            .field("config", &self.config)
            .field("shared", &self.shared)
            .finish()
    }
}

impl InboundDeadlineLayer {
    /// Reads both headers, no server cap, lenient, metrics on.
    pub fn new() -> Self {
        // The defaults need no validation: no cap, and the default header name.
        InboundDeadlineBuilder::default()
            .assemble(None, Some(HeaderName::from_static(DEFAULT_HTTP_HEADER)))
    }

    /// A builder.
    pub fn builder() -> InboundDeadlineBuilder {
        InboundDeadlineBuilder::default()
    }
}

impl Default for InboundDeadlineLayer {
    fn default() -> Self {
        InboundDeadlineLayer::new()
    }
}

impl<S, K> Layer<S> for InboundDeadlineLayer<K> {
    type Service = InboundDeadline<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        InboundDeadline {
            inner,
            config: self.config.clone(),
            shared: self.shared.clone(),
        }
    }
}
