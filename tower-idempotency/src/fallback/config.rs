//! The builder of [`FallbackLayer`], what triggers a fallback, and what a fallback function sees.

use std::fmt;
use std::ops::BitOr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, Uri};
use tower_red::classify::{AnyError, FailureClass, HttpStatus};
use tower_red::red::{Outcome, RedMetrics};
use tower_red::{ConfigError, RejectionKind};

use super::LAYER;
use super::exchange::RequestView;
use super::layer::{FallbackLayer, Shared};
use super::stale::Stale;

/// When a [`FallbackLayer`] answers in place of the call. Combine with `|`; the default is
/// [`When::all`].
///
/// ```
/// use tower_idempotency::fallback::When;
///
/// let when = When::circuit_open() | When::overload();
/// assert!(when.contains(When::overload()));
/// assert!(!when.contains(When::failure()));
/// assert!(When::all().contains(When::refused() | When::failure()));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct When(u8);

impl When {
    const CIRCUIT_OPEN: u8 = 1;
    const OVERLOAD: u8 = 2;
    const DEADLINE: u8 = 4;
    const RETRY_BUDGET: u8 = 8;
    const FAILURE: u8 = 16;

    /// A breaker inside refused the call (`circuit_open`).
    pub const fn circuit_open() -> When {
        When(Self::CIRCUIT_OPEN)
    }

    /// A bulkhead or load shedder inside refused it (`bulkhead_full`, `queue_timeout`,
    /// `load_shed`).
    pub const fn overload() -> When {
        When(Self::OVERLOAD)
    }

    /// The request's deadline passed inside (`deadline_exceeded`): before the call was sent
    /// (on arrival, in a queue, before sending) or while it ran.
    pub const fn deadline() -> When {
        When(Self::DEADLINE)
    }

    /// A retry layer inside ran out of retry budget (`retry_budget_exhausted`).
    pub const fn retry_budget() -> When {
        When(Self::RETRY_BUDGET)
    }

    /// Every refusal above: the ones that say the backend is unavailable, not that the
    /// request is wrong (idempotency refusals, a malformed deadline header and a store outage
    /// never trigger a fallback).
    pub const fn refused() -> When {
        When(Self::CIRCUIT_OPEN | Self::OVERLOAD | Self::DEADLINE | Self::RETRY_BUDGET)
    }

    /// The call reached the backend and the layer's classifier judged it a failure (any `Err`
    /// that is not a refusal with the default classifier; 5xx and 429 with
    /// [`FallbackLayerBuilder::http_status`]).
    pub const fn failure() -> When {
        When(Self::FAILURE)
    }

    /// Every refusal and every failure: the default.
    pub const fn all() -> When {
        When(Self::refused().0 | Self::FAILURE)
    }

    /// Whether every trigger of `other` is in `self`.
    pub const fn contains(self, other: When) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether a call that ended for `reason` triggers a fallback.
    pub fn matches(self, reason: Reason) -> bool {
        let bit = match reason {
            Reason::Refused(RejectionKind::CircuitOpen) => Self::CIRCUIT_OPEN,
            Reason::Refused(
                RejectionKind::BulkheadFull | RejectionKind::QueueTimeout | RejectionKind::LoadShed,
            ) => Self::OVERLOAD,
            Reason::Refused(RejectionKind::DeadlineExceeded) => Self::DEADLINE,
            Reason::Refused(RejectionKind::RetryBudgetExhausted) => Self::RETRY_BUDGET,
            Reason::Refused(_) => 0,
            Reason::Failure(_) => Self::FAILURE,
        };
        self.0 & bit != 0
    }
}

impl BitOr for When {
    type Output = When;
    fn bitor(self, rhs: When) -> When {
        When(self.0 | rhs.0)
    }
}

impl Default for When {
    fn default() -> Self {
        When::all()
    }
}

