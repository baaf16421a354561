//! One verdict per stack: the bulkhead judges finished calls with the stack's classifier, never
//! counts an inner layer's refusal as the backend's failure or latency, counts a call cut off
//! at its deadline as a timeout, and shares the stack's clock.

use std::future::pending;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::time::Instant;
use tokio_test::{assert_pending, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_bulkhead::{Aimd, BulkheadLayer, Reason};
use tower_red::classify::HttpStatus;
use tower_red::clock::{self, Scope};
use tower_red::{BoxError, Rejection, RejectionKind, cancel, names};
use tower_timeout_budget::Deadline;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An inner layer (a breaker) that refuses every call.
async fn open_circuit(_: u64) -> Result<u64, BoxError> {
    Err(Rejection::new(RejectionKind::CircuitOpen).into())
}

fn adaptive() -> BulkheadLayer {
    BulkheadLayer::builder()
        .max_concurrent(10)
        .adaptive(Aimd::new(2, 20))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_below_leaves_the_adaptive_limit_where_it_was() {
    let layer = adaptive();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(open_circuit));
    for _ in 0..50 {
        let err = svc.clone().oneshot(1).await.unwrap_err();
        assert_eq!(
            Rejection::find_in(&err).map(Rejection::kind),
            Some(RejectionKind::CircuitOpen),
            "the inner refusal passes through untouched"
        );
    }
    assert_eq!(handle.limit("default"), Some(10));
}

#[tokio::test(start_paused = true)]
async fn a_5xx_under_http_status_backs_the_adaptive_limit_off() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(10)
        .adaptive(Aimd::new(2, 20))
        .classifier(HttpStatus::new())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, BoxError>(http::Response::builder().status(502).body(()).unwrap())
    }));
    for _ in 0..3 {
        let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.status(), 502);
    }
    assert_eq!(
        handle.limit("default"),
        Some(7),
        "10 × 0.9³, rounded down each time"
    );
}

#[tokio::test(start_paused = true)]
async fn an_inner_refusal_is_counted_as_inner_refusal() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder()
            .name("refused-below")
            .build()
            .unwrap()
    });
    let svc = layer.layer(service_fn(open_circuit));
    for _ in 0..4 {
        svc.clone().oneshot(1).await.unwrap_err();
    }
    let count = |outcome: &str| {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find(|(key, ..)| {
                key.key().name() == names::REQUESTS_TOTAL
                    && key.key().labels().any(|l| l.value() == "refused-below")
                    && key.key().labels().any(|l| l.value() == outcome)
            })
            .map(|(.., value)| value)
    };
    assert_eq!(count("inner_refusal"), Some(DebugValue::Counter(4)));
    assert_eq!(count("error"), Some(DebugValue::Counter(0)));
    assert_eq!(
        count("circuit_open"),
        None,
        "the breaker counts its own refusals"
    );
}

