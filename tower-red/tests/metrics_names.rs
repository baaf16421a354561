//! Pins the RED metric names and labels: they are public API.

use std::time::Duration;

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower_red::red::{Outcome, RedMetrics};
use tower_red::{BoxError, Rejection, RejectionKind, names};

fn labels(key: &CompositeKey) -> Vec<(String, String)> {
    let mut labels: Vec<_> = key
        .key()
        .labels()
        .map(|l| (l.key().to_string(), l.value().to_string()))
        .collect();
    labels.sort();
    labels
}

fn find<'a>(
    snapshot: &'a [(
        CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    outcome: &str,
) -> &'a DebugValue {
    &snapshot
        .iter()
        .find(|(k, ..)| {
            k.key().name() == name
                && k.key()
                    .labels()
                    .any(|l| l.key() == "outcome" && l.value() == outcome)
        })
        .unwrap_or_else(|| panic!("no {name} with outcome {outcome}"))
        .3
}

fn snapshot(
    s: &Snapshotter,
) -> Vec<(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)> {
    s.snapshot().into_vec()
}

#[test]
fn metric_names_are_pinned() {
    assert_eq!(names::REQUESTS_TOTAL, "resilience_requests_total");
    assert_eq!(
        names::REQUEST_DURATION_SECONDS,
        "resilience_request_duration_seconds"
    );
    assert_eq!(names::BREAKER_STATE, "resilience_breaker_state");
    assert_eq!(
        names::BREAKER_TRANSITIONS_TOTAL,
        "resilience_breaker_transitions_total"
    );
    assert_eq!(names::BULKHEAD_IN_FLIGHT, "resilience_bulkhead_in_flight");
    assert_eq!(
        names::BULKHEAD_QUEUE_DEPTH,
        "resilience_bulkhead_queue_depth"
    );
    assert_eq!(names::BULKHEAD_LIMIT, "resilience_bulkhead_limit");
    assert_eq!(
        names::BULKHEAD_QUEUE_WAIT_SECONDS,
        "resilience_bulkhead_queue_wait_seconds"
    );
    assert_eq!(
        names::BULKHEAD_REJECTIONS_TOTAL,
        "resilience_bulkhead_rejections_total"
    );
    assert_eq!(
        names::BULKHEAD_UNKNOWN_PARTITION_TOTAL,
        "resilience_bulkhead_unknown_partition_total"
    );
    assert_eq!(
        names::RETRY_ATTEMPTS_TOTAL,
        "resilience_retry_attempts_total"
    );
    assert_eq!(
        names::RETRY_BUDGET_BALANCE,
        "resilience_retry_budget_balance"
    );
    assert_eq!(names::RETRY_STOPS_TOTAL, "resilience_retry_stops_total");
    assert_eq!(
        names::RETRY_REQUEST_ATTEMPTS,
        "resilience_retry_request_attempts"
    );
    assert_eq!(
        names::RETRY_BODY_OVERFLOW_TOTAL,
        "resilience_retry_body_overflow_total"
    );
    assert_eq!(
        names::RETRY_DONT_RETRY_TOTAL,
        "resilience_retry_dont_retry_total"
    );
    assert_eq!(
        names::DEADLINE_EXCEEDED_TOTAL,
        "resilience_deadline_exceeded_total"
    );
    assert_eq!(
        names::DEADLINE_HEADER_INVALID_TOTAL,
        "resilience_deadline_header_invalid_total"
    );
    assert_eq!(
        names::IDEMPOTENCY_REPLAYS_TOTAL,
        "resilience_idempotency_replays_total"
    );
    assert_eq!(
        names::IDEMPOTENCY_STORE_ERRORS_TOTAL,
        "resilience_idempotency_store_errors_total"
    );
    assert_eq!(
        names::IDEMPOTENCY_DECISIONS_TOTAL,
        "resilience_idempotency_decisions_total"
    );
    assert_eq!(
        names::IDEMPOTENCY_STORE_DURATION_SECONDS,
        "resilience_idempotency_store_duration_seconds"
    );
    assert_eq!(
        names::HTTP_SERVER_REQUEST_DURATION_SECONDS,
        "http_server_request_duration_seconds"
    );
    assert_eq!(
        names::HTTP_SERVER_ACTIVE_REQUESTS,
        "http_server_active_requests"
    );
    assert_eq!(
        names::HTTP_CLIENT_REQUEST_DURATION_SECONDS,
        "http_client_request_duration_seconds"
    );
    assert_eq!(
        names::HTTP_CLIENT_ACTIVE_REQUESTS,
        "http_client_active_requests"
    );
    let outcomes: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(
        outcomes,
        [
            "ok",
            "error",
            "timeout",
            "circuit_open",
            "shed",
            "budget_exhausted",
            "replayed",
            "rejected",
            "cancelled",
            "inner_refusal",
            "fallback"
        ]
    );
}

