//! Metrics recorded by the layers, with a local debugging recorder.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::time::advance;
use tower::{Layer, ServiceExt, service_fn};
use tower_red::names;
use tower_timeout_budget::TimeoutBudgetLayer;
use tower_timeout_budget::inbound::InboundDeadlineLayer;
use tower_timeout_budget::outbound::OutboundDeadlineLayer;

const MS: Duration = Duration::from_millis(1);

type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// Takes a snapshot (the debugging recorder drains counters and histograms when read).
fn snapshot(snapshotter: &Snapshotter) -> Snapshot {
    snapshotter.snapshot().into_vec()
}

/// The values of the series `name` whose labels include every pair of `labels`.
fn matching<'a>(
    snapshot: &'a Snapshot,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a DebugValue> {
    snapshot
        .iter()
        .filter(move |(key, ..)| key.key().name() == name)
        .filter(move |(key, ..)| {
            labels
                .iter()
                .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(.., value)| value)
}

/// The value of the counter `name` whose labels include every pair of `labels`.
fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    matching(snapshot, name, labels)
        .map(|value| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

/// A timeout layer with `cap`, named `name`, registering its series with `recorder`.
fn budget_layer_recorded_by(
    recorder: &DebuggingRecorder,
    cap: Duration,
    name: &'static str,
) -> TimeoutBudgetLayer {
    metrics::with_local_recorder(recorder, || {
        TimeoutBudgetLayer::builder()
            .cap(cap)
            .name(name)
            .build()
            .expect("valid")
    })
}

fn histogram_len(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> usize {
    histogram_samples(snapshot, name, labels).len()
}

#[tokio::test(start_paused = true)]
async fn red_and_deadline_exceeded_counts_by_stage() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = budget_layer_recorded_by(&recorder, 100 * MS, "checkout");
    let svc = layer.layer(service_fn(|slow: bool| async move {
        if slow {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok::<_, Infallible>(())
    }));

    svc.clone().oneshot(false).await.expect("fast call");
    svc.clone().oneshot(true).await.expect_err("slow call");
    let snap = snapshot(&snapshotter);
    let ours = [("layer", "timeout"), ("name", "checkout")];

    let ok = [ours[0], ours[1], ("outcome", "ok")];
    let timeout = [ours[0], ours[1], ("outcome", "timeout")];
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &ok), 1);
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &timeout), 1);
    assert_eq!(
        histogram_len(&snap, names::REQUEST_DURATION_SECONDS, &timeout),
        1
    );
    let call = [ours[0], ours[1], ("stage", "call")];
    let ready = [ours[0], ours[1], ("stage", "ready")];
    assert_eq!(counter(&snap, names::DEADLINE_EXCEEDED_TOTAL, &call), 1);
    assert_eq!(counter(&snap, names::DEADLINE_EXCEEDED_TOTAL, &ready), 0);
}

#[tokio::test(start_paused = true)]
async fn readiness_timeouts_are_counted_under_stage_ready() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = budget_layer_recorded_by(&recorder, 10 * MS, "pool");
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u64, (), _>(layer);
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    advance(10 * MS).await;
    assert!(svc.poll_ready().is_ready());
    svc.call(1).await.expect_err("timed out waiting");
    let ready = [("name", "pool"), ("stage", "ready")];
    let snap = snapshot(&snapshotter);
    assert_eq!(counter(&snap, names::DEADLINE_EXCEEDED_TOTAL, &ready), 1);
    let timeout = [("name", "pool"), ("outcome", "timeout")];
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &timeout), 1);
}

