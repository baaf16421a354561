//! Outbound propagation for clients: the remaining budget, minus a margin, travels in the
//! outgoing `grpc-timeout` or HTTP header, and is enforced locally.
//!
//! For each request, [`OutboundDeadline`]:
//!
//! 1. reads the deadline from the request's extensions or the task-local scope (so a handler
//!    behind [`InboundDeadlineLayer`](crate::inbound::InboundDeadlineLayer) needs no plumbing),
//!    capped by the layer's own [`cap`](OutboundDeadlineBuilder::cap) when set;
//! 2. fails fast with [`Stage::BeforeSend`], **without sending**, when
//!    the remaining budget is no more than the margin;
//! 3. writes remaining − margin (rounded down) into `grpc-timeout` (the finest unit that fits 8
//!    digits) for gRPC requests (`content-type: application/grpc…`), or into the millisecond
//!    HTTP header for others ([`Propagation`] changes that); a smaller value already on the
//!    request (say, from tonic's `Request::set_timeout`) is kept;
//! 4. enforces the deadline itself, so the call is cut even if the server ignores the header;
//! 5. takes an error of the inner service that comes **once the budget written on the request
//!    has run out** for that budget being enforced below it, and answers it as its own
//!    `DeadlineExceeded` ([`Stage::Call`]). tonic's `Channel` enforces the `grpc-timeout` it
//!    sends and fails with `tonic::TimeoutExpired`, which tonic reports as
//!    `CANCELLED "Timeout expired"`, possibly before this layer's timer fires (always, with a
//!    margin); the caller then sees `DEADLINE_EXCEEDED` whichever timer won (through
//!    `tower_red::grpc::client::ClientStatusLayer` on a tonic client). Errors that come earlier,
//!    and inner layers' [`Rejection`](tower_red::Rejection)s, pass through untouched.
//!
//! The margin is the time the response needs to travel back: the Google SRE book suggests
//! shaving a few hundred milliseconds; Envoy offers the same offset for `grpc-timeout`. An
//! upstream behind [`InboundDeadlineLayer`](crate::inbound::InboundDeadlineLayer) already gives
//! up its own inbound margin early, so the default here is zero.
//!
//! # Where it goes: innermost, just above the transport
//!
//! The budget is written when this layer's `call` runs. A wait *below* it (a bulkhead or pool
//! queue that waits inside the call, a `tower::buffer`) is spent after the header was written,
//! so the server would be told it has more time than is left. Put the layer innermost, right
//! above the client (`reqwest::Client`, tonic `Channel`): every wait above it, in `poll_ready`
//! or in a call, is then already subtracted. The standard client stack is
//! retry → breaker → bulkhead → per-attempt [`TimeoutBudgetLayer`](crate::TimeoutBudgetLayer)
//! → `OutboundDeadlineLayer` → transport. Below a `tower::buffer`, whose worker task makes the
//! inner calls, only a deadline in the request's extensions is seen (not the caller's
//! task-local one): a [`TimeoutBudgetLayer`](crate::TimeoutBudgetLayer) or
//! [`InboundDeadlineLayer`](crate::inbound::InboundDeadlineLayer) above puts it there. tonic's
//! `Channel` queues internally too; the server's inbound margin absorbs that wait.
//!
//! It serves `http::Request` (tonic `Channel`, hyper clients) and, with the `reqwest` feature,
//! `reqwest::Request` (whose deadline comes from the task-local scope only).
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_timeout_budget::{outbound::OutboundDeadlineLayer, Deadline};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let layer = OutboundDeadlineLayer::builder().margin(Duration::from_millis(50)).build().unwrap();
//! let client = ServiceBuilder::new().layer(layer).service(service_fn(|req: http::Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(req.headers()["x-request-timeout-ms"].clone())
//! }));
//! let sent = Deadline::after(Duration::from_secs(2)).scope(client.oneshot(http::Request::new(()))).await;
//! assert_eq!(sent.unwrap(), "1950");
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use tower_layer::Layer;
use tower_red::BoxError;
use tower_red::clock::{self, Scope};
use tower_red::parts::RequestParts;
use tower_service::Service;

use crate::config::{positive, validate_name};
use tower_red::ConfigError;
use tower_red::names::layer::DEADLINE_OUTBOUND;

use crate::error::Stage;
use crate::future::ResponseFuture;
use crate::metrics::{Kind, Name, Shared};
use crate::ready::ReadyWait;
use crate::wire::{self, DEFAULT_HTTP_HEADER, GRPC_TIMEOUT, GrpcTimeout};
use crate::{Deadline, DeadlineCarrier};

/// Which header carries the budget out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Propagation {
    /// `grpc-timeout` for gRPC requests (`content-type` starting with `application/grpc`),
    /// the HTTP header for the others (default).
    #[default]
    Auto,
    /// Always `grpc-timeout`.
    GrpcTimeout,
    /// Always the millisecond HTTP header.
    HttpHeader,
    /// Both headers.
    Both,
    /// No header: enforce locally only.
    None,
}

