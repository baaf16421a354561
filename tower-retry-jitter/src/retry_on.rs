//! [`RetryOn`]: which HTTP and gRPC responses are worth another attempt.
//!
//! The retry layer retries what its classifier calls a [`Verdict::Failure`]. The default
//! classifier, [`AnyError`], fails only errors, which is right
//! for any response type. For HTTP and gRPC responses use [`RetryOn`]: errors (connection
//! errors, timeouts), HTTP 502, 503 and 504, and gRPC `UNAVAILABLE`; 408 and 429 when asked,
//! and any other status or gRPC code you add. Every other response is a success *for the
//! retry layer* (a 500 is a bug, not a transient failure, and sending it again is more load
//! for nothing); layers below judge it with their own classifier.
//!
//! gRPC statuses are read from the response headers, where a trailers-only response (how a
//! server answers `UNAVAILABLE` before any message, and how tonic's transport reports a
//! connection failure) carries them; a status that arrives in trailers after a message is
//! seen by the caller, not by the layer, and is not retried.
//!
//! A response one of our layers' refusals became (see
//! [`rejection_response`](tower_red::problem::rejection_response)) is
//! [`Verdict::Refused`]: not retried unless the layer is told to retry refusals.
//!
//! ```
//! use tower_red::classify::{Classify, FailureClass, Verdict};
//! use tower_retry_jitter::RetryOn;
//!
//! let on = RetryOn::new().too_many_requests(true);
//! let res = |status: u16| -> Result<http::Response<()>, ()> {
//!     Ok(http::Response::builder().status(status).body(()).unwrap())
//! };
//! assert!(on.classify(&res(503)).is_failure());
//! assert!(on.classify(&res(429)).is_failure());
//! assert_eq!(on.classify(&res(500)), Verdict::Success);
//! let reset: Result<http::Response<()>, ()> = Err(());
//! assert_eq!(on.classify(&reset), Verdict::Failure(FailureClass::Error));
//! ```

use std::time::SystemTime;

use http::StatusCode;
use tower_red::GrpcCode;
use tower_red::classify::{
    AnyError, Classify, ClassifyFn, FailureClass, GrpcStatus, HttpStatus, Verdict, refused_response,
};
use tower_red::parts::ResponseParts;

use crate::pushback::Pushback;

/// Classifies the HTTP and gRPC responses that are retried; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// Bit `s - 400` for each HTTP status `s` in 400..=599 that is retried.
    statuses: [u64; 4],
    grpc: GrpcStatus,
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn::new()
    }
}

impl RetryOn {
    /// Errors, HTTP 502, 503, 504 and gRPC `UNAVAILABLE`.
    pub fn new() -> Self {
        let mut grpc = GrpcStatus::new();
        for code in GrpcStatus::DEFAULT_FAILURES {
            grpc = grpc.without_failure(code);
        }
        RetryOn {
            statuses: [0; 4],
            grpc: grpc.with_failure(GrpcCode::Unavailable),
        }
        .status(StatusCode::BAD_GATEWAY, true)
        .status(StatusCode::SERVICE_UNAVAILABLE, true)
        .status(StatusCode::GATEWAY_TIMEOUT, true)
    }

    /// Whether to retry HTTP status `status` (only 4xx and 5xx can be retried; others are
    /// ignored).
    #[must_use]
    pub fn status(mut self, status: StatusCode, retry: bool) -> Self {
        if let Some(i) = status.as_u16().checked_sub(400).filter(|i| *i < 200) {
            let (word, bit) = (usize::from(i / 64), i % 64);
            if retry {
                self.statuses[word] |= 1 << bit;
            } else {
                self.statuses[word] &= !(1 << bit);
            }
        }
        self
    }

    /// Whether to retry 408 Request Timeout (default `false`).
    #[must_use]
    pub fn request_timeout(self, retry: bool) -> Self {
        self.status(StatusCode::REQUEST_TIMEOUT, retry)
    }

    /// Whether to retry 429 Too Many Requests (default `false`: the server asked for less
    /// load; its `Retry-After` is honoured when it is retried).
    #[must_use]
    pub fn too_many_requests(self, retry: bool) -> Self {
        self.status(StatusCode::TOO_MANY_REQUESTS, retry)
    }

    /// Whether to retry gRPC status `code` (`UNAVAILABLE` is retried by default; `OK` never).
    #[must_use]
    pub fn grpc_code(mut self, code: GrpcCode, retry: bool) -> Self {
        self.grpc = if retry {
            self.grpc.with_failure(code)
        } else {
            self.grpc.without_failure(code)
        };
        self
    }

