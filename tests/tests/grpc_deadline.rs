//! Deadlines against tonic's own timers, with a real tonic client and server on loopback.
//!
//! tonic enforces `grpc-timeout` twice, outside every user layer: the caller's `Channel` fails
//! the call with `CANCELLED "Timeout expired"` when the timeout it sent passes, and the server
//! answers `CANCELLED "Timeout expired"` when the timeout it received passes. With the crate's
//! defaults the caller sees `DEADLINE_EXCEEDED` whichever timer fires first:
//!
//! - a server behind `InboundDeadlineLayer` gives up a margin before its caller does, so its
//!   `DEADLINE_EXCEEDED` reaches a plain tonic caller before that caller's own timer fires;
//! - a client behind `OutboundDeadlineLayer` takes its `Channel`'s timeout error, once the budget
//!   written on the request has run out, as the deadline passing (`DEADLINE_EXCEEDED` through
//!   `ClientStatusLayer`), whether or not the upstream answers in time.
//!
//! These tests time real tonic timers, so they run on real time, with short budgets and a
//! bounded number of calls.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, Service, ServiceBuilder};
use tower_red::grpc::client::ClientStatusLayer;
use tower_red::grpc::status::StatusLayer;
use tower_timeout_budget::Deadline;
use tower_timeout_budget::inbound::InboundDeadlineLayer;
use tower_timeout_budget::outbound::OutboundDeadlineLayer;

const MS: Duration = Duration::from_millis(1);

/// A backend that works for `delay` before the health service answers.
#[derive(Clone)]
struct Slow<S> {
    inner: S,
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
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.call(req).await
        })
    }
}

#[derive(Clone, Copy)]
struct SlowLayer(Duration);

impl<S> Layer<S> for SlowLayer {
    type Service = Slow<S>;
    fn layer(&self, inner: S) -> Slow<S> {
        Slow {
            inner,
            delay: self.0,
        }
    }
}

/// A health server that works `delay` per call, behind the documented server stack
/// (`StatusLayer`, then the inbound layer with its defaults).
async fn our_server(delay: Duration) -> SocketAddr {
    let (_reporter, addr) = tests::serve_health(
        ServiceBuilder::new()
            .layer(StatusLayer::new())
            .layer(InboundDeadlineLayer::new())
            .layer(SlowLayer(delay)),
    )
    .await;
    addr
}

/// A health server that works `delay` per call, with none of our layers: only tonic's own
/// `grpc-timeout` timer.
async fn plain_server(delay: Duration) -> SocketAddr {
    let (_reporter, addr) = tests::serve_health(SlowLayer(delay)).await;
    addr
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a uri")
        .connect()
        .await
        .expect("connects")
}

fn check() -> tonic::Request<HealthCheckRequest> {
    tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    })
}

fn tally(codes: &[(tonic::Status, Duration)]) -> String {
    codes
        .iter()
        .map(|(s, elapsed)| format!("{:?} {:?} after {elapsed:?}", s.code(), s.message()))
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test]
async fn a_plain_tonic_caller_gets_deadline_exceeded_from_a_slow_server_before_its_own_timer() {
    let addr = our_server(Duration::from_secs(5)).await;
    let mut client = HealthClient::new(channel(addr).await);
    let mut statuses = Vec::new();
    for _ in 0..9 {
        let mut req = check();
        req.set_timeout(200 * MS);
        let started = Instant::now();
        let status = client.check(req).await.expect_err("the server is too slow");
        assert!(started.elapsed() < Duration::from_secs(2), "bounded");
        statuses.push((status, started.elapsed()));
    }
    eprintln!("{}", tally(&statuses));
    assert!(
        statuses
            .iter()
            .all(|(s, _)| s.code() == tonic::Code::DeadlineExceeded),
        "every call ends with the server's DEADLINE_EXCEEDED, not the caller's CANCELLED: {}",
        tally(&statuses)
    );
}

