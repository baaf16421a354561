//! Behaviour of every rule, on a paused clock.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Boom, Call, backend, by_status, refused, send};
use tokio::sync::oneshot;
use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower::{Layer, Service, ServiceExt};
use tower_breaker::{BreakerBuilder, BreakerLayer, OpenTime, Reason, State, Transition};
use tower_red::{Rejection, RejectionKind};

const SEC: Duration = Duration::from_secs(1);

fn config() -> BreakerBuilder {
    BreakerLayer::builder()
        .name("test")
        .metrics(false)
        .count_window(4)
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .open_time(Duration::from_secs(10))
        .permitted_probes(1)
}

fn layer(builder: BreakerBuilder) -> BreakerLayer {
    builder.build().expect("valid config")
}

/// Records every transition.
fn recorded(builder: BreakerBuilder) -> (BreakerBuilder, Arc<Mutex<Vec<Transition>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    (
        builder.on_transition(move |t| sink.lock().unwrap().push(t.clone())),
        log,
    )
}

async fn trip(svc: &mut impl Service<Call, Response = u16, Error = tower_red::BoxError>, n: usize) {
    for _ in 0..n {
        let _ = send(svc, Call::Fail).await;
    }
}

#[tokio::test(start_paused = true)]
async fn failure_rate_at_threshold_over_count_window_trips() {
    let layer = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    for call in [Call::Ok, Call::Fail, Call::Ok] {
        let _ = send(&mut svc, call).await;
    }
    assert_eq!(
        handle.state(),
        State::Closed,
        "3 calls are under the minimum"
    );
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open, "2 of 4 is the 50 % threshold");
}

#[tokio::test(start_paused = true)]
async fn failure_rate_below_threshold_keeps_closed_as_window_slides() {
    let layer = layer(config().failure_rate_threshold(0.75));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    for _ in 0..10 {
        for call in [Call::Fail, Call::Fail, Call::Ok, Call::Ok] {
            let _ = send(&mut svc, call).await;
            assert_eq!(handle.state(), State::Closed);
        }
    }
    assert_eq!(handle.counts().calls, 4);
    assert_eq!(handle.failure_rate(), 0.5);
}

#[tokio::test(start_paused = true)]
async fn minimum_calls_gate_the_failure_rate() {
    let layer = layer(config().count_window(20).minimum_calls(10));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 9).await;
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.failure_rate(), 1.0);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_success_completing_the_minimum_trips_when_the_rate_is_high() {
    let layer = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 3).await;
    assert_eq!(handle.state(), State::Closed);
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "3 of 4 failed once the minimum is in"
    );
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_calls_older_than_its_length() {
    let layer = layer(config().time_window(Duration::from_secs(10), 10));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 3).await;
    advance(Duration::from_secs(11)).await;
    assert_eq!(handle.counts().calls, 0, "the failures expired");
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(
        handle.state(),
        State::Closed,
        "one failure is under the minimum"
    );
    for _ in 0..3 {
        advance(Duration::from_secs(2)).await;
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), State::Open, "4 failures within 10 s");
}

