//! Outcome classification: one decision, shared by the breaker, retry and RED layers, about
//! whether a finished call succeeded, failed (and how), or should not count either way.
//!
//! A [`Classify`] reads `&Result<Res, E>` and returns a [`Verdict`]. Built-ins:
//!
//! | classifier | success | failure | ignored |
//! |---|---|---|---|
//! | [`AnyError`] (default) | any `Ok` | any `Err` | — |
//! | [`HttpStatus`] | 1xx–3xx, 4xx by default | `Err`, 5xx, 429 by default | 4xx when asked |
//! | [`GrpcStatus`] | `OK` and codes not in the failure set | `Err`, [`GrpcStatus::DEFAULT_FAILURES`] | — |
//! | [`ClassifyFn`] | what the closure says | | |
//!
//! The HTTP and gRPC classifiers give [`Verdict::Refused`] for a response that one of our
//! layers' refusals became. Layers never call a classifier directly: they call [`judge`], which
//! first takes any [`Rejection`] of an inner layer out of the classifier's hands.
//! | `TowerHttp` (feature `tower-http`) | what a `tower_http::classify::ClassifyResponse` says | | |
//!
//! ```
//! use tower_red::classify::{Classify, FailureClass, HttpStatus, Verdict};
//!
//! let classifier = HttpStatus::new().too_many_requests(false);
//! let ok: Result<http::Response<()>, ()> = Ok(http::Response::builder().status(503).body(()).unwrap());
//! assert_eq!(
//!     classifier.classify(&ok),
//!     Verdict::Failure(FailureClass::HttpStatus(http::StatusCode::SERVICE_UNAVAILABLE)),
//! );
//! ```
//!
//! Why not tower-http's `classify` module alone: it classifies `http::Response`s by value and
//! needs `E: Display`, while our layers also wrap `Service<u64>`-like and reqwest services and
//! classify by reference at every call. The `tower-http` feature adapts any of its classifiers.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use http::StatusCode;

use crate::BoxError;
use crate::grpc::GrpcCode;
use crate::parts::ResponseParts;
use crate::rejection::{Rejection, RejectionKind};

/// What a classifier decided about one finished call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The call succeeded.
    Success,
    /// The call failed, for this bounded reason.
    Failure(FailureClass),
    /// The call counts neither as a success nor as a failure (for example a client's 4xx).
    Ignored,
    /// One of this workspace's layers refused the call (a [`Rejection`] as the error, or a
    /// response built from one by [`rejection_response`](crate::problem::rejection_response)):
    /// it never reached the backend, so it is neither the backend's success nor its failure,
    /// and its latency is not the backend's. See [`judge`].
    Refused(RejectionKind),
}

impl Verdict {
    /// Whether this is a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::Failure(_))
    }

    /// Whether the call reached the backend and its outcome says something about it: a
    /// success or a failure, not ignored and not refused.
    pub fn is_sample(self) -> bool {
        matches!(self, Verdict::Success | Verdict::Failure(_))
    }

    /// The verdict an outer layer gives a call that an inner layer refused with `rejection`.
    ///
    /// A refusal is [`Verdict::Refused`], with one exception: a deadline that passed while the
    /// inner call was running (a `DeadlineExceeded` rejection whose reason is `call`, as
    /// `tower-timeout-budget` raises it) is the backend's slowness, so it is a
    /// [`FailureClass::Timeout`]: a timeout is a failure for a breaker on whichever side of it
    /// the deadline is enforced. A deadline spent before the call was sent (on arrival, in a
    /// queue, waiting for readiness, before sending) is a refusal.
    pub fn of_refusal(rejection: &Rejection) -> Verdict {
        if rejection.is(RejectionKind::DeadlineExceeded) && rejection.reason() == Some("call") {
            Verdict::Failure(FailureClass::Timeout)
        } else {
            Verdict::Refused(rejection.kind())
        }
    }
}

