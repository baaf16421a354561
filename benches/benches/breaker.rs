//! Circuit breakers, closed path: overhead over the passthrough of `tower-breaker`, of
//! tower-resilience 0.13's circuit breaker, of recloser 1.4 and of failsafe 1.3, on one
//! thread and with two threads sharing one breaker; and the cost of a rejection when open.
//!
//! recloser and failsafe are not Tower services: each gets the thinnest `Service` adapter
//! (admit in `call`, report the outcome when the future completes), as a user would write.

use std::convert::Infallible;
use std::future::{Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use benches::{
    Passthrough, PerCall, allocations_per_call, allocations_per_u64_call, runtime, time_calls,
    time_calls_on_two_threads,
};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceExt};
use tower_breaker::BreakerLayer;

/// recloser's `AsyncRecloser` as a `Service`.
#[derive(Clone)]
struct Recloser {
    inner: Passthrough,
    breaker: recloser::AsyncRecloser,
}

impl Service<u64> for Recloser {
    type Response = u64;
    type Error = recloser::Error<Infallible>;
    type Future = recloser::RecloserFuture<Ready<Result<u64, Infallible>>, recloser::AnyError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        self.breaker.call(self.inner.call(req))
    }
}

/// failsafe's `StateMachine` as a `Service`.
struct Failsafe<P, I> {
    inner: Passthrough,
    breaker: failsafe::StateMachine<P, I>,
}

impl<P, I> Clone for Failsafe<P, I> {
    fn clone(&self) -> Self {
        Failsafe {
            inner: Passthrough,
            breaker: self.breaker.clone(),
        }
    }
}

struct FailsafeFuture<P, I> {
    inner: Option<Ready<Result<u64, Infallible>>>,
    breaker: failsafe::StateMachine<P, I>,
}

impl<P: failsafe::FailurePolicy, I: failsafe::Instrument> Future for FailsafeFuture<P, I> {
    type Output = Result<u64, &'static str>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err("rejected"));
        };
        match Pin::new(inner).poll(cx) {
            Poll::Ready(Ok(v)) => {
                self.breaker.on_success();
                Poll::Ready(Ok(v))
            }
            Poll::Ready(Err(e)) => match e {},
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<P, I> Service<u64> for Failsafe<P, I>
where
    P: failsafe::FailurePolicy,
    I: failsafe::Instrument,
{
    type Response = u64;
    type Error = &'static str;
    type Future = FailsafeFuture<P, I>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        let inner = self
            .breaker
            .is_call_permitted()
            .then(|| self.inner.call(req));
        FailsafeFuture {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

fn ours(metrics: bool) -> BreakerLayer {
    BreakerLayer::builder()
        .name("bench")
        .count_window(100)
        .minimum_calls(100)
        .metrics(metrics)
        .build()
        .expect("a valid config")
}

fn resilience() -> tower_resilience::circuitbreaker::CircuitBreakerLayer<
    tower_resilience::circuitbreaker::DefaultClassifier,
> {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .minimum_number_of_calls(100)
        .build()
        .expect("a valid config")
}

fn recloser() -> Recloser {
    Recloser {
        inner: Passthrough,
        breaker: recloser::Recloser::custom()
            .error_rate(0.5)
            .closed_len(100)
            .build()
            .into(),
    }
}

fn failsafe() -> impl Service<u64, Response = u64, Error = &'static str> + Clone + Send + 'static {
    Failsafe {
        inner: Passthrough,
        breaker: failsafe::Config::new().build(),
    }
}

/// `iters` refused calls; the error is dropped.
fn time_rejections<S: Service<u64>>(
    rt: &tokio::runtime::Runtime,
    svc: &mut S,
    iters: u64,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let ready = svc.ready().await;
            let svc = match ready {
                Ok(svc) => svc,
                Err(_) => panic!("poll_ready failed"),
            };
            std::hint::black_box(svc.call(1).await.is_err());
        }
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let rt = runtime();

    let mut group = c.benchmark_group("breaker_closed");
    group.bench_function("passthrough", |b| {
        let mut svc = Passthrough;
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_breaker", |b| {
        let mut svc = ours(true).layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_breaker_no_metrics", |b| {
        let mut svc = ours(false).layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_resilience", |b| {
        let mut svc = resilience().layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("recloser", |b| {
        let mut svc = recloser();
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("failsafe", |b| {
        let mut svc = failsafe();
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.finish();

    let mut group = c.benchmark_group("breaker_two_threads");
    group.bench_function("passthrough", |b| {
        b.iter_custom(|n| time_calls_on_two_threads(&Passthrough, n))
    });
    group.bench_function("tower_breaker", |b| {
        let svc = ours(true).layer(Passthrough);
        b.iter_custom(|n| time_calls_on_two_threads(&svc, n))
    });
    group.bench_function("tower_breaker_no_metrics", |b| {
        let svc = ours(false).layer(Passthrough);
        b.iter_custom(|n| time_calls_on_two_threads(&svc, n))
    });
    group.bench_function("tower_resilience", |b| {
        let svc = resilience().layer(Passthrough);
        b.iter_custom(|n| time_calls_on_two_threads(&svc, n))
    });
    group.bench_function("recloser", |b| {
        let svc = recloser();
        b.iter_custom(|n| time_calls_on_two_threads(&svc, n))
    });
    group.bench_function("failsafe", |b| {
        let svc = failsafe();
        b.iter_custom(|n| time_calls_on_two_threads(&svc, n))
    });
    group.finish();

    let mut group = c.benchmark_group("breaker_open");
    group.bench_function("tower_breaker_reject", |b| {
        let layer = ours(true);
        layer.handle().force_open();
        let mut svc = layer.layer(Passthrough);
        b.iter_custom(|n| time_rejections(&rt, &mut svc, n))
    });
    group.bench_function("tower_resilience_reject", |b| {
        let layer = resilience();
        let mut svc = layer.layer(Passthrough);
        rt.block_on(svc.force_open());
        b.iter_custom(|n| time_rejections(&rt, &mut svc, n))
    });
    group.finish();

    // Exact allocation counts per call, steady state.
    let report = |label: &str, allocs: PerCall| println!("allocations per call: {label} {allocs}");
    let svc = ours(true).layer(Passthrough);
    report("tower_breaker", allocations_per_u64_call(&rt, &svc));
    let svc = ours(false).layer(Passthrough);
    report(
        "tower_breaker_no_metrics",
        allocations_per_u64_call(&rt, &svc),
    );
    let svc = resilience().layer(Passthrough);
    report("tower_resilience", allocations_per_u64_call(&rt, &svc));
    let svc = recloser();
    report("recloser", allocations_per_u64_call(&rt, &svc));
    let svc = failsafe();
    report("failsafe", allocations_per_u64_call(&rt, &svc));
    let layer = ours(true);
    layer.handle().force_open();
    let svc = layer.layer(Passthrough);
    report(
        "tower_breaker rejection",
        allocations_per_call(&rt, 10_000, || {
            let mut svc = svc.clone();
            async move { svc.ready().await.expect("ready").call(1).await.is_err() }
        }),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
