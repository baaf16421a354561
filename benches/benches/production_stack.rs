//! RED in a stack: the whole production client and server stacks of the workspace README, with
//! metrics-exporter-prometheus installed as the global recorder (with upkeep, by
//! `tower_red::prometheus::install`), against tower-resilience 0.13's four-layer stack (time
//! limiter, retry, circuit breaker, bulkhead) with its own metrics, in the same run.
//!
//! ```sh
//! cargo bench -p benches --features peer-metrics --bench production_stack
//! ```
//!
//! Without `--features peer-metrics` tower-resilience is built without its `metrics` feature:
//! the peer group is then labelled `tower_resilience_without_metrics`.
//!
//! Each stack is measured three ways: built before any recorder was installed (`no_recorder`:
//! every handle a no-op), built after with the inner layers inside
//! [`tower_red::red::counts_only`] (`prometheus`: the outermost `RedLayer` records the one
//! duration, the layers inside count their outcomes), and built after with every layer
//! recording its durations (`prometheus_every_layer_durations`: each layer as if it stood
//! alone). The client's request is a GET built from a static URI with no header (a reqwest GET
//! as the caller builds it: reqwest adds its default headers below every layer; no allocation of
//! its own), so `IdempotencyKeyLayer` adds no key (it adds one to POST and PATCH only) and the
//! retry layer copies it (a GET is safe to retry). The server's carries the headers `curl`
//! sends.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};
use std::time::Duration;

use benches::{PerCall, allocations_per_call_in_place, runtime, time_calls};
use criterion::{Criterion, criterion_group};
use http::{Request, Response, Uri};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_breaker::BreakerLayer;
use tower_bulkhead::BulkheadLayer;
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::client::IdempotencyKeyLayer;
use tower_idempotency::stack::{ClientStack, ServerStack};
use tower_idempotency::store::MemoryStore;
use tower_red::problem::ProblemLayer;
use tower_red::{BoxError, RedLayer};
use tower_retry_jitter::{RetryLayer, RetryOn};
use tower_timeout_budget::TimeoutBudgetLayer;
use tower_timeout_budget::inbound::InboundDeadlineLayer;
use tower_timeout_budget::outbound::OutboundDeadlineLayer;

/// Calls counted for the allocations per call.
const COUNTED: u32 = 10_000;

/// An always-ready HTTP service answering 200 with an empty `String` body (no allocation).
#[derive(Debug, Clone, Copy, Default)]
struct HttpPassthrough;

impl<B> Service<Request<B>> for HttpPassthrough {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        ready(Ok(Response::new(String::new())))
    }
}

/// A client's GET: a static URI with a host (the client `RedLayer` labels it), no header, no
/// extension: building it allocates nothing.
fn client_request() -> Request<String> {
    let mut req = Request::new(String::new());
    *req.uri_mut() = Uri::from_static("http://payments.internal:8080/charges/7");
    req
}

/// A server's GET as a router hands it on: the headers `curl` sends (`host`, `user-agent`,
/// `accept`: every layer that reads headers reads these, as on the wire) and the route template
/// in its extensions (axum puts its `MatchedPath` there). The header map and the extensions'
/// boxed map are the caller's allocations, counted in the baseline too.
fn server_request() -> Request<String> {
    let mut req = Request::new(String::new());
    *req.uri_mut() = Uri::from_static("/orders/7");
    let headers = req.headers_mut();
    headers.insert(
        http::header::HOST,
        http::HeaderValue::from_static("orders.internal:8080"),
    );
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("curl/8.5.0"),
    );
    headers.insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
    req.extensions_mut()
        .insert(tower_red::http::RouteTemplate("/orders/{id}"));
    req
}

/// The README's client stack as `ClientStack::builder` assembles it, outermost first:
/// `RedLayer::client()`, `IdempotencyKeyLayer`, `TimeoutBudgetLayer` (2 s), `RetryLayer`
/// (HTTP), `BreakerLayer` (`http_status`), `BulkheadLayer` (32), `OutboundDeadlineLayer`, over
/// [`HttpPassthrough`]: the inner layers built inside `counts_only`, the deadline in the
/// task-local scope only. `name` names every layer's series (distinct per variant, so no two
/// live instances merge).
fn client_stack(
    name: &'static str,
) -> impl Service<Request<String>, Response = Response<String>, Error = BoxError> + Clone {
    ClientStack::builder(name)
        .http_status()
        .total_budget(Duration::from_secs(2))
        .bulkhead(|b| b.max_concurrent(32))
        .build()
        .expect("a valid client stack")
        .layer(HttpPassthrough)
}

