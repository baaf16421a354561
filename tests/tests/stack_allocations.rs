//! What a call through the stacks `ClientStack::builder` and `ServerStack::builder` assemble
//! allocates, counted exactly by an instrumented global allocator (no recorder installed: the
//! layers' own allocations, not an exporter's).

use std::alloc::System;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response, Uri, header};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service};
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::stack::{ClientStack, ServerStack};
use tower_idempotency::store::MemoryStore;
use tower_timeout_budget::{Deadline, DeadlineCarrier};

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

/// Answers 200 at once, noting the budget header the request carried down to it and checking
/// that it sees the deadline (from the task-local scope, not the extensions).
#[derive(Clone, Copy)]
struct Echo;

thread_local! {
    /// The budget header the last request reached `Echo` with, in milliseconds.
    static SENT: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

impl<B> Service<Request<B>> for Echo {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        assert!(
            req.extensions().get::<Deadline>().is_none(),
            "a built stack keeps the deadline in its scope"
        );
        assert!(
            req.deadline().is_some(),
            "the scope's deadline reaches the inner service"
        );
        SENT.set(
            req.headers()
                .get("x-request-timeout-ms")
                .and_then(|v| v.to_str().ok()?.parse().ok()),
        );
        ready(Ok(Response::new(String::new())))
    }
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

fn get(with_a_header: bool) -> Request<String> {
    let mut req = Request::new(String::new());
    *req.uri_mut() = Uri::from_static("http://payments.internal:8080/charges/7");
    if with_a_header {
        req.headers_mut().insert(
            header::ACCEPT,
            header::HeaderValue::from_static("application/json"),
        );
    }
    req
}

fn a_client_stack_allocates_only_the_retry_copy_of_the_headers_or_the_budget_headers_map() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    let stack = ClientStack::builder("payments")
        .http_status()
        .total_budget(Duration::from_secs(2))
        .bulkhead(|b| b.max_concurrent(32))
        .build()
        .expect("a valid client stack");
    let mut svc = stack.layer(Echo);
    call_once(&mut svc, get(true)).expect("warm up");

    // A GET with a header: the retry's copy of the request (kept for a second attempt, as any
    // retry must) clones its header map, the map's index and entries (2). The budget header
    // fits in the map, and its value (the whole budget: one clock read per call) is shared
    // with the warm-up call's.
    let req = get(true);
    let (res, n) = allocations(|| call_once(&mut svc, req));
    res.expect("ok");
    assert_eq!(SENT.get(), Some(2_000));
    assert_eq!(n, 2, "a GET with a header");

    // A GET without any header: the copy clones an empty map (nothing), and the budget header
    // is the map's first entry: `http` allocates the map's index and entries then (2).
    let req = get(false);
    let (res, n) = allocations(|| call_once(&mut svc, req));
    res.expect("ok");
    assert_eq!(SENT.get(), Some(2_000));
    assert_eq!(n, 2, "a GET without a header");
}

fn a_server_stack_allocates_nothing_of_its_own() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    let stack = ServerStack::builder("orders")
        .http_status()
        .deadline_cap(Duration::from_secs(2))
        .idempotency(|| {
            IdempotencyLayer::builder(MemoryStore::new())
                .name("orders")
                .build()
        })
        .bulkhead(|b| b.max_concurrent(64))
        .build()
        .expect("a valid server stack");
    let mut svc = stack.layer(Echo);
    let request = || {
        let mut req = get(true);
        *req.uri_mut() = Uri::from_static("/orders/7");
        req
    };
    call_once(&mut svc, request()).expect("warm up");
    let req = request();
    let (res, n) = allocations(|| call_once(&mut svc, req));
    res.expect("ok");
    assert_eq!(n, 0);
}

#[test]
fn what_a_call_through_a_built_stack_allocates() {
    a_client_stack_allocates_only_the_retry_copy_of_the_headers_or_the_budget_headers_map();
    a_server_stack_allocates_nothing_of_its_own();
}
