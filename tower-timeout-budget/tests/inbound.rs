//! Behaviour of `InboundDeadlineLayer` on a paused clock.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::{Instant, advance};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};
use tower_red::problem::ProblemLayer;
use tower_red::{BoxError, Rejection, RejectionKind};
use tower_timeout_budget::inbound::InboundDeadlineLayer;
use tower_timeout_budget::{Deadline, Stage};

const MS: Duration = Duration::from_millis(1);

/// What the handler saw: the extension's remaining budget and the task-local one.
type Seen = (Option<Duration>, Option<Duration>);

async fn seen(layer: InboundDeadlineLayer, headers: &[(&str, &str)]) -> Result<Seen, BoxError> {
    let svc = layer.layer(service_fn(|req: http::Request<()>| async move {
        let ext = req.extensions().get::<Deadline>().map(|d| d.remaining());
        Ok::<_, Infallible>((ext, Deadline::current().map(Deadline::remaining)))
    }));
    let mut req = http::Request::builder();
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    svc.oneshot(req.body(()).expect("a request")).await
}

/// Lenient, and without the default margin, so budgets read exactly as sent.
fn lenient() -> InboundDeadlineLayer {
    InboundDeadlineLayer::builder()
        .margin(Duration::ZERO)
        .build()
        .expect("valid")
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_becomes_the_extension_and_the_task_local_deadline() {
    let got = seen(lenient(), &[("grpc-timeout", "1500m")])
        .await
        .expect("ok");
    assert_eq!(got, (Some(1_500 * MS), Some(1_500 * MS)));
    let got = seen(lenient(), &[("grpc-timeout", "2S")])
        .await
        .expect("ok");
    assert_eq!(got.0, Some(2_000 * MS));
}

#[tokio::test(start_paused = true)]
async fn the_http_header_is_read_in_milliseconds() {
    let got = seen(lenient(), &[("x-request-timeout-ms", "750")])
        .await
        .expect("ok");
    assert_eq!(got, (Some(750 * MS), Some(750 * MS)));
}

#[tokio::test(start_paused = true)]
async fn the_http_header_name_is_configurable() {
    let envoy = InboundDeadlineLayer::builder()
        .http_header("x-envoy-expected-rq-timeout-ms")
        .margin(Duration::ZERO)
        .build()
        .expect("valid");
    let got = seen(envoy.clone(), &[("x-envoy-expected-rq-timeout-ms", "300")])
        .await
        .expect("ok");
    assert_eq!(got.0, Some(300 * MS));
    let got = seen(envoy, &[("x-request-timeout-ms", "300")])
        .await
        .expect("ok");
    assert_eq!(got, (None, None), "the default name is no longer read");
}

#[tokio::test(start_paused = true)]
async fn the_headers_are_found_among_few_or_many_others_and_the_first_value_counts() {
    // A few headers take a scan of the names, more than sixteen the map's hash lookups: both
    // read what `HeaderMap::get` reads, the first value of a repeated header.
    for others in [0, 3, 15, 16, 40] {
        let filler: Vec<(String, String)> = (0..others)
            .map(|i| (format!("x-filler-{i}"), i.to_string()))
            .collect();
        let mut headers: Vec<(&str, &str)> = filler
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.extend([
            ("x-request-timeout-ms", "750"),
            ("grpc-timeout", "2S"),
            ("x-request-timeout-ms", "100"),
            ("grpc-timeout", "50m"),
        ]);
        let got = seen(lenient(), &headers).await.expect("ok");
        assert_eq!(got.0, Some(750 * MS), "with {others} other headers");
        let grpc_only: Vec<_> = headers
            .iter()
            .copied()
            .filter(|(k, _)| *k != "x-request-timeout-ms")
            .collect();
        let got = seen(lenient(), &grpc_only).await.expect("ok");
        assert_eq!(got.0, Some(2_000 * MS), "with {others} other headers");
    }
}

#[tokio::test(start_paused = true)]
async fn a_layer_reading_one_of_the_two_headers_finds_it_alone_or_among_others() {
    let http_only = InboundDeadlineLayer::builder()
        .grpc_timeout(false)
        .margin(Duration::ZERO)
        .build()
        .expect("valid");
    let grpc_only = InboundDeadlineLayer::builder()
        .no_http_header()
        .margin(Duration::ZERO)
        .build()
        .expect("valid");
    // (layer, the one header sent, the budget it reads: `None` for the header it ignores)
    let cases = [
        (&http_only, ("x-request-timeout-ms", "750"), Some(750 * MS)),
        (&http_only, ("grpc-timeout", "2S"), None),
        (&grpc_only, ("grpc-timeout", "2S"), Some(2_000 * MS)),
        (&grpc_only, ("x-request-timeout-ms", "750"), None),
    ];
    let curl = [("host", "orders.internal"), ("accept", "*/*")];
    for others in [&[][..], &curl[..]] {
        for (layer, header, budget) in &cases {
            let mut headers = others.to_vec();
            headers.push(*header);
            let got = seen((*layer).clone(), &headers).await.expect("ok");
            assert_eq!(got, (*budget, *budget), "{header:?} among {others:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn when_both_headers_are_sent_the_smaller_wins() {
    let headers = [("grpc-timeout", "2S"), ("x-request-timeout-ms", "900")];
    assert_eq!(
        seen(lenient(), &headers).await.expect("ok").0,
        Some(900 * MS)
    );
    let headers = [("grpc-timeout", "200m"), ("x-request-timeout-ms", "900")];
    assert_eq!(
        seen(lenient(), &headers).await.expect("ok").0,
        Some(200 * MS)
    );
}

#[tokio::test(start_paused = true)]
async fn the_server_cap_clamps_headers_and_applies_without_one() {
    let capped = InboundDeadlineLayer::builder()
        .cap(500 * MS)
        .margin(Duration::ZERO)
        .build()
        .expect("valid");
    let got = seen(capped.clone(), &[("grpc-timeout", "10S")])
        .await
        .expect("ok");
    assert_eq!(got.0, Some(500 * MS));
    let got = seen(capped.clone(), &[("grpc-timeout", "99999999H")])
        .await
        .expect("ok");
    assert_eq!(got.0, Some(500 * MS), "an absurd value is clamped");
    let got = seen(capped.clone(), &[("grpc-timeout", "100m")])
        .await
        .expect("ok");
    assert_eq!(got.0, Some(100 * MS), "a smaller header wins over the cap");
    assert_eq!(seen(capped, &[]).await.expect("ok").0, Some(500 * MS));
    assert_eq!(
        seen(lenient(), &[]).await.expect("ok"),
        (None, None),
        "no cap, no header: no deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn absurd_values_without_a_cap_saturate_instead_of_panicking() {
    let got = seen(lenient(), &[("grpc-timeout", "99999999H")])
        .await
        .expect("ok");
    assert_eq!(got.0, Some(Duration::from_secs(99_999_999 * 3_600)));
    let got = seen(lenient(), &[("x-request-timeout-ms", "999999999999")])
        .await
        .expect("ok");
    assert!(got.0.expect("a deadline") > Duration::from_secs(86_400 * 365));
}

#[tokio::test(start_paused = true)]
async fn malformed_headers_are_ignored_in_lenient_mode() {
    let capped = InboundDeadlineLayer::builder()
        .cap(500 * MS)
        .margin(Duration::ZERO)
        .build()
        .expect("valid");
    for (k, v) in [
        ("grpc-timeout", "10s"),
        ("grpc-timeout", "123456789m"),
        ("grpc-timeout", "-1S"),
        ("grpc-timeout", ""),
        ("x-request-timeout-ms", "1e3"),
        ("x-request-timeout-ms", "10000000000000"),
    ] {
        let got = seen(capped.clone(), &[(k, v)]).await.expect("lenient");
        assert_eq!(got.0, Some(500 * MS), "{k}: {v}");
    }
    // A valid header still counts when the other one is malformed.
    let got = seen(
        capped,
        &[("grpc-timeout", "bad"), ("x-request-timeout-ms", "50")],
    )
    .await
    .expect("ok");
    assert_eq!(got.0, Some(50 * MS));
}

#[tokio::test(start_paused = true)]
async fn strict_mode_answers_malformed_headers_with_400_without_calling_the_handler() {
    let called = Arc::new(AtomicBool::new(false));
    let flag = called.clone();
    let strict = InboundDeadlineLayer::builder()
        .strict(true)
        .margin(Duration::ZERO)
        .build()
        .expect("valid");
    let svc = ServiceBuilder::new()
        .layer(ProblemLayer::new())
        .layer(strict)
        .service(service_fn(move |_req: http::Request<()>| {
            flag.store(true, Ordering::SeqCst);
            async {
                Ok::<_, Infallible>(http::Response::new(
                    http_body_util::Empty::<bytes::Bytes>::new(),
                ))
            }
        }));
    let req = http::Request::builder()
        .header("grpc-timeout", "5 S")
        .body(())
        .expect("a request");
    let res = svc.clone().oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), 400);
    assert!(!called.load(Ordering::SeqCst));
    let req = http::Request::builder()
        .header("grpc-timeout", "5S")
        .body(())
        .expect("a request");
    assert_eq!(svc.oneshot(req).await.expect("infallible").status(), 200);
}

#[tokio::test(start_paused = true)]
async fn strict_rejection_is_invalid_deadline() {
    let strict = InboundDeadlineLayer::builder()
        .strict(true)
        .margin(Duration::ZERO)
        .build()
        .expect("valid");
    let err = seen(strict, &[("x-request-timeout-ms", "soon")])
        .await
        .expect_err("strict");
    let rejection = Rejection::find_in(&err).expect("a rejection");
    assert_eq!(rejection.kind(), RejectionKind::InvalidDeadline);
    assert_eq!(rejection.grpc_code(), tower_red::GrpcCode::InvalidArgument);
}

#[tokio::test(start_paused = true)]
async fn a_zero_budget_fails_on_arrival() {
    let err = seen(lenient(), &[("grpc-timeout", "0n")])
        .await
        .expect_err("spent");
    let rejection = Rejection::find_in(&err).expect("a rejection");
    assert_eq!(Stage::of(rejection), Some(Stage::Arrival));
}

#[tokio::test(start_paused = true)]
async fn the_handler_is_cut_when_the_inbound_budget_ends_and_answers_504() {
    let svc = ServiceBuilder::new()
        .layer(ProblemLayer::new())
        .layer(lenient())
        .service(service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(http::Response::new(
                http_body_util::Empty::<bytes::Bytes>::new(),
            ))
        }));
    let start = Instant::now();
    let req = http::Request::builder()
        .header("grpc-timeout", "250m")
        .body(())
        .expect("a request");
    let res = svc.oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), 504);
    assert_eq!(start.elapsed(), 250 * MS);
}

