//! The client half of the gRPC adapter on a real tonic client and server: a layer's refusal in a
//! client stack reaches the caller as its own `Status`, tonic's own errors keep tonic's mapping.

use tests::RefuseOnHeaderLayer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;
use tower_red::grpc::client::ClientStatusLayer;
use tower_red::grpc::status::RETRY_PUSHBACK_MS;
use tower_red::{Rejection, RejectionKind};

async fn health_server() -> std::net::SocketAddr {
    tests::serve_health(tower::layer::util::Identity::new())
        .await
        .1
}

fn check(refuse: Option<RejectionKind>) -> tonic::Request<HealthCheckRequest> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(kind) = refuse {
        req.metadata_mut()
            .insert("x-refuse", kind.as_str().parse().unwrap());
    }
    req
}

#[tokio::test]
async fn a_rejection_in_a_tonic_client_stack_reaches_the_caller_as_its_status() {
    let addr = health_server().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(ClientStatusLayer::new())
        .layer(RefuseOnHeaderLayer::named("upstream"))
        .service(channel);
    let mut client = HealthClient::new(stack);

    let ok = client.check(check(None)).await.unwrap();
    assert_eq!(ok.into_inner().status, 1, "SERVING");

    for kind in [
        RejectionKind::CircuitOpen,
        RejectionKind::BulkheadFull,
        RejectionKind::DeadlineExceeded,
    ] {
        let status = client.check(check(Some(kind))).await.unwrap_err();
        assert_eq!(status.code() as i32, kind.grpc_code().as_i32(), "{kind}");
        assert_eq!(
            status
                .metadata()
                .get(RETRY_PUSHBACK_MS)
                .map(|v| v.to_str().unwrap()),
            Some("2500"),
            "{kind}"
        );
        assert!(
            status.message().starts_with(kind.title()),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("(upstream)"),
            "{}",
            status.message()
        );
        // The caller can still find the rejection itself, through the status's source.
        let rejection = Rejection::find(&status).expect("the rejection is the status's source");
        assert_eq!(rejection.kind(), kind);
        assert_eq!(rejection.name(), Some("upstream"));
    }
}

#[tokio::test]
async fn a_refused_connection_stays_unavailable_through_the_adapter() {
    // A port nothing listens on: bound, then closed.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let stack = ServiceBuilder::new()
        .layer(ClientStatusLayer::new())
        .layer(RefuseOnHeaderLayer::named("upstream"))
        .service(channel);
    let mut client = HealthClient::new(stack);
    let status = client.check(check(None)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}
