//! [`TimeoutBudget`]: the service built by [`TimeoutBudgetLayer`].

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_red::BoxError;
use tower_red::classify::{AnyError, Classify};
use tower_red::clock::{self, Scope};
use tower_service::Service;

use crate::config::{CapFn, DefaultCap};
use crate::error::{ConfigError, Stage};
use crate::future::ResponseFuture;
use crate::layer::TimeoutBudgetLayer;
use crate::ready::ReadyWait;
use crate::{Deadline, DeadlineCarrier};

/// Service that sets and enforces a per-request deadline; see [`TimeoutBudgetLayer`].
pub struct TimeoutBudget<S, C = DefaultCap, K = AnyError> {
    pub(crate) inner: S,
    pub(crate) config: TimeoutBudgetLayer<C, K>,
    pub(crate) ready: ReadyWait,
}

impl<S> TimeoutBudget<S> {
    /// Wraps `inner` with the default cap `cap` and default options; fails on a zero cap, as
    /// [`TimeoutBudgetLayer::new`] does.
    pub fn new(inner: S, cap: Duration) -> Result<Self, ConfigError> {
        TimeoutBudgetLayer::new(cap).map(|layer| tower_layer::Layer::layer(&layer, inner))
    }

    /// A layer with the default cap `cap`: the same as [`TimeoutBudgetLayer::new`] (fails on a
    /// zero cap).
    pub fn layer(cap: Duration) -> Result<TimeoutBudgetLayer, ConfigError> {
        TimeoutBudgetLayer::new(cap)
    }
}

impl<S, C, K> TimeoutBudget<S, C, K> {
    tower_red::define_inner_service_accessors!();
}

impl<S: Clone, C: Clone, K> Clone for TimeoutBudget<S, C, K> {
    fn clone(&self) -> Self {
        // A clone does not inherit a readiness wait in progress.
        TimeoutBudget {
            inner: self.inner.clone(),
            config: self.config.clone(),
            ready: ReadyWait::default(),
        }
    }
}

impl<S: fmt::Debug, C, K> fmt::Debug for TimeoutBudget<S, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutBudget")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, C, K, Req> Service<Req> for TimeoutBudget<S, C, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: CapFn<Req>,
    K: Classify<S::Response, BoxError>,
    Req: DeadlineCarrier,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.ready.expired() {
            return Poll::Ready(Ok(()));
        }
        let inner = self.inner.poll_ready(cx).map_err(Into::into);
        self.ready
            .after_poll(cx, inner, Some(self.config.ready_timeout))
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        // One clock read serves every layer of the stack inside this call.
        let _scope = Scope::enter();
        let now = clock::now();
        let (since, ready_expired) = self.ready.take(now);
        let shared = &self.config.shared;
        if ready_expired {
            return ResponseFuture::failed(shared.exceeded(Stage::Ready, since.map(|s| now - s)));
        }
        let start = since.unwrap_or(now);
        let cap = self.config.cap_fn.cap(&req).unwrap_or(self.config.cap);
        let own = Deadline::after_from(start, cap);
        // The task-local deadline bounds this call too (the crate's carriers already count it in
        // `req.deadline()`; one of the user's may not).
        let deadline = req.deadline().map_or(own, |d| d.min(own)).within_current();
        if deadline.instant() <= now {
            return ResponseFuture::failed(match since {
                Some(since) => shared.exceeded(Stage::Ready, Some(now - since)),
                None => shared.exceeded(Stage::Arrival, None),
            });
        }
        if self.config.extensions {
            req.set_deadline(deadline);
        }
        let fut = {
            let _scope = deadline.enter_exact();
            self.inner.call(req)
        };
        ResponseFuture::running(fut, Some(deadline), start, shared.clone())
    }
}
