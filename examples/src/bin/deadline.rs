//! A deadline crossing three real hops on loopback, one of them slow:
//!
//! ```text
//! client --x-request-timeout-ms--> A (axum) --reqwest, x-request-timeout-ms--> B (axum)
//!        --tonic, grpc-timeout--> C (tonic health service doing slow work)
//! ```
//!
//! Each hop prints the budget it received; the client prints how the call ended and where it
//! was cut. Run it with `cargo run -p examples --bin deadline`.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use futures::future::BoxFuture;
use http::StatusCode;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_red::grpc::client::{ClientStatus, ClientStatusLayer};
use tower_red::grpc::status::StatusLayer;
use tower_red::problem::ProblemLayer;
use tower_red::{Rejection, RejectionKind};
use tower_timeout_budget::inbound::{InboundDeadlineBuilder, InboundDeadlineLayer};
use tower_timeout_budget::outbound::{OutboundDeadline, OutboundDeadlineLayer};
use tower_timeout_budget::{Deadline, Stage};

/// What each client shaves off the budget it passes on, for the way back.
const MARGIN: Duration = Duration::from_millis(25);
/// Work done by A and B before calling on.
const HOP_WORK: Duration = Duration::from_millis(100);

fn say(hop: &str, what: std::fmt::Arguments<'_>) {
    println!("  [{hop}] {what}");
}

fn budget_line(hop: &str) {
    match Deadline::current() {
        Some(d) => say(
            hop,
            format_args!("received a budget of {} ms", d.remaining().as_millis()),
        ),
        None => say(hop, format_args!("received no deadline")),
    }
}

/// C's slow work around the health service.
#[derive(Clone)]
struct Slow<S> {
    inner: S,
    work: Duration,
}

struct Cancelled(bool);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if !self.0 {
            say(
                "C",
                format_args!("work cancelled: its future was dropped when the budget ended"),
            );
        }
    }
}

impl<S, B> Service<http::Request<B>> for Slow<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let work = self.work;
        Box::pin(async move {
            budget_line("C");
            say("C", format_args!("working for {} ms", work.as_millis()));
            let mut guard = Cancelled(false);
            tokio::time::sleep(work).await;
            guard.0 = true;
            say("C", format_args!("work finished"));
            inner.call(req).await
        })
    }
}

#[derive(Clone)]
struct SlowLayer(Duration);

impl<S> Layer<S> for SlowLayer {
    type Service = Slow<S>;
    fn layer(&self, inner: S) -> Slow<S> {
        Slow {
            inner,
            work: self.0,
        }
    }
}

fn rejection_status(err: &(dyn std::error::Error + 'static)) -> (StatusCode, String) {
    match Rejection::find(err) {
        Some(r) if r.is(RejectionKind::DeadlineExceeded) => {
            let stage = Stage::of(r).map_or("?", Stage::as_str);
            (StatusCode::GATEWAY_TIMEOUT, format!("{r} (stage {stage})"))
        }
        _ => (StatusCode::BAD_GATEWAY, err.to_string()),
    }
}

#[derive(Clone)]
struct HopA {
    to_b: OutboundDeadline<reqwest::Client>,
    b: SocketAddr,
}

async fn hop_a(State(hop): State<HopA>) -> (StatusCode, String) {
    budget_line("A");
    tokio::time::sleep(HOP_WORK).await;
    let url = format!("http://{}/b", hop.b).parse().expect("a valid url");
    match hop
        .to_b
        .oneshot(reqwest::Request::new(http::Method::GET, url))
        .await
    {
        Ok(res) => (res.status(), res.text().await.unwrap_or_default()),
        Err(err) => {
            let (status, why) = rejection_status(&*err);
            (status, format!("cut at A's client: {why}"))
        }
    }
}

#[derive(Clone)]
struct HopB {
    to_c: ClientStatus<OutboundDeadline<tonic::transport::Channel>>,
}

async fn hop_b(State(hop): State<HopB>) -> (StatusCode, String) {
    budget_line("B");
    tokio::time::sleep(HOP_WORK).await;
    match HealthClient::new(hop.to_c)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(res) => (
            StatusCode::OK,
            format!("C says serving status {}", res.into_inner().status),
        ),
        // C's inbound layer gives up its margin before the budget B sent runs out; if B's own
        // Channel enforces that budget first, B's outbound layer reports its timeout as the
        // deadline passing. Either way: DEADLINE_EXCEEDED, never tonic's CANCELLED.
        Err(status) if status.code() == tonic::Code::DeadlineExceeded => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("cut at C: {} ({:?})", status.message(), status.code()),
        ),
        Err(status) => (
            StatusCode::BAD_GATEWAY,
            format!("cut at B: {}", status.message()),
        ),
    }
}

