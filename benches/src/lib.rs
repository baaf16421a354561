//! Shared parts of the benchmarks: the passthrough service every layer is measured over, a
//! current-thread runtime, and an exact allocation counter.
//!
//! The allocation counter wraps the system allocator for every bench binary that links this
//! crate; counting costs a few atomic adds per allocation, the same for every contender.

use std::alloc::System;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::task::{Context, Poll};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::Service;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// An always-ready `Service<u64>` that answers with its request: the baseline every layer's
/// overhead is measured against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passthrough;

impl Service<u64> for Passthrough {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

/// The runtime of single-thread benches: tokio's current-thread runtime with time enabled.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Allocations per call: runs `f` `calls` times on `rt` (after one warm-up call, so lazy
/// one-time registrations do not count) and divides the allocations made.
pub fn allocations_per_call<F, Fut>(rt: &tokio::runtime::Runtime, calls: u32, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: Future,
{
    rt.block_on(f());
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for _ in 0..calls {
            f().await;
        }
    });
    let stats = region.change();
    stats.allocations as f64 / f64::from(calls)
}

/// Times `iters` sequential `ready().await` + `call().await` round trips of `svc` on `rt`: the
/// body of a criterion `iter_custom`, so the service is driven exactly as a caller would.
pub fn time_calls<S, Req, F>(
    rt: &tokio::runtime::Runtime,
    svc: &mut S,
    iters: u64,
    mut request: F,
) -> std::time::Duration
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
    F: FnMut() -> Req,
{
    use tower::ServiceExt;
    rt.block_on(async {
        let start = std::time::Instant::now();
        for _ in 0..iters {
            let svc = svc.ready().await.expect("ready");
            std::hint::black_box(svc.call(request()).await.expect("call"));
        }
        start.elapsed()
    })
}

/// Two OS threads, each on its own current-thread runtime, each making `iters` calls through a
/// clone of `svc` at the same time: the time of the slower thread, i.e. the time per call per
/// thread when both share whatever `svc`'s clones share.
pub fn time_calls_on_two_threads<S>(svc: &S, iters: u64) -> std::time::Duration
where
    S: Service<u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let mut svc = svc.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = runtime();
                barrier.wait();
                time_calls(&rt, &mut svc, iters, || 1)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("a bench thread"))
        .max()
        .unwrap_or_default()
}

/// Allocations per `ready().await` + `call(1).await` through a fresh clone of `svc`, over
/// 10,000 calls (cloning these services is expected to allocate nothing).
pub fn allocations_per_u64_call<S>(rt: &tokio::runtime::Runtime, svc: &S) -> f64
where
    S: Service<u64> + Clone,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    allocations_per_call(rt, 10_000, || {
        let svc = svc.clone();
        async move { svc.oneshot(1).await.expect("call") }
    })
}

/// Allocations per call of `calls` sequential `ready().await` + `call().await` round trips of
/// one service (not a clone per call), after one warm-up call; `request` builds each request,
/// so its own allocations count too (measure the bare service with the same `request` to
/// subtract them).
pub fn allocations_per_call_in_place<S, Req, F>(
    rt: &tokio::runtime::Runtime,
    svc: &mut S,
    calls: u32,
    mut request: F,
) -> f64
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
    F: FnMut() -> Req,
{
    use tower::ServiceExt;
    rt.block_on(async {
        let req = request();
        let ready = svc.ready().await.expect("ready");
        std::hint::black_box(ready.call(req).await.expect("call"));
    });
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for _ in 0..calls {
            let req = request();
            let ready = svc.ready().await.expect("ready");
            std::hint::black_box(ready.call(req).await.expect("call"));
        }
    });
    let stats = region.change();
    stats.allocations as f64 / f64::from(calls)
}
