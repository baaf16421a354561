//! `tower-retry-jitter` replaying streaming `http::Request` bodies to a real axum server over
//! loopback (sent with reqwest): every attempt carries the same bytes, a body over the cap is
//! sent once, and a POST is retried only with an `Idempotency-Key`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::any;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use tower::{Layer, Service, ServiceExt};
use tower_red::BoxError;
use tower_retry_jitter::{BufferBody, Idempotent, RetryBody, RetryLayer, RetryOn};

/// Every test ends within this, whatever the server does.
const BOUND: Duration = Duration::from_secs(20);
const CAP: usize = 16 * 1024;

/// What the server saw: each call's attempt header and body.
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<(Option<String>, Bytes)>>,
    /// The first this many calls get a 503.
    fail_first: usize,
}

impl Seen {
    fn calls(&self) -> Vec<(Option<String>, Bytes)> {
        self.calls.lock().unwrap().clone()
    }
}

async fn record(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let attempt = headers
        .get("x-retry-attempt")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut calls = seen.calls.lock().unwrap();
    calls.push((attempt, body));
    if calls.len() <= seen.fail_first {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn server(fail_first: usize) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen {
        fail_first,
        ..Seen::default()
    });
    let app = Router::new()
        .route("/echo", any(record))
        .with_state(seen.clone());
    let addr = tests::serve_axum(app).await;
    (addr, seen)
}

/// A streaming body, not `Clone`: the chunks of `data`, cut at uneven places.
type Streaming =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

fn streaming(data: &Bytes) -> Streaming {
    let mut frames = Vec::new();
    let (mut at, mut step) = (0, 1);
    while at < data.len() {
        let end = (at + step).min(data.len());
        frames.push(Ok(Frame::data(data.slice(at..end))));
        (at, step) = (end, step * 3 + 7);
    }
    StreamBody::new(futures::stream::iter(frames))
}

/// `len` bytes that differ from one position to the next, so a lost or repeated chunk shows.
fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// reqwest as a `Service<http::Request<RetryBody<Streaming>>>`: the transport below the layer.
fn transport(
    client: reqwest::Client,
) -> impl Service<
    http::Request<RetryBody<Streaming>>,
    Response = reqwest::Response,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send {
    tower::service_fn(move |req: http::Request<RetryBody<Streaming>>| {
        let client = client.clone();
        async move {
            let req = reqwest::Request::try_from(req.map(reqwest::Body::wrap))?;
            Ok::<_, BoxError>(client.execute(req).await?)
        }
    })
}

fn layer(limit: usize) -> RetryLayer<RetryOn, Idempotent, BufferBody> {
    RetryLayer::builder()
        .name("replay_test")
        .max_attempts(3)
        .base(Duration::from_millis(1))
        .cap(Duration::from_millis(5))
        .no_budget()
        .seed(7)
        .retry_on(RetryOn::new())
        .buffer_body(limit)
        .build()
        .unwrap()
}

async fn send(
    addr: SocketAddr,
    limit: usize,
    method: Method,
    key: Option<&str>,
    body: &Bytes,
) -> StatusCode {
    let client = layer(limit).layer(transport(reqwest::Client::new()));
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}/echo"));
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let req = req.body(streaming(body)).unwrap();
    let res = tokio::time::timeout(BOUND, client.oneshot(req))
        .await
        .expect("bounded")
        .expect("a response");
    res.status()
}

#[tokio::test]
async fn every_attempt_replays_the_body_byte_for_byte() {
    let (addr, seen) = server(2).await;
    let body = payload(CAP - 1);
    assert_eq!(
        send(addr, CAP, Method::PUT, None, &body).await,
        StatusCode::OK
    );

    let calls = seen.calls();
    assert_eq!(calls.len(), 3, "two 503s, then the answer");
    for (i, (_, got)) in calls.iter().enumerate() {
        assert_eq!(got.len(), body.len(), "attempt {}", i + 1);
        assert!(got == &body, "attempt {} differs from the body sent", i + 1);
    }
}

#[tokio::test]
async fn a_body_over_the_cap_is_sent_once_and_whole() {
    let (addr, seen) = server(usize::MAX).await;
    let body = payload(CAP + 1);
    assert_eq!(
        send(addr, CAP, Method::PUT, None, &body).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "the 503 comes back as it was"
    );
    let calls = seen.calls();
    assert_eq!(calls.len(), 1, "not retried");
    assert!(
        calls[0].1 == body,
        "the prefix read for the buffer, then the rest"
    );

    // At the cap exactly, it is buffered and retried.
    let (addr, seen) = server(usize::MAX).await;
    let body = payload(CAP);
    send(addr, CAP, Method::PUT, None, &body).await;
    assert_eq!(seen.calls().len(), 3);
}

#[tokio::test]
async fn a_post_is_retried_only_with_an_idempotency_key() {
    let body = payload(1_000);

    let (addr, seen) = server(1).await;
    assert_eq!(
        send(addr, CAP, Method::POST, None, &body).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(seen.calls().len(), 1, "a POST without a key is sent once");

    let (addr, seen) = server(1).await;
    assert_eq!(
        send(addr, CAP, Method::POST, Some("order-7f3a"), &body).await,
        StatusCode::OK
    );
    let calls = seen.calls();
    assert_eq!(calls.len(), 2, "with a key it is retried");
    assert!(calls.iter().all(|(_, got)| got == &body));
}

#[tokio::test]
async fn retries_carry_their_attempt_number() {
    let (addr, seen) = server(2).await;
    send(addr, CAP, Method::GET, None, &Bytes::new()).await;
    let attempts: Vec<Option<String>> = seen.calls().into_iter().map(|(a, _)| a).collect();
    assert_eq!(attempts, [None, Some("2".to_owned()), Some("3".to_owned())]);
}
