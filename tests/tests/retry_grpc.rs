//! `tower-retry-jitter` around a real tonic `Channel`: a unary call that a real tonic-health
//! server fails with `UNAVAILABLE` is retried (its request body replayed from the buffer) and
//! the retry's answer reaches the generated client.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, Service, ServiceBuilder};
use tower_retry_jitter::attempt::DontRetryLayer;
use tower_retry_jitter::{RetryBody, RetryLayer, RetryOn};

/// Every test ends within this, whatever the server does.
const BOUND: Duration = Duration::from_secs(20);

/// What the server saw: each call's `grpc-previous-rpc-attempts`, in order.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// A server layer that answers the first `fail` calls `UNAVAILABLE` (trailers-only, as tonic
/// sends a `Status`) and passes the rest to the real health service.
#[derive(Clone)]
struct FailFirst<S> {
    inner: S,
    fail: usize,
    seen: Seen,
}

impl<S> Service<http::Request<tonic::body::Body>> for FailFirst<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let previous = req
            .headers()
            .get("grpc-previous-rpc-attempts")
            .map(|v| v.to_str().unwrap().to_owned());
        let n = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(previous);
            seen.len()
        };
        if n <= self.fail {
            let res = tonic::Status::unavailable("warming up").into_http();
            return Box::pin(async move { Ok(res) });
        }
        let fut = self.inner.call(req);
        Box::pin(fut)
    }
}

#[derive(Clone)]
struct FailFirstLayer {
    fail: usize,
    seen: Seen,
}

impl<S> Layer<S> for FailFirstLayer {
    type Service = FailFirst<S>;
    fn layer(&self, inner: S) -> FailFirst<S> {
        FailFirst {
            inner,
            fail: self.fail,
            seen: self.seen.clone(),
        }
    }
}

/// A real health server whose first `fail` calls are answered `UNAVAILABLE`; with `signal`,
/// behind `DontRetryLayer`.
async fn health_server(fail: usize, signal: bool) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let fail_first = FailFirstLayer {
        fail,
        seen: seen.clone(),
    };
    let (_reporter, addr) = tests::serve_health(
        ServiceBuilder::new()
            .layer(tower::util::option_layer(signal.then(DontRetryLayer::new)))
            .layer(fail_first),
    )
    .await;
    (addr, seen)
}

/// A health client whose channel is wrapped in the retry layer, replaying request bodies from a
/// buffer (every tonic request body is a stream).
async fn health_client(
    addr: SocketAddr,
    max_attempts: u32,
) -> HealthClient<
    impl tonic::client::GrpcService<
        tonic::body::Body,
        ResponseBody = impl http_body::Body<Data = bytes::Bytes, Error = impl Into<tower_red::BoxError>>
                       + Send
                       + 'static,
        Error = impl Into<tower_red::BoxError>,
    >,
> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let retry = RetryLayer::builder()
        .name("grpc_test")
        .max_attempts(max_attempts)
        .base(Duration::from_millis(1))
        .cap(Duration::from_millis(5))
        .no_budget()
        .seed(11)
        .retry_on(RetryOn::new())
        // Every gRPC call is a POST: a health check is idempotent, so it may be sent again.
        .always_safe()
        .buffer_body(64 * 1024)
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(retry)
        .map_request(|req: http::Request<RetryBody<tonic::body::Body>>| {
            req.map(tonic::body::Body::new)
        })
        .service(channel);
    HealthClient::new(stack)
}

fn check() -> tonic::Request<HealthCheckRequest> {
    tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    })
}

#[tokio::test]
async fn a_channel_in_the_retry_layer_retries_unavailable_and_gets_the_answer() {
    let (addr, seen) = health_server(1, false).await;
    let mut client = health_client(addr, 3).await;
    let res = tokio::time::timeout(BOUND, client.check(check()))
        .await
        .expect("bounded")
        .expect("the retry answered");
    assert_eq!(res.into_inner().status, 1, "SERVING");
    assert_eq!(
        *seen.lock().unwrap(),
        [None, Some("1".to_owned())],
        "one UNAVAILABLE, then a retry that says one attempt came before (A6)"
    );
}

#[tokio::test]
async fn unavailable_to_the_last_attempt_reaches_the_caller_as_it_was() {
    let (addr, seen) = health_server(usize::MAX, false).await;
    let mut client = health_client(addr, 3).await;
    let status = tokio::time::timeout(BOUND, client.check(check()))
        .await
        .expect("bounded")
        .expect_err("every attempt failed");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "warming up");
    assert_eq!(seen.lock().unwrap().len(), 3, "max_attempts, no more");
    assert_eq!(seen.lock().unwrap()[2].as_deref(), Some("2"));

    // With one attempt allowed, the layer sends it once.
    let (addr, seen) = health_server(usize::MAX, false).await;
    let mut client = health_client(addr, 1).await;
    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_shedding_server_tells_a_retry_to_stop_and_the_channel_stops() {
    let (addr, seen) = health_server(usize::MAX, true).await;
    let mut client = health_client(addr, 5).await;
    let status = tokio::time::timeout(BOUND, client.check(check()))
        .await
        .expect("bounded")
        .expect_err("shedding");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .map(|v| v.to_str().unwrap()),
        Some("-1"),
        "A6's don't-retry reaches the caller too"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [None, Some("1".to_owned())],
        "the first attempt and one retry, of five allowed"
    );
}
