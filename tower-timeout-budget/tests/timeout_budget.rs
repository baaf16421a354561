//! Behaviour of `TimeoutBudgetLayer` on a paused clock.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::{Instant, advance};
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_red::{BoxError, Rejection, RejectionKind};
use tower_test::mock::{Handle, Mock, Spawn};
use tower_timeout_budget::inbound::InboundDeadlineLayer;
use tower_timeout_budget::{Deadline, DeadlineCarrier, Stage, TimeoutBudget, TimeoutBudgetLayer};

const MS: Duration = Duration::from_millis(1);

fn stage_of(err: &BoxError) -> Stage {
    let rejection = Rejection::find_in(err).expect("a rejection");
    assert_eq!(rejection.kind(), RejectionKind::DeadlineExceeded);
    Stage::of(rejection).expect("a stage")
}

fn layer(cap_ms: u64) -> TimeoutBudgetLayer {
    TimeoutBudgetLayer::new(Duration::from_millis(cap_ms)).expect("valid cap")
}

/// A `tower_test` mock of `http::Request<()>` answering `()`.
type MockHttp = Mock<http::Request<()>, ()>;

/// `layer` over a `tower_test` mock of `http::Request<()>`, and the mock's handle.
fn mocked(
    layer: TimeoutBudgetLayer,
) -> (
    Spawn<TimeoutBudget<MockHttp>>,
    Handle<http::Request<()>, ()>,
) {
    tower_test::mock::spawn_layer(layer)
}

/// Calls `svc` with an empty request, which must fail at the ready stage (`why` it should); the
/// error.
async fn call_fails_at_ready<S>(svc: &mut Spawn<S>, why: &str) -> BoxError
where
    S: Service<http::Request<()>, Error = BoxError>,
    S::Response: std::fmt::Debug,
{
    let err = svc.call(http::Request::new(())).await.expect_err(why);
    assert_eq!(stage_of(&err), Stage::Ready);
    err
}

#[tokio::test(start_paused = true)]
async fn call_that_finishes_in_time_passes_through() {
    let svc = layer(100).layer(service_fn(|req: u64| async move {
        tokio::time::sleep(99 * MS).await;
        Ok::<_, Infallible>(req + 1)
    }));
    assert_eq!(svc.oneshot(41).await.expect("in time"), 42);
}

#[tokio::test(start_paused = true)]
async fn call_fails_exactly_when_the_cap_passes_with_stage_call() {
    let (mut svc, mut handle) = mocked(layer(100));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(http::Request::new(())));
    let (_req, _respond) = handle
        .next_request()
        .await
        .expect("the request reached the inner service");
    assert_pending!(fut.poll());
    advance(99 * MS).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    assert!(fut.is_woken());
    let err = assert_ready_err!(fut.poll());
    assert_eq!(stage_of(&err), Stage::Call);
    assert_eq!(err.to_string(), "deadline exceeded (timeout): in the call");
}

#[tokio::test(start_paused = true)]
async fn time_waiting_for_readiness_counts_against_the_budget() {
    let (mut svc, mut handle) = mocked(layer(100));
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    advance(60 * MS).await;
    handle.allow(1);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(http::Request::new(())));
    let (req, _respond) = handle.next_request().await.expect("sent");
    // The deadline counts from the start of the readiness wait: 40 ms are left, not 100.
    assert_eq!(req.deadline().expect("a deadline").remaining(), 40 * MS);
    assert_pending!(fut.poll());
    advance(40 * MS).await;
    assert_eq!(stage_of(&assert_ready_err!(fut.poll())), Stage::Call);
}

#[tokio::test(start_paused = true)]
async fn readiness_wait_past_the_cap_fails_the_call_with_stage_ready_without_calling_inner() {
    let (mut svc, mut handle) = mocked(layer(100));
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    advance(99 * MS).await;
    assert_pending!(svc.poll_ready());
    advance(MS).await;
    assert!(svc.is_woken());
    // Refusals come from `call`, never from `poll_ready`.
    assert_ready_ok!(svc.poll_ready());
    let err = call_fails_at_ready(&mut svc, "the wait ran out").await;
    assert_eq!(
        Rejection::find_in(&err).map(Rejection::detail),
        Some("waiting for readiness")
    );
    assert!(
        handle.poll_request().is_pending(),
        "the inner service never saw the request"
    );
}

