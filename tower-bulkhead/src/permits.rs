//! A fair, counting semaphore: the permits of one partition and the FIFO of calls waiting for
//! them. Plain synchronisation, no Tower, no clock.
//!
//! The number of calls in flight and the number of waiters live in **one** atomic word (low
//! 32 bits in flight, high 32 bits queued). A free permit is taken with one compare-and-swap on
//! that word when nobody waits: no lock, no allocation. The mutex-protected
//! [`WaitQueue`] is touched only when the partition is full and a caller waits, or when a
//! permit is released while someone waits.
//!
//! Waiters are served strictly in arrival order: while anyone waits, the fast path stands
//! aside, and a released permit goes to the front of the queue (one compare-and-swap takes a
//! permit and removes a waiter from the count at once).
//!
//! **No wakeup is lost**, on any architecture. An enqueuer and a releaser both read-modify-write
//! the same word, and read-modify-writes of one location are totally ordered: either the
//! releaser's decrement comes first (and the enqueuer, which retries the counter after its own
//! increment, sees the free permit), or the enqueuer's increment comes first (and the
//! releaser's `fetch_sub` returns a non-zero queue count, so it grants). The limit lives in its
//! own word; whoever raises it follows with a read-modify-write of the counter word
//! (`fetch_add(0)`, acquire-release), which either sees the waiter or synchronises with the
//! enqueuer's increment so the enqueuer reads the new limit. The same read-modify-write
//! starts [`Permits::wake_late`], so a grown service-time estimate is never lost either: it
//! either finds the waiter in the queue (whose timer it then checks under the lock) or the
//! waiter, enqueued after it, reads the grown estimate. The loom models at the bottom check
//! these races under `cfg(loom)`.

use std::sync::PoisonError;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::task::{Context, Poll};

use tokio::time::Instant;

use crate::queue::{WaitQueue, WakeList};
use crate::sync::{AtomicU64, AtomicUsize, Mutex};

/// The highest limit (and the most waiters) the counter word can hold.
pub(crate) const MAX_LIMIT: usize = u32::MAX as usize;

const ONE_QUEUED: u64 = 1 << 32;

#[inline]
fn in_flight_of(state: u64) -> usize {
    (state & u64::from(u32::MAX)) as usize
}

#[inline]
fn queued_of(state: u64) -> usize {
    (state >> 32) as usize
}

/// Told about every permit taken and given back, and the queue depth when it changes (the
/// partition's gauges); `()` ignores everything.
pub(crate) trait Observer {
    /// A permit was taken.
    fn acquired(&self) {}
    /// A permit was given back.
    fn released(&self) {}
    /// The queue now holds `depth` waiters.
    fn queue_depth(&self, depth: usize) {
        let _ = depth;
    }
}

impl Observer for () {}

/// A zero-sized field that starts a new cache line: it keeps the counter every call writes away
/// from the queue's lock, which only full partitions touch.
#[derive(Default)]
#[repr(align(64))]
struct CacheLine;

/// The permits and waiters of one partition.
#[repr(C)]
pub(crate) struct Permits {
    /// In flight (low 32 bits) and queued (high 32 bits). Queued changes only under `queue`'s
    /// lock and always equals the queue's length there.
    state: AtomicU64,
    limit: AtomicUsize,
    _queue: CacheLine,
    queue: Mutex<WaitQueue>,
}

/// What [`Permits::enqueue`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Enqueue {
    /// A permit was free after all: the caller holds it.
    Granted,
    /// The caller waits under this id.
    Waiting(u64),
    /// The queue is at its bound.
    QueueFull,
}

impl Permits {
    /// `limit` permits (at most [`MAX_LIMIT`]), room for `capacity` waiters before the queue
    /// allocates.
    pub(crate) fn new(limit: usize, capacity: usize) -> Self {
        Permits {
            state: AtomicU64::new(0),
            limit: AtomicUsize::new(limit.min(MAX_LIMIT)),
            _queue: CacheLine,
            queue: Mutex::new(WaitQueue::with_capacity(capacity)),
        }
    }

    /// Calls holding a permit.
    pub(crate) fn in_flight(&self) -> usize {
        in_flight_of(self.state.load(Acquire))
    }

