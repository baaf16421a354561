//! No retry storms across hops: attempt numbers on the wire and a server's "don't retry".
//!
//! Three tries at each of five layers is 243 times the load at the bottom (AWS Builders'
//! Library). The Google SRE book's cure (ch. 22) has two halves, and this module is both:
//!
//! - **The client says which attempt this is.** [`write_attempt`] marks every retry:
//!   `x-retry-attempt: n` ([`RETRY_ATTEMPT`], 1-based, as Envoy's `x-envoy-attempt-count`)
//!   and, on gRPC requests, `grpc-previous-rpc-attempts: n - 1`
//!   ([`GRPC_PREVIOUS_RPC_ATTEMPTS`], gRPC A6). A first attempt carries neither header (absent
//!   means 1, and costs nothing), and any copy of them the request inherited from an upstream
//!   hop is removed so it is not mistaken for this hop's count. [`read_attempt`] is the
//!   server's side.
//! - **A shedding server answers a retry with "don't retry".** [`DontRetryLayer`] wraps a
//!   server: when its response to a request that is already a retry is a refusal (a 503, a
//!   429, gRPC `UNAVAILABLE` or `RESOURCE_EXHAUSTED`, or a response built from a
//!   [`tower_red::Rejection`], see [`refused_response`]), it adds the don't-retry signal
//!   ([`write_dont_retry`]): `x-retry-pushback: stop` ([`RETRY_PUSHBACK`]), the HTTP analogue
//!   of a negative `grpc-retry-pushback-ms`, and on gRPC responses that negative pushback
//!   itself (`grpc-retry-pushback-ms: -1`). Our clients stop on either ([`read_dont_retry`],
//!   [`pushback()`](pushback())). The first attempt is not stopped: one retry, at the layer just above
//!   the one that sheds, is what the SRE book allows.
//! - **The signal travels up.** A server whose own outbound call was told "don't retry" has
//!   an overloaded dependency: retrying it from above only multiplies the load below. The
//!   retry layer calls [`note_dont_retry`] when a failed attempt carries the signal,
//!   whatever ends its retries (the signal, its last attempt, a request it may not retry);
//!   inside a
//!   [`DontRetryLayer`] that lands in the task-local scope of the inbound request, and a
//!   failed response to it carries the signal too, first attempt or not. So with two nested
//!   stacks the bottom sees two attempts, not the product of both stacks' attempts.
//!
//! The scope is task-local like [`tower_timeout_budget::Deadline`]'s: a call made from a task
//! the handler spawned does not report back.
//!
//! ```
//! use http::{HeaderMap, Request, Response};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_retry_jitter::attempt::{self, DontRetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let shedding = service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::builder().status(503).body(()).unwrap())
//! });
//! let server = DontRetryLayer::new().layer(shedding);
//!
//! // A first attempt is refused, and may be retried once.
//! let res = server.clone().oneshot(Request::new(())).await.unwrap();
//! assert!(!attempt::read_dont_retry(res.headers()));
//!
//! // The retry is refused too, and told to stop there.
//! let mut retry = Request::new(());
//! attempt::write_attempt(retry.headers_mut(), 2);
//! assert_eq!(attempt::read_attempt(retry.headers()), 2);
//! let res = server.oneshot(retry).await.unwrap();
//! assert!(attempt::read_dont_retry(res.headers()));
//! # }
//! ```

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use metrics::SharedString;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_red::classify::refused_response;
use tower_red::{GrpcCode, names};
use tower_service::Service;

use crate::pushback::{self, GRPC_RETRY_PUSHBACK_MS, Pushback};

/// The attempt number of a retried request, 1-based: `x-retry-attempt: 2` on the first retry.
pub const RETRY_ATTEMPT: HeaderName = HeaderName::from_static("x-retry-attempt");

/// gRPC A6's count of the attempts before this one: `grpc-previous-rpc-attempts: 1` on the
/// first retry.
pub const GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");

/// The don't-retry signal on HTTP responses: `x-retry-pushback: stop`.
pub const RETRY_PUSHBACK: HeaderName = HeaderName::from_static("x-retry-pushback");

