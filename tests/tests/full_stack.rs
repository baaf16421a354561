//! Every layer stacked, as users stack them: on an axum router, on a tonic server and around a
//! reqwest client, each exercised over loopback. Building these stacks is itself the check that
//! the layers compose and are `Send + Sync + 'static`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{ServiceBuilder, ServiceExt};
use tower_breaker::{BreakerBuilder, BreakerLayer};
use tower_bulkhead::BulkheadLayer;
use tower_red::grpc::status::StatusLayer;
use tower_red::problem::ProblemLayer;
use tower_red::{BoxError, RedLayer, Rejection, RejectionKind};
use tower_timeout_budget::inbound::InboundDeadlineLayer;
use tower_timeout_budget::outbound::OutboundDeadlineLayer;
use tower_timeout_budget::{Deadline, TimeoutBudgetLayer};

fn assert_send_sync_static<T: Send + Sync + 'static>(_: &T) {}

fn breaker(name: &str, consecutive_failures: u32) -> BreakerBuilder {
    BreakerLayer::builder()
        .name(name)
        .consecutive_failures(consecutive_failures)
        .open_time(Duration::from_secs(30))
}

#[tokio::test]
async fn axum_router_with_every_layer_serves_and_refuses_over_the_wire() {
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/fail",
            get(|| async { (http::StatusCode::BAD_GATEWAY, "upstream down") }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RedLayer::server())
                .layer(ProblemLayer::new())
                .layer(
                    InboundDeadlineLayer::builder()
                        .cap(Duration::from_secs(5))
                        .build()
                        .unwrap(),
                )
                .layer(
                    BulkheadLayer::builder()
                        .name("api")
                        .max_concurrent(16)
                        .build()
                        .unwrap(),
                )
                .layer(
                    breaker("api", 2)
                        .http_status()
                        .build()
                        .expect("a valid breaker"),
                ),
        );
    assert_send_sync_static(&app);
    let addr = tests::serve_axum(app).await;

    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{addr}{path}")).send();
    assert_eq!(get("/ok").await.unwrap().status(), 200);
    assert_eq!(get("/fail").await.unwrap().status(), 502);
    assert_eq!(get("/fail").await.unwrap().status(), 502);
    // Two 5xx in a row opened the breaker: the next call is refused before the handler runs.
    let refused = get("/ok").await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "30");
    assert!(refused.text().await.unwrap().contains("circuit_open"));
}