/// The same layers built one by one, each recording its durations as if it stood alone.
fn client_stack_every_layer_timing(
    name: &'static str,
) -> impl Service<Request<String>, Response = Response<String>, Error = BoxError> + Clone {
    ServiceBuilder::new()
        .layer(RedLayer::client())
        .layer(IdempotencyKeyLayer::new())
        .layer(
            TimeoutBudgetLayer::builder()
                .name(name)
                .cap(Duration::from_secs(2))
                .carry_in_extensions(false)
                .http_status()
                .build()
                .expect("a valid cap"),
        )
        .layer(
            RetryLayer::builder()
                .name(name)
                .retry_on(RetryOn::new())
                .build()
                .expect("a valid retry"),
        )
        .layer(
            BreakerLayer::builder()
                .name(name)
                .http_status()
                .build()
                .expect("a valid breaker"),
        )
        .layer(
            BulkheadLayer::builder()
                .name(name)
                .max_concurrent(32)
                .classifier(tower_red::classify::HttpStatus::new())
                .build()
                .expect("a valid bulkhead"),
        )
        .layer(
            OutboundDeadlineLayer::builder()
                .name(name)
                .carry_in_extensions(false)
                .http_status()
                .build()
                .expect("a valid outbound deadline"),
        )
        .service(HttpPassthrough)
}

/// The README's server stack as `ServerStack::builder` assembles it, outermost first:
/// `RedLayer::server()`, `ProblemLayer`, `InboundDeadlineLayer` (2 s), `IdempotencyLayer`
/// (in-memory store), `BulkheadLayer` (64), `BreakerLayer` (`http_status`), over
/// [`HttpPassthrough`].
fn server_stack(
    name: &'static str,
) -> impl Service<Request<String>, Error: std::fmt::Debug> + Clone {
    ServerStack::builder(name)
        .http_status()
        .deadline_cap(Duration::from_secs(2))
        .idempotency(move || idempotency(name))
        .bulkhead(|b| b.max_concurrent(64))
        .build()
        .expect("a valid server stack")
        .layer(HttpPassthrough)
}

fn idempotency(
    name: &'static str,
) -> Result<IdempotencyLayer<MemoryStore>, tower_red::ConfigError> {
    IdempotencyLayer::builder(MemoryStore::new())
        .name(name)
        .build()
}

/// The same layers built one by one, each recording its durations as if it stood alone.
fn server_stack_every_layer_timing(
    name: &'static str,
) -> impl Service<Request<String>, Error: std::fmt::Debug> + Clone {
    ServiceBuilder::new()
        .layer(RedLayer::server())
        .layer(ProblemLayer::new())
        .layer(
            InboundDeadlineLayer::builder()
                .name(name)
                .cap(Duration::from_secs(2))
                .carry_in_extensions(false)
                .http_status()
                .build()
                .expect("a valid inbound deadline"),
        )
        .layer(idempotency(name).expect("a valid idempotency layer"))
        .layer(
            BulkheadLayer::builder()
                .name(name)
                .max_concurrent(64)
                .classifier(tower_red::classify::HttpStatus::new())
                .build()
                .expect("a valid bulkhead"),
        )
        .layer(
            BreakerLayer::builder()
                .name(name)
                .http_status()
                .build()
                .expect("a valid breaker"),
        )
        .service(HttpPassthrough)
}

