//! One stack, one verdict: the README's server stack (`RedLayer → ProblemLayer →
//! InboundDeadline → Bulkhead → Breaker → handler`) agrees with itself over real sockets.
//!
//! - a backend that hangs opens the breaker, although the deadline layer outside it is what
//!   ends every call;
//! - a refusal is counted as a refusal once, summed over every layer's RED series;
//! - a client breaker's refusal that a handler turned into a 503 is not the server's failure,
//!   and health routes stay outside the breaker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{ServiceBuilder, ServiceExt};
use tower_breaker::{BreakerConfig, BreakerLayer, State};
use tower_bulkhead::BulkheadLayer;
use tower_red::classify::HttpStatus;
use tower_red::names;
use tower_red::problem::{ProblemLayer, rejection_response};
use tower_red::{BoxError, RedLayer, Rejection, RejectionKind};
use tower_timeout_budget::TimeoutBudgetLayer;
use tower_timeout_budget::inbound::InboundDeadlineLayer;

fn breaker(name: &str, consecutive_failures: u32) -> BreakerConfig {
    BreakerLayer::builder()
        .name(name)
        .consecutive_failures(consecutive_failures)
        .open_time(Duration::from_secs(30))
        .build_config()
        .expect("a valid breaker")
}

/// The sums of `resilience_requests_total{outcome}` over every layer and name, one per
/// outcome, from one snapshot (a snapshot drains what it reads).
fn totals<const N: usize>(snapshotter: &Snapshotter, outcomes: [&str; N]) -> [u64; N] {
    let snap = snapshotter.snapshot().into_vec();
    outcomes.map(|outcome| sum(&snap, outcome))
}

type Snap = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn sum(snap: &Snap, outcome: &str) -> u64 {
    snap.iter()
        .filter(|(key, ..)| {
            key.key().name() == names::REQUESTS_TOTAL
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == names::label::OUTCOME && l.value() == outcome)
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("a counter, got {other:?}"),
        })
        .sum()
}

#[tokio::test]
async fn a_hanging_backend_opens_the_breaker_behind_the_inbound_deadline() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let handle_layer =
        BreakerLayer::from_config(breaker("hangs", 3)).with_classifier(HttpStatus::new());
    let handle = handle_layer.handle();
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                seen.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<&'static str>()
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RedLayer::server())
                .layer(ProblemLayer::new())
                .layer(
                    InboundDeadlineLayer::builder()
                        .cap(Duration::from_millis(50))
                        .build()
                        .unwrap(),
                )
                .layer(
                    BulkheadLayer::builder()
                        .name("hangs")
                        .max_concurrent(8)
                        .build()
                        .unwrap(),
                )
                .layer(handle_layer),
        );
    let addr = tests::serve_axum(app).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/slow");

    for _ in 0..3 {
        let res = client.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 504, "the inbound deadline ends the call");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        handle.state(),
        State::Open,
        "three calls cut by their deadline are three timeouts"
    );
    let refused = client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.text().await.unwrap().contains("circuit_open"));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the backend was spared");
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_before_its_deadline_is_not_a_failure() {
    let layer = BreakerLayer::from_config(breaker("impatient", 1));
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(TimeoutBudgetLayer::new(Duration::from_secs(10)).unwrap())
        .layer(layer)
        .service(tower::service_fn(|_: u64| {
            std::future::pending::<Result<u64, BoxError>>()
        }));
    for _ in 0..5 {
        let call = svc.clone().oneshot(1);
        // The caller walks away after 1 s of a 10 s budget.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), call)
                .await
                .is_err()
        );
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.consecutive_failures(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_counted_once_over_the_whole_stack() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let layer = BreakerLayer::from_config(breaker("counted-once", 1));
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(TimeoutBudgetLayer::new(Duration::from_secs(1)).unwrap())
        .layer(
            BulkheadLayer::builder()
                .name("counted-once")
                .max_concurrent(4)
                .build()
                .unwrap(),
        )
        .layer(layer)
        .service(tower::service_fn(|_: u64| async {
            Ok::<_, BoxError>(1u64)
        }));

    handle.force_open();
    for _ in 0..7 {
        let err = svc.clone().oneshot(1).await.unwrap_err();
        assert_eq!(
            Rejection::find_in(&err).map(Rejection::kind),
            Some(RejectionKind::CircuitOpen)
        );
    }
    let [circuit_open, inner, error] =
        totals(&snapshotter, ["circuit_open", "inner_refusal", "error"]);
    assert_eq!(circuit_open, 7);
    // The layers outside the breaker saw the same 7 calls, as refused below them.
    assert_eq!(inner, 14);
    assert_eq!(error, 0);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_counted_once_over_the_whole_stack() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let svc = ServiceBuilder::new()
        .layer(TimeoutBudgetLayer::new(Duration::from_millis(100)).unwrap())
        .layer(
            BulkheadLayer::builder()
                .name("timed-once")
                .max_concurrent(4)
                .build()
                .unwrap(),
        )
        .layer(BreakerLayer::from_config(breaker("timed-once", 100)))
        .service(tower::service_fn(|_: u64| {
            std::future::pending::<Result<u64, BoxError>>()
        }));
    for _ in 0..3 {
        let err = svc.clone().oneshot(1).await.unwrap_err();
        assert_eq!(
            Rejection::find_in(&err).map(Rejection::kind),
            Some(RejectionKind::DeadlineExceeded)
        );
    }
    let [timeout, inner] = totals(&snapshotter, ["timeout", "inner_refusal"]);
    assert_eq!(
        timeout, 3,
        "counted by the layer that enforced the deadline, once"
    );
    assert_eq!(inner, 0);
}

async fn fresh(_: ()) -> Result<&'static str, BoxError> {
    Ok("fresh")
}

