//! [`InboundDeadlineBuilder`] and its validation, and the configuration every service of one
//! layer shares.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tower_red::ConfigError;
use tower_red::classify::{AnyError, GrpcStatus, HttpStatus};
use tower_red::names::layer::DEADLINE_INBOUND;

use super::{DEFAULT_MARGIN, InboundDeadlineLayer};
use crate::config::{positive, validate_name};
use crate::metrics::{Kind, Name, Shared};
use crate::wire::{DEFAULT_HTTP_HEADER, GRPC_TIMEOUT};

/// Builder of [`InboundDeadlineLayer`]. `K` classifies finished calls for the RED `outcome`
/// (any `Err` is an `error` by default, see [`http_status`](Self::http_status) and
/// [`grpc_status`](Self::grpc_status)).
#[derive(Debug, Clone)]
#[must_use]
pub struct InboundDeadlineBuilder<K = AnyError> {
    cap: Option<Duration>,
    grpc: bool,
    http_header: Option<String>,
    strict: bool,
    margin: Duration,
    name: Cow<'static, str>,
    metrics: bool,
    extensions: bool,
    classifier: K,
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
            extensions: true,
            classifier: AnyError,
        }
    }
}

impl<K> InboundDeadlineBuilder<K> {
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

    /// Whether an `http::Request`'s deadline is also stored in its extensions (default on), as
    /// [`TimeoutBudgetBuilder::carry_in_extensions`](crate::TimeoutBudgetBuilder::carry_in_extensions)
    /// explains: the services this layer calls and polls in the same task read it from the
    /// task-local scope either way; off saves the 3 allocations of a first extension. The stack
    /// builder of `tower-idempotency` turns it off.
    pub fn carry_in_extensions(mut self, on: bool) -> Self {
        self.extensions = on;
        self
    }

    /// Judges finished calls with `classifier` (any [`tower_red::Classify`] of the inner
    /// service's response and a [`tower_red::BoxError`]) instead of [`AnyError`], as the
    /// breaker and bulkhead of the stack do. It decides only the RED `outcome` of a call that
    /// reached the inner service and finished, through [`tower_red::judge`] (an inner layer's
    /// refusal stays `inner_refusal`); this layer's own refusals are `timeout` or `rejected`
    /// whatever it says. It is called only when metrics are recorded.
    pub fn classifier<K2>(self, classifier: K2) -> InboundDeadlineBuilder<K2> {
        InboundDeadlineBuilder {
            cap: self.cap,
            grpc: self.grpc,
            http_header: self.http_header,
            strict: self.strict,
            margin: self.margin,
            name: self.name,
            metrics: self.metrics,
            extensions: self.extensions,
            classifier,
        }
    }

    /// Judges `http::Response`s by status ([`HttpStatus`]: 5xx and 429 are `error`): the
    /// choice for an axum router, whose handlers never fail with an `Err`. With the default
    /// classifier an `Ok` response is `ok` whatever its status.
    pub fn http_status(self) -> InboundDeadlineBuilder<HttpStatus> {
        self.classifier(HttpStatus::new())
    }

    /// Judges gRPC responses by `grpc-status` ([`GrpcStatus`]: UNAVAILABLE,
    /// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL and UNKNOWN are `error`): the choice for
    /// a tonic server, whose errors travel as statuses in `Ok` responses.
    pub fn grpc_status(self) -> InboundDeadlineBuilder<GrpcStatus> {
        self.classifier(GrpcStatus::new())
    }

    /// Validates the configuration and registers the metric handles.
    pub fn build(mut self) -> Result<InboundDeadlineLayer<K>, ConfigError> {
        let cap = self
            .cap
            .map(|cap| positive(DEADLINE_INBOUND, "cap", cap))
            .transpose()?;
        let http_header = self
            .http_header
            .take()
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
        Ok(self.assemble(cap, http_header))
    }

    /// Builds the layer from validated values and registers its metric handles.
    pub(crate) fn assemble(
        self,
        cap: Option<Duration>,
        http_header: Option<HeaderName>,
    ) -> InboundDeadlineLayer<K> {
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
            self.classifier,
        );
        InboundDeadlineLayer {
            config: Arc::new(Config {
                extensions: self.extensions,
                cap,
                grpc: self.grpc,
                http_header,
                strict: self.strict,
                margin: self.margin,
            }),
            shared,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) extensions: bool,
    pub(crate) cap: Option<Duration>,
    pub(crate) grpc: bool,
    pub(crate) http_header: Option<HeaderName>,
    pub(crate) strict: bool,
    pub(crate) margin: Duration,
}
