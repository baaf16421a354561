//! The stack builder (`tower_idempotency::stack`): it refuses each broken cross-layer
//! invariant with both values in the message, and the stacks it builds are
//! `Send + Sync + 'static`, `Infallible` where axum needs it, and behave on real loopback
//! servers (axum, tonic, reqwest) as the layers do alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::stack::{ClientStack, ServerStack};
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, RequestBody};
use tower_red::classify::HttpStatus;
use tower_red::grpc::status::StatusLayer;
use tower_red::names;
use tower_retry_jitter::{BufferBody, Jitter, RetryBody, RetryOn};

fn assert_send_sync_static<T: Send + Sync + 'static>(_: &T) {}

#[test]
fn an_attempt_timeout_set_on_the_retry_is_checked_as_the_stacks_own() {
    // Set in `.retry(..)` rather than with `.attempt_timeout(..)`: the same invariants hold.
    let err = ClientStack::builder("payments")
        .http_status()
        .total_budget(Duration::from_millis(800))
        .retry(|r| r.attempt_timeout(Duration::from_millis(1_500)))
        .breaker(|b| b.count_window(20))
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("attempt_timeout = 1.5s"), "{msg}");
    assert!(msg.contains("total budget (800ms)"), "{msg}");
    // And the breaker's window is held against it, not against the total budget.
    let err = ClientStack::builder("payments")
        .http_status()
        .total_budget(Duration::from_secs(10))
        .retry(|r| r.attempt_timeout(Duration::from_secs(3)))
        .breaker(|b| b.time_window(Duration::from_secs(5), 5))
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("= 5s") && msg.contains("attempt timeout (3s"),
        "{msg}"
    );
}

#[test]
fn an_attempt_timeout_longer_than_the_budget_is_refused_naming_both() {
    let err = ClientStack::builder("payments")
        .http_status()
        .total_budget(Duration::from_millis(800))
        .attempt_timeout(Duration::from_millis(1_500))
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("attempt_timeout = 1.5s"), "{msg}");
    assert!(msg.contains("total budget (800ms)"), "{msg}"); // An attempt may take the whole budget: a single attempt with no retry is a valid stack.
    let _stack = ClientStack::builder("payments")
        .http_status()
        .total_budget(Duration::from_millis(800))
        .attempt_timeout(Duration::from_millis(800))
        .retry(|r| r.max_attempts(1))
        .breaker(|b| b.count_window(20))
        .build()
        .expect("an attempt timeout equal to the budget");
}

#[test]
fn a_breaker_window_shorter_than_two_attempt_timeouts_is_refused_naming_both() {
    let err = ClientStack::builder("payments")
        .http_status()
        .total_budget(Duration::from_secs(5))
        .attempt_timeout(Duration::from_millis(600))
        .breaker(|b| b.time_window(Duration::from_millis(1_000), 10))
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("breaker.time_window = 1s"), "{msg}");
    assert!(
        msg.contains("attempt timeout (600ms, so at least 1.2s)"),
        "{msg}"
    );
    // Twice the attempt timeout exactly is enough.
    let _stack = ClientStack::builder("payments")
        .http_status()
        .total_budget(Duration::from_secs(5))
        .attempt_timeout(Duration::from_millis(500))
        .breaker(|b| b.time_window(Duration::from_millis(1_000), 10))
        .build()
        .expect("a window of two attempt timeouts");
}

#[test]
fn without_an_attempt_timeout_the_window_must_hold_two_total_budgets() {
    let err = ClientStack::builder("payments")
        .total_budget(Duration::from_secs(3))
        .breaker(|b| b.time_window(Duration::from_secs(5), 5))
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("= 5s") && msg.contains("total budget (3s"),
        "{msg}"
    );
}

