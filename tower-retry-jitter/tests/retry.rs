//! Behaviour of the retry layer, on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_red::{BoxError, Rejection, RejectionKind};
use tower_retry_jitter::attempt::{self, DontRetry};
use tower_retry_jitter::{BufferBody, Jitter, RetryBody, RetryBudget, RetryLayer, RetryOn};
use tower_timeout_budget::Deadline;

type HttpResult = Result<http::Response<()>, BoxError>;

fn status(code: u16) -> http::Response<()> {
    http::Response::builder()
        .status(code)
        .body(())
        .expect("valid")
}

/// A layer with a constant 10 ms delay, no budget, 3 attempts, for `u64` requests.
fn constant(max_attempts: u32) -> tower_retry_jitter::RetryLayerBuilder {
    RetryLayer::builder()
        .max_attempts(max_attempts)
        .base(Duration::from_millis(10))
        .multiplier(1.0)
        .jitter(Jitter::None)
        .no_budget()
        .seed(7)
}

#[tokio::test(start_paused = true)]
async fn errors_are_retried_until_one_succeeds() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = constant(3)
        .always_safe()
        .build()
        .expect("valid")
        .layer(service_fn(move |n: u64| {
            let c = c.clone();
            async move {
                match c.fetch_add(1, SeqCst) {
                    0 | 1 => Err::<u64, BoxError>("reset".into()),
                    _ => Ok(n * 2),
                }
            }
        }));
    let start = Instant::now();
    assert_eq!(svc.oneshot(21).await.expect("the third attempt"), 42);
    assert_eq!(calls.load(SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(20));
}

