//! The builder of [`IdempotencyLayer`] and its validation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode, request::Parts};
use tower_red::ConfigError;

use crate::body::RequestBody;
use crate::layer::IdempotencyLayer;
use crate::metrics::Metrics;
use crate::store::Store;

const LAYER: &str = "IdempotencyLayer";
/// The bound on the lease, the in-flight wait and the fail-closed `Retry-After`.
const DAY: Duration = Duration::from_secs(86_400);

/// Who is calling: the principal that scopes keys, from the request head.
pub(crate) type PrincipalFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;
/// The route template of a request (such as axum's `MatchedPath`).
pub(crate) type RouteFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// What a duplicate of a request still in flight gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InFlight {
    /// 409 Conflict at once, with `Retry-After` from the first request's lease left (the draft's
    /// behaviour). The default.
    Conflict,
    /// Wait for the first request's result and replay it, for at most this long and never past
    /// the request's [`Deadline`](tower_timeout_budget::Deadline); then 409 as above. Positive
    /// and at most a day.
    Wait(Duration),
}

/// What a request whose body is larger than [`max_request_bytes`](IdempotencyLayerBuilder::max_request_bytes) gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Oversized {
    /// 413 Content Too Large, with a problem+json body. The default.
    Reject,
    /// Sent on to the service once, without deduplication (it cannot be fingerprinted).
    PassThrough,
}

/// What a store error does to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnStoreError {
    /// 503 with `Retry-After` (this many seconds, at least 1 and at most a day): no request runs
    /// without its key checked. The default, with 1 second.
    FailClosed(Duration),
    /// Run the request without deduplication. Duplicates may run twice while the store is down.
    FailOpen,
}

/// Which responses are stored for replay; the others release the key so the client may retry.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum StorePolicy {
    /// Store everything but 5xx, 408, 409 and 429, which a client is expected to retry, and the
    /// gRPC statuses that stand for them (`grpc-status` in the headers of a trailers-only
    /// response, or in the trailers): `CANCELLED`, `UNKNOWN`, `DEADLINE_EXCEEDED`,
    /// `RESOURCE_EXHAUSTED`, `ABORTED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE` and
    /// `DATA_LOSS`. The default.
    Retryable,
    /// Store every response, errors included (Stripe's behaviour).
    Everything,
    /// Store the responses whose HTTP status this function accepts (a gRPC status is not
    /// passed to it).
    Custom(fn(StatusCode) -> bool),
}

/// The gRPC codes [`StorePolicy::Retryable`] does not store, as bits: those of its HTTP
/// statuses in gRPC's own mapping (`UNKNOWN`, `INTERNAL`, `DATA_LOSS` 500, `UNIMPLEMENTED` 501,
/// `UNAVAILABLE` 503, `DEADLINE_EXCEEDED` 504, `ABORTED` 409, `RESOURCE_EXHAUSTED` 429), and
/// `CANCELLED`, a call that never finished. `ALREADY_EXISTS` (also 409 there) is an answer.
const RETRYABLE_GRPC: u32 =
    1 << 1 | 1 << 2 | 1 << 4 | 1 << 8 | 1 << 10 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15;

impl StorePolicy {
    pub(crate) fn stores(self, status: StatusCode) -> bool {
        match self {
            StorePolicy::Retryable => {
                !(status.is_server_error()
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::CONFLICT
                    || status == StatusCode::TOO_MANY_REQUESTS)
            }
            StorePolicy::Everything => true,
            StorePolicy::Custom(f) => f(status),
        }
    }

    /// Whether a response whose `grpc-status` (in its headers or its trailers) is `status` is
    /// stored; `None` (not gRPC) is.
    pub(crate) fn stores_grpc(self, status: Option<&http::HeaderValue>) -> bool {
        let Some(status) = status else { return true };
        match self {
            StorePolicy::Retryable => !std::str::from_utf8(status.as_bytes())
                .ok()
                .and_then(|code| code.parse::<u32>().ok())
                .is_some_and(|code| code < 32 && RETRYABLE_GRPC & (1 << code) != 0),
            StorePolicy::Everything | StorePolicy::Custom(_) => true,
        }
    }
}

impl fmt::Debug for StorePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorePolicy::Retryable => f.write_str("Retryable"),
            StorePolicy::Everything => f.write_str("Everything"),
            StorePolicy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Turns the layer's [`RequestBody`] into the body type the inner service takes.