#[tokio::test]
async fn the_channels_own_timeout_at_the_sent_budget_becomes_deadline_exceeded() {
    // The upstream ignores deadlines; the client sends 500 ms minus a 20 ms margin, which its
    // own Channel enforces before the outbound layer's timer (at 500 ms) fires.
    let addr = plain_server(Duration::from_secs(5)).await;
    let outbound = OutboundDeadlineLayer::builder()
        .margin(20 * MS)
        .build()
        .expect("valid");
    let stack = ServiceBuilder::new()
        .layer(ClientStatusLayer::new())
        .layer(outbound)
        .service(channel(addr).await);
    let mut client = HealthClient::new(stack);
    for _ in 0..3 {
        let started = Instant::now();
        let status = Deadline::after(500 * MS)
            .scope(client.check(check()))
            .await
            .expect_err("the upstream is too slow");
        let elapsed = started.elapsed();
        assert_eq!(
            status.code(),
            tonic::Code::DeadlineExceeded,
            "{status:?} after {elapsed:?}"
        );
        assert!(
            status
                .message()
                .contains("deadline exceeded (outbound): in the call"),
            "{status:?}"
        );
        assert!(
            elapsed >= 480 * MS && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
    }
}

#[tokio::test]
async fn a_smaller_timeout_set_by_the_caller_also_ends_as_deadline_exceeded() {
    let addr = plain_server(Duration::from_secs(5)).await;
    let stack = ServiceBuilder::new()
        .layer(ClientStatusLayer::new())
        .layer(OutboundDeadlineLayer::new())
        .service(channel(addr).await);
    let mut client = HealthClient::new(stack);
    let mut req = check();
    // Kept on the wire (smaller than the 10 s deadline), so the Channel enforces it.
    req.set_timeout(150 * MS);
    let started = Instant::now();
    let status = Deadline::after(Duration::from_secs(10))
        .scope(client.check(req))
        .await
        .expect_err("the upstream is too slow");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn our_client_calling_our_slow_server_sees_deadline_exceeded_whichever_side_gives_up() {
    let addr = our_server(Duration::from_secs(5)).await;
    for margin in [Duration::ZERO, 20 * MS] {
        let outbound = OutboundDeadlineLayer::builder()
            .margin(margin)
            .build()
            .expect("valid");
        let stack = ServiceBuilder::new()
            .layer(ClientStatusLayer::new())
            .layer(outbound)
            .service(channel(addr).await);
        let mut client = HealthClient::new(stack);
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let status = Deadline::after(300 * MS)
                .scope(client.check(check()))
                .await
                .expect_err("the upstream is too slow");
            statuses.push((status, started.elapsed()));
        }
        assert!(
            statuses
                .iter()
                .all(|(s, _)| s.code() == tonic::Code::DeadlineExceeded),
            "margin {margin:?}: {}",
            tally(&statuses)
        );
    }
}

#[tokio::test]
async fn other_transport_errors_keep_tonics_mapping() {
    // A port nothing listens on: bound, then closed.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("an address")
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a uri")
        .connect_lazy();
    let stack = ServiceBuilder::new()
        .layer(ClientStatusLayer::new())
        .layer(OutboundDeadlineLayer::new())
        .service(channel);
    let mut client = HealthClient::new(stack);
    let status = Deadline::after(Duration::from_secs(5))
        .scope(client.check(check()))
        .await
        .expect_err("nothing listens");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn a_fast_call_is_untouched() {
    let addr = our_server(Duration::ZERO).await;
    let stack = ServiceBuilder::new()
        .layer(ClientStatusLayer::new())
        .layer(OutboundDeadlineLayer::new())
        .service(channel(addr).await);
    let mut client = HealthClient::new(stack);
    let res = Deadline::after(Duration::from_secs(5))
        .scope(client.check(check()))
        .await
        .expect("answers in time");
    assert_eq!(res.into_inner().status, 1, "SERVING");
}