async fn call_upstream<S>(upstream: S) -> axum::response::Response
where
    S: tower::Service<(), Response = &'static str, Error = BoxError>,
{
    match upstream.oneshot(()).await {
        Ok(body) => body.into_response(),
        Err(err) => match Rejection::find_in(&err) {
            Some(rejection) => rejection_response(rejection).into_response(),
            None => http::StatusCode::BAD_GATEWAY.into_response(),
        },
    }
}

#[tokio::test]
async fn a_client_breakers_refusal_turned_into_a_503_is_not_the_servers_failure() {
    // The upstream client's breaker is open: every outbound call is refused locally.
    let client_layer = BreakerLayer::from_config(breaker("upstream", 1));
    client_layer.handle().force_open();
    let upstream = ServiceBuilder::new()
        .layer(client_layer)
        .service(tower::service_fn(fresh));

    let server_layer =
        BreakerLayer::from_config(breaker("server", 2)).with_classifier(HttpStatus::new());
    let server = server_layer.handle();
    let orders = move || call_upstream(upstream.clone());
    let app = Router::new()
        .route("/orders", get(orders))
        .route("/local", get(|| async { "local" }))
        // The breaker guards the routes that do work...
        .route_layer(
            ServiceBuilder::new()
                .layer(ProblemLayer::new())
                .layer(server_layer),
        )
        // ...and health stays outside it: `route_layer` applies only to the routes above.
        .route("/health", get(|| async { "up" }));
    let addr = tests::serve_axum(app).await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{addr}{path}")).send();

    for _ in 0..5 {
        let res = get("/orders").await.unwrap();
        assert_eq!(res.status(), 503);
        assert!(res.text().await.unwrap().contains("circuit_open"));
    }
    assert_eq!(
        server.state(),
        State::Closed,
        "five refusals of the client breaker are not five failures of this server"
    );
    assert_eq!(get("/local").await.unwrap().status(), 200);
    assert_eq!(get("/health").await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_budget_spent_before_sending_does_not_open_the_breaker_above_it() {
    use tower_timeout_budget::Deadline;
    use tower_timeout_budget::outbound::OutboundDeadlineLayer;

    let layer = BreakerLayer::from_config(breaker("healthy-upstream", 1));
    let handle = layer.handle();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let client = ServiceBuilder::new()
        .layer(layer)
        .layer(OutboundDeadlineLayer::new())
        .service(tower::service_fn(move |_: http::Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(http::Response::new(())) }
        }));
    for _ in 0..3 {
        let err = Deadline::after(Duration::ZERO)
            .scope(client.clone().oneshot(http::Request::new(())))
            .await
            .unwrap_err();
        assert_eq!(
            Rejection::find_in(&err).map(Rejection::kind),
            Some(RejectionKind::DeadlineExceeded)
        );
    }
    assert_eq!(sent.load(Ordering::SeqCst), 0, "nothing was sent");
    assert_eq!(
        handle.state(),
        State::Closed,
        "a budget the caller spent says nothing about the upstream"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_below_a_breaker_is_shed_once_and_opens_nothing() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    // The client order: breaker above bulkhead.
    let layer = BreakerLayer::from_config(breaker("shed-once", 1));
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(TimeoutBudgetLayer::new(Duration::from_secs(60)).unwrap())
        .layer(layer)
        .layer(
            BulkheadLayer::builder()
                .name("shed-once")
                .max_concurrent(1)
                .build()
                .unwrap(),
        )
        .service(tower::service_fn(|_: u64| {
            std::future::pending::<Result<u64, BoxError>>()
        }));
    let mut holder = tokio_test::task::spawn(svc.clone().oneshot(1));
    assert!(holder.poll().is_pending(), "the one permit is taken");
    for _ in 0..4 {
        let err = svc.clone().oneshot(2).await.unwrap_err();
        assert_eq!(
            Rejection::find_in(&err).map(Rejection::kind),
            Some(RejectionKind::BulkheadFull)
        );
    }
    let [shed, inner, error] = totals(&snapshotter, ["shed", "inner_refusal", "error"]);
    assert_eq!(shed, 4);
    assert_eq!(
        inner, 8,
        "the breaker and the timeout layer saw 4 refusals each"
    );
    assert_eq!(error, 0);
    assert_eq!(
        handle.state(),
        State::Closed,
        "a full bulkhead is not the backend failing"
    );
}
