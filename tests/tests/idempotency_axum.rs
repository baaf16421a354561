//! tower-idempotency in front of a real axum server on loopback, called with reqwest.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, RequestBody};

#[derive(Clone, Default)]
struct Charges(Arc<AtomicUsize>);

/// A payments handler: counts each charge, takes a while, answers with the charge number.
async fn charge(
    State(charges): State<Charges>,
    body: String,
) -> (http::StatusCode, [(&'static str, String); 2], String) {
    let n = charges.0.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    (
        http::StatusCode::CREATED,
        [
            ("x-charge", n.to_string()),
            ("set-cookie", "s=1".to_owned()),
        ],
        format!("charge {n}: {body}"),
    )
}

async fn serve() -> (String, Charges) {
    let charges = Charges::default();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .principal(|parts| Some(parts.headers.get("x-user")?.to_str().ok()?.to_owned()))
        .lease(Duration::from_secs(30))
        // Scope by the route template, as axum matched it.
        .route(|parts| {
            let matched = parts.extensions.get::<axum::extract::MatchedPath>()?;
            Some(matched.as_str().to_owned())
        })
        .map_request_body(|body: RequestBody<Body>| Body::new(body))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/charges", post(charge))
        .layer(layer)
        .with_state(charges.clone());
    let addr = tests::serve_axum(app).await;
    (format!("http://{addr}/charges"), charges)
}

fn charge_request(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    key: &str,
    body: &'static str,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("x-user", user)
        .header("idempotency-key", key)
        .body(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_of_one_key_run_the_handler_once() {
    let (url, charges) = serve().await;
    let client = reqwest::Client::new();
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let req = charge_request(&client, &url, "alice", "k-concurrent", "10 EUR");
            tokio::spawn(async move {
                let res = tokio::time::timeout(Duration::from_secs(10), req.send())
                    .await
                    .expect("bounded")
                    .unwrap();
                let status = res.status();
                let retry_after = res.headers().get("retry-after").cloned();
                (status, retry_after, res.text().await.unwrap())
            })
        })
        .collect();
    let mut created = 0;
    for call in calls {
        let (status, retry_after, body) = call.await.unwrap();
        match status.as_u16() {
            201 => {
                created += 1;
                assert_eq!(body, "charge 1: 10 EUR");
            }
            409 => {
                let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
                assert!((1..=30).contains(&secs), "{secs}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(created >= 1);
    assert_eq!(charges.0.load(Ordering::SeqCst), 1, "exactly one charge");
}

#[tokio::test]
async fn a_completed_request_replays_byte_for_byte() {
    let (url, charges) = serve().await;
    let client = reqwest::Client::new();
    let first = charge_request(&client, &url, "alice", "k-replay", "5 EUR")
        .send()
        .await
        .unwrap();
    let first_status = first.status();
    let first_charge = first.headers()["x-charge"].clone();
    assert!(first.headers().get("set-cookie").is_some());
    let first_body = first.bytes().await.unwrap();

    let again = charge_request(&client, &url, "alice", "k-replay", "5 EUR")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), first_status);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(again.headers()["x-charge"], first_charge);
    assert!(again.headers().get("set-cookie").is_none());
    assert_eq!(again.bytes().await.unwrap(), first_body);
    assert_eq!(charges.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_changed_body_under_the_same_key_is_422() {
    let (url, charges) = serve().await;
    let client = reqwest::Client::new();
    charge_request(&client, &url, "alice", "k-body", "5 EUR")
        .send()
        .await
        .unwrap();
    let res = charge_request(&client, &url, "alice", "k-body", "500 EUR")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(charges.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_duplicate_while_the_first_runs_is_409_with_retry_after() {
    let (url, charges) = serve().await;
    let client = reqwest::Client::new();
    let first = tokio::spawn(charge_request(&client, &url, "alice", "k-409", "1 EUR").send());
    // The handler takes 200 ms; ask until the first one holds the key.
    let mut conflict = None;
    for _ in 0..100 {
        let res = charge_request(&client, &url, "alice", "k-409", "1 EUR")
            .send()
            .await
            .unwrap();
        if res.status() == 409 {
            conflict = Some(res);
            break;
        }
        if res.status() == 201 {
            break;
        }
    }
    let conflict = conflict.expect("a duplicate met the running request");
    let secs: u64 = conflict.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&secs));
    assert_eq!(first.await.unwrap().unwrap().status(), 201);
    assert_eq!(charges.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_keys_are_refused_with_400_and_never_charge() {
    let (url, charges) = serve().await;
    let client = reqwest::Client::new();
    let long = "k".repeat(256);
    for key in [long.as_str(), "two words", ""] {
        let res = charge_request(&client, &url, "alice", key, "1 EUR")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{key:?}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    let non_ascii = client
        .post(&url)
        .header(
            "idempotency-key",
            http::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        )
        .body("1 EUR")
        .send()
        .await
        .unwrap();
    assert_eq!(non_ascii.status(), 400);

    // CR/LF cannot go through reqwest; write the request by hand.
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/charges")
        .to_owned();
    for key in ["a\rb", "a\nb"] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let raw = format!(
            "POST /charges HTTP/1.1\r\nhost: x\r\nidempotency-key: {key}\r\ncontent-length: 5\r\nconnection: close\r\n\r\n1 EUR"
        );
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            !answer.starts_with("HTTP/1.1 201"),
            "{key:?} was accepted: {answer}"
        );
    }
    assert_eq!(charges.0.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_same_key_from_two_principals_runs_twice() {
    let (url, charges) = serve().await;
    let client = reqwest::Client::new();
    let a = charge_request(&client, &url, "alice", "k-shared", "1 EUR")
        .send()
        .await
        .unwrap();
    let b = charge_request(&client, &url, "bob", "k-shared", "1 EUR")
        .send()
        .await
        .unwrap();
    assert!(a.headers().get("idempotency-replayed").is_none());
    assert!(b.headers().get("idempotency-replayed").is_none());
    assert_eq!(b.text().await.unwrap(), "charge 2: 1 EUR");
    assert_eq!(charges.0.load(Ordering::SeqCst), 2);
}