#[tokio::test(start_paused = true)]
async fn the_last_error_comes_back_after_the_last_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = constant(3)
        .always_safe()
        .build()
        .expect("valid")
        .layer(service_fn(move |_: u64| {
            let n = c.fetch_add(1, SeqCst);
            async move { Err::<u64, BoxError>(format!("failure {n}").into()) }
        }));
    let err = svc.oneshot(1).await.expect_err("every attempt failed");
    assert_eq!(err.to_string(), "failure 2");
    assert_eq!(calls.load(SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn without_a_safety_hook_a_plain_request_is_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = constant(3)
        .safe_if(|n: &u64| *n != 13)
        .build()
        .expect("valid")
        .layer(service_fn(move |_: u64| {
            c.fetch_add(1, SeqCst);
            async { Err::<u64, BoxError>("no".into()) }
        }));
    svc.clone().oneshot(13).await.expect_err("failed");
    assert_eq!(calls.load(SeqCst), 1);
    svc.oneshot(12).await.expect_err("failed");
    assert_eq!(calls.load(SeqCst), 4);
}

/// An HTTP backend answering each attempt with the next status of `script` (the last one
/// forever), counting attempts.
fn backend(
    script: Vec<http::Response<()>>,
) -> (
    impl Service<http::Request<()>, Response = http::Response<()>, Error = BoxError, Future: Send>
    + Clone,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let script = Arc::new(script);
    let svc = service_fn(move |_: http::Request<()>| {
        let i = c.fetch_add(1, SeqCst);
        let res = script[i.min(script.len() - 1)].clone();
        async move { HttpResult::Ok(res) }
    });
    (svc, calls)
}

fn http_layer() -> tower_retry_jitter::RetryLayerBuilder<RetryOn> {
    constant(3).retry_on(RetryOn::new())
}

#[tokio::test(start_paused = true)]
async fn a_post_without_a_key_is_not_retried_and_with_one_it_is() {
    let layer = http_layer().build().expect("valid");
    let (svc, calls) = backend(vec![status(503), status(200)]);
    let post = http::Request::post("/orders").body(()).expect("valid");
    let res = layer.layer(svc).oneshot(post).await.expect("a response");
    assert_eq!(res.status(), 503);
    assert_eq!(calls.load(SeqCst), 1);

    let (svc, calls) = backend(vec![status(503), status(200)]);
    let keyed = http::Request::post("/orders")
        .header("idempotency-key", "\"8e03978e\"")
        .body(())
        .expect("valid");
    let res = layer.layer(svc).oneshot(keyed).await.expect("a response");
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(SeqCst), 2);

    let (svc, calls) = backend(vec![status(503), status(503), status(200)]);
    let get = http::Request::get("/orders/1").body(()).expect("valid");
    let res = layer.layer(svc).oneshot(get).await.expect("a response");
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn each_retry_carries_its_attempt_number() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let inner = service_fn(move |req: http::Request<()>| {
        let mut seen = s.lock().expect("not poisoned");
        seen.push(tower_retry_jitter::attempt::read_attempt(req.headers()));
        let code = if seen.len() < 3 { 503 } else { 200 };
        async move { HttpResult::Ok(status(code)) }
    });
    // An attempt header inherited from an upstream hop is not passed on.
    let get = http::Request::get("/")
        .header("x-retry-attempt", "7")
        .body(())
        .expect("valid");
    let res = http_layer()
        .build()
        .expect("valid")
        .layer(inner)
        .oneshot(get)
        .await;
    assert_eq!(res.expect("a response").status(), 200);
    assert_eq!(*seen.lock().expect("not poisoned"), [1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_500_is_not_retried_by_default() {
    let (svc, calls) = backend(vec![status(500), status(200)]);
    let get = http::Request::get("/").body(()).expect("valid");
    let res = http_layer()
        .build()
        .expect("valid")
        .layer(svc)
        .oneshot(get)
        .await;
    assert_eq!(res.expect("a response").status(), 500);
    assert_eq!(calls.load(SeqCst), 1);
}

fn with_header(code: u16, name: &str, value: &str) -> http::Response<()> {
    http::Response::builder()
        .status(code)
        .header(name, value)
        .body(())
        .expect("valid")
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_replaces_the_backoff() {
    let (svc, calls) = backend(vec![with_header(503, "retry-after", "3"), status(200)]);
    let layer = constant(3)
        .cap(Duration::from_secs(5))
        .retry_on(RetryOn::new())
        .build()
        .expect("valid");
    let start = Instant::now();
    let get = http::Request::get("/").body(()).expect("valid");
    assert_eq!(
        layer.layer(svc).oneshot(get).await.expect("ok").status(),
        200
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn grpc_pushback_replaces_the_backoff_and_a_negative_one_stops() {
    let unavailable = |pushback: &str| {
        http::Response::builder()
            .status(200)
            .header("grpc-status", "14")
            .header("grpc-retry-pushback-ms", pushback)
            .body(())
            .expect("valid")
    };
    let ok = || with_header(200, "grpc-status", "0");
    let layer = http_layer().build().expect("valid");

    let (svc, calls) = backend(vec![unavailable("250"), ok()]);
    let start = Instant::now();
    let req = http::Request::post("/svc/Method").body(()).expect("valid");
    let layer_safe = http_layer().always_safe().build().expect("valid");
    let res = layer_safe.layer(svc).oneshot(req).await.expect("ok");
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(calls.load(SeqCst), 2);

    for stop in ["-1", "soon"] {
        let (svc, calls) = backend(vec![unavailable(stop), ok()]);
        let req = http::Request::get("/svc/Method").body(()).expect("valid");
        let res = layer.layer(svc).oneshot(req).await.expect("a response");
        assert_eq!(res.headers()["grpc-retry-pushback-ms"], stop);
        assert_eq!(calls.load(SeqCst), 1, "{stop}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_dont_retry_signal_stops_the_retries() {
    let (svc, calls) = backend(vec![
        with_header(503, "x-retry-pushback", "stop"),
        status(200),
    ]);
    let get = http::Request::get("/").body(()).expect("valid");
    let res = http_layer()
        .build()
        .expect("valid")
        .layer(svc)
        .oneshot(get)
        .await;
    assert_eq!(res.expect("a response").status(), 503);
    assert_eq!(calls.load(SeqCst), 1);
}

fn get() -> http::Request<()> {
    http::Request::get("/").body(()).expect("valid")
}

/// Whether a server (a `DontRetry` whose handler calls `client` with `req`, then answers 502
/// whatever it got) tells its own caller not to retry.
async fn server_says_stop<S>(client: S, req: http::Request<()>) -> bool
where
    S: Service<http::Request<()>, Response = http::Response<()>, Error = BoxError> + Clone,
{
    let server = DontRetry::new(service_fn(move |_: http::Request<()>| {
        let (client, req) = (client.clone(), req.clone());
        async move {
            client.oneshot(req).await?;
            HttpResult::Ok(status(502))
        }
    }));
    let res = server.oneshot(get()).await.expect("a response");
    attempt::read_dont_retry(res.headers())
}

/// The `attempt` module's promise with two nested stacks: the bottom server refuses the
/// retry of its caller (the client, 2 attempts) with "don't retry", on that client's last
/// attempt; the middle server, whose handler made that call, passes the stop up, so the
/// caller above does not retry it and the bottom sees 2 attempts, not 2 × 2.
#[tokio::test(start_paused = true)]
async fn a_stop_heard_on_the_last_attempt_travels_up() {
    let (backend, calls) = backend(vec![status(503)]);
    let client = constant(2)
        .retry_on(RetryOn::new())
        .build()
        .expect("valid")
        .layer(DontRetry::new(backend));
    let middle = DontRetry::new(service_fn(move |_: http::Request<()>| {
        let client = client.clone();
        async move {
            let res = client.oneshot(get()).await?;
            assert_eq!(res.status(), 503);
            HttpResult::Ok(status(502))
        }
    }));
    let above = constant(2)
        .retry_on(RetryOn::new())
        .build()
        .expect("valid")
        .layer(middle);
    let res = above.oneshot(get()).await.expect("a response");
    assert_eq!(res.status(), 502);
    assert!(attempt::read_dont_retry(res.headers()));
    assert_eq!(calls.load(SeqCst), 2);
}

/// A request the client cannot retry (an unsafe POST, one attempt allowed; quiet, with its
/// attempt's future alone, or judged for an attempt timeout), or a refusal it does not retry:
/// the backend's "don't retry" still reaches the server the call was made for.
#[tokio::test(start_paused = true)]
async fn a_stop_on_a_call_that_is_not_retried_travels_up() {
    let stop = || with_header(503, "x-retry-pushback", "stop");
    let post = || http::Request::post("/orders").body(()).expect("valid");
    let http = |attempts| constant(attempts).retry_on(RetryOn::new());

    let (svc, calls) = backend(vec![stop()]);
    let client = http(3).build().expect("valid").layer(svc);
    assert!(server_says_stop(client, post()).await, "an unsafe POST");
    assert_eq!(calls.load(SeqCst), 1);

    let (svc, calls) = backend(vec![stop()]);
    let client = http(1).build().expect("valid").layer(svc);
    assert!(server_says_stop(client, get()).await, "one attempt allowed");
    assert_eq!(calls.load(SeqCst), 1);

    let (svc, calls) = backend(vec![stop()]);
    let client = http(3)
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .expect("valid")
        .layer(svc);
    assert!(
        server_says_stop(client, post()).await,
        "an unsafe POST, timed"
    );
    assert_eq!(calls.load(SeqCst), 1);

    let mut refusal = stop();
    refusal
        .extensions_mut()
        .insert(Rejection::new(RejectionKind::LoadShed).kind());
    let (svc, calls) = backend(vec![refusal]);
    let client = http(3).build().expect("valid").layer(svc);
    assert!(server_says_stop(client, get()).await, "a refusal");
    assert_eq!(calls.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_pushback_over_the_cap_returns_the_response_as_it_was() {
    let (svc, calls) = backend(vec![with_header(503, "retry-after", "60"), status(200)]);
    let layer = constant(3)
        .cap(Duration::from_secs(5))
        .retry_on(RetryOn::new())
        .build()
        .expect("valid");
    let start = Instant::now();
    let get = http::Request::get("/").body(()).expect("valid");
    let res = layer.layer(svc).oneshot(get).await.expect("a response");
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "60");
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn no_retry_that_cannot_finish_before_the_deadline() {
    // Each attempt takes 40 ms and fails; the backoff is 10 ms; the deadline is 100 ms away:
    // attempt 1 ends at 40, attempt 2 runs 50..90, and a third (90 + 10 + 40 = 140) cannot fit.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = constant(5)
        .always_safe()
        .build()
        .expect("valid")
        .layer(service_fn(move |_: u64| {
            c.fetch_add(1, SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(40)).await;
                Err::<u64, BoxError>("slow failure".into())
            }
        }));
    let start = Instant::now();
    let deadline = Deadline::after(Duration::from_millis(100));
    let err = deadline.scope(svc.oneshot(1)).await.expect_err("failed");
    assert_eq!(err.to_string(), "slow failure");
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(90));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_cuts_a_slow_attempt_and_retries() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = constant(3)
        .always_safe()
        .attempt_timeout(Duration::from_millis(50))
        .build()
        .expect("valid")
        .layer(service_fn(move |n: u64| {
            let first = c.fetch_add(1, SeqCst) == 0;
            async move {
                if first {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Ok::<u64, BoxError>(n)
            }
        }));
    let start = Instant::now();
    assert_eq!(svc.oneshot(5).await.expect("the retry"), 5);
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(60));
}

/// Records whether it was dropped at a deadline.
struct Probe(Arc<std::sync::Mutex<Option<bool>>>);

impl Drop for Probe {
    fn drop(&mut self) {
        *self.0.lock().expect("not poisoned") = Some(tower_red::cancel::expired());
    }
}

#[tokio::test(start_paused = true)]
async fn an_attempt_cut_by_its_timeout_is_dropped_as_expired() {
    let dropped = Arc::new(std::sync::Mutex::new(None));
    let d = dropped.clone();
    let svc = constant(1)
        .always_safe()
        .attempt_timeout(Duration::from_millis(50))
        .build()
        .expect("valid")
        .layer(service_fn(move |n: u64| {
            let probe = Probe(d.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(probe);
                Ok::<u64, BoxError>(n)
            }
        }));
    let err = svc.oneshot(5).await.expect_err("timed out");
    assert!(
        Rejection::find_in(&err)
            .expect("a rejection")
            .is(RejectionKind::DeadlineExceeded)
    );
    assert_eq!(*dropped.lock().expect("not poisoned"), Some(true));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_is_capped_by_the_deadline() {
    let svc = constant(3)
        .always_safe()
        .attempt_timeout(Duration::from_secs(5))
        .build()
        .expect("valid")
        .layer(service_fn(|n: u64| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<u64, BoxError>(n)
        }));
    let start = Instant::now();
    let deadline = Deadline::after(Duration::from_millis(300));
    let err = deadline.scope(svc.oneshot(5)).await.expect_err("timed out");
    let rejection = Rejection::find_in(&err).expect("a rejection");
    assert!(rejection.is(RejectionKind::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_below_is_not_retried_unless_asked() {
    for (retry_refusals, expected) in [(false, 1), (true, 3)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let svc = constant(3)
            .always_safe()
            .retry_refusals(retry_refusals)
            .build()
            .expect("valid")
            .layer(service_fn(move |_: u64| {
                c.fetch_add(1, SeqCst);
                async { Err::<u64, BoxError>(Rejection::new(RejectionKind::CircuitOpen).into()) }
            }));
        let err = svc.oneshot(1).await.expect_err("refused");
        assert!(
            Rejection::find_in(&err)
                .expect("as it was")
                .is(RejectionKind::CircuitOpen)
        );
        assert_eq!(
            calls.load(SeqCst),
            expected,
            "retry_refusals {retry_refusals}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_retried_refusal_waits_its_retry_after() {
    let svc = constant(3)
        .always_safe()
        .retry_refusals(true)
        .build()
        .expect("valid")
        .layer(service_fn(|_: u64| async {
            let open =
                Rejection::new(RejectionKind::CircuitOpen).with_retry_after(Duration::from_secs(2));
            Err::<u64, BoxError>(open.into())
        }));
    let start = Instant::now();
    svc.oneshot(1).await.expect_err("refused three times");
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}

#[test]
fn bad_layer_settings_name_their_field() {
    let field =
        |r: Result<RetryLayer, tower_red::ConfigError>| r.expect_err("invalid").field().to_owned();
    assert_eq!(field(RetryLayer::builder().name("").build()), "name");
    assert_eq!(
        field(
            RetryLayer::builder()
                .attempt_timeout(Duration::ZERO)
                .build()
        ),
        "attempt_timeout"
    );
    assert_eq!(
        field(RetryLayer::builder().max_attempts(0).build()),
        "max_attempts"
    );
    assert_eq!(
        field(
            RetryLayer::builder()
                .base(Duration::from_secs(2))
                .cap(Duration::from_secs(1))
                .build()
        ),
        "base"
    );
    let layer = RetryLayer::builder()
        .name("orders")
        .max_attempts(5)
        .build()
        .expect("valid");
    assert_eq!(layer.policy().max_attempts(), 5);
    assert_eq!(layer.name(), "orders");
    assert_eq!(RetryLayer::new().policy().max_attempts(), 3);
    assert_eq!(RetryLayer::new().name(), "default");
}

fn tight_budget() -> RetryBudget {
    // One retry in all: no ratio, a floor of one per second over one second.
    RetryBudget::builder()
        .ratio(0.0)
        .min_per_second(1)
        .window(Duration::from_secs(1))
        .buckets(1)
        .build()
        .expect("valid")
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_returns_the_last_response_and_clones_share_it() {
    let (svc, calls) = backend(vec![status(503)]);
    let layer = http_layer().budget(tight_budget()).build().expect("valid");
    let a = layer.layer(svc);
    let b = a.clone();
    let get = || http::Request::get("/").body(()).expect("valid");
    // The first request takes the only retry: 2 attempts.
    assert_eq!(a.oneshot(get()).await.expect("a response").status(), 503);
    assert_eq!(calls.load(SeqCst), 2);
    // Its clone finds the budget spent: 1 attempt, the 503 as it was.
    assert_eq!(b.oneshot(get()).await.expect("a response").status(), 503);
    assert_eq!(calls.load(SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_buffered_body_is_replayed_byte_for_byte_and_one_over_the_cap_is_sent_once() {
    let bodies = Arc::new(std::sync::Mutex::new(Vec::<Bytes>::new()));
    let seen = bodies.clone();
    let inner = service_fn(move |req: http::Request<RetryBody<Full<Bytes>>>| {
        let seen = seen.clone();
        async move {
            let attempt = tower_retry_jitter::attempt::read_attempt(req.headers());
            let body = req.into_body().collect().await?.to_bytes();
            // Each replay is marked with its attempt number.
            assert_eq!(
                attempt,
                seen.lock().expect("not poisoned").len() as u32 % 3 + 1
            );
            let mut seen = seen.lock().expect("not poisoned");
            seen.push(body);
            let code = if seen.len() < 3 { 503 } else { 200 };
            HttpResult::Ok(status(code))
        }
    });
    let layer = http_layer().buffer_body(16).build().expect("valid");
    let put = |body: &'static str| {
        http::Request::put("/doc")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("valid")
    };
    let res = layer
        .layer(inner.clone())
        .oneshot(put("sixteen bytes!!!"))
        .await;
    assert_eq!(res.expect("a response").status(), 200);
    assert_eq!(
        *bodies.lock().expect("not poisoned"),
        vec![Bytes::from_static(b"sixteen bytes!!!"); 3]
    );

    bodies.lock().expect("not poisoned").clear();
    let res = layer.layer(inner).oneshot(put("seventeen bytes!!")).await;
    assert_eq!(res.expect("a response").status(), 503);
    assert_eq!(
        *bodies.lock().expect("not poisoned"),
        vec![Bytes::from_static(b"seventeen bytes!!")]
    );
}

/// A request that counts its live copies.
#[derive(Debug)]
struct Tracked(Arc<AtomicUsize>);

impl Clone for Tracked {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, SeqCst);
        Tracked(self.0.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl tower_timeout_budget::DeadlineCarrier for Tracked {}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_backoff_leaves_nothing_behind() {
    let live = Arc::new(AtomicUsize::new(1));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut svc = constant(3)
        .base(Duration::from_secs(1))
        .always_safe()
        .build()
        .expect("valid")
        .layer(service_fn(move |_: Tracked| {
            c.fetch_add(1, SeqCst);
            async { Err::<(), BoxError>("failed".into()) }
        }));
    svc.ready().await.expect("ready");
    let mut fut = tokio_test::task::spawn(svc.call(Tracked(live.clone())));
    tokio_test::assert_pending!(fut.poll());
    assert_eq!(calls.load(SeqCst), 1);
    // In the backoff: the copy made before the first attempt, and the second attempt's.
    assert_eq!(live.load(SeqCst), 2);
    drop(fut);
    assert_eq!(live.load(SeqCst), 0);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(calls.load(SeqCst), 1);
    drop(svc);
    assert_eq!(
        Arc::strong_count(&calls),
        1,
        "the inner service and its clones are gone"
    );
}

fn assert_send_static<T: Send + Sync + 'static>(_: &T) {}
fn assert_future_send<F: std::future::Future + Send + 'static>(_: &F) {}

#[tokio::test]
async fn services_and_futures_are_send_and_static() {
    let (svc, _) = backend(vec![status(200)]);
    let mut retry = http_layer().build().expect("valid").layer(svc);
    assert_send_static(&retry);
    retry.ready().await.expect("ready");
    let fut = retry.call(http::Request::get("/").body(()).expect("valid"));
    assert_future_send(&fut);
    assert_eq!(fut.await.expect("ok").status(), 200);

    let buffered = http_layer()
        .buffer_body(1024)
        .build()
        .expect("valid")
        .layer(service_fn(
            |_: http::Request<RetryBody<Full<Bytes>>>| async { HttpResult::Ok(status(200)) },
        ));
    assert_send_static(&buffered);
    let fut = buffered.oneshot(
        http::Request::get("/")
            .body(Full::new(Bytes::new()))
            .expect("valid"),
    );
    assert_future_send(&fut);
    assert_eq!(fut.await.expect("ok").status(), 200);
}

#[cfg(feature = "reqwest")]
#[tokio::test(start_paused = true)]
async fn a_reqwest_request_is_retried_through_try_clone() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = constant(3)
        .retry_on(RetryOn::new())
        .reqwest()
        .build()
        .expect("valid")
        .layer(service_fn(move |req: reqwest::Request| {
            let n = c.fetch_add(1, SeqCst);
            async move {
                assert_eq!(req.body().and_then(|b| b.as_bytes()), Some(&b"{}"[..]));
                let code = if n == 0 { 503 } else { 200 };
                let res = http::Response::builder()
                    .status(code)
                    .body("")
                    .expect("valid");
                Ok::<_, BoxError>(reqwest::Response::from(res))
            }
        }));
    let mut req = reqwest::Request::new(
        http::Method::PUT,
        "http://127.0.0.1:1/doc".parse().expect("a url"),
    );
    *req.body_mut() = Some(reqwest::Body::from("{}"));
    let res = svc.oneshot(req).await.expect("the retry");
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(SeqCst), 2);
}

/// An inner service that counts its clones and fails the first `failures` calls.
#[derive(Debug)]
struct CountsClones {
    clones: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    failures: usize,
}

impl Clone for CountsClones {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, SeqCst);
        CountsClones {
            clones: self.clones.clone(),
            calls: self.calls.clone(),
            failures: self.failures,
        }
    }
}

impl Service<u64> for CountsClones {
    type Response = u64;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u64, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u64) -> Self::Future {
        let call = self.calls.fetch_add(1, SeqCst);
        std::future::ready(if call < self.failures {
            Err("reset".into())
        } else {
            Ok(n)
        })
    }
}

/// A call that may be retried takes a reference to the layer's spare copy of the inner service,
/// not a clone of it: the spare is made once, by the first such call, and cloned only when a
/// retry is decided. Clones of the retry service share it.
#[tokio::test(start_paused = true)]
async fn the_inner_service_is_cloned_once_for_all_calls_and_again_only_to_retry() {
    let clones = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    // A retry service over an inner one failing until `failures` calls have been made.
    let retrying = |failures| {
        constant(3)
            .always_safe()
            .build()
            .expect("valid")
            .layer(CountsClones {
                clones: clones.clone(),
                calls: calls.clone(),
                failures,
            })
    };
    let mut svc = retrying(0);
    for n in 0..100 {
        assert_eq!(
            svc.ready().await.expect("ready").call(n).await.expect("ok"),
            n
        );
    }
    assert_eq!(calls.load(SeqCst), 100);
    assert_eq!(clones.load(SeqCst), 1, "only the spare");

    let mut copy = svc.clone();
    assert_eq!(clones.load(SeqCst), 2, "the clone of the service");
    assert_eq!(
        copy.ready()
            .await
            .expect("ready")
            .call(7)
            .await
            .expect("ok"),
        7
    );
    assert_eq!(clones.load(SeqCst), 2, "the clone shares the spare");

    let mut svc = retrying(102);
    assert_eq!(
        svc.ready()
            .await
            .expect("ready")
            .call(9)
            .await
            .expect("retried"),
        9
    );
    assert_eq!(
        calls.load(SeqCst),
        103,
        "two failures, then the retry that succeeds"
    );
    assert_eq!(
        clones.load(SeqCst),
        4,
        "the new layer's spare, and one clone of it for the two retries"
    );
}

/// A quota of one retry after a 503 (the AWS SDKs' cost: 14 tokens).
fn one_retry_quota() -> RetryBudget {
    RetryBudget::builder().quota(14).build().expect("valid")
}

/// Copies a request once (the copy made before its first attempt), then cannot.
#[derive(Clone)]
struct CopiesOnce(Arc<AtomicUsize>);

impl tower_retry_jitter::ReplayRequest<http::Request<()>> for CopiesOnce {
    fn replay(&self, req: &http::Request<()>) -> Option<http::Request<()>> {
        (self.0.fetch_add(1, SeqCst) == 0).then(|| req.clone())
    }
}

/// A service whose clones (the ones retries are sent through) fail to become ready.
struct ClonesFailReady {
    original: bool,
    calls: Arc<AtomicUsize>,
}

impl Clone for ClonesFailReady {
    fn clone(&self) -> Self {
        ClonesFailReady {
            original: false,
            calls: self.calls.clone(),
        }
    }
}

impl Service<http::Request<()>> for ClonesFailReady {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = std::future::Ready<HttpResult>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(if self.original {
            Ok(())
        } else {
            Err("connection pool closed".into())
        })
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        std::future::ready(Ok(status(503)))
    }
}

/// The budget pays only for retries that go (the `policy` module's promise): a retry decided,
/// paid for and then never sent (the caller left during its backoff, the request could not be
/// copied again, the service failed to become ready) is given back.
#[tokio::test(start_paused = true)]
async fn a_retry_that_is_never_sent_is_given_back_to_the_budget() {
    // Dropped in the backoff (Retry-After: 1), with a quota and with a ratio budget.
    for (kind, budget, full) in [
        ("quota", one_retry_quota(), 14.0),
        ("ratio", tight_budget(), 1.0),
    ] {
        let (svc, calls) = backend(vec![with_header(503, "retry-after", "1")]);
        let mut svc = http_layer()
            .budget(budget.clone())
            .build()
            .expect("valid")
            .layer(svc);
        svc.ready().await.expect("ready");
        let mut fut = tokio_test::task::spawn(svc.call(get()));
        tokio_test::assert_pending!(fut.poll());
        assert_eq!(calls.load(SeqCst), 1);
        assert_eq!(budget.balance(Instant::now()), 0.0, "{kind}: paid for");
        drop(fut);
        assert_eq!(budget.balance(Instant::now()), full, "{kind}: given back");
    }

    // The request cannot be copied for its retry.
    let budget = one_retry_quota();
    let (svc, calls) = backend(vec![status(503)]);
    let res = http_layer()
        .budget(budget.clone())
        .replay(CopiesOnce(Arc::new(AtomicUsize::new(0))))
        .build()
        .expect("valid")
        .layer(svc)
        .oneshot(get())
        .await;
    assert_eq!(res.expect("a response").status(), 503);
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(budget.balance(Instant::now()), 14.0, "not replayable");

    // The service the retry goes through fails to become ready.
    let budget = one_retry_quota();
    let calls = Arc::new(AtomicUsize::new(0));
    let err = http_layer()
        .budget(budget.clone())
        .build()
        .expect("valid")
        .layer(ClonesFailReady {
            original: true,
            calls: calls.clone(),
        })
        .oneshot(get())
        .await
        .expect_err("not ready");
    assert_eq!(err.to_string(), "connection pool closed");
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(budget.balance(Instant::now()), 14.0, "not ready");
}

/// What the inner service sees of a request body: whether it is a replay, whether it is at its
/// end, and its exact size if known.
type BodySeen = (bool, bool, Option<u64>);

#[tokio::test(start_paused = true)]
async fn the_inner_service_sees_what_each_body_is() {
    use http_body::Body;

    let seen = Arc::new(std::sync::Mutex::new(Vec::<BodySeen>::new()));
    let s = seen.clone();
    let inner = service_fn(move |req: http::Request<RetryBody<Full<Bytes>>>| {
        let body = req.body();
        let seen = (
            body.is_replay(),
            body.is_end_stream(),
            body.size_hint().exact(),
        );
        s.lock().expect("not poisoned").push(seen);
        async { HttpResult::Ok(status(200)) }
    });
    let svc = http_layer()
        .buffer_body(16)
        .build()
        .expect("valid")
        .layer(inner);
    let req = |method: http::Method, body: &'static str| {
        http::Request::builder()
            .method(method)
            .uri("/doc")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("valid")
    };
    for req in [
        req(http::Method::PUT, "sixteen bytes!!!"),
        req(http::Method::PUT, ""),
        req(http::Method::PUT, "seventeen bytes!!"),
        req(http::Method::POST, "a post"),
    ] {
        svc.clone().oneshot(req).await.expect("ok");
    }
    assert_eq!(
        *seen.lock().expect("not poisoned"),
        [
            (true, false, Some(16)),  // replayed from the buffer
            (true, true, Some(0)),    // an empty one, at its end already
            (false, false, Some(17)), // over the cap: sent once
            (false, false, Some(6)),  // never retried (an unsafe POST): as it came
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_body_buffer_replays_up_to_64_kib() {
    for (len, attempts) in [(64 * 1024, 3), (64 * 1024 + 1, 1)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let svc = http_layer()
            .replay(BufferBody::default())
            .build()
            .expect("valid")
            .layer(service_fn(
                move |_: http::Request<RetryBody<Full<Bytes>>>| {
                    c.fetch_add(1, SeqCst);
                    async { HttpResult::Ok(status(503)) }
                },
            ));
        let put = http::Request::put("/doc")
            .body(Full::new(Bytes::from(vec![7; len])))
            .expect("valid");
        assert_eq!(svc.oneshot(put).await.expect("a response").status(), 503);
        assert_eq!(calls.load(SeqCst), attempts, "{len} bytes");
    }
}

#[tokio::test(start_paused = true)]
async fn a_buffered_request_is_not_retried_past_its_deadline() {
    // As `no_retry_that_cannot_finish_before_the_deadline`, with a buffered body: attempts of
    // 40 ms, a backoff of 10 ms, a deadline 100 ms away, so a third attempt cannot fit.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = constant(5)
        .retry_on(RetryOn::new())
        .buffer_body(16)
        .build()
        .expect("valid")
        .layer(service_fn(
            move |_: http::Request<RetryBody<Full<Bytes>>>| {
                c.fetch_add(1, SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    HttpResult::Ok(status(503))
                }
            },
        ));
    let start = Instant::now();
    let put = http::Request::put("/doc")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid");
    let deadline = Deadline::after(Duration::from_millis(100));
    let res = deadline.scope(svc.oneshot(put)).await;
    assert_eq!(res.expect("a response").status(), 503);
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(90));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_past_the_end_of_time_never_fires() {
    // `Duration::MAX` from now is not an instant: the timeout is armed for "never" instead.
    let svc = constant(3)
        .always_safe()
        .attempt_timeout(Duration::MAX)
        .build()
        .expect("valid")
        .layer(service_fn(|n: u64| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<u64, BoxError>(n)
        }));
    let start = Instant::now();
    assert_eq!(svc.oneshot(5).await.expect("not cut"), 5);
    assert_eq!(start.elapsed(), Duration::from_secs(3600));
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_retried_deposits_nothing_in_a_ratio_budget() {
    // One retry per request, no floor: only requests that may be retried pay for retries.
    let budget = RetryBudget::builder()
        .ratio(1.0)
        .min_per_second(0)
        .window(Duration::from_secs(1))
        .buckets(1)
        .build()
        .expect("valid");
    let svc = constant(3)
        .budget(budget.clone())
        .safe_if(|n: &u64| *n != 0)
        // Timed, so a call that cannot be retried still runs the layer's own future.
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .expect("valid")
        .layer(service_fn(|n: u64| async move { Ok::<u64, BoxError>(n) }));
    for _ in 0..5 {
        svc.clone().oneshot(0).await.expect("ok");
    }
    assert_eq!(budget.balance(Instant::now()), 0.0);
    svc.oneshot(1).await.expect("ok");
    assert_eq!(budget.balance(Instant::now()), 1.0);
}

#[tokio::test]
async fn readiness_is_the_inner_services() {
    use tokio_test::{assert_pending, assert_ready_ok};

    let layer = http_layer().build().expect("valid");
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<http::Request<()>, http::Response<()>, _>(layer);
    handle.allow(0);
    assert_pending!(svc.poll_ready::<http::Request<()>>());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready::<http::Request<()>>());

    type Buffered = http::Request<RetryBody<Full<Bytes>>>;
    let layer = http_layer().buffer_body(16).build().expect("valid");
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<Buffered, http::Response<()>, _>(layer);
    handle.allow(0);
    assert_pending!(svc.poll_ready::<http::Request<Full<Bytes>>>());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready::<http::Request<Full<Bytes>>>());
}

#[cfg(feature = "reqwest")]
#[tokio::test(start_paused = true)]
async fn a_reqwest_post_is_not_retried_and_each_retry_carries_its_number() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let svc = constant(3)
        .retry_on(RetryOn::new())
        .reqwest()
        .build()
        .expect("valid")
        .layer(service_fn(move |req: reqwest::Request| {
            let attempt = tower_retry_jitter::attempt::read_attempt(req.headers());
            s.lock()
                .expect("not poisoned")
                .push((req.method().clone(), attempt));
            async {
                let res = http::Response::builder()
                    .status(503)
                    .body("")
                    .expect("valid");
                Ok::<_, BoxError>(reqwest::Response::from(res))
            }
        }));
    let url = || "http://127.0.0.1:1/doc".parse().expect("a url");
    for method in [http::Method::POST, http::Method::PUT] {
        let res = svc
            .clone()
            .oneshot(reqwest::Request::new(method, url()))
            .await;
        assert_eq!(res.expect("a response").status(), 503);
    }
    use http::Method;
    assert_eq!(
        *seen.lock().expect("not poisoned"),
        [
            (Method::POST, 1),
            (Method::PUT, 1),
            (Method::PUT, 2),
            (Method::PUT, 3)
        ]
    );
}
