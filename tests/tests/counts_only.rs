//! How a layer records in a stack: built inside `tower_red::red::counts_only`, every layer of
//! the production stacks still counts each outcome (on the paths that then skip their clock
//! reads) and records no duration; built outside it, each records both.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, Uri};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_breaker::BreakerLayer;
use tower_bulkhead::BulkheadLayer;
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::client::IdempotencyKeyLayer;
use tower_idempotency::store::MemoryStore;
use tower_red::names::{self, layer};
use tower_red::red::counts_only;
use tower_retry_jitter::{RetryLayer, RetryOn};
use tower_timeout_budget::TimeoutBudgetLayer;
use tower_timeout_budget::inbound::InboundDeadlineLayer;
use tower_timeout_budget::outbound::OutboundDeadlineLayer;

const CALLS: u64 = 5;

type Snap = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn has_label(key: &metrics_util::CompositeKey, name: &str, value: &str) -> bool {
    key.key()
        .labels()
        .any(|l| l.key() == name && l.value() == value)
}

/// `resilience_requests_total{layer, outcome}`, summed over names.
fn count(snap: &Snap, kind: &str, outcome: &str) -> u64 {
    snap.iter()
        .filter(|(key, ..)| {
            key.key().name() == names::REQUESTS_TOTAL
                && has_label(key, names::label::LAYER, kind)
                && has_label(key, names::label::OUTCOME, outcome)
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("a counter, got {other:?}"),
        })
        .sum()
}

/// Samples of `resilience_request_duration_seconds{layer}`, over every outcome and name.
fn durations(snap: &Snap, kind: &str) -> usize {
    snap.iter()
        .filter(|(key, ..)| {
            key.key().name() == names::REQUEST_DURATION_SECONDS
                && has_label(key, names::label::LAYER, kind)
        })
        .map(|(.., value)| match value {
            DebugValue::Histogram(samples) => samples.len(),
            other => panic!("a histogram, got {other:?}"),
        })
        .sum()
}

fn ok() -> Response<String> {
    Response::new(String::new())
}

fn get(uri: &'static str) -> Request<String> {
    let mut req = Request::new(String::new());
    *req.uri_mut() = Uri::from_static(uri);
    req
}

/// The README's client stack under `RedLayer::client()`, over an always-ready backend.
fn client(
    name: &'static str,
) -> impl Service<Request<String>, Response = Response<String>, Error = tower_red::BoxError> + Clone
{
    ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(
            TimeoutBudgetLayer::builder()
                .name(name)
                .cap(Duration::from_secs(2))
                .build()
                .unwrap(),
        )
        .layer(
            RetryLayer::builder()
                .name(name)
                .retry_on(RetryOn::new())
                .build()
                .unwrap(),
        )
        .layer(
            BreakerLayer::builder()
                .name(name)
                .http_status()
                .build()
                .unwrap(),
        )
        .layer(
            BulkheadLayer::builder()
                .name(name)
                .max_concurrent(8)
                .build()
                .unwrap(),
        )
        .layer(OutboundDeadlineLayer::builder().name(name).build().unwrap())
        .service(tower::service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(ok())
        }))
}

/// The README's server stack below `ProblemLayer`, over an always-ready backend.
fn server(name: &'static str) -> impl Service<Request<String>, Error: std::fmt::Debug> + Clone {
    ServiceBuilder::new()
        .layer(
            InboundDeadlineLayer::builder()
                .name(name)
                .cap(Duration::from_secs(2))
                .build()
                .unwrap(),
        )
        .layer(
            IdempotencyLayer::builder(MemoryStore::new())
                .name(name)
                .build()
                .unwrap(),
        )
        .layer(
            BulkheadLayer::builder()
                .name(name)
                .max_concurrent(8)
                .build()
                .unwrap(),
        )
        .layer(
            BreakerLayer::builder()
                .name(name)
                .http_status()
                .build()
                .unwrap(),
        )
        .service(tower::service_fn(|_: Request<_>| async {
            Ok::<_, Infallible>(ok())
        }))
}

async fn drive(snapshotter: &Snapshotter, in_stack: bool) -> Snap {
    let (client, server) = if in_stack {
        counts_only(|| (client("quiet"), server("quiet")))
    } else {
        (client("loud"), server("loud"))
    };
    for _ in 0..CALLS {
        client
            .clone()
            .oneshot(get("http://payments.internal:8080/charges/7"))
            .await
            .unwrap();
        server.clone().oneshot(get("/orders/7")).await.unwrap();
    }
    snapshotter.snapshot().into_vec()
}

const LAYERS: [&str; 7] = [
    layer::TIMEOUT,
    layer::RETRY,
    layer::BREAKER,
    layer::BULKHEAD,
    layer::DEADLINE_OUTBOUND,
    layer::DEADLINE_INBOUND,
    layer::IDEMPOTENCY,
];

/// Calls made through each layer kind: the breaker and the bulkhead stand in both stacks.
fn calls_through(kind: &str) -> u64 {
    match kind {
        layer::BREAKER | layer::BULKHEAD => 2 * CALLS,
        _ => CALLS,
    }
}

#[tokio::test(start_paused = true)]
async fn layers_built_inside_counts_only_count_every_call_and_record_no_duration() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let snap = drive(&snapshotter, true).await;
    for kind in LAYERS {
        assert_eq!(count(&snap, kind, "ok"), calls_through(kind), "{kind}");
        assert_eq!(durations(&snap, kind), 0, "{kind}");
    }
}

#[tokio::test(start_paused = true)]
async fn layers_built_alone_count_every_call_and_record_its_duration() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let snap = drive(&snapshotter, false).await;
    for kind in LAYERS {
        assert_eq!(count(&snap, kind, "ok"), calls_through(kind), "{kind}");
        assert_eq!(
            durations(&snap, kind),
            calls_through(kind) as usize,
            "{kind}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_counts_only_bulkhead_counts_a_dropped_call_as_cancelled() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let svc = counts_only(|| {
        ServiceBuilder::new()
            .layer(
                BulkheadLayer::builder()
                    .name("dropped")
                    .max_concurrent(1)
                    .build()
                    .unwrap(),
            )
            .service(tower::service_fn(|_: u64| {
                std::future::pending::<Result<u64, Infallible>>()
            }))
    });
    let call = tokio::spawn(svc.clone().oneshot(1));
    tokio::time::sleep(Duration::from_millis(1)).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let snap = snapshotter.snapshot().into_vec();
    assert_eq!(count(&snap, layer::BULKHEAD, "cancelled"), 1);
    assert_eq!(durations(&snap, layer::BULKHEAD), 0);
}