#[tokio::test(start_paused = true)]
async fn time_window_measures_rates_over_its_buckets() {
    let layer = layer(
        config()
            .time_window(Duration::from_secs(10), 5)
            .minimum_calls(5)
            .failure_rate_threshold(0.5),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    for i in 0..20 {
        let call = if i % 3 == 0 { Call::Fail } else { Call::Ok };
        let _ = send(&mut svc, call).await;
        advance(Duration::from_millis(700)).await;
    }
    assert_eq!(handle.state(), State::Closed);
    let counts = handle.counts();
    // The last 4 to 5 buckets of 2 s, at one call per 0.7 s.
    assert!((11..=15).contains(&counts.calls), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_and_a_success_resets_the_count() {
    let layer = layer(
        config()
            .count_window(100)
            .minimum_calls(100)
            .consecutive_failures(3),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 2).await;
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.consecutive_failures(), 0);
    trip(&mut svc, 2).await;
    assert_eq!(handle.state(), State::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_trips_even_when_calls_succeed() {
    let (builder, log) = recorded(config().slow_calls(Duration::from_secs(2), 0.5));
    let layer = layer(builder);
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    let _ = send(&mut svc, Call::Slow(Duration::from_secs(2))).await;
    let _ = send(&mut svc, Call::Slow(Duration::from_millis(1_999))).await;
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(
        handle.counts().slow,
        1,
        "at least the duration is slow, under is not"
    );
    let _ = send(&mut svc, Call::SlowFail(Duration::from_secs(3))).await;
    assert_eq!(handle.state(), State::Open);
    // 1 failure of 4 is under the failure threshold: the slow-call rule decided.
    assert_eq!(log.lock().unwrap()[0].reason, Reason::SlowCallRate);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_in_call_with_the_remaining_open_time() {
    let layer = layer(config());
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    advance(Duration::from_millis(2_500)).await;

    let mut ready = tokio_test::task::spawn(svc.ready());
    assert!(
        matches!(ready.poll(), std::task::Poll::Ready(Ok(_))),
        "poll_ready stays ready while open"
    );
    drop(ready);
    let err = svc.call(Call::Ok).await.unwrap_err();
    let rejection = Rejection::find_in(&err).expect("a rejection");
    assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
    assert_eq!(rejection.name(), Some("test"));
    assert_eq!(rejection.retry_after(), Some(Duration::from_millis(7_500)));
    assert_eq!(
        layer.handle().remaining_open_time(),
        Some(Duration::from_millis(7_500))
    );
    assert_eq!(layer.handle().rejected_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    let mut svc = layer(config()).layer(backend());
    let err = send(&mut svc, Call::Fail).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Boom>(), Some(&Boom));
    assert!(Rejection::find_in(&err).is_none());
}

#[tokio::test(start_paused = true)]
async fn half_open_is_entered_lazily_by_the_first_call_after_the_open_time() {
    let (builder, log) = recorded(config());
    let layer = layer(builder);
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    advance(Duration::from_secs(10)).await;
    assert_eq!(handle.state(), State::Open, "no background task moves it");
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), 200);
    assert_eq!(handle.state(), State::Closed, "the one probe succeeded");
    let steps: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .map(|t| (t.from, t.to, t.reason))
        .collect();
    assert_eq!(
        steps,
        [
            (State::Closed, State::Open, Reason::FailureRate),
            (State::Open, State::HalfOpen, Reason::OpenTimeElapsed),
            (State::HalfOpen, State::Closed, Reason::ProbesSucceeded),
        ]
    );
    assert_eq!(handle.counts().calls, 0, "closing clears the window");
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_n_probes_and_decides_on_their_rates() {
    let layer = layer(config().permitted_probes(3).failure_rate_threshold(0.5));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    advance(Duration::from_secs(10)).await;

    let mut senders = Vec::new();
    let mut probes = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = oneshot::channel();
        senders.push(tx);
        probes.push(tokio::spawn(
            svc.ready().await.unwrap().call(Call::Wait(rx)),
        ));
    }
    assert_eq!(handle.state(), State::HalfOpen);
    for _ in 0..5 {
        assert!(
            refused(&send(&mut svc, Call::Ok).await),
            "a fourth probe is refused"
        );
    }
    // One failure of three is under 50 %: the circuit closes.
    let mut senders = senders.into_iter();
    drop(senders.next());
    for tx in senders {
        tx.send(()).unwrap();
    }
    for p in probes {
        let _ = p.await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn failed_probes_reopen_the_circuit() {
    let layer = layer(config().permitted_probes(2));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    advance(Duration::from_secs(10)).await;
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::HalfOpen, "one of two probes is in");
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Open, "1 of 2 failed: 50 % reopens");
    assert_eq!(handle.remaining_open_time(), Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn cancelled_probe_returns_its_slot_without_a_verdict() {
    let layer = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    advance(Duration::from_secs(10)).await;

    let (_tx, rx) = oneshot::channel::<()>();
    let mut probe = tokio_test::task::spawn(svc.ready().await.unwrap().call(Call::Wait(rx)));
    assert_pending!(probe.poll());
    assert!(
        refused(&send(&mut svc, Call::Ok).await),
        "the slot is taken"
    );
    drop(probe);
    assert_eq!(
        handle.state(),
        State::HalfOpen,
        "a cancellation is no verdict"
    );
    assert_eq!(
        send(&mut svc, Call::Ok).await.unwrap(),
        200,
        "the slot is free again"
    );
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn ignored_probe_returns_its_slot() {
    let layer = layer(config()).with_classifier(by_status());
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    advance(Duration::from_secs(10)).await;
    assert_eq!(send(&mut svc, Call::Ignored).await.unwrap(), 404);
    assert_eq!(handle.state(), State::HalfOpen);
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn probes_that_hang_past_the_bound_reopen_and_their_late_verdict_is_dropped() {
    let (builder, log) = recorded(config().max_probe_wait(Duration::from_secs(5)));
    let layer = layer(builder);
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    advance(Duration::from_secs(10)).await;
    let (tx, rx) = oneshot::channel();
    let hung = tokio::spawn(svc.ready().await.unwrap().call(Call::Wait(rx)));
    tokio::task::yield_now().await;
    advance(Duration::from_millis(4_999)).await;
    assert!(refused(&send(&mut svc, Call::Ok).await));
    assert_eq!(handle.state(), State::HalfOpen);
    advance(Duration::from_millis(1)).await;
    assert!(refused(&send(&mut svc, Call::Ok).await));
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        log.lock().unwrap().last().unwrap().reason,
        Reason::ProbesHung
    );
    tx.send(()).unwrap();
    assert_eq!(hung.await.unwrap().unwrap(), 200);
    assert_eq!(
        handle.state(),
        State::Open,
        "the stale probe does not close it"
    );
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_count_neither_way() {
    let layer = layer(config().consecutive_failures(2)).with_classifier(by_status());
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    let _ = send(&mut svc, Call::Fail).await;
    for _ in 0..10 {
        let _ = send(&mut svc, Call::Ignored).await;
    }
    assert_eq!(handle.counts().calls, 1);
    assert_eq!(
        handle.consecutive_failures(),
        1,
        "an ignored call does not reset the streak"
    );
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn calls_admitted_before_a_trip_do_not_count_after_it() {
    let layer = layer(config().consecutive_failures(1));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    let (tx, rx) = oneshot::channel();
    let old = tokio::spawn(svc.ready().await.unwrap().call(Call::Wait(rx)));
    tokio::task::yield_now().await;
    let _ = send(&mut svc, Call::Fail).await;
    advance(Duration::from_secs(10)).await;
    let (_keep, probe_rx) = oneshot::channel::<()>();
    let probe = tokio::spawn(svc.ready().await.unwrap().call(Call::Wait(probe_rx)));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);
    drop(tx); // the old call fails now
    assert!(old.await.unwrap().is_err());
    assert_eq!(
        handle.state(),
        State::HalfOpen,
        "a failure from before the trip is stale"
    );
    probe.abort();
}

#[tokio::test(start_paused = true)]
async fn growing_open_time_doubles_up_to_the_cap_and_resets_after_a_healthy_close() {
    let open = OpenTime::exponential(SEC, Duration::from_secs(4)).jitter(0.0);
    let (builder, log) = recorded(config().consecutive_failures(1).open_time(open));
    let layer = layer(builder);
    let mut svc = layer.layer(backend());
    let _ = send(&mut svc, Call::Fail).await;
    for secs in [1, 2, 4, 4] {
        advance(Duration::from_secs(secs)).await;
        let _ = send(&mut svc, Call::Fail).await; // the probe fails: reopen
    }
    advance(Duration::from_secs(4)).await;
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(layer.handle().state(), State::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    let opens: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|t| t.open_for)
        .collect();
    let want = [1, 2, 4, 4, 4, 1].map(Duration::from_secs);
    assert_eq!(opens, want);
}

#[tokio::test(start_paused = true)]
async fn jittered_open_time_stays_between_the_jitter_floor_and_the_step() {
    let open = OpenTime::exponential(Duration::from_secs(8), Duration::from_secs(64)).jitter(0.5);
    let (builder, log) = recorded(config().consecutive_failures(1).open_time(open).seed(7));
    let layer = layer(builder);
    let mut svc = layer.layer(backend());
    let _ = send(&mut svc, Call::Fail).await;
    for _ in 0..8 {
        advance(Duration::from_secs(64)).await;
        let _ = send(&mut svc, Call::Fail).await;
    }
    let opens: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|t| t.open_for)
        .collect();
    assert_eq!(opens.len(), 9);
    for (n, d) in opens.iter().enumerate() {
        let step = Duration::from_secs((8u64 << n).min(64));
        assert!(*d <= step && *d >= step / 2, "trip {n}: {d:?} vs {step:?}");
    }
    assert!(
        opens.windows(2).any(|w| w[0] != w[1] / 2),
        "jitter moved something"
    );
}

#[tokio::test(start_paused = true)]
async fn forced_open_refuses_every_call_until_reset() {
    let layer = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    handle.force_open();
    advance(Duration::from_secs(3_600)).await;
    let err = send(&mut svc, Call::Ok).await.unwrap_err();
    let rejection = Rejection::find_in(&err).unwrap();
    assert_eq!(
        rejection.retry_after(),
        Some(Duration::from_secs(10)),
        "no open time ends a forced open: the configured one is said"
    );
    assert_eq!(handle.state(), State::ForcedOpen);
    handle.reset();
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), 200);
}

#[tokio::test(start_paused = true)]
async fn disabled_lets_everything_through_and_measures_nothing() {
    let layer = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    handle.disable();
    trip(&mut svc, 50).await;
    assert_eq!(handle.state(), State::Disabled);
    assert_eq!(handle.counts().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_measures_but_never_trips() {
    let layer = layer(config().consecutive_failures(1));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    handle.metrics_only();
    trip(&mut svc, 50).await;
    assert_eq!(handle.state(), State::MetricsOnly);
    assert_eq!(handle.counts().calls, 4);
    assert_eq!(handle.failure_rate(), 1.0);
    assert_eq!(handle.consecutive_failures(), 50);
}

#[tokio::test(start_paused = true)]
async fn clones_of_layer_and_service_share_one_breaker() {
    let layer = layer(config());
    let mut a = layer.layer(backend());
    let mut b = layer.clone().layer(backend());
    let mut c = a.clone();
    trip(&mut a, 2).await;
    trip(&mut b, 1).await;
    trip(&mut c, 1).await;
    assert!(refused(&send(&mut a, Call::Ok).await));
    assert!(refused(&send(&mut b, Call::Ok).await));
    assert!(refused(&send(&mut c, Call::Ok).await));
    assert_eq!(b.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn hooks_run_outside_the_lock() {
    let handle_cell: Arc<OnceLock<tower_breaker::BreakerHandle>> = Arc::new(OnceLock::new());
    let cell = handle_cell.clone();
    let rejections = Arc::new(Mutex::new(Vec::new()));
    let sink = rejections.clone();
    let layer = layer(
        config()
            .on_transition(move |t| {
                // Forcing a transition takes the breaker's lock: this would deadlock if the
                // hook ran under it.
                if t.to == State::Open {
                    cell.get().unwrap().force_open();
                }
            })
            .on_rejection(move |r| sink.lock().unwrap().push(r.clone())),
    );
    handle_cell.set(layer.handle()).unwrap();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    assert_eq!(layer.handle().state(), State::ForcedOpen);
    let _ = send(&mut svc, Call::Ok).await;
    let seen = rejections.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].state, State::ForcedOpen);
}

async fn admitted(
    svc: &mut impl Service<Call, Response = u16, Error = tower_red::BoxError>,
    calls: usize,
) -> usize {
    let mut n = 0;
    for _ in 0..calls {
        if !refused(&send(svc, Call::Ok).await) {
            n += 1;
        }
    }
    n
}

#[tokio::test(start_paused = true)]
async fn graded_recovery_ramps_traffic_back_in_steps() {
    let layer = layer(config().graded_recovery(&[0.1, 0.5, 1.0], Duration::from_secs(30)));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    advance(Duration::from_secs(10)).await;
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Closed);

    assert_eq!(admitted(&mut svc, 100).await, 10);
    advance(Duration::from_secs(10)).await;
    assert_eq!(admitted(&mut svc, 100).await, 50);
    advance(Duration::from_secs(10)).await;
    assert_eq!(admitted(&mut svc, 100).await, 100);
    advance(Duration::from_secs(10)).await;
    assert_eq!(admitted(&mut svc, 100).await, 100);
    // A new ramp: the first call is admitted (the 10 % quota rounds up), the next is not.
    handle.reset();
    trip(&mut svc, 4).await;
    advance(Duration::from_secs(10)).await;
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), 200, "the probe");
    assert_eq!(
        send(&mut svc, Call::Ok).await.unwrap(),
        200,
        "the ramp's first call"
    );
    let err = send(&mut svc, Call::Ok).await.unwrap_err();
    let rejection = Rejection::find_in(&err).unwrap();
    assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
    assert!(rejection.retry_after().unwrap() <= Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_failure_during_the_ramp_reopens_at_once_with_a_longer_open_time() {
    let open = OpenTime::exponential(Duration::from_secs(10), Duration::from_secs(100)).jitter(0.0);
    let (builder, log) = recorded(
        config()
            .open_time(open)
            .graded_recovery(&[0.5, 1.0], Duration::from_secs(20)),
    );
    let layer = layer(builder);
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    advance(Duration::from_secs(10)).await;
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "one failed call (the probe count) reopens"
    );
    let last = log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.reason, Reason::RecoveryFailed);
    assert_eq!(
        last.open_for,
        Some(Duration::from_secs(20)),
        "the backoff kept growing"
    );
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_waits_in_poll_ready_until_a_probe_may_go() {
    let layer = layer(config().backpressure(true));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    assert_eq!(handle.state(), State::Open);

    let mut waiting = svc.clone();
    let mut ready = tokio_test::task::spawn(async move {
        waiting.ready().await.map(|_| ())?;
        waiting.call(Call::Ok).await
    });
    assert_pending!(ready.poll());
    advance(Duration::from_secs(9)).await;
    assert_pending!(ready.poll());
    advance(Duration::from_secs(1)).await;
    assert!(ready.is_woken(), "woken when the open time passes");
    assert_eq!(assert_ready!(ready.poll()).unwrap(), 200);
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.rejected_calls(), 0, "waiting is not refusing");
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_wakes_a_waiter_when_a_probe_slot_frees() {
    let layer = layer(config().backpressure(true));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    advance(Duration::from_secs(10)).await;
    let (_tx, rx) = oneshot::channel::<()>();
    let mut probe = tokio_test::task::spawn(svc.ready().await.unwrap().call(Call::Wait(rx)));
    assert_pending!(probe.poll());
    assert_eq!(handle.state(), State::HalfOpen);

    let mut waiting = svc.clone();
    let mut ready = tokio_test::task::spawn(async move { waiting.ready().await.map(|_| ()) });
    assert_pending!(ready.poll());
    drop(probe);
    assert!(
        ready.is_woken(),
        "the cancelled probe's slot wakes the waiter"
    );
    assert_ready_ok!(ready.poll());
}

#[tokio::test(start_paused = true)]
async fn backpressure_reservation_is_not_inherited_by_clones_and_returns_on_drop() {
    let layer = layer(config().backpressure(true));
    let mut svc = layer.layer(backend());
    trip(&mut svc, 4).await;
    advance(Duration::from_secs(10)).await;
    let mut first = svc.clone();
    let mut ready = tokio_test::task::spawn(first.ready());
    assert!(matches!(ready.poll(), std::task::Poll::Ready(Ok(_))));
    drop(ready);
    let mut second = first.clone();
    let mut ready = tokio_test::task::spawn(second.ready());
    assert!(
        ready.poll().is_pending(),
        "the one probe slot is reserved by `first`"
    );
    drop(ready);
    drop(first);
    let mut ready = tokio_test::task::spawn(second.ready());
    assert!(
        matches!(ready.poll(), std::task::Poll::Ready(Ok(_))),
        "dropping `first` returned the slot"
    );
}

#[test]
fn half_open_admits_exactly_n_probes_under_racing_tasks() {
    const PROBES: usize = 4;
    const TASKS: usize = 64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..20 {
            // 1 ns open time on the real clock: half-open by the time the racers arrive,
            // without sleeping.
            let layer = layer(
                config()
                    .consecutive_failures(1)
                    .open_time(Duration::from_nanos(1))
                    .permitted_probes(PROBES as u32),
            );
            let handle = layer.handle();
            let mut svc = layer.layer(backend());
            let _ = send(&mut svc, Call::Fail).await;
            let before_call = Arc::new(tokio::sync::Barrier::new(TASKS));
            // Nobody finishes before everybody has called, so the circuit cannot close early.
            let after_call = Arc::new(tokio::sync::Barrier::new(TASKS));
            let mut tasks = Vec::new();
            for _ in 0..TASKS {
                let mut svc = svc.clone();
                let before_call = before_call.clone();
                let after_call = after_call.clone();
                tasks.push(tokio::spawn(async move {
                    before_call.wait().await;
                    let (tx, rx) = oneshot::channel();
                    let fut = svc.ready().await.unwrap().call(Call::Wait(rx));
                    after_call.wait().await;
                    let _ = tx.send(());
                    fut.await
                }));
            }
            let mut ok = 0;
            let mut refused_n = 0;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(_) => ok += 1,
                    Err(e) if tower_breaker::is_circuit_open(&*e) => refused_n += 1,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            assert_eq!(ok, PROBES, "exactly N probes reached the backend");
            assert_eq!(refused_n, TASKS - PROBES);
            assert_eq!(handle.state(), State::Closed);
        }
    });
}