/// The value of [`RETRY_PUSHBACK`] that means do not retry.
pub const STOP: HeaderValue = HeaderValue::from_static("stop");

const GRPC_STOP: HeaderValue = HeaderValue::from_static("-1");

/// Marks `headers` as those of attempt `n` (1-based) of one request.
///
/// `n >= 2` sets [`RETRY_ATTEMPT`] to `n` and, when the request is gRPC (its `content-type`
/// starts with `application/grpc`), [`GRPC_PREVIOUS_RPC_ATTEMPTS`] to `n - 1`. `n <= 1` (the
/// first attempt) removes both, so a request built from an inbound one does not pass its
/// caller's count on as its own.
pub fn write_attempt(headers: &mut HeaderMap, n: u32) {
    if n <= 1 {
        if headers.is_empty() {
            return;
        }
        headers.remove(RETRY_ATTEMPT);
        headers.remove(GRPC_PREVIOUS_RPC_ATTEMPTS);
        return;
    }
    headers.insert(RETRY_ATTEMPT, HeaderValue::from(n));
    if is_grpc(headers) {
        headers.insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(n - 1));
    } else {
        headers.remove(GRPC_PREVIOUS_RPC_ATTEMPTS);
    }
}

/// The attempt number a request says it is, 1-based: [`RETRY_ATTEMPT`], else
/// [`GRPC_PREVIOUS_RPC_ATTEMPTS`] plus one, else 1. A malformed value counts as absent;
/// huge values saturate. Never panics.
pub fn read_attempt(headers: &HeaderMap) -> u32 {
    if let Some(n) = headers
        .get(RETRY_ATTEMPT)
        .and_then(|v| parse_u32(v.as_bytes()))
    {
        return n.max(1);
    }
    headers
        .get(GRPC_PREVIOUS_RPC_ATTEMPTS)
        .and_then(|v| parse_u32(v.as_bytes()))
        .map_or(1, |before| before.saturating_add(1))
}

/// Whether a request is a retry: [`read_attempt`] is 2 or more.
pub fn is_retry(headers: &HeaderMap) -> bool {
    read_attempt(headers) >= 2
}

/// Adds the don't-retry signal to a response's headers: [`RETRY_PUSHBACK`]` = `[`STOP`], and
/// on a gRPC response `grpc-retry-pushback-ms: -1` as well (A6's "do not retry", which
/// every gRPC client that implements A6 honours).
pub fn write_dont_retry(headers: &mut HeaderMap) {
    if is_grpc(headers) {
        headers.insert(GRPC_RETRY_PUSHBACK_MS, GRPC_STOP);
    }
    headers.insert(RETRY_PUSHBACK, STOP);
}

/// Whether a response says not to retry it: `x-retry-pushback: stop` (any ASCII case,
/// surrounding whitespace ignored), or a `grpc-retry-pushback-ms` that A6 reads as stop
/// (negative or malformed). Never panics, allocates nothing.
pub fn read_dont_retry(headers: &HeaderMap) -> bool {
    let said_stop = headers
        .get_all(RETRY_PUSHBACK)
        .iter()
        .any(|v| trim(v.as_bytes()).eq_ignore_ascii_case(b"stop"));
    said_stop
        || pushback::grpc_retry_pushback(headers.get(GRPC_RETRY_PUSHBACK_MS).map(|v| v.as_bytes()))
            == Pushback::Stop
}

/// Everything a response says about retrying it, in one input for the retry decision:
/// [`Pushback::Stop`] when [`read_dont_retry`], else [`pushback::from_headers`]
/// (`grpc-retry-pushback-ms`, then `Retry-After`).
pub fn pushback(headers: &HeaderMap, now: SystemTime) -> Pushback {
    if read_dont_retry(headers) {
        Pushback::Stop
    } else {
        pushback::from_headers(headers, now)
    }
}