#[test]
fn retry_delays_that_fill_the_budget_are_refused_naming_both() {
    // Worst case with full jitter: 200 + 400 + 800 + 1000 (the cap) = 2.4 s of sleep.
    let err = ClientStack::builder("payments")
        .http_status()
        .total_budget(Duration::from_secs(2))
        .retry(|r| {
            r.max_attempts(5)
                .base(Duration::from_millis(200))
                .cap(Duration::from_secs(1))
                .jitter(Jitter::Full)
        })
        .breaker(|b| b.count_window(20))
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("retry.worst_case_delays = 2.4s"), "{msg}");
    assert!(
        msg.contains("4 retries") && msg.contains("total budget (2s)"),
        "{msg}"
    );
    // Decorrelated jitter can triple a delay: 600 + 1000 + 1000 = 2.6 s for 4 attempts.
    let err = ClientStack::builder("payments")
        .http_status()
        .total_budget(Duration::from_millis(2_500))
        .retry(|r| {
            r.max_attempts(4)
                .base(Duration::from_millis(200))
                .cap(Duration::from_secs(1))
                .jitter(Jitter::Decorrelated)
        })
        .breaker(|b| b.count_window(20))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("= 2.6s"), "{err}");
}

#[test]
fn a_retry_that_retries_what_the_stack_calls_success_is_refused_naming_both() {
    // A stack told not to count 429 as a failure cannot retry it: the breaker would count
    // as healthy the very calls the retry multiplies.
    let err = ClientStack::builder("payments")
        .classifier(HttpStatus::new().too_many_requests(false))
        .retry_on(RetryOn::new().too_many_requests(true))
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("retry_on = RetryOn"), "{msg}");
    assert!(msg.contains("retries HTTP 429 Too Many Requests"), "{msg}");
    assert!(msg.contains("stack's classifier (HttpStatus"), "{msg}");
    // A classifier that reads no response (any error fails) cannot back an HTTP retry rule.
    let err = ClientStack::builder("payments")
        .retry_on(RetryOn::new())
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("retries HTTP 502 Bad Gateway"),
        "{err}"
    );
    // A gRPC stack: RetryOn retries UNAVAILABLE, a failure for GrpcStatus.
    let _stack = ClientStack::builder("grpc")
        .grpc_status()
        .retry_on(RetryOn::new())
        .build()
        .expect("UNAVAILABLE is a failure for GrpcStatus");
    // ABORTED is not among GrpcStatus's default failures: a gRPC stack cannot retry it.
    let err = ClientStack::builder("grpc")
        .grpc_status()
        .retry_on(RetryOn::new().grpc_code(tower_red::GrpcCode::Aborted, true))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("retries gRPC Aborted"), "{err}");
}

#[test]
fn a_server_breaker_window_shorter_than_two_deadline_caps_is_refused_naming_both() {
    let err = ServerStack::builder("api")
        .http_status()
        .deadline_cap(Duration::from_secs(2))
        .breaker(|b| b.time_window(Duration::from_secs(3), 6))
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("breaker.time_window = 3s"), "{msg}");
    assert!(msg.contains("deadline cap (2s, so at least 4s)"), "{msg}");
}

#[test]
fn a_layers_own_bad_value_comes_back_as_that_layers_config_error() {
    let err = ClientStack::builder("payments")
        .bulkhead(|b| b.max_concurrent(0))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("max_concurrent"), "{err}");
}

/// Every `(layer, outcome)` pair with a duration histogram, and the counters by
/// `(layer, outcome)`.
type Series = (Vec<(String, String)>, Vec<((String, String), u64)>);

fn red_series(snapshotter: &metrics_util::debugging::Snapshotter) -> Series {
    let mut timed = Vec::new();
    let mut counts = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let label = |name: &str| {
            key.key()
                .labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        let pair = (label("layer"), label("outcome"));
        match (key.key().name(), value) {
            (names::REQUEST_DURATION_SECONDS, _) => timed.push(pair),
            (names::REQUESTS_TOTAL, DebugValue::Counter(n)) if n > 0 => counts.push((pair, n)),
            _ => {}
        }
    }
    (timed, counts)
}

