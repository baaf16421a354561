//! A bulkhead that holds its permit until the response body ends, over a real socket: axum
//! streams a body to reqwest while a second request is refused, and the permit comes back when
//! the body ends or the client walks away.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use futures::channel::mpsc;
use tower::ServiceBuilder;
use tower_bulkhead::{BulkheadHandle, BulkheadLayer, DEFAULT_PARTITION};
use tower_red::problem::ProblemLayer;

type Senders = Arc<Mutex<Vec<mpsc::UnboundedSender<Result<Bytes, std::io::Error>>>>>;

/// Serves `/stream` (a body fed by the test through `Senders`) and `/other`, behind a
/// bulkhead of one permit held until the body ends.
async fn serve() -> (std::net::SocketAddr, Senders, BulkheadHandle) {
    let senders: Senders = Arc::default();
    let bulkhead = BulkheadLayer::builder()
        .name("bodies")
        .max_concurrent(1)
        .hold_permit_until_body_end()
        .build()
        .unwrap();
    let handle = bulkhead.handle();
    let stream_senders = senders.clone();
    let app = Router::new()
        .route(
            "/stream",
            get(move || {
                let senders = stream_senders.clone();
                async move {
                    let (tx, rx) = mpsc::unbounded();
                    tx.unbounded_send(Ok(Bytes::from_static(b"first;")))
                        .unwrap();
                    senders.lock().unwrap().push(tx);
                    Body::from_stream(rx)
                }
            }),
        )
        .route("/other", get(|| async { "other" }))
        .layer(
            ServiceBuilder::new()
                .layer(ProblemLayer::new())
                .layer(bulkhead),
        );
    let addr = tests::serve_axum(app).await;
    (addr, senders, handle)
}

async fn wait_for_in_flight(handle: &BulkheadHandle, expected: usize) {
    for _ in 0..200 {
        if handle.in_flight(DEFAULT_PARTITION) == Some(expected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "in flight stayed at {:?}, expected {expected}",
        handle.in_flight(DEFAULT_PARTITION)
    );
}

#[tokio::test]
async fn the_permit_is_held_until_the_streamed_body_ends() {
    let (addr, senders, handle) = serve().await;
    let client = reqwest::Client::new();

    let mut streaming = client
        .get(format!("http://{addr}/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    assert_eq!(streaming.chunk().await.unwrap().unwrap(), "first;");
    // The head has gone out, but the body has not ended: the permit is still held.
    assert_eq!(handle.in_flight(DEFAULT_PARTITION), Some(1));
    let refused = client
        .get(format!("http://{addr}/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        503,
        "the one permit is still held by the body"
    );

    let tx = senders.lock().unwrap().pop().unwrap();
    tx.unbounded_send(Ok(Bytes::from_static(b"last"))).unwrap();
    drop(tx);
    assert_eq!(streaming.chunk().await.unwrap().unwrap(), "last");
    assert!(streaming.chunk().await.unwrap().is_none());
    wait_for_in_flight(&handle, 0).await;
    let after = client
        .get(format!("http://{addr}/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
}

#[tokio::test]
async fn a_client_walking_away_mid_body_gives_the_permit_back() {
    let (addr, senders, handle) = serve().await;
    let client = reqwest::Client::new();

    let mut streaming = client
        .get(format!("http://{addr}/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.chunk().await.unwrap().unwrap(), "first;");
    assert_eq!(handle.in_flight(DEFAULT_PARTITION), Some(1));
    // The client drops the response (and its connection) with the body unfinished; the server
    // drops the body, and with it the permit.
    drop(streaming);
    drop(client);
    wait_for_in_flight(&handle, 0).await;
    assert!(senders.lock().unwrap().iter().all(|tx| tx.is_closed()));
    let fresh = reqwest::Client::new();
    let after = fresh
        .get(format!("http://{addr}/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
}
