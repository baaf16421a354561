//! Body-held permits, metric names and labels, and configuration errors.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::{Backend, Job};
use tokio_test::{assert_pending, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_bulkhead::{Aimd, BulkheadLayer, DEFAULT_PARTITION, Partition, Reason};
use tower_red::names;

type Chunks = futures::channel::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// A service whose response bodies stream until the test closes them.
fn streaming(
    bodies: std::sync::mpsc::Sender<Chunks>,
) -> impl Service<
    http::Request<()>,
    Response = http::Response<impl http_body::Body<Data = Bytes, Error = Infallible>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: http::Request<()>| {
        let (tx, rx) = futures::channel::mpsc::channel(4);
        bodies.send(tx).unwrap();
        async move { Ok::<_, Infallible>(http::Response::new(StreamBody::new(rx))) }
    })
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_holds_the_permit_until_it_ends() {
    let (bodies_tx, bodies) = std::sync::mpsc::channel();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .hold_permit_until_body_end()
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(streaming(bodies_tx));

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let mut chunks = bodies.try_recv().unwrap();
    assert_eq!(
        handle.in_flight(DEFAULT_PARTITION),
        Some(1),
        "the head is out, the body is not"
    );
    let Err(err) = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
    else {
        panic!("the body still holds the only permit");
    };
    assert_eq!(support::reason(&err), Some(Reason::Full));

    let mut body = res.into_body();
    assert!(body.holds_permit());
    chunks
        .send(Ok(Frame::data(Bytes::from("a"))))
        .await
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "a");
    assert_eq!(handle.in_flight(DEFAULT_PARTITION), Some(1));
    chunks.close_channel();
    assert!(body.frame().await.is_none());
    assert!(!body.holds_permit());
    assert_eq!(handle.in_flight(DEFAULT_PARTITION), Some(0));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_body_midway_frees_the_permit() {
    let (bodies_tx, bodies) = std::sync::mpsc::channel();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .hold_permit_until_body_end()
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(streaming(bodies_tx));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let _chunks = bodies.try_recv().unwrap();
    assert_eq!(handle.in_flight(DEFAULT_PARTITION), Some(1));
    drop(res);
    assert_eq!(handle.in_flight(DEFAULT_PARTITION), Some(0));
}

#[tokio::test(start_paused = true)]
async fn by_default_the_permit_is_freed_with_the_response_head() {
    let (bodies_tx, bodies) = std::sync::mpsc::channel();
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(streaming(bodies_tx));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let _chunks = bodies.try_recv().unwrap();
    assert_eq!(handle.in_flight(DEFAULT_PARTITION), Some(0));
    let mut rest = res.into_body().into_data_stream();
    drop(_chunks);
    assert!(rest.next().await.is_none());
}

type Snapshot = [(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)];

fn find<'a>(snapshot: &'a Snapshot, name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    snapshot.iter().find_map(|(key, _, _, value)| {
        let key = key.key();
        let matches = key.name() == name
            && labels
                .iter()
                .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v));
        matches.then_some(value)
    })
}

#[tokio::test(start_paused = true)]
async fn metrics_use_the_tower_red_names_and_bounded_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder()
            .name("api")
            .max_concurrent(1)
            .queue(1, Duration::from_millis(100))
            .partition(Partition::new("background", 3))
            .build()
            .unwrap()
    });
    let mut svc = layer.layer(Backend::default());
    svc.ready()
        .await
        .unwrap()
        .call(Job::new(1, 10))
        .await
        .unwrap();
    let mut busy = task::spawn(svc.ready().await.unwrap().call(Job::new(2, 1_000)));
    assert_pending!(busy.poll());
    let queued = svc.ready().await.unwrap().call(Job::new(3, 10));
    let full = svc.ready().await.unwrap().call(Job::new(4, 10)).await;
    assert!(full.is_err());
    assert!(queued.await.is_err(), "times out in the queue after 100 ms");
    let cancelled = svc.ready().await.unwrap().call(Job::new(5, 10));
    drop(cancelled);

    let snapshot = snapshotter.snapshot().into_vec();
    let part = |p: &'static str| [("layer", "bulkhead"), ("name", "api"), ("partition", p)];
    assert_eq!(
        find(&snapshot, names::BULKHEAD_IN_FLIGHT, &part("default")),
        Some(&DebugValue::Gauge(1.0.into()))
    );
    assert_eq!(
        find(&snapshot, names::BULKHEAD_LIMIT, &part("background")),
        Some(&DebugValue::Gauge(3.0.into()))
    );
    assert_eq!(
        find(&snapshot, names::BULKHEAD_QUEUE_DEPTH, &part("default")),
        Some(&DebugValue::Gauge(0.0.into()))
    );
    match find(
        &snapshot,
        names::BULKHEAD_QUEUE_WAIT_SECONDS,
        &part("default"),
    ) {
        Some(DebugValue::Histogram(waits)) => {
            assert_eq!(
                waits.iter().map(|w| w.into_inner()).collect::<Vec<f64>>(),
                [0.1]
            );
        }
        other => panic!("no queue wait histogram: {other:?}"),
    }
    for (reason, count) in [
        (Reason::QueueFull, Some(1)),
        (Reason::QueueTimeout, Some(1)),
        (Reason::Deadline, Some(0)),
        // A queueing partition never refuses with `full`: no series that cannot move.
        (Reason::Full, None),
    ] {
        let labels = [("partition", "default"), ("reason", reason.as_str())];
        assert_eq!(
            find(&snapshot, names::BULKHEAD_REJECTIONS_TOTAL, &labels),
            count.map(DebugValue::Counter).as_ref(),
            "{reason}"
        );
    }
    let red = |outcome| [("layer", "bulkhead"), ("name", "api"), ("outcome", outcome)];
    assert_eq!(
        find(&snapshot, names::REQUESTS_TOTAL, &red("ok")),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        find(&snapshot, names::REQUESTS_TOTAL, &red("shed")),
        Some(&DebugValue::Counter(2))
    );
    assert_eq!(
        find(&snapshot, names::REQUESTS_TOTAL, &red("cancelled")),
        Some(&DebugValue::Counter(1)),
        "the dropped queued call"
    );
    drop(busy);
}

