//! The fallback layer allocates nothing for a request it cannot store (no stale config, or no
//! key), counted by an instrumented allocator. One test in this binary, so nothing else counts.

use std::alloc::System;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::Service;
use tower_idempotency::fallback::{FallbackLayer, StaleConfig};
use tower_layer::Layer;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn request(method: http::Method) -> http::Request<String> {
    // A server's URI is a slice of hyper's read buffer, so cloning it (for the fallback
    // function's context) only counts a reference; a static one behaves the same.
    let uri = http::Uri::from_maybe_shared(Bytes::from_static(b"/orders/7?page=2")).unwrap();
    let mut req = http::Request::new(String::new());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    req
}

fn calls_allocate_nothing<S>(mut svc: S, reqs: Vec<http::Request<String>>)
where
    S: Service<http::Request<String>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    for req in reqs {
        let method = req.method().clone();
        let region = Region::new(GLOBAL);
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut fut = pin!(svc.call(req));
        let Poll::Ready(res) = fut.as_mut().poll(&mut cx) else {
            panic!("ready at once");
        };
        drop(res.expect("ok"));
        let stats = region.change();
        assert_eq!(
            stats.allocations + stats.reallocations,
            0,
            "{method}: {stats:?}"
        );
    }
}

#[test]
fn a_request_the_layer_cannot_store_costs_no_allocation() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    let backend = || {
        tower::service_fn(|_req: http::Request<String>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        })
    };
    let with_fn = FallbackLayer::builder()
        .from_fn(|_| None)
        .build()
        .expect("valid")
        .layer(backend());
    calls_allocate_nothing(
        with_fn,
        vec![request(http::Method::GET), request(http::Method::POST)],
    );
    // With a stale store, requests without a key (the default key skips POST) pass for free.
    let with_stale = FallbackLayer::builder()
        .stale_on_error(StaleConfig::default())
        .build()
        .expect("valid")
        .layer(backend());
    calls_allocate_nothing(
        with_stale,
        vec![request(http::Method::POST), request(http::Method::DELETE)],
    );
    // Nor do they when a key function would key them: it is only called for GET and HEAD.
    let keyed = FallbackLayer::builder()
        .stale_on_error(StaleConfig::default())
        .key(|req| Some(req.path().to_owned()))
        .build()
        .expect("valid")
        .layer(backend());
    calls_allocate_nothing(
        keyed,
        vec![request(http::Method::POST), request(http::Method::DELETE)],
    );
}
