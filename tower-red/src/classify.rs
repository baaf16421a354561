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

use std::fmt;
use std::sync::Arc;

use http::StatusCode;

use crate::grpc::GrpcCode;
use crate::parts::ResponseParts;

/// What a classifier decided about one finished call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The call succeeded.
    Success,
    /// The call failed, for this bounded reason.
    Failure(FailureClass),
    /// The call counts neither as a success nor as a failure (for example a client's 4xx).
    Ignored,
}

impl Verdict {
    /// Whether this is a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::Failure(_))
    }
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
    pub fn classify_status(&self, status: StatusCode) -> Verdict {
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
            Ok(res) => self.classify_status(res.status()),
            Err(_) => Verdict::Failure(FailureClass::Error),
        }
    }
}

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
        match res.headers().get("grpc-status") {
            Some(value) => GrpcCode::from_header_bytes(value.as_bytes()),
            None => GrpcCode::from_http_status(res.status()),
        }
    }
}

impl<R: ResponseParts, E> Classify<R, E> for GrpcStatus {
    fn classify(&self, result: &Result<R, E>) -> Verdict {
        match result {
            Ok(res) => self.classify_code(Self::code_of(res)),
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
