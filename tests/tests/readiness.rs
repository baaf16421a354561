//! Readiness over real breakers and bulkheads: the report follows the breaker as failing calls
//! open it and a probe closes it (paused clock), and an axum server on loopback serves it.

use std::time::Duration;

use axum::{Router, routing::get};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_breaker::{BreakerHandle, BreakerLayer, State};
use tower_bulkhead::{BulkheadLayer, Partition};
use tower_red::readiness::{self, Readiness, ReadyWhen};

const OPEN_TIME: Duration = Duration::from_secs(10);

/// A breaker that opens after three failures in a row, for `OPEN_TIME`, and closes after one
/// successful probe.
fn breaker(name: &str) -> BreakerLayer {
    BreakerLayer::builder()
        .name(name)
        .consecutive_failures(3)
        .open_time(OPEN_TIME)
        .permitted_probes(1)
        .metrics(false)
        .build()
        .expect("a valid breaker")
}

/// A backend that fails when asked to, behind `breaker`.
fn backend(
    breaker: &BreakerLayer,
) -> impl Service<bool, Response = &'static str, Error = BoxError, Future: Send> + Clone {
    ServiceBuilder::new()
        .layer(breaker.clone())
        .service(service_fn(|fail: bool| async move {
            if fail {
                Err::<&'static str, BoxError>("backend down".into())
            } else {
                Ok("ok")
            }
        }))
}

/// Fails calls until the breaker opens (three, with a bound on the loop).
async fn open_by_failing<S>(svc: &S, handle: &BreakerHandle)
where
    S: Service<bool, Error = BoxError> + Clone,
{
    for _ in 0..3 {
        assert!(svc.clone().oneshot(true).await.is_err());
    }
    assert_eq!(handle.state(), State::Open);
}

fn json(readiness: &Readiness) -> Value {
    serde_json::from_str(&readiness.report().to_json()).expect("the report is valid JSON")
}

fn entry<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["dependencies"]
        .as_array()
        .expect("a dependencies array")
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no entry named {name} in {body}"))
}

