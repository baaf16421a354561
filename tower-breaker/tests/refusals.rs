//! How the breaker refuses: at once, with a `Retry-After`, never past an open circuit, never
//! hanging. On a paused clock.

mod common;

use std::task::Poll;
use std::time::Duration;

use common::{Call, backend, refused, send};
use tokio::sync::oneshot;
use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower::{Layer, Service, ServiceExt};
use tower_breaker::{BreakerBuilder, BreakerLayer, State};
use tower_red::{Rejection, RejectionKind};

fn config() -> BreakerBuilder {
    BreakerLayer::builder()
        .name("refusals")
        .metrics(false)
        .consecutive_failures(1)
        .open_time(Duration::from_secs(10))
        .permitted_probes(1)
}

fn layer(builder: BreakerBuilder) -> BreakerLayer {
    builder.build().expect("valid config")
}

fn retry_after(result: &Result<u16, tower_red::BoxError>) -> Option<Duration> {
    let err = result.as_ref().expect_err("refused");
    let rejection = Rejection::find_in(err).expect("a rejection");
    assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
    rejection.retry_after()
}

#[tokio::test(start_paused = true)]
async fn a_forced_open_refusal_says_to_come_back_after_the_open_time() {
    let layer = layer(config());
    let mut svc = layer.layer(backend());
    layer.handle().force_open();
    assert_eq!(
        retry_after(&send(&mut svc, Call::Ok).await),
        Some(Duration::from_secs(10))
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_while_every_probe_slot_is_busy_says_how_long_the_probes_may_take() {
    let layer = layer(config().max_probe_wait(Duration::from_secs(30)));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    let _ = send(&mut svc, Call::Fail).await;
    advance(Duration::from_secs(10)).await;
    let (_tx, rx) = oneshot::channel::<()>();
    let mut probe = tokio_test::task::spawn(svc.ready().await.unwrap().call(Call::Wait(rx)));
    assert_pending!(probe.poll());
    assert_eq!(handle.state(), State::HalfOpen);
    advance(Duration::from_secs(12)).await;
    assert_eq!(
        retry_after(&send(&mut svc, Call::Ok).await),
        Some(Duration::from_secs(18))
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_says_to_come_back_after_at_least_one_second() {
    let layer = layer(config());
    let mut svc = layer.layer(backend());
    let _ = send(&mut svc, Call::Fail).await;
    advance(Duration::from_millis(9_800)).await;
    assert_eq!(
        retry_after(&send(&mut svc, Call::Ok).await),
        Some(Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn backpressure_waiter_wakes_by_max_probe_wait_when_probes_hang() {
    let layer = layer(
        config()
            .backpressure(true)
            .max_probe_wait(Duration::from_secs(5)),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    let _ = send(&mut svc, Call::Fail).await;
    advance(Duration::from_secs(10)).await;
    let (_tx, rx) = oneshot::channel::<()>();
    let mut probe = tokio_test::task::spawn(svc.ready().await.unwrap().call(Call::Wait(rx)));
    assert_pending!(probe.poll());
    assert_eq!(handle.state(), State::HalfOpen);

    let mut waiting = svc.clone();
    let mut ready = tokio_test::task::spawn(async move { waiting.ready().await.map(|_| ()) });
    assert_pending!(ready.poll());
    advance(Duration::from_secs(5)).await;
    assert!(ready.is_woken(), "woken when the probes have hung too long");
    assert_pending!(ready.poll(), "the hung probes reopened it");
    assert_eq!(handle.state(), State::Open);
    advance(Duration::from_secs(10)).await;
    assert!(ready.is_woken(), "woken again when a new probe may go");
    assert_ready_ok!(ready.poll());
}

#[tokio::test(start_paused = true)]
async fn a_reservation_made_while_closed_is_refused_after_a_trip() {
    let layer = layer(config().backpressure(true));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    let mut reserved = svc.clone();
    let mut ready = tokio_test::task::spawn(reserved.ready());
    assert!(matches!(ready.poll(), Poll::Ready(Ok(_))));
    drop(ready);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
    let (tx, rx) = oneshot::channel::<u16>();
    let mut call = tokio_test::task::spawn(reserved.call(Call::Answer(rx)));
    let result = assert_ready!(call.poll(), "a refusal is ready at once");
    assert!(refused(&result), "refused like any call made while open");
    assert!(tx.is_closed(), "the call never reached the backend");
    assert_eq!(handle.rejected_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_service_readied_while_closed_is_refused_after_a_trip() {
    let layer = layer(config());
    let mut svc = layer.layer(backend());
    let mut readied = svc.clone();
    let mut ready = tokio_test::task::spawn(readied.ready());
    assert!(matches!(ready.poll(), Poll::Ready(Ok(_))));
    drop(ready);
    let _ = send(&mut svc, Call::Fail).await;
    let (tx, rx) = oneshot::channel::<u16>();
    let mut call = tokio_test::task::spawn(readied.call(Call::Answer(rx)));
    assert!(refused(&assert_ready!(call.poll())));
    assert!(tx.is_closed(), "the call never reached the backend");
}

#[tokio::test(start_paused = true)]
async fn open_rejection_does_not_poll_pending_inner() {
    let (mock, mut inner) = tower_test::mock::pair::<u16, u16>();
    let layer = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(mock);
    handle.force_open();
    inner.allow(0); // the inner service is saturated: its poll_ready is pending
    let mut ready = tokio_test::task::spawn(svc.ready());
    assert!(
        matches!(ready.poll(), Poll::Ready(Ok(_))),
        "an open breaker does not wait on its inner service"
    );
    drop(ready);
    let err = svc.call(1).await.unwrap_err();
    assert!(tower_breaker::is_circuit_open(&*err));
    assert_pending!(tokio_test::task::spawn(inner.next_request()).poll());
}

#[tokio::test(start_paused = true)]
async fn a_call_after_a_ready_that_skipped_the_inner_service_never_reaches_it() {
    let (mock, mut inner) = tower_test::mock::pair::<u16, u16>();
    let layer = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(mock);
    handle.force_open();
    inner.allow(0);
    let mut ready = tokio_test::task::spawn(svc.ready());
    assert!(matches!(ready.poll(), Poll::Ready(Ok(_))));
    drop(ready);
    handle.reset(); // closed again between poll_ready and call
    inner.allow(1);
    let err = svc.call(1).await.unwrap_err();
    assert!(
        tower_breaker::is_circuit_open(&*err),
        "the inner service was not readied, so the call cannot go"
    );
    assert_pending!(tokio_test::task::spawn(inner.next_request()).poll());
    // The next readiness polls the inner service again, and the call goes.
    let mut ready = tokio_test::task::spawn(svc.ready());
    assert!(matches!(ready.poll(), Poll::Ready(Ok(_))));
    drop(ready);
    let call = svc.call(2);
    let (req, send_response) = assert_ready!(tokio_test::task::spawn(inner.next_request()).poll())
        .expect("the call reached the inner service");
    assert_eq!(req, 2);
    send_response.send_response(200);
    assert_eq!(call.await.unwrap(), 200);
}