    /// Whether HTTP status `status` is retried.
    pub fn retries_status(&self, status: StatusCode) -> bool {
        status
            .as_u16()
            .checked_sub(400)
            .filter(|i| *i < 200)
            .is_some_and(|i| self.statuses[usize::from(i / 64)] & (1 << (i % 64)) != 0)
    }

    /// Whether gRPC status `code` is retried.
    pub fn retries_grpc(&self, code: GrpcCode) -> bool {
        self.grpc.classify_code(code).is_failure()
    }
}

impl<R: ResponseParts, E> Classify<R, E> for RetryOn {
    #[inline]
    fn classify(&self, result: &Result<R, E>) -> Verdict {
        let res = match result {
            Ok(res) => res,
            Err(_) => return Verdict::Failure(FailureClass::Error),
        };
        if let Some(kind) = refused_response(res) {
            return Verdict::Refused(kind);
        }
        if let Some(value) = res.headers().get(tower_red::classify::GRPC_STATUS_HEADER) {
            return self
                .grpc
                .classify_code(GrpcCode::from_header_bytes(value.as_bytes()));
        }
        let status = res.status();
        if self.retries_status(status) {
            Verdict::Failure(FailureClass::HttpStatus(status))
        } else {
            Verdict::Success
        }
    }
}

/// Reads what a failed response says about retrying it (`Retry-After`,
/// `grpc-retry-pushback-ms`): the second half of a retry layer's classifier.
///
/// Implemented by the classifiers that see HTTP responses ([`RetryOn`], [`HttpStatus`],
/// [`GrpcStatus`]: they read the response headers with [`from_headers`](crate::pushback::from_headers), and an
/// `x-retry-pushback: stop` from a shedding server stops) and by
/// those that do not ([`AnyError`], [`ClassifyFn`]: [`Pushback::Absent`]). Implement it next
/// to [`Classify`] for a classifier of your own.
pub trait ReadPushback<Res> {
    /// The pushback of a response the classifier called a failure.
    fn pushback(&self, res: &Res) -> Pushback;
}

/// The pushback of a response's headers ([`crate::attempt::pushback`]): the don't-retry
/// signal stops, else `grpc-retry-pushback-ms`, then `Retry-After`.
fn headers_pushback<R: ResponseParts>(res: &R) -> Pushback {
    crate::attempt::pushback(res.headers(), SystemTime::now())
}

impl<R: ResponseParts> ReadPushback<R> for RetryOn {
    fn pushback(&self, res: &R) -> Pushback {
        headers_pushback(res)
    }
}

impl<R: ResponseParts> ReadPushback<R> for HttpStatus {
    fn pushback(&self, res: &R) -> Pushback {
        headers_pushback(res)
    }
}

impl<R: ResponseParts> ReadPushback<R> for GrpcStatus {
    fn pushback(&self, res: &R) -> Pushback {
        headers_pushback(res)
    }
}

impl<Res> ReadPushback<Res> for AnyError {
    #[inline]
    fn pushback(&self, _res: &Res) -> Pushback {
        Pushback::Absent
    }
}

impl<Res, F> ReadPushback<Res> for ClassifyFn<F> {
    #[inline]
    fn pushback(&self, _res: &Res) -> Pushback {
        Pushback::Absent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(status: u16, grpc: Option<&str>) -> Result<http::Response<()>, ()> {
        let mut b = http::Response::builder().status(status);
        if let Some(code) = grpc {
            b = b.header("grpc-status", code);
        }
        Ok(b.body(()).expect("valid"))
    }

    #[test]
    fn the_defaults_retry_502_503_504_and_unavailable() {
        let on = RetryOn::new();
        let retried: Vec<u16> = (100..600)
            .filter(|s| on.classify(&res(*s, None)).is_failure())
            .collect();
        assert_eq!(retried, [502, 503, 504]);
        assert!(on.classify(&res(200, Some("14"))).is_failure());
        for code in ["0", "2", "4", "8", "13"] {
            assert_eq!(
                on.classify(&res(200, Some(code))),
                Verdict::Success,
                "{code}"
            );
        }
        let on = on
            .request_timeout(true)
            .too_many_requests(true)
            .grpc_code(GrpcCode::ResourceExhausted, true)
            .status(StatusCode::BAD_GATEWAY, false)
            .grpc_code(GrpcCode::Unavailable, false);
        let retried: Vec<u16> = (100..600)
            .filter(|s| on.classify(&res(*s, None)).is_failure())
            .collect();
        assert_eq!(retried, [408, 429, 503, 504]);
        assert!(on.classify(&res(200, Some("8"))).is_failure());
        assert!(!on.classify(&res(200, Some("14"))).is_failure());
    }
}