#[tokio::test(start_paused = true)]
async fn malformed_inbound_headers_are_counted_by_header() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        InboundDeadlineLayer::builder().build().expect("valid")
    });
    let svc = layer.layer(service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(())
    }));
    for (header, value) in [
        ("grpc-timeout", "10s"),
        ("grpc-timeout", "1"),
        ("x-request-timeout-ms", "-5"),
    ] {
        let req = http::Request::builder()
            .header(header, value)
            .body(())
            .expect("a request");
        svc.clone()
            .oneshot(req)
            .await
            .expect("lenient mode ignores it");
    }
    let grpc = [("name", "inbound"), ("header", "grpc-timeout")];
    let http = [("name", "inbound"), ("header", "x-request-timeout-ms")];
    let snap = snapshot(&snapshotter);
    assert_eq!(
        counter(&snap, names::DEADLINE_HEADER_INVALID_TOTAL, &grpc),
        2
    );
    assert_eq!(
        counter(&snap, names::DEADLINE_HEADER_INVALID_TOTAL, &http),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_can_be_turned_off() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        TimeoutBudgetLayer::builder()
            .cap(MS)
            .metrics(false)
            .build()
            .expect("valid")
    });
    let svc = layer.layer(service_fn(|_req: u64| async { Ok::<_, Infallible>(()) }));
    svc.oneshot(1).await.expect("ok");
    assert!(snapshotter.snapshot().into_vec().is_empty());
}

/// Every series registered in `snapshot`, as `metric{label=value,…}` without the `name` label.
fn series(snapshot: &Snapshot) -> std::collections::BTreeSet<String> {
    snapshot
        .iter()
        .map(|(key, ..)| {
            let labels: Vec<String> = key
                .key()
                .labels()
                .filter(|l| l.key() != "name")
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            format!("{}{{{}}}", key.key().name(), labels.join(","))
        })
        .collect()
}

/// The series a deadline layer labelled `layer` registers: the RED pair for the outcomes it can
/// produce, its stages, its malformed headers and its refusals.
fn expected(
    layer: &str,
    stages: &[&str],
    headers: &[&str],
    refusals: &[&str],
) -> std::collections::BTreeSet<String> {
    let mut all = std::collections::BTreeSet::new();
    for outcome in ["ok", "error", "timeout", "inner_refusal"] {
        for metric in [names::REQUESTS_TOTAL, names::REQUEST_DURATION_SECONDS] {
            all.insert(format!("{metric}{{layer={layer},outcome={outcome}}}"));
        }
    }
    for outcome in refusals {
        let metric = names::REQUESTS_TOTAL;
        all.insert(format!("{metric}{{layer={layer},outcome={outcome}}}"));
    }
    for stage in stages {
        let metric = names::DEADLINE_EXCEEDED_TOTAL;
        all.insert(format!("{metric}{{layer={layer},stage={stage}}}"));
    }
    for header in headers {
        let metric = names::DEADLINE_HEADER_INVALID_TOTAL;
        all.insert(format!("{metric}{{layer={layer},header={header}}}"));
    }
    all
}

#[test]
fn each_layer_has_its_own_label_and_registers_only_the_series_it_can_produce() {
    let registered = |build: &dyn Fn()| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, build);
        series(&snapshot(&snapshotter))
    };
    let timeout = registered(&|| {
        let _layer = TimeoutBudgetLayer::builder()
            .cap(MS)
            .name("a")
            .build()
            .expect("valid");
    });
    assert_eq!(
        timeout,
        expected("timeout", &["arrival", "ready", "call"], &[], &[])
    );
    let inbound = registered(&|| {
        let _layer = InboundDeadlineLayer::builder()
            .name("b")
            .build()
            .expect("valid");
    });
    assert_eq!(
        inbound,
        expected(
            "deadline_inbound",
            &["arrival", "call"],
            &["grpc-timeout", "x-request-timeout-ms"],
            &[]
        )
    );
    let strict_grpc_only = registered(&|| {
        let _layer = InboundDeadlineLayer::builder()
            .no_http_header()
            .strict(true)
            .name("c")
            .build()
            .expect("valid");
    });
    assert_eq!(
        strict_grpc_only,
        expected(
            "deadline_inbound",
            &["arrival", "call"],
            &["grpc-timeout"],
            &["rejected"]
        )
    );
    let outbound = registered(&|| {
        let _layer = OutboundDeadlineLayer::builder()
            .name("d")
            .build()
            .expect("valid");
    });
    assert_eq!(
        outbound,
        expected(
            "deadline_outbound",
            &["ready", "call", "before_send"],
            &[],
            &[]
        )
    );
}