impl fmt::Debug for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::CIRCUIT_OPEN, "circuit_open"),
            (Self::OVERLOAD, "overload"),
            (Self::DEADLINE, "deadline"),
            (Self::RETRY_BUDGET, "retry_budget"),
            (Self::FAILURE, "failure"),
        ];
        let mut set = f.debug_set();
        for (bit, name) in names {
            if self.0 & bit != 0 {
                set.entry(&format_args!("{name}"));
            }
        }
        set.finish()
    }
}

/// Why a call did not give a usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A layer inside refused it: a [`Rejection`](tower_red::Rejection) error, or a response
    /// built from one (it carries the [`RejectionKind`] in its extensions, as
    /// [`ProblemLayer`](tower_red::problem::ProblemLayer) makes them).
    Refused(RejectionKind),
    /// The layer's classifier judged the backend's answer a failure.
    Failure(FailureClass),
}

/// What a fallback function sees: why the call failed and what was asked.
#[derive(Debug, Clone)]
pub struct FallbackContext {
    pub(crate) reason: Reason,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
}

impl FallbackContext {
    /// Why the call did not give a usable answer.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The request's method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request's URI as sent (a path for server requests, absolute for client ones).
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

/// The bounds of the stale-on-error store; see
/// [`FallbackLayerBuilder::stale_on_error`]. Every bound must be positive and
/// `max_entry_bytes` at most `max_bytes`.
///
/// ```
/// use std::time::Duration;
/// use tower_idempotency::fallback::StaleConfig;
///
/// let config = StaleConfig { max_age: Duration::from_secs(30), ..StaleConfig::default() };
/// assert_eq!(config.max_entries, 1_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleConfig {
    /// The longest an entry is served after its headers arrived (default 60 s). Checked when
    /// it would be served (an older entry is dropped, never served) and when its body ends (a
    /// body that ends later than this after its headers is not stored).
    pub max_age: Duration,
    /// The most entries held (default 1,000); the oldest (by when its headers arrived) goes
    /// first.
    pub max_entries: usize,
    /// The most bytes held in all (keys, headers and bodies; default 16 MiB); the oldest goes
    /// first.
    pub max_bytes: usize,
    /// The largest body stored (default 256 KiB); a larger response streams to its caller
    /// unstored.
    pub max_entry_bytes: usize,
}

impl Default for StaleConfig {
    fn default() -> Self {
        StaleConfig {
            max_age: Duration::from_secs(60),
            max_entries: 1_000,
            max_bytes: 16 * 1024 * 1024,
            max_entry_bytes: 256 * 1024,
        }
    }
}