/// A queueing bulkhead of one permit over a backend that takes `work` ms per call (request
/// `u64::MAX` hangs), or is refused below (request 0).
fn queueing() -> BulkheadLayer {
    BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(4, Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn backend(work: u64) -> Result<u64, BoxError> {
    match work {
        0 => open_circuit(0).await,
        u64::MAX => pending().await,
        _ => {
            tokio::time::sleep(ms(work)).await;
            Ok(work)
        }
    }
}

/// Whether a call queued behind a busy permit with `budget` ms left is shed at once, without
/// waiting: it is when the partition's recent service time exceeds the budget.
async fn shed_at_once<S>(svc: &S, budget: u64) -> bool
where
    S: Service<u64, Response = u64, Error = BoxError> + Clone,
{
    let mut busy = svc.clone();
    let mut hold = task::spawn(busy.ready().await.unwrap().call(5_000));
    assert_pending!(hold.poll());
    let start = Instant::now();
    let err = Deadline::after(ms(budget))
        .scope(svc.clone().oneshot(7))
        .await
        .unwrap_err();
    assert_eq!(
        Rejection::find_in(&err).and_then(Reason::of),
        Some(Reason::Deadline)
    );
    start.elapsed().is_zero()
}

#[tokio::test(start_paused = true)]
async fn inner_refusals_do_not_feed_the_service_time_estimate() {
    let svc = queueing().layer(service_fn(backend));
    svc.clone().oneshot(100).await.unwrap();
    for _ in 0..20 {
        svc.clone().oneshot(0).await.unwrap_err();
    }
    assert!(
        shed_at_once(&svc, 80).await,
        "the service time is still the backend's 100 ms, not the refusals' 0 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_at_its_deadline_backs_the_adaptive_limit_off() {
    let layer = adaptive();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(backend));

    let mut abandoned = task::spawn(svc.ready().await.unwrap().call(u64::MAX));
    assert_pending!(abandoned.poll());
    drop(abandoned);
    assert_eq!(
        handle.limit("default"),
        Some(10),
        "a caller that walks away is no signal"
    );
    assert_eq!(handle.in_flight("default"), Some(0));

    let mut expired = task::spawn(svc.ready().await.unwrap().call(u64::MAX));
    assert_pending!(expired.poll());
    cancel::drop_expired(expired);
    assert_eq!(
        handle.limit("default"),
        Some(9),
        "a call cut off by its deadline is a timeout"
    );
    assert_eq!(
        handle.in_flight("default"),
        Some(0),
        "and its permit came back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_hangs_raises_the_service_time_estimate() {
    let svc = queueing().layer(service_fn(backend));
    svc.clone().oneshot(10).await.unwrap();
    let mut hung = svc.clone();
    let mut call = task::spawn(hung.ready().await.unwrap().call(u64::MAX));
    assert_pending!(call.poll());
    tokio::time::advance(ms(500)).await;
    cancel::drop_expired(call);
    // 10 ms + (500 ms - 10 ms) / 5 = 108 ms: a 100 ms budget can no longer be met.
    assert!(shed_at_once(&svc, 100).await);
}

#[tokio::test(start_paused = true)]
async fn permits_and_queue_places_come_back_when_dropped_at_the_deadline() {
    let layer = queueing();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(backend));
    let mut running = task::spawn(svc.ready().await.unwrap().call(u64::MAX));
    assert_pending!(running.poll());
    let mut queued = task::spawn(svc.ready().await.unwrap().call(u64::MAX));
    assert_pending!(queued.poll());
    assert_eq!(
        (handle.in_flight("default"), handle.queued("default")),
        (Some(1), Some(1))
    );
    cancel::drop_expired(queued);
    assert_eq!(handle.queued("default"), Some(0));
    cancel::drop_expired(running);
    assert_eq!(handle.in_flight("default"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_shares_the_stacks_clock_read() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder().name("one-clock").build().unwrap()
    });
    let mut svc = layer.layer(service_fn(|n: u64| async move { Ok::<_, BoxError>(n) }));
    svc.ready().await.unwrap();
    let fut = {
        // An outer layer read the clock at the start of its call...
        let _outer = Scope::enter();
        let _ = clock::now();
        tokio::time::advance(ms(5)).await;
        // ...so the bulkhead's start, inside the same scope, is that read: no clock read of
        // its own.
        svc.call(1)
    };
    fut.await.unwrap();
    let durations: Vec<f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == names::REQUEST_DURATION_SECONDS
                && key.key().labels().any(|l| l.value() == "one-clock")
        })
        .flat_map(|(.., value)| match value {
            DebugValue::Histogram(values) => values.into_iter().map(|v| v.into_inner()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(durations, [0.005]);
}

/// A request type of one's own, with no trait implemented.
struct Plain;

#[tokio::test(start_paused = true)]
async fn a_request_type_without_a_deadline_trait_queues_up_to_the_task_local_deadline() {
    let mut svc = queueing().layer(service_fn(|_: Plain| async {
        pending::<Result<u64, BoxError>>().await
    }));
    let mut busy = task::spawn(svc.ready().await.unwrap().call(Plain));
    assert_pending!(busy.poll());
    let start = Instant::now();
    let err = Deadline::after(ms(50))
        .scope(svc.clone().oneshot(Plain))
        .await
        .unwrap_err();
    assert_eq!(
        Rejection::find_in(&err).and_then(Reason::of),
        Some(Reason::Deadline)
    );
    assert_eq!(start.elapsed(), ms(50), "not the queue's 10 s");
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_reads_the_clock_only_when_something_needs_the_time() {
    let recorder = DebuggingRecorder::new();
    let untimed = BulkheadLayer::builder().metrics(false).build().unwrap();
    let timed = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder().name("timed").build().unwrap()
    });
    for (layer, reads) in [(untimed, false), (timed, true)] {
        let mut svc = layer.layer(service_fn(|n: u64| async move { Ok::<_, BoxError>(n) }));
        svc.ready().await.unwrap();
        let before = Instant::now();
        let _scope = Scope::enter();
        let call = svc.call(1);
        tokio::time::advance(ms(5)).await;
        // A read inside the scope would have cached `before`.
        let cached = clock::now() == before;
        assert_eq!(cached, reads, "metrics on: {reads}");
        call.await.unwrap();
    }
}