#[tokio::test(start_paused = true)]
async fn inbound_and_outbound_layers_record_under_their_own_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let inbound = InboundDeadlineLayer::builder()
        .name("edge")
        .build()
        .expect("valid");
    let outbound = OutboundDeadlineLayer::builder()
        .name("upstream")
        .build()
        .expect("valid");
    let svc = inbound.layer(outbound.layer(service_fn(|_req: http::Request<()>| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, Infallible>(())
    })));
    let req = http::Request::builder()
        .header("x-request-timeout-ms", "100")
        .body(())
        .expect("a request");
    svc.oneshot(req).await.expect_err("timed out");
    let snap = snapshot(&snapshotter);
    // Both enforce the same deadline; the inner one (outbound) fires first and counts the
    // timeout, the outer one counts an inner refusal.
    let out_timeout = [
        ("layer", "deadline_outbound"),
        ("name", "upstream"),
        ("outcome", "timeout"),
    ];
    let in_refusal = [
        ("layer", "deadline_inbound"),
        ("name", "edge"),
        ("outcome", "inner_refusal"),
    ];
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &out_timeout), 1);
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &in_refusal), 1);
    assert_eq!(
        counter(&snap, names::REQUESTS_TOTAL, &[("layer", "timeout")]),
        0
    );
}

/// A transport that gives up with its own error when the budget it was sent runs out, as
/// tonic's `Channel` does.
async fn transport_enforcing_the_sent_budget(
    req: http::Request<()>,
) -> Result<(), tower_red::BoxError> {
    let sent: u64 = req.headers()["x-request-timeout-ms"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("millis");
    tokio::time::sleep(Duration::from_millis(sent)).await;
    Err("Timeout expired".into())
}

#[tokio::test(start_paused = true)]
async fn a_transport_enforcing_the_sent_budget_is_counted_as_this_layers_timeout() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let outbound = OutboundDeadlineLayer::builder()
        .name("upstream")
        .margin(20 * MS)
        .build()
        .expect("valid");
    let svc = outbound.layer(service_fn(transport_enforcing_the_sent_budget));
    // Whole milliseconds, and a budget the header rounds down (480.5 ms sent as `480`).
    for budget in [500 * MS, Duration::from_micros(500_500)] {
        tower_timeout_budget::Deadline::after(budget)
            .scope(svc.clone().oneshot(http::Request::new(())))
            .await
            .expect_err("timed out");
    }
    // (timeout, error, deadline exceeded at the call stage)
    assert_eq!(upstream_counts(&snapshot(&snapshotter)), (2, 0, 2));
}

/// The labels of a RED series: the layer's kind, its name, and the `outcome`.
fn red<'a>(layer: &'a str, name: &'a str, outcome: &'a str) -> [(&'a str, &'a str); 3] {
    [("layer", layer), ("name", name), ("outcome", outcome)]
}

/// The labels of the `upstream` outbound layer's series with `outcome`.
fn upstream(outcome: &str) -> [(&str, &str); 3] {
    red("deadline_outbound", "upstream", outcome)
}

/// The `upstream` outbound layer's timeouts, errors, and deadlines exceeded at the call stage.
fn upstream_counts(snap: &Snapshot) -> (u64, u64, u64) {
    (
        counter(snap, names::REQUESTS_TOTAL, &upstream("timeout")),
        counter(snap, names::REQUESTS_TOTAL, &upstream("error")),
        counter(
            snap,
            names::DEADLINE_EXCEEDED_TOTAL,
            &[("name", "upstream"), ("stage", "call")],
        ),
    )
}

