//! The builder of [`TimeoutBudgetLayer`] and its validation, and [`CapFn`], the per-request cap.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::layer::TimeoutBudgetLayer;
use crate::metrics::{Kind, Name, Shared};
use tower_red::ConfigError;
use tower_red::classify::{AnyError, GrpcStatus, HttpStatus};
use tower_red::names::layer::TIMEOUT;

/// The per-request cap of a [`TimeoutBudgetLayer`]: a function of the request that returns its
/// cap, or `None` for the layer's default cap (tower #798).
///
/// Implemented by [`DefaultCap`] (always the default) and by every
/// `Fn(&Req) -> Option<Duration>`.
pub trait CapFn<Req> {
    /// The cap for `req`, or `None` for the layer's default.
    fn cap(&self, req: &Req) -> Option<Duration>;
}

/// The [`CapFn`] of a layer without a per-request cap: every request gets the default cap.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultCap;

impl<Req> CapFn<Req> for DefaultCap {
    #[inline]
    fn cap(&self, _req: &Req) -> Option<Duration> {
        None
    }
}

impl<Req, F> CapFn<Req> for F
where
    F: Fn(&Req) -> Option<Duration>,
{
    #[inline]
    fn cap(&self, req: &Req) -> Option<Duration> {
        self(req)
    }
}

/// Builder of [`TimeoutBudgetLayer`]; [`build`](Self::build) validates every field. `C` is the
/// per-request cap ([`CapFn`]); `K` classifies finished calls for the RED `outcome` (any `Err`
/// is an `error` by default, see [`http_status`](Self::http_status) and
/// [`grpc_status`](Self::grpc_status)).
///
/// ```
/// use std::time::Duration;
/// use tower_timeout_budget::TimeoutBudgetLayer;
///
/// let layer = TimeoutBudgetLayer::builder()
///     .cap(Duration::from_secs(2))
///     // uploads get longer; everything else the default cap
///     .cap_fn(|req: &http::Request<()>| {
///         (req.uri().path() == "/upload").then_some(Duration::from_secs(30))
///     })
///     .ready_timeout(Duration::from_millis(500))
///     // a 5xx is `outcome="error"`, as the breaker and bulkhead of the stack judge it
///     .http_status()
///     .name("checkout")
///     .build()
///     .expect("valid configuration");
/// # let _ = layer;
/// ```
#[must_use]
pub struct TimeoutBudgetBuilder<C = DefaultCap, K = AnyError> {
    cap: Option<Duration>,
    cap_fn: C,
    ready_timeout: Option<Duration>,
    name: Cow<'static, str>,
    metrics: bool,
    extensions: bool,
    classifier: K,
}

impl<C, K> fmt::Debug for TimeoutBudgetBuilder<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutBudgetBuilder")
            .field("cap", &self.cap)
            .field("ready_timeout", &self.ready_timeout)
            .field("name", &self.name)
            .field("metrics", &self.metrics)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

impl Default for TimeoutBudgetBuilder {
    fn default() -> Self {
        TimeoutBudgetBuilder {
            cap: None,
            cap_fn: DefaultCap,
            ready_timeout: None,
            name: Cow::Borrowed("timeout"),
            metrics: true,
            extensions: true,
            classifier: AnyError,
        }
    }
}

