//! Idempotency keys against a lossy link: a client pays 200 invoices over a link that loses some
//! responses **after** the server charged the card, and retries what it did not hear back
//! about. Once without the idempotency layers (the retry charges again), once with them (the
//! client's `IdempotencyKeyLayer` puts one key on every attempt of a payment, the server's
//! `IdempotencyLayer` runs the charge once and replays its response), side by side.
//!
//! ```text
//! cargo run -p examples --bin payments                                   # in-memory store
//! cargo run -p examples --bin payments -- --redis redis://127.0.0.1:6379  # Redis store
//! ```
//!
//! The link is a client-side `Service` below the retry layer: it sends the request, waits for the
//! response headers (the handler has run and, with the layer, its response is stored), and for a
//! fixed set of attempts drops the response and reports a connection reset instead. The same
//! attempts are lost in both runs, so the two columns differ only by the layers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::routing::post;
use futures::StreamExt;
use http::{HeaderMap, StatusCode};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_idempotency::client::IdempotencyKeyLayer;
use tower_idempotency::store::{MemoryStore, Store};
use tower_idempotency::{IdempotencyLayer, RequestBody};
use tower_red::BoxError;
use tower_retry_jitter::RetryLayer;

/// Invoices paid per run.
const PAYMENTS: u64 = 200;
/// Payments in flight at once.
const CONCURRENCY: usize = 16;
/// Attempts per payment, the first included.
const MAX_ATTEMPTS: u32 = 4;
/// The longest a payment may take, retries included.
const PAYMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long charging a card takes.
const CHARGE_TIME: Duration = Duration::from_millis(2);
const MERCHANT: &str = "merchant-1";

/// Whether the link loses the response to this attempt of this payment: the first attempt of
/// every 4th payment and the second attempt of every 20th (60 of 200 payments' responses).
fn loses_response(payment: u64, attempt: u32) -> bool {
    match attempt {
        1 => payment.is_multiple_of(4),
        2 => payment.is_multiple_of(20),
        _ => false,
    }
}

/// The payment processor's books: charges made per payment.
#[derive(Clone, Default)]
struct Ledger {
    charges: Arc<Mutex<HashMap<u64, u64>>>,
    total: Arc<AtomicU64>,
}

impl Ledger {
    fn charges_made(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Charges beyond the first of each payment.
    fn duplicate_charges(&self) -> u64 {
        let charges = self.charges.lock().expect("ledger lock");
        charges.values().map(|n| n.saturating_sub(1)).sum()
    }

    fn payments_charged(&self) -> usize {
        self.charges.lock().expect("ledger lock").len()
    }
}

fn payment_id(headers: &HeaderMap) -> Option<u64> {
    headers.get("x-payment")?.to_str().ok()?.parse().ok()
}

/// `POST /payments`: charges the card (counted), answers 201 with the charge number.
async fn charge(
    State(ledger): State<Ledger>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let Some(payment) = payment_id(&headers) else {
        return (StatusCode::BAD_REQUEST, "missing x-payment".to_owned());
    };
    let n = ledger.total.fetch_add(1, Ordering::SeqCst) + 1;
    *ledger
        .charges
        .lock()
        .expect("ledger lock")
        .entry(payment)
        .or_default() += 1;
    tokio::time::sleep(CHARGE_TIME).await;
    (StatusCode::CREATED, format!("charge #{n}: {body}"))
}

/// What the link saw.
#[derive(Default)]
struct LinkTally {
    sent: AtomicU64,
    lost: AtomicU64,
    replayed: AtomicU64,
}

/// The lossy link: reqwest below, responses to the attempts [`loses_response`] picks dropped
/// after the server answered.
#[derive(Clone)]
struct LossyLink {
    client: reqwest::Client,
    attempts: Arc<Mutex<HashMap<u64, u32>>>,
    tally: Arc<LinkTally>,
}

impl Service<reqwest::Request> for LossyLink {
    type Response = reqwest::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: reqwest::Request) -> Self::Future {
        let payment = payment_id(req.headers());
        let attempt = payment.map_or(1, |id| {
            let mut attempts = self.attempts.lock().expect("attempts lock");
            let n = attempts.entry(id).or_default();
            *n += 1;
            *n
        });
        let client = self.client.clone();
        let tally = self.tally.clone();
        Box::pin(async move {
            tally.sent.fetch_add(1, Ordering::SeqCst);
            let res = client.execute(req).await?;
            if res.headers().contains_key(tower_idempotency::REPLAYED) {
                tally.replayed.fetch_add(1, Ordering::SeqCst);
            }
            if payment.is_some_and(|id| loses_response(id, attempt)) {
                tally.lost.fetch_add(1, Ordering::SeqCst);
                drop(res);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset before the response arrived",
                )
                .into());
            }
            Ok(res)
        })
    }
}

