//! Inbound propagation for servers: the caller's remaining budget, from `grpc-timeout` or a
//! millisecond HTTP header, becomes the request's deadline.
//!
//! For each request, [`InboundDeadline`]:
//!
//! 1. reads `grpc-timeout` (the exact gRPC wire format, see [`wire`]) and the HTTP
//!    header (default [`x-request-timeout-ms`](crate::wire::DEFAULT_HTTP_HEADER), the format of
//!    Envoy's `x-envoy-expected-rq-timeout-ms`); when both are valid the smaller wins;
//! 2. clamps the budget by the server's cap (which also applies when no header is sent), as
//!    tonic's server does with its own timeout;
//! 3. treats a malformed value (never a panic) as absent and counts it in
//!    [`DEADLINE_HEADER_INVALID_TOTAL`](tower_red::names::DEADLINE_HEADER_INVALID_TOTAL), or in
//!    [strict](InboundDeadlineBuilder::strict) mode answers it with an
//!    [`InvalidDeadline`](tower_red::RejectionKind::InvalidDeadline) rejection (400 /
//!    `INVALID_ARGUMENT`);
//! 4. stores the [`Deadline`] in the request extensions **and** runs the inner call inside
//!    [`Deadline::scope`], so a handler's own outbound calls inherit it without plumbing;
//! 5. fails the call with a `DeadlineExceeded` rejection (504 / `DEADLINE_EXCEEDED`) when it
//!    passes, dropping (cancelling) the handler's future.
//!
//! Readiness waits are not bounded here (no request, so no header, exists yet): put a
//! [`TimeoutBudgetLayer`](crate::TimeoutBudgetLayer) below this layer for that.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_timeout_budget::{inbound::InboundDeadlineLayer, Deadline};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let layer = InboundDeadlineLayer::builder().cap(Duration::from_secs(10)).build().unwrap();
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(|_req: http::Request<()>| async {
//!     // Handler code sees the caller's budget without plumbing.
//!     Ok::<_, std::convert::Infallible>(Deadline::current().map(Deadline::remaining))
//! }));
//! let req = http::Request::builder().header("grpc-timeout", "1500m").body(()).unwrap();
//! // The default margin: this server gives up 20 ms before its caller.
//! assert_eq!(svc.oneshot(req).await.unwrap(), Some(Duration::from_millis(1_480)));
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderName;
use tower_layer::Layer;
use tower_red::BoxError;
use tower_red::clock::{self, Scope};
use tower_service::Service;

use crate::config::{positive, validate_name};
use tower_red::ConfigError;
use tower_red::names::layer::DEADLINE_INBOUND;

use crate::error::Stage;
use crate::future::ResponseFuture;
use crate::metrics::{Kind, Name, Shared};
use crate::wire::{self, DEFAULT_HTTP_HEADER, GRPC_TIMEOUT, GrpcTimeout};
use crate::{Deadline, DeadlineCarrier};

/// The default inbound [margin](InboundDeadlineBuilder::margin): 20 ms, at most half the
/// caller's budget.
///
/// Measured on loopback (a tonic caller with `set_timeout(200ms)`, a slow tonic server behind
/// this layer, a loaded 2-core machine): the server's answer reached the caller 2 to 16 ms after
/// the server gave up. With 10 ms, about 1 call in 40 still lost to the caller's own timer; with 0,
/// 9 in 9 did.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(20);

const GRPC_INDEX: usize = 0;
const HTTP_INDEX: usize = 1;

/// Builder of [`InboundDeadlineLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct InboundDeadlineBuilder {
    cap: Option<Duration>,
    grpc: bool,
    http_header: Option<String>,
    strict: bool,
    margin: Duration,
    name: Cow<'static, str>,
    metrics: bool,
}

impl Default for InboundDeadlineBuilder {
    fn default() -> Self {
        InboundDeadlineBuilder {
            cap: None,
            grpc: true,
            http_header: Some(DEFAULT_HTTP_HEADER.to_owned()),
            strict: false,
            margin: DEFAULT_MARGIN,
            name: Cow::Borrowed("inbound"),
            metrics: true,
        }
    }
}

impl InboundDeadlineBuilder {
    /// The server's cap: no request gets more, and requests without a header get exactly this.
    /// Without a cap, requests without a header get no deadline.
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = Some(cap);
        self
    }

    /// Whether to read `grpc-timeout` (default on).
    pub fn grpc_timeout(mut self, on: bool) -> Self {
        self.grpc = on;
        self
    }

    /// The millisecond HTTP header to read (default
    /// [`x-request-timeout-ms`](crate::wire::DEFAULT_HTTP_HEADER)); behind Envoy, use
    /// `x-envoy-expected-rq-timeout-ms`.
    pub fn http_header(mut self, name: impl Into<String>) -> Self {
        self.http_header = Some(name.into());
        self
    }

    /// Reads no HTTP header, only `grpc-timeout`.
    pub fn no_http_header(mut self) -> Self {
        self.http_header = None;
        self
    }

    /// Strict mode: a malformed header is answered with 400 / `INVALID_ARGUMENT` instead of
    /// being ignored (default off).
    pub fn strict(mut self, on: bool) -> Self {
        self.strict = on;
        self
    }

    /// Subtracted from the caller's budget (not from the cap), but never more than half of it,
    /// so this server gives up, and its `DEADLINE_EXCEEDED` travels back, before the caller's
    /// own timer fires (default [`DEFAULT_MARGIN`], 20 ms; Envoy offers the same offset).
    ///
    /// Two timers race this layer on gRPC: tonic's server enforces `grpc-timeout` outside every
    /// user layer and answers `CANCELLED "Timeout expired"` when it fires first, and the
    /// caller's `Channel` fails the call with `CANCELLED "Timeout expired"` when the response
    /// comes too late. With no margin most calls lose one race or the other; the default covers
    /// a loopback or same-zone round trip. Raise it to the round-trip time of slower links;
    /// `Duration::ZERO` turns it off. A caller's budget of `b` keeps at least `b / 2`, so short
    /// budgets are worked on rather than refused on arrival.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// The instance name (default `inbound`).
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
    pub fn build(self) -> Result<InboundDeadlineLayer, ConfigError> {
        let cap = self
            .cap
            .map(|cap| positive(DEADLINE_INBOUND, "cap", cap))
            .transpose()?;
        let http_header = self
            .http_header
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    ConfigError::new(
                        DEADLINE_INBOUND,
                        "http_header",
                        &h,
                        "is not a valid header name",
                    )
                })
            })
            .transpose()?;
        if http_header.as_ref() == Some(&GRPC_TIMEOUT) {
            return Err(ConfigError::new(
                DEADLINE_INBOUND,
                "http_header",
                GRPC_TIMEOUT.as_str(),
                "must not be grpc-timeout, which has its own format",
            ));
        }
        validate_name(DEADLINE_INBOUND, &self.name)?;
        let shared = Shared::new(
            Kind::Inbound {
                strict: self.strict,
            },
            Name::new(self.name),
            self.metrics,
            [
                self.grpc.then_some(GRPC_TIMEOUT.as_str()),
                http_header.as_ref().map(HeaderName::as_str),
            ],
        );
        Ok(InboundDeadlineLayer {
            config: Arc::new(Config {
                cap,
                grpc: self.grpc,
                http_header,
                strict: self.strict,
                margin: self.margin,
            }),
            shared,
        })
    }
}

