//! [`OutboundDeadlineLayer`]: builds [`OutboundDeadline`] services that share one configuration.

use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use tower_layer::Layer;
use tower_red::classify::AnyError;

use super::config::Config;
use super::{OutboundDeadline, OutboundDeadlineBuilder};
use crate::metrics::Shared;
use crate::ready::ReadyWait;
use crate::wire::DEFAULT_HTTP_HEADER;

/// Layer that writes the remaining budget into outgoing requests and enforces it; see the
/// [module docs](crate::outbound). `K` classifies finished calls for the RED `outcome`
/// ([`OutboundDeadlineBuilder::classifier`]).
#[must_use]
pub struct OutboundDeadlineLayer<K = AnyError> {
    pub(crate) config: Arc<Config>,
    pub(crate) shared: Shared<K>,
}

impl<K> Clone for OutboundDeadlineLayer<K> {
    fn clone(&self) -> Self {
        OutboundDeadlineLayer {
            config: self.config.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for OutboundDeadlineLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundDeadlineLayer")
            .field("config", &self.config)
            .field("shared", &self.shared)
            .finish()
    }
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

impl<S, K> Layer<S> for OutboundDeadlineLayer<K> {
    type Service = OutboundDeadline<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        OutboundDeadline {
            inner,
            config: self.config.clone(),
            shared: self.shared.clone(),
            ready: ReadyWait::default(),
        }
    }
}
