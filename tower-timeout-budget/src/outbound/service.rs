//! [`OutboundDeadline`]: writes the remaining budget into the outgoing request and enforces it.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use tower_layer::Layer;
use tower_red::BoxError;
use tower_red::classify::{AnyError, Classify};
use tower_red::clock::{self, Scope};
use tower_red::parts::RequestParts;
use tower_service::Service;

use super::config::Config;
use super::{OutboundDeadlineLayer, Propagation};
use crate::error::Stage;
use crate::future::ResponseFuture;
use crate::metrics::Shared;
use crate::ready::ReadyWait;
use crate::wire::{self, GRPC_TIMEOUT, GrpcTimeout};
use crate::{Deadline, DeadlineCarrier};

/// Service built by [`OutboundDeadlineLayer`].
pub struct OutboundDeadline<S, K = AnyError> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
    pub(crate) shared: Shared<K>,
    pub(crate) ready: ReadyWait,
}

impl<S: Clone, K> Clone for OutboundDeadline<S, K> {
    fn clone(&self) -> Self {
        OutboundDeadline {
            inner: self.inner.clone(),
            config: self.config.clone(),
            shared: self.shared.clone(),
            ready: ReadyWait::default(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for OutboundDeadline<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundDeadline")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> OutboundDeadline<S> {
    /// Wraps `inner` with the defaults of [`OutboundDeadlineLayer::new`].
    pub fn new(inner: S) -> Self {
        OutboundDeadlineLayer::new().layer(inner)
    }
}

impl<S, K> OutboundDeadline<S, K> {
    tower_red::define_inner_service_accessors!();
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Inserts `value` unless the header already holds a valid, smaller budget; returns the budget
/// the header carries afterwards.
fn write_budget(
    headers: &mut HeaderMap,
    name: HeaderName,
    budget: Duration,
    parse: fn(&[u8]) -> Option<Duration>,
    value: HeaderValue,
) -> Duration {
    let existing = headers.get(&name).and_then(|v| parse(v.as_bytes()));
    match existing {
        Some(existing) if existing <= budget => existing,
        _ => {
            headers.insert(name, value);
            budget
        }
    }
}

impl<S, K, R> Service<R> for OutboundDeadline<S, K>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    K: Classify<S::Response, BoxError>,
    R: RequestParts + DeadlineCarrier,
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
        self.ready.after_poll(cx, inner, self.config.cap)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        // One clock read serves every layer of the stack inside this call.
        let _scope = Scope::enter();
        let now = clock::now();
        let (since, ready_expired) = self.ready.take(now);
        if ready_expired {
            return ResponseFuture::failed(
                self.shared.exceeded(Stage::Ready, since.map(|s| now - s)),
            );
        }
        let start = since.unwrap_or(now);
        let own = self.config.cap.map(|cap| Deadline::after_from(start, cap));
        let deadline = match (req.deadline(), own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = deadline.map(Deadline::within_current);
        let Some(deadline) = deadline else {
            return ResponseFuture::running(self.inner.call(req), None, now, self.shared.clone());
        };
        let remaining = deadline.remaining_at(now);
        // Not worth sending: the budget is spent, while waiting for readiness or before.
        let spent = || {
            let stage = if since.is_some() {
                Stage::Ready
            } else {
                Stage::BeforeSend
            };
            ResponseFuture::failed(self.shared.exceeded(stage, since.map(|s| now - s)))
        };
        if remaining.is_zero() || remaining <= self.config.margin {
            return spent();
        }
        let budget = remaining - self.config.margin;
        let (grpc, http) = match self.config.propagation {
            Propagation::Auto => {
                let grpc = is_grpc(req.headers());
                (grpc, !grpc)
            }
            Propagation::GrpcTimeout => (true, false),
            Propagation::HttpHeader => (false, true),
            Propagation::Both => (true, true),
            Propagation::None => (false, false),
        };
        // The HTTP header carries whole milliseconds, rounded down: that is the budget it sends.
        // Under one it would say `0`, which the inbound layer refuses on arrival and a header
        // like Envoy's reads as no timeout at all (and `1` would promise more than is left):
        // spent as well.
        let http_millis = http.then(|| wire::whole_millis(budget));
        if http_millis == Some(0) {
            return spent();
        }
        // The smallest budget the request carries out, if any: the transport (tonic's `Channel`)
        // or the server may enforce it before this layer's own timer fires.
        let mut on_wire: Option<Duration> = None;
        if grpc {
            let sent = GrpcTimeout::from_duration(budget);
            on_wire = Some(write_budget(
                req.headers_mut(),
                GRPC_TIMEOUT,
                sent.duration(),
                |b| GrpcTimeout::parse(b).ok().map(GrpcTimeout::duration),
                sent.to_header_value(),
            ));
        }
        if let Some(millis) = http_millis {
            let sent = write_budget(
                req.headers_mut(),
                self.config.http_header.clone(),
                Duration::from_millis(millis),
                |b| wire::parse_millis(b).ok(),
                wire::millis_value(millis),
            );
            on_wire = Some(on_wire.map_or(sent, |w| w.min(sent)));
        }
        if self.config.extensions {
            req.set_deadline(deadline);
        }
        let fut = {
            let _scope = deadline.enter_exact();
            self.inner.call(req)
        };
        let wire = on_wire.and_then(|w| now.checked_add(w));
        ResponseFuture::sent(fut, Some(deadline), now, wire, self.shared.clone())
    }
}
