//! Rejections: the refusals every layer of this workspace makes on its own account.
//!
//! A layer that refuses a request (circuit open, bulkhead full, deadline exceeded, …) fails the
//! call with a [`Rejection`] boxed into a [`BoxError`]. Callers downcast it, match on its
//! [`RejectionKind`], and read the HTTP status, gRPC code and `Retry-After` it maps to. Errors of
//! the inner service are never wrapped in a `Rejection`: they pass through untouched.
//!
//! ```
//! use std::time::Duration;
//! use tower_red::{BoxError, Rejection, RejectionKind};
//!
//! let err: BoxError = Rejection::new(RejectionKind::CircuitOpen)
//!     .with_retry_after(Duration::from_millis(2_500))
//!     .into();
//! let rejection = Rejection::find(&*err).expect("a rejection");
//! assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
//! assert_eq!(rejection.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(rejection.retry_after_secs(), Some(3)); // rounded up, never early
//! ```

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::BoxError;
use crate::grpc::GrpcCode;
use crate::red::Outcome;

/// Why a layer refused a request: a stable, machine-readable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// A circuit breaker is open (or half-open with every probe slot taken).
    CircuitOpen,
    /// A bulkhead has no free permit and does not queue.
    BulkheadFull,
    /// A request waited in a bulkhead's queue for its longest allowed time.
    QueueTimeout,
    /// A request was shed because it could not finish in time or the system is overloaded.
    LoadShed,
    /// The request's deadline passed.
    DeadlineExceeded,
    /// A deadline header (`grpc-timeout` or the HTTP one) was malformed, in strict mode.
    InvalidDeadline,
    /// A retry was needed but the retry budget had no tokens left.
    RetryBudgetExhausted,
    /// A request with the same idempotency key is still in flight.
    IdempotencyConflict,
    /// An idempotency key was reused with a different request payload.
    IdempotencyMismatch,
    /// The idempotency key is malformed or too long.
    IdempotencyKeyInvalid,
    /// An idempotency key is required for this request but was not sent.
    IdempotencyKeyMissing,
    /// A backing store (such as Redis) could not be reached.
    StoreUnavailable,
}

impl RejectionKind {
    /// Every kind, in declaration order.
    pub const ALL: [RejectionKind; 12] = [
        RejectionKind::CircuitOpen,
        RejectionKind::BulkheadFull,
        RejectionKind::QueueTimeout,
        RejectionKind::LoadShed,
        RejectionKind::DeadlineExceeded,
        RejectionKind::InvalidDeadline,
        RejectionKind::RetryBudgetExhausted,
        RejectionKind::IdempotencyConflict,
        RejectionKind::IdempotencyMismatch,
        RejectionKind::IdempotencyKeyInvalid,
        RejectionKind::IdempotencyKeyMissing,
        RejectionKind::StoreUnavailable,
    ];

