//! The cost of RED recording: `RedLayer` over an HTTP passthrough and the per-layer
//! `RedMetrics` recording every resilience layer does, with no recorder and with
//! metrics-exporter-prometheus's recorder.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use benches::{Passthrough, allocations_per_call, runtime, time_calls};
use criterion::{Criterion, criterion_group, criterion_main};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{Layer, Service, ServiceExt};
use tower_red::clock::{self, Scope};
use tower_red::red::{Outcome, RedMetrics};
use tower_red::{RedLayer, names};

/// The smallest layer that records RED the way the resilience layers do: a `clock::Scope` in
/// `call` and `poll` (one clock pair per stack) and one `RedMetrics::record` per call.
#[derive(Clone)]
struct Recorded<S> {
    inner: S,
    red: RedMetrics,
}

impl<S: Service<u64>> Service<u64> for Recorded<S>
where
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RecordedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: u64) -> Self::Future {
        // As the layers do: no clock read when no recorder keeps the duration.
        let recording = self.red.is_recording();
        let _scope = recording.then(Scope::enter);
        let start = recording.then(clock::now);
        RecordedFuture {
            inner: self.inner.call(req),
            red: self.red.clone(),
            start,
        }
    }
}

struct RecordedFuture<F> {
    inner: F,
    red: RedMetrics,
    start: Option<tokio::time::Instant>,
}

impl<F, T, E> std::future::Future for RecordedFuture<F>
where
    F: std::future::Future<Output = Result<T, E>> + Unpin,
{
    type Output = Result<T, E>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _scope = self.start.is_some().then(Scope::enter);
        let out = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll(cx));
        let outcome = if out.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        };
        let elapsed = self
            .start
            .map_or(std::time::Duration::ZERO, |start| clock::now() - start);
        self.red.record(outcome, elapsed);
        Poll::Ready(out)
    }
}

/// An always-ready HTTP service answering 200 with an empty body.
#[derive(Clone, Copy)]
struct HttpPassthrough;

impl Service<http::Request<()>> for HttpPassthrough {
    type Response = http::Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<http::Response<()>, Infallible>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _req: http::Request<()>) -> Self::Future {
        ready(Ok(http::Response::new(())))
    }
}

fn http_request() -> http::Request<()> {
    let mut req = http::Request::get("/users/7").body(()).expect("a request");
    req.extensions_mut()
        .insert(tower_red::http::RouteTemplate("/users/{id}"));
    req
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let prometheus = PrometheusBuilder::new().build_recorder();

    let mut group = c.benchmark_group("red");
    group.bench_function("passthrough", |b| {
        let mut svc = Passthrough;
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
    });
    for (label, with_prometheus) in [("no_recorder", false), ("prometheus", true)] {
        let build = || RedMetrics::new(names::layer::BREAKER, "bench");
        let red = if with_prometheus {
            metrics::with_local_recorder(&prometheus, build)
        } else {
            build()
        };
        group.bench_function(format!("per_layer_record/{label}"), |b| {
            let mut svc = Recorded {
                inner: Passthrough,
                red: red.clone(),
            };
            b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
        });
        group.bench_function(format!("four_layers_record/{label}"), |b| {
            // Four nested recording layers over the passthrough.
            let inner = Recorded {
                inner: Passthrough,
                red: red.clone(),
            };
            let mut svc = Recorded {
                inner: Recorded {
                    inner: Recorded {
                        inner,
                        red: red.clone(),
                    },
                    red: red.clone(),
                },
                red: red.clone(),
            };
            b.iter_custom(|n| time_calls(&rt, &mut svc, n, || 1))
        });
        group.bench_function(format!("record_only/{label}"), |b| {
            b.iter(|| {
                red.record(
                    Outcome::Ok,
                    std::hint::black_box(std::time::Duration::from_micros(3)),
                )
            })
        });
    }
    group.bench_function("http_passthrough", |b| {
        let mut svc = HttpPassthrough;
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, http_request))
    });
    for (label, with_prometheus) in [("no_recorder", false), ("prometheus", true)] {
        let layer = if with_prometheus {
            metrics::with_local_recorder(&prometheus, RedLayer::server)
        } else {
            RedLayer::server()
        };
        // Series handles for this label set are registered on the first call; do it under the
        // same recorder so the steady state is measured.
        let mut svc = layer.layer(HttpPassthrough);
        metrics::with_local_recorder(&prometheus, || {
            rt.block_on(async {
                svc.ready()
                    .await
                    .expect("ready")
                    .call(http_request())
                    .await
                    .expect("call")
            })
        });
        group.bench_function(format!("red_layer_server/{label}"), |b| {
            b.iter_custom(|n| time_calls(&rt, &mut svc, n, http_request))
        });
    }
    group.finish();

    // Exact allocation counts per call, steady state (cloning these services clones `Arc`s only).
    let red = metrics::with_local_recorder(&prometheus, || {
        RedMetrics::new(names::layer::BREAKER, "allocs")
    });
    let layered = Recorded {
        inner: Passthrough,
        red,
    };
    let per_layer = allocations_per_call(&rt, 10_000, || {
        let mut svc = layered.clone();
        async move { svc.ready_and_call(1).await }
    });
    let red_layer =
        metrics::with_local_recorder(&prometheus, RedLayer::server).layer(HttpPassthrough);
    let req = http_request();
    let red_layer_allocs = allocations_per_call(&rt, 10_000, || {
        let mut svc = red_layer.clone();
        let req = clone_request(&req);
        async move { svc.ready_and_call(req).await }
    });
    let bare_allocs = allocations_per_call(&rt, 10_000, || {
        let req = clone_request(&req);
        async move { HttpPassthrough.ready_and_call(req).await }
    });
    println!("allocations per call (prometheus recorder): per-layer RED {per_layer}");
    println!(
        "allocations per call (prometheus recorder): RedLayer server {red_layer_allocs}, its passthrough alone {bare_allocs} (both include building the request)"
    );
}

fn clone_request(req: &http::Request<()>) -> http::Request<()> {
    let mut out = http::Request::new(());
    *out.uri_mut() = req.uri().clone();
    out.extensions_mut()
        .insert(tower_red::http::RouteTemplate("/users/{id}"));
    out
}

trait ReadyAndCall<Req>: Service<Req> + Sized {
    fn ready_and_call(&mut self, req: Req) -> impl std::future::Future<Output = ()>;
}

impl<S, Req> ReadyAndCall<Req> for S
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    async fn ready_and_call(&mut self, req: Req) {
        let svc = self.ready().await.expect("ready");
        std::hint::black_box(svc.call(req).await.expect("call"));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