/// tower-resilience 0.13's four layers over the same passthrough: time limiter, retry (3
/// attempts), circuit breaker (window of 100), bulkhead (limit 32), outermost first; the
/// order of ours (timeout, retry, breaker, bulkhead).
fn peer_stack()
-> impl Service<Request<String>, Response = Response<String>, Error: std::fmt::Debug> + Clone {
    use tower_resilience::bulkhead::{BulkheadLayer, BulkheadServiceError};
    use tower_resilience::circuitbreaker::{CircuitBreakerError, CircuitBreakerLayer};
    use tower_resilience::retry::RetryLayer;
    use tower_resilience::timelimiter::TimeLimiterLayer;
    type Inner = CircuitBreakerError<BulkheadServiceError<Infallible>>;
    ServiceBuilder::new()
        .layer(
            TimeLimiterLayer::builder()
                .name("peer")
                .timeout_duration(Duration::from_secs(2))
                .build(),
        )
        .layer(
            RetryLayer::<Request<String>, Response<String>, Inner>::builder()
                .name("peer")
                .max_attempts(3)
                .exponential_backoff(Duration::from_millis(100))
                .build(),
        )
        .layer(
            CircuitBreakerLayer::builder()
                .name("peer")
                .failure_rate_threshold(0.5)
                .sliding_window_size(100)
                .minimum_number_of_calls(100)
                .build()
                .expect("a valid breaker"),
        )
        .layer(
            BulkheadLayer::builder()
                .name("peer")
                .max_concurrent_calls(32)
                .reject_when_full()
                .build()
                .expect("a valid bulkhead"),
        )
        .service(HttpPassthrough)
}

/// The peer group's label: whether tower-resilience was built with its `metrics` feature.
const PEER: &str = if cfg!(feature = "peer-metrics") {
    "tower_resilience_metrics_prometheus"
} else {
    "tower_resilience_without_metrics"
};

/// One call through `svc`, so per-route and per-host series are registered before timing.
fn warm<S, Req>(rt: &tokio::runtime::Runtime, svc: &mut S, req: Req)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let svc = svc.ready().await.expect("ready");
        std::hint::black_box(svc.call(req).await.expect("call"));
    });
}

fn bench(c: &mut Criterion) {
    let rt = runtime();

    // Built before any recorder is installed: every handle is a no-op for life.
    let mut client_none = client_stack("none");
    let mut server_none = server_stack("none");

    let _handle = tower_red::prometheus::install().expect("the global Prometheus recorder");
    let mut client_in_stack = client_stack("in-stack");
    let mut client_every = client_stack_every_layer_timing("every");
    let mut server_in_stack = server_stack("in-stack");
    let mut server_every = server_stack_every_layer_timing("every");
    let mut peer = peer_stack();
    warm(&rt, &mut client_in_stack, client_request());
    warm(&rt, &mut client_every, client_request());
    warm(&rt, &mut server_in_stack, server_request());
    warm(&rt, &mut server_every, server_request());
    warm(&rt, &mut peer, client_request());

    let mut group = c.benchmark_group("production_stack/client");
    group.bench_function("passthrough", |b| {
        let mut svc = HttpPassthrough;
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, client_request))
    });
    group.bench_function("ours_no_recorder", |b| {
        b.iter_custom(|n| time_calls(&rt, &mut client_none, n, client_request))
    });
    group.bench_function("ours_prometheus", |b| {
        b.iter_custom(|n| time_calls(&rt, &mut client_in_stack, n, client_request))
    });
    group.bench_function("ours_prometheus_every_layer_durations", |b| {
        b.iter_custom(|n| time_calls(&rt, &mut client_every, n, client_request))
    });
    group.bench_function(PEER, |b| {
        b.iter_custom(|n| time_calls(&rt, &mut peer, n, client_request))
    });
    group.finish();

    let mut group = c.benchmark_group("production_stack/server");
    group.bench_function("passthrough", |b| {
        let mut svc = HttpPassthrough;
        b.iter_custom(|n| time_calls(&rt, &mut svc, n, server_request))
    });
    group.bench_function("ours_no_recorder", |b| {
        b.iter_custom(|n| time_calls(&rt, &mut server_none, n, server_request))
    });
    group.bench_function("ours_prometheus", |b| {
        b.iter_custom(|n| time_calls(&rt, &mut server_in_stack, n, server_request))
    });
    group.bench_function("ours_prometheus_every_layer_durations", |b| {
        b.iter_custom(|n| time_calls(&rt, &mut server_every, n, server_request))
    });
    group.finish();

    // Exact allocations per call, steady state, one service driven in place; the request's
    // own allocations are those of the passthrough line.
    let report = |name: &str, per_call: PerCall| {
        println!("allocations per call: {name} {per_call}");
    };
    report(
        "client passthrough",
        allocations_per_call_in_place(&rt, &mut HttpPassthrough, COUNTED, client_request),
    );
    report(
        "client ours_no_recorder",
        allocations_per_call_in_place(&rt, &mut client_none, COUNTED, client_request),
    );
    report(
        "client ours_prometheus",
        allocations_per_call_in_place(&rt, &mut client_in_stack, COUNTED, client_request),
    );
    report(
        "client ours_prometheus_every_layer_durations",
        allocations_per_call_in_place(&rt, &mut client_every, COUNTED, client_request),
    );
    report(
        &format!("client {PEER}"),
        allocations_per_call_in_place(&rt, &mut peer, COUNTED, client_request),
    );
    report(
        "server passthrough",
        allocations_per_call_in_place(&rt, &mut HttpPassthrough, COUNTED, server_request),
    );
    report(
        "server ours_no_recorder",
        allocations_per_call_in_place(&rt, &mut server_none, COUNTED, server_request),
    );
    report(
        "server ours_prometheus",
        allocations_per_call_in_place(&rt, &mut server_in_stack, COUNTED, server_request),
    );
    report(
        "server ours_prometheus_every_layer_durations",
        allocations_per_call_in_place(&rt, &mut server_every, COUNTED, server_request),
    );
}