/// The [`Rejection`] in an error of any type: the error itself, or one found in the `source()`
/// chain of a [`BoxError`]. `None` for every other error type (their refusals cannot be ours).
///
/// Costs one type-id comparison per candidate type, resolved at compile time.
#[inline]
pub fn refusal_of<E: 'static>(err: &E) -> Option<&Rejection> {
    let any = err as &dyn Any;
    if let Some(boxed) = any.downcast_ref::<BoxError>() {
        return Rejection::find(&**boxed);
    }
    any.downcast_ref::<Rejection>()
}

/// The verdict every layer of this workspace gives a finished call: an inner layer's
/// [`Rejection`] is judged by [`Verdict::of_refusal`] whatever the classifier, everything else
/// by the classifier.
///
/// This is what "one verdict per stack" means: a classifier decides what the *backend's*
/// answers mean, and no classifier can make one of our own refusals count as the backend's
/// failure. A response that an inner layer's refusal became (marked by
/// [`rejection_response`](crate::problem::rejection_response)) is recognised by the built-in
/// HTTP and gRPC classifiers.
///
/// ```
/// use tower_red::classify::{judge, AnyError, FailureClass, Verdict};
/// use tower_red::{BoxError, Rejection, RejectionKind};
///
/// let refused: Result<(), BoxError> = Err(Rejection::new(RejectionKind::CircuitOpen).into());
/// assert_eq!(judge(&AnyError, &refused), Verdict::Refused(RejectionKind::CircuitOpen));
/// let failed: Result<(), BoxError> = Err("connection reset".into());
/// assert_eq!(judge(&AnyError, &failed), Verdict::Failure(FailureClass::Error));
/// ```
#[inline]
pub fn judge<C, T, E>(classifier: &C, result: &Result<T, E>) -> Verdict
where
    C: Classify<T, E> + ?Sized,
    E: 'static,
{
    if let Err(err) = result
        && let Some(rejection) = refusal_of(err)
    {
        return Verdict::of_refusal(rejection);
    }
    classifier.classify(result)
}

/// The refusal a response was built from, if one of our layers' rejections became it (see
/// [`rejection_response`](crate::problem::rejection_response)).
#[inline]
pub fn refused_response<R: ResponseParts>(res: &R) -> Option<RejectionKind> {
    res.extensions()?.get::<RejectionKind>().copied()
}

/// Why a call failed. Every value is from a small, bounded set, so it can become a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureClass {
    /// The inner service returned an `Err`.
    Error,
    /// The call ran out of time.
    Timeout,
    /// An HTTP response with this status.
    HttpStatus(StatusCode),
    /// A gRPC response with this status code.
    Grpc(GrpcCode),
    /// A class named by a custom classifier.
    Other(&'static str),
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureClass::Error => f.write_str("error"),
            FailureClass::Timeout => f.write_str("timeout"),
            FailureClass::HttpStatus(status) => f.write_str(status.as_str()),
            FailureClass::Grpc(code) => f.write_str(code.as_str()),
            FailureClass::Other(name) => f.write_str(name),
        }
    }
}

/// Decides the [`Verdict`] of a finished call.
pub trait Classify<Res, E> {
    /// Classifies one result. Called once per call on the hot path: keep it cheap.
    fn classify(&self, result: &Result<Res, E>) -> Verdict;
}

impl<Res, E, C: Classify<Res, E> + ?Sized> Classify<Res, E> for Arc<C> {
    fn classify(&self, result: &Result<Res, E>) -> Verdict {
        (**self).classify(result)
    }
}

impl<Res, E, C: Classify<Res, E> + ?Sized> Classify<Res, E> for &C {
    fn classify(&self, result: &Result<Res, E>) -> Verdict {
        (**self).classify(result)
    }
}

/// Any `Err` is a failure, any `Ok` a success. The default everywhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnyError;

