//! The HTTP adapter: rejections become problem+json responses, other errors a bare 500.

use std::time::Duration;

use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_red::problem::ProblemLayer;
use tower_red::{BoxError, Rejection, RejectionKind};

async fn body_string<B>(body: B) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn failing(
    err: fn() -> BoxError,
) -> impl Service<http::Request<()>, Response = http::Response<String>, Error = BoxError, Future: Send>
+ Clone {
    service_fn(
        move |_req: http::Request<()>| async move { Err::<http::Response<String>, _>(err()) },
    )
}

#[tokio::test]
async fn circuit_open_is_a_503_with_retry_after_and_a_problem_body() {
    let svc = ProblemLayer::new().layer(failing(|| {
        Rejection::new(RejectionKind::CircuitOpen)
            .with_name("payments".into())
            .with_detail("5 failures in a row")
            .with_retry_after(Duration::from_millis(4_200))
            .into()
    }));
    let res = svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "5");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(
        body_string(res.into_body()).await,
        r#"{"type":"urn:tower-red:rejection:circuit_open","title":"circuit open","status":503,"detail":"5 failures in a row","retry_after":5}"#
    );
}

fn named_refusal() -> BoxError {
    Rejection::new(RejectionKind::BulkheadFull)
        .with_name("ledger-db".into())
        .into()
}

#[tokio::test]
async fn problem_bodies_do_not_name_internal_instances_by_default() {
    let res = ProblemLayer::new()
        .layer(failing(named_refusal))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    let body = body_string(res.into_body()).await;
    assert!(!body.contains("ledger-db"), "{body}");
    assert!(!body.contains("instance_name"), "{body}");
    let direct = tower_red::problem::rejection_response(
        &Rejection::new(RejectionKind::BulkheadFull).with_name("ledger-db".into()),
    );
    assert!(!body_string(direct.into_body()).await.contains("ledger-db"));
}

