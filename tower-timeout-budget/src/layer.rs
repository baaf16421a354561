//! [`TimeoutBudgetLayer`]: sets and enforces a per-request deadline.

use std::fmt;
use std::time::Duration;

use tower_layer::Layer;
use tower_red::classify::AnyError;

use crate::config::{DefaultCap, TimeoutBudgetBuilder};
use crate::error::ConfigError;
use crate::metrics::Shared;
use crate::ready::ReadyWait;
use crate::service::TimeoutBudget;

/// Layer that gives every request the deadline min(its own deadline, start + cap) and fails
/// the call with a [`DeadlineExceeded`](tower_red::RejectionKind::DeadlineExceeded) rejection
/// when it passes, time spent waiting for the inner service's readiness included.
///
/// See the [crate docs](crate) for an example and [`TimeoutBudgetBuilder`] for the options
/// (`C` the per-request cap, `K` the classifier of the RED outcome).
#[must_use]
pub struct TimeoutBudgetLayer<C = DefaultCap, K = AnyError> {
    pub(crate) cap: Duration,
    pub(crate) cap_fn: C,
    pub(crate) ready_timeout: Duration,
    pub(crate) extensions: bool,
    pub(crate) shared: Shared<K>,
}

impl<C: Clone, K> Clone for TimeoutBudgetLayer<C, K> {
    fn clone(&self) -> Self {
        TimeoutBudgetLayer {
            cap: self.cap,
            cap_fn: self.cap_fn.clone(),
            ready_timeout: self.ready_timeout,
            extensions: self.extensions,
            shared: self.shared.clone(),
        }
    }
}

impl<C, K> fmt::Debug for TimeoutBudgetLayer<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutBudgetLayer")
            .field("cap", &self.cap)
            .field("ready_timeout", &self.ready_timeout)
            .field("extensions", &self.extensions)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl TimeoutBudgetLayer {
    /// A layer with the default cap `cap` and default options (metrics on, name `timeout`).
    ///
    /// # Errors
    ///
    /// Unlike the `new` of the other layers, this one is fallible: the cap is a `Duration`, which
    /// can be zero, and a zero cap would refuse every request on arrival. It is validated as
    /// [`TimeoutBudgetBuilder::build`] validates it, and a zero cap is a [`ConfigError`] naming
    /// `cap`, never a panic or a layer that refuses everything. For a cap known at compile time,
    /// `expect` documents that it cannot fail:
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_timeout_budget::TimeoutBudgetLayer;
    ///
    /// let layer = TimeoutBudgetLayer::new(Duration::from_secs(2)).expect("a non-zero cap");
    /// # let _ = layer;
    /// ```
    pub fn new(cap: Duration) -> Result<Self, ConfigError> {
        Self::builder().cap(cap).build()
    }

    /// A builder, to set a per-request cap, the readiness limit, the classifier, the name or
    /// metrics.
    pub fn builder() -> TimeoutBudgetBuilder {
        TimeoutBudgetBuilder::default()
    }
}

impl<C, K> TimeoutBudgetLayer<C, K> {
    pub(crate) fn from_parts(
        cap: Duration,
        cap_fn: C,
        ready_timeout: Duration,
        extensions: bool,
        shared: Shared<K>,
    ) -> Self {
        TimeoutBudgetLayer {
            cap,
            cap_fn,
            ready_timeout,
            extensions,
            shared,
        }
    }

    /// The default cap.
    pub fn cap(&self) -> Duration {
        self.cap
    }
}

impl<S, C: Clone, K> Layer<S> for TimeoutBudgetLayer<C, K> {
    type Service = TimeoutBudget<S, C, K>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutBudget {
            inner,
            config: self.clone(),
            ready: ReadyWait::default(),
        }
    }
}