#[tokio::test(start_paused = true)]
async fn inside_a_stack_that_times_once_the_sent_budget_running_out_is_still_one_timeout() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    // Counts only: the future takes its inline path, which must count as the timed one does.
    let outbound = tower_red::red::counts_only(|| {
        OutboundDeadlineLayer::builder()
            .name("upstream")
            .margin(20 * MS)
            .build()
            .expect("valid")
    });
    let svc = outbound.layer(service_fn(transport_enforcing_the_sent_budget));
    tower_timeout_budget::Deadline::after(500 * MS)
        .scope(svc.clone().oneshot(http::Request::new(())))
        .await
        .expect_err("timed out");
    // An error before the sent budget ran out is the inner service's, counted as an error.
    let quick = outbound.layer(service_fn(|_req: http::Request<()>| async {
        Err::<(), tower_red::BoxError>("refused".into())
    }));
    tower_timeout_budget::Deadline::after(500 * MS)
        .scope(quick.oneshot(http::Request::new(())))
        .await
        .expect_err("failed");
    let snap = snapshot(&snapshotter);
    assert_eq!(upstream_counts(&snap), (1, 1, 1));
    assert_eq!(
        histogram_len(&snap, names::REQUEST_DURATION_SECONDS, &upstream("timeout")),
        0,
        "no duration inside a stack that times once"
    );
}

/// An axum-like handler that answers `status`.
fn answers(
    status: u16,
) -> impl tower::Service<http::Request<()>, Response = http::Response<()>, Error = Infallible> + Clone
{
    service_fn(move |_req: http::Request<()>| async move {
        Ok::<_, Infallible>(
            http::Response::builder()
                .status(status)
                .body(())
                .expect("a response"),
        )
    })
}

#[tokio::test(start_paused = true)]
async fn an_inbound_layer_judging_http_status_counts_a_500_as_an_error() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let judged = InboundDeadlineLayer::builder()
        .cap(Duration::from_secs(1))
        .http_status()
        .name("edge")
        .build()
        .expect("valid");
    let default = InboundDeadlineLayer::builder()
        .name("default")
        .build()
        .expect("valid");
    for status in [500, 200, 503, 404] {
        let res = judged
            .layer(answers(status))
            .oneshot(http::Request::new(()))
            .await
            .expect("a response");
        assert_eq!(res.status(), status);
        default
            .layer(answers(status))
            .oneshot(http::Request::new(()))
            .await
            .expect("a response");
    }
    let snap = snapshot(&snapshotter);
    let labels = |name, outcome| red("deadline_inbound", name, outcome);
    // 5xx fail, 2xx and 4xx succeed: as the breaker and bulkhead of the stack judge them.
    assert_eq!(
        counter(&snap, names::REQUESTS_TOTAL, &labels("edge", "error")),
        2
    );
    assert_eq!(
        counter(&snap, names::REQUESTS_TOTAL, &labels("edge", "ok")),
        2
    );
    assert_eq!(
        histogram_len(
            &snap,
            names::REQUEST_DURATION_SECONDS,
            &labels("edge", "error")
        ),
        2
    );
    // The default stays `AnyError`: an `Ok` response is `ok` whatever its status.
    assert_eq!(
        counter(&snap, names::REQUESTS_TOTAL, &labels("default", "ok")),
        4
    );
    assert_eq!(
        counter(&snap, names::REQUESTS_TOTAL, &labels("default", "error")),
        0
    );
}

/// A classifier that calls everything a failure and counts its calls.
fn counting_failures(
    calls: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> impl tower_red::Classify<(), tower_red::BoxError> + use<> {
    let calls = calls.clone();
    tower_red::classify::classify_fn(move |_: &Result<(), tower_red::BoxError>| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tower_red::Verdict::Failure(tower_red::FailureClass::Other("always"))
    })
}