#[tokio::test]
async fn a_server_stack_guards_an_axum_route_and_records_one_duration() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let stack = metrics::with_local_recorder(&recorder, || {
        ServerStack::builder("orders")
            .http_status()
            .deadline_cap(Duration::from_secs(5))
            .breaker(|b| b.consecutive_failures(2).open_time(Duration::from_secs(30)))
            .bulkhead(|b| b.max_concurrent(8))
            .build()
            .expect("a valid stack")
    });
    assert_send_sync_static(&stack);
    let breaker = stack.breaker();
    let handled = Arc::new(AtomicUsize::new(0));
    let seen = handled.clone();
    let app = Router::new()
        .route(
            "/orders",
            get(move || {
                seen.fetch_add(1, Ordering::Relaxed);
                async { (http::StatusCode::INTERNAL_SERVER_ERROR, "db down") }
            }),
        )
        // `route_layer` needs an `Infallible` service: the stack's problem adapter makes it so.
        .route_layer(stack)
        .route("/health", get(|| async { "up" }));
    let addr = tests::serve_axum(app).await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{addr}{path}")).send();

    assert_eq!(get("/orders").await.unwrap().status(), 500);
    assert_eq!(get("/orders").await.unwrap().status(), 500);
    // Two 5xx opened the breaker: refused with 503, problem+json, before the handler runs.
    let refused = get("/orders").await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "30");
    assert!(refused.text().await.unwrap().contains("circuit_open"));
    assert_eq!(handled.load(Ordering::Relaxed), 2);
    assert_eq!(breaker.state(), tower_breaker::State::Open);
    // Health stays outside the stack.
    assert_eq!(get("/health").await.unwrap().status(), 200);

    let (timed, counts) = red_series(&snapshotter);
    // The inner layers count; no layer but RED's OpenTelemetry histogram times the request.
    assert!(
        timed.is_empty(),
        "inner layers registered durations: {timed:?}"
    );
    let count = |layer: &str, outcome: &str| {
        counts
            .iter()
            .find(|((l, o), _)| l == layer && o == outcome)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(count("breaker", "error"), 2);
    assert_eq!(count("breaker", "circuit_open"), 1);
    assert_eq!(count("bulkhead", "inner_refusal"), 1);
}

#[tokio::test]
async fn a_server_stack_with_idempotency_replays_a_post_once_handled() {
    let charges = Arc::new(AtomicUsize::new(0));
    let seen = charges.clone();
    let stack = ServerStack::builder("payments")
        .http_status()
        .deadline_cap(Duration::from_secs(5))
        .idempotency(|| {
            IdempotencyLayer::builder(MemoryStore::new())
                .map_request_body(|body: RequestBody<Body>| Body::new(body))
                .build()
        })
        .build()
        .expect("a valid stack");
    assert_send_sync_static(&stack);
    let app = Router::new()
        .route(
            "/charges",
            post(move || {
                let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
                async move { (http::StatusCode::CREATED, format!("charge {n}")) }
            }),
        )
        .route_layer(stack);
    let addr = tests::serve_axum(app).await;
    let client = reqwest::Client::new();
    let charge = || {
        client
            .post(format!("http://{addr}/charges"))
            .header("idempotency-key", "order-17")
            .body("{\"amount\":5}")
            .send()
    };
    let first = charge().await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(first.text().await.unwrap(), "charge 1");
    let again = charge().await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), "charge 1");
    assert_eq!(charges.load(Ordering::Relaxed), 1, "one side effect");
}

