//! The bulkhead's overhead with a free permit, over the passthrough, against
//! `tower::limit::ConcurrencyLimit` and tower-resilience 0.13's bulkhead: one thread (tokio
//! current-thread runtime) and two threads sharing one bulkhead (two current-thread runtimes on
//! two OS threads, each driving its own clone); then exact allocations per call.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::rc::Rc;

use benches::{Passthrough, allocations_per_call, runtime, time_calls, time_calls_on_two_threads};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::limit::ConcurrencyLimit;
use tower::{Layer, Service, ServiceExt};
use tower_bulkhead::BulkheadLayer;

const LIMIT: usize = 64;

fn ours(metrics: bool) -> tower_bulkhead::Bulkhead<Passthrough> {
    BulkheadLayer::builder()
        .name("bench")
        .max_concurrent(LIMIT)
        .metrics(metrics)
        .build()
        .expect("a valid configuration")
        .layer(Passthrough)
}

fn peer() -> tower_resilience::bulkhead::Bulkhead<Passthrough> {
    tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(LIMIT)
        .reject_when_full()
        .name("bench")
        .build()
        .expect("a valid configuration")
        .layer(Passthrough)
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let limit = NonZeroUsize::new(LIMIT).expect("not zero");

    let mut group = c.benchmark_group("bulkhead/one_thread");
    group.bench_function("passthrough", |b| {
        let mut svc = Passthrough;
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("ours", |b| {
        let mut svc = ours(false);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("ours_with_metrics_no_recorder", |b| {
        let mut svc = ours(true);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_concurrency_limit", |b| {
        let mut svc = ConcurrencyLimit::new(Passthrough, LIMIT);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_resilience_bulkhead", |b| {
        let mut svc = peer();
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.finish();

    let mut group = c.benchmark_group("bulkhead/two_threads");
    group.bench_function("passthrough", |b| {
        b.iter_custom(|n| time_calls_on_two_threads(&Passthrough, n))
    });
    group.bench_function("ours", |b| {
        let svc = ours(false);
        b.iter_custom(|n| time_calls_on_two_threads(&svc, n))
    });
    group.bench_function("ours_with_metrics_no_recorder", |b| {
        let svc = ours(true);
        b.iter_custom(|n| time_calls_on_two_threads(&svc, n))
    });
    group.bench_function("tower_concurrency_limit", |b| {
        let svc = ConcurrencyLimit::new(Passthrough, LIMIT);
        b.iter_custom(|n| time_calls_on_two_threads(&svc, n))
    });
    group.bench_function("tower_resilience_bulkhead", |b| {
        let svc = peer();
        b.iter_custom(|n| time_calls_on_two_threads(&svc, n))
    });
    group.finish();

    // Exact allocations per call, steady state; the service is shared through an `Rc` so that
    // only the call itself is counted. One call runs at a time on one thread, so the borrow
    // held across the awaits is never contended.
    #[allow(clippy::await_holding_refcell_ref)]
    fn allocs<S>(rt: &tokio::runtime::Runtime, svc: S) -> benches::PerCall
    where
        S: Service<u64>,
        S::Error: std::fmt::Debug,
    {
        let svc = Rc::new(RefCell::new(svc));
        allocations_per_call(rt, 10_000, || {
            let svc = svc.clone();
            async move {
                let mut svc = svc.borrow_mut();
                let ready = svc.ready().await.expect("ready");
                ready.call(1).await.expect("call")
            }
        })
    }
    println!(
        "allocations per call: passthrough {}",
        allocs(&rt, Passthrough)
    );
    println!("allocations per call: ours {}", allocs(&rt, ours(false)));
    println!(
        "allocations per call: ours with metrics, no recorder {}",
        allocs(&rt, ours(true))
    );
    println!(
        "allocations per call: ours via Bulkhead::new {}",
        allocs(&rt, tower_bulkhead::Bulkhead::new(Passthrough, limit))
    );
    println!(
        "allocations per call: tower ConcurrencyLimit {}",
        allocs(&rt, ConcurrencyLimit::new(Passthrough, LIMIT))
    );
    println!(
        "allocations per call: tower-resilience bulkhead {}",
        allocs(&rt, peer())
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