#[tokio::test(start_paused = true)]
async fn the_classifier_judges_only_finished_calls_never_this_layers_or_inner_refusals() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let calls = std::sync::Arc::default();
    let layer = TimeoutBudgetLayer::builder()
        .cap(100 * MS)
        .classifier(counting_failures(&calls))
        .name("judged")
        .build()
        .expect("valid");
    // 0: answers at once; 1: too slow; 2: an inner layer's refusal.
    let svc = layer.layer(service_fn(|case: u8| async move {
        match case {
            0 => Ok(()),
            1 => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(())
            }
            _ => Err(tower_red::Rejection::new(
                tower_red::RejectionKind::CircuitOpen,
            )),
        }
    }));
    svc.clone().oneshot(0).await.expect("answered");
    svc.clone().oneshot(1).await.expect_err("timed out");
    svc.clone().oneshot(2).await.expect_err("refused below");
    let snap = snapshot(&snapshotter);
    let labels = |outcome| red("timeout", "judged", outcome);
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &labels("error")), 1);
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &labels("timeout")), 1);
    assert_eq!(
        counter(&snap, names::REQUESTS_TOTAL, &labels("inner_refusal")),
        1
    );
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &labels("ok")), 0);
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the call that finished by itself is classified"
    );
}

#[tokio::test(start_paused = true)]
async fn the_classifier_is_not_called_without_metrics_or_without_a_recorder() {
    let calls = std::sync::Arc::default();
    let call = |layer: TimeoutBudgetLayer<_, _>| async move {
        layer
            .layer(service_fn(|()| async { Ok::<_, Infallible>(()) }))
            .oneshot(())
            .await
            .expect("answered");
    };
    // No recorder installed when the layer is built.
    call(
        TimeoutBudgetLayer::builder()
            .cap(100 * MS)
            .classifier(counting_failures(&calls))
            .build()
            .expect("valid"),
    )
    .await;
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    call(
        TimeoutBudgetLayer::builder()
            .cap(100 * MS)
            .classifier(counting_failures(&calls))
            .metrics(false)
            .build()
            .expect("valid"),
    )
    .await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 0);
    // The same layer with metrics on does call it (so the zero above means something).
    call(
        TimeoutBudgetLayer::builder()
            .cap(100 * MS)
            .classifier(counting_failures(&calls))
            .build()
            .expect("valid"),
    )
    .await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn an_outbound_layer_judging_grpc_status_counts_unavailable_as_an_error() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let outbound = OutboundDeadlineLayer::builder()
        .grpc_status()
        .name("upstream")
        .build()
        .expect("valid");
    let svc = outbound.layer(service_fn(|req: http::Request<()>| async move {
        let code = req.uri().path().trim_start_matches('/').to_owned();
        Ok::<_, Infallible>(
            http::Response::builder()
                .header("grpc-status", code)
                .body(())
                .expect("a response"),
        )
    }));
    for code in ["14", "0", "5"] {
        let req = http::Request::builder()
            .uri(format!("/{code}"))
            .header("content-type", "application/grpc")
            .body(())
            .expect("a request");
        tower_timeout_budget::Deadline::after(Duration::from_secs(1))
            .scope(svc.clone().oneshot(req))
            .await
            .expect("a response");
    }
    let snap = snapshot(&snapshotter);
    let labels = |outcome| red("deadline_outbound", "upstream", outcome);
    // UNAVAILABLE fails; OK and NOT_FOUND (the caller's problem) do not.
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &labels("error")), 1);
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &labels("ok")), 2);
}

