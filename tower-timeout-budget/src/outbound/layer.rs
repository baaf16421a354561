//! [`OutboundDeadlineLayer`]: builds [`OutboundDeadline`] services that share one configuration.

use std::sync::Arc;

use http::HeaderName;
use tower_layer::Layer;

use super::config::Config;
use super::{OutboundDeadline, OutboundDeadlineBuilder};
use crate::metrics::Shared;
use crate::ready::ReadyWait;
use crate::wire::DEFAULT_HTTP_HEADER;

/// Layer that writes the remaining budget into outgoing requests and enforces it; see the
/// [module docs](crate::outbound).
#[derive(Debug, Clone)]
#[must_use]
pub struct OutboundDeadlineLayer {
    pub(crate) config: Arc<Config>,
    pub(crate) shared: Shared,
}

impl OutboundDeadlineLayer {
    /// No margin, automatic header choice, no local cap, metrics on.
    pub fn new() -> Self {
        // The defaults need no validation: the default header name, no cap.
        OutboundDeadlineBuilder::default()
            .assemble(HeaderName::from_static(DEFAULT_HTTP_HEADER), None)
    }

    /// A builder.
    pub fn builder() -> OutboundDeadlineBuilder {
        OutboundDeadlineBuilder::default()
    }
}

impl Default for OutboundDeadlineLayer {
    fn default() -> Self {
        OutboundDeadlineLayer::new()
    }
}

impl<S> Layer<S> for OutboundDeadlineLayer {
    type Service = OutboundDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OutboundDeadline {
            inner,
            config: self.config.clone(),
            shared: self.shared.clone(),
            ready: ReadyWait::default(),
        }
    }
}