#[tokio::test(start_paused = true)]
async fn once_the_readiness_wait_ran_out_the_inner_service_is_not_polled_again() {
    let (mut svc, mut handle) = mocked(layer(100));
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    advance(100 * MS).await;
    assert_ready_ok!(svc.poll_ready());
    // The call is already bound to fail at the ready stage: polling readiness again answers at
    // once, without asking the inner service (whose error would otherwise come out here).
    handle.send_error("inner down");
    assert_ready_ok!(svc.poll_ready());
    call_fails_at_ready(&mut svc, "the wait ran out").await;
}

#[tokio::test(start_paused = true)]
async fn readiness_limit_can_be_shorter_than_the_cap() {
    let layer = TimeoutBudgetLayer::builder()
        .cap(1_000 * MS)
        .ready_timeout(10 * MS)
        .build()
        .expect("valid");
    let (mut svc, mut handle) = mocked(layer);
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    advance(10 * MS).await;
    assert_ready_ok!(svc.poll_ready());
    call_fails_at_ready(&mut svc, "the wait ran out").await;
}

#[tokio::test(start_paused = true)]
async fn task_local_deadline_bounds_the_readiness_wait() {
    let (mut svc, mut handle) = mocked(layer(10_000));
    handle.allow(0);
    let outer = Deadline::after(20 * MS);
    outer.sync_scope(|| assert_pending!(svc.poll_ready()));
    advance(20 * MS).await;
    assert_ready_ok!(outer.sync_scope(|| svc.poll_ready()));
    call_fails_at_ready(&mut svc, "the outer deadline passed").await;
}

#[tokio::test(start_paused = true)]
async fn an_earlier_existing_deadline_wins_and_a_later_one_is_capped() {
    let seen = |req: http::Request<()>| async move {
        Ok::<_, Infallible>(req.deadline().map(Deadline::remaining))
    };
    let svc = layer(100).layer(service_fn(seen));

    let mut req = http::Request::new(());
    req.set_deadline(Deadline::after(30 * MS));
    assert_eq!(svc.clone().oneshot(req).await.expect("ok"), Some(30 * MS));

    let mut req = http::Request::new(());
    req.set_deadline(Deadline::after(5_000 * MS));
    assert_eq!(svc.oneshot(req).await.expect("ok"), Some(100 * MS));
}

#[tokio::test(start_paused = true)]
async fn per_request_cap_overrides_the_default() {
    let layer = TimeoutBudgetLayer::builder()
        .cap(100 * MS)
        .cap_fn(|req: &http::Request<()>| (req.uri().path() == "/upload").then_some(2_000 * MS))
        .build()
        .expect("valid");
    let svc = layer.layer(service_fn(|req: http::Request<()>| async move {
        Ok::<_, Infallible>(req.deadline().map(Deadline::remaining))
    }));
    let upload = http::Request::get("/upload").body(()).expect("a request");
    assert_eq!(
        svc.clone().oneshot(upload).await.expect("ok"),
        Some(2_000 * MS)
    );
    let other = http::Request::get("/other").body(()).expect("a request");
    assert_eq!(svc.oneshot(other).await.expect("ok"), Some(100 * MS));
}