impl<C, K> TimeoutBudgetBuilder<C, K> {
    /// The default cap (required): a request gets min(its deadline, start + cap), where the
    /// start is the beginning of the readiness wait, or the call when the service was ready.
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = Some(cap);
        self
    }

    /// A per-request cap: `f(&req)` returns the request's cap, or `None` for the default.
    pub fn cap_fn<G>(self, f: G) -> TimeoutBudgetBuilder<G, K> {
        TimeoutBudgetBuilder {
            cap: self.cap,
            cap_fn: f,
            ready_timeout: self.ready_timeout,
            name: self.name,
            metrics: self.metrics,
            extensions: self.extensions,
            classifier: self.classifier,
        }
    }

    /// Judges finished calls with `classifier` (any [`tower_red::Classify`] of the inner
    /// service's response and a [`tower_red::BoxError`]) instead of
    /// [`AnyError`], as the breaker and bulkhead of the stack do. It decides only the RED
    /// `outcome` of a call that reached the inner service and finished, through
    /// [`tower_red::judge`] (an inner layer's refusal stays `inner_refusal`); this layer's own
    /// refusals are `timeout` whatever it says. It is called only when metrics are recorded.
    pub fn classifier<K2>(self, classifier: K2) -> TimeoutBudgetBuilder<C, K2> {
        TimeoutBudgetBuilder {
            cap: self.cap,
            cap_fn: self.cap_fn,
            ready_timeout: self.ready_timeout,
            name: self.name,
            metrics: self.metrics,
            extensions: self.extensions,
            classifier,
        }
    }

    /// Judges `http::Response`s by status ([`HttpStatus`]: 5xx and 429 are `error`): the
    /// choice for an axum router or a reqwest client. With the default classifier an `Ok`
    /// response is `ok` whatever its status.
    pub fn http_status(self) -> TimeoutBudgetBuilder<C, HttpStatus> {
        self.classifier(HttpStatus::new())
    }

    /// Judges gRPC responses by `grpc-status` ([`GrpcStatus`]: UNAVAILABLE,
    /// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL and UNKNOWN are `error`): the choice for
    /// a tonic server or channel, whose errors travel as statuses in `Ok` responses.
    pub fn grpc_status(self) -> TimeoutBudgetBuilder<C, GrpcStatus> {
        self.classifier(GrpcStatus::new())
    }

    /// The longest wait for the inner service's readiness, before any request is known: the
    /// time waited since the last call, in all when the service was ready in between and
    /// stopped being ready before a call (the idle time between the waits is not counted).
    /// Defaults to the default cap. The task-local deadline, when there is one, bounds it too.
    pub fn ready_timeout(mut self, limit: Duration) -> Self {
        self.ready_timeout = Some(limit);
        self
    }

    /// The instance name: the `name` label of the metrics and the name in rejections
    /// (default `timeout`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Whether to record RED metrics and deadline-exceeded counts (default on). Without them
    /// a call that completes at once reads the clock once instead of twice.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Whether an `http::Request`'s deadline is also stored in its extensions (default on).
    ///
    /// Every layer and service this one calls and polls in the same task reads the deadline
    /// from the task-local scope whatever this says ([`Deadline::current`](crate::Deadline::current);
    /// [`DeadlineCarrier::deadline`](crate::DeadlineCarrier::deadline) returns the earlier of it
    /// and a deadline in the request's extensions, so a later one an outer layer left there does
    /// not hide this one). Off, a `Deadline` already in the extensions is left as it was: code
    /// that reads the extension itself (axum's `Extension<Deadline>`) sees that one. The
    /// extensions are what carries it further: to a service that moves the request to another
    /// task (`tower::buffer`, a spawned worker) and reads it there. Storing it is not free: the
    /// first value in a request's empty extensions costs 3 allocations, and every copy a retry
    /// makes of the request clones them again. A stack whose inner layers all stay on the task
    /// (the one `tower-idempotency`'s stack builder assembles) turns it off.
    pub fn carry_in_extensions(mut self, on: bool) -> Self {
        self.extensions = on;
        self
    }

    /// Validates the configuration and registers the metric handles with the recorder
    /// installed now.
    pub fn build(self) -> Result<TimeoutBudgetLayer<C, K>, ConfigError> {
        let cap = match self.cap {
            None => {
                return Err(ConfigError::new(
                    TIMEOUT,
                    "cap",
                    Option::<Duration>::None,
                    "is required",
                ));
            }
            Some(cap) => positive(TIMEOUT, "cap", cap)?,
        };
        let ready_timeout = match self.ready_timeout {
            None => cap,
            Some(limit) => positive(TIMEOUT, "ready_timeout", limit)?,
        };
        validate_name(TIMEOUT, &self.name)?;
        let shared = Shared::new(
            Kind::Timeout,
            Name::new(self.name),
            self.metrics,
            [None; 2],
            self.classifier,
        );
        Ok(TimeoutBudgetLayer::from_parts(
            cap,
            self.cap_fn,
            ready_timeout,
            self.extensions,
            shared,
        ))
    }
}

/// `value`, unless it is zero.
pub(crate) fn positive(
    layer: &'static str,
    field: &'static str,
    value: Duration,
) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        Err(ConfigError::new(
            layer,
            field,
            value,
            "must be greater than zero",
        ))
    } else {
        Ok(value)
    }
}

/// An instance name is a metric label: not empty, and short.
pub(crate) fn validate_name(layer: &'static str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new(layer, "name", name, "must not be empty"));
    }
    if name.len() > 64 {
        return Err(ConfigError::new(
            layer,
            "name",
            name,
            "must be at most 64 bytes (it is a metric label)",
        ));
    }
    Ok(())
}
