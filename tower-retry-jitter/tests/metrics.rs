//! The retry layer's metrics, through a local debugging recorder.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, ServiceExt, service_fn};
use tower_red::BoxError;
use tower_red::names;
use tower_retry_jitter::{Jitter, RetryBudget, RetryLayer};

/// One snapshot (taking one drains the series), every series of every name.
type Snapshot = Vec<(CompositeKey, DebugValue)>;

fn snapshot(recorder: &DebuggingRecorder) -> Snapshot {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect()
}

/// The value of the series `name` of the layer named `orders`, with `label` if given.
fn value(s: &Snapshot, name: &str, label: Option<(&str, &str)>) -> Option<DebugValue> {
    s.iter().find_map(|(key, value)| {
        let key = key.key();
        let labelled =
            label.is_none_or(|(k, v)| key.labels().any(|l| l.key() == k && l.value() == v));
        let named = key
            .labels()
            .any(|l| l.key() == "name" && l.value() == "orders");
        (key.name() == name && labelled && named).then(|| match value {
            DebugValue::Counter(n) => DebugValue::Counter(*n),
            DebugValue::Gauge(g) => DebugValue::Gauge(*g),
            DebugValue::Histogram(h) => DebugValue::Histogram(h.clone()),
        })
    })
}

fn counter(s: &Snapshot, name: &str, label: (&str, &str)) -> u64 {
    match value(s, name, Some(label)) {
        Some(DebugValue::Counter(n)) => n,
        other => panic!("{name} {label:?}: {other:?}"),
    }
}

/// The samples of the histogram `name` of the layer named `orders`.
fn samples(s: &Snapshot, name: &str) -> Vec<f64> {
    match value(s, name, None) {
        Some(DebugValue::Histogram(h)) => h.into_iter().map(|v| v.into_inner()).collect(),
        other => panic!("{name}: {other:?}"),
    }
}

/// The value of the gauge `name` of the layer named `orders`.
fn gauge(s: &Snapshot, name: &str) -> f64 {
    match value(s, name, None) {
        Some(DebugValue::Gauge(g)) => g.into_inner(),
        other => panic!("{name}: {other:?}"),
    }
}

/// A budget of `n` retries a second that requests earn nothing towards.
fn retries_a_second(n: u32) -> RetryBudget {
    RetryBudget::builder()
        .ratio(0.0)
        .min_per_second(n)
        .window(Duration::from_secs(1))
        .buckets(1)
        .build()
        .expect("valid")
}

