//! The gateway in front of the backend, twice: with the layers (a client stack around its
//! reqwest client per dependency, the server stack around its routes) and bare (plain reqwest,
//! no layers).
//!
//! The stacks come from the stack builder (`tower_idempotency::stack`, feature `stack`), which
//! puts every layer in the documented order, gives them one classifier and checks the settings
//! against each other when it builds them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderName, Method, StatusCode, Uri, header};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_breaker::BreakerHandle;
use tower_bulkhead::{BulkheadHandle, Partition};
use tower_idempotency::fallback::{StaleConfig, default_key};
use tower_idempotency::stack::{ClientStack, ServerStack};
use tower_idempotency::store::Store;
use tower_idempotency::{IdempotencyLayer, RequestBody};
use tower_red::readiness::Readiness;
use tower_red::{BoxError, Rejection};
use tower_retry_jitter::{RetryBudget, RetryOn};

/// The gateway's client to one dependency, whole stack included.
pub(crate) type Upstream = BoxCloneSyncService<reqwest::Request, reqwest::Response, BoxError>;

/// The whole call to the backend, retries included.
pub(crate) const TOTAL_BUDGET: Duration = Duration::from_secs(2);
/// One attempt.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);
/// Attempts per call, the first included.
pub(crate) const MAX_ATTEMPTS: u32 = 3;
/// Calls to the backend at once (items and orders).
pub(crate) const BACKEND_CONCURRENCY: usize = 32;
/// Calls to the reports dependency at once: the slow one gets a bulkhead of its own.
pub(crate) const REPORTS_CONCURRENCY: usize = 2;
/// Requests the gateway serves at once.
pub(crate) const SERVER_CONCURRENCY: usize = 64;
/// The server bulkhead's partition for `/reports/*`: calls that wait on the slow dependency
/// hold at most these of the gateway's places, so they cannot take the ones `/items` needs.
pub(crate) const REPORTS_PARTITION: usize = 4;
/// The cap on a caller's deadline.
pub(crate) const DEADLINE_CAP: Duration = Duration::from_secs(2);
/// How long a breaker stays open before it probes.
pub(crate) const OPEN_TIME: Duration = Duration::from_secs(1);
/// How old a stale answer may be.
pub(crate) const STALE_MAX_AGE: Duration = Duration::from_secs(30);

/// Handles on the running layers, for the live view.
#[derive(Clone)]
pub(crate) struct Handles {
    /// The client breakers: the backend (items, orders), then reports.
    pub(crate) breakers: [BreakerHandle; 2],
    /// The client bulkheads, in the same order.
    pub(crate) bulkheads: [BulkheadHandle; 2],
    /// The retry budget of the backend's client stack.
    pub(crate) budget: RetryBudget,
    /// The server bulkhead in front of the gateway's routes.
    pub(crate) gateway_bulkhead: BulkheadHandle,
    /// The server breaker in front of the gateway's routes.
    pub(crate) gateway_breaker: BreakerHandle,
}

/// One client stack (RED, idempotency key, the whole call's budget, retry with a per-attempt
/// timeout and a shared budget, breaker, bulkhead, outbound deadline) around reqwest, for the
/// dependency `name`.
fn client_stack(
    name: &'static str,
    max_concurrent: usize,
) -> Result<(Upstream, BreakerHandle, BulkheadHandle, RetryBudget), BoxError> {
    let budget = RetryBudget::builder()
        .ratio(0.2)
        .min_per_second(10)
        .window(Duration::from_secs(10))
        .build()?;
    let shared = budget.clone();
    let stack = ClientStack::builder(name)
        .http_status()
        .total_budget(TOTAL_BUDGET)
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .retry_on(RetryOn::new())
        .retry(move |r| {
            r.max_attempts(MAX_ATTEMPTS)
                .base(Duration::from_millis(20))
                .cap(Duration::from_millis(200))
                .budget(shared)
        })
        .breaker(|b| {
            b.time_window(Duration::from_secs(5), 10)
                .minimum_calls(20)
                .consecutive_failures(10)
                .open_time(OPEN_TIME)
                .permitted_probes(3)
        })
        .bulkhead(move |b| b.max_concurrent(max_concurrent))
        .reqwest()
        .build()?;
    let (breaker, bulkhead) = (stack.breaker(), stack.bulkhead());
    let client = ServiceBuilder::new()
        .layer(stack)
        .service(reqwest::Client::new());
    Ok((BoxCloneSyncService::new(client), breaker, bulkhead, budget))
}

