//! A request without a key costs the layer no allocation, counted by an instrumented allocator.

use std::alloc::System;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::Service;
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, RequestBody};
use tower_layer::Layer;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn a_request_without_a_key_allocates_nothing_in_the_layer() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    let mut svc = IdempotencyLayer::builder(MemoryStore::new())
        .required(true)
        .build()
        .expect("valid")
        .layer(tower::service_fn(
            |_req: http::Request<RequestBody<String>>| async {
                Ok::<_, Infallible>(http::Response::new(String::new()))
            },
        ));
    let mut cx = Context::from_waker(Waker::noop());
    // A GET with a key, and a PUT without one (a key is required on POST and PATCH only).
    let get = http::Request::get("/")
        .header("idempotency-key", "k")
        .body(String::new())
        .unwrap();
    let put = http::Request::put("/").body(String::new()).unwrap();
    for req in [get, put] {
        let region = Region::new(GLOBAL);
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut fut = pin!(svc.call(req));
        let Poll::Ready(res) = fut.as_mut().poll(&mut cx) else {
            panic!("ready at once");
        };
        drop(res.expect("ok"));
        let stats = region.change();
        assert_eq!(stats.allocations + stats.reallocations, 0);
    }
}