impl<Res, E> Classify<Res, E> for AnyError {
    fn classify(&self, result: &Result<Res, E>) -> Verdict {
        match result {
            Ok(_) => Verdict::Success,
            Err(_) => Verdict::Failure(FailureClass::Error),
        }
    }
}

/// What a 4xx response (other than 429) counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientErrors {
    /// The server did its job: a success (default).
    #[default]
    Success,
    /// Neither success nor failure.
    Ignored,
    /// A failure.
    Failure,
}

/// Classifies HTTP responses by status: 5xx fail, 429 fails unless told otherwise (the
/// dependency is overloaded, as Microsoft.Extensions.Http.Resilience treats it), other 4xx
/// succeed unless told otherwise. `Err` is always a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpStatus {
    server_errors: bool,
    too_many_requests: bool,
    client_errors: ClientErrors,
}

impl Default for HttpStatus {
    fn default() -> Self {
        HttpStatus::new()
    }
}

impl HttpStatus {
    /// 5xx and 429 are failures; other 4xx are successes.
    pub const fn new() -> Self {
        HttpStatus {
            server_errors: true,
            too_many_requests: true,
            client_errors: ClientErrors::Success,
        }
    }

    /// Whether 5xx responses are failures (default `true`).
    #[must_use]
    pub const fn server_errors(mut self, failure: bool) -> Self {
        self.server_errors = failure;
        self
    }

    /// Whether 429 Too Many Requests is a failure (default `true`); when `false` it is treated
    /// like any other 4xx.
    #[must_use]
    pub const fn too_many_requests(mut self, failure: bool) -> Self {
        self.too_many_requests = failure;
        self
    }

    /// What other 4xx responses count as (default [`ClientErrors::Success`]).
    #[must_use]
    pub const fn client_errors(mut self, verdict: ClientErrors) -> Self {
        self.client_errors = verdict;
        self
    }

    /// The verdict for one status code.
    #[inline]
    pub fn classify_status(&self, status: StatusCode) -> Verdict {
        // Every code below 400 is a success: the usual answer, decided inline by every layer
        // of a stack that classifies it.
        if status.as_u16() < 400 {
            return Verdict::Success;
        }
        self.classify_error_status(status)
    }

    /// The verdict for a code of 400 or more.
    #[inline(never)]
    fn classify_error_status(&self, status: StatusCode) -> Verdict {
        let failure = Verdict::Failure(FailureClass::HttpStatus(status));
        if status.is_server_error() {
            return if self.server_errors {
                failure
            } else {
                Verdict::Success
            };
        }
        if status == StatusCode::TOO_MANY_REQUESTS && self.too_many_requests {
            return failure;
        }
        if status.is_client_error() {
            return match self.client_errors {
                ClientErrors::Success => Verdict::Success,
                ClientErrors::Ignored => Verdict::Ignored,
                ClientErrors::Failure => failure,
            };
        }
        Verdict::Success
    }
}

impl<R: ResponseParts, E> Classify<R, E> for HttpStatus {
    fn classify(&self, result: &Result<R, E>) -> Verdict {
        match result {
            Ok(res) => match refused_response(res) {
                Some(kind) => Verdict::Refused(kind),
                None => self.classify_status(res.status()),
            },
            Err(_) => Verdict::Failure(FailureClass::Error),
        }
    }
}

/// The `grpc-status` header (and trailer) name, as a constant: looking a header up by a `&str`
/// parses the name on every call.
pub const GRPC_STATUS_HEADER: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// Classifies gRPC responses by the `grpc-status` of a trailers-only response, or by the HTTP
/// status when it is not 200 (gRPC's HTTP-to-gRPC mapping).
///
/// A streaming response whose status arrives in trailers counts as a success at the time the
/// headers arrive: classification happens when the inner future resolves. The default failure
/// set is UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL and UNKNOWN: the codes
/// that say the server or the path to it is in trouble, not the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcStatus {
    failures: u32,
}

