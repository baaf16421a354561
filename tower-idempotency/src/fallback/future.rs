//! The response future of [`Fallback`](super::Fallback).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Method, Response, StatusCode, Uri, header};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_red::classify::Classify;
use tower_red::clock;
use tower_red::red::Outcome;

use super::body::Sink;
use super::config::{FallbackContext, Reason};
use super::exchange::FallbackResponse;
use super::layer::{RedGuard, Shared, passed};
use super::stale::Read;
use super::{FALLBACK, FUNCTION, STALE};

pin_project! {
    /// The future of [`Fallback`](super::Fallback): the inner future, then one look at its
    /// result. Nothing is boxed; a success that may be stored goes on at once, its body copied
    /// as it streams.
    pub struct ResponseFuture<F, C> {
        #[pin]
        fut: F,
        shared: Arc<Shared<C>>,
        // Set only for a GET or a HEAD with a key: the store keeps nothing else.
        key: Option<(Read, String)>,
        target: Option<(Method, Uri)>,
        guard: RedGuard,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(
        fut: F,
        shared: Arc<Shared<C>>,
        key: Option<(Read, String)>,
        target: Option<(Method, Uri)>,
        guard: RedGuard,
    ) -> Self {
        ResponseFuture {
            fut,
            shared,
            key,
            target,
            guard,
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("stored", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    Res: FallbackResponse,
    C: Classify<Res, E>,
    E: 'static,
{
    type Output = Result<Res::Output, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.fut.poll(cx));
        let _scope = clock::Scope::enter();
        let shared = &**this.shared;
        let reason = shared.reason(&result);
        let result = match (reason, result) {
            (None, Ok(res)) => {
                let res = match (this.key.take(), shared.stale.as_ref()) {
                    (Some((read, key)), Some(stale)) if storable(&res) => {
                        let headers = kept(res.headers());
                        let sink = Sink::new(
                            stale.clone(),
                            read,
                            key,
                            res.status(),
                            headers,
                            Instant::now(),
                        );
                        res.tee(sink)
                    }
                    _ => res.pass(),
                };
                this.guard.finish(Outcome::Ok);
                return Poll::Ready(Ok(res));
            }
            (_, result) => result,
        };
        if let Some(reason) = reason.filter(|r| shared.when.matches(*r))
            && let Some(res) =
                answer::<C, Res>(shared, this.key.as_ref(), reason, this.target.take())
        {
            this.guard.finish(Outcome::Fallback);
            return Poll::Ready(Ok(res));
        }
        this.guard.finish(passed(reason));
        Poll::Ready(result.map(Res::pass))
    }
}

/// The stale entry for `key` of the request's method (if young enough), else the function's
/// answer.
fn answer<C, Res: FallbackResponse>(
    shared: &Shared<C>,
    key: Option<&(Read, String)>,
    reason: Reason,
    target: Option<(Method, Uri)>,
) -> Option<Res::Output> {
    let hit = shared
        .stale
        .as_ref()
        .zip(key)
        .and_then(|(stale, (read, key))| stale.get(*read, key, Instant::now()));
    if let Some(hit) = hit {
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
        tracing::debug!(
            name = &*shared.name,
            ?reason,
            age_secs = hit.age.as_secs(),
            "fallback: stale answer"
        );
        let uri = target.map(|(_, uri)| uri);
        return Some(Res::answer(res, uri.as_ref()));
    }
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
    tracing::debug!(name = &*shared.name, ?reason, "fallback: function answer");
    Some(Res::answer(res, Some(&context.uri)))
}

/// Cache directives under which a stored answer may not be served stale: `no-store` and
/// `private` (RFC 9111 §5.2.2: a shared cache does not keep it), `no-cache`, `must-revalidate`
/// and `proxy-revalidate` (§4.2.4: never reused stale without the origin's say-so).
const NOT_STALE: [&str; 5] = [
    "no-store",
    "private",
    "no-cache",
    "must-revalidate",
    "proxy-revalidate",
];

/// Whether a success may be kept: a final status worth reusing (2xx but 206), not itself a
/// fallback, not `Vary: *`, and no directive of [`NOT_STALE`].
fn storable<Res: FallbackResponse>(res: &Res) -> bool {
    let status = res.status();
    if !status.is_success() || status == StatusCode::PARTIAL_CONTENT {
        return false;
    }
    let headers = res.headers();
    if headers.contains_key(FALLBACK) {
        return false;
    }
    let tokens = |name| {
        headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            // A directive may carry an argument (`no-cache="set-cookie"`): only its name counts.
            .map(|d| d.split('=').next().unwrap_or("").trim())
    };
    !tokens(header::VARY).any(|v| v == "*")
        && !tokens(header::CACHE_CONTROL)
            .any(|d| NOT_STALE.iter().any(|n| d.eq_ignore_ascii_case(n)))
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
