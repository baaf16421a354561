//! [`OutboundDeadlineBuilder`] and its validation, [`Propagation`], and the configuration every
//! service of one layer shares.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tower_red::ConfigError;
use tower_red::classify::{AnyError, GrpcStatus, HttpStatus};
use tower_red::names::layer::DEADLINE_OUTBOUND;

use super::OutboundDeadlineLayer;
use crate::config::{positive, validate_name};
use crate::metrics::{Kind, Name, Shared};
use crate::wire::{DEFAULT_HTTP_HEADER, GRPC_TIMEOUT};

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

/// Builder of [`OutboundDeadlineLayer`]. `K` classifies finished calls for the RED `outcome`
/// (any `Err` is an `error` by default, see [`http_status`](Self::http_status) and
/// [`grpc_status`](Self::grpc_status)).
#[derive(Debug, Clone)]
#[must_use]
pub struct OutboundDeadlineBuilder<K = AnyError> {
    margin: Duration,
    propagation: Propagation,
    http_header: String,
    cap: Option<Duration>,
    name: Cow<'static, str>,
    metrics: bool,
    extensions: bool,
    classifier: K,
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
            extensions: true,
            classifier: AnyError,
        }
    }
}

impl<K> OutboundDeadlineBuilder<K> {
    /// Subtracted from the remaining budget before it is sent, so the server gives up before
    /// this client does (default zero). A request with no more than this left is not sent,
    /// nor one whose millisecond HTTP header would say `0` (under a millisecond past it).
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
    /// refusal stays `inner_refusal`); this layer's own refusals, an error once the budget sent
    /// has run out included, are `timeout` whatever it says. It is called only when metrics are
    /// recorded.
    pub fn classifier<K2>(self, classifier: K2) -> OutboundDeadlineBuilder<K2> {
        OutboundDeadlineBuilder {
            margin: self.margin,
            propagation: self.propagation,
            http_header: self.http_header,
            cap: self.cap,
            name: self.name,
            metrics: self.metrics,
            extensions: self.extensions,
            classifier,
        }
    }

    /// Judges `http::Response`s by status ([`HttpStatus`]: 5xx and 429 are `error`): the
    /// choice for a reqwest or hyper client. With the default classifier an `Ok` response is
    /// `ok` whatever its status.
    pub fn http_status(self) -> OutboundDeadlineBuilder<HttpStatus> {
        self.classifier(HttpStatus::new())
    }

    /// Judges gRPC responses by `grpc-status` ([`GrpcStatus`]: UNAVAILABLE,
    /// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL and UNKNOWN are `error`): the choice for
    /// a tonic `Channel`, whose errors travel as statuses in `Ok` responses.
    pub fn grpc_status(self) -> OutboundDeadlineBuilder<GrpcStatus> {
        self.classifier(GrpcStatus::new())
    }

    /// Validates the configuration and registers the metric handles.
    pub fn build(self) -> Result<OutboundDeadlineLayer<K>, ConfigError> {
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
        // The default name is static: cloning it for every request copies a pointer.
        let parsed = if self.http_header == DEFAULT_HTTP_HEADER {
            Ok(HeaderName::from_static(DEFAULT_HTTP_HEADER))
        } else {
            HeaderName::from_bytes(self.http_header.as_bytes())
        };
        let http_header = parsed.map_err(|_| {
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
        Ok(self.assemble(http_header, cap))
    }

    /// Builds the layer from validated values and registers its metric handles.
    pub(crate) fn assemble(
        self,
        http_header: HeaderName,
        cap: Option<Duration>,
    ) -> OutboundDeadlineLayer<K> {
        OutboundDeadlineLayer {
            config: Arc::new(Config {
                extensions: self.extensions,
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
                self.classifier,
            ),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) extensions: bool,
    pub(crate) margin: Duration,
    pub(crate) propagation: Propagation,
    pub(crate) http_header: HeaderName,
    pub(crate) cap: Option<Duration>,
}
