//! Instructions per call, for `valgrind --tool=callgrind`: counts are exact and repeatable
//! whatever else the machine is doing, unlike wall time on a shared 2-core machine.
//!
//! ```sh
//! cargo build --release -p benches --example instructions
//! for n in 0 200000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/instructions breaker $n 2>&1 | grep refs
//! done   # (refs at 200000 - refs at 0) / 200000 = instructions per call
//! ```
//!
//! Layers: `passthrough`, `breaker`, `bulkhead`, `timeout`, `stack` (timeout over bulkhead over
//! breaker, as in the `stack` bench), each with metrics on and no recorder (the default).
//! Retries, a call that is not retried, as in the `retry` bench: `retry` (3 attempts, every
//! request safe, the default ratio budget), `retry_no_budget`, `retry_floor` (`max_attempts(1)`)
//! and `tower_retry` (tower 0.5's `Retry` with the `Attempts` policy of its docs).

use std::convert::Infallible;
use std::future::Ready;
use std::time::Duration;

use benches::{Passthrough, runtime};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_breaker::BreakerLayer;
use tower_bulkhead::BulkheadLayer;
use tower_retry_jitter::RetryLayer;
use tower_timeout_budget::TimeoutBudgetLayer;

fn breaker() -> BreakerLayer {
    BreakerLayer::builder()
        .name("instructions")
        .count_window(100)
        .minimum_calls(100)
        .build()
        .expect("a valid breaker")
}

fn bulkhead() -> BulkheadLayer {
    BulkheadLayer::builder()
        .name("instructions")
        .max_concurrent(1_000)
        .build()
        .expect("a valid bulkhead")
}

fn timeout() -> TimeoutBudgetLayer {
    TimeoutBudgetLayer::builder()
        .cap(Duration::from_secs(1))
        .name("instructions")
        .build()
        .expect("a valid cap")
}

/// The `retry` bench's setup: `u64` requests, every one safe to retry.
fn retry(
    budget: bool,
    attempts: u32,
) -> RetryLayer<tower_red::classify::AnyError, tower_retry_jitter::AlwaysSafe> {
    let builder = RetryLayer::builder()
        .name("instructions")
        .max_attempts(attempts);
    let builder = if budget { builder } else { builder.no_budget() };
    builder.always_safe().build().expect("a valid config")
}

/// tower's `Retry` with the policy its docs show: a number of attempts left.
#[derive(Clone, Copy)]
struct Attempts(usize);

impl tower::retry::Policy<u64, u64, Infallible> for Attempts {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut u64,
        result: &mut Result<u64, Infallible>,
    ) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(never) => match *never {},
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        (self.0 > 0).then_some(*req)
    }
}

fn drive<S>(svc: S, calls: u64)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let rt = runtime();
    rt.block_on(async move {
        let mut svc = svc;
        for i in 0..calls {
            let out = svc.ready().await.expect("ready").call(i).await.expect("ok");
            std::hint::black_box(out);
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "passthrough".into());
    let calls: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(200_000);
    match which.as_str() {
        "passthrough" => drive(Passthrough, calls),
        "breaker" => drive(
            ServiceBuilder::new().layer(breaker()).service(Passthrough),
            calls,
        ),
        "bulkhead" => drive(
            ServiceBuilder::new().layer(bulkhead()).service(Passthrough),
            calls,
        ),
        "timeout" => drive(
            ServiceBuilder::new().layer(timeout()).service(Passthrough),
            calls,
        ),
        "stack" => drive(
            ServiceBuilder::new()
                .layer(timeout())
                .layer(bulkhead())
                .layer(breaker())
                .service(Passthrough),
            calls,
        ),
        "retry" => drive(
            ServiceBuilder::new()
                .layer(retry(true, 3))
                .service(Passthrough),
            calls,
        ),
        "retry_no_budget" => drive(
            ServiceBuilder::new()
                .layer(retry(false, 3))
                .service(Passthrough),
            calls,
        ),
        "retry_floor" => drive(
            ServiceBuilder::new()
                .layer(retry(false, 1))
                .service(Passthrough),
            calls,
        ),
        "tower_retry" => drive(
            ServiceBuilder::new()
                .layer(tower::retry::RetryLayer::new(Attempts(2)))
                .service(Passthrough),
            calls,
        ),
        other => {
            eprintln!(
                "unknown layer {other}: passthrough, breaker, bulkhead, timeout, stack, retry, \
                 retry_no_budget, retry_floor, tower_retry"
            );
            std::process::exit(2);
        }
    }
}
