//! Happy-path overhead of deadline enforcement over an always-ready passthrough: our
//! `TimeoutBudget` against tower's `Timeout` and tower-resilience 0.13's time limiter, none of
//! which fires. Our layer polls the inner future first and arms no timer when it is ready at
//! once; tower's `Timeout` builds a `Sleep` on every call; tower-resilience boxes its future.

use std::time::Duration;

use benches::{Passthrough, PerCall, allocations_per_call, runtime, time_calls};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceExt};
use tower_resilience::timelimiter::TimeLimiterLayer;
use tower_timeout_budget::TimeoutBudgetLayer;

const CAP: Duration = Duration::from_secs(5);

fn ours(metrics: bool) -> TimeoutBudgetLayer {
    TimeoutBudgetLayer::builder()
        .cap(CAP)
        .metrics(metrics)
        .name("bench")
        .build()
        .expect("a valid cap")
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("timeout");
    group.bench_function("passthrough", |b| {
        let mut svc = Passthrough;
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("timeout_budget", |b| {
        let mut svc = ours(false).layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("timeout_budget_red_no_recorder", |b| {
        let mut svc = ours(true).layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_timeout", |b| {
        let mut svc = tower::timeout::TimeoutLayer::new(CAP).layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_resilience_timelimiter", |b| {
        let mut svc = TimeLimiterLayer::builder()
            .timeout_duration(CAP)
            .build()
            .layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.finish();

    let allocs =
        |name: &str, per_call: PerCall| println!("allocations per call: {name} {per_call}");
    allocs(
        "passthrough",
        allocations_per_call(&rt, 10_000, || Passthrough.oneshot(1)),
    );
    let svc = ours(false).layer(Passthrough);
    allocs(
        "timeout_budget",
        allocations_per_call(&rt, 10_000, || ready_and_call(svc.clone())),
    );
    let svc = ours(true).layer(Passthrough);
    allocs(
        "timeout_budget_red_no_recorder",
        allocations_per_call(&rt, 10_000, || ready_and_call(svc.clone())),
    );
    let svc = tower::timeout::TimeoutLayer::new(CAP).layer(Passthrough);
    allocs(
        "tower_timeout",
        allocations_per_call(&rt, 10_000, || ready_and_call(svc.clone())),
    );
    let svc = TimeLimiterLayer::builder()
        .timeout_duration(CAP)
        .build()
        .layer(Passthrough);
    allocs(
        "tower_resilience_timelimiter",
        allocations_per_call(&rt, 10_000, || ready_and_call(svc.clone())),
    );
}

async fn ready_and_call<S>(mut svc: S)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    let svc = svc.ready().await.expect("ready");
    std::hint::black_box(svc.call(1).await.expect("call"));
}

criterion_group!(benches, bench);
criterion_main!(benches);
