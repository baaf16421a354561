//! The fallback layer: it answers each refusal kind and classified failures, from the last good
//! response (never older than its bound) or a function, within its entry, byte and key bounds.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::sync::mpsc;
use tokio::time::advance;
use tower::{Service, ServiceExt};
use tower_idempotency::fallback::{
    FALLBACK, FallbackBody, FallbackContext, FallbackLayer, Reason, StaleConfig, When,
};
use tower_layer::Layer;
use tower_red::{BoxError, FailureClass, Rejection, RejectionKind, names, problem};

/// A response body the tests control: whole, never ending, or failing.
enum TestBody {
    Full(Option<Bytes>),
    /// One chunk, then nothing ever again.
    ThenPending(Option<Bytes>),
    /// One chunk, then trailers.
    WithTrailers(Option<Bytes>, bool),
    /// One chunk, then an error.
    ThenFails(Option<Bytes>),
    /// Chunks as the test sends them; the end when it drops the sender.
    Channel(mpsc::Receiver<Bytes>),
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn is_end_stream(&self) -> bool {
        matches!(self, TestBody::Full(None))
    }

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            TestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            TestBody::ThenPending(data) => match data.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Poll::Pending,
            },
            TestBody::WithTrailers(data, sent) => match data.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None if !*sent => {
                    *sent = true;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                None => Poll::Ready(None),
            },
            TestBody::ThenFails(data) => Poll::Ready(Some(match data.take() {
                Some(d) => Ok(Frame::data(d)),
                None => Err("connection reset".into()),
            })),
            TestBody::Channel(rx) => rx.poll_recv(_cx).map(|d| d.map(|d| Ok(Frame::data(d)))),
        }
    }
}

