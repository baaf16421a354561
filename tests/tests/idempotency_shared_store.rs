//! tower-idempotency on two server instances that share one store, as a service scaled to two
//! replicas does: duplicates spread over both run the handler once. And a Redis store that goes
//! down in the middle of a run: 503s, no duplicate execution, recovery when it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use tests::PrivateRedis;
use tokio::sync::Semaphore;
use tower_idempotency::store::redis::{RedisConnection, RedisStore};
use tower_idempotency::store::{MemoryStore, Store};
use tower_idempotency::{IdempotencyLayer, RequestBody};

#[derive(Clone, Default)]
struct Charges(Arc<AtomicUsize>);

async fn charge(State(charges): State<Charges>, body: String) -> (http::StatusCode, String) {
    let n = charges.0.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(100)).await;
    (http::StatusCode::CREATED, format!("charge {n}: {body}"))
}

/// One server instance in front of `store`; every instance counts into `charges`.
async fn instance<St>(store: St, charges: Charges) -> String
where
    St: Store + Clone,
{
    let layer = IdempotencyLayer::builder(store)
        .principal(|parts| Some(parts.headers.get("x-user")?.to_str().ok()?.to_owned()))
        .lease(Duration::from_secs(30))
        .map_request_body(|body: RequestBody<Body>| Body::new(body))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/charges", post(charge))
        .layer(layer)
        .with_state(charges);
    let addr = tests::serve_axum(app).await;
    format!("http://{addr}/charges")
}

/// 1,000 duplicates of one key, at most 200 in flight, alternating between two instances that
/// share `store`: the handler runs once, and every caller gets the first response or a 409.
async fn thousand_duplicates_over_two_instances<St>(store: St, key: &str)
where
    St: Store + Clone,
{
    let charges = Charges::default();
    let urls = [
        instance(store.clone(), charges.clone()).await,
        instance(store, charges.clone()).await,
    ];
    let client = reqwest::Client::new();
    let in_flight = Arc::new(Semaphore::new(200));
    let calls: Vec<_> = (0..1_000)
        .map(|i| {
            let req = client
                .post(&urls[i % 2])
                .header("x-user", "alice")
                .header("idempotency-key", key)
                .body("10 EUR");
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let _permit = in_flight.acquire_owned().await.unwrap();
                let res = tokio::time::timeout(Duration::from_secs(30), req.send())
                    .await
                    .expect("every call is bounded")
                    .expect("the server answers");
                let status = res.status().as_u16();
                (status, res.text().await.unwrap())
            })
        })
        .collect();
    let (mut created, mut conflicts) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            (201, body) => {
                assert_eq!(body, "charge 1: 10 EUR", "the first response, replayed");
                created += 1;
            }
            (409, _) => conflicts += 1,
            (status, body) => panic!("unexpected {status}: {body}"),
        }
    }
    assert_eq!(created + conflicts, 1_000);
    assert!(created >= 1);
    assert_eq!(
        charges.0.load(Ordering::SeqCst),
        1,
        "one charge for 1,000 duplicates over two instances ({created} created, {conflicts} conflicts)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_over_two_instances_sharing_a_memory_store_run_once() {
    thousand_duplicates_over_two_instances(MemoryStore::new(), "k-two-memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_over_two_instances_sharing_redis_run_once() {
    let Some(redis) =
        PrivateRedis::start("duplicates_over_two_instances_sharing_redis_run_once").await
    else {
        return;
    };
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    thousand_duplicates_over_two_instances(store, "k-two-redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_mid_run_fails_closed_and_never_runs_a_duplicate() {
    let Some(mut redis) =
        PrivateRedis::start("a_redis_outage_mid_run_fails_closed_and_never_runs_a_duplicate").await
    else {
        return;
    };
    let store = RedisStore::builder()
        .timeout(Duration::from_millis(300))
        .build(RedisConnection::connect(&redis.url()).await.unwrap())
        .unwrap();
    let charges = Charges::default();
    let url = instance(store, charges.clone()).await;
    let client = reqwest::Client::new();
    let send = |key: String| {
        let req = client
            .post(&url)
            .header("x-user", "alice")
            .header("idempotency-key", key)
            .body("5 EUR");
        async move {
            let res = tokio::time::timeout(Duration::from_secs(10), req.send())
                .await
                .expect("bounded even while Redis is down")
                .unwrap();
            let status = res.status().as_u16();
            let retry_after = res.headers().get("retry-after").cloned();
            (status, retry_after, res.text().await.unwrap())
        }
    };

    // Up: five payments run once each.
    for i in 0..5 {
        assert_eq!(send(format!("k-up-{i}")).await.0, 201);
    }
    assert_eq!(charges.0.load(Ordering::SeqCst), 5);

    // Down: every request is refused before the handler runs, with a time to come back.
    redis.stop();
    for i in 0..5 {
        let (status, retry_after, body) = send(format!("k-down-{i}")).await;
        assert_eq!(status, 503, "{body}");
        assert!(retry_after.is_some());
        assert!(body.contains("store_unavailable"), "{body}");
    }
    assert_eq!(
        charges.0.load(Ordering::SeqCst),
        5,
        "nothing ran while down"
    );

    // Back (empty, as after a crash): the store recovers without a new layer.
    redis.restart().await;
    let mut recovered = None;
    for attempt in 0..50 {
        let (status, ..) = send("k-back".to_owned()).await;
        if status == 201 {
            recovered = Some(attempt);
            break;
        }
        assert_eq!(status, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered.is_some(), "the store came back within 5 s");
    // The refused keys were never claimed: they run now, once.
    assert_eq!(send("k-down-0".to_owned()).await.0, 201);
    assert_eq!(send("k-down-0".to_owned()).await.0, 201, "a replay");
    assert_eq!(charges.0.load(Ordering::SeqCst), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_over_two_instances_sharing_a_redis_cluster_run_once() {
    let Some(urls) =
        tests::redis_cluster_urls("duplicates_over_two_instances_sharing_a_redis_cluster_run_once")
            .await
    else {
        return;
    };
    let store = RedisStore::connect_cluster(&urls).await.unwrap();
    // A key of its own per run: the CI cluster outlives a test process.
    let key = format!("k-two-cluster-{}", std::process::id());
    thousand_duplicates_over_two_instances(store, &key).await;
}