#[tokio::test(start_paused = true)]
async fn retries_stops_attempts_and_the_budget_are_counted() {
    let recorder = DebuggingRecorder::new();
    let budget = retries_a_second(2);
    let layer = metrics::with_local_recorder(&recorder, || {
        RetryLayer::builder()
            .name("orders")
            .base(Duration::from_millis(10))
            .jitter(Jitter::None)
            .budget(budget)
            .always_safe()
            .build()
            .expect("valid")
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = layer.layer(service_fn(move |n: u64| {
        let i = c.fetch_add(1, SeqCst);
        async move {
            if i < 2 || n == 0 {
                Err::<u64, BoxError>("reset".into())
            } else {
                Ok(n)
            }
        }
    }));
    // Two failures, then a success: the two retries the budget had.
    assert_eq!(svc.clone().oneshot(1).await.expect("third attempt"), 1);
    // A failure the budget cannot pay for: returned as it was.
    svc.oneshot(0).await.expect_err("budget spent");
    assert_eq!(calls.load(SeqCst), 4);

    let s = &snapshot(&recorder);
    assert_eq!(
        counter(s, names::RETRY_ATTEMPTS_TOTAL, ("reason", "error")),
        2
    );
    assert_eq!(
        counter(s, names::RETRY_STOPS_TOTAL, ("reason", "budget")),
        1
    );
    assert_eq!(
        counter(s, names::RETRY_STOPS_TOTAL, ("reason", "attempts")),
        0
    );
    assert_eq!(counter(s, names::REQUESTS_TOTAL, ("outcome", "ok")), 1);
    assert_eq!(
        counter(s, names::REQUESTS_TOTAL, ("outcome", "budget_exhausted")),
        1
    );
    assert_eq!(counter(s, names::REQUESTS_TOTAL, ("outcome", "error")), 0);
    assert_eq!(
        counter(s, names::REQUESTS_TOTAL, ("outcome", "cancelled")),
        0,
        "a call that ended is not counted again when its future is dropped"
    );
    let mut attempts = samples(s, names::RETRY_REQUEST_ATTEMPTS);
    attempts.sort_by(f64::total_cmp);
    assert_eq!(attempts, [1.0, 3.0]);
    assert_eq!(gauge(s, names::RETRY_BUDGET_BALANCE), 0.0);
}

#[tokio::test(start_paused = true)]
async fn inside_a_stack_only_retried_requests_take_an_attempts_sample() {
    let recorder = DebuggingRecorder::new();
    let layer = metrics::with_local_recorder(&recorder, || {
        tower_red::red::counts_only(|| {
            RetryLayer::builder()
                .name("orders")
                .base(Duration::from_millis(10))
                .jitter(Jitter::None)
                .no_budget()
                .always_safe()
                .build()
                .expect("valid")
        })
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = layer.layer(service_fn(move |n: u64| {
        let i = c.fetch_add(1, SeqCst);
        async move {
            if n == 0 && i == 0 {
                Err::<u64, BoxError>("reset".into())
            } else {
                Ok(n)
            }
        }
    }));
    // A retried request (2 attempts), then two that succeed at once.
    assert_eq!(svc.clone().oneshot(0).await.expect("second attempt"), 0);
    assert_eq!(svc.clone().oneshot(1).await.expect("first attempt"), 1);
    assert_eq!(svc.oneshot(2).await.expect("first attempt"), 2);

    let s = &snapshot(&recorder);
    // Every request is counted; the first-attempt ones are the requests the histogram lacks.
    assert_eq!(counter(s, names::REQUESTS_TOTAL, ("outcome", "ok")), 3);
    assert_eq!(samples(s, names::RETRY_REQUEST_ATTEMPTS), [2.0]);
}

#[tokio::test(start_paused = true)]
async fn an_unsafe_failure_and_a_cancelled_call_are_counted() {
    let recorder = DebuggingRecorder::new();
    let layer = metrics::with_local_recorder(&recorder, || {
        RetryLayer::builder()
            .name("orders")
            .base(Duration::from_secs(1))
            .jitter(Jitter::None) // the backoff is exactly 1 s
            .no_budget()
            .safe_if(|n: &u64| *n != 0)
            .build()
            .expect("valid")
    });
    let svc = layer.layer(service_fn(|_: u64| async {
        Err::<u64, BoxError>("no".into())
    }));
    svc.clone().oneshot(0).await.expect_err("not retried");
    let fut = svc.oneshot(1);
    // Dropped in its first backoff.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), fut)
            .await
            .is_err()
    );
    let s = &snapshot(&recorder);
    assert_eq!(
        counter(s, names::RETRY_STOPS_TOTAL, ("reason", "unsafe")),
        1
    );
    assert_eq!(counter(s, names::REQUESTS_TOTAL, ("outcome", "error")), 1);
    assert_eq!(
        counter(s, names::REQUESTS_TOTAL, ("outcome", "cancelled")),
        1
    );
}

/// A server's `DontRetryLayer` counts each don't-retry answer by reason, and nothing for the
/// requests it leaves alone: a refused first attempt, a refused retry, and a failure after an
/// outbound call made for the request was told not to retry.
#[test]
fn dont_retry_answers_are_counted_by_reason() {
    use tower::Service;
    use tower_retry_jitter::attempt::{self, DontRetryLayer};

    let recorder = DebuggingRecorder::new();
    let layer = DontRetryLayer::new().name("orders");
    let mut svc = layer.layer(service_fn(|req: http::Request<()>| {
        // A request asking for it stands for a handler whose own call was told to stop.
        if req.headers().contains_key("x-downstream-stopped") {
            attempt::note_dont_retry();
        }
        std::future::ready(Ok::<_, BoxError>(
            http::Response::builder()
                .status(503)
                .body(())
                .expect("valid"),
        ))
    }));
    let mut send = |req: http::Request<()>| {
        metrics::with_local_recorder(&recorder, || {
            let mut fut = tokio_test::task::spawn(svc.call(req));
            match fut.poll() {
                std::task::Poll::Ready(res) => attempt::read_dont_retry(res.expect("ok").headers()),
                std::task::Poll::Pending => panic!("answered at once"),
            }
        })
    };
    assert!(
        !send(http::Request::new(())),
        "a first attempt may be retried once"
    );
    let mut retry = http::Request::new(());
    attempt::write_attempt(retry.headers_mut(), 2);
    assert!(send(retry));
    let mut stopped = http::Request::new(());
    stopped
        .headers_mut()
        .insert("x-downstream-stopped", http::HeaderValue::from_static("1"));
    assert!(send(stopped));

    let s = &snapshot(&recorder);
    assert_eq!(
        counter(
            s,
            names::RETRY_DONT_RETRY_TOTAL,
            ("reason", "retry_refused")
        ),
        1
    );
    assert_eq!(
        counter(
            s,
            names::RETRY_DONT_RETRY_TOTAL,
            ("reason", "downstream_said_stop")
        ),
        1
    );
    assert_eq!(
        s.iter()
            .filter(|(key, _)| key.key().name() == names::RETRY_DONT_RETRY_TOTAL)
            .count(),
        2,
        "no series for the request left alone"
    );
}

/// A request body that never yields a frame: an upload still in progress.
struct Uploading;

impl http_body::Body for Uploading {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        std::task::Poll::Pending
    }
}

/// With `buffer_body`, a call dropped while its body is read is counted as every other dropped
/// call of the layer: `cancelled`, or `timeout` when a deadline enforcer dropped it.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_its_body_is_read_is_counted() {
    let recorder = DebuggingRecorder::new();
    let layer = metrics::with_local_recorder(&recorder, || {
        RetryLayer::builder()
            .name("orders")
            .no_budget()
            .buffer_body(1024)
            .build()
            .expect("valid")
    });
    let svc = layer.layer(service_fn(
        |_: http::Request<tower_retry_jitter::RetryBody<Uploading>>| async {
            Ok::<_, BoxError>(http::Response::new(()))
        },
    ));
    let put = || http::Request::put("/doc").body(Uploading).expect("valid");

    let mut left = tokio_test::task::spawn(svc.clone().oneshot(put()));
    tokio_test::assert_pending!(left.poll());
    drop(left);
    let mut expired = tokio_test::task::spawn(svc.oneshot(put()));
    tokio_test::assert_pending!(expired.poll());
    tower_red::cancel::drop_expired(expired);

    let s = &snapshot(&recorder);
    assert_eq!(
        counter(s, names::REQUESTS_TOTAL, ("outcome", "cancelled")),
        1
    );
    assert_eq!(counter(s, names::REQUESTS_TOTAL, ("outcome", "timeout")), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_succeeds_records_its_duration() {
    let recorder = DebuggingRecorder::new();
    let layer = metrics::with_local_recorder(&recorder, || {
        RetryLayer::builder()
            .name("orders")
            .no_budget()
            .always_safe()
            .build()
            .expect("valid")
    });
    let svc = layer.layer(service_fn(|n: u64| async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        Ok::<u64, BoxError>(n)
    }));
    assert_eq!(svc.oneshot(1).await.expect("ok"), 1);
    let s = &snapshot(&recorder);
    assert_eq!(counter(s, names::REQUESTS_TOTAL, ("outcome", "ok")), 1);
    assert_eq!(samples(s, names::REQUEST_DURATION_SECONDS), [0.25]);
}

/// Each retry is counted by the failure that prompted it (an attempt timeout, an HTTP status,
/// a gRPC status), and the budget's balance gauge follows the retries it paid for.
#[tokio::test(start_paused = true)]
async fn retries_are_counted_by_the_failure_that_prompted_them() {
    let recorder = DebuggingRecorder::new();
    let budget = retries_a_second(10);
    let layer = metrics::with_local_recorder(&recorder, || {
        RetryLayer::builder()
            .name("orders")
            .max_attempts(4)
            .base(Duration::from_millis(10))
            .jitter(Jitter::None)
            .budget(budget)
            .attempt_timeout(Duration::from_millis(100))
            .retry_on(tower_retry_jitter::RetryOn::new())
            .build()
            .expect("valid")
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = layer.layer(service_fn(move |_: http::Request<()>| {
        let i = c.fetch_add(1, SeqCst);
        async move {
            let res = http::Response::builder();
            let res = match i {
                // Too slow: cut by the attempt timeout.
                0 => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    res.status(200)
                }
                1 => res.status(503),
                2 => res.status(200).header("grpc-status", "14"),
                _ => res.status(200),
            };
            Ok::<_, BoxError>(res.body(()).expect("valid"))
        }
    }));
    let get = http::Request::get("/").body(()).expect("valid");
    assert_eq!(
        svc.oneshot(get).await.expect("the fourth attempt").status(),
        200
    );
    assert_eq!(calls.load(SeqCst), 4);

    let s = &snapshot(&recorder);
    for (reason, retries) in [
        ("timeout", 1),
        ("http_status", 1),
        ("grpc_status", 1),
        ("error", 0),
        ("other", 0),
    ] {
        assert_eq!(
            counter(s, names::RETRY_ATTEMPTS_TOTAL, ("reason", reason)),
            retries,
            "{reason}"
        );
    }
    assert_eq!(gauge(s, names::RETRY_BUDGET_BALANCE), 7.0, "10 - 3 retries");
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_cap_is_counted() {
    use bytes::Bytes;
    use http_body_util::Full;
    use tower_retry_jitter::RetryBody;

    let recorder = DebuggingRecorder::new();
    let layer = metrics::with_local_recorder(&recorder, || {
        RetryLayer::builder()
            .name("orders")
            .no_budget()
            .buffer_body(4)
            .build()
            .expect("valid")
    });
    let svc = layer.layer(service_fn(
        |_: http::Request<RetryBody<Full<Bytes>>>| async {
            Ok::<_, BoxError>(http::Response::new(()))
        },
    ));
    for body in ["four", "five!"] {
        let put = http::Request::put("/doc")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("valid");
        svc.clone().oneshot(put).await.expect("ok");
    }
    let s = &snapshot(&recorder);
    match value(s, names::RETRY_BODY_OVERFLOW_TOTAL, None) {
        Some(DebugValue::Counter(n)) => assert_eq!(n, 1),
        other => panic!("overflow: {other:?}"),
    }
}
