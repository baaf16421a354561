//! The layer's metrics: tower-red names, bounded labels, one count per decision.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::ServiceExt;
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, OnStoreError, Oversized, RequestBody};
use tower_layer::Layer;

use common::Down;
use tower_red::{BoxError, Rejection, RejectionKind, names};

type Snapshot = [(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)];

fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    snapshot
        .iter()
        .find_map(|(key, _, _, value)| {
            let key = key.key();
            let matches = key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v));
            match value {
                DebugValue::Counter(n) if matches => Some(*n),
                _ => None,
            }
        })
        .unwrap_or_else(|| panic!("no counter {name} {labels:?}"))
}

fn post(key: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post("/orders")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn every_decision_is_counted_once_under_bounded_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        IdempotencyLayer::builder(MemoryStore::new())
            .name("orders")
            .build()
            .unwrap()
    });
    let svc = layer.layer(tower::service_fn(
        |_req: Request<RequestBody<Full<Bytes>>>| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        },
    ));
    svc.clone().oneshot(post("k1", "a")).await.unwrap(); // executed
    svc.clone().oneshot(post("k1", "a")).await.unwrap(); // replayed
    svc.clone().oneshot(post("k1", "b")).await.unwrap(); // mismatch
    svc.clone().oneshot(post("a b", "a")).await.unwrap(); // invalid
    svc.clone()
        .oneshot(Request::post("/").body(Full::default()).unwrap())
        .await
        .unwrap(); // no key

    let snapshot = snapshotter.snapshot().into_vec();
    let decision = |reason| {
        counter(
            &snapshot,
            names::IDEMPOTENCY_DECISIONS_TOTAL,
            &[("name", "orders"), ("reason", reason)],
        )
    };
    assert_eq!(decision("executed"), 1);
    assert_eq!(decision("replayed"), 1);
    assert_eq!(decision("mismatch"), 1);
    assert_eq!(decision("invalid_key"), 1);
    assert_eq!(decision("conflict"), 0);
    assert_eq!(
        counter(
            &snapshot,
            names::IDEMPOTENCY_REPLAYS_TOTAL,
            &[("name", "orders")]
        ),
        1
    );
    let outcome = |outcome| {
        counter(
            &snapshot,
            names::REQUESTS_TOTAL,
            &[
                ("layer", "idempotency"),
                ("name", "orders"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(
        outcome("ok"),
        2,
        "the executed request and the one without a key"
    );
    assert_eq!(outcome("replayed"), 1);
    assert_eq!(outcome("rejected"), 2);
    assert_eq!(
        counter(
            &snapshot,
            names::IDEMPOTENCY_STORE_ERRORS_TOTAL,
            &[("operation", "claim")]
        ),
        0
    );
    // No label value carries a key, a path or a body.
    for (key, ..) in &snapshot {
        for label in key.key().labels() {
            assert!(
                !["k1", "a b", "/orders", "/"].contains(&label.value()),
                "{label:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusal_from_an_inner_layer_is_counted_as_inner_refusal_not_error() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        IdempotencyLayer::builder(MemoryStore::new())
            .name("inner-refusal")
            .build()
            .unwrap()
    });
    let svc = layer.layer(tower::service_fn(
        |_req: Request<RequestBody<Full<Bytes>>>| async {
            let full = tower_red::Rejection::new(tower_red::RejectionKind::BulkheadFull);
            Ok::<_, Infallible>(tower_red::problem::rejection_response(&full))
        },
    ));
    let res = svc.clone().oneshot(post("k1", "a")).await.unwrap();
    assert_eq!(res.status(), 503);
    svc.clone()
        .oneshot(Request::post("/").body(Full::default()).unwrap())
        .await
        .unwrap();
    let snapshot = snapshotter.snapshot().into_vec();
    let outcome = |outcome| {
        counter(
            &snapshot,
            names::REQUESTS_TOTAL,
            &[("name", "inner-refusal"), ("outcome", outcome)],
        )
    };
    assert_eq!(outcome("inner_refusal"), 2);
    assert_eq!(outcome("error"), 0);
}

/// An inner bulkhead that refuses every call with `Err(BoxError)` holding its `Rejection`, as
/// `tower-bulkhead` and `tower-breaker` do; that layer counted the refusal itself.
fn refusing() -> impl tower::Service<
    Request<RequestBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future: Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Request<RequestBody<Full<Bytes>>>| async {
        Err::<Response<Full<Bytes>>, _>(Rejection::new(RejectionKind::BulkheadFull).into())
    })
}

#[tokio::test(start_paused = true)]
async fn an_inner_layers_refusal_error_is_counted_as_inner_refusal_not_error() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (layer, fail_open) = metrics::with_local_recorder(&recorder, || {
        let layer = IdempotencyLayer::builder(MemoryStore::new())
            .name("inner-refusal-error")
            .max_request_bytes(4)
            .oversized(Oversized::PassThrough)
            .build()
            .unwrap();
        let fail_open = IdempotencyLayer::builder(Down)
            .name("inner-refusal-error-fail-open")
            .on_store_error(OnStoreError::FailOpen)
            .build()
            .unwrap();
        (layer, fail_open)
    });
    let svc = layer.layer(refusing());
    let requests = [
        post("k1", "a"),                                   // keyed, run
        post("k2", "over four bytes"),                     // keyed, over the cap, passed through
        Request::post("/").body(Full::default()).unwrap(), // no key
    ];
    for req in requests {
        let err = svc.clone().oneshot(req).await.unwrap_err();
        assert!(
            Rejection::find(&*err).is_some(),
            "the refusal goes up as it is"
        );
    }
    let err = fail_open
        .layer(refusing())
        .oneshot(post("k3", "a"))
        .await
        .unwrap_err();
    assert!(Rejection::find(&*err).is_some());

    let snapshot = snapshotter.snapshot().into_vec();
    let outcome = |name, outcome| {
        counter(
            &snapshot,
            names::REQUESTS_TOTAL,
            &[("name", name), ("outcome", outcome)],
        )
    };
    assert_eq!(outcome("inner-refusal-error", "inner_refusal"), 3);
    assert_eq!(outcome("inner-refusal-error", "error"), 0);
    assert_eq!(
        outcome("inner-refusal-error-fail-open", "inner_refusal"),
        1,
        "the store is down, the request ran"
    );
    assert_eq!(outcome("inner-refusal-error-fail-open", "error"), 0);
}