/// What the backend does with the next calls.
#[derive(Clone)]
enum Reply {
    Ok(&'static str),
    Status(u16),
    Header(&'static str, &'static str, &'static str),
    Refuse(Rejection),
    Problem(Rejection),
    Error,
    /// A body with trailers.
    Trailers,
    /// 204 with an empty body.
    NoContent,
    /// The backend never answers.
    Hang,
    /// Headers and a first chunk, then the body stalls.
    Stalls,
    BodyFails,
    /// Headers at once, then the body the test feeds (see [`Backend::streams`]).
    Streams(Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>),
}

#[derive(Clone)]
struct Backend(Arc<Mutex<Reply>>);

impl Backend {
    fn new() -> Self {
        Backend(Arc::new(Mutex::new(Reply::Ok("fresh"))))
    }

    fn set(&self, reply: Reply) {
        *self.0.lock().unwrap() = reply;
    }

    /// The next call answers headers at once and a body fed through the returned sender,
    /// which ends when the sender is dropped.
    fn streams(&self) -> mpsc::Sender<Bytes> {
        let (tx, rx) = mpsc::channel(4);
        self.set(Reply::Streams(Arc::new(Mutex::new(Some(rx)))));
        tx
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<TestBody>,
        Error = BoxError,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + 'static {
        let reply = self.0.clone();
        tower::service_fn(move |_req: Request<()>| {
            let reply = reply.lock().unwrap().clone();
            async move {
                let full = |s: &'static str| TestBody::Full(Some(Bytes::from(s)));
                match reply {
                    Reply::Ok(body) => Ok(Response::new(full(body))),
                    Reply::Status(status) => Ok(Response::builder()
                        .status(status)
                        .body(full("backend says no"))
                        .unwrap()),
                    Reply::Header(name, value, body) => Ok(Response::builder()
                        .header(name, value)
                        .body(full(body))
                        .unwrap()),
                    Reply::Refuse(rejection) => Err(BoxError::from(rejection)),
                    Reply::Problem(rejection) => {
                        let res = problem::rejection_response(&rejection);
                        let (parts, body) = res.into_parts();
                        let data = body.collect().await.unwrap().to_bytes();
                        Ok(Response::from_parts(parts, TestBody::Full(Some(data))))
                    }
                    Reply::Error => Err(BoxError::from("connection refused")),
                    Reply::Trailers => Ok(Response::new(TestBody::WithTrailers(
                        Some(Bytes::from("grpc frame")),
                        false,
                    ))),
                    Reply::NoContent => Ok(Response::builder()
                        .status(204)
                        .body(TestBody::Full(None))
                        .unwrap()),
                    Reply::Hang => std::future::pending().await,
                    Reply::Stalls => Ok(Response::new(TestBody::ThenPending(Some(Bytes::from(
                        "part",
                    ))))),
                    Reply::BodyFails => Ok(Response::new(TestBody::ThenFails(Some(Bytes::from(
                        "part",
                    ))))),
                    Reply::Streams(rx) => {
                        let rx = rx.lock().unwrap().take().expect("one call per stream");
                        Ok(Response::new(TestBody::Channel(rx)))
                    }
                }
            }
        })
    }
}

type Answer = Result<Response<FallbackBody<TestBody>>, BoxError>;

async fn send<S>(svc: &S, req: Request<()>) -> Answer
where
    S: Service<Request<()>, Response = Response<FallbackBody<TestBody>>, Error = BoxError> + Clone,
{
    svc.clone().oneshot(req).await
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

/// Sends `req` and reads the whole answer, as a server would: a success is stored when its body
/// ends.
async fn read<S>(svc: &S, req: Request<()>) -> String
where
    S: Service<Request<()>, Response = Response<FallbackBody<TestBody>>, Error = BoxError> + Clone,
{
    body(send(svc, req).await.unwrap()).await
}

async fn body(res: Response<FallbackBody<TestBody>>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn marker(res: &Response<FallbackBody<TestBody>>) -> Option<&str> {
    res.headers().get(FALLBACK).map(|v| v.to_str().unwrap())
}

fn stale(max_age_secs: u64) -> StaleConfig {
    StaleConfig {
        max_age: Duration::from_secs(max_age_secs),
        ..StaleConfig::default()
    }
}

/// A layer that answers failures only from its stale store, configured by `config`.
fn stale_only_layer(config: StaleConfig) -> FallbackLayer {
    FallbackLayer::builder()
        .stale_on_error(config)
        .build()
        .unwrap()
}

/// The function answers with what it saw.
fn describe(ctx: &FallbackContext) -> Option<Response<Bytes>> {
    Some(Response::new(Bytes::from(format!(
        "{:?} {} {}",
        ctx.reason(),
        ctx.method(),
        ctx.uri()
    ))))
}

const UNAVAILABLE: [RejectionKind; 6] = [
    RejectionKind::CircuitOpen,
    RejectionKind::BulkheadFull,
    RejectionKind::QueueTimeout,
    RejectionKind::LoadShed,
    RejectionKind::DeadlineExceeded,
    RejectionKind::RetryBudgetExhausted,
];

#[tokio::test(start_paused = true)]
async fn the_function_answers_every_refusal_kind_that_means_unavailable() {
    let backend = Backend::new();
    let layer = FallbackLayer::builder().from_fn(describe).build().unwrap();
    let svc = layer.layer(backend.service());
    for kind in UNAVAILABLE {
        backend.set(Reply::Refuse(Rejection::new(kind)));
        let res = send(&svc, Request::post("/orders?id=7").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{kind}");
        assert_eq!(marker(&res), Some("function"));
        assert_eq!(
            body(res).await,
            format!("Refused({kind:?}) POST /orders?id=7")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_last_good_response_answers_every_refusal_kind_that_means_unavailable() {
    let backend = Backend::new();
    let layer = stale_only_layer(stale(60));
    let svc = layer.layer(backend.service());
    let fresh = send(&svc, get("/menu")).await.unwrap();
    assert_eq!(marker(&fresh), None);
    assert_eq!(body(fresh).await, "fresh");
    for kind in UNAVAILABLE {
        backend.set(Reply::Refuse(Rejection::new(kind)));
        let res = send(&svc, get("/menu")).await.unwrap();
        assert_eq!(marker(&res), Some("stale"), "{kind}");
        assert_eq!(res.headers()["age"], "0");
        assert_eq!(body(res).await, "fresh");
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_spent_before_sending_or_during_the_call_is_answered() {
    let backend = Backend::new();
    let layer = FallbackLayer::builder()
        .when(When::deadline())
        .from_fn(describe)
        .build()
        .unwrap();
    let svc = layer.layer(backend.service());
    for stage in ["before_send", "queue", "call"] {
        backend.set(Reply::Refuse(
            Rejection::new(RejectionKind::DeadlineExceeded).with_reason(stage),
        ));
        let res = send(&svc, get("/slow")).await.unwrap();
        assert_eq!(marker(&res), Some("function"), "{stage}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusal_already_turned_into_a_problem_response_is_answered() {
    let backend = Backend::new();
    let layer = stale_only_layer(stale(60));
    let svc = layer.layer(backend.service());
    read(&svc, get("/menu")).await;
    backend.set(Reply::Problem(
        Rejection::new(RejectionKind::CircuitOpen).with_retry_after(Duration::from_secs(5)),
    ));
    let res = send(&svc, get("/menu")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(marker(&res), Some("stale"));
    assert!(res.headers().get("retry-after").is_none());
    assert_eq!(body(res).await, "fresh");
}

#[tokio::test(start_paused = true)]
async fn refusals_about_the_request_itself_pass_through_untouched() {
    let backend = Backend::new();
    let layer = FallbackLayer::builder().from_fn(describe).build().unwrap();
    let svc = layer.layer(backend.service());
    for kind in [
        RejectionKind::IdempotencyConflict,
        RejectionKind::InvalidDeadline,
        RejectionKind::StoreUnavailable,
    ] {
        backend.set(Reply::Refuse(Rejection::new(kind)));
        let err = send(&svc, get("/x")).await.unwrap_err();
        assert_eq!(Rejection::find_in(&err).map(Rejection::kind), Some(kind));
    }
}

#[tokio::test(start_paused = true)]
async fn when_limits_the_triggers() {
    let backend = Backend::new();
    let layer = FallbackLayer::builder()
        .when(When::circuit_open())
        .from_fn(describe)
        .build()
        .unwrap();
    let svc = layer.layer(backend.service());
    backend.set(Reply::Refuse(Rejection::new(RejectionKind::BulkheadFull)));
    assert!(send(&svc, get("/x")).await.is_err());
    backend.set(Reply::Error);
    assert!(send(&svc, get("/x")).await.is_err());
    backend.set(Reply::Refuse(Rejection::new(RejectionKind::CircuitOpen)));
    assert_eq!(
        marker(&send(&svc, get("/x")).await.unwrap()),
        Some("function")
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_the_classifier_sees_is_answered_from_the_store() {
    let backend = Backend::new();
    let layer = FallbackLayer::builder()
        .http_status()
        .stale_on_error(stale(60))
        .from_fn(describe)
        .build()
        .unwrap();
    let svc = layer.layer(backend.service());
    read(&svc, get("/menu")).await;
    for status in [500, 503, 429] {
        backend.set(Reply::Status(status));
        let res = send(&svc, get("/menu")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{status}");
        assert_eq!(marker(&res), Some("stale"));
        assert_eq!(body(res).await, "fresh");
    }
    // Nothing stored for this path: the function, told which status failed.
    backend.set(Reply::Status(502));
    let res = send(&svc, get("/other")).await.unwrap();
    assert_eq!(
        body(res).await,
        format!(
            "{:?} GET /other",
            Reason::Failure(FailureClass::HttpStatus(StatusCode::BAD_GATEWAY))
        )
    );
    // A 4xx is the backend doing its job: passed on, and not stored over the good answer; nor
    // is a partial 206.
    for status in [404, 206] {
        backend.set(Reply::Status(status));
        let res = send(&svc, get("/menu")).await.unwrap();
        assert_eq!(res.status(), status);
        assert_eq!(body(res).await, "backend says no");
    }
    backend.set(Reply::Status(500));
    assert_eq!(body(send(&svc, get("/menu")).await.unwrap()).await, "fresh");
}

#[tokio::test(start_paused = true)]
async fn with_the_default_classifier_only_errors_are_failures() {
    let backend = Backend::new();
    let layer = stale_only_layer(stale(60));
    let svc = layer.layer(backend.service());
    read(&svc, get("/menu")).await;
    backend.set(Reply::Status(500));
    let res = send(&svc, get("/menu")).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(marker(&res), None);
    backend.set(Reply::Error);
    let res = send(&svc, get("/menu")).await.unwrap();
    assert_eq!(body(res).await, "fresh", "the 500 was not stored");
}

#[tokio::test(start_paused = true)]
async fn an_entry_older_than_max_age_is_never_served() {
    let backend = Backend::new();
    let with_fn = FallbackLayer::builder()
        .name("with_fn")
        .stale_on_error(stale(10))
        .from_fn(describe)
        .build()
        .unwrap()
        .layer(backend.service());
    let stale_only = FallbackLayer::builder()
        .name("stale_only")
        .stale_on_error(stale(10))
        .build()
        .unwrap()
        .layer(backend.service());
    read(&with_fn, get("/menu")).await;
    read(&stale_only, get("/menu")).await;
    backend.set(Reply::Refuse(Rejection::new(RejectionKind::CircuitOpen)));

    advance(Duration::from_secs(4)).await;
    let res = send(&with_fn, get("/menu")).await.unwrap();
    assert_eq!(res.headers()["age"], "4");
    assert_eq!(marker(&res), Some("stale"));

    advance(Duration::from_secs(6)).await; // exactly max_age: still served
    let res = send(&stale_only, get("/menu")).await.unwrap();
    assert_eq!(res.headers()["age"], "10");

    advance(Duration::from_millis(1)).await;
    let res = send(&with_fn, get("/menu")).await.unwrap();
    assert_eq!(marker(&res), Some("function"));
    let err = send(&stale_only, get("/menu")).await.unwrap_err();
    assert_eq!(
        Rejection::find_in(&err).map(Rejection::kind),
        Some(RejectionKind::CircuitOpen)
    );
    // A fresh success starts the clock again.
    backend.set(Reply::Ok("fresher"));
    read(&stale_only, get("/menu")).await;
    backend.set(Reply::Error);
    assert_eq!(
        body(send(&stale_only, get("/menu")).await.unwrap()).await,
        "fresher"
    );
}

#[tokio::test(start_paused = true)]
async fn the_age_header_adds_the_age_the_response_came_with() {
    let backend = Backend::new();
    let svc = stale_only_layer(stale(60)).layer(backend.service());
    backend.set(Reply::Header("age", "100", "cached upstream"));
    read(&svc, get("/menu")).await;
    advance(Duration::from_secs(3)).await;
    backend.set(Reply::Error);
    let res = send(&svc, get("/menu")).await.unwrap();
    assert_eq!(res.headers()["age"], "103");
}

#[tokio::test(start_paused = true)]
async fn the_entry_bound_evicts_the_oldest_entry() {
    let backend = Backend::new();
    let svc = stale_only_layer(StaleConfig {
        max_entries: 2,
        ..stale(60)
    })
    .layer(backend.service());
    for path in ["/a", "/b", "/c"] {
        read(&svc, get(path)).await;
    }
    backend.set(Reply::Error);
    assert!(send(&svc, get("/a")).await.is_err());
    assert_eq!(marker(&send(&svc, get("/b")).await.unwrap()), Some("stale"));
    assert_eq!(marker(&send(&svc, get("/c")).await.unwrap()), Some("stale"));
}

#[tokio::test(start_paused = true)]
async fn the_byte_bound_evicts_the_oldest_entry() {
    let backend = Backend::new();
    // Each entry costs its key ("GET /a", 6 bytes) and body ("fresh", 5): two fit in 25.
    let svc = stale_only_layer(StaleConfig {
        max_bytes: 25,
        max_entry_bytes: 25,
        ..stale(60)
    })
    .layer(backend.service());
    for path in ["/a", "/b", "/c"] {
        read(&svc, get(path)).await;
    }
    backend.set(Reply::Error);
    assert!(send(&svc, get("/a")).await.is_err());
    assert_eq!(marker(&send(&svc, get("/b")).await.unwrap()), Some("stale"));
    assert_eq!(marker(&send(&svc, get("/c")).await.unwrap()), Some("stale"));
}

#[tokio::test(start_paused = true)]
async fn a_body_over_max_entry_bytes_streams_on_whole_and_is_not_stored() {
    let backend = Backend::new();
    let svc = stale_only_layer(StaleConfig {
        max_entry_bytes: 4,
        ..stale(60)
    })
    .layer(backend.service());
    backend.set(Reply::Ok("123456"));
    assert_eq!(body(send(&svc, get("/big")).await.unwrap()).await, "123456");
    backend.set(Reply::Ok("1234"));
    assert_eq!(body(send(&svc, get("/small")).await.unwrap()).await, "1234");
    backend.set(Reply::Error);
    assert!(send(&svc, get("/big")).await.is_err());
    assert_eq!(body(send(&svc, get("/small")).await.unwrap()).await, "1234");
}

#[tokio::test(start_paused = true)]
async fn answers_that_may_not_be_served_stale_and_unsafe_or_authorized_requests_are_not_stored() {
    let backend = Backend::new();
    let svc = stale_only_layer(stale(60)).layer(backend.service());
    backend.set(Reply::Header(
        "cache-control",
        "max-age=0, no-store",
        "secret",
    ));
    read(&svc, get("/no-store")).await;
    backend.set(Reply::Header("cache-control", "Private", "mine"));
    read(&svc, get("/private")).await;
    backend.set(Reply::Header("x-fallback", "stale", "already a fallback"));
    read(&svc, get("/nested")).await;
    backend.set(Reply::Header(
        "cache-control",
        "max-age=60, must-revalidate",
        "strict",
    ));
    read(&svc, get("/must-revalidate")).await;
    backend.set(Reply::Header(
        "cache-control",
        "no-cache=\"set-cookie\"",
        "fresh only",
    ));
    read(&svc, get("/no-cache")).await;
    backend.set(Reply::Header("vary", "*", "varies"));
    read(&svc, get("/vary")).await;
    backend.set(Reply::Trailers);
    read(&svc, get("/trailers")).await;
    backend.set(Reply::Header(
        "cache-control",
        "public, max-age=5",
        "shared",
    ));
    read(&svc, get("/public")).await;
    backend.set(Reply::Ok("posted"));
    read(&svc, Request::post("/post").body(()).unwrap()).await;
    let authorized = || {
        Request::get("/me")
            .header("authorization", "Bearer t")
            .body(())
            .unwrap()
    };
    read(&svc, authorized()).await;

    backend.set(Reply::Error);
    for path in [
        "/no-store",
        "/private",
        "/nested",
        "/must-revalidate",
        "/no-cache",
        "/vary",
        "/trailers",
    ] {
        assert!(send(&svc, get(path)).await.is_err(), "{path}");
    }
    assert_eq!(read(&svc, get("/public")).await, "shared");
    assert!(
        send(&svc, Request::post("/post").body(()).unwrap())
            .await
            .is_err()
    );
    assert!(send(&svc, authorized()).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_custom_key_separates_callers_and_long_keys_are_not_cached() {
    let backend = Backend::new();
    let svc = FallbackLayer::builder()
        .stale_on_error(stale(60))
        .key(|req| {
            let user = req.headers().get("x-user")?.to_str().ok()?;
            Some(format!("{user} {}", req.path()))
        })
        .max_key_bytes(16)
        .build()
        .unwrap()
        .layer(backend.service());
    let as_user = |user: &str| {
        Request::get("/feed")
            .header("x-user", user)
            .body(())
            .unwrap()
    };
    backend.set(Reply::Ok("alice's feed"));
    read(&svc, as_user("alice")).await;
    backend.set(Reply::Ok("a long name's feed"));
    read(&svc, as_user("a-very-long-name")).await;
    backend.set(Reply::Error);
    assert_eq!(
        body(send(&svc, as_user("alice")).await.unwrap()).await,
        "alice's feed"
    );
    assert!(send(&svc, as_user("bob")).await.is_err());
    assert!(send(&svc, as_user("a-very-long-name")).await.is_err());
    assert!(send(&svc, get("/feed")).await.is_err(), "no user, no key");
}

/// A layer whose key leaves the method out, as many custom keys do: user and path.
fn keyed_by_user_and_path(
    backend: &Backend,
) -> impl Service<Request<()>, Response = Response<FallbackBody<TestBody>>, Error = BoxError> + Clone
{
    FallbackLayer::builder()
        .stale_on_error(stale(60))
        .key(|req| {
            let user = req.headers().get("x-user")?.to_str().ok()?;
            Some(format!("{user} {}", req.path()))
        })
        .build()
        .unwrap()
        .layer(backend.service())
}

fn as_alice(method: http::Method) -> Request<()> {
    Request::builder()
        .method(method)
        .uri("/feed")
        .header("x-user", "alice")
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_failing_post_is_never_answered_from_a_get_entry_whatever_the_key() {
    let backend = Backend::new();
    let svc = keyed_by_user_and_path(&backend);
    backend.set(Reply::Ok("alice's feed"));
    read(&svc, as_alice(http::Method::GET)).await;
    backend.set(Reply::Error);
    match send(&svc, as_alice(http::Method::POST)).await {
        Err(err) => assert_eq!(err.to_string(), "connection refused"),
        Ok(res) => {
            let (status, marker) = (res.status(), marker(&res).map(str::to_owned));
            panic!(
                "the POST never ran, yet it got {status} {marker:?} {:?}",
                body(res).await
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_post_success_is_not_stored_and_keeps_the_get_entry() {
    let backend = Backend::new();
    let svc = keyed_by_user_and_path(&backend);
    backend.set(Reply::Ok("alice's feed"));
    read(&svc, as_alice(http::Method::GET)).await;
    backend.set(Reply::Ok("order created"));
    read(&svc, as_alice(http::Method::POST)).await;
    backend.set(Reply::Error);
    let res = send(&svc, as_alice(http::Method::GET)).await.unwrap();
    assert_eq!(marker(&res), Some("stale"));
    assert_eq!(body(res).await, "alice's feed");
    assert!(
        send(&svc, as_alice(http::Method::POST)).await.is_err(),
        "no POST entry: a failed POST is never told it succeeded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_answer_is_kept_apart_and_never_served_to_a_get() {
    let backend = Backend::new();
    let svc = keyed_by_user_and_path(&backend);
    backend.set(Reply::Ok("alice's feed"));
    read(&svc, as_alice(http::Method::GET)).await;
    backend.set(Reply::Ok(""));
    read(&svc, as_alice(http::Method::HEAD)).await;
    backend.set(Reply::Error);
    let res = send(&svc, as_alice(http::Method::GET)).await.unwrap();
    assert_eq!(marker(&res), Some("stale"));
    assert_eq!(body(res).await, "alice's feed", "not the HEAD's empty body");
    let res = send(&svc, as_alice(http::Method::HEAD)).await.unwrap();
    assert_eq!(marker(&res), Some("stale"), "a HEAD from the HEAD's entry");
    assert_eq!(body(res).await, "");
}

/// A backend that answers with the host it was asked for (the URI's authority, else `Host`),
/// until `down` is set.
fn virtual_hosts(
    down: &Arc<std::sync::atomic::AtomicBool>,
) -> impl Service<Request<()>, Response = Response<FallbackBody<TestBody>>, Error = BoxError> + Clone
{
    let down = down.clone();
    let backend = tower::service_fn(move |req: Request<()>| {
        let down = down.load(std::sync::atomic::Ordering::Relaxed);
        let host = match req.uri().authority() {
            Some(authority) => authority.to_string(),
            None => req.headers()["host"].to_str().unwrap().to_owned(),
        };
        async move {
            if down {
                return Err(BoxError::from("connection refused"));
            }
            Ok(Response::new(TestBody::Full(Some(Bytes::from(host)))))
        }
    });
    stale_only_layer(stale(60)).layer(backend)
}

/// A request as an HTTP/1.1 server sees it: a path, and the host in `Host`.
fn get_on(host: &str, path: &str) -> Request<()> {
    Request::get(path).header("host", host).body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_default_key_tells_virtual_hosts_apart_by_their_host_header() {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let svc = virtual_hosts(&down);
    assert_eq!(read(&svc, get_on("a.example", "/feed")).await, "a.example");
    down.store(true, std::sync::atomic::Ordering::Relaxed);
    match send(&svc, get_on("b.example", "/feed")).await {
        Err(err) => assert_eq!(err.to_string(), "connection refused"),
        Ok(res) => panic!(
            "b.example was answered from a.example's entry: {:?}",
            body(res).await
        ),
    }
    let res = send(&svc, get_on("a.example", "/feed")).await.unwrap();
    assert_eq!(marker(&res), Some("stale"));
    assert_eq!(body(res).await, "a.example");
}

#[tokio::test(start_paused = true)]
async fn an_http2_and_an_http1_request_for_one_target_share_an_entry() {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let svc = virtual_hosts(&down);
    // HTTP/2: the authority is in the URI, and there is no `Host`.
    assert_eq!(read(&svc, get("https://a.example/feed")).await, "a.example");
    down.store(true, std::sync::atomic::Ordering::Relaxed);
    // HTTP/1.1: a path and `Host`, whose case does not matter (RFC 3986 §3.2.2).
    let res = send(&svc, get_on("A.Example", "/feed")).await.unwrap();
    assert_eq!(marker(&res), Some("stale"));
    assert_eq!(body(res).await, "a.example");
}

/// The `Age` and body of the stale answer to a GET of `path`, or a panic saying what came.
async fn stale_answer<S>(svc: &S, path: &str) -> (String, String)
where
    S: Service<Request<()>, Response = Response<FallbackBody<TestBody>>, Error = BoxError> + Clone,
{
    match send(svc, get(path)).await {
        Ok(res) if marker(&res) == Some("stale") => {
            let age = res.headers()["age"].to_str().unwrap().to_owned();
            (age, body(res).await)
        }
        Ok(res) => panic!("{path}: not a stale answer: {:?}", res.headers()),
        Err(err) => panic!("{path}: no stale answer: {err}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_older_response_whose_body_ends_last_never_replaces_a_newer_one() {
    let backend = Backend::new();
    let svc = stale_only_layer(stale(10)).layer(backend.service());
    // t=0: A's headers arrive; its body streams slowly.
    let feed = backend.streams();
    let a = send(&svc, get("/feed")).await.unwrap();
    feed.send(Bytes::from("A, from t=0")).await.unwrap();
    // t=5: B, asked later, completes first.
    advance(Duration::from_secs(5)).await;
    backend.set(Reply::Ok("B, from t=5"));
    read(&svc, get("/feed")).await;
    // t=8: A's body ends.
    advance(Duration::from_secs(3)).await;
    drop(feed);
    assert_eq!(body(a).await, "A, from t=0");

    backend.set(Reply::Error);
    assert_eq!(
        stale_answer(&svc, "/feed").await,
        ("3".to_owned(), "B, from t=5".to_owned()),
        "the newer answer, not the one whose body ended last"
    );
    advance(Duration::from_secs(3)).await; // t=11: A would be too old, B is not
    assert_eq!(
        stale_answer(&svc, "/feed").await,
        ("6".to_owned(), "B, from t=5".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_that_ends_after_max_age_is_not_stored_and_evicts_nothing() {
    let backend = Backend::new();
    let svc = stale_only_layer(StaleConfig {
        max_entries: 1,
        ..stale(10)
    })
    .layer(backend.service());
    // t=0: /slow's headers; its body takes 11 s, longer than max_age.
    let slow = backend.streams();
    let res = send(&svc, get("/slow")).await.unwrap();
    slow.send(Bytes::from("slow")).await.unwrap();
    // t=5: /menu is stored, the only entry max_entries allows.
    advance(Duration::from_secs(5)).await;
    backend.set(Reply::Ok("menu"));
    read(&svc, get("/menu")).await;
    // t=11: /slow's body ends, 11 s after its headers.
    advance(Duration::from_secs(6)).await;
    drop(slow);
    assert_eq!(body(res).await, "slow");

    backend.set(Reply::Error);
    assert_eq!(
        stale_answer(&svc, "/menu").await,
        ("6".to_owned(), "menu".to_owned()),
        "/menu's entry, 6 s old, is still there"
    );
    assert!(send(&svc, get("/slow")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_function_may_decline_and_the_failure_goes_on() {
    let backend = Backend::new();
    let svc = FallbackLayer::builder()
        .from_fn(|ctx| (ctx.uri().path() == "/menu").then(|| Response::new(Bytes::from("[]"))))
        .build()
        .unwrap()
        .layer(backend.service());
    backend.set(Reply::Error);
    assert_eq!(body(send(&svc, get("/menu")).await.unwrap()).await, "[]");
    let err = send(&svc, get("/orders")).await.unwrap_err();
    assert_eq!(err.to_string(), "connection refused");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_fails_mid_stream_reaches_the_caller_and_is_not_stored() {
    let backend = Backend::new();
    let svc = stale_only_layer(stale(60)).layer(backend.service());
    read(&svc, get("/menu")).await;
    backend.set(Reply::BodyFails);
    let res = send(&svc, get("/menu")).await.unwrap();
    assert_eq!(marker(&res), None, "the headers were fine: they went on");
    assert!(res.into_body().collect().await.is_err());
    backend.set(Reply::Error);
    assert_eq!(
        body(send(&svc, get("/menu")).await.unwrap()).await,
        "fresh",
        "the broken body did not replace the good one"
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_success_is_stored_though_nobody_reads_its_body() {
    let backend = Backend::new();
    let svc = stale_only_layer(stale(60)).layer(backend.service());
    backend.set(Reply::NoContent);
    // hyper does not poll a body that says it has ended.
    drop(send(&svc, get("/ping")).await.unwrap());
    backend.set(Reply::Error);
    let res = send(&svc, get("/ping")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(marker(&res), Some("stale"));
}

#[tokio::test(start_paused = true)]
async fn a_stored_response_streams_to_its_caller_before_its_body_ends() {
    let backend = Backend::new();
    let svc = stale_only_layer(stale(60)).layer(backend.service());
    backend.set(Reply::Stalls);
    let res = send(&svc, get("/feed")).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "part");
    let mut rest = tokio_test::task::spawn(body.frame());
    assert!(rest.poll().is_pending());
    drop(rest);
    drop(body); // the caller hung up mid-body: nothing stored
    backend.set(Reply::Error);
    assert!(send(&svc, get("/feed")).await.is_err());
}

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn outcome_count(snapshot: &Snapshot, name: &str, outcome: &str) -> u64 {
    snapshot
        .iter()
        .find_map(|(key, _, _, value)| {
            let key = key.key();
            let label = |k: &str| key.labels().find(|l| l.key() == k).map(|l| l.value());
            match value {
                DebugValue::Counter(n)
                    if key.name() == names::REQUESTS_TOTAL
                        && label("layer") == Some("fallback")
                        && label("name") == Some(name)
                        && label("outcome") == Some(outcome) =>
                {
                    Some(*n)
                }
                _ => None,
            }
        })
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn red_counts_each_call_once_with_fallbacks_under_their_own_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        FallbackLayer::builder()
            .name("menu")
            .http_status()
            .stale_on_error(stale(60))
            .build()
            .unwrap()
    });
    let backend = Backend::new();
    let svc = layer.layer(backend.service());
    read(&svc, get("/menu")).await; // ok
    backend.set(Reply::Refuse(Rejection::new(RejectionKind::CircuitOpen)));
    read(&svc, get("/menu")).await; // fallback
    send(&svc, get("/none")).await.unwrap_err(); // inner_refusal
    backend.set(Reply::Status(500));
    read(&svc, get("/menu")).await; // fallback
    read(&svc, get("/none")).await; // error
    backend.set(Reply::Refuse(
        Rejection::new(RejectionKind::DeadlineExceeded).with_reason("call"),
    ));
    send(&svc, get("/none")).await.unwrap_err(); // inner_refusal: the deadline layer counted it
    backend.set(Reply::Hang);
    let mut pending = tokio_test::task::spawn(svc.clone().oneshot(get("/menu")));
    assert!(pending.poll().is_pending());
    drop(pending); // cancelled

    let snapshot = snapshotter.snapshot().into_vec();
    let count = |outcome| outcome_count(&snapshot, "menu", outcome);
    assert_eq!(count("ok"), 1);
    assert_eq!(count("fallback"), 2);
    assert_eq!(count("inner_refusal"), 2);
    assert_eq!(count("error"), 1);
    assert_eq!(count("cancelled"), 1);
    assert_eq!(count("timeout"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_future_dropped_before_the_answer_stores_nothing_and_keeps_the_old_entry() {
    let backend = Backend::new();
    let svc = FallbackLayer::builder()
        .stale_on_error(stale(60))
        .from_fn(|_| Some(Response::new(Bytes::from("default"))))
        .build()
        .unwrap()
        .layer(backend.service());
    read(&svc, get("/menu")).await;
    backend.set(Reply::Hang);
    let mut fut = tokio_test::task::spawn(svc.clone().oneshot(get("/menu")));
    for _ in 0..3 {
        assert!(fut.poll().is_pending());
    }
    drop(fut);
    backend.set(Reply::Error);
    assert_eq!(body(send(&svc, get("/menu")).await.unwrap()).await, "fresh");
    assert_eq!(
        body(send(&svc, get("/other")).await.unwrap()).await,
        "default"
    );
}

#[test]
fn bad_configuration_is_refused_when_built() {
    let field = |builder: tower_idempotency::fallback::FallbackLayerBuilder| {
        builder.build().unwrap_err().field().to_owned()
    };
    let answer = || FallbackLayer::builder().from_fn(|_| None);
    assert_eq!(field(FallbackLayer::builder()), "from_fn");
    assert_eq!(field(answer().name("")), "name");
    let bad = |config: StaleConfig| field(FallbackLayer::builder().stale_on_error(config));
    assert_eq!(
        bad(StaleConfig {
            max_age: Duration::ZERO,
            ..StaleConfig::default()
        }),
        "stale_on_error.max_age"
    );
    assert_eq!(
        bad(StaleConfig {
            max_entries: 0,
            ..StaleConfig::default()
        }),
        "stale_on_error.max_entries"
    );
    assert_eq!(
        bad(StaleConfig {
            max_bytes: 0,
            ..StaleConfig::default()
        }),
        "stale_on_error.max_bytes"
    );
    assert_eq!(
        bad(StaleConfig {
            max_entry_bytes: 0,
            ..StaleConfig::default()
        }),
        "stale_on_error.max_entry_bytes"
    );
    let err = FallbackLayer::builder()
        .stale_on_error(StaleConfig {
            max_bytes: 10,
            max_entry_bytes: 11,
            ..StaleConfig::default()
        })
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "stale_on_error.max_entry_bytes");
    assert!(err.reason().contains("max_bytes = 10"), "{err}");
    assert_eq!(
        field(
            FallbackLayer::builder()
                .stale_on_error(StaleConfig::default())
                .max_key_bytes(0)
        ),
        "max_key_bytes"
    );
    assert!(answer().build().is_ok());
}