/// The server stack around the gateway's routes, outermost first: RED, a stale-on-error
/// fallback for `/items/{id}`, problem+json, the caller's deadline, idempotency keys, a bulkhead
/// partitioned so `/reports` cannot take `/items`' places, breaker.
fn server_stack<St: Store + Clone>(
    routes: Router,
    store: St,
    prefix: String,
) -> Result<(Router, BulkheadHandle, BreakerHandle), BoxError> {
    let stack = ServerStack::builder("gateway")
        .http_status()
        .deadline_cap(DEADLINE_CAP)
        .fallback(|f| {
            f.stale_on_error(StaleConfig {
                max_age: STALE_MAX_AGE,
                ..StaleConfig::default()
            })
            .key(|req| {
                req.path()
                    .starts_with("/items/")
                    .then(|| default_key(req))
                    .flatten()
            })
        })
        .idempotency(move || {
            IdempotencyLayer::builder(store)
                .name("gateway")
                .prefix(prefix)
                .route(|parts| Some(parts.extensions.get::<MatchedPath>()?.as_str().to_owned()))
                .ttl(Duration::from_secs(600))
                .map_request_body(|body: RequestBody<Body>| Body::new(body))
                .build()
        })
        .bulkhead(|b| {
            b.max_concurrent(SERVER_CONCURRENCY)
                .partition(Partition::new("reports", REPORTS_PARTITION))
                .partition_by(|req: &http::Request<Body>| {
                    req.uri()
                        .path()
                        .starts_with("/reports/")
                        .then_some("reports")
                })
        })
        .breaker(|b| b.count_window(100).open_time(OPEN_TIME))
        .build()?;
    let (bulkhead, breaker) = (stack.bulkhead(), stack.breaker());
    Ok((routes.route_layer(stack), bulkhead, breaker))
}

/// How the gateway reaches the backend.
#[derive(Clone)]
enum Link {
    /// The backend's stack, and the reports' own.
    Layered(Upstream, Upstream),
    Bare(reqwest::Client),
}

#[derive(Clone)]
struct Gateway {
    backend: Arc<str>,
    link: Link,
}

/// The headers the gateway forwards to the backend.
const FORWARDED: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("x-order"),
];

/// Every route: the same path on the backend.
async fn forward(
    State(gw): State<Gateway>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(url) = format!("{}{}", gw.backend, uri.path()).parse::<reqwest::Url>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut req = reqwest::Request::new(method, url);
    for name in FORWARDED {
        if let Some(value) = headers.get(&name) {
            req.headers_mut().insert(name, value.clone());
        }
    }
    if !body.is_empty() {
        *req.body_mut() = Some(body.into());
    }
    let res = match gw.link {
        Link::Layered(_, reports) if uri.path().starts_with("/reports") => {
            reports.oneshot(req).await
        }
        Link::Layered(backend, _) => backend.oneshot(req).await,
        Link::Bare(client) => client.execute(req).await.map_err(BoxError::from),
    };
    match res {
        Ok(res) => {
            let status = res.status();
            let content_type = res.headers().get(header::CONTENT_TYPE).cloned();
            match res.bytes().await {
                Ok(bytes) => {
                    let mut out = (status, bytes).into_response();
                    if let Some(ct) = content_type {
                        out.headers_mut().insert(header::CONTENT_TYPE, ct);
                    }
                    out
                }
                Err(_) => (StatusCode::BAD_GATEWAY, "gateway: backend body lost\n").into_response(),
            }
        }
        // A refusal of the client stack (open circuit, full bulkhead, spent deadline) goes
        // to the caller as its own status and problem body, marked as a refusal.
        Err(err) => match Rejection::find_in(&err) {
            Some(rejection) => rejection.clone().into_response(),
            None => (StatusCode::BAD_GATEWAY, "gateway: backend unreachable\n").into_response(),
        },
    }
}

fn routes() -> Router<Gateway> {
    Router::new()
        .route("/items/{id}", get(forward))
        .route("/reports/{id}", get(forward))
        .route("/orders", post(forward))
}

async fn serve(app: Router) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// Starts the gateway with every layer on `127.0.0.1:0`, in front of `backend`.
pub(crate) async fn start_layered<St: Store + Clone>(
    backend: SocketAddr,
    store: St,
    prefix: String,
) -> Result<(SocketAddr, Handles), BoxError> {
    let (client, backend_breaker, backend_bulkhead, budget) =
        client_stack("backend", BACKEND_CONCURRENCY)?;
    let (reports, reports_breaker, reports_bulkhead, _) =
        client_stack("reports", REPORTS_CONCURRENCY)?;
    let gateway = Gateway {
        backend: format!("http://{backend}").into(),
        link: Link::Layered(client, reports),
    };
    let (routes, gateway_bulkhead, gateway_breaker) =
        server_stack(routes().with_state(gateway), store, prefix)?;
    // Not ready while the backend's circuit is open; reports and bulkheads are reported only.
    let readiness = Readiness::new()
        .critical(backend_breaker.clone())
        .optional(reports_breaker.clone())
        .optional(backend_bulkhead.clone())
        .optional(reports_bulkhead.clone())
        .optional(gateway_bulkhead.clone());
    let app = routes
        .route("/health", get(|| async { "up\n" }))
        .route_service("/ready", readiness);
    let addr = serve(app).await?;
    Ok((
        addr,
        Handles {
            breakers: [backend_breaker, reports_breaker],
            bulkheads: [backend_bulkhead, reports_bulkhead],
            budget,
            gateway_bulkhead,
            gateway_breaker,
        },
    ))
}

/// Starts the same gateway with no layers: plain reqwest to the backend.
pub(crate) async fn start_bare(backend: SocketAddr) -> Result<SocketAddr, BoxError> {
    let gateway = Gateway {
        backend: format!("http://{backend}").into(),
        link: Link::Bare(reqwest::Client::new()),
    };
    serve(
        routes()
            .with_state(gateway)
            .route("/health", get(|| async { "up\n" })),
    )
    .await
}
