//! Metrics recorded by the layers, with a local debugging recorder.

use std::convert::Infallible;
use std::time::Duration;

use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::time::advance;
use tower::{Layer, ServiceExt, service_fn};
use tower_red::names;
use tower_timeout_budget::TimeoutBudgetLayer;
use tower_timeout_budget::inbound::InboundDeadlineLayer;

const MS: Duration = Duration::from_millis(1);

type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// Takes a snapshot (the debugging recorder drains counters and histograms when read).
fn snapshot(snapshotter: &Snapshotter) -> Snapshot {
    snapshotter.snapshot().into_vec()
}

/// The value of the counter `name` whose labels include every pair of `labels`.
fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == name)
        .filter(|(key, ..)| {
            labels
                .iter()
                .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

fn histogram_len(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> usize {
    snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == name)
        .filter(|(key, ..)| {
            labels
                .iter()
                .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(.., value)| match value {
            DebugValue::Histogram(v) => v.len(),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn red_and_deadline_exceeded_counts_by_stage() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        TimeoutBudgetLayer::builder()
            .cap(100 * MS)
            .name("checkout")
            .build()
            .expect("valid")
    });
    let svc = layer.layer(service_fn(|slow: bool| async move {
        if slow {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok::<_, Infallible>(())
    }));

    svc.clone().oneshot(false).await.expect("fast call");
    svc.clone().oneshot(true).await.expect_err("slow call");
    let snap = snapshot(&snapshotter);
    let ours = [("layer", "timeout"), ("name", "checkout")];

    let ok = [ours[0], ours[1], ("outcome", "ok")];
    let timeout = [ours[0], ours[1], ("outcome", "timeout")];
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &ok), 1);
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &timeout), 1);
    assert_eq!(
        histogram_len(&snap, names::REQUEST_DURATION_SECONDS, &timeout),
        1
    );
    let call = [ours[0], ours[1], ("stage", "call")];
    let ready = [ours[0], ours[1], ("stage", "ready")];
    assert_eq!(counter(&snap, names::DEADLINE_EXCEEDED_TOTAL, &call), 1);
    assert_eq!(counter(&snap, names::DEADLINE_EXCEEDED_TOTAL, &ready), 0);
}

#[tokio::test(start_paused = true)]
async fn readiness_timeouts_are_counted_under_stage_ready() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        TimeoutBudgetLayer::builder()
            .cap(10 * MS)
            .name("pool")
            .build()
            .expect("valid")
    });
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u64, (), _>(layer);
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    advance(10 * MS).await;
    assert!(svc.poll_ready().is_ready());
    svc.call(1).await.expect_err("timed out waiting");
    let ready = [("name", "pool"), ("stage", "ready")];
    let snap = snapshot(&snapshotter);
    assert_eq!(counter(&snap, names::DEADLINE_EXCEEDED_TOTAL, &ready), 1);
    let timeout = [("name", "pool"), ("outcome", "timeout")];
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &timeout), 1);
}

#[tokio::test(start_paused = true)]
async fn malformed_inbound_headers_are_counted_by_header() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        InboundDeadlineLayer::builder().build().expect("valid")
    });
    let svc = layer.layer(service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(())
    }));
    for (header, value) in [
        ("grpc-timeout", "10s"),
        ("grpc-timeout", "1"),
        ("x-request-timeout-ms", "-5"),
    ] {
        let req = http::Request::builder()
            .header(header, value)
            .body(())
            .expect("a request");
        svc.clone()
            .oneshot(req)
            .await
            .expect("lenient mode ignores it");
    }
    let grpc = [("name", "inbound"), ("header", "grpc-timeout")];
    let http = [("name", "inbound"), ("header", "x-request-timeout-ms")];
    let snap = snapshot(&snapshotter);
    assert_eq!(
        counter(&snap, names::DEADLINE_HEADER_INVALID_TOTAL, &grpc),
        2
    );
    assert_eq!(
        counter(&snap, names::DEADLINE_HEADER_INVALID_TOTAL, &http),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_can_be_turned_off() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        TimeoutBudgetLayer::builder()
            .cap(MS)
            .metrics(false)
            .build()
            .expect("valid")
    });
    let svc = layer.layer(service_fn(|_req: u64| async { Ok::<_, Infallible>(()) }));
    svc.oneshot(1).await.expect("ok");
    assert!(snapshotter.snapshot().into_vec().is_empty());
}