///
/// The default, [`Wrap`], passes [`RequestBody`] itself. Any `Fn(RequestBody<B>) -> Out` is one
/// too, such as `axum::body::Body::new` for axum's `Router::layer`.
pub trait MapRequestBody<B>: Clone + Send + Sync + 'static {
    /// The body the inner service takes.
    type Output;

    /// Converts one body.
    fn map(&self, body: RequestBody<B>) -> Self::Output;
}

/// The default [`MapRequestBody`]: the inner service takes [`RequestBody`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Wrap;

impl<B> MapRequestBody<B> for Wrap {
    type Output = RequestBody<B>;

    fn map(&self, body: RequestBody<B>) -> RequestBody<B> {
        body
    }
}

impl<B, F, Out> MapRequestBody<B> for F
where
    F: Fn(RequestBody<B>) -> Out + Clone + Send + Sync + 'static,
{
    type Output = Out;

    fn map(&self, body: RequestBody<B>) -> Out {
        self(body)
    }
}

/// The validated settings shared by every clone of a layer and its services.
pub(crate) struct Config<St> {
    pub(crate) store: St,
    pub(crate) header: HeaderName,
    pub(crate) prefix: String,
    pub(crate) principal: Option<PrincipalFn>,
    pub(crate) route: Option<RouteFn>,
    pub(crate) required: bool,
    pub(crate) max_request_bytes: usize,
    pub(crate) oversized: Oversized,
    pub(crate) in_flight: InFlight,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) max_response_bytes: usize,
    pub(crate) policy: StorePolicy,
    pub(crate) deny: Vec<HeaderName>,
    pub(crate) on_store_error: OnStoreError,
    pub(crate) metrics: Metrics,
    pub(crate) name: Arc<str>,
}

/// Builds an [`IdempotencyLayer`]; every value is checked in [`build`](Self::build).
///
/// ```
/// use std::time::Duration;
/// use tower_idempotency::{IdempotencyLayer, InFlight, StorePolicy};
/// use tower_idempotency::store::MemoryStore;
///
/// let layer = IdempotencyLayer::builder(MemoryStore::new())
///     .name("payments")
///     .principal(|parts| {
///         parts.headers.get("x-user-id")?.to_str().ok().map(str::to_owned)
///     })
///     .required(true)
///     .in_flight(InFlight::Wait(Duration::from_secs(5)))
///     .store_policy(StorePolicy::Everything)
///     .build()
///     .expect("valid settings");
/// # let _ = layer;
///
/// let err = IdempotencyLayer::builder(MemoryStore::new()).ttl(Duration::ZERO).build().unwrap_err();
/// assert!(err.to_string().contains("ttl"));
/// ```
#[must_use]
pub struct IdempotencyLayerBuilder<St, M = Wrap> {
    store: St,
    map: M,
    name: String,
    header: HeaderName,
    prefix: String,
    principal: Option<PrincipalFn>,
    route: Option<RouteFn>,
    required: bool,
    max_request_bytes: usize,
    oversized: Oversized,
    in_flight: InFlight,
    ttl: Duration,
    lease: Duration,
    max_response_bytes: usize,
    policy: StorePolicy,
    deny: Vec<HeaderName>,
    on_store_error: OnStoreError,
}

impl<St, M: fmt::Debug> fmt::Debug for IdempotencyLayerBuilder<St, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("name", &self.name)
            .field("header", &self.header)
            .field("required", &self.required)
            .field("in_flight", &self.in_flight)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<St: Store> IdempotencyLayerBuilder<St> {
    pub(crate) fn new(store: St) -> Self {
        Self {
            store,
            map: Wrap,
            name: "idempotency".to_owned(),
            header: HeaderName::from_static("idempotency-key"),
            prefix: "idem".to_owned(),
            principal: None,
            route: None,
            required: false,
            max_request_bytes: 1 << 20,
            oversized: Oversized::Reject,
            in_flight: InFlight::Conflict,
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
            max_response_bytes: 1 << 20,
            policy: StorePolicy::Retryable,
            deny: Vec::new(),
            on_store_error: OnStoreError::FailClosed(Duration::from_secs(1)),
        }
    }
}

impl<St: Store, M> IdempotencyLayerBuilder<St, M> {
    /// The instance name in metric labels. Default `idempotency`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The header that carries the key. Default `Idempotency-Key`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// A prefix mixed into every stored key, so services sharing a store never share keys.
    /// Default `idem`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Who is calling (a user id, an API key id, a tenant), from the request head: two principals
    /// sending the same key never see each other's responses.
    ///
    /// **Without a principal, keys are shared by every caller**: anyone who learns or guesses
    /// another caller's key (keys are often logged) receives that caller's stored response, and
    /// can block their retries with 409s. Set one on any service with more than one caller. A
    /// request for which the function returns `None` is scoped as anonymous (all such requests
    /// share keys); put authentication in front of this layer.
    pub fn principal<F>(mut self, principal: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.principal = Some(Arc::new(principal));
        self
    }

