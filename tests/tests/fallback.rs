//! The fallback layer over the wire: an axum route behind a real breaker answers from its last
//! good response once the breaker is forced open, and a reqwest client stack answers from its
//! last good response when the loopback server it talks to fails or goes away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_breaker::BreakerLayer;
use tower_idempotency::fallback::{FALLBACK, FallbackLayer, StaleConfig};
use tower_red::problem::ProblemLayer;
use tower_red::{RedLayer, names};

fn stale() -> StaleConfig {
    StaleConfig {
        max_age: Duration::from_secs(60),
        ..StaleConfig::default()
    }
}

/// The response as `curl -i` prints it: status line, headers, blank line, body.
async fn as_curl_shows_it(res: reqwest::Response) -> String {
    let mut text = format!("HTTP/1.1 {}\r\n", res.status());
    for (name, value) in res.headers() {
        text.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    text.push_str("\r\n");
    text.push_str(&res.text().await.unwrap());
    text
}

/// `curl -si url`, when curl is installed (it prints the same thing a reader would see).
async fn curl_i(url: String) -> Option<String> {
    let out = tokio::process::Command::new("curl")
        .args(["-si", "--max-time", "5", &url])
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn an_axum_route_behind_an_open_breaker_answers_its_last_good_response() {
    let breaker = BreakerLayer::builder()
        .name("fallback_menu")
        .http_status()
        .build()
        .unwrap();
    let handle = breaker.handle();
    let fallback = FallbackLayer::builder()
        .name("menu")
        .http_status()
        .stale_on_error(stale())
        .build()
        .unwrap();
    // RED → fallback → problem → breaker → handler: the fallback sees the breaker's refusal as
    // the problem response it became.
    let app = Router::new()
        .route(
            "/menu",
            get(|| async {
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    "{\"dishes\":[\"soup\"]}",
                )
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RedLayer::server())
                .layer(fallback)
                .layer(ProblemLayer::new())
                .layer(breaker),
        );
    let addr = tests::serve_axum(app).await;
    let url = format!("http://{addr}/menu");
    let client = reqwest::Client::new();

    let fresh = client.get(&url).send().await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert!(fresh.headers().get(FALLBACK).is_none());
    assert_eq!(fresh.text().await.unwrap(), "{\"dishes\":[\"soup\"]}");

    handle.force_open();
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[FALLBACK], "stale");
    assert_eq!(res.headers()["content-type"], "application/json");
    let age: u64 = res.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 1, "held for {age} s");
    let shown = as_curl_shows_it(res).await;
    println!("{shown}");
    assert!(shown.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(shown.ends_with("\r\n\r\n{\"dishes\":[\"soup\"]}"));
    if let Some(curl) = curl_i(url.clone()).await {
        println!("$ curl -i {url}\n{curl}");
        assert!(curl.contains("x-fallback: stale"), "{curl}");
    }

    // A path with nothing stored: the breaker's refusal goes on.
    let refused = client
        .get(format!("http://{addr}/menu?page=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().get(FALLBACK).is_none());
}

#[tokio::test]
async fn a_reqwest_client_stack_answers_from_its_last_good_response_when_the_server_fails() {
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    let app = Router::new().route(
        "/quote",
        get(move || {
            let failing = flag.load(Ordering::SeqCst);
            async move {
                if failing {
                    (http::StatusCode::SERVICE_UNAVAILABLE, "down")
                } else {
                    (http::StatusCode::OK, "EUR 1.08")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::builder()
                .name("quotes")
                .http_status()
                .stale_on_error(stale())
                .from_fn(|ctx| {
                    Some(http::Response::new(Bytes::from(format!(
                        "no quote for {}",
                        ctx.uri().path()
                    ))))
                })
                .build()
                .unwrap(),
        )
        .service(client.clone());
    let url = format!("http://{addr}/quote");
    let mut call = async |url: &str| {
        let req = client.get(url).build().unwrap();
        svc.ready().await.unwrap().call(req).await
    };

    let fresh = call(&url).await.unwrap();
    assert!(fresh.headers().get(FALLBACK).is_none());
    assert_eq!(
        fresh.url().as_str(),
        url,
        "the stored response keeps its URL"
    );
    assert_eq!(fresh.text().await.unwrap(), "EUR 1.08");

    failing.store(true, Ordering::SeqCst);
    let res = call(&url).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[FALLBACK], "stale");
    assert_eq!(res.url().as_str(), url);
    assert_eq!(res.text().await.unwrap(), "EUR 1.08");
    let res = call(&format!("http://{addr}/quote?pair=usd"))
        .await
        .unwrap();
    assert_eq!(res.headers()[FALLBACK], "function");
    assert_eq!(res.text().await.unwrap(), "no quote for /quote");

    // The server goes away: the connection error is a failure too.
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(client.get(&url).send().await.is_err(), "nobody listens");
    let res = call(&url).await.unwrap();
    assert_eq!(res.headers()[FALLBACK], "stale");
    assert_eq!(res.text().await.unwrap(), "EUR 1.08");
}

#[test]
fn the_fallback_layer_label_is_its_own() {
    assert_eq!(tower_idempotency::fallback::LAYER, "fallback");
    assert_ne!(
        tower_idempotency::fallback::LAYER,
        names::layer::IDEMPOTENCY
    );
}
