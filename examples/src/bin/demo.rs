//! The main demo: an axum server on loopback behind `RedLayer` and the problem+json adapter,
//! driven by a bounded reqwest load in which some requests fail and some are refused, then the
//! RED metrics in Prometheus text format.
//!
//! ```text
//! cargo run -p examples --bin demo            # load, then print results and metrics
//! cargo run -p examples --bin demo -- --serve # keep the server up for curl (--port N to pick)
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use futures::{StreamExt, stream};
use http::StatusCode;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tower::{Layer, Service, ServiceBuilder};
use tower_red::problem::ProblemLayer;
use tower_red::{BoxError, RedLayer, Rejection, RejectionKind, names};

const REQUESTS: usize = 400;
const CONCURRENCY: usize = 8;
const LOAD_LIMIT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let serve = args.iter().any(|a| a == "--serve");
    let buckets_too = args.iter().any(|a| a == "--buckets");
    let port: u16 = match args.iter().position(|a| a == "--port") {
        Some(i) => args.get(i + 1).ok_or("--port needs a value")?.parse()?,
        None => 0,
    };

    let buckets = &names::HTTP_DURATION_BUCKETS;
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), buckets)?
        .install_recorder()?;
    tower_red::describe_metrics();

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app()).await });

    if serve {
        println!("demo server on http://{addr} (Ctrl-C to stop); try:");
        println!("  curl -i http://{addr}/orders/7      # ok");
        println!("  curl -i http://{addr}/orders/5      # the backend fails: 500");
        println!(
            "  curl -i http://{addr}/orders/10     # every 10th /orders request is refused: 503"
        );
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }

    println!("demo server on http://{addr}; sending {REQUESTS} requests, {CONCURRENCY} at a time");
    let client = reqwest::Client::new();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut sample_rejection = None;
    let load = stream::iter(0..REQUESTS)
        .map(|i| {
            let client = client.clone();
            let url = if i.is_multiple_of(4) {
                format!("http://{addr}/hello")
            } else {
                format!("http://{addr}/orders/{i}")
            };
            async move { client.get(url).send().await }
        })
        .buffer_unordered(CONCURRENCY);
    let load = tokio::time::timeout(LOAD_LIMIT, async {
        tokio::pin!(load);
        while let Some(res) = load.next().await {
            let res = res?;
            *by_status.entry(res.status().as_u16()).or_default() += 1;
            if res.status() == StatusCode::SERVICE_UNAVAILABLE && sample_rejection.is_none() {
                sample_rejection = Some(wire_format(res).await?);
            }
        }
        Ok::<_, BoxError>(())
    });
    match load.await {
        Ok(result) => result?,
        Err(_) => println!("load stopped after {LOAD_LIMIT:?}"),
    }

    println!("\nresponses by status:");
    for (status, count) in &by_status {
        println!("  {status}: {count}");
    }
    if let Some(sample) = sample_rejection {
        println!("\none refused request, as the client saw it:\n{sample}");
    }
    println!("\nRED metrics (Prometheus text format; --buckets shows the histogram buckets too):");
    for line in prometheus.render().lines() {
        let ours = line.contains("http_server_") || line.contains("resilience_");
        if ours && (buckets_too || !line.contains("_bucket{")) {
            println!("{line}");
        }
    }
    Ok(())
}

fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .route("/orders/{id}", get(order))
        .layer(
            ServiceBuilder::new()
                .layer(RedLayer::server())
                .layer(ProblemLayer::new())
                .layer(ShedEveryLayer::new(10)),
        )
}

/// The backend: orders whose id is a multiple of 5 fail, as a broken dependency would.
async fn order(Path(id): Path<u64>) -> Result<String, StatusCode> {
    tokio::time::sleep(Duration::from_millis(2 + id % 7)).await;
    if id.is_multiple_of(5) {
        return Err(StatusCode::INTERNAL_SERVER_ERROR);
    }
    Ok(format!("order {id}\n"))
}

async fn wire_format(res: reqwest::Response) -> Result<String, BoxError> {
    let mut out = format!("  {:?} {}\n", res.version(), res.status());
    for (name, value) in res.headers() {
        out.push_str(&format!(
            "  {name}: {}\n",
            value.to_str().unwrap_or("<binary>")
        ));
    }
    out.push_str(&format!("\n  {}", res.text().await?));
    Ok(out)
}

/// A stand-in load shedder for this demo: refuses every `n`th `/orders` request with the same
/// rejection a full bulkhead gives (503, `Retry-After: 1`).
#[derive(Clone)]
struct ShedEveryLayer {
    n: u64,
    seen: Arc<AtomicU64>,
}

impl ShedEveryLayer {
    fn new(n: u64) -> Self {
        ShedEveryLayer {
            n,
            seen: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<S> Layer<S> for ShedEveryLayer {
    type Service = ShedEvery<S>;
    fn layer(&self, inner: S) -> ShedEvery<S> {
        ShedEvery {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct ShedEvery<S> {
    inner: S,
    layer: ShedEveryLayer,
}

impl<S, B> Service<http::Request<B>> for ShedEvery<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let orders = req.uri().path().starts_with("/orders");
        if orders
            && (self.layer.seen.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(self.layer.n)
        {
            let rejection = Rejection::new(RejectionKind::BulkheadFull)
                .with_name(Arc::from("orders"))
                .with_detail("demo shedder refuses every 10th order")
                .with_retry_after(Duration::from_secs(1));
            return Box::pin(async move { Err(rejection.into()) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
