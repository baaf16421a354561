//! Which calls the state machine admits, seen from `poll_ready` and `call` on a paused clock:
//! an open circuit answers readiness without its inner service, and in backpressure mode a
//! closed circuit never ramps unless it recovered, and a reservation made during a ramp is the
//! call's admission. Each test kills a mutant of `machine.rs` (CONTRIBUTING.md, "Mutation
//! testing").

mod common;

use std::task::Poll;
use std::time::Duration;

use common::{Call, backend, recover, recover_and_send_the_ramps_first_call, send};
use tokio::time::{Instant, advance};
use tokio_test::assert_pending;
use tower::{Layer, Service, ServiceExt};
use tower_breaker::{BreakerBuilder, BreakerLayer, State};

fn config() -> BreakerBuilder {
    BreakerLayer::builder()
        .name("admission")
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

#[tokio::test(start_paused = true)]
async fn a_tripped_circuit_answers_ready_without_its_saturated_inner_service_until_the_open_time_ends()
 {
    let (mock, mut inner) = tower_test::mock::pair::<u16, u16>();
    let layer = layer(config().consecutive_failures(1));
    let handle = layer.handle();
    let mut svc = layer.layer(mock);
    inner.allow(1);
    let call = svc.ready().await.unwrap().call(1);
    let (_, respond) = inner.next_request().await.expect("the call went");
    respond.send_error("down");
    assert!(call.await.is_err());
    assert_eq!(handle.state(), State::Open, "tripped, not forced");

    inner.allow(0); // saturated: its poll_ready is pending
    advance(Duration::from_millis(9_999)).await;
    let mut ready = tokio_test::task::spawn(svc.ready());
    assert!(
        matches!(ready.poll(), Poll::Ready(Ok(_))),
        "open with time left: ready at once, the call will be refused"
    );
    drop(ready);
    let err = svc.call(2).await.unwrap_err();
    assert!(tower_breaker::is_circuit_open(&*err));

    advance(Duration::from_millis(1)).await;
    let mut ready = tokio_test::task::spawn(svc.ready());
    assert_pending!(
        ready.poll(),
        "the open time is over: a probe may go, so readiness is the inner service's"
    );
}

#[tokio::test(start_paused = true)]
async fn backpressure_never_holds_back_a_breaker_that_never_tripped_though_graded_recovery_is_set()
{
    let layer = layer(
        config()
            .backpressure(true)
            .graded_recovery(&[0.1, 1.0], Duration::from_secs(30)),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), 200);
    }
    assert_eq!(
        Instant::now(),
        start,
        "no call waited: only a recovery ramps traffic back"
    );
    assert_eq!(handle.rejected_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn backpressure_during_a_ramp_sends_the_call_it_reserved_a_place_for() {
    let layer = layer(
        config()
            .backpressure(true)
            .graded_recovery(&[0.1, 1.0], Duration::from_secs(30)),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    recover(&mut svc, Duration::from_secs(10)).await;
    assert_eq!(handle.state(), State::Closed, "ramping up");
    let start = Instant::now();
    for n in 0..10 {
        assert_eq!(
            send(&mut svc, Call::Ok).await.unwrap(),
            200,
            "call {n}: ready means admitted"
        );
    }
    assert!(
        Instant::now() > start,
        "10 % of calls go in the first step: some waited in poll_ready"
    );
    assert_eq!(handle.rejected_calls(), 0, "waiting is not refusing");
}

#[tokio::test(start_paused = true)]
async fn the_call_that_ends_a_ramp_and_every_call_after_it_are_measured() {
    let layer = layer(config().graded_recovery(&[0.5, 1.0], Duration::from_secs(20)));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    recover(&mut svc, Duration::from_secs(10)).await;
    advance(Duration::from_secs(20)).await;
    for n in 1..=3 {
        let _ = send(&mut svc, Call::Fail).await;
        assert_eq!(
            handle.counts().failures,
            n,
            "failure {n} after the ramp is in the window"
        );
    }
    assert_eq!(handle.state(), State::Closed, "3 calls, under the minimum");
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn backpressure_at_the_last_nanosecond_of_a_step_waits_for_the_next_one() {
    // 3 s and 1 ns in three steps: the first ends 1,000,000,000.3 ns in, so the nanosecond at
    // 1 s still belongs to it, and the refusal there must say "in a nanosecond", not "now". A
    // waiter told "now" (on a timer tick, so its sleep is over at once) decides again, and
    // again, each time taking the ramp's next place, until it is admitted beyond the step's
    // share.
    let layer = layer(
        config()
            .backpressure(true)
            .graded_recovery(&[0.1, 0.5, 1.0], Duration::new(3, 1)),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    recover_and_send_the_ramps_first_call(&mut svc, Duration::from_secs(10)).await;
    advance(Duration::from_secs(1)).await;
    let mut ready = tokio_test::task::spawn(svc.ready());
    assert!(
        ready.poll().is_pending(),
        "the first step's 10 % went: the second call waits for the next step"
    );
    advance(Duration::from_secs(10)).await;
    assert!(
        matches!(ready.poll(), Poll::Ready(Ok(_))),
        "the ramp is over: admitted"
    );
    drop(ready);
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), 200);
    assert_eq!(handle.rejected_calls(), 0, "waiting is not refusing");
}

#[tokio::test(start_paused = true)]
async fn a_call_refused_because_readiness_found_the_circuit_open_is_counted_as_every_refusal_is() {
    let hooked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = hooked.clone();
    let layer = layer(config().consecutive_failures(1).on_rejection(move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
    // Readiness while open: ready at once, the call will be refused.
    svc.ready().await.unwrap();
    // The open time ends before the call: the circuit would admit a probe now, but this call's
    // readiness never polled the inner service, so it is refused all the same.
    advance(Duration::from_secs(10)).await;
    let err = svc.call(Call::Ok).await.unwrap_err();
    assert!(tower_breaker::is_circuit_open(&*err));
    assert_eq!(
        handle.rejected_calls(),
        1,
        "counted with the breaker's refusals"
    );
    assert_eq!(
        hooked.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "and seen by the on_rejection hooks"
    );
    assert_eq!(
        send(&mut svc, Call::Ok).await.unwrap(),
        200,
        "the probe slot came back"
    );
}