#[tokio::test(start_paused = true)]
async fn a_spent_deadline_fails_on_arrival_without_calling_inner() {
    let called = Arc::new(AtomicBool::new(false));
    let flag = called.clone();
    let svc = layer(100).layer(service_fn(move |_req: http::Request<()>| {
        flag.store(true, Ordering::SeqCst);
        async { Ok::<_, Infallible>(()) }
    }));
    let mut req = http::Request::new(());
    req.set_deadline(Deadline::after(5 * MS));
    advance(5 * MS).await;
    let err = svc.oneshot(req).await.expect_err("spent");
    assert_eq!(stage_of(&err), Stage::Arrival);
    assert!(!called.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn request_types_without_extensions_see_the_deadline_in_the_task_local_scope() {
    let svc = layer(250).layer(service_fn(|_req: u64| async {
        tokio::time::sleep(50 * MS).await;
        // Still inside the scope after a suspension point.
        Ok::<_, Infallible>(Deadline::current().map(Deadline::remaining))
    }));
    assert_eq!(svc.oneshot(7).await.expect("ok"), Some(200 * MS));
    assert_eq!(Deadline::current(), None, "the scope does not leak out");
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_call_drops_the_inner_future() {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let svc = layer(10).layer(service_fn(move |_req: u64| {
        let guard = Flag(flag.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(())
        }
    }));
    let start = Instant::now();
    let err = svc.oneshot(1).await.expect_err("timed out");
    assert_eq!(stage_of(&err), Stage::Call);
    assert_eq!(start.elapsed(), 10 * MS);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the innermost work was cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    let svc = layer(100).layer(service_fn(|_req: u64| async {
        Err::<(), BoxError>("boom".into())
    }));
    let err = svc.oneshot(1).await.expect_err("inner error");
    assert!(Rejection::find_in(&err).is_none());
    assert_eq!(err.to_string(), "boom");
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_errors_pass_through() {
    let (mut svc, mut handle) = mocked(layer(100));
    handle.send_error("not ready");
    let err = assert_ready_err!(svc.poll_ready());
    assert_eq!(err.to_string(), "not ready");
}

#[tokio::test(start_paused = true)]
async fn a_clone_does_not_inherit_a_readiness_wait() {
    let (mut svc, mut handle) = mocked(layer(100));
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    advance(100 * MS).await;
    assert_ready_ok!(svc.poll_ready());
    let mut clone = tower_test::mock::Spawn::new(svc.get_ref().clone());
    handle.allow(1);
    assert_ready_ok!(clone.poll_ready());
    let mut fut = task::spawn(clone.call(http::Request::new(())));
    let (req, respond) = handle
        .next_request()
        .await
        .expect("the clone called through");
    assert_eq!(req.deadline().map(Deadline::remaining), Some(100 * MS));
    respond.send_response(());
    assert_ready!(fut.poll()).expect("the clone's call succeeds");
    // The original still fails its own call.
    call_fails_at_ready(&mut svc, "its wait ran out").await;
}

#[tokio::test(start_paused = true)]
async fn the_next_call_starts_a_fresh_budget() {
    let (mut svc, mut handle) = mocked(layer(100));
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    advance(30 * MS).await;
    handle.allow(2);
    assert_ready_ok!(svc.poll_ready());
    let _first = svc.call(http::Request::new(()));
    let (first, _r1) = handle.next_request().await.expect("first");
    assert_eq!(first.deadline().map(Deadline::remaining), Some(70 * MS));
    advance(500 * MS).await;
    assert_ready_ok!(svc.poll_ready());
    let _second = svc.call(http::Request::new(()));
    let (second, _r2) = handle.next_request().await.expect("second");
    assert_eq!(second.deadline().map(Deadline::remaining), Some(100 * MS));
}

#[test]
fn bad_configuration_names_the_field() {
    let err = TimeoutBudgetLayer::builder().build().expect_err("no cap");
    assert_eq!((err.field(), err.reason()), ("cap", "is required"));
    let err = TimeoutBudgetLayer::new(Duration::ZERO).expect_err("zero cap");
    assert_eq!(err.field(), "cap");
    let err = TimeoutBudgetLayer::builder()
        .cap(MS)
        .ready_timeout(Duration::ZERO)
        .build()
        .expect_err("zero");
    assert_eq!(err.field(), "ready_timeout");
    let err = TimeoutBudgetLayer::builder()
        .cap(MS)
        .name("")
        .build()
        .expect_err("empty name");
    assert_eq!(err.field(), "name");
    assert_eq!(
        err.to_string(),
        "invalid timeout config: name = \"\": must not be empty"
    );
}

#[test]
fn configuration_errors_are_the_workspace_config_error() {
    let err: tower_red::ConfigError = TimeoutBudgetLayer::new(Duration::ZERO).expect_err("zero");
    assert_eq!(
        (err.layer(), err.field(), err.value()),
        ("timeout", "cap", "0ns")
    );
    assert_eq!(
        err.to_string(),
        "invalid timeout config: cap = 0ns: must be greater than zero"
    );
    let same: tower_timeout_budget::ConfigError = err;
    let _ = same;
}

#[test]
fn the_stack_is_send_sync_and_static() {
    fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}
    let svc = layer(1).layer(service_fn(|_req: u64| async { Ok::<_, Infallible>(()) }));
    assert_send_sync(&svc);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let fut = svc.clone().oneshot(1);
    fn assert_send<T: Send + 'static>(_: &T) {}
    assert_send(&fut);
}

#[tokio::test(start_paused = true)]
async fn idle_time_between_readiness_and_call_is_not_charged() {
    let (mut svc, mut handle) = mocked(layer(100));
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    advance(30 * MS).await;
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    // A ready cache may hold a ready service for a long time before a request comes.
    advance(500 * MS).await;
    let _fut = svc.call(http::Request::new(()));
    let (req, _respond) = handle.next_request().await.expect("sent");
    assert_eq!(req.deadline().map(Deadline::remaining), Some(70 * MS));
}

/// Calls `svc` with an empty request, which the gate behind it answers with the budget left.
async fn budget_left_in_call(svc: &mut Spawn<TimeoutBudget<common::Gate>>) -> Option<Duration> {
    svc.call(http::Request::new(()))
        .await
        .expect("the inner service answers")
}

#[tokio::test(start_paused = true)]
async fn a_readiness_wait_after_an_unused_ready_starts_at_its_own_pending() {
    let (mut svc, switch) = common::gated(layer(100));
    common::wait_then_open(&mut svc, &switch, 30 * MS).await;
    // A ready cache holds the service; no request comes, and it stops being ready.
    advance(500 * MS).await;
    switch.close();
    assert_pending!(svc.poll_ready(), "the inner service is not ready");
    advance(40 * MS).await;
    assert_pending!(svc.poll_ready());
    switch.open();
    assert_ready_ok!(svc.poll_ready());
    let left = budget_left_in_call(&mut svc).await;
    // Both waits since the last call are charged (30 + 40 ms), the idle time between them not.
    assert_eq!(left, Some(30 * MS));
}

#[tokio::test(start_paused = true)]
async fn every_wait_since_the_last_call_is_charged_and_the_idle_time_between_them_is_not() {
    let (mut svc, switch) = common::gated(layer(100));
    common::wait_then_open(&mut svc, &switch, 30 * MS).await;
    advance(20 * MS).await;
    switch.close();
    assert_pending!(svc.poll_ready());
    // This wait ends before the first one's limit (100 ms from its start) would have.
    advance(20 * MS).await;
    switch.open();
    assert_ready_ok!(svc.poll_ready());
    advance(500 * MS).await;
    let left = budget_left_in_call(&mut svc).await;
    assert_eq!(left, Some(50 * MS));
}

#[tokio::test(start_paused = true)]
async fn the_readiness_limit_bounds_the_waits_since_the_last_call_together() {
    let (mut svc, switch) = common::gated(layer(100));
    common::wait_then_open(&mut svc, &switch, 30 * MS).await;
    advance(500 * MS).await;
    switch.close();
    assert_pending!(svc.poll_ready());
    advance(69 * MS).await;
    assert_pending!(svc.poll_ready());
    advance(MS).await;
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
    call_fails_at_ready(&mut svc, "100 ms waited in all").await;
}

#[tokio::test(start_paused = true)]
async fn without_extensions_an_inner_service_reads_the_scoped_budget_not_a_later_extension() {
    // The inbound layer stores the caller's ~10 s in the request's extensions; this layer's
    // 100 ms stays in the task-local scope only.
    let svc = tower::ServiceBuilder::new()
        .layer(InboundDeadlineLayer::new())
        .layer(
            TimeoutBudgetLayer::builder()
                .cap(100 * MS)
                .carry_in_extensions(false)
                .build()
                .expect("valid"),
        )
        .service(service_fn(|req: http::Request<()>| async move {
            Ok::<_, Infallible>(req.deadline().map(Deadline::remaining))
        }));
    let req = http::Request::get("/")
        .header("x-request-timeout-ms", "10000")
        .body(())
        .expect("a request");
    assert_eq!(svc.oneshot(req).await.expect("ok"), Some(100 * MS));
}
