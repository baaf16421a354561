//! A deadline travelling across three real hops on loopback:
//!
//! ```text
//! test client --x-request-timeout-ms--> A (axum) --reqwest, x-request-timeout-ms--> B (axum)
//!             --tonic, grpc-timeout--> C (tonic health service behind a slow probe)
//! ```
//!
//! Every hop reads its budget with `InboundDeadlineLayer`, handler code sees it through the
//! task-local scope, and the clients write what is left (minus a margin) with
//! `OutboundDeadlineLayer`. Assertions compare budgets between hops (each hop's is no more than
//! the previous one's minus the time it surely spent and the margin) rather than wall-clock
//! readings, so they hold on a loaded machine; the only timing bounds are generous.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

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

const MARGIN: Duration = Duration::from_millis(20);

/// What the hops saw.
#[derive(Default)]
struct Probe {
    budgets: Mutex<Vec<(&'static str, Duration)>>,
    c_finished: AtomicBool,
    c_cancelled: AtomicBool,
}

impl Probe {
    fn record(&self, hop: &'static str) {
        let budget = Deadline::current()
            .expect("the handler inherits the inbound deadline")
            .remaining();
        self.budgets
            .lock()
            .expect("not poisoned")
            .push((hop, budget));
    }

    fn budget(&self, hop: &str) -> Duration {
        let budgets = self.budgets.lock().expect("not poisoned");
        budgets
            .iter()
            .find(|(h, _)| *h == hop)
            .map(|(_, b)| *b)
            .unwrap_or_else(|| panic!("{hop} saw no request"))
    }
}

/// Marks C's work cancelled when dropped before it finished.
struct CancelGuard(Arc<Probe>, bool);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.c_cancelled.store(true, Ordering::SeqCst);
        }
    }
}

/// C's slow work: records the budget seen inside the handler's task-local scope, works for
/// `delay`, then lets the health service answer.
#[derive(Clone)]
struct Slow<S> {
    inner: S,
    probe: Arc<Probe>,
    delay: Duration,
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
        let (probe, delay) = (self.probe.clone(), self.delay);
        Box::pin(async move {
            probe.record("c");
            let mut guard = CancelGuard(probe.clone(), false);
            tokio::time::sleep(delay).await;
            guard.1 = true;
            probe.c_finished.store(true, Ordering::SeqCst);
            inner.call(req).await
        })
    }
}

#[derive(Clone)]
struct SlowLayer(Arc<Probe>, Duration);

impl<S> Layer<S> for SlowLayer {
    type Service = Slow<S>;
    fn layer(&self, inner: S) -> Slow<S> {
        Slow {
            inner,
            probe: self.0.clone(),
            delay: self.1,
        }
    }
}

/// 504 for a spent deadline found anywhere in an error, 502 for anything else.
fn status_of(err: &(dyn std::error::Error + 'static)) -> StatusCode {
    match Rejection::find(err) {
        Some(r) if r.is(RejectionKind::DeadlineExceeded) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
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
        .expect("valid")
}

#[derive(Clone)]
struct HopA {
    probe: Arc<Probe>,
    delay: Duration,
    to_b: OutboundDeadline<reqwest::Client>,
    b: SocketAddr,
}

async fn hop_a(State(hop): State<HopA>) -> (StatusCode, String) {
    hop.probe.record("a");
    tokio::time::sleep(hop.delay).await;
    let url = format!("http://{}/b", hop.b).parse().expect("a url");
    match hop
        .to_b
        .oneshot(reqwest::Request::new(http::Method::GET, url))
        .await
    {
        Ok(res) => (res.status(), res.text().await.unwrap_or_default()),
        Err(err) => (status_of(&*err), format!("cut at a: {err}")),
    }
}

#[derive(Clone)]
struct HopB {
    probe: Arc<Probe>,
    delay: Duration,
    to_c: ClientStatus<OutboundDeadline<tonic::transport::Channel>>,
}

async fn hop_b(State(hop): State<HopB>) -> (StatusCode, String) {
    hop.probe.record("b");
    tokio::time::sleep(hop.delay).await;
    let mut client = HealthClient::new(hop.to_c);
    match client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(res) => (
            StatusCode::OK,
            format!("status {}", res.into_inner().status),
        ),
        // C's inbound layer gives up (by default 20 ms) before the budget B sent runs out and
        // answers DEADLINE_EXCEEDED; should B's Channel enforce that budget first, B's outbound
        // layer takes its timeout error for the deadline passing: DEADLINE_EXCEEDED too, never
        // tonic's CANCELLED "Timeout expired".
        Err(status) if status.code() == tonic::Code::DeadlineExceeded => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("cut at c: {}", status.message()),
        ),
        Err(status) => (
            status_of(&status),
            format!("cut at b: {}", status.message()),
        ),
    }
}

