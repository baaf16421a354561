//! Each mode on a paused clock: reject, queue (bounded by `max_wait`, the deadline and the
//! observed service time), backpressure; FIFO order; cancellation; limits changed at run time.

mod support;

use std::fmt::Debug;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::time::Duration;

use support::{Backend, Job, reason};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt};
use tower_bulkhead::{
    Bulkhead, BulkheadLayer, DEFAULT_PARTITION, FromRequest, OnResponse, Reason, Unpartitioned,
};
use tower_red::classify::AnyError;
use tower_red::clock::{self, Scope};

const D: &str = DEFAULT_PARTITION;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn advance(n: u64) {
    tokio::time::advance(ms(n)).await;
}

/// One permit, a queue of `queue` waiting at most `max_wait_ms`, deadlines read from the `Job`.
fn one_permit_with_request_deadlines(
    queue: usize,
    max_wait_ms: u64,
) -> BulkheadLayer<Unpartitioned, OnResponse, AnyError, FromRequest> {
    BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(queue, ms(max_wait_ms))
        .deadline_from_request()
        .build()
        .unwrap()
}

/// Runs the jobs `ids`, each `work_ms` long, one after another to completion.
async fn run_in_turn<S>(svc: &mut S, ids: Range<u64>, work_ms: u64)
where
    S: Service<Job>,
    S::Error: Debug,
{
    for id in ids {
        svc.ready()
            .await
            .unwrap()
            .call(Job::new(id, work_ms))
            .await
            .unwrap();
    }
}

/// Calls `svc` with `job` once it is ready, spawned, and checks the first poll is pending.
async fn spawn_pending<S>(svc: &mut S, job: Job) -> task::Spawn<S::Future>
where
    S: Service<Job>,
    S::Response: Debug,
    S::Error: Debug,
{
    let mut call = task::spawn(svc.ready().await.unwrap().call(job));
    assert_pending!(call.poll());
    call
}

/// The error of calling `svc` with `job` once it is ready.
async fn call_err<S>(svc: &mut S, job: Job) -> S::Error
where
    S: Service<Job>,
    S::Response: Debug,
    S::Error: Debug,
{
    svc.ready().await.unwrap().call(job).await.unwrap_err()
}

#[tokio::test(start_paused = true)]
async fn rejects_at_once_when_full_by_default() {
    let backend = Backend::default();
    let mut svc = Bulkhead::new(backend.clone(), NonZeroUsize::new(2).unwrap());
    let handle = svc.handle();
    let mut a = task::spawn(svc.ready().await.unwrap().call(Job::new(1, 100)));
    let mut b = task::spawn(svc.ready().await.unwrap().call(Job::new(2, 100)));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    assert_eq!(handle.in_flight(D), Some(2));

    let err = call_err(&mut svc, Job::new(3, 100)).await;
    assert_eq!(reason(&err), Some(Reason::Full));
    let rejection = tower_red::Rejection::find_in(&err).unwrap();
    assert_eq!(rejection.reason(), Some("full"));
    // No call has finished yet, so no service time is known: the floor of one second.
    assert_eq!(rejection.retry_after_secs(), Some(1));
    assert_eq!(
        backend.started(),
        vec![1, 2],
        "a rejected call never reaches the backend"
    );

    advance(100).await;
    assert_eq!(assert_ready_ok!(a.poll()), 1);
    assert_eq!(handle.in_flight(D), Some(1));
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(Job::new(4, 0))
            .await
            .unwrap(),
        4
    );
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_runs_as_soon_as_a_permit_frees() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(4, ms(500))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.clone());
    let mut a = task::spawn(svc.ready().await.unwrap().call(Job::new(1, 100)));
    let mut b = task::spawn(svc.ready().await.unwrap().call(Job::new(2, 100)));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    assert_eq!(handle.queued(D), Some(1));

    advance(100).await;
    assert_ready_ok!(a.poll());
    assert!(b.is_woken(), "the release wakes the waiter");
    assert_pending!(b.poll());
    assert_eq!(handle.queued(D), Some(0));
    assert_eq!(backend.started(), vec![1, 2]);
    advance(100).await;
    assert_eq!(assert_ready_ok!(b.poll()), 2);
    assert_eq!(handle.in_flight(D), Some(0));
}

