//! The server-side service: pass-through for requests without a key, the keyed flow otherwise.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body::Body;
use tokio::time::Instant;
use tower_red::RejectionKind;
use tower_red::body::{Buffered, collect};
use tower_red::classify::GRPC_STATUS_HEADER;
use tower_red::clock;
use tower_red::red::Outcome;
use tower_service::Service;
use tower_timeout_budget::Deadline;

use crate::body::{RequestBody, ResponseBody};
use crate::config::{Config, InFlight, MapRequestBody, OnStoreError, Oversized, Wrap};
use crate::future::ResponseFuture;
use crate::key::{self, Invalid};
use crate::metrics::{Decision, Op};
use crate::response;
use crate::store::{Claim, Fence, Fingerprint, Store, StoreError, StoreKey};

/// The longest claim, whatever the request's deadline says.
const MAX_LEASE: Duration = Duration::from_secs(86_400);
/// How often a waiting duplicate looks at the store, at first and at most.
const FIRST_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(250);

/// The service built by [`IdempotencyLayer`](crate::IdempotencyLayer).
///
/// ```
/// use tower::{Service, ServiceExt};
/// use tower_idempotency::{Idempotency, IdempotencyLayer, RequestBody};
/// use tower_idempotency::store::MemoryStore;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = tower::service_fn(|_req: http::Request<RequestBody<String>>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("created")))
/// });
/// let mut svc = Idempotency::new(svc, MemoryStore::new());
/// let req = || http::Request::post("/orders").header("idempotency-key", "k1").body(String::new()).unwrap();
/// let first = svc.ready().await.unwrap().call(req()).await.unwrap();
/// assert!(first.headers().get("idempotency-replayed").is_none());
/// let second = svc.ready().await.unwrap().call(req()).await.unwrap();
/// assert_eq!(second.headers()["idempotency-replayed"], "true");
/// # }
/// ```
pub struct Idempotency<S, St, M = Wrap> {
    inner: S,
    config: Arc<Config<St>>,
    map: M,
}

impl<S, St: Store> Idempotency<S, St> {
    /// Wraps `inner` with the default settings ([`IdempotencyLayer::new`](crate::IdempotencyLayer::new)).
    pub fn new(inner: S, store: St) -> Self {
        tower_layer::Layer::layer(&crate::IdempotencyLayer::new(store), inner)
    }
}

impl<S, St, M> Idempotency<S, St, M> {
    pub(crate) fn from_parts(inner: S, config: Arc<Config<St>>, map: M) -> Self {
        Self { inner, config, map }
    }

    tower_red::define_inner_service_accessors!();
}

impl<S: Clone, St, M: Clone> Clone for Idempotency<S, St, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
            map: self.map.clone(),
        }
    }
}

impl<S: std::fmt::Debug, St, M> std::fmt::Debug for Idempotency<S, St, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// The key as the request sent it, before the body is read.
enum KeyHeader {
    Missing,
    Invalid(Invalid),
    Key(Vec<u8>),
}

impl<S, St, M, B, ResB> Service<Request<B>> for Idempotency<S, St, M>
where
    M: MapRequestBody<B>,
    M::Output: Send,
    S: Service<Request<M::Output>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    St: Store,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Send,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Send,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Forced inline, as the server stack's other pass-through steps: measured, the five save
    // ~200 instructions a call there (benches/README, "RED in a stack").
    #[inline(always)]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let config = &self.config;
        let safe = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        // A safe method's key is never read: its headers are not searched for one.
        let header = if safe { None } else { key_header(config, &req) };
        let Some(header) = header else {
            // No key: the inner future as it is, nothing allocated.
            let red = &config.metrics.red;
            let red = red
                .is_recording()
                .then(|| (red.clone(), red.records_durations().then(clock::now)));
            let req = req.map(|body| self.map.map(RequestBody::new(body)));
            return ResponseFuture::passthrough(self.inner.call(req), red);
        };
        // The readied inner service goes with the request; this one keeps a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::keyed(Box::pin(keyed(
            inner,
            self.config.clone(),
            self.map.clone(),
            req,
            header,
        )))
    }
}

