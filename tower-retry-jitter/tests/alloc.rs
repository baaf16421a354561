//! A call that is not retried allocates nothing, counted by an instrumented global allocator.

use std::alloc::System;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, service_fn};
use tower_red::BoxError;
use tower_retry_jitter::RetryLayer;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations made while `f` runs (the only test of this binary, so nothing else runs).
fn allocations(f: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    f();
    region.change().allocations
}

/// Readies `svc`, calls it with `req` and polls the future once: it must be ready.
fn call_once<S: Service<u64, Response = u64>>(svc: &mut S, req: u64) {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(n)) => assert_eq!(n, req),
        _ => panic!("the passthrough answers at once"),
    }
}

#[test]
fn a_call_that_is_not_retried_allocates_nothing() {
    let echo = service_fn(|n: u64| std::future::ready(Ok::<u64, BoxError>(n)));
    // Built before counting: the layer allocates its shared state once.
    let mut unsafe_ = RetryLayer::builder()
        .safe_if(|_: &u64| false)
        .build()
        .expect("valid")
        .layer(echo);
    let mut safe = RetryLayer::builder()
        .always_safe()
        .build()
        .expect("valid")
        .layer(echo);
    let mut unbudgeted = RetryLayer::builder()
        .always_safe()
        .no_budget()
        .build()
        .expect("valid")
        .layer(echo);
    // Warm up thread-locals (the clock scope, tokio's clock) outside the count.
    call_once(&mut safe, 0);
    call_once(&mut unsafe_, 0);
    assert_eq!(
        allocations(|| (0..100).for_each(|n| call_once(&mut unsafe_, n))),
        0
    );
    assert_eq!(
        allocations(|| (0..100).for_each(|n| call_once(&mut safe, n))),
        0
    );
    assert_eq!(
        allocations(|| (0..100).for_each(|n| call_once(&mut unbudgeted, n))),
        0
    );
    // The counter counts: a boxed value is one allocation.
    assert_eq!(allocations(|| drop(std::hint::black_box(Box::new(7)))), 1);
}