    /// The stable snake_case identifier, such as `circuit_open`; used in problem bodies and
    /// in the `error_type` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::CircuitOpen => "circuit_open",
            RejectionKind::BulkheadFull => "bulkhead_full",
            RejectionKind::QueueTimeout => "queue_timeout",
            RejectionKind::LoadShed => "load_shed",
            RejectionKind::DeadlineExceeded => "deadline_exceeded",
            RejectionKind::InvalidDeadline => "invalid_deadline",
            RejectionKind::RetryBudgetExhausted => "retry_budget_exhausted",
            RejectionKind::IdempotencyConflict => "idempotency_conflict",
            RejectionKind::IdempotencyMismatch => "idempotency_mismatch",
            RejectionKind::IdempotencyKeyInvalid => "idempotency_key_invalid",
            RejectionKind::IdempotencyKeyMissing => "idempotency_key_missing",
            RejectionKind::StoreUnavailable => "store_unavailable",
        }
    }

    /// A short lowercase human title, such as `circuit open`.
    pub fn title(self) -> &'static str {
        match self {
            RejectionKind::CircuitOpen => "circuit open",
            RejectionKind::BulkheadFull => "bulkhead full",
            RejectionKind::QueueTimeout => "bulkhead queue wait timed out",
            RejectionKind::LoadShed => "request shed",
            RejectionKind::DeadlineExceeded => "deadline exceeded",
            RejectionKind::InvalidDeadline => "invalid deadline header",
            RejectionKind::RetryBudgetExhausted => "retry budget exhausted",
            RejectionKind::IdempotencyConflict => "idempotency key in use",
            RejectionKind::IdempotencyMismatch => "idempotency key reused with a different payload",
            RejectionKind::IdempotencyKeyInvalid => "invalid idempotency key",
            RejectionKind::IdempotencyKeyMissing => "idempotency key required",
            RejectionKind::StoreUnavailable => "store unavailable",
        }
    }

    /// The HTTP status a server answers with: 503 for overload, 504 for a spent deadline,
    /// 409 / 422 / 400 for idempotency conflict / mismatch / bad or missing key
    /// (draft-ietf-httpapi-idempotency-key-header-07, section 2.7).
    pub fn http_status(self) -> StatusCode {
        match self {
            RejectionKind::CircuitOpen
            | RejectionKind::BulkheadFull
            | RejectionKind::QueueTimeout
            | RejectionKind::LoadShed
            | RejectionKind::RetryBudgetExhausted
            | RejectionKind::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RejectionKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            RejectionKind::InvalidDeadline
            | RejectionKind::IdempotencyKeyInvalid
            | RejectionKind::IdempotencyKeyMissing => StatusCode::BAD_REQUEST,
            RejectionKind::IdempotencyConflict => StatusCode::CONFLICT,
            RejectionKind::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The gRPC code a server answers with.
    pub fn grpc_code(self) -> GrpcCode {
        match self {
            RejectionKind::CircuitOpen
            | RejectionKind::RetryBudgetExhausted
            | RejectionKind::StoreUnavailable => GrpcCode::Unavailable,
            RejectionKind::BulkheadFull | RejectionKind::QueueTimeout | RejectionKind::LoadShed => {
                GrpcCode::ResourceExhausted
            }
            RejectionKind::DeadlineExceeded => GrpcCode::DeadlineExceeded,
            RejectionKind::InvalidDeadline
            | RejectionKind::IdempotencyKeyInvalid
            | RejectionKind::IdempotencyKeyMissing => GrpcCode::InvalidArgument,
            RejectionKind::IdempotencyConflict => GrpcCode::Aborted,
            RejectionKind::IdempotencyMismatch => GrpcCode::FailedPrecondition,
        }
    }

    /// The bounded RED `outcome` label a rejection of this kind is counted under.
    pub fn outcome(self) -> Outcome {
        match self {
            RejectionKind::CircuitOpen => Outcome::CircuitOpen,
            RejectionKind::BulkheadFull | RejectionKind::QueueTimeout | RejectionKind::LoadShed => {
                Outcome::Shed
            }
            RejectionKind::DeadlineExceeded => Outcome::Timeout,
            RejectionKind::RetryBudgetExhausted => Outcome::BudgetExhausted,
            _ => Outcome::Rejected,
        }
    }
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A layer's refusal of a request.
///
/// Built by the layers, read by callers and by the adapters
/// ([`ProblemLayer`](crate::problem::ProblemLayer) for HTTP, `grpc::status` for tonic). Cheap
/// to build: no allocation beyond the `Box` of the error itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
    retry_after: Option<Duration>,
    name: Option<Arc<str>>,
    reason: Option<&'static str>,
    detail: Cow<'static, str>,
}

impl Rejection {
    /// A rejection of this kind, with no detail, name or `Retry-After`.
    pub fn new(kind: RejectionKind) -> Self {
        Rejection {
            kind,
            retry_after: None,
            name: None,
            reason: None,
            detail: Cow::Borrowed(""),
        }
    }

    /// Sets how long the caller should wait before trying again.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Sets the name of the layer instance that refused (for example `"payments"`).
    #[must_use]
    pub fn with_name(mut self, name: Arc<str>) -> Self {
        self.name = Some(name);
        self
    }

    /// Sets a layer's own stable, machine-readable sub-reason (snake_case, such as a bulkhead's
    /// `queue_full` or a deadline's stage `ready`), for callers that need more than the kind.
    #[must_use]
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Sets a human detail, such as the stage a deadline passed in.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = detail.into();
        self
    }

    /// Why the request was refused.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// Whether this rejection is of `kind`.
    pub fn is(&self, kind: RejectionKind) -> bool {
        self.kind == kind
    }

    /// How long the caller should wait before trying again, if the layer knows.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// `Retry-After` in whole seconds, rounded up so a client never comes back too early.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|d| d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)))
    }

    /// The name of the layer instance that refused, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The layer's machine-readable sub-reason, if it gave one.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason
    }

    /// The human detail; empty when none was given.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The HTTP status this rejection maps to.
    pub fn http_status(&self) -> StatusCode {
        self.kind.http_status()
    }

    /// The gRPC code this rejection maps to.
    pub fn grpc_code(&self) -> GrpcCode {
        self.kind.grpc_code()
    }

    /// The RED `outcome` label this rejection is counted under.
    pub fn outcome(&self) -> Outcome {
        self.kind.outcome()
    }

    /// Finds a rejection in `err` or anywhere in its `source()` chain (so one wrapped by, say,
    /// `tower::buffer` is still found).
    pub fn find<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a Rejection> {
        let mut current = Some(err);
        while let Some(e) = current {
            if let Some(rejection) = e.downcast_ref::<Rejection>() {
                return Some(rejection);
            }
            current = e.source();
        }
        None
    }

    /// Like [`Rejection::find`] on a [`BoxError`].
    pub fn find_in(err: &BoxError) -> Option<&Rejection> {
        Self::find(&**err)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.title())?;
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        if let Some(secs) = self.retry_after_secs() {
            write!(f, "; retry after {secs}s")?;
        }
        Ok(())
    }
}

