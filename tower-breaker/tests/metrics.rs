//! Metric names and labels, read back from a local debugging recorder.

mod common;

use std::time::Duration;

use common::{Call, backend, send};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::Layer;
use tower_breaker::BreakerLayer;
use tower_red::names;

#[derive(Debug, PartialEq)]
enum Val {
    Counter(u64),
    Gauge(f64),
    Histogram(usize),
}

fn value(
    snapshot: &[(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<Val> {
    snapshot
        .iter()
        .find(|(key, ..)| {
            let key = key.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(.., v)| match v {
            DebugValue::Counter(n) => Val::Counter(*n),
            DebugValue::Gauge(g) => Val::Gauge(g.into_inner()),
            DebugValue::Histogram(h) => Val::Histogram(h.len()),
        })
}

#[test]
fn red_metrics_state_gauge_and_transitions_are_recorded_with_bounded_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BreakerLayer::builder()
            .name("payments")
            .consecutive_failures(2)
            .open_time(Duration::from_secs(5))
            .build()
            .unwrap()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut svc = layer.layer(backend());
        let _ = send(&mut svc, Call::Ok).await;
        let _ = send(&mut svc, Call::Fail).await;
        let _ = send(&mut svc, Call::Fail).await;
        let _ = send(&mut svc, Call::Ok).await; // refused
        // A cancelled call.
        tokio::time::advance(Duration::from_secs(5)).await;
        let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut fut = tokio_test::task::spawn(
            tower::ServiceExt::ready(&mut svc)
                .await
                .unwrap()
                .call_wait(rx),
        );
        assert!(fut.poll().is_pending());
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let red = |outcome| {
        value(
            &snapshot,
            names::REQUESTS_TOTAL,
            &[
                ("layer", "breaker"),
                ("name", "payments"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(red("ok"), Some(Val::Counter(1)));
    assert_eq!(red("error"), Some(Val::Counter(2)));
    assert_eq!(red("circuit_open"), Some(Val::Counter(1)));
    assert_eq!(red("cancelled"), Some(Val::Counter(1)));
    assert_eq!(
        value(
            &snapshot,
            names::REQUEST_DURATION_SECONDS,
            &[("name", "payments"), ("outcome", "ok")]
        ),
        Some(Val::Histogram(1))
    );
    assert_eq!(
        value(&snapshot, names::BREAKER_STATE, &[("name", "payments")]),
        Some(Val::Gauge(2.0)),
        "half-open after the cancelled probe"
    );
    let transitions = |from, to| {
        value(
            &snapshot,
            names::BREAKER_TRANSITIONS_TOTAL,
            &[("name", "payments"), ("from", from), ("to", to)],
        )
    };
    assert_eq!(transitions("closed", "open"), Some(Val::Counter(1)));
    assert_eq!(transitions("open", "half_open"), Some(Val::Counter(1)));
    assert_eq!(
        transitions("half_open", "closed"),
        Some(Val::Counter(0)),
        "pre-registered"
    );
    assert_eq!(transitions("closed", "closed"), None, "no self-transitions");
}

trait CallWait {
    fn call_wait(
        &mut self,
        rx: tokio::sync::oneshot::Receiver<()>,
    ) -> impl std::future::Future + use<Self>;
}

impl<S: tower::Service<Call>> CallWait for S {
    fn call_wait(
        &mut self,
        rx: tokio::sync::oneshot::Receiver<()>,
    ) -> impl std::future::Future + use<S> {
        self.call(Call::Wait(rx))
    }
}

#[test]
fn metrics_can_be_turned_off() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let _layer = BreakerLayer::builder().metrics(false).build().unwrap();
    });
    assert!(snapshotter.snapshot().into_vec().is_empty());
}

#[test]
fn deadline_drops_count_as_cancelled_and_inner_refusals_as_inner_refusal() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BreakerLayer::builder()
            .name("verdicts")
            .consecutive_failures(5)
            .build()
            .unwrap()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut svc = layer.layer(backend());
        let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut fut = tokio_test::task::spawn(
            tower::ServiceExt::ready(&mut svc)
                .await
                .unwrap()
                .call_wait(rx),
        );
        assert!(fut.poll().is_pending());
        tower_red::cancel::drop_expired(fut);

        let mut refusing = layer.layer(tower::service_fn(|_: Call| async {
            Err::<u16, tower_red::BoxError>(Box::new(tower_red::Rejection::new(
                tower_red::RejectionKind::BulkheadFull,
            )))
        }));
        assert!(send(&mut refusing, Call::Ok).await.is_err());
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let red = |outcome| {
        value(
            &snapshot,
            names::REQUESTS_TOTAL,
            &[
                ("layer", "breaker"),
                ("name", "verdicts"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(red("cancelled"), Some(Val::Counter(1)));
    assert_eq!(red("inner_refusal"), Some(Val::Counter(1)));
    assert_eq!(red("error"), Some(Val::Counter(0)));
    assert_eq!(red("timeout"), Some(Val::Counter(0)));
}

#[test]
fn only_series_the_breaker_can_produce_are_registered() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _layer = metrics::with_local_recorder(&recorder, || {
        BreakerLayer::builder().name("series").build().unwrap()
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let red = |outcome| {
        value(
            &snapshot,
            names::REQUESTS_TOTAL,
            &[("name", "series"), ("outcome", outcome)],
        )
    };
    for outcome in [
        "ok",
        "error",
        "timeout",
        "circuit_open",
        "cancelled",
        "inner_refusal",
    ] {
        assert_eq!(red(outcome), Some(Val::Counter(0)), "{outcome}");
    }
    for outcome in ["shed", "budget_exhausted", "replayed", "rejected"] {
        assert_eq!(red(outcome), None, "{outcome} cannot happen at a breaker");
    }
    assert_eq!(
        value(
            &snapshot,
            names::REQUEST_DURATION_SECONDS,
            &[("name", "series"), ("outcome", "circuit_open")]
        ),
        None,
        "a refusal has no duration"
    );
    let transition = |from, to| {
        value(
            &snapshot,
            names::BREAKER_TRANSITIONS_TOTAL,
            &[("name", "series"), ("from", from), ("to", to)],
        )
    };
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("half_open", "closed"),
        ("open", "closed"),
        ("disabled", "closed"),
        ("closed", "forced_open"),
        ("metrics_only", "disabled"),
    ] {
        assert_eq!(transition(from, to), Some(Val::Counter(0)), "{from}→{to}");
    }
    for (from, to) in [
        ("disabled", "half_open"),
        ("disabled", "open"),
        ("closed", "half_open"),
        ("forced_open", "half_open"),
        ("metrics_only", "open"),
        ("open", "open"),
    ] {
        assert_eq!(transition(from, to), None, "{from}→{to} cannot happen");
    }
}