impl Default for GrpcStatus {
    fn default() -> Self {
        GrpcStatus::new()
    }
}

impl GrpcStatus {
    /// The codes that count as failures by default.
    pub const DEFAULT_FAILURES: [GrpcCode; 5] = [
        GrpcCode::Unavailable,
        GrpcCode::DeadlineExceeded,
        GrpcCode::ResourceExhausted,
        GrpcCode::Internal,
        GrpcCode::Unknown,
    ];

    /// The default failure set.
    pub fn new() -> Self {
        GrpcStatus {
            failures: Self::DEFAULT_FAILURES
                .iter()
                .fold(0, |bits, c| bits | c.bit()),
        }
    }

    /// Also count `code` as a failure.
    #[must_use]
    pub fn with_failure(mut self, code: GrpcCode) -> Self {
        self.failures |= code.bit();
        self
    }

    /// Do not count `code` as a failure. `OK` never is.
    #[must_use]
    pub fn without_failure(mut self, code: GrpcCode) -> Self {
        self.failures &= !code.bit();
        self
    }

    /// The verdict for one code.
    pub fn classify_code(&self, code: GrpcCode) -> Verdict {
        if code != GrpcCode::Ok && self.failures & code.bit() != 0 {
            Verdict::Failure(FailureClass::Grpc(code))
        } else {
            Verdict::Success
        }
    }

    /// The code a response carries in its headers, if any.
    pub fn code_of<R: ResponseParts>(res: &R) -> GrpcCode {
        match res.headers().get(GRPC_STATUS_HEADER) {
            Some(value) => GrpcCode::from_header_bytes(value.as_bytes()),
            None => GrpcCode::from_http_status(res.status()),
        }
    }
}

impl<R: ResponseParts, E> Classify<R, E> for GrpcStatus {
    fn classify(&self, result: &Result<R, E>) -> Verdict {
        match result {
            Ok(res) => match refused_response(res) {
                Some(kind) => Verdict::Refused(kind),
                None => self.classify_code(Self::code_of(res)),
            },
            Err(_) => Verdict::Failure(FailureClass::Error),
        }
    }
}

/// A closure as a classifier; see [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F> {
    f: F,
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

/// Uses a closure `Fn(&Result<Res, E>) -> Verdict` as a classifier.
///
/// ```
/// use tower_red::classify::{classify_fn, Classify, FailureClass, Verdict};
///
/// let c = classify_fn(|r: &Result<u32, ()>| match r {
///     Ok(n) if *n >= 100 => Verdict::Failure(FailureClass::Other("too_big")),
///     Ok(_) => Verdict::Success,
///     Err(()) => Verdict::Ignored,
/// });
/// assert_eq!(c.classify(&Ok(7)), Verdict::Success);
/// assert!(c.classify(&Ok(700)).is_failure());
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn { f }
}

impl<Res, E, F> Classify<Res, E> for ClassifyFn<F>
where
    F: Fn(&Result<Res, E>) -> Verdict,
{
    fn classify(&self, result: &Result<Res, E>) -> Verdict {
        (self.f)(result)
    }
}

#[cfg(feature = "tower-http")]
pub use self::tower_http_adapter::TowerHttp;

#[cfg(feature = "tower-http")]
mod tower_http_adapter {
    use super::{Classify, FailureClass, Verdict};
    use tower_http::classify::{ClassifiedResponse, ClassifyResponse};

    /// Any tower-http `ClassifyResponse` (such as `ServerErrorsAsFailures` or
    /// `GrpcErrorsAsFailures`) used as a [`Classify`]. The classifier is cloned per call, which
    /// is free for tower-http's built-ins (they are `Copy`-sized). A response whose class is
    /// only known at end of stream counts as a success.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct TowerHttp<C>(pub C);

