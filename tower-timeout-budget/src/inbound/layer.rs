//! [`InboundDeadlineLayer`]: builds [`InboundDeadline`] services that share one configuration.

use std::sync::Arc;

use http::HeaderName;
use tower_layer::Layer;

use super::config::Config;
use super::{InboundDeadline, InboundDeadlineBuilder};
use crate::metrics::Shared;
use crate::wire::DEFAULT_HTTP_HEADER;

/// Layer that turns the caller's `grpc-timeout` or HTTP deadline header into the request's
/// deadline; see the [module docs](crate::inbound).
#[derive(Debug, Clone)]
#[must_use]
pub struct InboundDeadlineLayer {
    pub(crate) config: Arc<Config>,
    pub(crate) shared: Shared,
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

impl<S> Layer<S> for InboundDeadlineLayer {
    type Service = InboundDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InboundDeadline {
            inner,
            config: self.config.clone(),
            shared: self.shared.clone(),
        }
    }
}