/// Builder of [`OutboundDeadlineLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct OutboundDeadlineBuilder {
    margin: Duration,
    propagation: Propagation,
    http_header: String,
    cap: Option<Duration>,
    name: Cow<'static, str>,
    metrics: bool,
}

impl Default for OutboundDeadlineBuilder {
    fn default() -> Self {
        OutboundDeadlineBuilder {
            margin: Duration::ZERO,
            propagation: Propagation::Auto,
            http_header: DEFAULT_HTTP_HEADER.to_owned(),
            cap: None,
            name: Cow::Borrowed("outbound"),
            metrics: true,
        }
    }
}

impl OutboundDeadlineBuilder {
    /// Subtracted from the remaining budget before it is sent, so the server gives up before
    /// this client does (default zero). A request with no more than this left is not sent.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Which header to write (default [`Propagation::Auto`]).
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// The millisecond HTTP header to write (default
    /// [`x-request-timeout-ms`](crate::wire::DEFAULT_HTTP_HEADER)).
    pub fn http_header(mut self, name: impl Into<String>) -> Self {
        self.http_header = name.into();
        self
    }

    /// A local cap for every call (default none: only an existing deadline applies, and a
    /// request without one is sent unchanged). Also bounds readiness waits.
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = Some(cap);
        self
    }

    /// The instance name (default `outbound`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Whether to record metrics (default on).
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Validates the configuration and registers the metric handles.
    pub fn build(self) -> Result<OutboundDeadlineLayer, ConfigError> {
        let cap = self
            .cap
            .map(|cap| positive(DEADLINE_OUTBOUND, "cap", cap))
            .transpose()?;
        if let Some(cap) = cap
            && self.margin >= cap
        {
            return Err(ConfigError::new(
                DEADLINE_OUTBOUND,
                "margin",
                self.margin,
                format!("must be smaller than the cap ({cap:?})"),
            ));
        }
        let http_header = HeaderName::from_bytes(self.http_header.as_bytes()).map_err(|_| {
            ConfigError::new(
                DEADLINE_OUTBOUND,
                "http_header",
                &self.http_header,
                "is not a valid header name",
            )
        })?;
        if http_header == GRPC_TIMEOUT {
            return Err(ConfigError::new(
                DEADLINE_OUTBOUND,
                "http_header",
                &self.http_header,
                "must not be grpc-timeout, which has its own format",
            ));
        }
        validate_name(DEADLINE_OUTBOUND, &self.name)?;
        Ok(OutboundDeadlineLayer {
            config: Arc::new(Config {
                margin: self.margin,
                propagation: self.propagation,
                http_header,
                cap,
            }),
            shared: Shared::new(
                Kind::Outbound,
                Name::new(self.name),
                self.metrics,
                [None; 2],
            ),
        })
    }
}

#[derive(Debug)]
struct Config {
    margin: Duration,
    propagation: Propagation,
    http_header: HeaderName,
    cap: Option<Duration>,
}

/// Layer that writes the remaining budget into outgoing requests and enforces it; see the
/// [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct OutboundDeadlineLayer {
    config: Arc<Config>,
    shared: Shared,
}

impl OutboundDeadlineLayer {
    /// No margin, automatic header choice, no local cap, metrics on.
    pub fn new() -> Self {
        OutboundDeadlineLayer {
            config: Arc::new(Config {
                margin: Duration::ZERO,
                propagation: Propagation::Auto,
                http_header: HeaderName::from_static(DEFAULT_HTTP_HEADER),
                cap: None,
            }),
            shared: Shared::new(Kind::Outbound, Name::Static("outbound"), true, [None; 2]),
        }
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

/// Service built by [`OutboundDeadlineLayer`].
pub struct OutboundDeadline<S> {
    inner: S,
    config: Arc<Config>,
    shared: Shared,
    ready: ReadyWait,
}

impl<S: Clone> Clone for OutboundDeadline<S> {
    fn clone(&self) -> Self {
        OutboundDeadline {
            inner: self.inner.clone(),
            config: self.config.clone(),
            shared: self.shared.clone(),
            ready: ReadyWait::default(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for OutboundDeadline<S> {
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

impl<S, R> Service<R> for OutboundDeadline<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: RequestParts + DeadlineCarrier,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

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
        if remaining.is_zero() || remaining <= self.config.margin {
            let stage = if since.is_some() {
                Stage::Ready
            } else {
                Stage::BeforeSend
            };
            return ResponseFuture::failed(self.shared.exceeded(stage, since.map(|s| now - s)));
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
        if http {
            let sent = write_budget(
                req.headers_mut(),
                self.config.http_header.clone(),
                budget,
                |b| wire::parse_millis(b).ok(),
                wire::millis_header_value(budget),
            );
            on_wire = Some(on_wire.map_or(sent, |w| w.min(sent)));
        }
        req.set_deadline(deadline);
        let fut = deadline.sync_scope_exact(|| self.inner.call(req));
        let wire = on_wire.and_then(|w| now.checked_add(w));
        ResponseFuture::sent(fut, Some(deadline), now, wire, self.shared.clone())
    }
}
