//! The response future of [`Fallback`](super::Fallback).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, Uri, header};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_red::classify::{Classify, FailureClass};
use tower_red::clock;
use tower_red::red::Outcome;

use super::config::{FallbackContext, Reason};
use super::exchange::{Captured, FallbackResponse};
use super::layer::{RedGuard, Shared, passed};
use super::{FALLBACK, FUNCTION, STALE};

/// The boxed future of a request with a stale-store key (it may read and store the body).
type StaleFuture<O, E> = Pin<Box<dyn Future<Output = Result<O, E>> + Send>>;

pin_project! {
    /// The future of [`Fallback`](super::Fallback): the inner future and a check of its result
    /// (no allocation) for a request without a stale-store key, or the boxed flow that stores
    /// and serves last good responses for one with a key.
    pub struct ResponseFuture<F, C, O, E> {
        #[pin]
        kind: Kind<F, C, O, E>,
    }
}

pin_project! {
    #[project = Proj]
    enum Kind<F, C, O, E> {
        Plain {
            #[pin]
            fut: F,
            shared: Arc<Shared<C>>,
            target: Option<(Method, Uri)>,
            guard: RedGuard,
        },
        Stale {
            fut: StaleFuture<O, E>,
        },
    }
}

impl<F, C, O, E> ResponseFuture<F, C, O, E> {
    pub(crate) fn plain(
        fut: F,
        shared: Arc<Shared<C>>,
        target: Option<(Method, Uri)>,
        guard: RedGuard,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Plain {
                fut,
                shared,
                target,
                guard,
            },
        }
    }

    pub(crate) fn stale(fut: StaleFuture<O, E>) -> Self {
        ResponseFuture {
            kind: Kind::Stale { fut },
        }
    }
}

impl<F, C, O, E> fmt::Debug for ResponseFuture<F, C, O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Plain { .. } => f.write_str("ResponseFuture::Plain"),
            Kind::Stale { .. } => f.write_str("ResponseFuture::Stale"),
        }
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C, Res::Output, E>
where
    F: Future<Output = Result<Res, E>>,
    Res: FallbackResponse,
    C: Classify<Res, E>,
    E: 'static,
{
    type Output = Result<Res::Output, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Proj::Plain {
                fut,
                shared,
                target,
                guard,
            } => {
                let result = ready!(fut.poll(cx));
                let _scope = clock::Scope::enter();
                let reason = shared.reason(&result);
                if let Some(reason) = reason.filter(|r| shared.when.matches(*r))
                    && let Some(res) = from_function(shared, reason, target.take())
                {
                    guard.finish(Outcome::Fallback);
                    return Poll::Ready(Ok(Res::answer(res.0, res.1.as_ref())));
                }
                guard.finish(passed(reason));
                Poll::Ready(result.map(Res::pass))
            }
            Proj::Stale { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// The function's answer, marked, and the URI it answers for.
fn from_function<C>(
    shared: &Shared<C>,
    reason: Reason,
    target: Option<(Method, Uri)>,
) -> Option<(Response<Bytes>, Option<Uri>)> {
    let function = shared.function.as_ref()?;
    let (method, uri) = target?;
    let context = FallbackContext {
        reason,
        method,
        uri,
    };
    let mut res = function(&context)?;
    res.headers_mut()
        .insert(FALLBACK, HeaderValue::from_static(FUNCTION));
    Some((res, Some(context.uri)))
}

/// The flow of a request with a stale-store key: call, then store a success or answer a
/// failure from the store or the function.
pub(crate) async fn stale_flow<F, C, Res, E>(
    fut: F,
    shared: Arc<Shared<C>>,
    key: String,
    target: Option<(Method, Uri)>,
    mut guard: RedGuard,
) -> Result<Res::Output, E>
where
    F: Future<Output = Result<Res, E>>,
    Res: FallbackResponse,
    C: Classify<Res, E>,
    E: 'static,
{
    let result = fut.await;
    let arrived = Instant::now();
    let reason = {
        let _scope = clock::Scope::enter();
        shared.reason(&result)
    };
    match (reason, result) {
        (None, Ok(res)) => {
            let Some(stale) = shared.stale.as_ref().filter(|_| storable(&res)) else {
                guard.finish(Outcome::Ok);
                return Ok(res.pass());
            };
            let status = res.status();
            let headers = kept(res.headers());
            match res.capture(stale.max_entry_bytes()).await {
                Captured::Whole(out, body) => {
                    // Only a whole body is stored, after the last await: a dropped future
                    // leaves no half entry.
                    stale.insert(&key, status, headers, body, arrived);
                    guard.finish(Outcome::Ok);
                    Ok(out)
                }
                Captured::Streamed(out) => {
                    guard.finish(Outcome::Ok);
                    Ok(out)
                }
                Captured::Failed => {
                    // The backend's body broke off: a failure like any other.
                    let reason = Reason::Failure(FailureClass::Error);
                    if shared.when.matches(reason)
                        && let Some(res) = answer::<C, Res>(&shared, &key, reason, target)
                    {
                        guard.finish(Outcome::Fallback);
                        return Ok(res);
                    }
                    guard.finish(Outcome::Error);
                    Ok(Res::body_failed())
                }
            }
        }
        (Some(reason), result) if shared.when.matches(reason) => {
            if let Some(res) = answer::<C, Res>(&shared, &key, reason, target) {
                guard.finish(Outcome::Fallback);
                return Ok(res);
            }
            guard.finish(passed(Some(reason)));
            result.map(Res::pass)
        }
        (reason, result) => {
            guard.finish(passed(reason));
            result.map(Res::pass)
        }
    }
}

/// The stale entry for `key` (if young enough), else the function's answer.
fn answer<C, Res: FallbackResponse>(
    shared: &Shared<C>,
    key: &str,
    reason: Reason,
    target: Option<(Method, Uri)>,
) -> Option<Res::Output> {
    if let Some(hit) = shared
        .stale
        .as_ref()
        .and_then(|stale| stale.get(key, Instant::now()))
    {
        let mut res = Response::new(hit.entry.body);
        *res.status_mut() = hit.entry.status;
        *res.headers_mut() = hit.entry.headers;
        // RFC 9111 §5.1: the age it had when stored plus the time it was held, in seconds.
        let initial = res
            .headers()
            .get(header::AGE)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        let headers = res.headers_mut();
        headers.insert(
            header::AGE,
            HeaderValue::from(initial.saturating_add(hit.age.as_secs())),
        );
        headers.insert(FALLBACK, HeaderValue::from_static(STALE));
        let uri = target.map(|(_, uri)| uri);
        return Some(Res::answer(res, uri.as_ref()));
    }
    let (res, uri) = from_function(shared, reason, target)?;
    Some(Res::answer(res, uri.as_ref()))
}

/// Whether a success may be kept: a final status worth reusing (2xx but 206), not itself a
/// fallback, and not marked `no-store` or `private` (RFC 9111 §3: a shared cache keeps neither).
fn storable<Res: FallbackResponse>(res: &Res) -> bool {
    let status = res.status();
    if !status.is_success() || status == StatusCode::PARTIAL_CONTENT {
        return false;
    }
    let headers = res.headers();
    if headers.contains_key(FALLBACK) {
        return false;
    }
    !headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            let d = d.trim();
            d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("private")
        })
}

/// The headers worth keeping ([`crate::response::kept_headers`]: no hop-by-hop header, no
/// `Set-Cookie`, no `Content-Length`).
fn kept(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut kept = http::HeaderMap::new();
    for (name, value) in crate::response::kept_headers(headers, &[]) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            kept.append(name, value);
        }
    }
    kept
}
