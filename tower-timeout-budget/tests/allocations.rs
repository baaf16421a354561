//! What a call really allocates, counted exactly by an instrumented global allocator.

use std::alloc::System;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, service_fn};
use tower_timeout_budget::inbound::InboundDeadlineLayer;
use tower_timeout_budget::outbound::OutboundDeadlineLayer;
use tower_timeout_budget::{Deadline, DeadlineCarrier, TimeoutBudgetLayer};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations made while `f` runs. The counter is process-wide, so this file holds a single
/// test: nothing else runs meanwhile.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let region = Region::new(GLOBAL);
    let out = f();
    let stats = region.change();
    (out, stats.allocations + stats.reallocations)
}

/// Calls `svc` with `req` and polls the call once: every service here is ready at once.
fn call_once<S, Req>(svc: &mut S, req: Req) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(res) => res,
        Poll::Pending => panic!("ready at once"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

fn a_call_ready_at_once_on_a_request_without_extensions_allocates_nothing() {
    let rt = runtime();
    let _guard = rt.enter();
    let mut svc = TimeoutBudgetLayer::new(Duration::from_secs(1))
        .expect("valid")
        .layer(service_fn(
            |req: u64| async move { Ok::<_, Infallible>(req) },
        ));
    call_once(&mut svc, 1).expect("warm up");
    let (res, n) = allocations(|| call_once(&mut svc, 2));
    assert_eq!(res.expect("ok"), 2);
    assert_eq!(n, 0);
}

fn the_first_deadline_on_an_http_request_costs_three_allocations() {
    let rt = runtime();
    let _guard = rt.enter();
    let mut svc = TimeoutBudgetLayer::new(Duration::from_secs(1))
        .expect("valid")
        .layer(service_fn(|_req: http::Request<()>| async {
            Ok::<_, Infallible>(())
        }));
    call_once(&mut svc, http::Request::new(())).expect("warm up");
    let req = http::Request::new(());
    // `http::Extensions` is an optional boxed map of boxed values: the box of the map, its
    // table and the box of the `Deadline`.
    let (res, n) = allocations(|| call_once(&mut svc, req));
    res.expect("ok");
    assert_eq!(n, 3);
}

fn a_deadline_already_on_the_request_is_replaced_in_place() {
    let rt = runtime();
    let _guard = rt.enter();
    let mut req = http::Request::new(());
    req.set_deadline(Deadline::after(Duration::from_secs(5)));
    let earlier = Deadline::after(Duration::from_secs(1));
    let ((), n) = allocations(|| req.set_deadline(earlier));
    assert_eq!(n, 0);
    assert_eq!(req.extensions().get::<Deadline>(), Some(&earlier));
}

fn a_stack_of_all_three_layers_pays_for_the_extension_once() {
    let rt = runtime();
    let _guard = rt.enter();
    let inner = service_fn(|_req: http::Request<()>| async { Ok::<_, Infallible>(()) });
    let outbound = OutboundDeadlineLayer::new().layer(inner);
    let timeout = TimeoutBudgetLayer::new(Duration::from_secs(2))
        .expect("valid")
        .layer(outbound);
    let mut svc = InboundDeadlineLayer::new().layer(timeout);
    let request = || {
        http::Request::builder()
            .header("grpc-timeout", "1S")
            .body(())
            .expect("a request")
    };
    call_once(&mut svc, request()).expect("warm up");
    let req = request();
    // Three for the extension map and the `Deadline`. The outbound layer's header value
    // (`x-request-timeout-ms: 1000`) is the one the warm-up call made, shared: the layers read
    // the clock once per call, so every call that did not wait sends the same budget.
    let (res, n) = allocations(|| call_once(&mut svc, req));
    res.expect("ok");
    assert_eq!(n, 3);
}

fn the_same_stack_with_the_deadline_in_its_scope_only_allocates_nothing() {
    let rt = runtime();
    let _guard = rt.enter();
    let inner = service_fn(|req: http::Request<()>| async move {
        // The innermost service still sees the deadline, from the task-local scope.
        Ok::<_, Infallible>(req.deadline().map(|d| d.remaining()))
    });
    let outbound = OutboundDeadlineLayer::builder()
        .carry_in_extensions(false)
        .build()
        .expect("valid")
        .layer(inner);
    let timeout = TimeoutBudgetLayer::builder()
        .cap(Duration::from_secs(2))
        .carry_in_extensions(false)
        .build()
        .expect("valid")
        .layer(outbound);
    let mut svc = InboundDeadlineLayer::builder()
        .carry_in_extensions(false)
        .build()
        .expect("valid")
        .layer(timeout);
    let request = || {
        http::Request::builder()
            .header("grpc-timeout", "1S")
            .body(())
            .expect("a request")
    };
    call_once(&mut svc, request()).expect("warm up");
    let req = request();
    // The request's header map has room for the budget header; the header value is shared.
    let (res, n) = allocations(|| call_once(&mut svc, req));
    let remaining = res.expect("ok").expect("the deadline seen inside");
    assert!(remaining <= Duration::from_secs(1), "{remaining:?}");
    assert_eq!(n, 0);
}

fn a_call_still_pending_arms_one_boxed_timer() {
    let rt = runtime();
    let _guard = rt.enter();
    let mut svc = TimeoutBudgetLayer::new(Duration::from_secs(1))
        .expect("valid")
        .layer(service_fn(|_req: u64| {
            std::future::pending::<Result<(), Infallible>>()
        }));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let ((), n) = allocations(|| {
        let mut fut = pin!(svc.call(1));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    });
    assert_eq!(n, 1);
}

/// One test, so that no other test allocates while one counts.
#[test]
fn what_a_call_allocates() {
    a_call_ready_at_once_on_a_request_without_extensions_allocates_nothing();
    the_first_deadline_on_an_http_request_costs_three_allocations();
    a_deadline_already_on_the_request_is_replaced_in_place();
    a_stack_of_all_three_layers_pays_for_the_extension_once();
    the_same_stack_with_the_deadline_in_its_scope_only_allocates_nothing();
    a_call_still_pending_arms_one_boxed_timer();
}
