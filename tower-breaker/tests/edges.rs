//! Edges a mutation run of the breaker's wiring found unchecked (CONTRIBUTING.md, "Mutation
//! testing"): configuration boundaries, the labels states and reasons print, and the refusal
//! test on errors.

use std::time::Duration;

use tower_breaker::{BreakerLayer, OpenTime, Reason, State, is_circuit_open};
use tower_red::{BoxError, Rejection, RejectionKind};

const MS: Duration = Duration::from_millis(1);

#[test]
fn an_exponential_open_time_may_start_at_its_max() {
    let at_max = BreakerLayer::builder()
        .name("edge")
        .open_time(OpenTime::exponential(5_000 * MS, 5_000 * MS))
        .build();
    assert!(at_max.is_ok(), "{:?}", at_max.err());
    let err = BreakerLayer::builder()
        .name("edge")
        .open_time(OpenTime::exponential(5_000 * MS, 4_999 * MS))
        .build()
        .expect_err("max below initial");
    assert!(err.to_string().contains("open_time.max"), "{err}");
}

#[test]
fn a_time_window_may_give_each_bucket_exactly_one_millisecond() {
    let at_edge = BreakerLayer::builder()
        .name("edge")
        .time_window(10 * MS, 10)
        .build();
    assert!(at_edge.is_ok(), "{:?}", at_edge.err());
    let err = BreakerLayer::builder()
        .name("edge")
        .time_window(9 * MS, 10)
        .build()
        .expect_err("under 1 ms a bucket");
    assert!(err.to_string().contains("time_window.length"), "{err}");
}

#[test]
fn only_a_breaker_s_refusal_is_a_circuit_open() {
    let open: BoxError = Rejection::new(RejectionKind::CircuitOpen).into();
    assert!(is_circuit_open(&*open));
    let full: BoxError = Rejection::new(RejectionKind::BulkheadFull).into();
    assert!(!is_circuit_open(&*full));
    let other: BoxError = "connection reset".into();
    assert!(!is_circuit_open(&*other));
}

#[test]
fn states_and_reasons_print_their_metric_labels() {
    let states = [
        (State::Closed, "closed"),
        (State::Open, "open"),
        (State::HalfOpen, "half_open"),
        (State::ForcedOpen, "forced_open"),
        (State::Disabled, "disabled"),
        (State::MetricsOnly, "metrics_only"),
    ];
    for (state, label) in states {
        assert_eq!(state.as_str(), label);
        assert_eq!(state.to_string(), label);
    }
    let reasons = [
        (Reason::FailureRate, "failure_rate"),
        (Reason::SlowCallRate, "slow_call_rate"),
        (Reason::ConsecutiveFailures, "consecutive_failures"),
        (Reason::OpenTimeElapsed, "open_time_elapsed"),
        (Reason::ProbesSucceeded, "probes_succeeded"),
        (Reason::ProbesFailed, "probes_failed"),
        (Reason::ProbesHung, "probes_hung"),
        (Reason::RecoveryFailed, "recovery_failed"),
        (Reason::Forced, "forced"),
    ];
    for (reason, label) in reasons {
        assert_eq!(reason.as_str(), label);
        assert_eq!(reason.to_string(), label);
    }
}

#[tokio::test]
async fn a_keyed_breaker_is_ready_when_its_inner_service_is_and_passes_on_its_errors() {
    let layer = BreakerLayer::builder()
        .name("keyed-edge")
        .build_keyed(|req: &u64| *req % 2)
        .expect("valid");
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u64, u64, _>(layer);
    handle.allow(0);
    assert!(svc.poll_ready().is_pending(), "backpressure passes through");
    handle.allow(1);
    assert!(svc.is_woken());
    assert!(matches!(svc.poll_ready(), std::task::Poll::Ready(Ok(()))));
    handle.send_error("inner down");
    match svc.poll_ready() {
        std::task::Poll::Ready(Err(err)) => assert_eq!(err.to_string(), "inner down"),
        other => panic!("the inner error, got {other:?}"),
    }
}

/// Forced open with backpressure, a waiter sleeps for the open time: `Duration::MAX` overflowed
/// the clock in `poll_ready` (a panic), and a growing open time past `Duration`'s range panicked
/// when the circuit tripped. Open times are bounded by `tower_red::clock::NEVER` (30 years):
/// `force_open` is the way to hold a circuit open.
#[tokio::test(start_paused = true)]
async fn an_open_time_longer_than_never_is_refused_and_never_itself_waits_without_overflow() {
    use tower::{Layer, Service, ServiceExt};
    use tower_red::clock::NEVER;
    let refused = |open: OpenTime, field: &str| {
        let err = BreakerLayer::builder()
            .name("edge")
            .open_time(open)
            .build()
            .expect_err("past NEVER");
        assert!(err.to_string().contains(field), "{err}");
    };
    refused(OpenTime::Fixed(Duration::MAX), "open_time");
    refused(OpenTime::Fixed(NEVER + MS), "open_time");
    refused(OpenTime::exponential(MS, Duration::MAX), "open_time.max");
    refused(
        OpenTime::exponential(Duration::MAX, Duration::MAX),
        "open_time.initial",
    );

    let layer = BreakerLayer::builder()
        .name("edge")
        .metrics(false)
        .open_time(NEVER)
        .backpressure(true)
        .build()
        .expect("NEVER is the longest open time");
    let handle = layer.handle();
    handle.force_open();
    let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
    let mut ready = tokio_test::task::spawn(svc.ready());
    assert!(ready.poll().is_pending(), "forced open: the waiter sleeps");
    handle.reset();
    assert!(ready.is_woken(), "closed again: the waiter is woken");
    let svc = match ready.poll() {
        std::task::Poll::Ready(Ok(svc)) => svc,
        other => panic!("closed: ready, got {:?}", other.map(|r| r.map(|_| ()))),
    };
    svc.call(()).await.unwrap();
}