#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_already_on_the_request_is_kept() {
    let svc = lenient().layer(service_fn(|req: http::Request<()>| async move {
        Ok::<_, Infallible>(req.extensions().get::<Deadline>().map(|d| d.remaining()))
    }));
    let mut req = http::Request::builder()
        .header("grpc-timeout", "10S")
        .body(())
        .expect("a request");
    req.extensions_mut().insert(Deadline::after(40 * MS));
    advance(MS).await;
    assert_eq!(svc.oneshot(req).await.expect("ok"), Some(39 * MS));
}

#[test]
fn bad_configuration_names_the_field() {
    let err = InboundDeadlineLayer::builder()
        .http_header("not a header")
        .build()
        .expect_err("bad name");
    assert_eq!(err.field(), "http_header");
    let err = InboundDeadlineLayer::builder()
        .http_header("grpc-timeout")
        .build()
        .expect_err("taken");
    assert_eq!(err.field(), "http_header");
    let err = InboundDeadlineLayer::builder()
        .cap(Duration::ZERO)
        .build()
        .expect_err("zero");
    assert_eq!(err.field(), "cap");
}

#[tokio::test(start_paused = true)]
async fn the_inbound_margin_shortens_the_callers_budget_but_not_the_cap() {
    let layer = InboundDeadlineLayer::builder()
        .cap(Duration::from_secs(1))
        .margin(5 * MS)
        .build()
        .expect("valid");
    let got = seen(layer.clone(), &[("grpc-timeout", "100m")])
        .await
        .expect("ok");
    assert_eq!(got.0, Some(95 * MS));
    assert_eq!(
        seen(layer.clone(), &[]).await.expect("ok").0,
        Some(1_000 * MS)
    );
    // Less than the margin: half of it is kept rather than refused on arrival.
    let got = seen(layer, &[("grpc-timeout", "3m")]).await.expect("ok");
    assert_eq!(got.0, Some(Duration::from_micros(1_500)));
}