/// Starts C, B and A; returns A's address.
async fn chain(
    probe: &Arc<Probe>,
    delay_a: Duration,
    delay_b: Duration,
    delay_c: Duration,
) -> SocketAddr {
    let (_reporter, c) = tests::serve_health(
        ServiceBuilder::new()
            .layer(StatusLayer::new())
            // C gives up its default margin (20 ms) before its caller's budget ends, so its own
            // DEADLINE_EXCEEDED (not tonic's built-in CANCELLED "Timeout expired") is the
            // answer B sees.
            .layer(inbound("c").build().expect("valid"))
            .layer(SlowLayer(probe.clone(), delay_c)),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{c}"))
        .expect("a uri")
        .connect_lazy();

    let app_b = Router::new()
        .route("/b", get(hop_b))
        .with_state(HopB {
            probe: probe.clone(),
            delay: delay_b,
            to_c: ClientStatusLayer::new().layer(outbound("b_to_c").layer(channel)),
        })
        .layer(
            ServiceBuilder::new()
                .layer(ProblemLayer::new())
                .layer(inbound("b").build().expect("valid")),
        );
    let b = tests::serve_axum(app_b).await;

    let app_a = Router::new()
        .route("/a", get(hop_a))
        .with_state(HopA {
            probe: probe.clone(),
            delay: delay_a,
            to_b: outbound("a_to_b").layer(reqwest::Client::new()),
            b,
        })
        .layer(
            ServiceBuilder::new()
                .layer(ProblemLayer::new())
                .layer(inbound("a").build().expect("valid")),
        );
    tests::serve_axum(app_a).await
}

async fn call_a(a: SocketAddr, budget_ms: u64) -> (StatusCode, String) {
    let res = reqwest::Client::new()
        .get(format!("http://{a}/a"))
        .header("x-request-timeout-ms", budget_ms.to_string())
        .send()
        .await
        .expect("A answers");
    (res.status(), res.text().await.expect("a body"))
}

#[tokio::test]
async fn the_budget_shrinks_at_every_hop() {
    let probe = Arc::new(Probe::default());
    let step = Duration::from_millis(50);
    let a = chain(&probe, step, step, Duration::ZERO).await;
    let (status, body) = call_a(a, 10_000).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "status 1"),
        "SERVING through three hops"
    );

    let (ba, bb, bc) = (probe.budget("a"), probe.budget("b"), probe.budget("c"));
    assert!(
        ba <= Duration::from_secs(10),
        "A got at most what the client sent: {ba:?}"
    );
    // Each hop surely spent `step` before calling on, and the client shaved the margin.
    assert!(bb <= ba - step - MARGIN, "B {bb:?} vs A {ba:?}");
    assert!(bc <= bb - step - MARGIN, "C {bc:?} vs B {bb:?}");
    // Generous: loopback hops do not eat seconds.
    assert!(
        bc >= Duration::from_secs(5),
        "C still had most of the budget: {bc:?}"
    );
    assert!(probe.c_finished.load(Ordering::SeqCst));
    assert!(!probe.c_cancelled.load(Ordering::SeqCst));
}

#[tokio::test]
async fn the_innermost_work_is_cancelled_when_the_outer_budget_ends() {
    let probe = Arc::new(Probe::default());
    let step = Duration::from_millis(50);
    // C would work for a minute; the client allows 800 ms in all.
    let a = chain(&probe, step, step, Duration::from_secs(60)).await;
    let started = std::time::Instant::now();
    let (status, body) = call_a(a, 800).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut long before C's minute of work"
    );

    let (ba, bb, bc) = (probe.budget("a"), probe.budget("b"), probe.budget("c"));
    assert!(ba <= Duration::from_millis(800));
    assert!(bb <= ba - step - MARGIN, "B {bb:?} vs A {ba:?}");
    assert!(bc <= bb - step - MARGIN, "C {bc:?} vs B {bb:?}");
    // C's budget, the smallest, ends first, so the cut is reported from C as DEADLINE_EXCEEDED:
    // by C's own inbound layer or, when a loaded machine delays C's answer past its margin, by
    // B's outbound layer when B's Channel enforces the budget it sent. Never tonic's CANCELLED.
    assert!(body.starts_with("cut at c: "), "{body}");
    assert!(body.contains("deadline exceeded"), "{body}");
    assert!(!body.contains("Timeout expired"), "{body}");
    // Dropping C's handler future is what cancels its work; allow the server a moment.
    for _ in 0..100 {
        if probe.c_cancelled.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        probe.c_cancelled.load(Ordering::SeqCst),
        "C's work was dropped"
    );
    assert!(
        !probe.c_finished.load(Ordering::SeqCst),
        "C's work never finished"
    );
}

#[tokio::test]
async fn a_spent_budget_is_refused_before_anything_is_sent() {
    let probe = Arc::new(Probe::default());
    // A spends more than the whole budget before calling B.
    let a = chain(
        &probe,
        Duration::from_millis(300),
        Duration::ZERO,
        Duration::ZERO,
    )
    .await;
    let (status, body) = call_a(a, 200).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(
        probe
            .budgets
            .lock()
            .expect("not poisoned")
            .iter()
            .all(|(hop, _)| *hop == "a"),
        "B and C never saw a request"
    );
    // A's own inbound deadline cut its handler, or its client refused to send: either way,
    // the rejection is a spent deadline.
    assert!(
        body.contains("deadline_exceeded") || body.contains(Stage::BeforeSend.detail()),
        "{body}"
    );
}
