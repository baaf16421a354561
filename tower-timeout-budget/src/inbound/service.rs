//! [`InboundDeadline`]: reads the caller's budget from the request's headers and enforces it.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_red::BoxError;
use tower_red::classify::{AnyError, Classify};
use tower_red::clock::{self, Scope};
use tower_service::Service;

use super::config::Config;
use super::{GRPC_INDEX, HTTP_INDEX, InboundDeadlineLayer};
use crate::error::Stage;
use crate::future::ResponseFuture;
use crate::metrics::Shared;
use crate::wire::{self, GRPC_TIMEOUT, GrpcTimeout};
use crate::{Deadline, DeadlineCarrier};

/// Service built by [`InboundDeadlineLayer`].
pub struct InboundDeadline<S, K = AnyError> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
    pub(crate) shared: Shared<K>,
}

impl<S: Clone, K> Clone for InboundDeadline<S, K> {
    fn clone(&self) -> Self {
        InboundDeadline {
            inner: self.inner.clone(),
            config: self.config.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for InboundDeadline<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundDeadline")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> InboundDeadline<S> {
    /// Wraps `inner` with the defaults of [`InboundDeadlineLayer::new`].
    pub fn new(inner: S) -> Self {
        InboundDeadlineLayer::new().layer(inner)
    }
}

impl<S, K> InboundDeadline<S, K> {
    tower_red::define_inner_service_accessors!();
}

/// The budget the headers of `req` ask for: `Ok(None)` when none is sent, `Err` with the
/// strict-mode detail when a header is malformed (after counting it).
fn header_budget<K>(
    config: &Config,
    shared: &Shared<K>,
    headers: &http::HeaderMap,
) -> Result<Option<Duration>, &'static str> {
    let mut budget: Option<Duration> = None;
    let mut malformed = None;
    if config.grpc
        && let Some(value) = headers.get(GRPC_TIMEOUT)
    {
        match GrpcTimeout::parse(value.as_bytes()) {
            Ok(t) => budget = Some(t.duration()),
            Err(_) => {
                shared.invalid_header(GRPC_INDEX, GRPC_TIMEOUT.as_str());
                malformed = Some("malformed grpc-timeout header");
            }
        }
    }
    if let Some(name) = &config.http_header
        && let Some(value) = headers.get(name)
    {
        match wire::parse_millis(value.as_bytes()) {
            Ok(d) => budget = Some(budget.map_or(d, |b| b.min(d))),
            Err(_) => {
                shared.invalid_header(HTTP_INDEX, name.as_str());
                malformed = Some("malformed deadline header");
            }
        }
    }
    match malformed {
        Some(detail) if config.strict => Err(detail),
        _ => Ok(budget),
    }
}

impl<S, K, B> Service<http::Request<B>> for InboundDeadline<S, K>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    K: Classify<S::Response, BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // One clock read serves every layer of the stack inside this call.
        let _scope = Scope::enter();
        let now = clock::now();
        let budget = match header_budget(&self.config, &self.shared, req.headers()) {
            Ok(budget) => budget,
            Err(detail) => return ResponseFuture::failed(self.shared.invalid(detail)),
        };
        let budget = budget.map(|b| b - self.config.margin.min(b / 2));
        let budget = match (budget, self.config.cap) {
            (Some(b), Some(cap)) => Some(b.min(cap)),
            (b, cap) => b.or(cap),
        };
        let own = budget.map(|b| Deadline::after_from(now, b));
        let deadline = match (req.deadline(), own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = deadline.map(Deadline::within_current);
        let Some(deadline) = deadline else {
            return ResponseFuture::running(self.inner.call(req), None, now, self.shared.clone());
        };
        if deadline.instant() <= now {
            return ResponseFuture::failed(self.shared.exceeded(Stage::Arrival, None));
        }
        req.set_deadline(deadline);
        let fut = deadline.sync_scope_exact(|| self.inner.call(req));
        ResponseFuture::running(fut, Some(deadline), now, self.shared.clone())
    }
}