/// The key of a request with an unsafe method, as sent; `None` when it sent none and none is
/// required.
fn key_header<St, B>(config: &Config<St>, req: &Request<B>) -> Option<KeyHeader> {
    let mut values = req.headers().get_all(&config.header).iter();
    match values.next() {
        None => {
            let required = config.required && matches!(*req.method(), Method::POST | Method::PATCH);
            required.then_some(KeyHeader::Missing)
        }
        Some(value) if values.next().is_none() => Some(match key::parse(value) {
            Ok(key) => KeyHeader::Key(key),
            Err(invalid) => KeyHeader::Invalid(invalid),
        }),
        Some(_) => Some(KeyHeader::Invalid(Invalid::Repeated)),
    }
}

/// Records the request's RED outcome once; a request dropped before that counts as cancelled.
struct Red<'a, St> {
    config: &'a Config<St>,
    start: Instant,
    done: bool,
}

impl<St> Red<'_, St> {
    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        let red = &self.config.metrics.red;
        if outcome == Outcome::Rejected {
            red.record_rejection(outcome);
        } else {
            red.record(outcome, clock::now().saturating_duration_since(self.start));
        }
    }

    fn refuse(&mut self, decision: Decision) {
        self.config.metrics.decision(decision);
        self.finish(Outcome::Rejected);
    }
}

impl<St> Drop for Red<'_, St> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Outcome::Cancelled);
        }
    }
}

/// Holds a claim: dropped while armed (the request was cancelled, panicked, failed or is not to
/// be stored), it releases the key at once.
struct Claimed<St: Store> {
    config: Arc<Config<St>>,
    claim: Option<(StoreKey, Fence)>,
}

impl<St: Store> Claimed<St> {
    fn disarm(&mut self) {
        self.claim = None;
    }
}

impl<St: Store> Drop for Claimed<St> {
    fn drop(&mut self) {
        let Some((key, fence)) = self.claim.take() else {
            return;
        };
        let config = self.config.clone();
        let mut release = Box::pin(async move {
            let _ = timed(&config, Op::Release, config.store.release(&key, fence)).await;
        });
        // An in-process store answers at once; a remote one finishes on the runtime.
        let mut cx = Context::from_waker(Waker::noop());
        if release.as_mut().poll(&mut cx).is_pending() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn(release)),
                Err(_) => tracing::warn!(
                    "idempotency claim dropped outside a tokio runtime: the key stays locked until its lease ends"
                ),
            }
        }
    }
}

async fn timed<St, T>(
    config: &Config<St>,
    op: Op,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let start = clock::now();
    let result = fut.await;
    config.metrics.store(
        op,
        clock::now().saturating_duration_since(start),
        result.is_ok(),
    );
    if let Err(err) = &result {
        tracing::warn!(operation = ?op, error = %err, "idempotency store error");
    }
    result
}

/// `Retry-After` for a lease with `left` to run: whole seconds, at least one.
fn retry_after(left: Duration) -> Duration {
    Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0))
        .max(Duration::from_secs(1))
}