#[tokio::test]
async fn a_client_stack_retries_a_post_with_one_key_over_reqwest() {
    let keys = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = keys.clone();
    let app = Router::new().route(
        "/pay",
        post(move |headers: http::HeaderMap| {
            let seen = seen.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let mut seen = seen.lock().unwrap();
                seen.push(key);
                if seen.len() < 3 {
                    http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    http::StatusCode::CREATED
                }
            }
        }),
    );
    let addr = tests::serve_axum(app).await;
    let stack = ClientStack::builder("payments")
        .http_status()
        .total_budget(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(1))
        .retry_on(RetryOn::new())
        .retry(|r| {
            r.base(Duration::from_millis(5))
                .cap(Duration::from_millis(20))
        })
        .bulkhead(|b| b.max_concurrent(8))
        .reqwest()
        .build()
        .expect("a valid stack");
    let client = ServiceBuilder::new()
        .layer(stack.clone())
        .service(reqwest::Client::new());
    assert_send_sync_static(&client);
    let url: reqwest::Url = format!("http://{addr}/pay").parse().unwrap();
    let res = client
        .oneshot(reqwest::Request::new(http::Method::POST, url))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 3, "two 503s retried");
    assert!(!keys[0].is_empty());
    assert!(keys.iter().all(|k| *k == keys[0]), "one key: {keys:?}");
    assert_eq!(stack.breaker().state(), tower_breaker::State::Closed);
    assert_eq!(stack.bulkhead().in_flight("default"), Some(0));
}

#[tokio::test]
async fn a_client_stack_fails_fast_once_its_breaker_opens() {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            seen.fetch_add(1, Ordering::Relaxed);
            async { http::StatusCode::BAD_GATEWAY }
        }),
    );
    let addr = tests::serve_axum(app).await;
    let stack = ClientStack::builder("flaky")
        .http_status()
        .total_budget(Duration::from_secs(5))
        .retry_on(RetryOn::new())
        .retry(|r| {
            r.max_attempts(2)
                .base(Duration::from_millis(1))
                .cap(Duration::from_millis(2))
        })
        .breaker(|b| b.consecutive_failures(3).open_time(Duration::from_secs(60)))
        .reqwest()
        .build()
        .expect("a valid stack");
    let client = ServiceBuilder::new()
        .layer(stack.clone())
        .service(reqwest::Client::new());
    let url: reqwest::Url = format!("http://{addr}/").parse().unwrap();
    for _ in 0..2 {
        let res = client
            .clone()
            .oneshot(reqwest::Request::new(http::Method::GET, url.clone()))
            .await;
        // The first call: two 502s (retried once). The second: one 502, then the breaker
        // opens and the retry's second attempt is refused.
        let _ = res;
    }
    assert_eq!(stack.breaker().state(), tower_breaker::State::Open);
    let before = hits.load(Ordering::Relaxed);
    assert_eq!(before, 3, "the breaker opened on the third failure");
    let refused = client
        .oneshot(reqwest::Request::new(http::Method::GET, url))
        .await
        .unwrap_err();
    let rejection = tower_red::Rejection::find_in(&refused).expect("refused locally");
    assert_eq!(rejection.kind(), tower_red::RejectionKind::CircuitOpen);
    assert_eq!(
        hits.load(Ordering::Relaxed),
        before,
        "the backend was spared"
    );
}