#[derive(Debug)]
struct Config {
    cap: Option<Duration>,
    grpc: bool,
    http_header: Option<HeaderName>,
    strict: bool,
    margin: Duration,
}

/// Layer that turns the caller's `grpc-timeout` or HTTP deadline header into the request's
/// deadline; see the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct InboundDeadlineLayer {
    config: Arc<Config>,
    shared: Shared,
}

impl InboundDeadlineLayer {
    /// Reads both headers, no server cap, lenient, metrics on.
    pub fn new() -> Self {
        let shared = Shared::new(
            Kind::Inbound { strict: false },
            Name::Static("inbound"),
            true,
            [Some(GRPC_TIMEOUT.as_str()), Some(DEFAULT_HTTP_HEADER)],
        );
        InboundDeadlineLayer {
            config: Arc::new(Config {
                cap: None,
                grpc: true,
                http_header: Some(HeaderName::from_static(DEFAULT_HTTP_HEADER)),
                strict: false,
                margin: DEFAULT_MARGIN,
            }),
            shared,
        }
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

/// Service built by [`InboundDeadlineLayer`].
#[derive(Clone)]
pub struct InboundDeadline<S> {
    inner: S,
    config: Arc<Config>,
    shared: Shared,
}

impl<S: fmt::Debug> fmt::Debug for InboundDeadline<S> {
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

    tower_red::define_inner_service_accessors!();
}

/// The budget the headers of `req` ask for: `Ok(None)` when none is sent, `Err` with the
/// strict-mode detail when a header is malformed (after counting it).
fn header_budget(
    config: &Config,
    shared: &Shared,
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

impl<S, B> Service<http::Request<B>> for InboundDeadline<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

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
