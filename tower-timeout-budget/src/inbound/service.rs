//! [`InboundDeadline`]: reads the caller's budget from the request's headers and enforces it.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
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

/// Past this many header names, [`find_two`] looks the two names up by hash instead.
const SCAN_MAX: usize = 16;

/// The first value of each of two header names, as `HeaderMap::get` gives it. A request carries
/// a handful of headers, and these two are usually absent: comparing the names (one compare of
/// the name's kind for a standard header such as `host`) costs less than `get`, which hashes a
/// custom name such as `x-request-timeout-ms` byte by byte (about 150 instructions for each of
/// the two lookups, end to end). The names are scanned first, one entry per name; the values
/// (whose iterator also walks each name's extra values) only when one of the two is there.
#[inline]
fn find_two<'h>(
    headers: &'h http::HeaderMap,
    a: Option<&HeaderName>,
    b: Option<&HeaderName>,
) -> (Option<&'h HeaderValue>, Option<&'h HeaderValue>) {
    if headers.keys_len() > SCAN_MAX {
        return (
            a.and_then(|a| headers.get(a)),
            b.and_then(|b| headers.get(b)),
        );
    }
    // The names alone first (a slice, one entry per name): usually neither is there.
    let present = match (a, b) {
        (Some(a), Some(b)) => headers.keys().any(|name| name == a || name == b),
        (Some(one), None) | (None, Some(one)) => headers.keys().any(|name| name == one),
        (None, None) => false,
    };
    if !present {
        return (None, None);
    }
    let (mut found_a, mut found_b) = (None, None);
    // `iter` yields each name's values in order, its first value first.
    for (name, value) in headers {
        if found_a.is_none() && a == Some(name) {
            found_a = Some(value);
        }
        if found_b.is_none() && b == Some(name) {
            found_b = Some(value);
        }
    }
    (found_a, found_b)
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
    let grpc_timeout = GRPC_TIMEOUT;
    let grpc = config.grpc.then_some(&grpc_timeout);
    let (grpc_value, http_value) = find_two(headers, grpc, config.http_header.as_ref());
    if let Some(value) = grpc_value {
        match GrpcTimeout::parse(value.as_bytes()) {
            Ok(t) => budget = Some(t.duration()),
            Err(_) => {
                shared.invalid_header(GRPC_INDEX, GRPC_TIMEOUT.as_str());
                malformed = Some("malformed grpc-timeout header");
            }
        }
    }
    if let (Some(name), Some(value)) = (&config.http_header, http_value) {
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

    // Forced inline, as the server stack's other pass-through steps: measured, the five save
    // ~200 instructions a call there (benches/README, "RED in a stack").
    #[inline(always)]
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
        if self.config.extensions {
            req.set_deadline(deadline);
        }
        let fut = {
            let _scope = deadline.enter_exact();
            self.inner.call(req)
        };
        ResponseFuture::running(fut, Some(deadline), now, self.shared.clone())
    }
}