// The inbound request a [`DontRetryLayer`] is serving on this task, set for the duration of
// each poll of its future (as `Deadline`'s scope is): `None` outside any, `Some(true)` once
// an outbound call made inside was told not to retry. A `Copy` cell, no borrow flag.
thread_local! {
    static HOP: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Reports that an outbound call made while serving the current inbound request was told
/// not to retry (the retry layer calls it when a failed attempt says [`read_dont_retry`],
/// retried or not). Inside a
/// [`DontRetryLayer`]'s scope, the failed response to that inbound request then carries the
/// signal on; returns whether there was such a scope.
pub fn note_dont_retry() -> bool {
    HOP.with(|hop| {
        let inside = hop.get().is_some();
        if inside {
            hop.set(Some(true));
        }
        inside
    })
}

/// Whether this runs inside a [`DontRetryLayer`]'s scope: an outbound call made here must
/// have its failures judged, so a "don't retry" on them can travel up ([`note_dont_retry`]).
#[inline]
pub(crate) fn serving() -> bool {
    HOP.with(|hop| hop.get().is_some())
}

/// Restores the enclosing scope when a poll ends, unwinding included.
struct Restore(Option<bool>);

impl Drop for Restore {
    fn drop(&mut self) {
        HOP.with(|hop| hop.set(self.0));
    }
}

/// Layer for servers: answers a retry that it refuses, or any request it fails because an
/// outbound call was told not to retry, with the don't-retry signal. See the
/// [module docs](self).
///
/// Each such answer is counted in `resilience_retry_dont_retry_total` (labels `layer="retry"`,
/// `name`, and `reason`: `retry_refused` or `downstream_said_stop`) and logged at `debug`. The
/// counter is looked up when an answer is given, which is rare, so a request the layer leaves
/// alone costs no metric work at all, and the series exists once the layer has said "stop".
#[must_use]
#[derive(Debug, Clone)]
pub struct DontRetryLayer {
    name: SharedString,
}

impl Default for DontRetryLayer {
    fn default() -> Self {
        DontRetryLayer::new()
    }
}

impl DontRetryLayer {
    /// The layer, named `default`. What counts as a refusal is fixed (see [`DontRetry`]).
    pub fn new() -> Self {
        DontRetryLayer {
            name: SharedString::const_str("default"),
        }
    }

    /// Names the layer in its metric's `name` label. A `&'static str` is carried by each call
    /// as it is; an owned name is shared (one reference count per call).
    pub fn name(mut self, name: impl Into<SharedString>) -> Self {
        self.name = name.into();
        self
    }
}

impl<S> Layer<S> for DontRetryLayer {
    type Service = DontRetry<S>;

    fn layer(&self, inner: S) -> DontRetry<S> {
        DontRetry {
            inner,
            name: self.name.clone(),
        }
    }
}

/// The service of [`DontRetryLayer`].
///
/// A response is a refusal when its status is 503 or 429, its `grpc-status` header (a
/// trailers-only gRPC response) is `UNAVAILABLE` or `RESOURCE_EXHAUSTED`, or one of this
/// workspace's layers built it from a [`tower_red::Rejection`]. It gets the don't-retry
/// signal when the request is a retry ([`is_retry`]). A response that failed in any way (a
/// 5xx, a 429, a refusal, a `grpc-status` other than `OK`) gets it when an outbound call made
/// while serving it was told not to retry ([`note_dont_retry`]).
#[derive(Debug, Clone)]
pub struct DontRetry<S> {
    inner: S,
    name: SharedString,
}

impl<S> DontRetry<S> {
    /// Wraps `inner`, as [`DontRetryLayer::new`] does.
    pub fn new(inner: S) -> Self {
        DontRetryLayer::new().layer(inner)
    }

    tower_red::define_inner_service_accessors!();
}

impl<S, B, ResB> Service<Request<B>> for DontRetry<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let retry = is_retry(req.headers());
        let mut said_stop = false;
        let inner = {
            let _restore = enter(&mut said_stop);
            let inner = self.inner.call(req);
            leave(&mut said_stop);
            inner
        };
        ResponseFuture {
            inner,
            retry,
            said_stop,
            name: self.name.clone(),
        }
    }
}