impl Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(BoxError);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapper")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn rejection_is_found_through_a_source_chain() {
        let inner: BoxError = Rejection::new(RejectionKind::BulkheadFull).into();
        let outer: BoxError = Wrapper(inner).into();
        assert_eq!(
            Rejection::find_in(&outer).map(Rejection::kind),
            Some(RejectionKind::BulkheadFull)
        );
    }

    #[test]
    fn other_errors_are_not_rejections() {
        let err: BoxError = "boom".into();
        assert!(Rejection::find_in(&err).is_none());
    }

    #[test]
    fn display_is_lowercase_and_names_everything() {
        let r = Rejection::new(RejectionKind::DeadlineExceeded)
            .with_name("checkout".into())
            .with_detail("waiting for readiness")
            .with_retry_after(Duration::from_millis(1));
        assert_eq!(
            r.to_string(),
            "deadline exceeded (checkout): waiting for readiness; retry after 1s"
        );
    }

    #[test]
    fn every_kind_maps_to_an_error_status_and_a_non_ok_code() {
        for kind in RejectionKind::ALL {
            assert!(kind.http_status().is_client_error() || kind.http_status().is_server_error());
            assert_ne!(kind.grpc_code(), GrpcCode::Ok);
            assert!(
                kind.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        let r = Rejection::new(RejectionKind::CircuitOpen);
        assert_eq!(r.retry_after_secs(), None);
        assert_eq!(
            r.clone()
                .with_retry_after(Duration::ZERO)
                .retry_after_secs(),
            Some(0)
        );
        assert_eq!(
            r.clone()
                .with_retry_after(Duration::from_secs(2))
                .retry_after_secs(),
            Some(2)
        );
        assert_eq!(
            r.with_retry_after(Duration::from_nanos(2_000_000_001))
                .retry_after_secs(),
            Some(3)
        );
    }

    #[test]
    fn a_retry_after_too_long_for_whole_seconds_saturates_and_still_prints() {
        let r = Rejection::new(RejectionKind::CircuitOpen).with_retry_after(Duration::MAX);
        assert_eq!(
            r.retry_after_secs(),
            Some(u64::MAX),
            "rounded up, but not past the end"
        );
        assert!(r.to_string().contains(&u64::MAX.to_string()), "{r}");
    }
}
