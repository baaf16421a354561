//! What may be retried: a request is sent again only when a [`RetrySafety`] policy says that
//! sending it twice does no harm.
//!
//! - [`Idempotent`] (the default): HTTP requests whose method is idempotent (RFC 9110 §9.2.2:
//!   `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`), or that carry an `Idempotency-Key`
//!   header (the server deduplicates them, so a retried `POST` is safe).
//! - [`AlwaysSafe`]: every request (for request types with no side effects, such as a
//!   `Service<u64>` in a test, or a gRPC client whose methods are all idempotent).
//! - [`SafeFn`]: a closure `Fn(&Req) -> bool`, for any other request type.
//!
//! ```
//! use tower_retry_jitter::safety::{Idempotent, RetrySafety, safe_if};
//!
//! let get = http::Request::get("/orders/7").body(()).unwrap();
//! let post = http::Request::post("/orders").body(()).unwrap();
//! let keyed = http::Request::post("/orders").header("idempotency-key", "\"k1\"").body(()).unwrap();
//! assert!(Idempotent.is_safe(&get));
//! assert!(!Idempotent.is_safe(&post));
//! assert!(Idempotent.is_safe(&keyed));
//!
//! let even = safe_if(|n: &u64| n % 2 == 0);
//! assert!(even.is_safe(&4) && !even.is_safe(&5));
//! ```

use std::fmt;

use http::{HeaderMap, Method};

/// The `Idempotency-Key` request header (IETF httpapi draft).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Decides whether a request may be sent more than once, and marks each attempt.
pub trait RetrySafety<Req> {
    /// Whether `req` may be retried. Called once per request, before its first attempt.
    fn is_safe(&self, req: &Req) -> bool;

    /// Marks `req` as attempt `attempt` (1-based) of its request, before it is sent. The
    /// default does nothing; [`Idempotent`] writes the attempt headers of HTTP and reqwest
    /// requests ([`attempt::write_attempt`](crate::attempt::write_attempt)): none on the first
    /// attempt (and any inherited from an upstream hop removed), `x-retry-attempt` and, for
    /// gRPC, `grpc-previous-rpc-attempts` on retries.
    #[inline]
    fn mark_attempt(req: &mut Req, attempt: u32)
    where
        Self: Sized,
    {
        let _ = (req, attempt);
    }
}

/// Idempotent HTTP methods, or a request carrying an `Idempotency-Key`; the default. See the
/// [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Idempotent;

impl Idempotent {
    /// The rule itself, for any request type: an idempotent `method`, or an
    /// `Idempotency-Key` in `headers`.
    #[inline]
    pub fn allows(method: &Method, headers: &HeaderMap) -> bool {
        is_idempotent(method) || headers.contains_key(IDEMPOTENCY_KEY)
    }
}

/// Whether `method` is idempotent (RFC 9110 §9.2.2).
#[inline]
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl<B> RetrySafety<http::Request<B>> for Idempotent {
    #[inline]
    fn is_safe(&self, req: &http::Request<B>) -> bool {
        Idempotent::allows(req.method(), req.headers())
    }

    #[inline]
    fn mark_attempt(req: &mut http::Request<B>, attempt: u32) {
        crate::attempt::write_attempt(req.headers_mut(), attempt);
    }
}

#[cfg(feature = "reqwest")]
impl RetrySafety<reqwest::Request> for Idempotent {
    #[inline]
    fn is_safe(&self, req: &reqwest::Request) -> bool {
        Idempotent::allows(req.method(), req.headers())
    }

    #[inline]
    fn mark_attempt(req: &mut reqwest::Request, attempt: u32) {
        crate::attempt::write_attempt(req.headers_mut(), attempt);
    }
}

/// Every request may be retried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlwaysSafe;

impl<Req> RetrySafety<Req> for AlwaysSafe {
    #[inline]
    fn is_safe(&self, _req: &Req) -> bool {
        true
    }
}

/// A closure as a [`RetrySafety`] policy; see [`safe_if`].
#[derive(Clone, Copy)]
pub struct SafeFn<F> {
    f: F,
}

impl<F> fmt::Debug for SafeFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafeFn").finish_non_exhaustive()
    }
}

/// Uses `f` to decide which requests may be retried.
pub fn safe_if<F>(f: F) -> SafeFn<F> {
    SafeFn { f }
}

impl<Req, F> RetrySafety<Req> for SafeFn<F>
where
    F: Fn(&Req) -> bool,
{
    #[inline]
    fn is_safe(&self, req: &Req) -> bool {
        (self.f)(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_idempotent_methods_are_safe() {
        let safe = [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ];
        let unsafe_ = [Method::POST, Method::PATCH, Method::CONNECT];
        for m in safe {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in unsafe_ {
            assert!(!is_idempotent(&m), "{m}");
            let mut headers = HeaderMap::new();
            assert!(!Idempotent::allows(&m, &headers));
            headers.insert(IDEMPOTENCY_KEY, "\"abc\"".parse().expect("valid"));
            assert!(Idempotent::allows(&m, &headers));
        }
        assert!(!is_idempotent(
            &Method::from_bytes(b"PURGE").expect("valid")
        ));
    }
}
