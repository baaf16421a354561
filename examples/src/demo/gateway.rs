//! The gateway in front of the backend, twice: with the layers (the client stack around its
//! reqwest client, the server stack around its routes) and bare (plain reqwest, no layers).
//!
//! Each stack is built in one function ([`client_stack`], [`server_stack`]), in the README's
//! order ("One stack, end to end"), so that moving to the stack builder of
//! `tower_idempotency::stack` is a change to those two functions only.

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
use tower_breaker::{BreakerHandle, BreakerLayer};
use tower_bulkhead::{BulkheadHandle, BulkheadLayer, Partition};
use tower_idempotency::client::IdempotencyKeyLayer;
use tower_idempotency::store::Store;
use tower_idempotency::{IdempotencyLayer, RequestBody};
use tower_red::classify::HttpStatus;
use tower_red::problem::ProblemLayer;
use tower_red::{BoxError, RedLayer, Rejection};
use tower_retry_jitter::{RetryBudget, RetryLayer, RetryOn};
use tower_timeout_budget::TimeoutBudgetLayer;
use tower_timeout_budget::inbound::InboundDeadlineLayer;
use tower_timeout_budget::outbound::OutboundDeadlineLayer;

/// The gateway's client to the backend, whole stack included.
pub(crate) type Upstream = BoxCloneSyncService<reqwest::Request, reqwest::Response, BoxError>;

/// The whole call to the backend, retries included.
pub(crate) const TOTAL_BUDGET: Duration = Duration::from_secs(2);
/// One attempt.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);
/// Attempts per call, the first included.
pub(crate) const MAX_ATTEMPTS: u32 = 3;
/// Calls to the backend at once, and of them reports (the slow dependency's partition).
pub(crate) const CLIENT_CONCURRENCY: usize = 32;
pub(crate) const REPORTS_CONCURRENCY: usize = 2;
/// Requests the gateway serves at once.
pub(crate) const SERVER_CONCURRENCY: usize = 64;
/// The cap on a caller's deadline.
pub(crate) const DEADLINE_CAP: Duration = Duration::from_secs(2);
/// How long a breaker stays open before it probes.
pub(crate) const OPEN_TIME: Duration = Duration::from_secs(1);

/// Handles on the running layers, for the live view.
#[derive(Clone)]
pub(crate) struct Handles {
    /// The client breaker guarding the backend.
    pub(crate) backend_breaker: BreakerHandle,
    /// The client bulkhead, partitioned (reports apart).
    pub(crate) backend_bulkhead: BulkheadHandle,
    /// The retry budget shared by the client's retries.
    pub(crate) budget: RetryBudget,
    /// The server bulkhead in front of the gateway's routes.
    pub(crate) gateway_bulkhead: BulkheadHandle,
    /// The server breaker in front of the gateway's routes.
    pub(crate) gateway_breaker: BreakerHandle,
}

/// The client stack, outermost first: RED, idempotency key, the whole call's budget, retry
/// (with a per-attempt timeout and a shared budget), breaker, partitioned bulkhead, outbound
/// deadline, reqwest.
fn client_stack() -> Result<(Upstream, BreakerHandle, BulkheadHandle, RetryBudget), BoxError> {
    let budget = RetryBudget::builder()
        .ratio(0.2)
        .min_per_second(10)
        .window(Duration::from_secs(10))
        .build()?;
    let retry = RetryLayer::builder()
        .name("backend")
        .max_attempts(MAX_ATTEMPTS)
        .base(Duration::from_millis(20))
        .cap(Duration::from_millis(200))
        .budget(budget.clone())
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .retry_on(RetryOn::new())
        .reqwest()
        .build()?;
    let breaker = BreakerLayer::builder()
        .name("backend")
        .http_status()
        .time_window(Duration::from_secs(5), 10)
        .minimum_calls(20)
        .consecutive_failures(10)
        .open_time(OPEN_TIME)
        .permitted_probes(3)
        .build()?;
    let bulkhead = BulkheadLayer::builder()
        .name("backend")
        .max_concurrent(CLIENT_CONCURRENCY)
        .partition(Partition::new("reports", REPORTS_CONCURRENCY))
        .partition_by(|req: &reqwest::Request| {
            req.url()
                .path()
                .starts_with("/reports")
                .then_some("reports")
        })
        .classifier(HttpStatus::new())
        .build()?;
    let (breaker_handle, bulkhead_handle) = (breaker.handle(), bulkhead.handle());
    let client = ServiceBuilder::new()
        .layer(RedLayer::client())
        .layer(IdempotencyKeyLayer::new())
        .layer(TimeoutBudgetLayer::new(TOTAL_BUDGET)?)
        .layer(retry)
        .layer(breaker)
        .layer(bulkhead)
        .layer(OutboundDeadlineLayer::new())
        .service(reqwest::Client::new());
    Ok((
        BoxCloneSyncService::new(client),
        breaker_handle,
        bulkhead_handle,
        budget,
    ))
}

/// The server stack around the gateway's routes, outermost first: problem+json, the caller's
/// deadline, idempotency keys, bulkhead, breaker. `RedLayer::server()` goes around the whole
/// router (see [`start_layered`]).
fn server_stack<St>(
    routes: Router,
    store: St,
    prefix: &str,
) -> Result<(Router, BulkheadHandle, BreakerHandle), BoxError>
where
    St: Store + Clone,
{
    let idempotency = IdempotencyLayer::builder(store)
        .name("gateway")
        .prefix(prefix)
        .route(|parts| Some(parts.extensions.get::<MatchedPath>()?.as_str().to_owned()))
        .ttl(Duration::from_secs(600))
        .map_request_body(|body: RequestBody<Body>| Body::new(body))
        .build()?;
    let bulkhead = BulkheadLayer::builder()
        .name("gateway")
        .max_concurrent(SERVER_CONCURRENCY)
        .classifier(HttpStatus::new())
        .build()?;
    let breaker = BreakerLayer::builder()
        .name("gateway")
        .http_status()
        .count_window(100)
        .open_time(OPEN_TIME)
        .build()?;
    let (bulkhead_handle, breaker_handle) = (bulkhead.handle(), breaker.handle());
    let routes = routes.route_layer(
        ServiceBuilder::new()
            .layer(ProblemLayer::new())
            .layer(
                InboundDeadlineLayer::builder()
                    .name("gateway")
                    .cap(DEADLINE_CAP)
                    .http_status()
                    .build()?,
            )
            .layer(idempotency)
            .layer(bulkhead)
            .layer(breaker),
    );
    Ok((routes, bulkhead_handle, breaker_handle))
}

/// How the gateway reaches the backend.
#[derive(Clone)]
enum Link {
    Layered(Upstream),
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
        Link::Layered(client) => client.oneshot(req).await,
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
pub(crate) async fn start_layered<St>(
    backend: SocketAddr,
    store: St,
    prefix: &str,
) -> Result<(SocketAddr, Handles), BoxError>
where
    St: Store + Clone,
{
    let (client, backend_breaker, backend_bulkhead, budget) = client_stack()?;
    let gateway = Gateway {
        backend: format!("http://{backend}").into(),
        link: Link::Layered(client),
    };
    let (routes, gateway_bulkhead, gateway_breaker) =
        server_stack(routes().with_state(gateway), store, prefix)?;
    let app = routes
        .route("/health", get(|| async { "up\n" }))
        .layer(RedLayer::server());
    let addr = serve(app).await?;
    Ok((
        addr,
        Handles {
            backend_breaker,
            backend_bulkhead,
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
