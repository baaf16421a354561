//! The open-time backoff, graded recovery and the time window's slow-call count, seen from the
//! service on a paused clock: the behaviours a mutation run found unchecked (see
//! CONTRIBUTING.md, "Mutation testing").

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Call, backend, recover, recover_and_send_the_ramps_first_call, refused, send};
use tokio::time::advance;
use tower::{Layer, Service};
use tower_breaker::{BreakerBuilder, BreakerLayer, OpenTime, Reason, State, Transition};
use tower_red::Rejection;

const SEC: Duration = Duration::from_secs(1);

fn config() -> BreakerBuilder {
    BreakerLayer::builder()
        .name("policy")
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

fn open_times(log: &Mutex<Vec<Transition>>) -> Vec<Duration> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|t| t.open_for)
        .collect()
}

async fn calls(
    svc: &mut impl Service<Call, Response = u16, Error = tower_red::BoxError>,
    n: usize,
    fail: bool,
) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        let call = if fail { Call::Fail } else { Call::Ok };
        if !refused(&send(svc, call).await) {
            admitted += 1;
        }
    }
    admitted
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_over_a_time_window() {
    let (builder, log) = recorded(
        config()
            .time_window(Duration::from_secs(60), 6)
            .failure_rate_threshold(1.0)
            .slow_calls(Duration::from_secs(2), 0.5),
    );
    let layer = layer(builder);
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    let _ = send(&mut svc, Call::Slow(Duration::from_secs(3))).await;
    let _ = send(&mut svc, Call::Ok).await;
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.counts().calls, 3);
    assert_eq!(handle.counts().slow, 1, "one slow call of three");
    assert_eq!(handle.state(), State::Closed, "under the minimum");
    let _ = send(&mut svc, Call::Slow(Duration::from_secs(2))).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "2 slow of 4 is the 50 % threshold"
    );
    assert_eq!(log.lock().unwrap()[0].reason, Reason::SlowCallRate);
}

#[tokio::test(start_paused = true)]
async fn the_time_window_counts_slow_calls_across_its_buckets() {
    let layer = layer(
        config()
            .time_window(Duration::from_secs(10), 5)
            .minimum_calls(100)
            .slow_calls(Duration::from_secs(1), 0.9),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    for _ in 0..3 {
        let _ = send(&mut svc, Call::Slow(Duration::from_secs(1))).await;
        let _ = send(&mut svc, Call::Ok).await;
        advance(Duration::from_secs(1)).await;
    }
    let counts = handle.counts();
    assert_eq!((counts.calls, counts.slow), (6, 3), "{counts:?}");
    assert_eq!(handle.slow_call_rate(), 0.5);
}

/// Trips, waits out the open time and closes on a good probe: a ramp starts.
#[tokio::test(start_paused = true)]
async fn a_graded_recovery_ends_after_its_duration_and_the_window_minimum_applies_again() {
    let open = OpenTime::exponential(Duration::from_secs(10), Duration::from_secs(100)).jitter(0.0);
    let (builder, log) = recorded(
        config()
            .open_time(open)
            .graded_recovery(&[0.5, 1.0], Duration::from_secs(20)),
    );
    let layer = layer(builder);
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    recover(&mut svc, Duration::from_secs(10)).await;
    assert_eq!(handle.state(), State::Closed);
    advance(Duration::from_secs(20)).await;
    // During the ramp one failure (the probe count) would reopen; once it is over, the
    // window's minimum of 4 calls is back.
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Closed, "the ramp is over");
    assert_eq!(calls(&mut svc, 3, false).await, 3, "every call goes");
    calls(&mut svc, 1, true).await;
    assert_eq!(
        handle.state(),
        State::Closed,
        "1 failure in the last 4 calls"
    );
    calls(&mut svc, 1, true).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "2 failures in the last 4 calls"
    );
    assert_eq!(
        log.lock().unwrap().last().unwrap().reason,
        Reason::FailureRate
    );
    assert_eq!(
        open_times(&log),
        [10, 10].map(Duration::from_secs),
        "a ramp that ended is a healthy close: the backoff starts over"
    );
}

