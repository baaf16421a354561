//! No retry storms across hops, on real axum servers and reqwest clients over loopback.
//!
//! Two nested stacks: a client that retries (3 attempts) calls a middle server whose own client
//! retries (3 attempts) a bottom server that sheds every request with a 503. Without help the
//! bottom sees the product, 3 × 3 = 9 attempts. With each retry marked (`x-retry-attempt`) and
//! both servers behind `DontRetryLayer`, the bottom answers the middle's first retry with
//! "don't retry", the middle stops and passes the signal up, and the top does not retry at all:
//! the bottom sees two attempts, fewer than the top's three.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use tower::{Layer, Service, ServiceExt};
use tower_red::BoxError;
use tower_retry_jitter::attempt::{self, DontRetryLayer};
use tower_retry_jitter::{RetryLayer, RetryOn};

/// Every test ends within this, whatever the servers do.
const BOUND: Duration = Duration::from_secs(20);

/// A reqwest client in a retry layer of 3 attempts, retrying 502/503/504.
fn retrying_client(
    name: &'static str,
) -> impl Service<reqwest::Request, Response = reqwest::Response, Error = BoxError, Future = impl Send>
+ Clone
+ Send
+ Sync
+ 'static {
    RetryLayer::builder()
        .name(name)
        .max_attempts(3)
        .base(Duration::from_millis(1))
        .cap(Duration::from_millis(5))
        .no_budget()
        .seed(3)
        .retry_on(RetryOn::new())
        .reqwest()
        .build()
        .unwrap()
        .layer(reqwest::Client::new())
}

/// Each call's `x-retry-attempt`, as a server saw it.
type Seen = Arc<Mutex<Vec<u32>>>;

/// The bottom: sheds everything.
async fn bottom(State(seen): State<Seen>, headers: HeaderMap) -> StatusCode {
    seen.lock().unwrap().push(attempt::read_attempt(&headers));
    StatusCode::SERVICE_UNAVAILABLE
}

#[derive(Clone)]
struct Middle<C> {
    seen: Seen,
    client: C,
    bottom: reqwest::Url,
}

/// The middle: calls the bottom through its own retrying client; its dependency's failure is
/// its own 503.
async fn middle<C>(State(st): State<Middle<C>>, headers: HeaderMap) -> StatusCode
where
    C: Service<reqwest::Request, Response = reqwest::Response, Error = BoxError> + Clone,
{
    st.seen
        .lock()
        .unwrap()
        .push(attempt::read_attempt(&headers));
    let req = reqwest::Request::new(http::Method::GET, st.bottom.clone());
    match st.client.clone().oneshot(req).await {
        Ok(res) if res.status().is_success() => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

struct Outcome {
    status: StatusCode,
    told_to_stop: bool,
    middle: Vec<u32>,
    bottom: Vec<u32>,
}

/// Top client → middle server → middle's client → bottom server; `signal` puts both servers
/// behind `DontRetryLayer`.
async fn nested(signal: bool) -> Outcome {
    let bottom_seen = Seen::default();
    let mut bottom_app = Router::new()
        .route("/work", get(bottom))
        .with_state(bottom_seen.clone());
    if signal {
        bottom_app = bottom_app.layer(DontRetryLayer::new());
    }
    let bottom_addr = tests::serve_axum(bottom_app).await;

    let middle_seen = Seen::default();
    let mut middle_app = Router::new()
        .route("/work", get(middle))
        .with_state(Middle {
            seen: middle_seen.clone(),
            client: retrying_client("middle"),
            bottom: format!("http://{bottom_addr}/work").parse().unwrap(),
        });
    if signal {
        middle_app = middle_app.layer(DontRetryLayer::new());
    }
    let middle_addr = tests::serve_axum(middle_app).await;

    let top = retrying_client("top");
    let req = reqwest::Request::new(
        http::Method::GET,
        format!("http://{middle_addr}/work").parse().unwrap(),
    );
    let res = tokio::time::timeout(BOUND, top.oneshot(req))
        .await
        .expect("bounded")
        .expect("a response");
    let middle = middle_seen.lock().unwrap().clone();
    let bottom = bottom_seen.lock().unwrap().clone();
    Outcome {
        status: res.status(),
        told_to_stop: attempt::read_dont_retry(res.headers()),
        middle,
        bottom,
    }
}

#[tokio::test]
async fn without_the_signal_the_bottom_sees_the_product_of_both_stacks_attempts() {
    let out = nested(false).await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!out.told_to_stop);
    // Each hop's retries are marked even without the servers' help.
    assert_eq!(out.middle, [1, 2, 3]);
    assert_eq!(out.bottom, [1, 2, 3, 1, 2, 3, 1, 2, 3], "3 x 3");
}

#[tokio::test]
async fn with_the_signal_the_bottom_sees_at_most_the_tops_attempts() {
    let out = nested(true).await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(out.told_to_stop, "the middle passed the bottom's stop up");
    // The bottom refused the middle's first attempt (no signal: one retry is allowed), then
    // answered its retry with "don't retry"; the middle stopped, and so did the top.
    assert_eq!(out.bottom, [1, 2]);
    assert_eq!(out.middle, [1], "the top did not retry");
    assert!(
        out.bottom.len() <= 3,
        "at most the top's attempts, not 3 x 3"
    );
}
