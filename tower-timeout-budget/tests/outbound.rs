//! Behaviour of `OutboundDeadlineLayer` on a paused clock.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::{Instant, advance};
use tower::{Layer, ServiceExt, service_fn};
use tower_red::{BoxError, Rejection, RejectionKind};
use tower_timeout_budget::outbound::{OutboundDeadlineLayer, Propagation};
use tower_timeout_budget::{Deadline, DeadlineCarrier, Stage};

const MS: Duration = Duration::from_millis(1);

/// Sends `req` through `layer` over a client that answers with the headers it was sent.
async fn sent(
    layer: &OutboundDeadlineLayer,
    req: http::Request<()>,
) -> Result<HeaderMap, BoxError> {
    let client = layer.layer(service_fn(|req: http::Request<()>| async move {
        Ok::<_, Infallible>(req.headers().clone())
    }));
    client.oneshot(req).await
}

fn grpc_request() -> http::Request<()> {
    http::Request::post("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .body(())
        .expect("a request")
}

fn stage_of(err: &BoxError) -> Option<Stage> {
    let rejection = Rejection::find_in(err).expect("a rejection");
    assert_eq!(rejection.kind(), RejectionKind::DeadlineExceeded);
    Stage::of(rejection)
}

#[tokio::test(start_paused = true)]
async fn the_task_local_budget_minus_the_margin_goes_into_the_http_header() {
    let layer = OutboundDeadlineLayer::builder()
        .margin(100 * MS)
        .build()
        .expect("valid");
    let headers = Deadline::after(2_000 * MS)
        .scope(sent(&layer, http::Request::new(())))
        .await
        .expect("ok");
    assert_eq!(headers["x-request-timeout-ms"], "1900");
    assert!(!headers.contains_key("grpc-timeout"));
}

#[tokio::test(start_paused = true)]
async fn grpc_requests_get_grpc_timeout_from_the_extension() {
    let layer = OutboundDeadlineLayer::builder()
        .margin(10 * MS)
        .build()
        .expect("valid");
    let mut req = grpc_request();
    req.set_deadline(Deadline::after(510 * MS));
    advance(100 * MS).await;
    let headers = sent(&layer, req).await.expect("ok");
    assert_eq!(headers["grpc-timeout"], "400000u");
    assert!(!headers.contains_key("x-request-timeout-ms"));
}

#[tokio::test(start_paused = true)]
async fn a_smaller_grpc_timeout_already_set_is_kept_and_a_larger_one_replaced() {
    let layer = OutboundDeadlineLayer::new();
    let mut req = grpc_request();
    req.headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("50m"));
    let headers = Deadline::after(1_000 * MS)
        .scope(sent(&layer, req))
        .await
        .expect("ok");
    assert_eq!(headers["grpc-timeout"], "50m");
    let mut req = grpc_request();
    req.headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("5S"));
    let headers = Deadline::after(1_000 * MS)
        .scope(sent(&layer, req))
        .await
        .expect("ok");
    assert_eq!(headers["grpc-timeout"], "1000000u");
}

