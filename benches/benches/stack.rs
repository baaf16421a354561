//! Layers stacked as a service would use them: deadline, bulkhead and breaker over the
//! passthrough, against the nearest stacks of tower and tower-resilience, with no recorder and
//! with metrics-exporter-prometheus's recorder.

use std::time::Duration;

use benches::{Passthrough, PerCall, allocations_per_call, runtime, time_calls};
use criterion::{Criterion, criterion_group, criterion_main};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_breaker::BreakerLayer;
use tower_bulkhead::BulkheadLayer;
use tower_timeout_budget::TimeoutBudgetLayer;

const CAP: Duration = Duration::from_secs(1);
const LIMIT: usize = 1_000;

/// Ours: the deadline outermost, then the bulkhead, then the breaker (count window of 100).
fn ours(
    metrics: bool,
) -> impl Service<u64, Response = u64, Error = tower_red::BoxError, Future: Send> + Clone + Send {
    ServiceBuilder::new()
        .layer(
            TimeoutBudgetLayer::builder()
                .cap(CAP)
                .name("bench")
                .metrics(metrics)
                .build()
                .expect("a valid cap"),
        )
        .layer(
            BulkheadLayer::builder()
                .name("bench")
                .max_concurrent(LIMIT)
                .metrics(metrics)
                .build()
                .expect("a valid bulkhead"),
        )
        .layer(
            BreakerLayer::builder()
                .name("bench")
                .count_window(100)
                .minimum_calls(100)
                .metrics(metrics)
                .build()
                .expect("a valid breaker"),
        )
        .service(Passthrough)
}

/// tower's nearest stack: `Timeout` and `ConcurrencyLimit` (tower has no breaker).
fn tower_stack() -> impl Service<u64, Response = u64, Error = tower::BoxError> + Clone {
    ServiceBuilder::new()
        .layer(tower::timeout::TimeoutLayer::new(CAP))
        .layer(tower::limit::ConcurrencyLimitLayer::new(LIMIT))
        .service(Passthrough)
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let prometheus = PrometheusBuilder::new().build_recorder();

    let mut group = c.benchmark_group("stack");
    group.bench_function("passthrough", |b| {
        let mut svc = Passthrough;
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("ours_metrics_off", |b| {
        let mut svc = ours(false);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("ours_metrics_on_no_recorder", |b| {
        let mut svc = ours(true);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("ours_metrics_on_prometheus", |b| {
        let mut svc = metrics::with_local_recorder(&prometheus, || ours(true));
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_timeout_concurrency_limit", |b| {
        let mut svc = tower_stack();
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_resilience_timelimiter_bulkhead_breaker", |b| {
        let mut svc = ServiceBuilder::new()
            .layer(
                tower_resilience::timelimiter::TimeLimiterLayer::builder()
                    .timeout_duration(CAP)
                    .build(),
            )
            .layer(
                tower_resilience::bulkhead::BulkheadLayer::builder()
                    .max_concurrent_calls(LIMIT)
                    .reject_when_full()
                    .build()
                    .expect("a valid bulkhead"),
            )
            .layer(
                tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                    .failure_rate_threshold(0.5)
                    .sliding_window_size(100)
                    .minimum_number_of_calls(100)
                    .build()
                    .expect("a valid breaker"),
            )
            .service(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.finish();

    let report =
        |name: &str, per_call: PerCall| println!("allocations per call: {name} {per_call}");
    let svc = ours(false);
    report(
        "ours_metrics_off",
        allocations_per_call(&rt, 10_000, || svc.clone().oneshot(1)),
    );
    let svc = ours(true);
    report(
        "ours_metrics_on_no_recorder",
        allocations_per_call(&rt, 10_000, || svc.clone().oneshot(1)),
    );
    let svc = metrics::with_local_recorder(&prometheus, || ours(true));
    report(
        "ours_metrics_on_prometheus",
        allocations_per_call(&rt, 10_000, || svc.clone().oneshot(1)),
    );
    let svc = tower_stack();
    report(
        "tower_timeout_concurrency_limit",
        allocations_per_call(&rt, 10_000, || svc.clone().oneshot(1)),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