fn enter(said_stop: &mut bool) -> Restore {
    Restore(HOP.with(|hop| hop.replace(Some(*said_stop))))
}

fn leave(said_stop: &mut bool) {
    *said_stop = HOP.with(|hop| hop.get()).unwrap_or(*said_stop);
}

pin_project! {
    /// The future of [`DontRetry`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        retry: bool,
        said_stop: bool,
        name: SharedString,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let _restore = enter(this.said_stop);
            let polled = this.inner.poll(cx);
            leave(this.said_stop);
            polled
        };
        let mut res = match polled {
            Poll::Ready(Ok(res)) => res,
            other => return other,
        };
        let stop = if *this.said_stop {
            failed(&res).then_some(DOWNSTREAM_SAID_STOP)
        } else {
            (*this.retry && refused(&res)).then_some(RETRY_REFUSED)
        };
        if let Some(reason) = stop {
            write_dont_retry(res.headers_mut());
            answered(this.name, reason);
            tracing::debug!(
                name = &**this.name,
                retry = *this.retry,
                downstream_said_stop = *this.said_stop,
                status = res.status().as_u16(),
                "answered with don't retry"
            );
        }
        Poll::Ready(Ok(res))
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("retry", &self.retry)
            .field("said_stop", &self.said_stop)
            .finish_non_exhaustive()
    }
}

/// The `reason` of a retry this server refused.
const RETRY_REFUSED: &str = "retry_refused";
/// The `reason` of a failure after an outbound call was told not to retry.
const DOWNSTREAM_SAID_STOP: &str = "downstream_said_stop";

/// Counts one don't-retry answer. Out of line and looked up by name: it is rare.
#[cold]
#[inline(never)]
fn answered(name: &SharedString, reason: &'static str) {
    metrics::counter!(
        names::RETRY_DONT_RETRY_TOTAL,
        names::label::LAYER => names::layer::RETRY,
        names::label::NAME => name.clone(),
        names::label::REASON => reason,
    )
    .increment(1);
}

fn grpc_code<B>(res: &Response<B>) -> Option<GrpcCode> {
    res.headers()
        .get(tower_red::classify::GRPC_STATUS_HEADER)
        .map(|v| GrpcCode::from_header_bytes(v.as_bytes()))
}

/// A server's refusal: shedding, not a bug.
fn refused<B>(res: &Response<B>) -> bool {
    matches!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) || matches!(
        grpc_code(res),
        Some(GrpcCode::Unavailable | GrpcCode::ResourceExhausted)
    ) || refused_response(res).is_some()
}

/// Any failed response.
fn failed<B>(res: &Response<B>) -> bool {
    res.status().is_server_error()
        || refused(res)
        || grpc_code(res).is_some_and(|code| code != GrpcCode::Ok)
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn parse_u32(value: &[u8]) -> Option<u32> {
    let value = trim(value);
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u32, |n, d| {
        n.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    }))
}