#[tokio::test(start_paused = true)]
async fn a_forced_close_forgets_the_open_time_backoff() {
    let open = OpenTime::exponential(SEC, Duration::from_secs(64)).jitter(0.0);
    let (builder, log) = recorded(config().consecutive_failures(1).open_time(open));
    let layer = layer(builder);
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    let _ = send(&mut svc, Call::Fail).await;
    for secs in [1, 2] {
        advance(Duration::from_secs(secs)).await;
        let _ = send(&mut svc, Call::Fail).await; // the probe fails: reopen, longer
    }
    assert_eq!(handle.state(), State::Open);
    handle.reset();
    assert_eq!(handle.state(), State::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(open_times(&log), [1, 2, 4, 1].map(Duration::from_secs));
}

#[tokio::test(start_paused = true)]
async fn a_forced_close_from_open_lets_everything_through_without_a_ramp() {
    let layer = layer(config().graded_recovery(&[0.1, 0.5, 1.0], Duration::from_secs(30)));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    calls(&mut svc, 4, true).await;
    assert_eq!(handle.state(), State::Open);
    handle.reset();
    assert_eq!(calls(&mut svc, 20, false).await, 20);
    assert_eq!(handle.rejected_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn jitter_shortens_the_open_time_below_its_step() {
    let open = OpenTime::exponential(Duration::from_secs(8), Duration::from_secs(64)).jitter(0.5);
    let (builder, log) = recorded(config().consecutive_failures(1).open_time(open).seed(7));
    let layer = layer(builder);
    let mut svc = layer.layer(backend());
    let _ = send(&mut svc, Call::Fail).await;
    for _ in 0..5 {
        advance(Duration::from_secs(64)).await;
        let _ = send(&mut svc, Call::Fail).await;
    }
    let opens = open_times(&log);
    assert_eq!(opens.len(), 6);
    let steps: Vec<_> = (0..6)
        .map(|n| Duration::from_secs((8u64 << n).min(64)))
        .collect();
    for (d, step) in opens.iter().zip(&steps) {
        assert!(*d <= *step && *d >= *step / 2, "{d:?} vs {step:?}");
    }
    assert!(
        opens.iter().zip(&steps).all(|(d, step)| d < step),
        "every open time is jittered below its step: {opens:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_during_the_ramp_says_when_the_next_step_begins() {
    let layer = layer(config().graded_recovery(&[0.1, 0.5, 1.0], Duration::from_secs(30)));
    let mut svc = layer.layer(backend());
    recover_and_send_the_ramps_first_call(&mut svc, Duration::from_secs(10)).await;
    advance(Duration::from_secs(4)).await;
    let refusal = send(&mut svc, Call::Ok).await;
    let err = refusal
        .as_ref()
        .expect_err("10 % of calls go in the first step");
    assert_eq!(
        Rejection::find_in(err).unwrap().retry_after(),
        Some(Duration::from_secs(6)),
        "the first of three steps of 10 s ends 6 s from now"
    );
    advance(Duration::from_secs(13)).await;
    let mut refused_after = None;
    for _ in 0..10 {
        if let Err(err) = send(&mut svc, Call::Ok).await {
            refused_after = Rejection::find_in(&err).unwrap().retry_after();
            break;
        }
    }
    assert_eq!(
        refused_after,
        Some(Duration::from_secs(3)),
        "17 s in, the second step ends at 20 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_time_window_starts_empty_after_a_recovery_and_after_a_reset() {
    let layer = layer(config().time_window(Duration::from_secs(60), 6));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    calls(&mut svc, 4, true).await;
    assert_eq!(handle.state(), State::Open);
    advance(Duration::from_secs(10)).await;
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), 200, "the probe");
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(
        handle.counts().calls,
        0,
        "the failures that tripped it are forgotten, though still inside the 60 s"
    );
    calls(&mut svc, 1, true).await;
    assert_eq!(handle.state(), State::Closed, "1 call is under the minimum");
    calls(&mut svc, 2, true).await;
    assert_eq!(handle.counts().failures, 3);
    handle.reset();
    assert_eq!(
        handle.counts(),
        Default::default(),
        "a forced close empties it"
    );
    calls(&mut svc, 1, true).await;
    assert_eq!(handle.state(), State::Closed);
}