async fn keyed<S, St, M, B, ResB>(
    mut inner: S,
    config: Arc<Config<St>>,
    map: M,
    req: Request<B>,
    header: KeyHeader,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    M: MapRequestBody<B>,
    S: Service<Request<M::Output>, Response = Response<ResB>>,
    S::Error: 'static,
    St: Store,
    B: Body<Data = Bytes> + Unpin,
    ResB: Body<Data = Bytes> + Unpin,
{
    let mut red = Red {
        config: &config,
        start: clock::now(),
        done: false,
    };
    let name = &config.name;
    let key = match header {
        KeyHeader::Key(key) => key,
        KeyHeader::Missing => {
            red.refuse(Decision::MissingKey);
            return Ok(response::refusal(
                RejectionKind::IdempotencyKeyMissing,
                "this request needs an Idempotency-Key header",
                None,
                name,
            ));
        }
        KeyHeader::Invalid(invalid) => {
            red.refuse(Decision::InvalidKey);
            return Ok(response::refusal(
                RejectionKind::IdempotencyKeyInvalid,
                invalid.detail(),
                None,
                name,
            ));
        }
    };

    let (mut parts, body) = req.into_parts();
    let collected = match collect(body, config.max_request_bytes).await {
        Ok(Buffered::Complete(collected)) => collected,
        Ok(Buffered::Overflow(rest)) => match config.oversized {
            Oversized::Reject => {
                red.refuse(Decision::TooLarge);
                return Ok(response::too_large(config.max_request_bytes));
            }
            Oversized::PassThrough => {
                let req = Request::from_parts(parts, map.map(RequestBody::overflow(rest)));
                let result = inner.call(req).await;
                red.finish(
                    result
                        .as_ref()
                        .map_or_else(crate::metrics::outcome_of_error, crate::metrics::outcome_of),
                );
                return result.map(|res| res.map(ResponseBody::new));
            }
        },
        Err(_) => {
            // The client's body failed (a reset connection): nobody is left to answer.
            red.finish(Outcome::Error);
            let mut res = Response::new(ResponseBody::full(Bytes::new(), None));
            *res.status_mut() = http::StatusCode::BAD_REQUEST;
            return Ok(res);
        }
    };

    let fingerprint = Fingerprint::compute(
        parts.method.as_str(),
        parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        collected.data(),
    );
    let principal = config.principal.as_ref().and_then(|f| f(&parts));
    let route = config.route.as_ref().and_then(|f| f(&parts));
    let store_key = StoreKey::derive(
        &config.prefix,
        principal.as_deref().unwrap_or("").as_bytes(),
        parts.method.as_str(),
        route.as_deref().unwrap_or_else(|| parts.uri.path()),
        &key,
    );
    let deadline = parts
        .extensions
        .get::<Deadline>()
        .copied()
        .or_else(Deadline::current);
    let lease = deadline
        .map_or(config.lease, |d| d.remaining().max(config.lease))
        .min(MAX_LEASE);
    let wait_until = match config.in_flight {
        InFlight::Conflict => None,
        InFlight::Wait(max) => {
            let until = Instant::now() + max;
            Some(deadline.map_or(until, |d| d.instant().min(until)))
        }
    };

    let mut poll_every = FIRST_POLL;
    let fence = loop {
        let claim = timed(
            &config,
            Op::Claim,
            config.store.claim(&store_key, &fingerprint, lease),
        )
        .await;
        match claim {
            Ok(Claim::Acquired(fence)) => break fence,
            Ok(Claim::Completed {
                fingerprint: stored,
                record,
            }) => {
                if stored != fingerprint {
                    red.refuse(Decision::Mismatch);
                    return Ok(mismatch(name));
                }
                config.metrics.decision(Decision::Replayed);
                red.finish(Outcome::Replayed);
                return Ok(response::replay(record));
            }
            Ok(Claim::InFlight {
                fingerprint: stored,
                lease_left,
            }) => {
                if stored != fingerprint {
                    red.refuse(Decision::Mismatch);
                    return Ok(mismatch(name));
                }
                let now = Instant::now();
                match wait_until {
                    Some(until) if until > now => {
                        tokio::time::sleep(poll_every.min(until - now)).await;
                        poll_every = (poll_every * 2).min(MAX_POLL);
                    }
                    _ => {
                        red.refuse(Decision::Conflict);
                        return Ok(response::refusal(
                            RejectionKind::IdempotencyConflict,
                            "a request with this idempotency key is still being processed",
                            Some(retry_after(lease_left)),
                            name,
                        ));
                    }
                }
            }
            Err(_) => match config.on_store_error {
                OnStoreError::FailClosed(after) => {
                    red.refuse(Decision::StoreError);
                    return Ok(response::refusal(
                        RejectionKind::StoreUnavailable,
                        "the idempotency store cannot be reached",
                        Some(after),
                        name,
                    ));
                }
                OnStoreError::FailOpen => {
                    config.metrics.decision(Decision::StoreError);
                    let req =
                        Request::from_parts(parts, map.map(RequestBody::replay(collected.body())));
                    let result = inner.call(req).await;
                    red.finish(
                        result.as_ref().map_or_else(
                            crate::metrics::outcome_of_error,
                            crate::metrics::outcome_of,
                        ),
                    );
                    return result.map(|res| res.map(ResponseBody::new));
                }
            },
        }
    };

    // This request runs. From here on, dropping the guard releases the key.
    let mut claimed = Claimed {
        config: config.clone(),
        claim: Some((store_key, fence)),
    };
    config.metrics.decision(Decision::Executed);
    parts.extensions.insert(fence);
    let req = Request::from_parts(parts, map.map(RequestBody::replay(collected.body())));
    let result = renewing(&config, &store_key, fence, lease, inner.call(req)).await;
    let res = match result {
        Ok(res) => res,
        Err(err) => {
            red.finish(crate::metrics::outcome_of_error(&err));
            return Err(err);
        }
    };
    let outcome = crate::metrics::outcome_of(&res);
    let (res_parts, res_body) = res.into_parts();
    if !(config.policy.stores(res_parts.status)
        && config
            .policy
            .stores_grpc(res_parts.headers.get(GRPC_STATUS_HEADER)))
    {
        drop(claimed);
        red.finish(outcome);
        return Ok(Response::from_parts(res_parts, ResponseBody::new(res_body)));
    }
    // The key stays held until the response is stored: a body that streams for longer than a
    // lease would otherwise let a duplicate claim it and run the handler again.
    let collected = renewing(
        &config,
        &store_key,
        fence,
        lease,
        collect(res_body, config.max_response_bytes),
    )
    .await;
    let response = match collected {
        Ok(Buffered::Complete(collected))
            if !config
                .policy
                .stores_grpc(collected.trailers().and_then(|t| t.get(GRPC_STATUS_HEADER))) =>
        {
            // A gRPC error in the trailers that a client is expected to retry: the guard
            // releases the key, as for a 5xx.
            let (data, trailers) = collected.into_parts();
            Response::from_parts(res_parts, ResponseBody::full(data, trailers))
        }
        Ok(Buffered::Complete(collected)) => {
            let (data, trailers) = collected.into_parts();
            let record =
                response::record(&res_parts, data.clone(), trailers.as_ref(), &config.deny);
            let completed = timed(
                &config,
                Op::Complete,
                config
                    .store
                    .complete(&store_key, fence, &record, config.ttl),
            )
            .await;
            match completed {
                Ok(true) => claimed.disarm(),
                Ok(false) => {
                    claimed.disarm();
                    tracing::warn!(
                        fence = fence.get(),
                        "idempotency completion fenced out: a later claim holds the key"
                    );
                }
                // Not stored: the guard releases the key so a retry is not locked out.
                Err(_) => {}
            }
            Response::from_parts(res_parts, ResponseBody::full(data, trailers))
        }
        Ok(Buffered::Overflow(rest)) => {
            tracing::warn!(
                max_response_bytes = config.max_response_bytes,
                "response too large to store for idempotent replay: key released"
            );
            Response::from_parts(res_parts, ResponseBody::overflow(rest))
        }
        Err(_) => {
            red.finish(Outcome::Error);
            return Ok(response::body_failed());
        }
    };
    drop(claimed);
    red.finish(outcome);
    Ok(response)
}

/// Drives `work` (the handler's call, then the read of its body) while renewing the claim every
/// third of its lease. Work that is done on its first poll arms no timer.
async fn renewing<St: Store, F: Future>(
    config: &Config<St>,
    key: &StoreKey,
    fence: Fence,
    lease: Duration,
    work: F,
) -> F::Output {
    let mut work = pin!(work);
    if let Poll::Ready(out) = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        return out;
    }
    let renew_every = (lease / 3).max(Duration::from_millis(1));
    loop {
        tokio::select! {
            biased;
            out = work.as_mut() => return out,
            () = tokio::time::sleep(renew_every) => {}
        }
        // The work goes on while the store answers.
        let mut renew = pin!(timed(
            config,
            Op::Renew,
            config.store.renew(key, fence, lease),
        ));
        tokio::select! {
            biased;
            out = work.as_mut() => return out,
            renewed = renew.as_mut() => {
                if let Ok(false) = renewed {
                    tracing::warn!(
                        fence = fence.get(),
                        "idempotency lease lost before the response was complete: it will not be stored"
                    );
                }
            }
        }
    }
}

fn mismatch<B>(name: &Arc<str>) -> Response<ResponseBody<B>> {
    response::refusal(
        RejectionKind::IdempotencyMismatch,
        "this idempotency key was used with a different request",
        None,
        name,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        assert_eq!(retry_after(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            retry_after(Duration::from_millis(1500)),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_after(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }
}