fn trim(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::convert::Infallible;
    use std::time::Duration;
    use tokio_test::{assert_pending, assert_ready};
    use tower::{ServiceExt, service_fn};
    use tower_red::{Rejection, RejectionKind};

    fn grpc_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        h
    }

    #[test]
    fn a_retry_carries_its_number_and_a_first_attempt_nothing() {
        let mut h = HeaderMap::new();
        assert_eq!(read_attempt(&h), 1);
        write_attempt(&mut h, 1);
        assert!(h.is_empty());
        write_attempt(&mut h, 2);
        assert_eq!(h.get(RETRY_ATTEMPT).unwrap(), "2");
        assert!(
            h.get(GRPC_PREVIOUS_RPC_ATTEMPTS).is_none(),
            "not a gRPC request"
        );
        assert_eq!(read_attempt(&h), 2);
        assert!(is_retry(&h));
        write_attempt(&mut h, 3);
        assert_eq!(
            h.get_all(RETRY_ATTEMPT).iter().count(),
            1,
            "replaced, not appended"
        );
        assert_eq!(read_attempt(&h), 3);
        // An inherited count is not passed on by a first attempt.
        write_attempt(&mut h, 1);
        assert_eq!(read_attempt(&h), 1);
        assert!(!is_retry(&h));
    }

    #[test]
    fn a_grpc_retry_carries_the_a6_count_of_previous_attempts() {
        let mut h = grpc_headers();
        write_attempt(&mut h, 3);
        assert_eq!(h.get(GRPC_PREVIOUS_RPC_ATTEMPTS).unwrap(), "2");
        assert_eq!(h.get(RETRY_ATTEMPT).unwrap(), "3");
        write_attempt(&mut h, 1);
        assert!(h.get(GRPC_PREVIOUS_RPC_ATTEMPTS).is_none());
        assert!(h.get(RETRY_ATTEMPT).is_none());

        // A server reads the A6 header alone, as another gRPC client sends it.
        let mut from_grpc = grpc_headers();
        from_grpc.insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from_static("4"));
        assert_eq!(read_attempt(&from_grpc), 5);
    }

    #[test]
    fn malformed_attempt_headers_count_as_a_first_attempt() {
        for bad in ["", "x", "-1", "+2", "1.5", "2 3"] {
            let mut h = HeaderMap::new();
            h.insert(RETRY_ATTEMPT, HeaderValue::from_str(bad).unwrap());
            assert_eq!(read_attempt(&h), 1, "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(RETRY_ATTEMPT, HeaderValue::from_static(" 7\t"));
        assert_eq!(read_attempt(&h), 7);
        h.insert(RETRY_ATTEMPT, HeaderValue::from_static("0"));
        assert_eq!(read_attempt(&h), 1);
        h.insert(RETRY_ATTEMPT, HeaderValue::from_static("99999999999999"));
        assert_eq!(read_attempt(&h), u32::MAX);
    }

    #[test]
    fn dont_retry_reads_both_vocabularies() {
        let mut h = HeaderMap::new();
        assert!(!read_dont_retry(&h));
        h.insert(RETRY_PUSHBACK, HeaderValue::from_static(" STOP "));
        assert!(read_dont_retry(&h));
        h.insert(RETRY_PUSHBACK, HeaderValue::from_static("later"));
        assert!(!read_dont_retry(&h));

        let mut g = HeaderMap::new();
        g.insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from_static("250"));
        assert!(!read_dont_retry(&g));
        g.insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from_static("-1"));
        assert!(read_dont_retry(&g));
    }

    #[test]
    fn the_signal_written_is_the_signal_read() {
        let mut h = HeaderMap::new();
        write_dont_retry(&mut h);
        assert_eq!(h.get(RETRY_PUSHBACK).unwrap(), "stop");
        assert!(
            h.get(GRPC_RETRY_PUSHBACK_MS).is_none(),
            "not a gRPC response"
        );
        assert!(read_dont_retry(&h));

        let mut g = grpc_headers();
        write_dont_retry(&mut g);
        assert_eq!(g.get(GRPC_RETRY_PUSHBACK_MS).unwrap(), "-1");
        assert_eq!(
            pushback::from_headers(&g, SystemTime::now()),
            Pushback::Stop
        );
    }

    #[test]
    fn pushback_puts_stop_before_any_delay() {
        let now = SystemTime::UNIX_EPOCH;
        let mut h = HeaderMap::new();
        assert_eq!(pushback(&h, now), Pushback::Absent);
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(pushback(&h, now), Pushback::Delay(Duration::from_secs(2)));
        write_dont_retry(&mut h);
        assert_eq!(pushback(&h, now), Pushback::Stop);
    }

    fn answering(
        status: u16,
    ) -> impl Service<
        Request<()>,
        Response = Response<()>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<()>, Infallible>>,
    > + Clone {
        service_fn(move |_req: Request<()>| async move {
            Ok(Response::builder().status(status).body(()).unwrap())
        })
    }

    fn retry_request(n: u32) -> Request<()> {
        let mut req = Request::new(());
        write_attempt(req.headers_mut(), n);
        req
    }

    async fn stopped<S>(svc: S, req: Request<()>) -> bool
    where
        S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
    {
        let res = svc.oneshot(req).await.unwrap();
        read_dont_retry(res.headers())
    }

    #[tokio::test]
    async fn only_a_refused_retry_is_told_to_stop() {
        for (status, refusal) in [
            (503, true),
            (429, true),
            (500, false),
            (502, false),
            (200, false),
        ] {
            let svc = DontRetry::new(answering(status));
            assert!(
                !stopped(svc.clone(), retry_request(1)).await,
                "{status}: first attempt"
            );
            assert_eq!(
                stopped(svc.clone(), retry_request(2)).await,
                refusal,
                "{status}: retry"
            );
            assert_eq!(
                stopped(svc, retry_request(9)).await,
                refusal,
                "{status}: ninth"
            );
        }
    }

    #[tokio::test]
    async fn a_refusal_built_from_a_rejection_or_a_grpc_status_is_a_refusal() {
        let rejection = service_fn(|_req: Request<()>| async {
            // 504 is not a shedding status, but the rejection extension says it was refused.
            let mut res = Response::builder().status(504).body(()).unwrap();
            res.extensions_mut()
                .insert(Rejection::new(RejectionKind::LoadShed).kind());
            Ok::<_, Infallible>(res)
        });
        assert!(stopped(DontRetry::new(rejection), retry_request(2)).await);

        for (code, refusal) in [("14", true), ("8", true), ("13", false), ("0", false)] {
            let grpc = service_fn(move |_req: Request<()>| async move {
                let res = Response::builder()
                    .status(200)
                    .header(CONTENT_TYPE, "application/grpc")
                    .header("grpc-status", code)
                    .body(())
                    .unwrap();
                Ok::<_, Infallible>(res)
            });
            let res = DontRetry::new(grpc)
                .oneshot(retry_request(2))
                .await
                .unwrap();
            assert_eq!(
                read_dont_retry(res.headers()),
                refusal,
                "grpc-status {code}"
            );
            assert_eq!(
                res.headers().get(GRPC_RETRY_PUSHBACK_MS).is_some(),
                refusal,
                "grpc-status {code}: the A6 signal"
            );
        }
    }

    /// A handler that calls a downstream which said "don't retry", then fails with `status`.
    fn forwarding(
        status: u16,
    ) -> impl Service<
        Request<()>,
        Response = Response<()>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<()>, Infallible>>,
    > + Clone {
        service_fn(move |_req: Request<()>| async move {
            // The outbound call is pending once, as a real one would be, then told to stop.
            tokio::task::yield_now().await;
            assert!(note_dont_retry(), "inside the inbound request's scope");
            tokio::task::yield_now().await;
            Ok(Response::builder().status(status).body(()).unwrap())
        })
    }

    #[tokio::test]
    async fn a_downstream_stop_travels_up_on_any_failure_even_of_a_first_attempt() {
        for (status, stop) in [
            (503, true),
            (502, true),
            (500, true),
            (200, false),
            (404, false),
        ] {
            let svc = DontRetry::new(forwarding(status));
            assert_eq!(stopped(svc, retry_request(1)).await, stop, "{status}");
        }
    }

    #[tokio::test]
    async fn a_downstream_stop_travels_up_on_a_failed_grpc_status() {
        for (code, stop) in [("13", true), ("2", true), ("0", false)] {
            let svc = DontRetry::new(service_fn(move |_req: Request<()>| async move {
                tokio::task::yield_now().await;
                note_dont_retry();
                let res = Response::builder()
                    .header(CONTENT_TYPE, "application/grpc")
                    .header("grpc-status", code)
                    .body(())
                    .unwrap();
                Ok::<_, Infallible>(res)
            }));
            let res = svc.oneshot(Request::new(())).await.unwrap();
            assert_eq!(read_dont_retry(res.headers()), stop, "grpc-status {code}");
        }
    }

    /// A service that makes its outbound call, and hears "don't retry", inside `call`.
    #[derive(Clone)]
    struct NotesInCall;

    impl Service<Request<()>> for NotesInCall {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<()>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: Request<()>) -> Self::Future {
            assert!(note_dont_retry(), "call runs inside the scope too");
            std::future::ready(Ok(Response::builder().status(503).body(()).unwrap()))
        }
    }

    #[tokio::test]
    async fn a_stop_heard_inside_call_travels_up() {
        assert!(stopped(DontRetry::new(NotesInCall), Request::new(())).await);
        assert!(!note_dont_retry(), "and the scope ended with the call");
    }

    #[test]
    fn a_plain_http_retry_drops_an_inherited_grpc_count() {
        let mut h = HeaderMap::new();
        h.insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from_static("4"));
        write_attempt(&mut h, 2);
        assert!(h.get(GRPC_PREVIOUS_RPC_ATTEMPTS).is_none());
        assert_eq!(read_attempt(&h), 2);
    }

    #[tokio::test]
    async fn the_scope_covers_the_inbound_request_only() {
        assert!(!note_dont_retry(), "no scope outside a server");
        let svc = DontRetry::new(forwarding(502));
        let mut fut = tokio_test::task::spawn(svc.oneshot(retry_request(1)));
        assert_pending!(fut.poll());
        // Between polls the scope is gone: another request on this thread is not affected.
        assert!(!note_dont_retry());
        assert_pending!(fut.poll());
        let res = assert_ready!(fut.poll()).unwrap();
        assert!(read_dont_retry(res.headers()));
        assert!(!note_dont_retry());

        // Two requests interleaved on one thread keep their own flags.
        let quiet = DontRetry::new(service_fn(|_req: Request<()>| async {
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(Response::builder().status(502).body(()).unwrap())
        }));
        let mut a =
            tokio_test::task::spawn(DontRetry::new(forwarding(502)).oneshot(Request::new(())));
        let mut b = tokio_test::task::spawn(quiet.oneshot(Request::new(())));
        assert_pending!(a.poll());
        assert_pending!(b.poll());
        assert_pending!(a.poll());
        let b = assert_ready!(b.poll()).unwrap();
        let a = assert_ready!(a.poll()).unwrap();
        assert!(read_dont_retry(a.headers()));
        assert!(!read_dont_retry(b.headers()), "b's downstream said nothing");
    }

    #[tokio::test]
    async fn nested_servers_report_to_their_own_scope() {
        // An inner server inside the outer one's handler: the stop its own downstream reports
        // lands in the inner scope, then travels up as the inner server's response header, not
        // through the thread-local.
        let inner = DontRetry::new(forwarding(502));
        let outer = DontRetry::new(service_fn(move |req: Request<()>| {
            let inner = inner.clone();
            async move {
                let res = inner.oneshot(req).await.unwrap();
                assert!(read_dont_retry(res.headers()));
                Ok::<_, Infallible>(Response::builder().status(502).body(()).unwrap())
            }
        }));
        assert!(
            !stopped(outer, Request::new(())).await,
            "the inner scope kept the note to itself"
        );
    }

    proptest! {
        #[test]
        fn attempt_numbers_round_trip(n in 1u32.., grpc in any::<bool>()) {
            let mut h = if grpc { grpc_headers() } else { HeaderMap::new() };
            write_attempt(&mut h, n);
            prop_assert_eq!(read_attempt(&h), n);
            if grpc && n >= 2 {
                h.remove(RETRY_ATTEMPT);
                prop_assert_eq!(read_attempt(&h), n, "the A6 header alone");
            }
        }

        #[test]
        fn any_header_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let mut h = HeaderMap::new();
                h.insert(RETRY_ATTEMPT, v.clone());
                h.insert(GRPC_PREVIOUS_RPC_ATTEMPTS, v.clone());
                h.insert(RETRY_PUSHBACK, v.clone());
                h.insert(GRPC_RETRY_PUSHBACK_MS, v);
                prop_assert!(read_attempt(&h) >= 1);
                let _ = read_dont_retry(&h);
            }
        }
    }
}
