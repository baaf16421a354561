//! The tower-red adapters and `RedLayer` on real servers: axum and tonic on loopback, called by
//! reqwest and a tonic client.

use std::convert::Infallible;

use tests::RefuseOnHeaderLayer;

use axum::Router;
use axum::routing::get;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_red::grpc::status::{RETRY_PUSHBACK_MS, StatusLayer};
use tower_red::problem::ProblemLayer;
use tower_red::{RedLayer, RejectionKind, names};

#[tokio::test]
async fn axum_answers_rejections_with_problem_json_over_the_wire() {
    let app = Router::new()
        .route("/orders/{id}", get(|| async { "ok" }))
        .layer(
            ServiceBuilder::new()
                .layer(RedLayer::server())
                .layer(ProblemLayer::new())
                .layer(RefuseOnHeaderLayer::named("test")),
        );
    let addr = tests::serve_axum(app).await;
    let client = reqwest::Client::new();

    let ok = client
        .get(format!("http://{addr}/orders/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "ok");

    let cases = [
        ("circuit_open", 503),
        ("bulkhead_full", 503),
        ("deadline_exceeded", 504),
        ("idempotency_conflict", 409),
        ("idempotency_mismatch", 422),
        ("idempotency_key_invalid", 400),
    ];
    for (kind, status) in cases {
        let res = client
            .get(format!("http://{addr}/orders/1"))
            .header("x-refuse", kind)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{kind}");
        assert_eq!(
            res.headers()["retry-after"],
            "3",
            "{kind}: rounded up from 2.5 s"
        );
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body = res.text().await.unwrap();
        assert!(
            body.starts_with(&format!("{{\"type\":\"urn:tower-red:rejection:{kind}\"")),
            "{body}"
        );
        assert!(body.contains(&format!("\"status\":{status}")), "{body}");
    }
}

#[tokio::test]
async fn reqwest_client_metrics_through_red_layer() {
    let addr = tests::serve_axum(Router::new().route("/", get(|| async { "hi" }))).await;
    let recorder = DebuggingRecorder::new();
    let mut client = metrics::with_local_recorder(&recorder, || {
        ServiceBuilder::new()
            .layer(RedLayer::client())
            .service(reqwest::Client::new())
    });
    let guard = metrics::set_default_local_recorder(&recorder);
    for path in ["/", "/", "/missing"] {
        let req = reqwest::Request::new(
            http::Method::GET,
            format!("http://{addr}{path}").parse().unwrap(),
        );
        client.ready().await.unwrap().call(req).await.unwrap();
    }
    drop(guard);
    let port = addr.port().to_string();
    let mut seen = Vec::new();
    for (key, _, _, value) in recorder.snapshotter().snapshot().into_vec() {
        if key.key().name() != names::HTTP_CLIENT_REQUEST_DURATION_SECONDS {
            continue;
        }
        let label = |name: &str| {
            key.key()
                .labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_string())
        };
        assert_eq!(label("server_address").as_deref(), Some("127.0.0.1"));
        assert_eq!(label("server_port").as_deref(), Some(port.as_str()));
        let DebugValue::Histogram(values) = value else {
            panic!("a histogram")
        };
        seen.push((
            label("http_response_status_code").unwrap(),
            label("error_type"),
            values.len(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("200".to_string(), None, 2),
            ("404".to_string(), Some("404".to_string()), 1)
        ]
    );
}

#[tokio::test]
async fn tonic_server_answers_rejections_with_their_grpc_codes() {
    let (_reporter, addr) = tests::serve_health(
        ServiceBuilder::new()
            .layer(StatusLayer::new())
            .layer(RefuseOnHeaderLayer::named("test")),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);

    let ok = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().status, 1, "SERVING");

    for kind in [
        RejectionKind::CircuitOpen,
        RejectionKind::BulkheadFull,
        RejectionKind::DeadlineExceeded,
    ] {
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        req.metadata_mut()
            .insert("x-refuse", kind.as_str().parse().unwrap());
        let status = client.check(req).await.unwrap_err();
        assert_eq!(status.code() as i32, kind.grpc_code().as_i32(), "{kind}");
        assert_eq!(status.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "2500");
        assert!(
            status.message().contains(kind.title()),
            "{}",
            status.message()
        );
    }
}

#[test]
fn adapted_stacks_are_send_sync_and_infallible() {
    fn assert_service<S, Req>(_: &S)
    where
        S: Service<Req, Error = Infallible> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
    }
    let http = ServiceBuilder::new()
        .layer(RedLayer::server())
        .layer(ProblemLayer::new())
        .layer(RefuseOnHeaderLayer::named("test"))
        .service(tower::service_fn(
            |_req: http::Request<axum::body::Body>| async {
                Ok::<_, Infallible>(http::Response::new(axum::body::Body::empty()))
            },
        ));
    assert_service::<_, http::Request<axum::body::Body>>(&http);
}