async fn listen() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("an address");
    (listener, addr)
}

fn inbound(name: &'static str) -> InboundDeadlineBuilder {
    InboundDeadlineLayer::builder()
        .cap(Duration::from_secs(30))
        .name(name)
}

fn outbound(name: &'static str) -> OutboundDeadlineLayer {
    OutboundDeadlineLayer::builder()
        .margin(MARGIN)
        .name(name)
        .build()
        .expect("a valid outbound layer")
}

/// Starts C (doing `c_work`), B and A; returns A's address.
async fn chain(c_work: Duration) -> SocketAddr {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (listener, c) = listen().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(StatusLayer::new())
            // C gives up its default inbound margin (20 ms) before its caller's budget ends, so
            // its own DEADLINE_EXCEEDED (not tonic's built-in CANCELLED "Timeout expired") is
            // the answer B sees.
            .layer(inbound("c").build().expect("valid"))
            .layer(SlowLayer(c_work))
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{c}"))
        .expect("a uri")
        .connect_lazy();

    let (listener, b) = listen().await;
    let app_b = Router::new()
        .route("/b", get(hop_b))
        .with_state(HopB {
            // Innermost, just above the Channel; ClientStatusLayer turns a rejection into the
            // Status the generated client returns.
            to_c: ClientStatusLayer::new().layer(outbound("b_to_c").layer(channel)),
        })
        .layer(
            ServiceBuilder::new()
                .layer(ProblemLayer::new())
                .layer(inbound("b").build().expect("valid")),
        );
    tokio::spawn(async move { axum::serve(listener, app_b).await });

    let (listener, a) = listen().await;
    let app_a = Router::new()
        .route("/a", get(hop_a))
        .with_state(HopA {
            to_b: outbound("a_to_b").layer(reqwest::Client::new()),
            b,
        })
        .layer(
            ServiceBuilder::new()
                .layer(ProblemLayer::new())
                .layer(inbound("a").build().expect("valid")),
        );
    tokio::spawn(async move { axum::serve(listener, app_a).await });
    a
}

async fn run(title: &str, budget: Duration, c_work: Duration) {
    println!(
        "\n{title}: client budget {} ms, C works {} ms, margins {} ms per client and {} ms per \
         server hop",
        budget.as_millis(),
        c_work.as_millis(),
        MARGIN.as_millis(),
        tower_timeout_budget::inbound::DEFAULT_MARGIN.as_millis()
    );
    let a = chain(c_work).await;
    let started = Instant::now();
    let sent = reqwest::Client::new()
        .get(format!("http://{a}/a"))
        .header("x-request-timeout-ms", budget.as_millis().to_string())
        .timeout(budget + Duration::from_secs(5))
        .send()
        .await;
    match sent {
        Ok(res) => {
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            println!(
                "  [client] {status} after {} ms: {body}",
                started.elapsed().as_millis()
            );
        }
        Err(err) => println!(
            "  [client] no answer after {} ms: {err}",
            started.elapsed().as_millis()
        ),
    }
    // Let C's cancellation message print before the next run.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::main]
async fn main() {
    println!("tower-timeout-budget: one deadline across axum -> reqwest -> axum -> tonic");
    run(
        "1. enough time",
        Duration::from_millis(2_000),
        Duration::from_millis(50),
    )
    .await;
    run(
        "2. C is slow",
        Duration::from_millis(800),
        Duration::from_secs(30),
    )
    .await;
    run(
        "3. A alone spends more than the budget",
        Duration::from_millis(80),
        Duration::ZERO,
    )
    .await;
}
