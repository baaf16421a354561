//! One verdict per stack: calls cut off by their deadline are timeouts, inner refusals are no
//! verdict at all. On a paused clock.

mod common;

use std::time::Duration;

use common::{Call, backend, send};
use tokio::sync::oneshot;
use tokio::time::advance;
use tokio_test::assert_pending;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_breaker::{BreakerBuilder, BreakerLayer, Counts, State};
use tower_red::{BoxError, Rejection, RejectionKind};

fn config() -> BreakerBuilder {
    BreakerLayer::builder()
        .name("verdict")
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
async fn a_call_dropped_at_its_deadline_counts_as_a_slow_failure_and_trips() {
    let layer = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    for n in 1..=4u64 {
        let (_tx, rx) = oneshot::channel::<()>();
        let mut call = tokio_test::task::spawn(svc.ready().await.unwrap().call(Call::Wait(rx)));
        assert_pending!(call.poll());
        advance(Duration::from_secs(1)).await;
        // What a deadline enforcer above the breaker does when the deadline passes.
        tower_red::cancel::drop_expired(call);
        if n < 4 {
            assert_eq!(
                handle.counts(),
                Counts {
                    calls: n,
                    failures: n,
                    slow: n
                }
            );
        }
    }
    assert_eq!(handle.state(), State::Open, "a hanging backend opens it");
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_by_its_caller_before_its_deadline_counts_as_nothing() {
    let layer = layer(config().consecutive_failures(1));
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    for _ in 0..10 {
        let (_tx, rx) = oneshot::channel::<()>();
        let mut call = tokio_test::task::spawn(svc.ready().await.unwrap().call(Call::Wait(rx)));
        assert_pending!(call.poll());
        drop(call);
    }
    assert_eq!(handle.counts(), Counts::default());
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_dropped_at_its_deadline_is_a_failed_probe() {
    let layer = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(backend());
    for _ in 0..4 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), State::Open);
    advance(Duration::from_secs(10)).await;
    let (_tx, rx) = oneshot::channel::<()>();
    let mut probe = tokio_test::task::spawn(svc.ready().await.unwrap().call(Call::Wait(rx)));
    assert_pending!(probe.poll());
    assert_eq!(handle.state(), State::HalfOpen);
    tower_red::cancel::drop_expired(probe);
    assert_eq!(handle.state(), State::Open, "the probe timed out");
}

/// A service refusing every call the way an inner layer of the workspace does.
fn refusing(
    rejection: fn() -> Rejection,
) -> impl Service<Call, Response = u16, Error = BoxError, Future = common::BoxFutBox> + Clone {
    service_fn(move |_: Call| -> common::BoxFutBox {
        Box::pin(async move { Err::<u16, BoxError>(Box::new(rejection())) })
    })
}

#[tokio::test(start_paused = true)]
async fn an_inner_layers_refusal_never_enters_the_window() {
    let layer = layer(config().consecutive_failures(1));
    let handle = layer.handle();
    let mut svc = layer.layer(refusing(|| Rejection::new(RejectionKind::BulkheadFull)));
    for _ in 0..10 {
        let err = send_boxed(&mut svc).await.unwrap_err();
        let rejection = Rejection::find_in(&err).expect("the inner refusal passes through");
        assert_eq!(rejection.kind(), RejectionKind::BulkheadFull);
    }
    assert_eq!(handle.counts(), Counts::default());
    assert_eq!(handle.consecutive_failures(), 0);
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_inner_deadline_passing_during_the_call_is_a_timeout_failure() {
    let layer = layer(config().consecutive_failures(1));
    let handle = layer.handle();
    let mut svc = layer.layer(refusing(|| {
        Rejection::new(RejectionKind::DeadlineExceeded).with_reason("call")
    }));
    let _ = send_boxed(&mut svc).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn an_inner_deadline_spent_before_sending_is_a_refusal() {
    let layer = layer(config().consecutive_failures(1));
    let handle = layer.handle();
    let mut svc = layer.layer(refusing(|| {
        Rejection::new(RejectionKind::DeadlineExceeded).with_reason("before_send")
    }));
    let _ = send_boxed(&mut svc).await;
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.counts(), Counts::default());
}

async fn send_boxed<S>(svc: &mut S) -> Result<u16, BoxError>
where
    S: Service<Call, Response = u16, Error = BoxError>,
{
    svc.ready().await?.call(Call::Ok).await
}

/// An axum-like handler: never an `Err`, failures are statuses.
fn infallible(
    status: u16,
    grpc: Option<&'static str>,
) -> impl Service<
    (),
    Response = http::Response<()>,
    Error = std::convert::Infallible,
    Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>,
> + Clone {
    service_fn(move |()| {
        let mut res = http::Response::builder().status(status);
        if let Some(code) = grpc {
            res = res.header("grpc-status", code);
        }
        std::future::ready(Ok(res.body(()).unwrap()))
    })
}

async fn call_twice<S>(svc: &mut S)
where
    S: Service<(), Response = http::Response<()>, Error = BoxError>,
{
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(()).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_http_status_breaker_opens_on_5xx_from_an_infallible_handler() {
    let layer = BreakerLayer::builder()
        .name("http")
        .metrics(false)
        .consecutive_failures(2)
        .http_status()
        .build()
        .unwrap();
    let handle = layer.handle();
    call_twice(&mut layer.layer(infallible(503, None))).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_default_classifier_never_opens_on_an_infallible_handler() {
    let layer = BreakerLayer::builder()
        .name("any-error")
        .metrics(false)
        .consecutive_failures(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    call_twice(&mut layer.layer(infallible(503, None))).await;
    assert_eq!(handle.state(), State::Closed, "why `http_status` exists");
}

#[tokio::test(start_paused = true)]
async fn a_grpc_status_breaker_opens_on_unavailable() {
    let layer = BreakerLayer::builder()
        .name("grpc")
        .metrics(false)
        .consecutive_failures(2)
        .grpc_status()
        .build()
        .unwrap();
    let handle = layer.handle();
    call_twice(&mut layer.layer(infallible(200, Some("14")))).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_never_answers_opens_the_breaker_behind_a_timeout_budget() {
    let breaker = BreakerLayer::builder()
        .name("hangs")
        .metrics(false)
        .consecutive_failures(3)
        .http_status()
        .build()
        .unwrap();
    let handle = breaker.handle();
    let mut svc = tower::ServiceBuilder::new()
        .layer(tower_timeout_budget::TimeoutBudgetLayer::new(Duration::from_secs(1)).unwrap())
        .layer(breaker)
        .service(service_fn(|_: http::Request<()>| {
            std::future::pending::<Result<http::Response<()>, std::convert::Infallible>>()
        }));
    for n in 1..=3 {
        let start = tokio::time::Instant::now();
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap_err();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1),
            "cut by the deadline"
        );
        let rejection = Rejection::find_in(&err).expect("the deadline's refusal");
        assert_eq!(rejection.kind(), RejectionKind::DeadlineExceeded);
        let expected = if n < 3 { State::Closed } else { State::Open };
        assert_eq!(handle.state(), expected, "after {n} timeouts");
    }
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap_err();
    assert!(tower_breaker::is_circuit_open(&*err), "refused at once now");
}