#[tokio::test]
async fn a_tonic_server_and_channel_behind_built_stacks_answer_grpc() {
    let server = ServerStack::builder("grpc")
        .grpc_status()
        .adapter(StatusLayer::new())
        .deadline_cap(Duration::from_secs(5))
        .bulkhead(|b| b.max_concurrent(16))
        .build()
        .expect("a valid stack");
    let (reporter, addr) = tests::serve_health(server).await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client_stack = ClientStack::builder("health")
        .grpc_status()
        .total_budget(Duration::from_secs(2))
        .retry_on(RetryOn::new())
        // tonic bodies stream: the retry keeps up to 64 KiB of each to replay it.
        .replay(BufferBody::new(64 * 1024))
        .build()
        .expect("a valid stack");
    let svc = ServiceBuilder::new()
        .layer(tower_red::grpc::client::ClientStatusLayer::new())
        .layer(client_stack)
        .map_request(|req: http::Request<RetryBody<tonic::body::Body>>| {
            req.map(tonic::body::Body::new)
        })
        .service(channel);
    assert_send_sync_static(&svc);
    let mut client = tonic_health::pb::health_client::HealthClient::new(
        tower::util::BoxCloneSyncService::new(svc.map_err(|e: tower_red::BoxError| e)),
    );
    let ok = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().status, 1, "SERVING");
    let unknown = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_server_stack_with_a_fallback_serves_the_last_good_answer_while_the_circuit_is_open() {
    use tower_idempotency::fallback::{FALLBACK, StaleConfig};

    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let state = healthy.clone();
    let stack = ServerStack::builder("prices")
        .http_status()
        .deadline_cap(Duration::from_secs(5))
        .breaker(|b| b.consecutive_failures(1).open_time(Duration::from_secs(30)))
        .fallback(|f| {
            f.stale_on_error(StaleConfig {
                max_age: Duration::from_secs(60),
                ..StaleConfig::default()
            })
        })
        .build()
        .expect("a valid stack");
    assert_send_sync_static(&stack);
    let breaker = stack.breaker();
    let app = Router::new()
        .route(
            "/prices",
            get(move || {
                let ok = state.load(Ordering::Relaxed);
                async move {
                    if ok {
                        (http::StatusCode::OK, "[42]")
                    } else {
                        (http::StatusCode::INTERNAL_SERVER_ERROR, "db down")
                    }
                }
            }),
        )
        .route_layer(stack);
    let addr = tests::serve_axum(app).await;
    let client = reqwest::Client::new();
    let get = || client.get(format!("http://{addr}/prices")).send();

    let fresh = get().await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert!(fresh.headers().get(FALLBACK).is_none());
    assert_eq!(fresh.text().await.unwrap(), "[42]");

    healthy.store(false, Ordering::Relaxed);
    // The failure itself is answered from the store (the classifier said failure)...
    let failed = get().await.unwrap();
    assert_eq!(failed.status(), 200);
    assert_eq!(failed.headers()[FALLBACK], "stale");
    // ...and the breaker still saw it: it is open now, and its refusals are answered too.
    assert_eq!(breaker.state(), tower_breaker::State::Open);
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), 200);
    assert_eq!(refused.headers()[FALLBACK], "stale");
    assert_eq!(refused.text().await.unwrap(), "[42]");
}

#[tokio::test]
async fn a_server_stack_with_a_partitioned_bulkhead_keeps_a_slow_route_from_starving_the_rest() {
    use tokio::sync::{Notify, mpsc};
    use tower_bulkhead::Partition;

    let stack = ServerStack::builder("partitioned")
        .http_status()
        .deadline_cap(Duration::from_secs(5))
        .bulkhead(|b| {
            b.max_concurrent(8)
                .partition(Partition::new("slow", 1))
                .partition_by(|req: &http::Request<Body>| {
                    req.uri().path().starts_with("/slow").then_some("slow")
                })
        })
        .build()
        .expect("a valid stack");
    let bulkhead = stack.bulkhead();
    let release = Arc::new(Notify::new());
    let (entered_tx, mut entered) = mpsc::channel::<()>(1);
    let gate = release.clone();
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let gate = gate.clone();
                let entered = entered_tx.clone();
                async move {
                    let _ = entered.send(()).await;
                    gate.notified().await;
                    "slow"
                }
            }),
        )
        .route("/fast", get(|| async { "fast" }))
        .route_layer(stack);
    let addr = tests::serve_axum(app).await;
    let client = reqwest::Client::new();

    let first = tokio::spawn(client.get(format!("http://{addr}/slow")).send());
    entered.recv().await.expect("the first slow call runs");
    assert_eq!(bulkhead.in_flight("slow"), Some(1));
    // The slow partition is full: the next slow call is refused at once...
    let refused = client
        .get(format!("http://{addr}/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.text().await.unwrap().contains("bulkhead_full"));
    // ...while the rest of the routes run in the default partition.
    let fast = client
        .get(format!("http://{addr}/fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(fast.status(), 200);
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(bulkhead.in_flight("slow"), Some(0));
}
