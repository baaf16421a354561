//! Shared parts of the benchmarks: the passthrough service every layer is measured over, a
//! current-thread runtime, and an exact allocation counter.
//!
//! The allocation counter wraps the system allocator for every bench binary that links this
//! crate; counting costs a few atomic adds per allocation, the same for every contender.

use std::alloc::System;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::task::{Context, Poll};

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
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
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
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