#[tokio::test(start_paused = true)]
async fn readiness_flips_to_503_when_a_critical_breaker_opens_and_back_when_it_closes() {
    let inventory = breaker("inventory");
    let handle = inventory.handle();
    let svc = backend(&inventory);
    let bulkhead = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(4)
        .partition(Partition::new("background", 1))
        .metrics(false)
        .build()
        .unwrap();
    let ready = Readiness::new()
        .critical(handle.clone())
        .critical(bulkhead.handle());

    // A call holds a permit of the bulkhead, so its entry shows one in flight.
    let mut db = ServiceBuilder::new()
        .layer(bulkhead.clone())
        .service(service_fn(|done: oneshot::Receiver<()>| async move {
            let _ = done.await;
            Ok::<_, BoxError>(())
        }));
    let (release, done) = oneshot::channel();
    let mut held = tokio_test::task::spawn(db.ready().await.unwrap().call(done));
    tokio_test::assert_pending!(held.poll());

    let report = ready.report();
    assert!(report.is_ready());
    assert_eq!(ready.http_response().status(), 200);
    let body = json(&ready);
    assert_eq!(body["status"], "ready");
    assert_eq!(entry(&body, "inventory")["state"], "closed");
    let db_entry = entry(&body, "db");
    assert_eq!(db_entry["kind"], "bulkhead");
    assert_eq!(db_entry["available"], true);
    assert_eq!(db_entry["state"], "accepting");
    assert_eq!(
        db_entry["partitions"],
        serde_json::json!([
            {"name": "default", "in_flight": 1, "queued": 0, "limit": 4},
            {"name": "background", "in_flight": 0, "queued": 0, "limit": 1},
        ])
    );

    open_by_failing(&svc, &handle).await;
    let res = ready.http_response();
    assert_eq!(res.status(), 503);
    let body = json(&ready);
    assert_eq!(body["status"], "not_ready");
    let inv = entry(&body, "inventory");
    assert_eq!(inv["kind"], "breaker");
    assert_eq!(inv["critical"], true);
    assert_eq!(inv["available"], false);
    assert_eq!(inv["state"], "open");
    assert_eq!(inv["open_for_ms"], 10_000);
    assert_eq!(inv["counts"]["consecutive_failures"], 3);

    time::advance(OPEN_TIME / 2).await;
    let body = json(&ready);
    assert_eq!(body["status"], "not_ready");
    assert_eq!(entry(&body, "inventory")["open_for_ms"], 5_000);

    // Open time over: still `open` until a call comes, but available, so an orchestrator sends
    // the traffic that probes it.
    time::advance(OPEN_TIME / 2).await;
    assert_eq!(handle.state(), State::Open);
    assert!(ready.report().is_ready());
    let body = json(&ready);
    let inv = entry(&body, "inventory");
    assert_eq!(
        (inv["state"].as_str(), inv["available"].as_bool()),
        (Some("open"), Some(true))
    );
    assert_eq!(inv["open_for_ms"], 0);

    assert_eq!(svc.clone().oneshot(false).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(ready.http_response().status(), 200);
    let body = json(&ready);
    assert_eq!(body["status"], "ready");
    assert_eq!(entry(&body, "inventory")["state"], "closed");
    assert!(entry(&body, "inventory").get("open_for_ms").is_none());

    release.send(()).unwrap();
    held.await.unwrap();
    assert_eq!(entry(&json(&ready), "db")["partitions"][0]["in_flight"], 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_makes_the_instance_unready_for_another_open_time() {
    let inventory = breaker("inventory");
    let handle = inventory.handle();
    let svc = backend(&inventory);
    let ready = Readiness::new().critical(handle.clone());

    open_by_failing(&svc, &handle).await;
    time::advance(OPEN_TIME).await;
    assert!(ready.report().is_ready());

    assert!(svc.clone().oneshot(true).await.is_err());
    assert_eq!(handle.state(), State::Open);
    let report = ready.report();
    assert!(!report.is_ready());
    assert_eq!(entry(&json(&ready), "inventory")["open_for_ms"], 10_000);
}

#[tokio::test(start_paused = true)]
async fn a_non_critical_open_breaker_keeps_the_instance_ready() {
    let (inventory, reviews) = (breaker("inventory"), breaker("reviews"));
    let ready = Readiness::new()
        .critical(inventory.handle())
        .optional(reviews.handle());

    open_by_failing(&backend(&reviews), &reviews.handle()).await;
    let report = ready.report();
    assert!(report.is_ready());
    assert_eq!(report.status(), 200);
    let body = json(&ready);
    let rev = entry(&body, "reviews");
    assert_eq!(rev["critical"], false);
    assert_eq!(rev["available"], false);
    assert_eq!(rev["state"], "open");
}

#[tokio::test(start_paused = true)]
async fn a_forced_open_critical_breaker_is_unready_until_reset_whatever_the_time() {
    let inventory = breaker("inventory");
    let ready = Readiness::new().critical(inventory.handle());
    inventory.handle().force_open();
    time::advance(OPEN_TIME * 10).await;
    let body = json(&ready);
    assert_eq!(body["status"], "not_ready");
    assert_eq!(entry(&body, "inventory")["state"], "forced_open");
    inventory.handle().reset();
    assert!(ready.report().is_ready());
}

#[tokio::test(start_paused = true)]
async fn with_any_critical_available_the_instance_is_unready_only_when_every_replica_is_open() {
    let (a, b) = (breaker("replica-a"), breaker("replica-b"));
    let ready = Readiness::new()
        .ready_when(ReadyWhen::AnyCriticalAvailable)
        .critical(a.handle())
        .critical(b.handle());

    open_by_failing(&backend(&a), &a.handle()).await;
    assert!(ready.report().is_ready());
    open_by_failing(&backend(&b), &b.handle()).await;
    let body = json(&ready);
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["ready_when"], "any_critical_available");

    b.handle().reset();
    assert!(ready.report().is_ready());
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_reads_full_and_keeps_the_instance_ready() {
    let bulkhead = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(1)
        .metrics(false)
        .build()
        .unwrap();
    let ready = Readiness::new().critical(bulkhead.handle());
    let mut db = ServiceBuilder::new()
        .layer(bulkhead.clone())
        .service(service_fn(|done: oneshot::Receiver<()>| async move {
            let _ = done.await;
            Ok::<_, BoxError>(())
        }));
    let (release, done) = oneshot::channel();
    let mut held = tokio_test::task::spawn(db.ready().await.unwrap().call(done));
    tokio_test::assert_pending!(held.poll());

    let body = json(&ready);
    assert_eq!(body["status"], "ready");
    assert_eq!(entry(&body, "db")["state"], "full");
    assert_eq!(entry(&body, "db")["partitions"][0]["in_flight"], 1);
    release.send(()).unwrap();
    held.await.unwrap();
    assert_eq!(entry(&json(&ready), "db")["state"], "accepting");
}

/// Formats a reqwest response the way `curl -i` prints one.
fn curl_i(res: &reqwest::Response, body: &str) -> String {
    let mut out = format!("{:?} {}\r\n", res.version(), res.status());
    for (name, value) in res.headers() {
        out.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("?")));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out
}

#[tokio::test]
async fn an_axum_server_answers_readiness_as_json_with_503_while_a_critical_breaker_is_open() {
    let inventory = BreakerLayer::builder()
        .name("inventory")
        .consecutive_failures(3)
        .open_time(Duration::from_secs(600))
        .metrics(false)
        .build()
        .unwrap();
    let handle = inventory.handle();
    let reviews = breaker("reviews");
    let bulkhead = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(16)
        .partition(Partition::new("background", 2))
        .metrics(false)
        .build()
        .unwrap();
    let ready = Readiness::new()
        .critical(handle.clone())
        .optional(reviews.handle())
        .critical(bulkhead.handle());
    let app = Router::new()
        .route_service("/ready", ready.clone())
        .route("/readyz", get(readiness::handler))
        .with_state(ready);
    let addr = tests::serve_axum(app).await;
    let client = reqwest::Client::new();

    for path in ["/ready", "/readyz"] {
        let res = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], "application/json");
        assert_eq!(res.headers()["cache-control"], "no-store");
        let body: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
        assert_eq!(body["status"], "ready");
    }

    open_by_failing(&backend(&inventory), &handle).await;
    for path in ["/ready", "/readyz"] {
        let res = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 503, "{path}");
        assert_eq!(res.headers()["content-type"], "application/json");
        assert_eq!(res.headers()["cache-control"], "no-store");
        let text = res.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["ready_when"], "all_critical_available");
        let inv = entry(&body, "inventory");
        assert_eq!(inv["state"], "open");
        assert_eq!(inv["available"], false);
        assert_eq!(inv["critical"], true);
        let open_for = inv["open_for_ms"].as_u64().unwrap();
        assert!(open_for > 0 && open_for <= 600_000, "{open_for}");
        assert_eq!(entry(&body, "reviews")["state"], "closed");
        assert_eq!(entry(&body, "db")["partitions"][1]["limit"], 2);
    }
    let res = client
        .get(format!("http://{addr}/ready"))
        .send()
        .await
        .unwrap();
    let head = curl_i(&res, "");
    let text = res.text().await.unwrap();
    // `cargo test -p tests --test readiness -- --nocapture` prints the response as curl -i would.
    println!("{head}{text}");

    handle.reset();
    let res = client
        .get(format!("http://{addr}/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(entry(&body, "inventory")["state"], "closed");
}
