//! The tower-red adapters and `RedLayer` on real servers: axum and tonic on loopback, called by
//! reqwest and a tonic client.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_red::grpc::status::{RETRY_PUSHBACK_MS, StatusLayer};
use tower_red::problem::ProblemLayer;
use tower_red::{BoxError, RedLayer, Rejection, RejectionKind, names};

/// Refuses requests carrying `x-refuse: <kind>` with that rejection; passes the rest through.
#[derive(Clone)]
struct RefuseOnHeader<S>(S);

impl<S, B> Service<http::Request<B>> for RefuseOnHeader<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let kind = req.headers().get("x-refuse").and_then(|v| {
            RejectionKind::ALL
                .into_iter()
                .find(|k| k.as_str().as_bytes() == v.as_bytes())
        });
        if let Some(kind) = kind {
            let rejection = Rejection::new(kind)
                .with_name(Arc::from("test"))
                .with_retry_after(Duration::from_millis(2_500));
            return Box::pin(async move { Err(rejection.into()) });
        }
        let fut = self.0.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

#[derive(Clone, Copy)]
struct RefuseOnHeaderLayer;

impl<S> Layer<S> for RefuseOnHeaderLayer {
    type Service = RefuseOnHeader<S>;
    fn layer(&self, inner: S) -> RefuseOnHeader<S> {
        RefuseOnHeader(inner)
    }
}

#[tokio::test]
async fn axum_answers_rejections_with_problem_json_over_the_wire() {
    let app = Router::new()
        .route("/orders/{id}", get(|| async { "ok" }))
        .layer(
            ServiceBuilder::new()
                .layer(RedLayer::server())
                .layer(ProblemLayer::new())
                .layer(RefuseOnHeaderLayer),
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
            .layer(RefuseOnHeaderLayer),
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
        .layer(RefuseOnHeaderLayer)
        .service(tower::service_fn(
            |_req: http::Request<axum::body::Body>| async {
                Ok::<_, Infallible>(http::Response::new(axum::body::Body::empty()))
            },
        ));
    assert_service::<_, http::Request<axum::body::Body>>(&http);
}
