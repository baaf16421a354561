//! Behaviour of the server layer over the memory store, on a paused clock.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::{Sleep, advance, sleep};
use tower::{Service, ServiceExt};
use tower_idempotency::store::{
    Claim, Fence, Fingerprint, MemoryStore, Record, Store, StoreError, StoreKey,
};
use tower_idempotency::{
    IdempotencyLayer, IdempotencyLayerBuilder, InFlight, OnStoreError, Oversized, RequestBody,
    StorePolicy,
};
use tower_layer::Layer;

use common::Down;

type Req = Request<RequestBody<Full<Bytes>>>;

/// A handler that counts its runs, sleeps `delay`, and answers `status` with the request body.
#[derive(Clone)]
struct Handler {
    runs: Arc<AtomicUsize>,
    delay: Duration,
    status: StatusCode,
}

impl Handler {
    fn new() -> Self {
        Self {
            runs: Arc::new(AtomicUsize::new(0)),
            delay: Duration::ZERO,
            status: StatusCode::CREATED,
        }
    }

    fn slow(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::new()
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static {
        let this = self.clone();
        tower::service_fn(move |req: Req| {
            let this = this.clone();
            async move {
                let n = this.runs.fetch_add(1, Ordering::SeqCst) + 1;
                let fence = req.extensions().get::<Fence>().map(|f| f.get());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                if !this.delay.is_zero() {
                    sleep(this.delay).await;
                }
                let res = Response::builder()
                    .status(this.status)
                    .header("content-type", "text/plain")
                    .header("set-cookie", "session=secret")
                    .header("x-run", n.to_string())
                    .header("x-fence", fence.map_or("none".into(), |f| f.to_string()))
                    .body(Full::new(body))
                    .unwrap();
                Ok::<_, Infallible>(res)
            }
        })
    }
}

fn post(key: Option<&str>, body: &'static str) -> Request<Full<Bytes>> {
    let mut req = Request::post("/orders").header("x-user", "alice");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Lets spawned requests run up to their first real wait before the clock moves.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn builder() -> IdempotencyLayerBuilder<MemoryStore> {
    IdempotencyLayer::builder(MemoryStore::new())
        .principal(|parts| Some(parts.headers.get("x-user")?.to_str().ok()?.to_owned()))
}

async fn send<S>(svc: &S, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes)
where
    S: Service<Request<Full<Bytes>>, Error = Infallible> + Clone,
    S::Response: Into<Response<tower_idempotency::ResponseBody<Full<Bytes>>>>,
{
    let res: Response<_> = svc.clone().oneshot(req).await.unwrap().into();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_and_safe_methods_pass_through() {
    let handler = Handler::new();
    let svc = builder().build().unwrap().layer(handler.service());
    send(&svc, post(None, "a")).await;
    send(&svc, post(None, "a")).await;
    let get = Request::get("/orders")
        .header("idempotency-key", "not valid because of spaces")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _) = send(&svc, get).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotency-replayed").is_none());
    assert_eq!(handler.runs(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_completed_request_is_replayed_with_its_status_headers_and_body() {
    let handler = Handler::new();
    let svc = builder().build().unwrap().layer(handler.service());
    let (s1, h1, b1) = send(&svc, post(Some("k1"), "{\"qty\":1}")).await;
    assert_eq!(s1, StatusCode::CREATED);
    assert!(h1.get("idempotency-replayed").is_none());
    assert_eq!(
        h1["set-cookie"], "session=secret",
        "the first client gets its cookie"
    );

    advance(Duration::from_secs(23 * 3600)).await;
    let (s2, h2, b2) = send(&svc, post(Some("\"k1\""), "{\"qty\":1}")).await;
    assert_eq!(
        handler.runs(),
        1,
        "the structured-field form is the same key"
    );
    assert_eq!(s2, s1);
    assert_eq!(b2, b1);
    assert_eq!(h2["idempotency-replayed"], "true");
    assert_eq!(h2["x-run"], "1");
    assert_eq!(h2["content-type"], "text/plain");
    assert!(h2.get("set-cookie").is_none(), "cookies are never replayed");
}

#[tokio::test(start_paused = true)]
async fn a_stored_response_expires_after_its_ttl() {
    let handler = Handler::new();
    let svc = builder()
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap()
        .layer(handler.service());
    send(&svc, post(Some("k1"), "a")).await;
    advance(Duration::from_secs(60)).await;
    let (_, headers, _) = send(&svc, post(Some("k1"), "a")).await;
    assert!(headers.get("idempotency-replayed").is_none());
    assert_eq!(handler.runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_same_key_with_another_payload_is_422() {
    let handler = Handler::new();
    let svc = builder().build().unwrap().layer(handler.service());
    send(&svc, post(Some("k1"), "a")).await;
    let (status, headers, body) = send(&svc, post(Some("k1"), "b")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("idempotency_mismatch")
    );
    assert_eq!(handler.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_of_a_running_request_gets_409_with_retry_after_from_the_lease() {
    let handler = Handler::slow(Duration::from_secs(10));
    let svc = builder()
        .lease(Duration::from_secs(30))
        .build()
        .unwrap()
        .layer(handler.service());
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post(Some("k1"), "a")).await }
    });
    settle().await;
    advance(Duration::from_millis(4500)).await;
    let (status, headers, body) = send(&svc, post(Some("k1"), "a")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        headers["retry-after"], "26",
        "30 s lease, 4.5 s in: rounded up"
    );
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("idempotency_conflict")
    );
    let (status, ..) = first.await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(handler.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_running_request_with_another_payload_is_422_not_409() {
    let handler = Handler::slow(Duration::from_secs(10));
    let svc = builder().build().unwrap().layer(handler.service());
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post(Some("k1"), "a")).await }
    });
    advance(Duration::from_secs(1)).await;
    let (status, ..) = send(&svc, post(Some("k1"), "b")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    first.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn in_wait_mode_a_duplicate_waits_and_replays_the_first_result() {
    let handler = Handler::slow(Duration::from_secs(2));
    let svc = builder()
        .in_flight(InFlight::Wait(Duration::from_secs(5)))
        .build()
        .unwrap()
        .layer(handler.service());
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post(Some("k1"), "a")).await }
    });
    let duplicates: Vec<_> = (0..20)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc, post(Some("k1"), "a")).await })
        })
        .collect();
    let (_, _, first_body) = first.await.unwrap();
    for dup in duplicates {
        let (status, headers, body) = dup.await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers["idempotency-replayed"], "true");
        assert_eq!(body, first_body);
    }
    assert_eq!(handler.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn in_wait_mode_the_wait_is_bounded_then_409() {
    let handler = Handler::slow(Duration::from_secs(60));
    let svc = builder()
        .in_flight(InFlight::Wait(Duration::from_secs(3)))
        .build()
        .unwrap()
        .layer(handler.service());
    let _first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post(Some("k1"), "a")).await }
    });
    advance(Duration::from_millis(1)).await;
    let start = tokio::time::Instant::now();
    let (status, ..) = send(&svc, post(Some("k1"), "a")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn in_wait_mode_the_wait_never_outlives_the_request_deadline() {
    let handler = Handler::slow(Duration::from_secs(60));
    let svc = builder()
        .in_flight(InFlight::Wait(Duration::from_secs(30)))
        .build()
        .unwrap()
        .layer(handler.service());
    let _first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post(Some("k1"), "a")).await }
    });
    advance(Duration::from_millis(1)).await;
    let start = tokio::time::Instant::now();
    let mut req = post(Some("k1"), "a");
    req.extensions_mut()
        .insert(tower_timeout_budget::Deadline::after(Duration::from_secs(
            2,
        )));
    let (status, ..) = send(&svc, req).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_first_request_frees_its_key() {
    let handler = Handler::slow(Duration::from_secs(60));
    let svc = builder().build().unwrap().layer(handler.service());
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post(Some("k1"), "a")).await }
    });
    advance(Duration::from_secs(1)).await;
    let (status, ..) = send(&svc, post(Some("k1"), "a")).await;
    assert_eq!(status, StatusCode::CONFLICT, "held while it runs");
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let retry = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post(Some("k1"), "a")).await }
    });
    advance(Duration::from_secs(61)).await;
    let (status, headers, _) = retry.await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotency-replayed").is_none());
    assert_eq!(
        handler.runs(),
        2,
        "the retry ran: the key was released, not left locked"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_first_request_frees_its_key() {
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = builder().build().unwrap().layer(tower::service_fn({
        let runs = runs.clone();
        move |_req: Req| {
            let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    panic!("handler bug");
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
            }
        }
    }));
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post(Some("k1"), "a")).await }
    });
    assert!(first.await.unwrap_err().is_panic());
    let (status, ..) = send(&svc, post(Some("k1"), "a")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_renewed_while_the_handler_runs_past_it() {
    let handler = Handler::slow(Duration::from_secs(200));
    let svc = builder()
        .lease(Duration::from_secs(30))
        .build()
        .unwrap()
        .layer(handler.service());
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post(Some("k1"), "a")).await }
    });
    settle().await; // the first request claims the key at 0 s
    // A sleep, not one `advance`: the clock stops at each renewal on the way, as it would run.
    tokio::time::sleep(Duration::from_secs(150)).await;
    let (status, ..) = send(&svc, post(Some("k1"), "a")).await;
    assert_eq!(status, StatusCode::CONFLICT, "still held 5 leases later");
    first.await.unwrap();
    assert_eq!(handler.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_lease_lasts_at_least_the_request_deadline() {
    let store = MemoryStore::new();
    let handler = Handler::slow(Duration::from_secs(100));
    let svc = IdempotencyLayer::builder(store.clone())
        .lease(Duration::from_secs(10))
        .build()
        .unwrap()
        .layer(handler.service());
    let first = tokio::spawn({
        let svc = svc.clone();
        async move {
            let mut req = post(Some("k1"), "a");
            req.extensions_mut()
                .insert(tower_timeout_budget::Deadline::after(Duration::from_secs(
                    90,
                )));
            send(&svc, req).await
        }
    });
    settle().await;
    advance(Duration::from_secs(1)).await;
    let (status, headers, _) = send(&svc, post(Some("k1"), "a")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(headers["retry-after"], "89");
    drop(first);
}

#[tokio::test(start_paused = true)]
async fn server_errors_and_retryable_statuses_release_the_key_by_default() {
    for code in [500, 503, 408, 409, 429] {
        let mut handler = Handler::new();
        handler.status = StatusCode::from_u16(code).unwrap();
        let svc = builder().build().unwrap().layer(handler.service());
        send(&svc, post(Some("k1"), "a")).await;
        let (_, headers, _) = send(&svc, post(Some("k1"), "a")).await;
        assert!(headers.get("idempotency-replayed").is_none(), "{code}");
        assert_eq!(handler.runs(), 2, "{code}");
    }
}

#[tokio::test(start_paused = true)]
async fn store_everything_replays_errors_too() {
    let mut handler = Handler::new();
    handler.status = StatusCode::INTERNAL_SERVER_ERROR;
    let svc = builder()
        .store_policy(StorePolicy::Everything)
        .build()
        .unwrap()
        .layer(handler.service());
    send(&svc, post(Some("k1"), "a")).await;
    let (status, headers, _) = send(&svc, post(Some("k1"), "a")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["idempotency-replayed"], "true");
    assert_eq!(handler.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_same_key_from_two_principals_runs_twice_and_never_replays_across_them() {
    let handler = Handler::new();
    let svc = builder().build().unwrap().layer(handler.service());
    let as_user = |user: &'static str| {
        let mut req = post(Some("shared"), "a");
        req.headers_mut().insert("x-user", user.parse().unwrap());
        req
    };
    let (_, a, _) = send(&svc, as_user("alice")).await;
    let (_, b, _) = send(&svc, as_user("bob")).await;
    assert!(a.get("idempotency-replayed").is_none());
    assert!(b.get("idempotency-replayed").is_none());
    assert_eq!(handler.runs(), 2);
    let (_, again, _) = send(&svc, as_user("bob")).await;
    assert_eq!(again["x-run"], "2", "bob gets bob's response");
}

#[tokio::test(start_paused = true)]
async fn invalid_keys_are_400_problems_and_never_run() {
    let handler = Handler::new();
    let svc = builder().build().unwrap().layer(handler.service());
    let long = "a".repeat(256);
    for key in ["", "a b", long.as_str(), "\"unterminated"] {
        let (status, headers, body) = send(&svc, post(Some(key), "a")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key:?}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains("idempotency_key_invalid")
        );
    }
    let mut non_ascii = post(None, "a");
    non_ascii.headers_mut().insert(
        "idempotency-key",
        http::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
    );
    assert_eq!(send(&svc, non_ascii).await.0, StatusCode::BAD_REQUEST);
    let mut twice = post(Some("a"), "a");
    twice
        .headers_mut()
        .append("idempotency-key", "b".parse().unwrap());
    assert_eq!(send(&svc, twice).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(handler.runs(), 0);
    let ok = "a".repeat(255);
    assert_eq!(
        send(&svc, post(Some(&ok), "a")).await.0,
        StatusCode::CREATED
    );
}

#[tokio::test(start_paused = true)]
async fn a_required_key_missing_from_a_post_is_400() {
    let handler = Handler::new();
    let svc = builder()
        .required(true)
        .build()
        .unwrap()
        .layer(handler.service());
    let (status, _, body) = send(&svc, post(None, "a")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("idempotency_key_missing")
    );
    let put = Request::put("/orders/1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(&svc, put).await.0,
        StatusCode::CREATED,
        "only POST and PATCH"
    );
    assert_eq!(handler.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_cap_is_413_or_passes_through_by_config() {
    let handler = Handler::new();
    let big = "x".repeat(100);
    let big: &'static str = Box::leak(big.into_boxed_str());
    let svc = builder()
        .max_request_bytes(10)
        .build()
        .unwrap()
        .layer(handler.service());
    assert_eq!(
        send(&svc, post(Some("k"), big)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(handler.runs(), 0);

    let svc = builder()
        .max_request_bytes(10)
        .oversized(Oversized::PassThrough)
        .build()
        .unwrap()
        .layer(handler.service());
    let (_, _, body) = send(&svc, post(Some("k"), big)).await;
    assert_eq!(body, big, "the handler saw the whole body");
    send(&svc, post(Some("k"), big)).await;
    assert_eq!(handler.runs(), 2, "not deduplicated");
}

#[tokio::test(start_paused = true)]
async fn a_response_too_large_to_store_is_sent_whole_and_not_replayed() {
    let handler = Handler::new();
    let svc = builder()
        .max_response_bytes(4)
        .build()
        .unwrap()
        .layer(handler.service());
    let (_, _, body) = send(&svc, post(Some("k"), "longer than four")).await;
    assert_eq!(body, "longer than four");
    let (_, headers, _) = send(&svc, post(Some("k"), "longer than four")).await;
    assert!(headers.get("idempotency-replayed").is_none());
    assert_eq!(handler.runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_handler_sees_its_fence_and_each_claim_gets_a_greater_one() {
    let handler = Handler::new();
    let svc = builder().build().unwrap().layer(handler.service());
    let (_, a, _) = send(&svc, post(Some("k1"), "a")).await;
    let (_, b, _) = send(&svc, post(Some("k2"), "a")).await;
    let fence = |h: &http::HeaderMap| h["x-fence"].to_str().unwrap().parse::<u64>().unwrap();
    assert!(fence(&b) > fence(&a));
}

#[tokio::test(start_paused = true)]
async fn a_store_error_fails_closed_with_503_and_retry_after() {
    let handler = Handler::new();
    let svc = IdempotencyLayer::new(Down).layer(handler.service());
    let (status, headers, body) = send(&svc, post(Some("k"), "a")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("store_unavailable")
    );
    assert_eq!(handler.runs(), 0);
    assert_eq!(
        send(&svc, post(None, "a")).await.0,
        StatusCode::CREATED,
        "no key, no store"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_error_runs_the_request_when_failing_open() {
    let handler = Handler::new();
    let svc = IdempotencyLayer::builder(Down)
        .on_store_error(OnStoreError::FailOpen)
        .build()
        .unwrap()
        .layer(handler.service());
    let (status, _, body) = send(&svc, post(Some("k"), "a")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, "a");
    assert_eq!(handler.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_inner_error_releases_the_key() {
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = builder().build().unwrap().layer(tower::service_fn({
        let runs = runs.clone();
        move |_req: Req| {
            let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    Err("connection reset")
                } else {
                    Ok(Response::new(Full::new(Bytes::from("ok"))))
                }
            }
        }
    }));
    assert!(svc.clone().oneshot(post(Some("k1"), "a")).await.is_err());
    let res = svc.clone().oneshot(post(Some("k1"), "a")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// The memory store, with renewals that take 5 seconds.
#[derive(Clone)]
struct SlowRenew(MemoryStore);

impl Store for SlowRenew {
    async fn claim(
        &self,
        key: &StoreKey,
        fp: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.0.claim(key, fp, lease).await
    }
    async fn renew(
        &self,
        key: &StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        sleep(Duration::from_secs(5)).await;
        self.0.renew(key, fence, lease).await
    }
    async fn complete(
        &self,
        key: &StoreKey,
        fence: Fence,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.0.complete(key, fence, record, ttl).await
    }
    async fn release(&self, key: &StoreKey, fence: Fence) -> Result<bool, StoreError> {
        self.0.release(key, fence).await
    }
}

#[tokio::test(start_paused = true)]
async fn the_handler_keeps_running_while_a_renewal_waits_on_the_store() {
    let handler = Handler::slow(Duration::from_secs(12));
    let svc = IdempotencyLayer::builder(SlowRenew(MemoryStore::new()))
        .lease(Duration::from_secs(30))
        .build()
        .unwrap()
        .layer(handler.service());
    let start = tokio::time::Instant::now();
    let (status, ..) = send(&svc, post(Some("k1"), "a")).await;
    assert_eq!(status, StatusCode::CREATED);
    // A renewal starts at 10 s and takes 5 s; the handler ends at 12 s regardless.
    assert_eq!(start.elapsed(), Duration::from_secs(12));
}

/// A gRPC handler counting its runs: 200 and `application/grpc`, one message, then `status`
/// in the trailers (gRPC sends errors in trailers behind a 200), or, with `trailers_only`, in
/// the headers of an empty response (how gRPC answers an error before any message).
fn grpc_handler(
    status: &'static str,
    message: Option<&'static str>,
    trailers_only: bool,
) -> (
    Arc<AtomicUsize>,
    impl Service<
        Req,
        Response = Response<impl http_body::Body<Data = Bytes, Error = Infallible>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
) {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = tower::service_fn({
        let runs = runs.clone();
        move |_req: Req| {
            runs.fetch_add(1, Ordering::SeqCst);
            let mut status_fields = http::HeaderMap::new();
            status_fields.insert("grpc-status", status.parse().unwrap());
            if let Some(message) = message {
                status_fields.insert("grpc-message", message.parse().unwrap());
            }
            let mut res = Response::builder().header("content-type", "application/grpc");
            let (data, trailers) = if trailers_only {
                res.headers_mut().unwrap().extend(status_fields);
                (Bytes::new(), None)
            } else {
                (
                    Bytes::from_static(b"\0\0\0\0\x02hi"),
                    Some(Ok(status_fields)),
                )
            };
            let body = Full::new(data).with_trailers(std::future::ready(trailers));
            std::future::ready(Ok::<_, Infallible>(res.body(body).unwrap()))
        }
    });
    (runs, handler)
}

fn grpc_request() -> Request<Full<Bytes>> {
    let mut req = post(Some("k1"), "\0\0\0\0\0");
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    req
}

#[tokio::test(start_paused = true)]
async fn a_replay_carries_the_trailers_of_the_first_response() {
    // A success, and an error that is the request's answer (not worth retrying): both stored.
    for (status, message) in [("0", None), ("5", Some("no such account"))] {
        let (runs, handler) = grpc_handler(status, message, false);
        let svc = builder().build().unwrap().layer(handler);
        let mut answers = Vec::new();
        for _ in 0..2 {
            let res = svc.clone().oneshot(grpc_request()).await.unwrap();
            let (parts, body) = res.into_parts();
            let collected = body.collect().await.unwrap();
            let trailers = collected.trailers().cloned();
            answers.push((parts, collected.to_bytes(), trailers));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "grpc-status {status}");
        let [
            (first, first_body, first_trailers),
            (replay, replay_body, replay_trailers),
        ] = <[_; 2]>::try_from(answers).unwrap();
        assert!(first.headers.get("idempotency-replayed").is_none());
        assert_eq!(replay.headers["idempotency-replayed"], "true");
        assert_eq!(replay.status, StatusCode::OK);
        assert_eq!(replay.headers["content-type"], "application/grpc");
        assert_eq!(replay_body, first_body);
        let first_trailers = first_trailers.expect("the first response keeps its trailers");
        assert_eq!(first_trailers["grpc-status"], status);
        let replay_trailers = replay_trailers.expect("the replay has the trailers");
        assert_eq!(replay_trailers, first_trailers);
        assert_eq!(replay_trailers["grpc-status"], status);
        assert!(
            replay.headers.get("grpc-status").is_none(),
            "trailers stay trailers"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_grpc_error_a_client_is_expected_to_retry_releases_the_key_as_a_5xx_does() {
    // The gRPC codes of `StorePolicy::Retryable`'s HTTP statuses (5xx, 408, 409, 429), and a
    // cancelled call; in trailers after a message, and in a trailers-only response.
    for code in ["1", "2", "4", "8", "10", "12", "13", "14", "15"] {
        for trailers_only in [false, true] {
            let (runs, handler) = grpc_handler(code, Some("try again"), trailers_only);
            let svc = builder().build().unwrap().layer(handler);
            for _ in 0..2 {
                let res = svc.clone().oneshot(grpc_request()).await.unwrap();
                let collected = res.into_body().collect().await.unwrap();
                let status = collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status"))
                    .cloned();
                if !trailers_only {
                    assert_eq!(status.unwrap(), code, "the caller gets the status");
                }
            }
            assert_eq!(
                runs.load(Ordering::SeqCst),
                2,
                "grpc-status {code} (trailers only: {trailers_only}): not stored, the retry runs"
            );
        }
    }
    // The policy that stores everything keeps them too.
    let (runs, handler) = grpc_handler("14", None, false);
    let svc = builder()
        .store_policy(StorePolicy::Everything)
        .build()
        .unwrap()
        .layer(handler);
    for _ in 0..2 {
        let res = svc.clone().oneshot(grpc_request()).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "stored: replayed");
}

/// A response body whose one chunk comes after a sleep: the handler has answered, its body has
/// not.
struct LateBody {
    sleep: Pin<Box<Sleep>>,
    data: Option<Bytes>,
}

impl http_body::Body for LateBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_renewed_while_the_response_body_is_read() {
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = builder()
        .lease(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(tower::service_fn({
            let runs = runs.clone();
            move |_req: Req| {
                runs.fetch_add(1, Ordering::SeqCst);
                // Headers at once, the body 5 s later: 5 leases.
                let body = LateBody {
                    sleep: Box::pin(sleep(Duration::from_secs(5))),
                    data: Some(Bytes::from_static(b"created")),
                };
                std::future::ready(Ok::<_, Infallible>(Response::new(body)))
            }
        }));
    let read = || {
        let svc = svc.clone();
        async move {
            let res = svc.oneshot(post(Some("k1"), "a")).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    };
    let first = tokio::spawn(read());
    settle().await;
    // Slept, not advanced: the clock moves timer by timer, so the first request's renewals
    // fire when they are due (one jump would pass its lease before any of them).
    sleep(Duration::from_secs(2)).await;
    let (status, _) = read().await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the first request still holds its key"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let (status, body) = first.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "created");
    let (status, body) = read().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "created", "the first response was stored");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
