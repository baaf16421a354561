//! The service's wiring at its edges: what a mutation run of `service.rs`, `future.rs`,
//! `body.rs`, `handle.rs` and `config.rs` found unchecked (CONTRIBUTING.md, "Mutation testing").

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{Empty, Full};
use metrics_util::debugging::DebuggingRecorder;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_bulkhead::{Aimd, BulkheadLayer, DEFAULT_PARTITION, Partition};

/// `u32::MAX`: the most permits or queue places a partition may have.
const MAX_LIMIT: usize = 4_294_967_295;

#[tokio::test]
async fn a_body_holding_the_permit_tells_its_length_and_its_end_as_the_inner_body_does() {
    let layer = BulkheadLayer::builder()
        .name("bodies")
        .max_concurrent(1)
        .hold_permit_until_body_end()
        .build()
        .expect("valid");
    let full = layer.layer(service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
    }));
    let body = full
        .oneshot(http::Request::new(()))
        .await
        .expect("ok")
        .into_body();
    // A server sends `content-length: 5` from this hint, not a chunked body.
    assert_eq!(body.size_hint().exact(), Some(5));
    assert!(!body.is_end_stream());
    drop(body);
    let empty = layer.layer(service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
    }));
    let body = empty
        .oneshot(http::Request::new(()))
        .await
        .expect("ok")
        .into_body();
    assert_eq!(body.size_hint().exact(), Some(0));
    assert!(body.is_end_stream());
}

#[test]
fn limits_and_queues_may_reach_u32_max_and_not_pass_it() {
    let at_max = BulkheadLayer::builder()
        .name("edge")
        .max_concurrent(MAX_LIMIT)
        .queue(MAX_LIMIT, Duration::from_secs(1))
        .build();
    assert!(at_max.is_ok(), "{at_max:?}");
    let err = BulkheadLayer::builder()
        .name("edge")
        .max_concurrent(MAX_LIMIT + 1)
        .build()
        .expect_err("past u32::MAX");
    assert!(err.to_string().contains("max_concurrent"), "{err}");
    let err = BulkheadLayer::builder()
        .name("edge")
        .queue(MAX_LIMIT + 1, Duration::from_secs(1))
        .build()
        .expect_err("past u32::MAX");
    assert!(err.to_string().contains("queue.max_len"), "{err}");
}

#[test]
fn a_limit_set_at_run_time_may_reach_the_bounds_and_not_pass_them() {
    let layer = BulkheadLayer::builder()
        .name("runtime")
        .max_concurrent(4)
        .partition(Partition::new("batch", 4).adaptive(Aimd::new(2, 8)))
        .build()
        .expect("valid");
    let handle = layer.handle();
    assert!(handle.set_limit(DEFAULT_PARTITION, MAX_LIMIT).is_ok());
    assert!(handle.set_limit(DEFAULT_PARTITION, MAX_LIMIT + 1).is_err());
    // An adaptive partition's limit stays within its own min and max, both included.
    assert!(handle.set_limit("batch", 2).is_ok());
    assert!(handle.set_limit("batch", 8).is_ok());
    assert!(handle.set_limit("batch", 1).is_err());
    assert!(handle.set_limit("batch", 9).is_err());
}

#[tokio::test]
async fn with_metrics_off_a_partitioned_bulkhead_registers_no_series() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let layer = BulkheadLayer::builder()
        .name("quiet")
        .max_concurrent(2)
        .partition(Partition::new("batch", 1))
        .partition_by(|_req: &http::Request<()>| Some("no-such-partition"))
        .metrics(false)
        .build()
        .expect("valid");
    layer
        .layer(service_fn(|_req: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(()))
        }))
        .oneshot(http::Request::new(()))
        .await
        .expect("ran in the default partition");
    let series = snapshotter.snapshot().into_vec();
    assert!(series.is_empty(), "{series:?}");
}

/// `resilience_requests_total{layer="bulkhead", outcome}` as the debugging recorder holds it.
fn requests(snapshotter: &metrics_util::debugging::Snapshotter, outcome: &str) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == tower_red::names::REQUESTS_TOTAL
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "outcome" && l.value() == outcome)
        })
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) => n,
            other => panic!("a counter, got {other:?}"),
        })
        .sum()
}

#[tokio::test]
async fn inside_a_stack_that_times_once_a_bulkhead_still_counts_each_call_and_each_drop() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let layer = tower_red::red::counts_only(|| {
        BulkheadLayer::builder()
            .name("stacked")
            .max_concurrent(2)
            .build()
            .expect("valid")
    });
    let mut svc = layer.layer(service_fn(|ready: bool| async move {
        if !ready {
            std::future::pending::<()>().await;
        }
        Ok::<_, Infallible>(())
    }));
    svc.ready()
        .await
        .expect("ready")
        .call(true)
        .await
        .expect("ok");
    assert_eq!(requests(&snapshotter, "ok"), 1);
    let mut never = tokio_test::task::spawn(svc.ready().await.expect("ready").call(false));
    assert!(never.poll().is_pending());
    drop(never);
    assert_eq!(requests(&snapshotter, "cancelled"), 1);
}

/// What a `fmt` subscriber wrote, shared with the test.
#[derive(Clone, Default)]
struct Written(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Written {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Written {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned"))
            .matches(needle)
            .count()
    }
}

/// Three calls through `svc`, each answered.
async fn call_three_times<S>(mut svc: S)
where
    S: tower::Service<http::Request<()>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..3 {
        svc.ready()
            .await
            .expect("ready")
            .call(http::Request::new(()))
            .await
            .expect("ok");
    }
}

#[tokio::test]
async fn an_unknown_partition_is_logged_once_per_bulkhead_and_no_partition_never() {
    let written = Written::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let written = written.clone();
            move || written.clone()
        })
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = || {
        service_fn(|_req: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(())) })
    };
    const WARNING: &str = "named a partition it does not have";

    let plain = BulkheadLayer::builder()
        .name("plain")
        .max_concurrent(2)
        .build()
        .expect("valid");
    call_three_times(plain.layer(app())).await;
    assert_eq!(
        written.count(WARNING),
        0,
        "an unpartitioned bulkhead names no partition"
    );

    let misnamed = BulkheadLayer::builder()
        .name("misnamed")
        .max_concurrent(2)
        .partition(Partition::new("batch", 1))
        .partition_by(|_req: &http::Request<()>| Some("no-such-partition"))
        .build()
        .expect("valid");
    call_three_times(misnamed.layer(app())).await;
    assert_eq!(written.count(WARNING), 1, "logged once for three calls");
}