    impl<C, B, E> Classify<http::Response<B>, E> for TowerHttp<C>
    where
        C: ClassifyResponse + Clone,
        E: std::fmt::Display + 'static,
    {
        fn classify(&self, result: &Result<http::Response<B>, E>) -> Verdict {
            match result {
                Ok(res) => match self.0.clone().classify_response(res) {
                    ClassifiedResponse::Ready(Ok(())) => Verdict::Success,
                    ClassifiedResponse::Ready(Err(_)) => {
                        Verdict::Failure(FailureClass::Other("tower_http"))
                    }
                    ClassifiedResponse::RequiresEos(_) => Verdict::Success,
                },
                Err(_) => Verdict::Failure(FailureClass::Error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, grpc: Option<&str>) -> Result<http::Response<()>, &'static str> {
        let mut builder = http::Response::builder().status(status);
        if let Some(code) = grpc {
            builder = builder.header("grpc-status", code);
        }
        Ok(builder.body(()).unwrap())
    }

    #[test]
    fn any_error_fails_only_errors() {
        assert_eq!(AnyError.classify(&Ok::<_, ()>(1)), Verdict::Success);
        assert_eq!(
            AnyError.classify(&Err::<u8, _>(())),
            Verdict::Failure(FailureClass::Error)
        );
    }

    #[test]
    fn http_status_defaults() {
        let c = HttpStatus::new();
        assert!(c.classify(&response(500, None)).is_failure());
        assert!(c.classify(&response(503, None)).is_failure());
        assert!(c.classify(&response(429, None)).is_failure());
        assert_eq!(c.classify(&response(404, None)), Verdict::Success);
        assert_eq!(c.classify(&response(200, None)), Verdict::Success);
        assert_eq!(c.classify(&response(302, None)), Verdict::Success);
        assert!(c.classify(&Err::<http::Response<()>, _>("io")).is_failure());
    }

    #[test]
    fn http_status_is_configurable() {
        let c = HttpStatus::new()
            .too_many_requests(false)
            .client_errors(ClientErrors::Ignored);
        assert_eq!(c.classify(&response(429, None)), Verdict::Ignored);
        assert_eq!(c.classify(&response(400, None)), Verdict::Ignored);
        let c = HttpStatus::new()
            .server_errors(false)
            .client_errors(ClientErrors::Failure);
        assert_eq!(c.classify(&response(500, None)), Verdict::Success);
        assert!(c.classify(&response(400, None)).is_failure());
    }

    #[test]
    fn grpc_status_reads_trailers_only_responses() {
        let c = GrpcStatus::new();
        assert_eq!(c.classify(&response(200, None)), Verdict::Success);
        assert_eq!(c.classify(&response(200, Some("0"))), Verdict::Success);
        assert_eq!(
            c.classify(&response(200, Some("14"))),
            Verdict::Failure(FailureClass::Grpc(GrpcCode::Unavailable))
        );
        // NOT_FOUND is the caller's problem, not the server's.
        assert_eq!(c.classify(&response(200, Some("5"))), Verdict::Success);
        // Garbage is UNKNOWN, which fails.
        assert!(c.classify(&response(200, Some("x"))).is_failure());
        // A 503 from a proxy in front of the server is UNAVAILABLE.
        assert!(c.classify(&response(503, None)).is_failure());
    }

    #[test]
    fn an_inner_refusal_is_never_the_backends_failure_whatever_the_classifier() {
        let always_fails =
            classify_fn(|_: &Result<(), BoxError>| Verdict::Failure(FailureClass::Other("always")));
        for kind in RejectionKind::ALL {
            let refused: Result<(), BoxError> = Err(Rejection::new(kind).into());
            assert_eq!(judge(&always_fails, &refused), Verdict::Refused(kind));
        }
        // A bare `Rejection` error type too.
        let bare: Result<(), Rejection> = Err(Rejection::new(RejectionKind::BulkheadFull));
        assert_eq!(
            judge(&AnyError, &bare),
            Verdict::Refused(RejectionKind::BulkheadFull)
        );
        // Other errors are the classifier's.
        let io: Result<(), BoxError> = Err("reset".into());
        assert_eq!(
            judge(&always_fails, &io),
            Verdict::Failure(FailureClass::Other("always"))
        );
    }

    #[test]
    fn an_inner_deadline_that_passed_during_the_call_is_a_timeout() {
        let in_call: Result<(), BoxError> = Err(Rejection::new(RejectionKind::DeadlineExceeded)
            .with_reason("call")
            .into());
        assert_eq!(
            judge(&AnyError, &in_call),
            Verdict::Failure(FailureClass::Timeout)
        );
        for stage in ["arrival", "ready", "before_send"] {
            let before: Result<(), BoxError> = Err(Rejection::new(RejectionKind::DeadlineExceeded)
                .with_reason(stage)
                .into());
            assert_eq!(
                judge(&AnyError, &before),
                Verdict::Refused(RejectionKind::DeadlineExceeded),
                "{stage}"
            );
        }
    }

    #[test]
    fn a_response_built_from_a_refusal_is_a_refusal() {
        let res: Result<_, BoxError> = Ok(crate::problem::rejection_response(&Rejection::new(
            RejectionKind::CircuitOpen,
        )));
        assert_eq!(res.as_ref().unwrap().status(), 503);
        assert_eq!(
            HttpStatus::new().classify(&res),
            Verdict::Refused(RejectionKind::CircuitOpen)
        );
        assert_eq!(
            GrpcStatus::new().classify(&res),
            Verdict::Refused(RejectionKind::CircuitOpen)
        );
        // The same status from the backend is a failure.
        assert!(
            HttpStatus::new()
                .classify(&response(503, None))
                .is_failure()
        );
    }

    #[test]
    fn grpc_failure_set_is_configurable() {
        let c = GrpcStatus::new()
            .without_failure(GrpcCode::Unknown)
            .with_failure(GrpcCode::NotFound);
        assert_eq!(c.classify(&response(200, Some("2"))), Verdict::Success);
        assert!(c.classify(&response(200, Some("5"))).is_failure());
        assert_eq!(
            GrpcStatus::new()
                .with_failure(GrpcCode::Ok)
                .classify_code(GrpcCode::Ok),
            Verdict::Success
        );
    }
}

#[cfg(all(test, feature = "tower-http"))]
mod tower_http_tests {
    use super::*;
    use tower_http::classify::{
        GrpcCode as TowerGrpcCode, GrpcErrorsAsFailures, ServerErrorsAsFailures,
    };

    #[test]
    fn tower_http_classifiers_are_reused() {
        let c = TowerHttp(ServerErrorsAsFailures::new());
        let ok: Result<http::Response<()>, std::io::Error> = Ok(http::Response::new(()));
        assert_eq!(c.classify(&ok), Verdict::Success);
        let failed: Result<http::Response<()>, std::io::Error> =
            Ok(http::Response::builder().status(502).body(()).unwrap());
        assert!(c.classify(&failed).is_failure());
        let err: Result<http::Response<()>, std::io::Error> = Err(std::io::Error::other("reset"));
        assert_eq!(c.classify(&err), Verdict::Failure(FailureClass::Error));
    }

    #[test]
    fn tower_http_grpc_classifier_reads_trailers_only_responses() {
        let c = TowerHttp(GrpcErrorsAsFailures::new().with_success(TowerGrpcCode::NotFound));
        let res = |code: &str| -> Result<http::Response<()>, std::io::Error> {
            Ok(http::Response::builder()
                .header("grpc-status", code)
                .body(())
                .unwrap())
        };
        assert_eq!(c.classify(&res("0")), Verdict::Success);
        assert_eq!(c.classify(&res("5")), Verdict::Success);
        assert!(c.classify(&res("14")).is_failure());
    }
}