#[tokio::test]
async fn problem_bodies_name_the_instance_when_asked() {
    let res = ProblemLayer::new()
        .expose_instance_name(true)
        .layer(failing(named_refusal))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    let body = body_string(res.into_body()).await;
    assert!(body.contains(r#""instance_name":"ledger-db""#), "{body}");
    let direct = tower_red::problem::rejection_response_with_instance_name(
        &Rejection::new(RejectionKind::BulkheadFull).with_name("ledger-db".into()),
    );
    assert!(
        body_string(direct.into_body())
            .await
            .contains(r#""instance_name":"ledger-db""#)
    );
}

#[tokio::test]
async fn every_kind_gets_its_status() {
    for kind in RejectionKind::ALL {
        let svc =
            ProblemLayer::new().layer(service_fn(move |_req: http::Request<()>| async move {
                Err::<http::Response<String>, BoxError>(Rejection::new(kind).into())
            }));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.status(), kind.http_status(), "{kind}");
        assert!(res.headers().get("retry-after").is_none());
        let body = body_string(res.into_body()).await;
        assert!(body.contains(kind.as_str()), "{body}");
    }
    assert_eq!(RejectionKind::IdempotencyConflict.http_status(), 409);
    assert_eq!(RejectionKind::IdempotencyMismatch.http_status(), 422);
    assert_eq!(RejectionKind::IdempotencyKeyInvalid.http_status(), 400);
    assert_eq!(RejectionKind::DeadlineExceeded.http_status(), 504);
}

#[tokio::test]
async fn a_layers_own_reason_is_in_the_body() {
    let svc = ProblemLayer::new().layer(failing(|| {
        Rejection::new(RejectionKind::BulkheadFull)
            .with_reason("queue_full")
            .into()
    }));
    let res = svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(res.status(), 503);
    let body = body_string(res.into_body()).await;
    assert!(body.contains(r#""reason":"queue_full""#), "{body}");
}

#[tokio::test]
async fn other_errors_are_a_500_that_leaks_nothing() {
    let svc = ProblemLayer::new().layer(failing(|| "password=hunter2 in connection string".into()));
    let res = svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(res.status(), 500);
    let body = body_string(res.into_body()).await;
    assert!(!body.contains("hunter2"), "{body}");
}

#[tokio::test]
async fn other_errors_can_be_mapped() {
    let layer = ProblemLayer::new().on_error(|err: &BoxError| {
        let mut res = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
            err.to_string(),
        )));
        *res.status_mut() = http::StatusCode::BAD_GATEWAY;
        res
    });
    let res = layer
        .layer(failing(|| "upstream reset".into()))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(body_string(res.into_body()).await, "upstream reset");
}

#[tokio::test]
async fn responses_pass_through_untouched() {
    let svc = ProblemLayer::new().layer(service_fn(|_req: http::Request<()>| async {
        Ok::<_, BoxError>(
            http::Response::builder()
                .status(418)
                .header("x-tea", "yes")
                .body("pot".to_string())
                .unwrap(),
        )
    }));
    let res = svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(res.status(), 418);
    assert_eq!(res.headers()["x-tea"], "yes");
    assert_eq!(body_string(res.into_body()).await, "pot");
}

#[tokio::test]
async fn a_readiness_error_becomes_a_response_instead_of_killing_the_stack() {
    #[derive(Clone)]
    struct NeverReady;
    impl Service<http::Request<()>> for NeverReady {
        type Response = http::Response<String>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<http::Response<String>, BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Err(Rejection::new(RejectionKind::LoadShed).into()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let mut svc = ProblemLayer::new().layer(NeverReady);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
}

#[cfg(feature = "tonic")]
mod grpc {
    use super::*;
    use tower_red::grpc::status::{RETRY_PUSHBACK_MS, StatusLayer};

    #[tokio::test]
    async fn rejections_become_trailers_only_grpc_responses() {
        let svc = StatusLayer::new().layer(failing(|| {
            Rejection::new(RejectionKind::CircuitOpen)
                .with_retry_after(Duration::from_millis(1500))
                .into()
        }));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(res.headers()[RETRY_PUSHBACK_MS], "1500");
    }

    #[tokio::test]
    async fn a_refusal_is_marked_so_outer_layers_judge_it_a_refusal_not_a_backend_failure() {
        use tower_red::classify::{GrpcStatus, Verdict, judge};
        let svc = StatusLayer::new().layer(failing(|| {
            Rejection::new(RejectionKind::BulkheadFull).into()
        }));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "8", "resource exhausted");
        assert_eq!(
            res.extensions().get::<RejectionKind>(),
            Some(&RejectionKind::BulkheadFull)
        );
        assert_eq!(
            judge(&GrpcStatus::new(), &Ok::<_, BoxError>(res)),
            Verdict::Refused(RejectionKind::BulkheadFull),
            "as a problem+json refusal is: not the backend's resource exhaustion"
        );
        // A handler's own status is the backend's answer: no mark.
        let svc = StatusLayer::new().layer(failing(|| {
            tonic::Status::resource_exhausted("quota").into()
        }));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.extensions().get::<RejectionKind>(), None);
    }

    #[tokio::test]
    async fn kinds_map_to_their_grpc_codes() {
        for kind in RejectionKind::ALL {
            let status = tonic::Status::from(Rejection::new(kind));
            assert_eq!(status.code() as i32, kind.grpc_code().as_i32(), "{kind}");
        }
    }

    #[tokio::test]
    async fn other_errors_are_unknown_and_statuses_pass_through() {
        let svc = StatusLayer::new().layer(failing(|| "secret".into()));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "2");
        let svc =
            StatusLayer::new().layer(failing(|| tonic::Status::not_found("no such user").into()));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "5");
    }

    #[tokio::test]
    async fn grpc_statuses_do_not_name_internal_instances_by_default() {
        let svc = StatusLayer::new().layer(failing(named_refusal));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        let sent = tonic::Status::from_header_map(res.headers()).expect("a trailers-only status");
        assert_eq!(sent.code(), tonic::Code::ResourceExhausted);
        let message = sent.message();
        assert!(message.starts_with("bulkhead full"), "{message}");
        assert!(!message.contains("ledger-db"), "{message}");
        // In-process (a client's caller), the name stays.
        let status = tonic::Status::from(
            Rejection::new(RejectionKind::BulkheadFull).with_name("ledger-db".into()),
        );
        assert!(status.message().contains("ledger-db"));
    }

    #[test]
    fn status_of_keeps_tonics_own_mapping_of_its_transport_errors() {
        use tower_red::grpc::status::status_of;
        let refused: BoxError = tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
        .into();
        assert_eq!(status_of(&refused).code(), tonic::Code::Unavailable);
        let timed_out: BoxError = tonic::TimeoutExpired(()).into();
        assert_eq!(status_of(&timed_out).code(), tonic::Code::Cancelled);
        // What tonic does not know stays hidden.
        let secret: BoxError = "password=hunter2".into();
        let status = status_of(&secret);
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert!(!status.message().contains("hunter2"));
    }
}

#[cfg(feature = "axum")]
mod axum_handlers {
    use super::*;
    use axum::Router;
    use axum::routing::get;

    /// A handler whose outbound call was refused returns the rejection as it is.
    async fn checkout() -> Result<&'static str, Rejection> {
        Err(Rejection::new(RejectionKind::CircuitOpen)
            .with_name("payments".into())
            .with_retry_after(Duration::from_secs(3)))
    }

    #[tokio::test]
    async fn a_handler_returns_a_rejection_as_a_problem_response() {
        let app = Router::new().route("/checkout", get(checkout));
        let res = app
            .oneshot(
                http::Request::get("/checkout")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "3");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        // Still marked as our refusal, so outer layers and classifiers see one.
        assert_eq!(
            res.extensions().get::<RejectionKind>(),
            Some(&RejectionKind::CircuitOpen)
        );
        let body = body_string(res.into_body()).await;
        assert!(
            body.contains("urn:tower-red:rejection:circuit_open"),
            "{body}"
        );
    }
}