    /// Calls waiting for a permit.
    pub(crate) fn queued(&self) -> usize {
        queued_of(self.state.load(Acquire))
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Acquire)
    }

    fn lock(&self) -> crate::sync::MutexGuard<'_, WaitQueue> {
        // No code panics while holding the lock, and the queue stays consistent between
        // statements, so a poisoned lock is still a valid queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a permit if one is free and nobody waits: the lock-free fast path.
    #[inline]
    pub(crate) fn try_acquire(&self, obs: &impl Observer) -> bool {
        let limit = self.limit.load(Acquire);
        let mut state = self.state.load(Acquire);
        loop {
            if queued_of(state) != 0 || in_flight_of(state) >= limit {
                return false;
            }
            match self
                .state
                .compare_exchange_weak(state, state + 1, AcqRel, Acquire)
            {
                Ok(_) => {
                    obs.acquired();
                    return true;
                }
                Err(actual) => state = actual,
            }
        }
    }

    /// Joins the back of the queue (bounded by `max_len` when given), watched by
    /// [`Permits::wake_late`] when it has a `deadline`.
    pub(crate) fn enqueue(
        &self,
        max_len: Option<usize>,
        deadline: Option<Instant>,
        obs: &impl Observer,
    ) -> Enqueue {
        let mut wake = WakeList::new();
        let mut queue = self.lock();
        let max_len = max_len.unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
        if queue.len() >= max_len {
            return Enqueue::QueueFull;
        }
        let id = queue.push(deadline);
        self.state.fetch_add(ONE_QUEUED, AcqRel);
        // A permit may have been freed since the fast path looked.
        self.grant_locked(&mut queue, &mut wake, obs);
        let granted = !queue.contains(id);
        obs.queue_depth(queue.len());
        drop(queue);
        wake.wake_all();
        if granted {
            Enqueue::Granted
        } else {
            Enqueue::Waiting(id)
        }
    }

    /// Grants free permits to the front of the queue, collecting wakers up to the list's size.
    fn grant_locked(&self, queue: &mut WaitQueue, wake: &mut WakeList, obs: &impl Observer) {
        while !wake.is_full() && !queue.is_empty() {
            let limit = self.limit.load(Acquire);
            let mut state = self.state.load(Acquire);
            loop {
                if in_flight_of(state) >= limit {
                    return;
                }
                // One permit taken, one waiter fewer, in one step.
                match self.state.compare_exchange_weak(
                    state,
                    state + 1 - ONE_QUEUED,
                    AcqRel,
                    Acquire,
                ) {
                    Ok(_) => break,
                    Err(actual) => state = actual,
                }
            }
            obs.acquired();
            if let Some(waker) = queue.pop_front() {
                wake.push(waker);
            }
        }
    }

    /// Grants what can be granted, waking waiters outside the lock.
    #[cold]
    fn grant(&self, obs: &impl Observer) {
        let mut wake = WakeList::new();
        loop {
            let mut queue = self.lock();
            self.grant_locked(&mut queue, &mut wake, obs);
            obs.queue_depth(queue.len());
            drop(queue);
            let more = wake.is_full();
            wake.wake_all();
            if !more {
                return;
            }
        }
    }

    /// Gives a permit back, handing it to the front waiter if any.
    #[inline]
    pub(crate) fn release(&self, obs: &impl Observer) {
        let before = self.state.fetch_sub(1, AcqRel);
        obs.released();
        if queued_of(before) != 0 {
            self.grant(obs);
        }
    }

    /// Ready once waiter `id` was granted its permit; registers the waker otherwise, and for
    /// a watched waiter the instant its `timer` is set for.
    pub(crate) fn poll_granted(
        &self,
        id: u64,
        timer: Option<Instant>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if self.lock().register(id, cx.waker(), timer) {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Wakes, outside the lock, the watched waiters whose deadline and timer `late` says are
    /// late; called after the caller changed what `late` reads (a grown service-time estimate).
    /// Without waiters, one read-modify-write of the counter word and no lock.
    #[inline]
    pub(crate) fn wake_late(&self, late: impl Fn(Instant, Instant) -> bool) {
        // A read-modify-write, not a load: it either sees a waiter, or is ordered before that
        // waiter's enqueue, which then synchronises with it and reads what the caller wrote
        // before this call. A plain load could miss both ways (store buffering).
        if queued_of(self.state.fetch_add(0, AcqRel)) != 0 {
            self.wake_late_locked(late);
        }
    }

    #[cold]
    fn wake_late_locked(&self, late: impl Fn(Instant, Instant) -> bool) {
        let mut wake = WakeList::new();
        let mut after = None;
        loop {
            let mut queue = self.lock();
            after = queue.take_late(after, &mut wake, &late);
            drop(queue);
            wake.wake_all();
            if after.is_none() {
                return;
            }
        }
    }

    /// Waiter `id` gives up: leaves the queue. `true` when it had been granted before it could
    /// leave: the caller then holds a permit, which it must give back.
    pub(crate) fn cancel(&self, id: u64, obs: &impl Observer) -> bool {
        let mut queue = self.lock();
        if queue.remove(id) {
            self.state.fetch_sub(ONE_QUEUED, AcqRel);
            obs.queue_depth(queue.len());
            false
        } else {
            true
        }
    }

    /// Sets the limit (at most [`MAX_LIMIT`]); returns the old one. Calls in flight keep their
    /// permits; waiters get any new room at once.
    pub(crate) fn set_limit(&self, limit: usize, obs: &impl Observer) -> usize {
        let limit = limit.min(MAX_LIMIT);
        let old = self.limit.swap(limit, AcqRel);
        if limit > old {
            self.grant_after_raise(obs);
        }
        old
    }

    /// Moves the limit from `current` to `next` unless someone changed it meanwhile; `true` if
    /// it did.
    pub(crate) fn update_limit(&self, current: usize, next: usize, obs: &impl Observer) -> bool {
        let next = next.min(MAX_LIMIT);
        let moved = self
            .limit
            .compare_exchange(current, next, AcqRel, Acquire)
            .is_ok();
        if moved && next > current {
            self.grant_after_raise(obs);
        }
        moved
    }

    /// After a raise: a read-modify-write of the counter word either sees a waiter (and grants)
    /// or is ordered before the next enqueuer's increment, which then reads the new limit.
    fn grant_after_raise(&self, obs: &impl Observer) {
        if queued_of(self.state.fetch_add(0, AcqRel)) != 0 {
            self.grant(obs);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::task::Waker;

    fn waiting(e: Enqueue) -> u64 {
        match e {
            Enqueue::Waiting(id) => id,
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn permits_are_counted_and_returned() {
        let p = Permits::new(2, 0);
        assert!(p.try_acquire(&()));
        assert!(p.try_acquire(&()));
        assert!(!p.try_acquire(&()));
        assert_eq!(p.in_flight(), 2);
        p.release(&());
        assert_eq!(p.in_flight(), 1);
        p.release(&());
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn released_permits_go_to_waiters_in_order() {
        let p = Permits::new(1, 8);
        assert!(p.try_acquire(&()));
        let first = waiting(p.enqueue(Some(8), None, &()));
        let second = waiting(p.enqueue(Some(8), None, &()));
        assert!(p.poll_granted(first, None, &mut cx()).is_pending());
        assert!(!p.try_acquire(&()), "the fast path does not jump the queue");
        p.release(&());
        assert!(p.poll_granted(second, None, &mut cx()).is_pending());
        assert!(p.poll_granted(first, None, &mut cx()).is_ready());
        assert_eq!((p.in_flight(), p.queued()), (1, 1));
        p.release(&());
        assert!(p.poll_granted(second, None, &mut cx()).is_ready());
        assert_eq!((p.in_flight(), p.queued()), (1, 0));
    }

    #[test]
    fn a_waiter_granted_before_it_gave_up_holds_a_permit() {
        let p = Permits::new(1, 8);
        assert!(p.try_acquire(&()));
        let first = waiting(p.enqueue(None, None, &()));
        p.release(&());
        assert!(
            p.cancel(first, &()),
            "granted: the caller now holds the permit"
        );
        assert_eq!(p.in_flight(), 1);
        let second = waiting(p.enqueue(None, None, &()));
        assert!(!p.cancel(second, &()));
        assert_eq!((p.in_flight(), p.queued()), (1, 0));
    }

    #[test]
    fn the_queue_bound_is_enforced() {
        let p = Permits::new(1, 1);
        assert!(p.try_acquire(&()));
        let _w = waiting(p.enqueue(Some(1), None, &()));
        assert_eq!(p.enqueue(Some(1), None, &()), Enqueue::QueueFull);
    }

    #[test]
    fn raising_the_limit_grants_waiters_and_lowering_it_keeps_calls() {
        let p = Permits::new(2, 1);
        assert!(p.try_acquire(&()));
        assert!(p.try_acquire(&()));
        assert_eq!(p.set_limit(1, &()), 2);
        assert_eq!(p.in_flight(), 2, "calls in flight keep their permits");
        p.release(&());
        let w = waiting(p.enqueue(None, None, &()));
        assert!(p.update_limit(1, 2, &()));
        assert!(!p.update_limit(1, 3, &()), "someone else moved it");
        assert!(p.poll_granted(w, None, &mut cx()).is_ready());
        assert_eq!(p.in_flight(), 2);
    }

    #[test]
    fn many_waiters_are_all_granted_past_one_wake_list() {
        let p = Permits::new(1, 0);
        assert!(p.try_acquire(&()));
        let ids: Vec<_> = (0..20)
            .map(|_| waiting(p.enqueue(None, None, &())))
            .collect();
        p.set_limit(21, &());
        for id in ids {
            assert!(p.poll_granted(id, None, &mut cx()).is_ready());
        }
        assert_eq!((p.in_flight(), p.queued()), (21, 0));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Any interleaving of acquires, enqueues, releases, cancellations and limit changes
        /// keeps the in-flight count within the limit, serves waiters in order, and leaks
        /// nothing.
        #[test]
        fn never_over_the_limit_never_leaks(
            limit in 1usize..4,
            ops in proptest::collection::vec(0u8..5, 1..200),
        ) {
            let p = Permits::new(limit, 0);
            let mut held = 0usize;
            let mut waiters: VecDeque<u64> = VecDeque::new();
            let mut max_limit = limit;
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    0 => if p.try_acquire(&()) { held += 1 },
                    1 => match p.enqueue(None, None, &()) {
                        Enqueue::Granted => held += 1,
                        Enqueue::Waiting(id) => waiters.push_back(id),
                        Enqueue::QueueFull => unreachable!(),
                    },
                    2 => if held > 0 { held -= 1; p.release(&()) },
                    3 => if let Some(id) = waiters.pop_back() && p.cancel(id, &()) {
                        p.release(&());
                    },
                    _ => {
                        let l = 1 + i % 4;
                        max_limit = max_limit.max(l);
                        p.set_limit(l, &());
                    }
                }
                // Only the oldest waiters can have been granted.
                let mut pending_seen = false;
                let mut still = VecDeque::new();
                while let Some(id) = waiters.pop_front() {
                    if p.poll_granted(id, None, &mut cx()).is_ready() {
                        proptest::prop_assert!(!pending_seen, "granted out of order");
                        held += 1;
                    } else {
                        pending_seen = true;
                        still.push_back(id);
                    }
                }
                waiters = still;
                proptest::prop_assert!(p.in_flight() <= max_limit);
                proptest::prop_assert_eq!(p.in_flight(), held);
                proptest::prop_assert_eq!(p.queued(), waiters.len());
                if !waiters.is_empty() {
                    proptest::prop_assert!(p.in_flight() >= p.limit(), "a waiter parked beside a free permit");
                }
            }
            for id in waiters {
                if p.cancel(id, &()) { p.release(&()) }
            }
            for _ in 0..held { p.release(&()) }
            proptest::prop_assert_eq!(p.in_flight(), 0);
            proptest::prop_assert_eq!(p.queued(), 0);
        }
    }
}

/// Models of the permit protocol for loom: every interleaving (up to `LOOM_MAX_PREEMPTIONS`)
/// of a release, an enqueue, a cancellation, a limit change and a grown service-time estimate.
/// A lost wakeup shows as a deadlock (a waiter blocked forever beside a free permit, or behind
/// a timer the estimate made late), a leak as a wrong final count.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;
    use std::future::poll_fn;

    /// Waits until waiter `id` is granted: loom reports a deadlock if nothing ever wakes it.
    fn wait(p: &Permits, id: u64) {
        loom::future::block_on(poll_fn(|cx| p.poll_granted(id, None, cx)));
    }

    fn acquire_or_wait(p: &Permits) {
        if !p.try_acquire(&()) {
            match p.enqueue(None, None, &()) {
                Enqueue::Granted => {}
                Enqueue::Waiting(id) => wait(p, id),
                Enqueue::QueueFull => unreachable!("unbounded"),
            }
        }
    }

    #[test]
    fn loom_a_release_racing_an_enqueue_wakes_the_waiter() {
        loom::model(|| {
            let p = Arc::new(Permits::new(1, 1));
            assert!(p.try_acquire(&()));
            let releaser = {
                let p = p.clone();
                thread::spawn(move || p.release(&()))
            };
            acquire_or_wait(&p);
            releaser.join().unwrap();
            assert_eq!((p.in_flight(), p.queued()), (1, 0));
            p.release(&());
            assert_eq!(p.in_flight(), 0);
        });
    }

    #[test]
    fn loom_two_callers_share_one_permit_without_loss() {
        loom::model(|| {
            let p = Arc::new(Permits::new(1, 2));
            let other = {
                let p = p.clone();
                thread::spawn(move || {
                    acquire_or_wait(&p);
                    p.release(&());
                })
            };
            acquire_or_wait(&p);
            p.release(&());
            other.join().unwrap();
            assert_eq!((p.in_flight(), p.queued()), (0, 0));
        });
    }

    #[test]
    fn loom_a_cancel_racing_a_grant_leaks_nothing() {
        loom::model(|| {
            let p = Arc::new(Permits::new(1, 1));
            assert!(p.try_acquire(&()));
            let id = match p.enqueue(None, None, &()) {
                Enqueue::Waiting(id) => id,
                other => panic!("expected to wait, got {other:?}"),
            };
            let releaser = {
                let p = p.clone();
                thread::spawn(move || p.release(&()))
            };
            if p.cancel(id, &()) {
                // Granted before it could leave: the permit is the waiter's to give back.
                p.release(&());
            }
            releaser.join().unwrap();
            assert_eq!((p.in_flight(), p.queued()), (0, 0));
        });
    }

    #[test]
    fn loom_raising_the_limit_racing_an_enqueue_wakes_the_waiter() {
        loom::model(|| {
            let p = Arc::new(Permits::new(1, 1));
            assert!(p.try_acquire(&()));
            let raiser = {
                let p = p.clone();
                thread::spawn(move || assert!(p.update_limit(1, 2, &())))
            };
            acquire_or_wait(&p);
            raiser.join().unwrap();
            assert_eq!((p.in_flight(), p.queued()), (2, 0));
        });
    }

    #[test]
    fn loom_a_grown_estimate_racing_a_waiter_wakes_it_or_is_read_by_it() {
        use crate::sync::AtomicU64;
        use std::sync::atomic::Ordering::Relaxed;
        use std::task::Poll;
        use std::time::Duration;

        loom::model(|| {
            let p = Arc::new(Permits::new(1, 1));
            assert!(p.try_acquire(&()));
            let deadline = Instant::now() + Duration::from_secs(1);
            let shed_at = move |ms: u64| deadline - Duration::from_millis(ms);
            // The service-time estimate in ms, relaxed as `ServiceTime` keeps it.
            let estimate = Arc::new(AtomicU64::new(100));
            let completer = {
                let (p, estimate) = (p.clone(), estimate.clone());
                thread::spawn(move || {
                    estimate.store(300, Relaxed);
                    p.wake_late(|deadline, timer| deadline - Duration::from_millis(300) < timer);
                })
            };
            // The waiter, as `Queued::poll_permit`: enqueued while the estimate grows, it
            // registers its timer, then reads the estimate and sets its timer earlier if the
            // shed point moved; it stays pending until its timer is the grown shed point.
            let id = match p.enqueue(None, Some(deadline), &()) {
                Enqueue::Waiting(id) => id,
                other => panic!("expected to wait, got {other:?}"),
            };
            let mut timer = shed_at(estimate.load(Relaxed));
            loom::future::block_on(poll_fn(|cx| {
                loop {
                    assert!(p.poll_granted(id, Some(timer), cx).is_pending());
                    let at = shed_at(estimate.load(Relaxed));
                    if at >= timer {
                        break;
                    }
                    timer = at;
                }
                if timer == shed_at(300) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }));
            completer.join().unwrap();
            assert!(!p.cancel(id, &()));
            assert_eq!((p.in_flight(), p.queued()), (1, 0));
        });
    }

    #[test]
    fn loom_two_waiters_and_a_release_leave_nobody_parked() {
        loom::model(|| {
            let p = Arc::new(Permits::new(1, 2));
            assert!(p.try_acquire(&()));
            let callers: Vec<_> = (0..2)
                .map(|_| {
                    let p = p.clone();
                    thread::spawn(move || {
                        acquire_or_wait(&p);
                        p.release(&());
                    })
                })
                .collect();
            p.release(&());
            for caller in callers {
                caller.join().unwrap();
            }
            assert_eq!((p.in_flight(), p.queued()), (0, 0));
        });
    }
}
