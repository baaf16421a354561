//! The partition's policies seen from the service, on a paused clock: the behaviours a mutation
//! run found unchecked (see CONTRIBUTING.md, "Mutation testing").

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::StreamBody;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::{Backend, Job, reason};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_bulkhead::{Aimd, BulkheadLayer, DEFAULT_PARTITION, Reason};
use tower_red::names;

const D: &str = DEFAULT_PARTITION;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A waker that counts its wakes.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Counting {
    fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_polled_from_a_new_task_wakes_that_task() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(4, ms(10_000))
        .build()
        .unwrap();
    let mut svc = layer.layer(Backend::default());
    let mut busy = task::spawn(svc.ready().await.unwrap().call(Job::new(1, 100)));
    assert_pending!(busy.poll());
    let mut queued = pin!(svc.ready().await.unwrap().call(Job::new(2, 10)));

    let (first, second) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
    let first_waker = Waker::from(first.clone());
    let second_waker = Waker::from(second.clone());
    assert!(
        queued
            .as_mut()
            .poll(&mut Context::from_waker(&first_waker))
            .is_pending()
    );
    // Tower's contract: the waker of the latest poll is the one woken.
    assert!(
        queued
            .as_mut()
            .poll(&mut Context::from_waker(&second_waker))
            .is_pending()
    );
    tokio::time::advance(ms(100)).await;
    assert_ready_ok!(busy.poll());
    assert_eq!(second.wakes(), 1, "the task that polled last is woken");
    assert_eq!(first.wakes(), 0, "the task that moved away is not");
}

fn gauge(snapshotter: &Snapshotter, name: &str) -> Option<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| {
            let key = key.key();
            let ours = key.name() == name
                && key
                    .labels()
                    .any(|l| l.key() == "partition" && l.value() == D);
            match value {
                DebugValue::Gauge(v) if ours => Some(v.into_inner()),
                _ => None,
            }
        })
}

#[tokio::test(start_paused = true)]
async fn the_queue_depth_gauge_follows_waiters_in_and_out() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder()
            .name("depth")
            .max_concurrent(1)
            .queue(4, ms(10_000))
            .build()
            .unwrap()
    });
    // A snapshot swaps each gauge to zero: every value checked below is one just set.
    let depth = || gauge(&snapshotter, names::BULKHEAD_QUEUE_DEPTH);
    let mut svc = layer.layer(Backend::default());
    let mut busy = task::spawn(svc.ready().await.unwrap().call(Job::new(1, 100)));
    assert_pending!(busy.poll());
    let mut waiters = Vec::new();
    for id in 2..5 {
        let mut waiter = task::spawn(svc.ready().await.unwrap().call(Job::new(id, 100)));
        assert_pending!(waiter.poll());
        assert_eq!(depth(), Some((id - 1) as f64), "a caller joins the queue");
        waiters.push(waiter);
    }
    drop(waiters.pop());
    assert_eq!(
        depth(),
        Some(2.0),
        "a waiter that gives up leaves the gauge"
    );
    tokio::time::advance(ms(100)).await;
    assert_ready_ok!(busy.poll());
    assert_eq!(depth(), Some(1.0), "a granted waiter leaves the gauge");
}

#[tokio::test(start_paused = true)]
async fn the_limit_gauge_follows_manual_and_adaptive_changes() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder()
            .name("limit")
            .max_concurrent(10)
            .adaptive(Aimd::new(2, 20).timeout(ms(50)))
            .build()
            .unwrap()
    });
    let limit = || gauge(&snapshotter, names::BULKHEAD_LIMIT);
    let handle = layer.handle();
    assert_eq!(limit(), Some(10.0));
    handle.set_limit(D, 12).unwrap();
    assert_eq!(limit(), Some(12.0));
    let mut svc = layer.layer(Backend::default());
    // A slow call is a drop: 12 × 0.9 = 10.
    svc.ready()
        .await
        .unwrap()
        .call(Job::new(1, 100))
        .await
        .unwrap();
    assert_eq!(handle.limit(D), Some(10));
    assert_eq!(limit(), Some(10.0), "the adaptive cut shows on the gauge");
}