/// One row of the table: its label and how to read it from a run.
type Row = (&'static str, fn(&Run) -> String);

/// One run's figures.
struct Run {
    sent: u64,
    lost: u64,
    replayed: u64,
    confirmed: u64,
    failed: u64,
    charges: u64,
    duplicates: u64,
    payments_charged: usize,
    elapsed: Duration,
}

/// Starts the payments server on loopback, behind `idempotency` when given.
async fn serve<St: Store>(idempotency: Option<St>) -> Result<(String, Ledger), BoxError> {
    let ledger = Ledger::default();
    let mut app = Router::new().route("/payments", post(charge));
    if let Some(store) = idempotency {
        let layer = IdempotencyLayer::builder(store)
            .name("payments")
            .principal(|parts| Some(parts.headers.get("x-user")?.to_str().ok()?.to_owned()))
            .route(|parts| Some(parts.extensions.get::<MatchedPath>()?.as_str().to_owned()))
            .required(true)
            .ttl(Duration::from_secs(600))
            .map_request_body(|body: RequestBody<Body>| Body::new(body))
            .build()?;
        app = app.layer(layer);
    }
    let app = app.with_state(ledger.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/payments", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, ledger))
}

/// Pays every invoice through `client`, at most [`CONCURRENCY`] at a time.
async fn pay_all<S>(client: S, url: &str) -> (u64, u64)
where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let http = reqwest::Client::new();
    let results: Vec<bool> = futures::stream::iter(0..PAYMENTS)
        .map(|id| {
            let client = client.clone();
            let req = http
                .post(url)
                .header("x-user", MERCHANT)
                .header("x-payment", id.to_string())
                .header("content-type", "application/json")
                .body(format!("{{\"invoice\":{id},\"amount\":\"10.00 EUR\"}}"))
                .build();
            async move {
                let Ok(req) = req else { return false };
                match tokio::time::timeout(PAYMENT_TIMEOUT, client.oneshot(req)).await {
                    Ok(Ok(res)) => res.status() == StatusCode::CREATED,
                    Ok(Err(_)) | Err(_) => false,
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let confirmed = results.iter().filter(|ok| **ok).count() as u64;
    (confirmed, PAYMENTS - confirmed)
}

fn retry() -> tower_retry_jitter::RetryLayerBuilder {
    RetryLayer::builder()
        .name("payments")
        .max_attempts(MAX_ATTEMPTS)
        .base(Duration::from_millis(1))
        .cap(Duration::from_millis(10))
        .no_budget()
        .seed(7)
}

async fn run<St: Store>(store: Option<St>) -> Result<Run, BoxError> {
    let with_layer = store.is_some();
    let (url, ledger) = serve(store).await?;
    let link = LossyLink {
        client: reqwest::Client::new(),
        attempts: Arc::default(),
        tally: Arc::default(),
    };
    let tally = link.tally.clone();
    let start = Instant::now();
    let (confirmed, failed) = if with_layer {
        // A key per payment, above the retries: every attempt of a payment carries the same
        // key, and the retry layer's default safety rule retries a POST that has one.
        let client = ServiceBuilder::new()
            .layer(IdempotencyKeyLayer::new())
            .layer(retry().reqwest().build()?)
            .service(link);
        pay_all(client, &url).await
    } else {
        // No key: the naive client that retries a POST anyway.
        let client = ServiceBuilder::new()
            .layer(retry().always_safe().reqwest().build()?)
            .service(link);
        pay_all(client, &url).await
    };
    Ok(Run {
        sent: tally.sent.load(Ordering::SeqCst),
        lost: tally.lost.load(Ordering::SeqCst),
        replayed: tally.replayed.load(Ordering::SeqCst),
        confirmed,
        failed,
        charges: ledger.charges_made(),
        duplicates: ledger.duplicate_charges(),
        payments_charged: ledger.payments_charged(),
        elapsed: start.elapsed(),
    })
}

/// `--redis URL`, if given.
fn redis_url() -> Result<Option<String>, BoxError> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => Ok(None),
        (Some("--redis"), Some(url)) => Ok(Some(url)),
        _ => Err("usage: payments [--redis redis://127.0.0.1:6379]".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let redis = redis_url()?;
    let without = run::<MemoryStore>(None).await?;
    let (with, store) = match &redis {
        None => (run(Some(MemoryStore::new())).await?, "memory".to_owned()),
        Some(url) => {
            let store = tower_idempotency::store::redis::RedisStore::connect(url)
                .await
                .map_err(|err| {
                    let cause = std::error::Error::source(&err)
                        .map(|source| format!(" ({source})"))
                        .unwrap_or_default();
                    format!("cannot reach Redis at {url}: {err}{cause}")
                })?;
            (run(Some(store)).await?, format!("Redis at {url}"))
        }
    };

    println!(
        "{PAYMENTS} payments over a lossy link (responses to the 1st attempt of every 4th payment \
         and the 2nd of every 20th dropped after the server charged), up to {MAX_ATTEMPTS} attempts each"
    );
    println!("idempotency store: {store}\n");
    println!(
        "{:<34} {:>18} {:>18}",
        "", "without the layer", "with the layer"
    );
    let rows: [Row; 9] = [
        ("requests sent", |r| r.sent.to_string()),
        ("retries", |r| (r.sent - PAYMENTS).to_string()),
        ("responses lost on the link", |r| r.lost.to_string()),
        ("responses replayed by the server", |r| {
            r.replayed.to_string()
        }),
        ("payments confirmed to the client", |r| {
            r.confirmed.to_string()
        }),
        ("payments failed", |r| r.failed.to_string()),
        ("payments charged", |r| r.payments_charged.to_string()),
        ("charges made", |r| r.charges.to_string()),
        ("duplicate charges", |r| r.duplicates.to_string()),
    ];
    for (label, value) in rows {
        println!("{label:<34} {:>18} {:>18}", value(&without), value(&with));
    }
    println!(
        "{:<34} {:>18} {:>18}",
        "time",
        format!("{} ms", without.elapsed.as_millis()),
        format!("{} ms", with.elapsed.as_millis())
    );
    let exactly_once = with.charges == PAYMENTS && with.duplicates == 0;
    println!(
        "\nwith the layer: {} charges for {PAYMENTS} payments ({}); without: {} duplicate charges",
        with.charges,
        if exactly_once {
            "exactly once"
        } else {
            "NOT exactly once"
        },
        without.duplicates
    );
    if !exactly_once || with.confirmed != PAYMENTS {
        return Err("the idempotency layer did not give exactly-once charges".into());
    }
    Ok(())
}