#[tokio::test(start_paused = true)]
async fn by_default_the_server_gives_up_20_ms_before_its_caller() {
    let layer = InboundDeadlineLayer::new();
    let got = seen(layer.clone(), &[("grpc-timeout", "200m")])
        .await
        .expect("ok");
    assert_eq!(got, (Some(180 * MS), Some(180 * MS)));
    let got = seen(layer.clone(), &[("x-request-timeout-ms", "1500")])
        .await
        .expect("ok");
    assert_eq!(got.0, Some(1_480 * MS));
    // A short budget keeps at least half of itself.
    let got = seen(layer, &[("grpc-timeout", "30m")]).await.expect("ok");
    assert_eq!(got.0, Some(15 * MS));
    let built = InboundDeadlineLayer::builder().build().expect("valid");
    let got = seen(built, &[("grpc-timeout", "200m")]).await.expect("ok");
    assert_eq!(got.0, Some(180 * MS), "the builder has the same default");
}

#[test]
fn configuration_errors_name_the_layer_the_field_and_the_value() {
    let err: tower_red::ConfigError = InboundDeadlineLayer::builder()
        .http_header("grpc-timeout")
        .build()
        .expect_err("taken");
    assert_eq!(
        (err.layer(), err.field(), err.value()),
        ("deadline_inbound", "http_header", "\"grpc-timeout\"")
    );
    assert_eq!(
        err.to_string(),
        "invalid deadline_inbound config: http_header = \"grpc-timeout\": \
         must not be grpc-timeout, which has its own format"
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_service_s_and_so_are_its_errors() {
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<http::Request<()>, http::Response<()>, _>(lenient());
    // Backpressure passes through: not ready while the inner service is not.
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.allow(1);
    assert!(svc.is_woken(), "woken when the inner service is ready");
    assert!(matches!(svc.poll_ready(), std::task::Poll::Ready(Ok(()))));
    // An inner readiness error comes out of `poll_ready`, as a `BoxError`.
    handle.send_error("inner down");
    match svc.poll_ready() {
        std::task::Poll::Ready(Err(err)) => assert_eq!(err.to_string(), "inner down"),
        other => panic!("the inner error, got {other:?}"),
    }
}

#[test]
fn the_service_says_what_it_is_in_debug_output() {
    let svc = lenient().layer(tower::service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(()))
    }));
    let debug = format!("{svc:?}");
    assert!(debug.starts_with("InboundDeadline"), "{debug}");
}