/// `STACK_CALLS=N target/release/deps/production_stack-* STACK` runs `N` calls through one
/// stack and exits, for `valgrind --tool=callgrind --toggle-collect='*instructions::run*'`:
/// instructions per call are `(refs at N - refs at 0) / N`, exact whatever the load. `STACK`
/// is `client/passthrough`, `client/ours_no_recorder`, `client/ours_prometheus`,
/// `client/ours_prometheus_every_layer_durations`, `client/peer`, or the same `server/…`
/// (no peer). Built with the feature `stack-time`, it prints the wall time per call, in ns.
fn instructions(stack: &str, calls: u64) {
    // Out of line, for `--toggle-collect='*instructions::run*'`: counts only this, not the
    // recorder's install (quanta's clock calibration runs for as long as it takes).
    #[inline(never)]
    fn run<S, Req>(mut svc: S, calls: u64, request: fn() -> Req)
    where
        S: Service<Req>,
        S::Error: std::fmt::Debug,
    {
        let rt = runtime();
        warm(&rt, &mut svc, request());
        #[cfg(not(feature = "stack-time"))]
        std::hint::black_box(time_calls(&rt, &mut svc, calls, request));
        // A build of its own (`benches/stack_rounds.sh`): any timing code in here changes how
        // the compiler inlines the stack into the loop that callgrind counts (by up to 68
        // instructions a call of the server stack), so the counted build has none.
        #[cfg(feature = "stack-time")]
        {
            let elapsed = time_calls(&rt, &mut svc, calls, request);
            println!("{:.1}", elapsed.as_nanos() as f64 / calls.max(1) as f64);
        }
    }
    let (side, variant) = stack.split_once('/').expect("side/variant");
    if variant != "ours_no_recorder" {
        tower_red::prometheus::install().expect("the global Prometheus recorder");
    }
    match (side, variant) {
        ("client", "passthrough") => run(HttpPassthrough, calls, client_request),
        ("server", "passthrough") => run(HttpPassthrough, calls, server_request),
        ("client", "peer") => run(peer_stack(), calls, client_request),
        ("client", "ours_no_recorder" | "ours_prometheus") => {
            run(client_stack("i"), calls, client_request)
        }
        ("server", "ours_no_recorder" | "ours_prometheus") => {
            run(server_stack("i"), calls, server_request)
        }
        ("client", _) => run(client_stack_every_layer_timing("i"), calls, client_request),
        ("server", _) => run(server_stack_every_layer_timing("i"), calls, server_request),
        _ => panic!("unknown stack {stack}"),
    }
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(calls) = std::env::var("STACK_CALLS") {
        let stack = std::env::args().nth(1).expect("a stack name");
        instructions(&stack, calls.parse().expect("a number of calls"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