#[tokio::test(start_paused = true)]
async fn a_response_built_from_an_inner_refusal_is_an_inner_refusal_not_an_error() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let inbound = InboundDeadlineLayer::builder()
        .http_status()
        .name("edge")
        .build()
        .expect("valid");
    // A handler that turned a client breaker's refusal into a 503.
    let svc = inbound.layer(service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(tower_red::problem::rejection_response(
            &tower_red::Rejection::new(tower_red::RejectionKind::CircuitOpen),
        ))
    }));
    let res = svc
        .oneshot(http::Request::new(()))
        .await
        .expect("a response");
    assert_eq!(res.status(), 503);
    let snap = snapshot(&snapshotter);
    let labels = |outcome| red("deadline_inbound", "edge", outcome);
    assert_eq!(
        counter(&snap, names::REQUESTS_TOTAL, &labels("inner_refusal")),
        1
    );
    assert_eq!(counter(&snap, names::REQUESTS_TOTAL, &labels("error")), 0);
}

/// Every sample of the histogram `name` whose labels include every pair of `labels`.
fn histogram_samples(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    matching(snapshot, name, labels)
        .flat_map(|value| match value {
            DebugValue::Histogram(v) => v.iter().map(|f| f.into_inner()).collect::<Vec<_>>(),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .collect()
}

/// A handler that answers 200 after 30 ms.
async fn slow_ok(_req: http::Request<()>) -> Result<http::Response<()>, Infallible> {
    tokio::time::sleep(30 * MS).await;
    Ok(http::Response::new(()))
}

/// One request through `svc`, answered.
async fn answered<S>(svc: S)
where
    S: tower::Service<http::Request<()>>,
    S::Error: std::fmt::Debug,
{
    svc.oneshot(http::Request::new(())).await.expect("ok");
}

#[tokio::test(start_paused = true)]
async fn a_layer_standing_alone_records_how_long_its_call_took() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let budget = TimeoutBudgetLayer::builder()
        .name("alone")
        .cap(2_000 * MS)
        .build()
        .expect("valid");
    let inbound = InboundDeadlineLayer::builder()
        .name("alone")
        .build()
        .expect("valid");
    let outbound = OutboundDeadlineLayer::builder()
        .name("alone")
        .build()
        .expect("valid");
    // Inside one caller's deadline, which the outbound layer needs to write its header.
    tower_timeout_budget::Deadline::after(2_000 * MS)
        .scope(async {
            answered(budget.layer(service_fn(slow_ok))).await;
            answered(inbound.layer(service_fn(slow_ok))).await;
            answered(outbound.layer(service_fn(slow_ok))).await;
        })
        .await;
    let snap = snapshot(&snapshotter);
    for layer in [
        names::layer::TIMEOUT,
        names::layer::DEADLINE_INBOUND,
        names::layer::DEADLINE_OUTBOUND,
    ] {
        let samples = histogram_samples(
            &snap,
            names::REQUEST_DURATION_SECONDS,
            &[("layer", layer), ("name", "alone"), ("outcome", "ok")],
        );
        assert_eq!(samples, [0.03], "{layer}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_readiness_timeout_records_the_time_waited_not_the_idle_time_before() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = budget_layer_recorded_by(&recorder, 100 * MS, "pool");
    let (mut svc, switch) = common::gated(layer);
    common::wait_then_open(&mut svc, &switch, 30 * MS).await;
    // Ready and unused for 500 ms, then not ready again for the 70 ms the limit has left.
    advance(500 * MS).await;
    switch.close();
    // Starts the second wait (whether it says pending is `timeout_budget.rs`'s business).
    let _ = svc.poll_ready();
    advance(70 * MS).await;
    assert!(svc.poll_ready().is_ready());
    svc.call(http::Request::new(()))
        .await
        .expect_err("timed out waiting");
    let snap = snapshot(&snapshotter);
    let ready = [("name", "pool"), ("stage", "ready")];
    assert_eq!(counter(&snap, names::DEADLINE_EXCEEDED_TOTAL, &ready), 1);
    let timeout = [("name", "pool"), ("outcome", "timeout")];
    assert_eq!(
        histogram_samples(&snap, names::REQUEST_DURATION_SECONDS, &timeout),
        [0.1]
    );
}
