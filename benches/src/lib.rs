//! Shared parts of the benchmarks: the passthrough service every layer is measured over, a
//! current-thread runtime, and an exact allocation counter.
//!
//! The allocation counter wraps the system allocator only in a build with the
//! `count-allocations` feature; without it the allocation figures read "not counted". It is
//! not on by default because it is not free, and not fair: each allocation and each free makes
//! two sequentially consistent atomic adds, so a contender that allocates 70 times a call
//! (tower-resilience's stack with its metrics) pays 280 locked instructions a call more than
//! one that allocates twice. Timings and instruction counts come from builds without it.

#[cfg(feature = "count-allocations")]
use std::alloc::System;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::task::{Context, Poll};

#[cfg(feature = "count-allocations")]
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::Service;

#[cfg(feature = "count-allocations")]
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations per call, as the bench binaries print them: a number in a build with the
/// `count-allocations` feature, "not counted" in one without (the timing builds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerCall(Option<f64>);

impl PerCall {
    /// The count, when this build counts.
    pub fn get(self) -> Option<f64> {
        self.0
    }
}

impl std::fmt::Display for PerCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => std::fmt::Display::fmt(&n, f),
            None => f.write_str("not counted (build with --features count-allocations)"),
        }
    }
}

/// Allocations made while `f` runs; `None` in a build that does not count.
fn allocations_during(f: impl FnOnce()) -> Option<usize> {
    #[cfg(feature = "count-allocations")]
    {
        let region = Region::new(GLOBAL);
        f();
        Some(region.change().allocations)
    }
    #[cfg(not(feature = "count-allocations"))]
    {
        f();
        None
    }
}

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
pub fn allocations_per_call<F, Fut>(rt: &tokio::runtime::Runtime, calls: u32, mut f: F) -> PerCall
where
    F: FnMut() -> Fut,
    Fut: Future,
{
    rt.block_on(f());
    let allocations = allocations_during(|| {
        rt.block_on(async {
            for _ in 0..calls {
                f().await;
            }
        });
    });
    PerCall(allocations.map(|n| n as f64 / f64::from(calls)))
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
pub fn allocations_per_u64_call<S>(rt: &tokio::runtime::Runtime, svc: &S) -> PerCall
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
) -> PerCall
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
    let allocations = allocations_during(|| {
        rt.block_on(async {
            for _ in 0..calls {
                let req = request();
                let ready = svc.ready().await.expect("ready");
                std::hint::black_box(ready.call(req).await.expect("call"));
            }
        });
    });
    PerCall(allocations.map(|n| n as f64 / f64::from(calls)))
}