#[tokio::test(start_paused = true)]
async fn the_queue_wait_ends_at_max_wait() {
    let backend = Backend::default();
    let mut svc = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(4, ms(100))
        .build()
        .unwrap()
        .layer(backend.clone());
    let mut a = task::spawn(svc.ready().await.unwrap().call(Job::new(1, 1_000)));
    let mut b = task::spawn(svc.ready().await.unwrap().call(Job::new(2, 10)));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    advance(99).await;
    assert_pending!(b.poll());
    advance(1).await;
    let err = assert_ready!(b.poll()).unwrap_err();
    assert_eq!(reason(&err), Some(Reason::QueueTimeout));
    let rejection = tower_red::Rejection::find_in(&err).unwrap();
    assert_eq!(rejection.http_status(), 503);
    assert_eq!(
        rejection.grpc_code(),
        tower_red::GrpcCode::ResourceExhausted
    );
    assert_eq!(backend.started(), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn a_fired_queue_timer_refuses_the_call_under_an_older_shared_clock_reading() {
    let mut svc = one_permit_with_request_deadlines(4, 100).layer(Backend::default());
    // Teach the bulkhead that a call takes about 100 ms.
    run_in_turn(&mut svc, 0..1, 100).await;
    let _a = spawn_pending(&mut svc, Job::new(1, 1_000)).await;
    // One waiter whose timer is its queue wait, one whose timer is its shed point (150 ms
    // left, 100 ms of service: 50 ms from now).
    let mut b = task::spawn(svc.ready().await.unwrap().call(Job::new(2, 10)));
    let mut c = task::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(Job::new(3, 10).deadline_in(150)),
    );
    assert_pending!(b.poll());
    assert_pending!(c.poll());

    // An outer layer read the clock before the timers fired, and its scope is still open: the
    // bulkhead reads that older instant. A fired timer must still end the wait (it spun,
    // re-arming a timer already due, until tokio's budget forced it to yield).
    let _outer = Scope::enter();
    let _ = clock::now();
    advance(50).await;
    let err = assert_ready!(c.poll()).unwrap_err();
    assert_eq!(reason(&err), Some(Reason::Deadline));
    advance(50).await;
    let err = assert_ready!(b.poll()).unwrap_err();
    assert_eq!(reason(&err), Some(Reason::QueueTimeout));
}

#[tokio::test(start_paused = true)]
async fn the_queue_wait_never_outlives_the_deadline() {
    // `Job` carries its deadline itself, not in the task-local scope.
    let mut svc = one_permit_with_request_deadlines(4, 1_000).layer(Backend::default());
    let _a = spawn_pending(&mut svc, Job::new(1, 5_000)).await;
    let mut b = spawn_pending(&mut svc, Job::new(2, 10).deadline_in(40)).await;
    advance(39).await;
    assert_pending!(b.poll());
    advance(1).await;
    let err = assert_ready!(b.poll()).unwrap_err();
    assert_eq!(reason(&err), Some(Reason::Deadline));

    // A deadline already spent is refused without queueing.
    let mut expired = Job::new(3, 10).deadline_in(5);
    advance(5).await;
    expired.id = 3;
    let err = call_err(&mut svc, expired).await;
    assert_eq!(reason(&err), Some(Reason::Deadline));
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_rejects() {
    let mut svc = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(1, ms(1_000))
        .build()
        .unwrap()
        .layer(Backend::default());
    let mut a = task::spawn(svc.ready().await.unwrap().call(Job::new(1, 100)));
    let mut b = task::spawn(svc.ready().await.unwrap().call(Job::new(2, 100)));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    let err = call_err(&mut svc, Job::new(3, 100)).await;
    assert_eq!(reason(&err), Some(Reason::QueueFull));
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let backend = Backend::default();
    let mut svc = BulkheadLayer::builder()
        .max_concurrent(2)
        .queue(16, ms(10_000))
        .build()
        .unwrap()
        .layer(backend.clone());
    let mut calls = Vec::new();
    for id in 0..10 {
        calls.push(spawn_pending(&mut svc, Job::new(id, 10 + id)).await);
    }
    // Poll the waiters in reverse so that polling order cannot explain the result.
    let mut done = [false; 10];
    for _ in 0..200 {
        advance(1).await;
        for (i, call) in calls.iter_mut().enumerate().rev() {
            if !done[i] {
                done[i] = call.poll().is_ready();
            }
        }
    }
    assert!(done.iter().all(|d| *d));
    assert_eq!(backend.started(), (0..10).collect::<Vec<_>>());
    assert_eq!(backend.max_in_flight(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_queued_call_gives_its_place_back_at_once() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(2, ms(1_000))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.clone());
    let mut a = task::spawn(svc.ready().await.unwrap().call(Job::new(1, 100)));
    let mut b = task::spawn(svc.ready().await.unwrap().call(Job::new(2, 100)));
    let mut c = task::spawn(svc.ready().await.unwrap().call(Job::new(3, 100)));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    assert_pending!(c.poll());
    assert_eq!(handle.queued(D), Some(2));
    drop(b);
    assert_eq!(handle.queued(D), Some(1));
    // The freed place takes a new waiter, behind c.
    let mut d = spawn_pending(&mut svc, Job::new(4, 100)).await;
    advance(100).await;
    assert_ready_ok!(a.poll());
    assert_pending!(c.poll());
    assert_pending!(d.poll());
    assert_eq!(backend.started(), vec![1, 3]);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_running_call_gives_its_permit_to_the_next_waiter() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(2, ms(1_000))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.clone());
    let mut a = task::spawn(svc.ready().await.unwrap().call(Job::new(1, 10_000)));
    let mut b = task::spawn(svc.ready().await.unwrap().call(Job::new(2, 10)));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    drop(a);
    assert!(b.is_woken());
    assert_eq!(
        handle.in_flight(D),
        Some(1),
        "the permit went straight to the waiter"
    );
    assert_eq!(handle.queued(D), Some(0));
    assert_pending!(b.poll());
    advance(10).await;
    assert_eq!(assert_ready_ok!(b.poll()), 2);
    assert_eq!(handle.in_flight(D), Some(0));
    assert_eq!(
        backend.in_flight.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_rejected_call_holds_nothing() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Backend::default());
    let a = spawn_pending(&mut svc, Job::new(1, 10)).await;
    let rejected = svc.ready().await.unwrap().call(Job::new(2, 10));
    drop(rejected);
    drop(a);
    assert_eq!(handle.in_flight(D), Some(0));
    assert_eq!(handle.queued(D), Some(0));
}

#[tokio::test(start_paused = true)]
async fn deadline_aware_admission_sheds_calls_that_cannot_finish_in_time() {
    let mut svc = one_permit_with_request_deadlines(8, 10_000).layer(Backend::default());
    // Teach the bulkhead that a call takes about 100 ms.
    run_in_turn(&mut svc, 0..3, 100).await;
    let _busy = spawn_pending(&mut svc, Job::new(10, 1_000)).await;

    // 50 ms left cannot fit a 100 ms call: shed without queueing.
    let err = call_err(&mut svc, Job::new(11, 100).deadline_in(50)).await;
    assert_eq!(reason(&err), Some(Reason::Deadline));

    // 150 ms left: it may wait, but only until 100 ms remain, not until the deadline.
    let mut waiting = spawn_pending(&mut svc, Job::new(12, 100).deadline_in(150)).await;
    advance(49).await;
    assert_pending!(waiting.poll());
    advance(1).await;
    let err = assert_ready!(waiting.poll()).unwrap_err();
    assert_eq!(reason(&err), Some(Reason::Deadline));

    // Shedding off: the same call waits until its deadline.
    let mut plain = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(8, ms(10_000))
        .shed_on_deadline(false)
        .deadline_from_request()
        .build()
        .unwrap()
        .layer(Backend::default());
    run_in_turn(&mut plain, 0..1, 100).await;
    let _busy = spawn_pending(&mut plain, Job::new(1, 1_000)).await;
    let mut waiting = spawn_pending(&mut plain, Job::new(2, 100).deadline_in(50)).await;
    advance(50).await;
    let err = assert_ready!(waiting.poll()).unwrap_err();
    assert_eq!(reason(&err), Some(Reason::Deadline));
}

#[tokio::test(start_paused = true)]
async fn a_grown_service_time_estimate_sheds_queued_calls_as_soon_as_it_dooms_them() {
    let layer = one_permit_with_request_deadlines(8, 10_000);
    let handle = layer.handle();
    let mut svc = layer.layer(Backend::default());
    // Teach the bulkhead that a call takes about 100 ms.
    run_in_turn(&mut svc, 0..3, 100).await;
    let mut busy = spawn_pending(&mut svc, Job::new(10, 1_000)).await;
    let _first = spawn_pending(&mut svc, Job::new(11, 1_000)).await;
    advance(800).await;
    // 400 ms left: shed 100 ms before the deadline, at +1,100 ms.
    let mut doomed = spawn_pending(&mut svc, Job::new(12, 100).deadline_in(400)).await;
    // 700 ms left: shed at +1,400 ms.
    let mut later = spawn_pending(&mut svc, Job::new(13, 100).deadline_in(700)).await;
    let patient = spawn_pending(&mut svc, Job::new(14, 100)).await;
    assert_eq!(handle.queued(D), Some(4));

    // The busy call took 1,000 ms: the estimate grows to 100 + 900 / 5 = 280 ms, and its
    // permit goes to the first waiter.
    advance(200).await;
    assert_ready_ok!(busy.poll());
    // 200 ms left is no longer enough: shed now, not at the old shed point 100 ms later.
    assert!(
        doomed.is_woken(),
        "the grown estimate wakes the doomed waiter"
    );
    let err = assert_ready!(doomed.poll()).unwrap_err();
    assert_eq!(reason(&err), Some(Reason::Deadline));
    // 500 ms left is enough for now, but the shed point moved to 280 ms before the deadline.
    assert!(later.is_woken());
    assert_pending!(later.poll());
    assert!(!patient.is_woken(), "a waiter without a deadline sleeps on");
    assert_eq!(handle.queued(D), Some(2));
    advance(219).await;
    assert_pending!(later.poll());
    advance(1).await;
    let err = assert_ready!(later.poll()).unwrap_err();
    assert_eq!(reason(&err), Some(Reason::Deadline));
    assert_eq!(handle.queued(D), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_grown_service_time_estimate_wakes_only_the_waiters_whose_timers_it_made_late() {
    let mut svc = one_permit_with_request_deadlines(8, 420).layer(Backend::default());
    run_in_turn(&mut svc, 0..3, 100).await;
    let mut busy = spawn_pending(&mut svc, Job::new(10, 1_000)).await;
    advance(800).await;
    // Every wait ends at +1,220 ms. The first waiter has no deadline and gets the next permit.
    let mut first = task::spawn(svc.call(Job::new(11, 1_000)));
    assert_pending!(first.poll());
    // With 100 ms of service, shed points at +1,300, +1,400 and +1,600 ms: each timer is set
    // for the end of the wait.
    let mut calls: Vec<_> = [600, 700, 900]
        .into_iter()
        .map(|left| {
            let mut call = task::spawn(svc.call(Job::new(left, 100).deadline_in(left)));
            assert_pending!(call.poll());
            call
        })
        .collect();

    // With 280 ms the shed points move to +1,120, +1,220 and +1,420 ms.
    advance(200).await;
    assert_ready_ok!(busy.poll());
    assert!(first.is_woken(), "granted");
    let woken: Vec<bool> = calls.iter().map(|c| c.is_woken()).collect();
    assert_eq!(
        woken,
        [true, false, false],
        "only a timer later than the new shed point is late"
    );
    for call in &mut calls {
        assert_pending!(call.poll());
    }
    advance(120).await;
    let err = assert_ready!(calls[0].poll()).unwrap_err();
    assert_eq!(reason(&err), Some(Reason::Deadline));
    assert_pending!(calls[1].poll());
    advance(100).await;
    for call in &mut calls[1..] {
        let err = assert_ready!(call.poll()).unwrap_err();
        assert_eq!(reason(&err), Some(Reason::QueueTimeout));
    }
}

#[tokio::test(start_paused = true)]
async fn backpressure_waits_in_poll_ready_and_reserves() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .backpressure(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut first = layer.layer(backend.clone());
    let mut second = first.clone();

    assert_ready_ok!(task::spawn(()).enter(|cx, _| first.poll_ready(cx)));
    assert_eq!(
        handle.in_flight(D),
        Some(1),
        "poll_ready reserved the permit"
    );

    // A clone does not inherit the reservation: it waits.
    let mut ready2 = task::spawn(second.ready());
    assert_pending!(ready2.poll());
    assert_eq!(handle.queued(D), Some(1));

    let mut a = task::spawn(first.call(Job::new(1, 100)));
    assert_pending!(a.poll());
    assert_eq!(
        handle.in_flight(D),
        Some(1),
        "the call used the reservation"
    );
    advance(100).await;
    assert_ready_ok!(a.poll());
    assert!(ready2.is_woken());
    assert_ready_ok!(ready2.poll());
    drop(ready2);
    assert_eq!(handle.in_flight(D), Some(1), "now the clone holds it");

    // Dropping a service gives its unused reservation back.
    drop(second);
    assert_eq!(handle.in_flight(D), Some(0));
    assert_eq!(handle.queued(D), Some(0));
    assert_eq!(backend.started(), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn a_service_dropped_while_waiting_in_poll_ready_leaves_the_queue() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .backpressure(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut first = layer.layer(Backend::default());
    let mut second = first.clone();
    assert_ready_ok!(task::spawn(()).enter(|cx, _| first.poll_ready(cx)));
    assert_pending!(task::spawn(()).enter(|cx, _| second.poll_ready(cx)));
    assert_eq!(handle.queued(D), Some(1));
    drop(second);
    assert_eq!(handle.queued(D), Some(0));
    drop(first);
    assert_eq!(handle.in_flight(D), Some(0));
}

#[tokio::test(start_paused = true)]
async fn limits_change_at_run_time_without_touching_calls_in_flight() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(2)
        .queue(4, ms(10_000))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.clone());
    let mut a = task::spawn(svc.ready().await.unwrap().call(Job::new(1, 100)));
    let mut b = task::spawn(svc.ready().await.unwrap().call(Job::new(2, 200)));
    assert_pending!(a.poll());
    assert_pending!(b.poll());

    handle.set_limit(D, 1).unwrap();
    let mut c = spawn_pending(&mut svc, Job::new(3, 10)).await;
    advance(100).await;
    assert_ready_ok!(a.poll());
    assert_pending!(c.poll());
    assert_eq!(
        backend.started(),
        vec![1, 2],
        "one still in flight is the new limit"
    );

    handle.set_limit(D, 3).unwrap();
    assert!(c.is_woken(), "raising the limit admits the waiter at once");
    assert_pending!(c.poll());
    assert_eq!(backend.started(), vec![1, 2, 3]);
    advance(100).await;
    assert_ready_ok!(b.poll());
    assert_ready_ok!(c.poll());
    assert_eq!(handle.stats()[0].limit, 3);
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_limit_backs_off_on_failures_and_grows_when_busy() {
    use tower_bulkhead::Aimd;
    let layer = BulkheadLayer::builder()
        .max_concurrent(10)
        .adaptive(Aimd::new(2, 20).timeout(ms(50)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Backend::default());
    // Slow calls count as drops.
    run_in_turn(&mut svc, 0..3, 100).await;
    assert_eq!(handle.limit(D), Some(7)); // 10 → 9 → 8 → 7
    // Fast calls while at least half the limit is busy grow it by one each.
    let mut calls: Vec<_> = (0..4)
        .map(|id| task::spawn(svc.call(Job::new(10 + id, 10))))
        .collect();
    for c in &mut calls {
        assert_pending!(c.poll());
    }
    advance(10).await;
    for c in &mut calls {
        assert_ready_ok!(c.poll());
    }
    assert!(handle.limit(D).unwrap() > 7);
    assert!(
        handle.set_limit(D, 1).is_err(),
        "below the adaptive minimum"
    );
}
