//! Retries, a call that is not retried: the overhead over the passthrough of
//! `tower-retry-jitter`, of tower 0.5's `Retry` with a trivial policy and of tower-resilience
//! 0.13's retry, in the same run; and what replaying an `http::Request` body costs (buffering
//! it, then one retry that sends it again at once).

use std::convert::Infallible;
use std::future::{Future, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use benches::{
    Passthrough, PerCall, allocations_per_call, allocations_per_u64_call, runtime, time_calls,
};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_retry_jitter::{RetryBody, RetryLayer};

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

/// Ours, as a client would set it up for `u64` requests (every one safe to retry): 3 attempts,
/// the default ratio budget (one clock read per request, to deposit), or none.
fn ours(budget: bool) -> RetryLayer<tower_red::classify::AnyError, tower_retry_jitter::AlwaysSafe> {
    ours_with(budget, 3)
}

/// Ours with `attempts` attempts; one attempt is the floor: a request that cannot be retried
/// is neither copied nor timed.
fn ours_with(
    budget: bool,
    attempts: u32,
) -> RetryLayer<tower_red::classify::AnyError, tower_retry_jitter::AlwaysSafe> {
    let builder = RetryLayer::builder().name("bench").max_attempts(attempts);
    let builder = if budget { builder } else { builder.no_budget() };
    builder.always_safe().build().expect("a valid config")
}

fn resilience() -> tower_resilience::retry::RetryLayer<u64, u64, Infallible> {
    tower_resilience::retry::RetryLayer::<u64, u64, Infallible>::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(100))
        .build()
}

/// Reads a request body to its end without keeping it; answers its length.
struct Drain<B> {
    body: B,
    len: usize,
}

impl<B: Body<Data = Bytes> + Unpin> Future for Drain<B> {
    type Output = Result<usize, &'static str>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.len += frame.data_ref().map_or(0, Bytes::len);
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Err("body")),
                Poll::Ready(None) => return Poll::Ready(Ok(self.len)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The server end of the HTTP benches: drains each body and answers 200; with
/// `fail_every_other`, every other call is a 503 with `Retry-After: 0`, so each request is
/// answered on its second attempt, sent at once (a zero pushback arms no timer).
#[derive(Clone)]
struct Sink {
    calls: Arc<AtomicU64>,
    fail_every_other: bool,
}

impl Sink {
    fn new(fail_every_other: bool) -> Self {
        Sink {
            calls: Arc::default(),
            fail_every_other,
        }
    }
}

type Req = http::Request<RetryBody<Full<Bytes>>>;

impl Service<Req> for Sink {
    type Response = http::Response<()>;
    type Error = &'static str;
    type Future = SinkFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> SinkFuture {
        // Relaxed: a bench-only counter on one thread.
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        SinkFuture {
            drain: Drain {
                body: req.into_body(),
                len: 0,
            },
            fail: self.fail_every_other && n.is_multiple_of(2),
        }
    }
}

struct SinkFuture {
    drain: Drain<RetryBody<Full<Bytes>>>,
    fail: bool,
}

impl Future for SinkFuture {
    type Output = Result<http::Response<()>, &'static str>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fail = self.fail;
        Pin::new(&mut self.drain).poll(cx).map(|r| {
            r.map(|_len| {
                let mut res = http::Response::new(());
                if fail {
                    *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    res.headers_mut().insert(
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("0"),
                    );
                }
                res
            })
        })
    }
}

fn http_layer() -> RetryLayer<
    tower_retry_jitter::RetryOn,
    tower_retry_jitter::Idempotent,
    tower_retry_jitter::BufferBody,
> {
    RetryLayer::builder()
        .name("bench_http")
        .max_attempts(2)
        .base(Duration::from_micros(1))
        .cap(Duration::from_micros(1))
        .no_budget()
        .retry_on(tower_retry_jitter::RetryOn::new())
        .buffer_body(64 * 1024)
        .build()
        .expect("a valid config")
}

fn request(method: http::Method, body: &Bytes) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::new(Full::new(body.clone()));
    *req.method_mut() = method;
    req
}

fn bench(c: &mut Criterion) {
    let rt = runtime();

    let mut group = c.benchmark_group("retry_not_retried");
    group.bench_function("passthrough", |b| {
        let mut svc = Passthrough;
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_retry_jitter", |b| {
        let mut svc = ours(true).layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_retry_jitter_no_budget", |b| {
        let mut svc = ours(false).layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_retry_jitter_cannot_retry", |b| {
        let mut svc = ours_with(false, 1).layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_retry", |b| {
        let mut svc = tower::retry::RetryLayer::new(Attempts(2)).layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.bench_function("tower_resilience", |b| {
        let mut svc = resilience().layer(Passthrough);
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    group.finish();

    let small = Bytes::from(vec![7u8; 1024]);
    let large = Bytes::from(vec![7u8; 64 * 1024]);
    let mut group = c.benchmark_group("retry_http_body");
    for (label, body) in [("1k", &small), ("64k", &large)] {
        // A POST without a key is never retried: its body goes through unbuffered.
        group.bench_function(format!("sent_once_{label}"), |b| {
            let mut svc = http_layer().layer(Sink::new(false));
            b.iter_custom(|n| time_calls(&rt, &mut svc, n, || request(http::Method::POST, body)))
        });
        // A PUT may be retried: its body is buffered, then sent from the buffer.
        group.bench_function(format!("buffered_{label}"), |b| {
            let mut svc = http_layer().layer(Sink::new(false));
            b.iter_custom(|n| time_calls(&rt, &mut svc, n, || request(http::Method::PUT, body)))
        });
    }
    group.bench_function("retried_once_1k", |b| {
        let mut svc = http_layer().layer(Sink::new(true));
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || request(http::Method::PUT, &small)))
    });
    group.finish();

    // Exact allocation counts per call, steady state.
    let report = |label: &str, allocs: PerCall| println!("allocations per call: {label} {allocs}");
    report(
        "tower_retry_jitter",
        allocations_per_u64_call(&rt, &ours(true).layer(Passthrough)),
    );
    report(
        "tower_retry_jitter_no_budget",
        allocations_per_u64_call(&rt, &ours(false).layer(Passthrough)),
    );
    report(
        "tower_retry_jitter_cannot_retry",
        allocations_per_u64_call(&rt, &ours_with(false, 1).layer(Passthrough)),
    );
    report(
        "tower_retry",
        allocations_per_u64_call(
            &rt,
            &tower::retry::RetryLayer::new(Attempts(2)).layer(Passthrough),
        ),
    );
    report(
        "tower_resilience",
        allocations_per_u64_call(&rt, &resilience().layer(Passthrough)),
    );
    for (label, method, fail, rt) in [
        ("http sent_once_1k", http::Method::POST, false, &rt),
        ("http buffered_1k", http::Method::PUT, false, &rt),
        ("http retried_once_1k", http::Method::PUT, true, &rt),
    ] {
        let svc = http_layer().layer(Sink::new(fail));
        report(
            label,
            allocations_per_call(rt, 10_000, || {
                let svc = svc.clone();
                let req = request(method.clone(), &small);
                async move { svc.oneshot(req).await.expect("call") }
            }),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