    /// The route template of a request (with axum, read `axum::extract::MatchedPath` from the
    /// extensions). Default: the request path, which scopes at least as finely.
    pub fn route<F>(mut self, route: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.route = Some(Arc::new(route));
        self
    }

    /// Whether POST and PATCH requests without a key are refused with 400. Default `false`.
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// The largest request body read to fingerprint a request. Default 1 MiB.
    pub fn max_request_bytes(mut self, max: usize) -> Self {
        self.max_request_bytes = max;
        self
    }

    /// What a larger body gets. Default [`Oversized::Reject`].
    pub fn oversized(mut self, oversized: Oversized) -> Self {
        self.oversized = oversized;
        self
    }

    /// What a duplicate of a running request gets. Default [`InFlight::Conflict`].
    pub fn in_flight(mut self, in_flight: InFlight) -> Self {
        self.in_flight = in_flight;
        self
    }

    /// How long a stored response is replayed. Default 24 hours.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The shortest claim on a key: a claim lasts this long or the request's remaining deadline,
    /// whichever is longer, and is renewed while the handler runs and its response body is read.
    /// Default 60 seconds.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The largest response body stored for replay. Default 1 MiB. A larger response is sent to
    /// its client as it streams and is **not stored**: the key is released, so a retry of it
    /// runs the handler again (logged as a warning). Size this for your largest response.
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// Which responses are stored. Default [`StorePolicy::Retryable`].
    pub fn store_policy(mut self, policy: StorePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Headers never stored nor replayed, besides the hop-by-hop ones, `Set-Cookie` and
    /// `Content-Length` (recomputed).
    pub fn deny_header(mut self, header: HeaderName) -> Self {
        self.deny.push(header);
        self
    }

    /// What a store error does. Default [`OnStoreError::FailClosed`] with 1 second.
    pub fn on_store_error(mut self, on_error: OnStoreError) -> Self {
        self.on_store_error = on_error;
        self
    }

    /// Converts the layer's [`RequestBody`] for the inner service; with axum's `Router::layer`,
    /// `.map_request_body(axum::body::Body::new)`.
    pub fn map_request_body<B, N: MapRequestBody<B>>(
        self,
        map: N,
    ) -> IdempotencyLayerBuilder<St, N> {
        IdempotencyLayerBuilder {
            store: self.store,
            map,
            name: self.name,
            header: self.header,
            prefix: self.prefix,
            principal: self.principal,
            route: self.route,
            required: self.required,
            max_request_bytes: self.max_request_bytes,
            oversized: self.oversized,
            in_flight: self.in_flight,
            ttl: self.ttl,
            lease: self.lease,
            max_response_bytes: self.max_response_bytes,
            policy: self.policy,
            deny: self.deny,
            on_store_error: self.on_store_error,
        }
    }

    /// Validates the settings and registers the metrics (with the recorder installed now).
    pub fn build(self) -> Result<IdempotencyLayer<St, M>, ConfigError> {
        let positive = |field: &'static str, value: Duration| {
            if value.is_zero() {
                Err(ConfigError::new(LAYER, field, value, "must be positive"))
            } else {
                Ok(())
            }
        };
        positive("ttl", self.ttl)?;
        positive("lease", self.lease)?;
        if self.ttl > Duration::from_secs(365 * 86_400) {
            return Err(ConfigError::new(
                LAYER,
                "ttl",
                self.ttl,
                "must be at most a year",
            ));
        }
        if self.lease > DAY {
            return Err(ConfigError::new(
                LAYER,
                "lease",
                self.lease,
                "must be at most a day",
            ));
        }
        if let InFlight::Wait(max) = self.in_flight {
            positive("in_flight", max)?;
            // Past it the wait is no bound at all (and `Duration::MAX` overflowed the clock on
            // every keyed request).
            if max > DAY {
                return Err(ConfigError::new(
                    LAYER,
                    "in_flight",
                    max,
                    "the wait must be at most a day",
                ));
            }
        }
        if let OnStoreError::FailClosed(retry_after) = self.on_store_error {
            if retry_after < Duration::from_secs(1) {
                return Err(ConfigError::new(
                    LAYER,
                    "on_store_error",
                    retry_after,
                    "Retry-After must be at least one second",
                ));
            }
            // `Duration::MAX` overflowed rounding up to whole seconds in every refusal.
            if retry_after > DAY {
                return Err(ConfigError::new(
                    LAYER,
                    "on_store_error",
                    retry_after,
                    "Retry-After must be at most a day",
                ));
            }
        }
        if self.name.is_empty() {
            return Err(ConfigError::new(LAYER, "name", "", "must not be empty"));
        }
        let metrics = Metrics::new(&self.name);
        Ok(IdempotencyLayer::from_config(
            Arc::new(Config {
                store: self.store,
                header: self.header,
                prefix: self.prefix,
                principal: self.principal,
                route: self.route,
                required: self.required,
                max_request_bytes: self.max_request_bytes,
                oversized: self.oversized,
                in_flight: self.in_flight,
                ttl: self.ttl,
                lease: self.lease,
                max_response_bytes: self.max_response_bytes,
                policy: self.policy,
                deny: self.deny,
                on_store_error: self.on_store_error,
                metrics,
                name: Arc::from(self.name.as_str()),
            }),
            self.map,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const DAY: Duration = Duration::from_secs(86_400);

    /// The error `build` gives for one setting, or `None` when it accepts it.
    fn refused(
        set: impl FnOnce(IdempotencyLayerBuilder<MemoryStore>) -> IdempotencyLayerBuilder<MemoryStore>,
    ) -> Option<ConfigError> {
        set(IdempotencyLayer::builder(MemoryStore::new()))
            .build()
            .err()
    }

    #[test]
    fn a_wait_longer_than_a_day_is_refused_naming_in_flight() {
        assert!(refused(|b| b.in_flight(InFlight::Wait(DAY))).is_none());
        for wait in [DAY + Duration::from_nanos(1), Duration::MAX] {
            let err = refused(|b| b.in_flight(InFlight::Wait(wait)))
                .unwrap_or_else(|| panic!("InFlight::Wait({wait:?}) was accepted"));
            assert_eq!(err.field(), "in_flight");
            assert_eq!(err.value(), format!("{wait:?}"));
        }
    }

    #[test]
    fn a_lease_of_a_day_is_the_longest_and_a_ttl_of_a_year() {
        assert!(refused(|b| b.lease(DAY)).is_none());
        let err = refused(|b| b.lease(DAY + Duration::from_nanos(1))).expect("past a day");
        assert_eq!(err.field(), "lease");
        let year = Duration::from_secs(365 * 86_400);
        assert!(refused(|b| b.ttl(year)).is_none());
        let err = refused(|b| b.ttl(year + Duration::from_nanos(1))).expect("past a year");
        assert_eq!(err.field(), "ttl");
    }

    #[test]
    fn a_fail_closed_retry_after_longer_than_a_day_is_refused_naming_on_store_error() {
        assert!(refused(|b| b.on_store_error(OnStoreError::FailClosed(DAY))).is_none());
        for after in [DAY + Duration::from_nanos(1), Duration::MAX] {
            let err = refused(|b| b.on_store_error(OnStoreError::FailClosed(after)))
                .unwrap_or_else(|| panic!("OnStoreError::FailClosed({after:?}) was accepted"));
            assert_eq!(err.field(), "on_store_error");
            assert_eq!(err.value(), format!("{after:?}"));
        }
    }

    #[test]
    fn the_default_policy_releases_what_a_client_should_retry() {
        let p = StorePolicy::Retryable;
        for code in [200, 201, 400, 404, 422] {
            assert!(p.stores(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [408, 409, 429, 500, 502, 503] {
            assert!(!p.stores(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        assert!(StorePolicy::Everything.stores(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!StorePolicy::Custom(|s| s == StatusCode::OK).stores(StatusCode::CREATED));
    }

    #[test]
    fn the_default_policy_releases_the_grpc_statuses_a_client_should_retry() {
        let grpc = |p: StorePolicy, v: &'static str| {
            p.stores_grpc(Some(&http::HeaderValue::from_static(v)))
        };
        let released = [1, 2, 4, 8, 10, 12, 13, 14, 15];
        for code in 0..=16 {
            let value: &'static str = Box::leak(code.to_string().into_boxed_str());
            assert_eq!(
                grpc(StorePolicy::Retryable, value),
                !released.contains(&code),
                "grpc-status {code}"
            );
            assert!(grpc(StorePolicy::Everything, value), "{code}");
            assert!(grpc(StorePolicy::Custom(|_| false), value), "{code}");
        }
        // Not a gRPC status: stored as the HTTP status decides.
        for value in ["", "x", "31", "32", "99", "4294967296", "-1"] {
            assert!(grpc(StorePolicy::Retryable, value), "{value:?}");
        }
        assert!(StorePolicy::Retryable.stores_grpc(None));
    }
}