type Chunks = futures::channel::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;
type Body = StreamBody<futures::channel::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>>;

/// A service whose response bodies stream until the test drops their sender.
fn streaming(
    bodies: std::sync::mpsc::Sender<Chunks>,
) -> impl Service<
    http::Request<()>,
    Response = http::Response<Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: http::Request<()>| {
        let (tx, rx) = futures::channel::mpsc::channel(4);
        bodies.send(tx).unwrap();
        async move { Ok::<_, Infallible>(http::Response::new(StreamBody::new(rx))) }
    })
}

#[tokio::test(start_paused = true)]
async fn a_rising_adaptive_limit_admits_a_waiter_while_the_raising_call_still_holds_its_permit() {
    let (bodies_tx, bodies) = std::sync::mpsc::channel();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .adaptive(Aimd::new(1, 10))
        .queue(4, ms(10_000))
        .hold_permit_until_body_end()
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(streaming(bodies_tx));
    let mut first = task::spawn(svc.ready().await.unwrap().call(http::Request::new(())));
    let mut waiter = task::spawn(svc.ready().await.unwrap().call(http::Request::new(())));
    assert_pending!(waiter.poll());
    assert_eq!(handle.queued(D), Some(1));
    // The first call's head: a busy success raises the limit to 2; its body keeps its permit.
    let res = assert_ready_ok!(first.poll());
    assert_eq!(handle.limit(D), Some(2));
    assert!(waiter.is_woken(), "the new room goes to the waiter at once");
    let _second = assert_ready_ok!(waiter.poll());
    assert_eq!((handle.in_flight(D), handle.queued(D)), (Some(2), Some(0)));
    drop(res);
    drop(bodies);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_says_to_come_back_after_the_smoothed_service_time() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(1, ms(60_000))
        .shed_on_deadline(true)
        .build()
        .unwrap();
    let mut svc = layer.layer(Backend::default());
    for (id, work) in [(1, 2_000), (2, 4_000)] {
        svc.ready()
            .await
            .unwrap()
            .call(Job::new(id, work))
            .await
            .unwrap();
    }
    // 2 s, then 4 s weighing a fifth: 2.4 s.
    let mut busy = task::spawn(svc.ready().await.unwrap().call(Job::new(3, 10_000)));
    assert_pending!(busy.poll());
    let mut queued = task::spawn(svc.ready().await.unwrap().call(Job::new(4, 10)));
    assert_pending!(queued.poll());
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Job::new(5, 10))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), Some(Reason::QueueFull));
    let rejection = tower_red::Rejection::find_in(&err).unwrap();
    assert_eq!(rejection.retry_after(), Some(ms(2_400)));
}

#[tokio::test(start_paused = true)]
async fn raising_the_limit_past_more_waiters_than_one_wake_batch_admits_them_all() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(32, ms(10_000))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.clone());
    let mut busy = task::spawn(svc.ready().await.unwrap().call(Job::new(0, 100)));
    assert_pending!(busy.poll());
    let mut waiters = Vec::new();
    for id in 1..=20 {
        let mut waiter = task::spawn(svc.ready().await.unwrap().call(Job::new(id, 100)));
        assert_pending!(waiter.poll());
        waiters.push(waiter);
    }
    handle.set_limit(D, 21).unwrap();
    assert_eq!((handle.in_flight(D), handle.queued(D)), (Some(21), Some(0)));
    for waiter in &mut waiters {
        assert!(waiter.is_woken(), "every granted waiter is woken");
        assert_pending!(waiter.poll());
    }
    assert_eq!(backend.started(), (0..=20).collect::<Vec<_>>());
}
