//! Partitions: separate limits and queues from one layer, and a concurrency check on real
//! threads.

mod support;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Backend, Job, reason};
use tokio_test::{assert_pending, task};
use tower::{Layer, Service, ServiceExt};
use tower_bulkhead::{BulkheadLayer, DEFAULT_PARTITION, Partition, Reason};

fn classify(job: &Job) -> Option<&'static str> {
    Some(job.class)
}

#[tokio::test(start_paused = true)]
async fn slow_background_work_never_takes_capacity_from_critical_work() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(4)
        .partition(Partition::new("critical", 4).queue(8, Duration::from_millis(50)))
        .partition(Partition::new("background", 2).queue(4, Duration::from_millis(500)))
        .partition_by(classify)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.clone());

    // A flood of slow background calls: 2 run, 4 wait, the rest are refused.
    let mut background = Vec::new();
    let mut refused = 0;
    for id in 0..50 {
        let mut call = task::spawn(svc.clone().oneshot(Job::new(id, 10_000).background()));
        match call.poll() {
            std::task::Poll::Pending => background.push(call),
            std::task::Poll::Ready(Err(err)) => {
                assert_eq!(reason(&err), Some(Reason::QueueFull));
                refused += 1;
            }
            std::task::Poll::Ready(Ok(_)) => panic!("a 10 s call cannot finish at once"),
        }
    }
    assert_eq!(refused, 44);
    assert_eq!(handle.in_flight("background"), Some(2));
    assert_eq!(handle.queued("background"), Some(4));

    // Critical calls are untouched: 40 of them in bursts of 10 (4 run, 6 queue) all get
    // through without a rejection, each within 15 ms.
    for burst in 0..4 {
        let start = tokio::time::Instant::now();
        let calls: Vec<_> = (0..10)
            .map(|i| tokio::spawn(svc.clone().oneshot(Job::new(100 + burst * 10 + i, 5))))
            .collect();
        for call in calls {
            call.await
                .unwrap()
                .expect("critical calls are never refused");
        }
        assert!(start.elapsed() <= Duration::from_millis(15));
    }
    assert_eq!(backend.finished.load(Ordering::SeqCst), 40);
    assert_eq!(handle.in_flight("background"), Some(2));
    assert_eq!(handle.in_flight("critical"), Some(0));
    assert_eq!(handle.in_flight(DEFAULT_PARTITION), Some(0));
    for call in &mut background {
        assert_pending!(call.poll());
    }
    drop(background);
    assert_eq!(handle.in_flight("background"), Some(0));
    assert_eq!(handle.queued("background"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn unknown_partition_names_fall_back_to_the_default_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder()
            .name("typo")
            .max_concurrent(2)
            .partition(Partition::new("background", 1))
            .partition_by(|job: &Job| Some(job.class))
            .build()
            .unwrap()
    });
    let handle = layer.handle();
    let mut svc = layer.layer(Backend::default());
    let mut a = task::spawn(svc.ready().await.unwrap().call(Job::new(1, 100)));
    assert_pending!(a.poll());
    let mut b = task::spawn(svc.ready().await.unwrap().call(Job::new(2, 100)));
    assert_pending!(b.poll());
    assert_eq!(
        handle.in_flight(DEFAULT_PARTITION),
        Some(2),
        "`critical` is not declared"
    );
    assert_eq!(
        handle.partitions().collect::<Vec<_>>(),
        ["default", "background"]
    );
    let unknown = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| key.key().name() == "resilience_bulkhead_unknown_partition_total")
        .map(|(key, .., value)| {
            (
                key.key()
                    .labels()
                    .map(|l| l.value().to_owned())
                    .collect::<Vec<_>>(),
                value,
            )
        });
    assert_eq!(
        unknown,
        Some((
            vec!["bulkhead".to_owned(), "typo".to_owned()],
            DebugValue::Counter(2)
        )),
        "not silent: counted"
    );
}

/// Many tasks on a multi-thread runtime hammer a small limit; the backend never sees more.
async fn hammer(layer: BulkheadLayer, limit: usize) -> (Backend, usize) {
    let backend = Backend::default();
    let handle = layer.handle();
    let svc = layer.layer(backend.clone());
    let ok = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let svc = svc.clone();
            let ok = ok.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let job = Job::new(t * 1000 + i, 0);
                    if svc.clone().oneshot(job).await.is_ok() {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        backend.max_in_flight() <= limit,
        "saw {} in flight",
        backend.max_in_flight()
    );
    assert_eq!(handle.in_flight(DEFAULT_PARTITION), Some(0));
    assert_eq!(handle.queued(DEFAULT_PARTITION), Some(0));
    (backend, ok.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limit_holds_under_contention_when_rejecting() {
    let layer = BulkheadLayer::builder().max_concurrent(3).build().unwrap();
    let (backend, ok) = hammer(layer, 3).await;
    assert!(ok > 0);
    assert_eq!(backend.finished.load(Ordering::SeqCst), ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limit_holds_under_contention_when_queueing() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(3)
        .queue(64, Duration::from_secs(60))
        .build()
        .unwrap();
    let (backend, ok) = hammer(layer, 3).await;
    assert_eq!(ok, 64 * 50, "a queue longer than the callers never refuses");
    assert_eq!(backend.max_in_flight(), 3);
}
