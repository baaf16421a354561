//! A deadline crossing three real hops on loopback, one of them slow:
//!
//! ```text
//! client --x-request-timeout-ms--> A (axum) --reqwest, x-request-timeout-ms--> B (axum)
//!        --tonic, grpc-timeout--> C (tonic health service doing slow work)
//! ```
//!
//! Each hop prints the header that carried its budget and the deadline it made of it, what it
//! spent and what it passed on; the client prints how the call ended and where it was cut; the
//! first run ends with where each hop's share of the budget went. Run it with
//! `cargo run -p examples --bin deadline`.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use futures::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_red::grpc::client::{ClientStatus, ClientStatusLayer};
use tower_red::grpc::status::StatusLayer;
use tower_red::problem::ProblemLayer;
use tower_red::{Rejection, RejectionKind};
use tower_timeout_budget::inbound::DEFAULT_MARGIN;
use tower_timeout_budget::inbound::{InboundDeadlineBuilder, InboundDeadlineLayer};
use tower_timeout_budget::outbound::{OutboundDeadline, OutboundDeadlineLayer};
use tower_timeout_budget::wire::{DEFAULT_HTTP_HEADER, GrpcTimeout, parse_millis};
use tower_timeout_budget::{Deadline, Stage};

/// gRPC's own deadline header (`wire::GRPC_TIMEOUT` as text).
const GRPC_HEADER: &str = "grpc-timeout";
/// Work done by A and B before calling on.
const HOP_WORK: Duration = Duration::from_millis(100);

/// The budget each hop's header carried, in arrival order, for the closing account.
static RECEIVED: Mutex<Vec<(&str, Duration)>> = Mutex::new(Vec::new());

fn say(hop: &str, what: std::fmt::Arguments<'_>) {
    println!("  [{hop}] {what}");
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Prints the header that carried the budget and the deadline the hop's inbound layer made of it.
fn arrival(hop: &'static str, headers: &HeaderMap) {
    let (name, carried) = if let Some(v) = headers.get(DEFAULT_HTTP_HEADER) {
        (DEFAULT_HTTP_HEADER, parse_millis(v.as_bytes()).ok())
    } else if let Some(v) = headers.get(GRPC_HEADER) {
        let parsed = GrpcTimeout::parse(v.as_bytes())
            .ok()
            .map(GrpcTimeout::duration);
        (GRPC_HEADER, parsed)
    } else {
        ("no header", None)
    };
    let raw = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let raw = match carried {
        Some(d) if name == GRPC_HEADER => format!("{raw} ({})", ms(d)),
        _ => raw.to_owned(),
    };
    let deadline = Deadline::current().map_or("none".into(), |d| ms(d.remaining()));
    say(
        hop,
        format_args!(
            "got {name}: {raw} -> its deadline: {deadline} from now (it gives up {} early)",
            ms(DEFAULT_MARGIN)
        ),
    );
    if let (Some(carried), Ok(mut received)) = (carried, RECEIVED.lock()) {
        received.push((hop, carried));
    }
}

/// What a hop passes on after its own work: what is left of its deadline.
fn passing_on(hop: &str, next: &str, header: &str) {
    let left = Deadline::current().map_or("no deadline".into(), |d| ms(d.remaining()));
    say(
        hop,
        format_args!(
            "worked {}: {left} left, sent on to {next} in {header}",
            ms(HOP_WORK)
        ),
    );
}

/// Where each hop's share of the budget went, from the headers the hops received.
fn account() {
    let Ok(received) = RECEIVED.lock() else {
        return;
    };
    println!("  where the budget went, hop by hop (compare the headers each hop got):");
    for pair in received.windows(2) {
        let ((from, a), (to, b)) = (pair[0], pair[1]);
        let lost = a.saturating_sub(b);
        let rest = lost.saturating_sub(HOP_WORK + DEFAULT_MARGIN);
        println!(
            "    {from} -> {to}: {} -> {}, {} less = {} of {from}'s work + {} {from} gave up \
             early + {} in {from}'s code and on loopback",
            ms(a),
            ms(b),
            ms(lost),
            ms(HOP_WORK),
            ms(DEFAULT_MARGIN),
            ms(rest)
        );
    }
    println!(
        "    the work is the hops' own (simulated); the margin is what lets a hop's answer reach \
         its caller before the caller's own deadline; the last ms or two go to timer rounding, \
         connection setup and the code in between"
    );
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
        let headers = req.headers().clone();
        Box::pin(async move {
            arrival("C", &headers);
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

async fn hop_a(State(hop): State<HopA>, headers: HeaderMap) -> (StatusCode, String) {
    arrival("A", &headers);
    tokio::time::sleep(HOP_WORK).await;
    passing_on("A", "B", DEFAULT_HTTP_HEADER);
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

async fn hop_b(State(hop): State<HopB>, headers: HeaderMap) -> (StatusCode, String) {
    arrival("B", &headers);
    tokio::time::sleep(HOP_WORK).await;
    passing_on("B", "C", GRPC_HEADER);
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

/// No client margin (the default): the server behind it gives up its inbound margin early,
/// which leaves its answer that much time to travel back.
fn outbound(name: &'static str) -> OutboundDeadlineLayer {
    OutboundDeadlineLayer::builder()
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
        "\n{title}: client budget {}, C works {}",
        ms(budget),
        ms(c_work)
    );
    if let Ok(mut received) = RECEIVED.lock() {
        received.clear();
    }
    let a = chain(c_work).await;
    let started = Instant::now();
    say(
        "client",
        format_args!("sends {DEFAULT_HTTP_HEADER}: {}", budget.as_millis()),
    );
    let sent = reqwest::Client::new()
        .get(format!("http://{a}/a"))
        .header(DEFAULT_HTTP_HEADER, budget.as_millis().to_string())
        .timeout(budget + Duration::from_secs(5))
        .send()
        .await;
    match sent {
        Ok(res) => {
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            println!(
                "  [client] {status} after {}: {body}",
                ms(started.elapsed())
            );
        }
        Err(err) => println!(
            "  [client] no answer after {}: {err}",
            ms(started.elapsed())
        ),
    }
    // Let C's cancellation message print before the next run.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::main]
async fn main() {
    println!("tower-timeout-budget: one deadline across axum -> reqwest -> axum -> tonic");
    println!(
        "  client -> A and A -> B carry the budget in {DEFAULT_HTTP_HEADER} (milliseconds), B -> C \
         in grpc-timeout (gRPC's own header: a number and a unit, u for microseconds, m for milliseconds)"
    );
    println!(
        "  each hop's InboundDeadlineLayer gives up {} before its caller would, so its answer has \
         that long to travel back; the clients (OutboundDeadlineLayer) send what is left",
        ms(DEFAULT_MARGIN)
    );
    run(
        "1. enough time",
        Duration::from_millis(2_000),
        Duration::from_millis(50),
    )
    .await;
    account();
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