#[tokio::test]
async fn tonic_server_with_every_layer_answers_grpc_codes() {
    let (reporter, addr) = tests::serve_health(
        ServiceBuilder::new()
            .layer(StatusLayer::new())
            .layer(
                InboundDeadlineLayer::builder()
                    .cap(Duration::from_secs(5))
                    .build()
                    .unwrap(),
            )
            .layer(
                BulkheadLayer::builder()
                    .name("grpc")
                    .max_concurrent(16)
                    .build()
                    .unwrap(),
            )
            .layer(
                breaker("grpc", 2)
                    .grpc_status()
                    .build()
                    .expect("a valid breaker"),
            ),
    )
    .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The client side: rejections reach the caller as their gRPC status, the breaker guards
    // the channel, and the deadline travels out as grpc-timeout, written innermost.
    let client_stack = ServiceBuilder::new()
        .layer(tower_red::grpc::client::ClientStatusLayer::new())
        .layer(
            breaker("health-client", 5)
                .grpc_status()
                .build()
                .expect("a valid breaker"),
        )
        .layer(
            OutboundDeadlineLayer::builder()
                .margin(Duration::from_millis(5))
                .build()
                .unwrap(),
        )
        .service(channel);
    assert_send_sync_static(&client_stack);
    let mut client = HealthClient::new(tower::util::BoxCloneSyncService::new(
        client_stack.map_err(|e: BoxError| e),
    ));
    let ok = Deadline::after(Duration::from_secs(2))
        .scope(client.check(HealthCheckRequest {
            service: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().status, 1, "SERVING");
    let unknown = client
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reqwest_client_wrapped_in_every_client_layer() {
    let app = Router::new().route("/", get(|| async { "hi" }));
    let addr = tests::serve_axum(app).await;

    // The client order: the breaker above the bulkhead (an open circuit refuses before a
    // queue), the outbound deadline innermost (it writes the budget left after every wait).
    let client = ServiceBuilder::new()
        .layer(RedLayer::client())
        .layer(TimeoutBudgetLayer::new(Duration::from_secs(5)).unwrap())
        .layer(
            breaker("out", 3)
                .http_status()
                .build()
                .expect("a valid breaker"),
        )
        .layer(
            BulkheadLayer::builder()
                .name("out")
                .max_concurrent(4)
                .build()
                .unwrap(),
        )
        .layer(OutboundDeadlineLayer::new())
        .service(reqwest::Client::new());
    assert_send_sync_static(&client);
    let url: reqwest::Url = format!("http://{addr}/").parse().unwrap();
    let res = client
        .clone()
        .oneshot(reqwest::Request::new(http::Method::GET, url.clone()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // A spent budget fails fast, before anything is sent.
    let spent = Deadline::after(Duration::ZERO)
        .scope(client.oneshot(reqwest::Request::new(http::Method::GET, url)))
        .await
        .unwrap_err();
    let rejection = Rejection::find_in(&spent).expect("refused locally");
    assert_eq!(rejection.kind(), RejectionKind::DeadlineExceeded);
}

#[test]
fn generic_request_types_compose_too() {
    let svc = ServiceBuilder::new()
        .layer(TimeoutBudgetLayer::new(Duration::from_secs(1)).unwrap())
        .layer(
            BulkheadLayer::builder()
                .name("jobs")
                .max_concurrent(2)
                .build()
                .unwrap(),
        )
        .layer(breaker("jobs", 3).build().expect("a valid breaker"))
        .service(tower::service_fn(|n: u64| async move {
            Ok::<_, Infallible>(n * 2)
        }));
    assert_send_sync_static(&svc);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let doubled = rt.block_on(svc.oneshot(21)).unwrap();
    assert_eq!(doubled, 42);
}

/// The README's client stack, exactly: a POST that fails twice with 503 is retried (it carries
/// an idempotency key) and every attempt carries the same key.
#[tokio::test]
async fn the_readme_client_stack_retries_a_post_with_one_key() {
    use std::sync::{Arc, Mutex};
    use tower_idempotency::client::IdempotencyKeyLayer;
    use tower_retry_jitter::{RetryLayer, RetryOn};

    let keys = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = keys.clone();
    let app = Router::new().route(
        "/pay",
        axum::routing::post(move |headers: http::HeaderMap| {
            let seen = seen.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let mut seen = seen.lock().unwrap();
                seen.push(key);
                if seen.len() < 3 {
                    http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    http::StatusCode::CREATED
                }
            }
        }),
    );
    let addr = tests::serve_axum(app).await;

    let client = ServiceBuilder::new()
        .layer(RedLayer::client())
        .layer(IdempotencyKeyLayer::new())
        .layer(TimeoutBudgetLayer::new(Duration::from_secs(2)).unwrap())
        .layer(
            RetryLayer::builder()
                .name("payments")
                .reqwest()
                .retry_on(RetryOn::new())
                .build()
                .unwrap(),
        )
        .layer(
            tower_breaker::BreakerLayer::builder()
                .name("payments")
                .http_status()
                .build()
                .unwrap(),
        )
        .layer(
            BulkheadLayer::builder()
                .name("payments")
                .max_concurrent(32)
                .build()
                .unwrap(),
        )
        .layer(OutboundDeadlineLayer::new())
        .service(reqwest::Client::new());
    assert_send_sync_static(&client);
    let url: reqwest::Url = format!("http://{addr}/pay").parse().unwrap();
    let res = client
        .oneshot(reqwest::Request::new(http::Method::POST, url))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 3, "two 503s retried");
    assert!(!keys[0].is_empty());
    assert!(keys.iter().all(|k| *k == keys[0]), "one key: {keys:?}");
}