#[test]
fn red_metrics_registers_every_outcome_once_and_records_by_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let red = RedMetrics::new(names::layer::BREAKER, "payments");
        red.record(Outcome::Ok, Duration::from_millis(250));
        red.record(Outcome::Ok, Duration::from_millis(750));
        red.record(Outcome::Error, Duration::from_millis(5));
        red.record_rejection(Outcome::CircuitOpen);
    });
    let snap = snapshot(&snapshotter);
    // 11 outcomes x (counter + histogram), all registered up front.
    assert_eq!(snap.len(), 22);
    let (key, ..) = snap
        .iter()
        .find(|(k, ..)| k.key().name() == names::REQUESTS_TOTAL)
        .expect("a counter");
    let keys: Vec<_> = labels(key).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["layer", "name", "outcome"]);
    assert!(labels(key).contains(&("layer".into(), "breaker".into())));
    assert!(labels(key).contains(&("name".into(), "payments".into())));

    assert_eq!(
        find(&snap, names::REQUESTS_TOTAL, "ok"),
        &DebugValue::Counter(2)
    );
    assert_eq!(
        find(&snap, names::REQUESTS_TOTAL, "error"),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        find(&snap, names::REQUESTS_TOTAL, "circuit_open"),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        find(&snap, names::REQUESTS_TOTAL, "shed"),
        &DebugValue::Counter(0)
    );
    match find(&snap, names::REQUEST_DURATION_SECONDS, "ok") {
        DebugValue::Histogram(values) => {
            let secs: Vec<f64> = values.iter().map(|v| v.into_inner()).collect();
            assert_eq!(secs, [0.25, 0.75]);
        }
        other => panic!("expected a histogram, got {other:?}"),
    }
    // A rejection records no duration.
    assert_eq!(
        find(&snap, names::REQUEST_DURATION_SECONDS, "circuit_open"),
        &DebugValue::Histogram(vec![])
    );
}

#[test]
fn an_inner_refusal_is_counted_as_one_by_outer_layers() {
    let shed: BoxError = Rejection::new(RejectionKind::QueueTimeout).into();
    let other: BoxError = "connection reset".into();
    // The layer that refused counts it under its own outcome...
    assert_eq!(Rejection::find_in(&shed).unwrap().outcome(), Outcome::Shed);
    // ...and every layer outside it under `inner_refusal`, so `shed` is counted once.
    assert_eq!(Outcome::from_error(&*shed), Outcome::InnerRefusal);
    assert_eq!(Outcome::from_error(&*other), Outcome::Error);
}

#[test]
fn a_layer_registers_only_the_series_it_can_produce() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let red = RedMetrics::with_outcomes(
            names::layer::BULKHEAD,
            "only-some",
            &[Outcome::Ok, Outcome::Error],
            &[Outcome::Shed],
        );
        red.record(Outcome::Ok, Duration::from_millis(1));
        red.record_rejection(Outcome::Shed);
    });
    let snap = snapshot(&snapshotter);
    // ok and error: counter + histogram; shed: counter only.
    assert_eq!(snap.len(), 5);
    assert!(
        snap.iter()
            .all(|(k, ..)| !labels(k).contains(&("outcome".into(), "circuit_open".into())))
    );
    assert_eq!(
        find(&snap, names::REQUESTS_TOTAL, "shed"),
        &DebugValue::Counter(1)
    );
}

#[test]
fn a_second_live_instance_with_the_same_name_is_known() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        let a = RedMetrics::new(names::layer::BREAKER, "twice-named");
        assert_eq!(
            tower_red::red::live_instances(names::layer::BREAKER, "twice-named"),
            1
        );
        let b = RedMetrics::new(names::layer::BREAKER, "twice-named");
        assert_eq!(
            tower_red::red::live_instances(names::layer::BREAKER, "twice-named"),
            2
        );
        let a2 = a.clone(); // clones share one instance
        drop(a);
        drop(b);
        assert_eq!(
            tower_red::red::live_instances(names::layer::BREAKER, "twice-named"),
            1
        );
        drop(a2);
        assert_eq!(
            tower_red::red::live_instances(names::layer::BREAKER, "twice-named"),
            0
        );
    });
}

#[test]
fn describe_metrics_sets_units_for_every_histogram() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tower_red::describe_metrics();
        let _ = RedMetrics::new(names::layer::RETRY, "x");
    });
    let snap = snapshot(&snapshotter);
    let (_, unit, help, _) = snap
        .iter()
        .find(|(k, ..)| k.key().name() == names::REQUEST_DURATION_SECONDS)
        .expect("a histogram");
    assert_eq!(*unit, Some(metrics::Unit::Seconds));
    assert!(help.as_ref().is_some_and(|h| !h.is_empty()));
}

#[test]
fn a_recorder_is_seen_only_while_installed() {
    assert!(
        !tower_red::red::recorder_installed(),
        "no recorder in this test thread"
    );
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || assert!(tower_red::red::recorder_installed()));
    metrics::with_local_recorder(&metrics::NoopRecorder, || {
        assert!(!tower_red::red::recorder_installed())
    });
}

#[test]
fn layers_built_in_a_stack_count_outcomes_but_record_no_durations() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let inner = tower_red::red::counts_only(|| {
            RedMetrics::with_outcomes(names::layer::BREAKER, "in-stack", &[Outcome::Ok], &[])
        });
        assert!(inner.is_recording());
        assert!(!inner.records_durations());
        inner.record(Outcome::Ok, Duration::from_millis(5));
        // The scope ends with the closure: a layer built after it records durations again.
        let alone = RedMetrics::with_outcomes(names::layer::BREAKER, "alone", &[Outcome::Ok], &[]);
        assert!(alone.records_durations());
        alone.record(Outcome::Ok, Duration::from_millis(5));
    });
    let snap = snapshot(&snapshotter);
    let series = |metric: &str, name: &str| {
        snap.iter()
            .filter(|(k, ..)| {
                k.key().name() == metric && labels(k).contains(&("name".into(), name.into()))
            })
            .count()
    };
    assert_eq!(series(names::REQUESTS_TOTAL, "in-stack"), 1);
    assert_eq!(series(names::REQUEST_DURATION_SECONDS, "in-stack"), 0);
    assert_eq!(series(names::REQUESTS_TOTAL, "alone"), 1);
    assert_eq!(series(names::REQUEST_DURATION_SECONDS, "alone"), 1);
}