#[tokio::test(start_paused = true)]
async fn propagation_can_force_either_header_both_or_none() {
    let run = |p: Propagation| async move {
        let layer = OutboundDeadlineLayer::builder()
            .propagation(p)
            .build()
            .expect("valid");
        Deadline::after(300 * MS)
            .scope(sent(&layer, http::Request::new(())))
            .await
            .expect("ok")
    };
    let both = run(Propagation::Both).await;
    assert_eq!(
        (
            both["grpc-timeout"].as_bytes(),
            both["x-request-timeout-ms"].as_bytes()
        ),
        (&b"300000u"[..], &b"300"[..])
    );
    assert!(run(Propagation::None).await.is_empty());
    assert_eq!(run(Propagation::GrpcTimeout).await.len(), 1);
    assert_eq!(
        run(Propagation::HttpHeader).await["x-request-timeout-ms"],
        "300"
    );
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_fails_fast_without_sending() {
    let sent_anything = Arc::new(AtomicBool::new(false));
    let flag = sent_anything.clone();
    let layer = OutboundDeadlineLayer::builder()
        .margin(20 * MS)
        .build()
        .expect("valid");
    let client = layer.layer(service_fn(move |_req: http::Request<()>| {
        flag.store(true, Ordering::SeqCst);
        async { Ok::<_, Infallible>(()) }
    }));
    // No more than the margin left: not worth sending.
    let err = Deadline::after(20 * MS)
        .scope(client.clone().oneshot(http::Request::new(())))
        .await
        .expect_err("spent");
    assert_eq!(stage_of(&err), Some(Stage::BeforeSend));
    let deadline = Deadline::after(5 * MS);
    advance(10 * MS).await;
    let err = deadline
        .scope(client.oneshot(http::Request::new(())))
        .await
        .expect_err("spent");
    assert_eq!(stage_of(&err), Some(Stage::BeforeSend));
    assert!(!sent_anything.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_budget_under_a_millisecond_is_refused_before_sending_not_sent_as_zero() {
    let sent_anything = Arc::new(AtomicBool::new(false));
    let flag = sent_anything.clone();
    let client = |margin| {
        let flag = flag.clone();
        OutboundDeadlineLayer::builder()
            .margin(margin)
            .build()
            .expect("valid")
            .layer(service_fn(move |_req: http::Request<()>| {
                flag.store(true, Ordering::SeqCst);
                async { Ok::<_, Infallible>(()) }
            }))
    };
    // The header counts whole milliseconds: 500 µs would go out as `0`, which the inbound
    // layer refuses on arrival and a header like Envoy's reads as no timeout at all.
    let err = Deadline::after(Duration::from_micros(500))
        .scope(client(Duration::ZERO).oneshot(http::Request::new(())))
        .await
        .expect_err("under a millisecond to send");
    assert_eq!(stage_of(&err), Some(Stage::BeforeSend));
    let err = Deadline::after(Duration::from_micros(20_500))
        .scope(client(20 * MS).oneshot(http::Request::new(())))
        .await
        .expect_err("under a millisecond past the margin");
    assert_eq!(stage_of(&err), Some(Stage::BeforeSend));
    assert!(!sent_anything.load(Ordering::SeqCst), "nothing was sent");
    // One whole millisecond goes out; gRPC carries the same half millisecond in nanoseconds.
    let headers = Deadline::after(MS)
        .scope(sent(&OutboundDeadlineLayer::new(), http::Request::new(())))
        .await
        .expect("sent");
    assert_eq!(headers["x-request-timeout-ms"], "1");
    let headers = Deadline::after(Duration::from_micros(500))
        .scope(sent(&OutboundDeadlineLayer::new(), grpc_request()))
        .await
        .expect("sent");
    assert_eq!(headers["grpc-timeout"], "500000n");
}

#[tokio::test(start_paused = true)]
async fn a_grpc_budget_no_longer_than_the_margin_is_refused_before_sending() {
    // gRPC carries nanoseconds, so no rounding refuses it: the margin alone must. With 20 ms
    // kept back, 20 ms or less left would go out as `0n`.
    let layer = OutboundDeadlineLayer::builder()
        .margin(20 * MS)
        .build()
        .expect("valid");
    for left in [10 * MS, 20 * MS] {
        let err = Deadline::after(left)
            .scope(sent(&layer, grpc_request()))
            .await
            .expect_err("nothing left past the margin");
        assert_eq!(stage_of(&err), Some(Stage::BeforeSend), "{left:?}");
    }
    let headers = Deadline::after(21 * MS)
        .scope(sent(&layer, grpc_request()))
        .await
        .expect("1 ms past the margin");
    assert_eq!(headers["grpc-timeout"], "1000000n");
}

#[tokio::test(start_paused = true)]
async fn without_a_deadline_the_request_is_sent_unchanged() {
    let headers = sent(&OutboundDeadlineLayer::new(), http::Request::new(()))
        .await
        .expect("ok");
    assert!(headers.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_local_cap_applies_without_an_incoming_deadline() {
    let layer = OutboundDeadlineLayer::builder()
        .cap(800 * MS)
        .build()
        .expect("valid");
    let headers = sent(&layer, http::Request::new(())).await.expect("ok");
    assert_eq!(headers["x-request-timeout-ms"], "800");
    let headers = Deadline::after(300 * MS)
        .scope(sent(&layer, http::Request::new(())))
        .await
        .expect("ok");
    assert_eq!(headers["x-request-timeout-ms"], "300");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_enforced_locally_even_if_the_server_ignores_it() {
    let layer = OutboundDeadlineLayer::builder()
        .margin(50 * MS)
        .build()
        .expect("valid");
    let client = layer.layer(service_fn(|_req: http::Request<()>| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, Infallible>(())
    }));
    let start = Instant::now();
    let err = Deadline::after(400 * MS)
        .scope(client.oneshot(http::Request::new(())))
        .await
        .expect_err("cut");
    assert_eq!(stage_of(&err), Some(Stage::Call));
    // Cut at the deadline itself: the margin only shortens what the server is told.
    assert_eq!(start.elapsed(), 400 * MS);
}

#[tokio::test(start_paused = true)]
async fn the_readiness_wait_is_bounded_by_the_task_local_deadline() {
    let (mut client, mut handle) =
        tower_test::mock::spawn_layer::<http::Request<()>, (), _>(OutboundDeadlineLayer::new());
    handle.allow(0);
    let deadline = Deadline::after(30 * MS);
    assert!(deadline.sync_scope(|| client.poll_ready()).is_pending());
    advance(30 * MS).await;
    assert!(deadline.sync_scope(|| client.poll_ready()).is_ready());
    let err = deadline
        .scope(client.call(http::Request::new(())))
        .await
        .expect_err("spent while waiting");
    assert_eq!(stage_of(&err), Some(Stage::Ready));
}

#[cfg(feature = "reqwest")]
#[tokio::test(start_paused = true)]
async fn reqwest_requests_get_the_header_from_the_task_local_deadline() {
    let client = OutboundDeadlineLayer::builder()
        .margin(5 * MS)
        .build()
        .expect("valid")
        .layer(service_fn(|req: reqwest::Request| async move {
            Ok::<_, Infallible>(req.headers().clone())
        }));
    let url = reqwest::Url::parse("http://127.0.0.1:9/").expect("a url");
    let req = reqwest::Request::new(reqwest::Method::GET, url);
    let headers = Deadline::after(105 * MS)
        .scope(client.oneshot(req))
        .await
        .expect("ok");
    assert_eq!(headers["x-request-timeout-ms"], "100");
}

#[test]
fn bad_configuration_names_the_field() {
    let err = OutboundDeadlineLayer::builder()
        .cap(MS)
        .margin(MS)
        .build()
        .expect_err("margin");
    assert_eq!(err.field(), "margin");
    let err = OutboundDeadlineLayer::builder()
        .http_header("bad header")
        .build()
        .expect_err("name");
    assert_eq!(err.field(), "http_header");
}

/// A transport that enforces the budget sent in the HTTP header itself, as tonic's `Channel`
/// does with `grpc-timeout`: it fails with its own error when that budget runs out.
async fn enforcing_transport(req: http::Request<()>) -> Result<(), BoxError> {
    let sent = req.headers()["x-request-timeout-ms"]
        .to_str()
        .expect("ascii")
        .parse::<u64>()
        .expect("millis");
    tokio::time::sleep(Duration::from_millis(sent)).await;
    Err("Timeout expired".into())
}

#[tokio::test(start_paused = true)]
async fn the_transport_enforcing_the_sent_budget_first_is_the_deadline_passing() {
    let layer = OutboundDeadlineLayer::builder()
        .margin(20 * MS)
        .build()
        .expect("valid");
    let client = layer.layer(tower::service_fn(enforcing_transport));
    let start = Instant::now();
    let err = Deadline::after(500 * MS)
        .scope(client.oneshot(http::Request::new(())))
        .await
        .expect_err("the transport gave up");
    assert_eq!(start.elapsed(), 480 * MS, "the transport's timer won");
    assert_eq!(stage_of(&err), Some(Stage::Call), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_transport_enforcing_a_header_rounded_down_to_the_millisecond_is_the_deadline_passing()
{
    let layer = OutboundDeadlineLayer::builder()
        .margin(20 * MS)
        .build()
        .expect("valid");
    let client = layer.layer(tower::service_fn(enforcing_transport));
    let start = Instant::now();
    // 480.5 ms past the margin: the header says 480, and the transport gives up then.
    let err = Deadline::after(Duration::from_micros(500_500))
        .scope(client.oneshot(http::Request::new(())))
        .await
        .expect_err("the transport gave up");
    assert_eq!(start.elapsed(), 480 * MS, "the transport's timer won");
    assert_eq!(stage_of(&err), Some(Stage::Call), "{err}");
}

#[tokio::test(start_paused = true)]
async fn inner_errors_before_the_sent_budget_runs_out_pass_through() {
    let client =
        OutboundDeadlineLayer::new().layer(tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(100 * MS).await;
            Err::<(), BoxError>("connection reset".into())
        }));
    let err = Deadline::after(500 * MS)
        .scope(client.oneshot(http::Request::new(())))
        .await
        .expect_err("failed");
    assert!(Rejection::find_in(&err).is_none(), "{err}");
    assert_eq!(err.to_string(), "connection reset");
}

#[tokio::test(start_paused = true)]
async fn an_inner_refusal_after_the_sent_budget_runs_out_stays_that_refusal() {
    let client = OutboundDeadlineLayer::builder()
        .margin(20 * MS)
        .build()
        .expect("valid")
        .layer(tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(490 * MS).await;
            Err::<(), BoxError>(Rejection::new(RejectionKind::BulkheadFull).into())
        }));
    let err = Deadline::after(500 * MS)
        .scope(client.oneshot(http::Request::new(())))
        .await
        .expect_err("refused");
    let rejection = Rejection::find_in(&err).expect("a rejection");
    assert_eq!(rejection.kind(), RejectionKind::BulkheadFull);
}

#[tokio::test(start_paused = true)]
async fn without_a_header_sent_inner_errors_pass_through() {
    let late_failure = |propagation| {
        OutboundDeadlineLayer::builder()
            .margin(20 * MS)
            .propagation(propagation)
            .build()
            .expect("valid")
            .layer(tower::service_fn(|_req: http::Request<()>| async {
                tokio::time::sleep(490 * MS).await;
                Err::<(), BoxError>("late failure".into())
            }))
    };
    let err = Deadline::after(500 * MS)
        .scope(late_failure(Propagation::None).oneshot(http::Request::new(())))
        .await
        .expect_err("failed");
    assert_eq!(
        err.to_string(),
        "late failure",
        "nothing sent, nothing enforced"
    );
    let err = Deadline::after(500 * MS)
        .scope(late_failure(Propagation::HttpHeader).oneshot(http::Request::new(())))
        .await
        .expect_err("failed");
    assert_eq!(stage_of(&err), Some(Stage::Call), "480 ms were sent: {err}");
}

/// The budgets two concurrent calls carried out, through a queue (`tower::buffer` in front of a
/// one-permit limit, as a bulkhead queue or a connection pool) where the second call waits 300
/// ms for the first; the outbound layer innermost, or above the queue.
async fn sent_through_a_queue(innermost: bool) -> Vec<HeaderValue> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let transport = tower::service_fn(move |req: http::Request<()>| {
        let record = record.clone();
        async move {
            record
                .lock()
                .expect("not poisoned")
                .push(req.headers()["x-request-timeout-ms"].clone());
            tokio::time::sleep(300 * MS).await;
            Ok::<_, BoxError>(())
        }
    });
    let client = tower::ServiceBuilder::new()
        .option_layer((!innermost).then(OutboundDeadlineLayer::new))
        .buffer(16)
        .concurrency_limit(1)
        .option_layer(innermost.then(OutboundDeadlineLayer::new))
        .service(transport);
    let start = Instant::now();
    // In the extensions, as a deadline layer above puts it: the buffer's worker task, which
    // makes the inner calls, does not see the caller's task-local scope.
    let deadline = Deadline::after(Duration::from_secs(1));
    let request = || {
        let mut req = http::Request::new(());
        req.set_deadline(deadline);
        req
    };
    let (a, b) = tokio::join!(
        client.clone().oneshot(request()),
        client.clone().oneshot(request()),
    );
    a.expect("in time");
    b.expect("in time");
    assert_eq!(start.elapsed(), 600 * MS);
    let seen = seen.lock().expect("not poisoned");
    seen.clone()
}

#[tokio::test(start_paused = true)]
async fn placed_innermost_the_header_carries_what_is_left_after_a_queue_wait() {
    assert_eq!(sent_through_a_queue(true).await, ["1000", "700"]);
}

#[tokio::test(start_paused = true)]
async fn placed_above_a_queue_the_header_misses_the_wait() {
    // Why the docs put the layer innermost: the second call told the server it had 1000 ms
    // when 700 were left.
    assert_eq!(sent_through_a_queue(false).await, ["1000", "1000"]);
}

#[test]
fn configuration_errors_name_the_layer_the_field_and_the_value() {
    let err: tower_red::ConfigError = OutboundDeadlineLayer::builder()
        .cap(100 * MS)
        .margin(100 * MS)
        .build()
        .expect_err("margin too large");
    assert_eq!(
        (err.layer(), err.field(), err.value()),
        ("deadline_outbound", "margin", "100ms")
    );
    assert_eq!(
        err.to_string(),
        "invalid deadline_outbound config: margin = 100ms: must be smaller than the cap (100ms)"
    );
    let err = OutboundDeadlineLayer::builder()
        .http_header("not a header")
        .build()
        .expect_err("bad name");
    assert_eq!(
        (err.field(), err.value()),
        ("http_header", "\"not a header\"")
    );
}

#[tokio::test(start_paused = true)]
async fn a_readiness_wait_after_an_unused_ready_starts_at_its_own_pending() {
    let layer = OutboundDeadlineLayer::builder()
        .cap(100 * MS)
        .build()
        .expect("valid");
    let (mut client, switch) = common::gated(layer);
    common::wait_then_open(&mut client, &switch, 30 * MS).await;
    // Idle in a ready cache, then not ready again: a new wait, not the end of the first one.
    advance(500 * MS).await;
    switch.close();
    assert!(
        client.poll_ready().is_pending(),
        "the transport is not ready"
    );
    advance(40 * MS).await;
    switch.open();
    assert!(client.poll_ready().is_ready());
    let left = client.call(http::Request::new(())).await.expect("sent");
    // The cap counts both waits (30 + 40 ms), not the idle time between them.
    assert_eq!(left, Some(30 * MS));
}