/// A fallback function.
pub(crate) type FallbackFn = Arc<dyn Fn(&FallbackContext) -> Option<Response<Bytes>> + Send + Sync>;
/// A stale-store key function.
pub(crate) type KeyFn = Arc<dyn Fn(&RequestView<'_>) -> Option<String> + Send + Sync>;

/// The default longest key: a longer one is not cached.
const DEFAULT_MAX_KEY_BYTES: usize = 1024;

/// The default stale key: `GET` and `HEAD` requests without `Authorization` or `Cookie`
/// (RFC 9111 §3.5: a shared cache does not reuse answers to authenticated requests), keyed by
/// method, [authority](RequestView::authority) and path and query: the target URI, host
/// included (RFC 9111 §2), so virtual hosts never share an entry. The authority is the URI's,
/// else the `Host` header (an HTTP/1.1 server's request), in lower case (RFC 3986 §3.2.2), so
/// an HTTP/1.1 and an HTTP/2 request for one target share an entry. A request whose `Host`
/// header is not text is not cached.
///
/// ```
/// use http::{HeaderMap, HeaderValue, Method};
/// use tower_idempotency::fallback::{RequestView, default_key};
///
/// // HTTP/1.1: the URI is a path, the host is in `Host`.
/// let mut host = HeaderMap::new();
/// host.insert("host", HeaderValue::from_static("A.example"));
/// let http1 = RequestView::new(&Method::GET, None, "/feed", Some("p=2"), &host);
/// assert_eq!(default_key(&http1).as_deref(), Some("GET a.example/feed?p=2"));
/// // HTTP/2: the host is the URI's authority.
/// let none = HeaderMap::new();
/// let http2 = RequestView::new(&Method::GET, Some("a.example"), "/feed", Some("p=2"), &none);
/// assert_eq!(default_key(&http1), default_key(&http2));
/// ```
pub fn default_key(req: &RequestView<'_>) -> Option<String> {
    if !matches!(*req.method(), Method::GET | Method::HEAD)
        || req.headers().contains_key(http::header::AUTHORIZATION)
        || req.headers().contains_key(http::header::COOKIE)
    {
        return None;
    }
    let authority = match req.authority() {
        Some(authority) => authority,
        // A `Host` that is not text cannot be told from another one: not cached.
        None if req.headers().contains_key(http::header::HOST) => return None,
        None => "",
    };
    let query = req.query();
    let mut key = String::with_capacity(
        req.method().as_str().len()
            + 1
            + authority.len()
            + req.path().len()
            + query.map_or(0, |q| q.len() + 1),
    );
    key.push_str(req.method().as_str());
    key.push(' ');
    let start = key.len();
    key.push_str(authority);
    key[start..].make_ascii_lowercase();
    key.push_str(req.path());
    if let Some(query) = query {
        key.push('?');
        key.push_str(query);
    }
    Some(key)
}

/// Builds a [`FallbackLayer`]; see the [module docs](super).
#[must_use]
pub struct FallbackLayerBuilder<C = AnyError> {
    name: String,
    when: When,
    classifier: C,
    function: Option<FallbackFn>,
    stale: Option<StaleConfig>,
    key: Option<KeyFn>,
    max_key_bytes: usize,
}

impl<C: fmt::Debug> fmt::Debug for FallbackLayerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayerBuilder")
            .field("name", &self.name)
            .field("when", &self.when)
            .field("classifier", &self.classifier)
            .field("function", &self.function.is_some())
            .field("stale", &self.stale)
            .field("max_key_bytes", &self.max_key_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for FallbackLayerBuilder {
    fn default() -> Self {
        FallbackLayerBuilder {
            name: LAYER.to_owned(),
            when: When::all(),
            classifier: AnyError,
            function: None,
            stale: None,
            key: None,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
        }
    }
}

impl<C> FallbackLayerBuilder<C> {
    /// The instance name in metric labels. Default `fallback`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// What triggers a fallback (default [`When::all`]).
    pub fn when(mut self, when: When) -> Self {
        self.when = when;
        self
    }

    /// Decides which answers of the backend are failures (default: any `Err`). It also decides
    /// what the stale store keeps: only successes.
    pub fn classifier<C2>(self, classifier: C2) -> FallbackLayerBuilder<C2> {
        FallbackLayerBuilder {
            name: self.name,
            when: self.when,
            classifier,
            function: self.function,
            stale: self.stale,
            key: self.key,
            max_key_bytes: self.max_key_bytes,
        }
    }

    /// Classifies HTTP answers by status: 5xx and 429 are failures ([`HttpStatus::new`]).
    pub fn http_status(self) -> FallbackLayerBuilder<HttpStatus> {
        self.classifier(HttpStatus::new())
    }

    /// Answers from `f` when the stale store has nothing (or is not configured). `f` sees why
    /// and what; it returns `None` to let the original failure through. Its response gets the
    /// [`FALLBACK`](super::FALLBACK) header, `function`.
    pub fn from_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&FallbackContext) -> Option<Response<Bytes>> + Send + Sync + 'static,
    {
        self.function = Some(Arc::new(f));
        self
    }

    /// Keeps the last good response per key, within `config`'s bounds, and answers with it
    /// (marked `x-fallback: stale`, with an `Age` header) when a call fails.
    pub fn stale_on_error(mut self, config: StaleConfig) -> Self {
        self.stale = Some(config);
        self
    }

    /// The stale store's key: `None` means the request is neither stored nor answered from the
    /// store. Default [`default_key`]. A key longer than [`max_key_bytes`](Self::max_key_bytes)
    /// is treated as `None`. Whatever varies the answer (a user, a language) must be in it.
    ///
    /// It is called for `GET` and `HEAD` requests only: no other method is stored or answered
    /// from the store, whatever a key would be. The store keeps a `GET`'s and a `HEAD`'s entries
    /// apart and answers each request only from an entry of its own method, so the key need not
    /// name the method. Unsafe methods are left out on purpose, not only when the key forgets
    /// the method: a stale `200` would tell a caller that its `POST` succeeded when it never
    /// ran, and a key that cannot see the body cannot tell one `POST` read call (GraphQL)
    /// from another; gRPC answers end in trailers and are never stored anyway. Answer such
    /// calls with [`from_fn`](Self::from_fn), which sees the method.
    pub fn key<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestView<'_>) -> Option<String> + Send + Sync + 'static,
    {
        self.key = Some(Arc::new(f));
        self
    }

    /// The longest key stored (default 1,024 bytes); requests with longer keys are not cached.
    pub fn max_key_bytes(mut self, max: usize) -> Self {
        self.max_key_bytes = max;
        self
    }

    /// Checks every setting and registers the layer's RED handles.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting: an empty name or trigger set, no answer source
    /// (neither [`from_fn`](Self::from_fn) nor [`stale_on_error`](Self::stale_on_error)), a
    /// zero stale bound, `max_entry_bytes` over `max_bytes`, or a zero `max_key_bytes`.
    pub fn build(self) -> Result<FallbackLayer<C>, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(LAYER, "name", "", "must not be empty"));
        }
        if self.when == When(0) {
            return Err(ConfigError::new(
                LAYER,
                "when",
                self.when,
                "must name at least one trigger",
            ));
        }
        if self.function.is_none() && self.stale.is_none() {
            return Err(ConfigError::new(
                LAYER,
                "from_fn",
                "none",
                "a fallback needs an answer: from_fn, stale_on_error, or both",
            ));
        }
        if let Some(stale) = &self.stale {
            let positive = |field: &'static str, zero: bool, value: &dyn fmt::Debug| {
                if zero {
                    Err(ConfigError::new(LAYER, field, value, "must be positive"))
                } else {
                    Ok(())
                }
            };
            positive(
                "stale_on_error.max_age",
                stale.max_age.is_zero(),
                &stale.max_age,
            )?;
            positive(
                "stale_on_error.max_entries",
                stale.max_entries == 0,
                &stale.max_entries,
            )?;
            positive(
                "stale_on_error.max_bytes",
                stale.max_bytes == 0,
                &stale.max_bytes,
            )?;
            positive(
                "stale_on_error.max_entry_bytes",
                stale.max_entry_bytes == 0,
                &stale.max_entry_bytes,
            )?;
            if stale.max_entry_bytes > stale.max_bytes {
                return Err(ConfigError::new(
                    LAYER,
                    "stale_on_error.max_entry_bytes",
                    stale.max_entry_bytes,
                    format!(
                        "must be at most stale_on_error.max_bytes = {}",
                        stale.max_bytes
                    ),
                ));
            }
            if self.max_key_bytes == 0 {
                return Err(ConfigError::new(
                    LAYER,
                    "max_key_bytes",
                    0,
                    "must be positive",
                ));
            }
        }
        let red = RedMetrics::with_outcomes(
            LAYER,
            self.name.clone(),
            &[
                Outcome::Ok,
                Outcome::Error,
                Outcome::Timeout,
                Outcome::InnerRefusal,
                Outcome::Fallback,
                Outcome::Cancelled,
            ],
            &[],
        );
        Ok(FallbackLayer::from_shared(Arc::new(Shared {
            name: Arc::from(self.name.as_str()),
            when: self.when,
            classifier: self.classifier,
            function: self.function,
            stale: self.stale.map(|config| Arc::new(Stale::new(config))),
            key: self.key.unwrap_or_else(|| Arc::new(default_key)),
            max_key_bytes: self.max_key_bytes,
            red,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn key(method: Method, uri: &str, headers: &HeaderMap) -> Option<String> {
        let uri: Uri = uri.parse().unwrap();
        default_key(&RequestView::new(
            &method,
            uri.authority().map(|a| a.as_str()),
            uri.path(),
            uri.query(),
            headers,
        ))
    }

    #[test]
    fn the_default_key_is_method_authority_path_and_query_of_anonymous_safe_reads() {
        let none = HeaderMap::new();
        assert_eq!(
            key(Method::GET, "/a?b=1", &none).as_deref(),
            Some("GET /a?b=1")
        );
        assert_eq!(key(Method::HEAD, "/a", &none).as_deref(), Some("HEAD /a"));
        assert_eq!(
            key(Method::GET, "http://api:8080/a", &none).as_deref(),
            Some("GET api:8080/a")
        );
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert_eq!(key(method, "/a", &none), None);
        }
        for header in ["authorization", "cookie"] {
            let mut headers = HeaderMap::new();
            headers.insert(header, http::HeaderValue::from_static("x"));
            assert_eq!(key(Method::GET, "/a", &headers), None, "{header}");
        }
    }

    #[test]
    fn the_default_key_takes_the_host_header_when_the_uri_has_no_authority() {
        let host = |value: &'static [u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::HOST,
                http::HeaderValue::from_bytes(value).unwrap(),
            );
            headers
        };
        let a = host(b"a.example:8080");
        assert_eq!(
            key(Method::GET, "/a", &a).as_deref(),
            Some("GET a.example:8080/a")
        );
        assert_eq!(
            key(Method::GET, "/a", &host(b"A.Example")).as_deref(),
            Some("GET a.example/a")
        );
        // The URI's authority comes first (RFC 9112 §3.2.2), in lower case too.
        assert_eq!(
            key(Method::GET, "http://B.example/a", &a).as_deref(),
            Some("GET b.example/a")
        );
        assert_eq!(key(Method::GET, "/a", &host(b"caf\xe9")), None);
    }

    #[test]
    fn each_refusal_kind_maps_to_one_trigger_and_request_errors_to_none() {
        let refused = |kind| Reason::Refused(kind);
        assert!(When::circuit_open().matches(refused(RejectionKind::CircuitOpen)));
        for kind in [
            RejectionKind::BulkheadFull,
            RejectionKind::QueueTimeout,
            RejectionKind::LoadShed,
        ] {
            assert!(When::overload().matches(refused(kind)));
            assert!(!When::circuit_open().matches(refused(kind)));
        }
        assert!(When::deadline().matches(refused(RejectionKind::DeadlineExceeded)));
        assert!(When::retry_budget().matches(refused(RejectionKind::RetryBudgetExhausted)));
        assert!(When::failure().matches(Reason::Failure(FailureClass::Timeout)));
        assert!(!When::refused().matches(Reason::Failure(FailureClass::Error)));
        for kind in RejectionKind::ALL {
            let expected = !matches!(
                kind,
                RejectionKind::InvalidDeadline
                    | RejectionKind::IdempotencyConflict
                    | RejectionKind::IdempotencyMismatch
                    | RejectionKind::IdempotencyKeyInvalid
                    | RejectionKind::IdempotencyKeyMissing
                    | RejectionKind::StoreUnavailable
            );
            assert_eq!(When::all().matches(refused(kind)), expected, "{kind}");
        }
        assert_eq!(
            format!("{:?}", When::circuit_open() | When::failure()),
            "{circuit_open, failure}"
        );
    }
}
