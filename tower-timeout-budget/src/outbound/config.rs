//! [`OutboundDeadlineBuilder`] and its validation, [`Propagation`], and the configuration every
//! service of one layer shares.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tower_red::ConfigError;
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
        Ok(self.assemble(http_header, cap))
    }

    /// Builds the layer from validated values and registers its metric handles.
    pub(crate) fn assemble(
        self,
        http_header: HeaderName,
        cap: Option<Duration>,
    ) -> OutboundDeadlineLayer {
        OutboundDeadlineLayer {
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
        }
    }
}

#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) margin: Duration,
    pub(crate) propagation: Propagation,
    pub(crate) http_header: HeaderName,
    pub(crate) cap: Option<Duration>,
}