#[test]
fn every_bad_setting_is_named_at_build() {
    let field = |b: tower_bulkhead::Builder| b.build().unwrap_err().field().to_owned();
    let b = BulkheadLayer::builder;
    assert_eq!(field(b().max_concurrent(0)), "max_concurrent");
    assert_eq!(field(b().name("")), "name");
    assert_eq!(field(b().queue(0, Duration::from_secs(1))), "queue.max_len");
    assert_eq!(field(b().queue(1, Duration::ZERO)), "queue.max_wait");
    assert_eq!(
        field(b().partition(Partition::new("bg", 0))),
        "partitions.bg.max_concurrent"
    );
    assert_eq!(
        field(b().partition(Partition::new("bg", 1).queue(1, Duration::ZERO))),
        "partitions.bg.queue.max_wait"
    );
    assert_eq!(
        field(b().partition(Partition::new("", 1))),
        "partitions..name"
    );
    assert_eq!(
        field(b().partition(Partition::new("default", 1))),
        "partitions.default.name"
    );
    assert_eq!(
        field(
            b().partition(Partition::new("bg", 1))
                .partition(Partition::new("bg", 2))
        ),
        "partitions.bg.name"
    );
    assert_eq!(
        field(b().backpressure(true).partition(Partition::new("bg", 1))),
        "backpressure"
    );
    assert_eq!(
        field(b().backpressure(true).queue(1, Duration::from_secs(1))),
        "backpressure"
    );
    assert_eq!(
        field(b().max_concurrent(5).adaptive(Aimd::new(10, 20))),
        "max_concurrent"
    );
    assert_eq!(
        field(
            b().max_concurrent(5)
                .adaptive(Aimd::new(1, 20).backoff_ratio(2.0))
        ),
        "adaptive.backoff_ratio"
    );
    let err = b().max_concurrent(0).build().unwrap_err();
    assert_eq!(err.layer(), "bulkhead");
    assert_eq!(err.value(), "0");
    assert_eq!(
        err.to_string(),
        "invalid bulkhead config: max_concurrent = 0: must be at least 1"
    );
    assert!(
        b().backpressure(false)
            .partition(Partition::new("bg", 1))
            .build()
            .is_ok(),
        "backpressure(false) is the default"
    );
}

#[test]
fn only_the_series_a_bulkhead_can_produce_are_registered() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder()
            .name("series")
            .max_concurrent(1)
            .partition(Partition::new("queues", 1).queue(1, Duration::from_secs(1)))
            .build()
            .unwrap()
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let part = |p: &'static str| [("name", "series"), ("partition", p)];
    assert_eq!(
        find(&snapshot, names::BULKHEAD_QUEUE_DEPTH, &part("default")),
        None,
        "a partition that rejects at once has no queue"
    );
    assert_eq!(
        find(
            &snapshot,
            names::BULKHEAD_QUEUE_WAIT_SECONDS,
            &part("default")
        ),
        None
    );
    assert!(find(&snapshot, names::BULKHEAD_QUEUE_DEPTH, &part("queues")).is_some());
    let reason = |p: &'static str, r: &'static str| [("partition", p), ("reason", r)];
    assert!(
        find(
            &snapshot,
            names::BULKHEAD_REJECTIONS_TOTAL,
            &reason("default", "full")
        )
        .is_some()
    );
    assert_eq!(
        find(
            &snapshot,
            names::BULKHEAD_REJECTIONS_TOTAL,
            &reason("default", "queue_timeout")
        ),
        None
    );
    let red = |outcome| {
        [
            ("layer", "bulkhead"),
            ("name", "series"),
            ("outcome", outcome),
        ]
    };
    for impossible in ["circuit_open", "budget_exhausted", "replayed", "rejected"] {
        assert_eq!(
            find(&snapshot, names::REQUESTS_TOTAL, &red(impossible)),
            None,
            "{impossible}"
        );
    }
    for possible in [
        "ok",
        "error",
        "timeout",
        "shed",
        "cancelled",
        "inner_refusal",
    ] {
        assert!(
            find(&snapshot, names::REQUESTS_TOTAL, &red(possible)).is_some(),
            "{possible}"
        );
    }
    let shed_duration = [("name", "series"), ("outcome", "shed")];
    assert!(
        find(&snapshot, names::REQUEST_DURATION_SECONDS, &shed_duration).is_some(),
        "a partition that queues sheds after a wait"
    );

    // A bulkhead that never queues never times a refusal.
    let snapshot = metrics::with_local_recorder(&recorder, || {
        let _layer = BulkheadLayer::builder()
            .name("series-reject")
            .build()
            .unwrap();
        snapshotter.snapshot().into_vec()
    });
    let shed_duration = [("name", "series-reject"), ("outcome", "shed")];
    assert_eq!(
        find(&snapshot, names::REQUEST_DURATION_SECONDS, &shed_duration),
        None
    );
    assert!(find(&snapshot, names::REQUESTS_TOTAL, &shed_duration).is_some());
}
