//! One partition's permits and FIFO wait queue: plain synchronisation, no Tower.
//!
//! A free permit is taken with one compare-and-swap on the in-flight counter; no lock, no
//! allocation. The mutex-protected queue is touched only when the partition is full and the
//! caller waits, or when a permit is released while someone waits.
//!
//! Waiters are served strictly in arrival order: while anyone waits, the fast path stands
//! aside, and a released permit goes to the front of the queue. A waiter's entry is its id in
//! a `VecDeque` ordered by id; only the front is ever granted (and removed by the granter),
//! while a waiter that gives up removes its own entry, so "my id is gone" means "granted".
//!
//! No wakeup is lost: an enqueuer increments `queued` before it tries the counter, and a
//! releaser decrements the counter before it reads `queued`; with sequentially consistent
//! operations one of them sees the other.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use crate::adaptive::Aimd;
use crate::error::Reason;
use crate::metrics::PartitionMetrics;

/// How a partition behaves when every permit is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Refuse the call at once.
    Reject,
    /// Wait in a FIFO queue of at most `max_len`, for at most `max_wait`.
    Queue { max_len: usize, max_wait: Duration },
    /// Wait in `poll_ready` (no bound: a timeout layer above bounds it).
    Backpressure,
}

/// A zero-sized field that starts a new cache line: it keeps the counters every call writes
/// away from the settings every call reads, so reading a setting never waits for another
/// core's write.
#[derive(Default)]
#[repr(align(64))]
struct CacheLine;

/// The shared state of one partition.
#[repr(C)]
pub(crate) struct PartitionState {
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    limit: AtomicUsize,
    /// Exponentially weighted mean service time in nanoseconds; 0 until the first sample.
    service_time: AtomicU64,
    _settings: CacheLine,
    pub(crate) name: Arc<str>,
    pub(crate) layer_name: Arc<str>,
    pub(crate) mode: Mode,
    pub(crate) shed_on_deadline: bool,
    pub(crate) adaptive: Option<Aimd>,
    pub(crate) metrics: Option<PartitionMetrics>,
    /// Whether calls need a start time (metrics, deadline-aware shedding or adaptive limit).
    pub(crate) timed: bool,
    _queue: CacheLine,
    queue: Mutex<WaitQueue>,
}

struct WaitQueue {
    entries: VecDeque<Entry>,
    next_id: u64,
}

struct Entry {
    id: u64,
    waker: Option<Waker>,
}

impl WaitQueue {
    fn position(&self, id: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok()
    }
}

/// Wakers collected under the lock and woken after it is released.
struct WakeList {
    wakers: [Option<Waker>; 8],
    len: usize,
}

impl WakeList {
    fn new() -> Self {
        WakeList {
            wakers: Default::default(),
            len: 0,
        }
    }
    fn is_full(&self) -> bool {
        self.len == self.wakers.len()
    }
    fn push(&mut self, waker: Option<Waker>) {
        self.wakers[self.len] = waker;
        self.len += 1;
    }
    fn wake_all(&mut self) {
        for waker in self.wakers[..self.len].iter_mut() {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        self.len = 0;
    }
}

impl fmt::Debug for PartitionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

/// What [`PartitionState::enqueue`] did.
pub(crate) enum Enqueued {
    /// A permit was free after all.
    Granted(Permit),
    /// The caller waits.
    Waiting(Waiter),
    /// The queue is at its bound.
    QueueFull,
}

#[allow(clippy::too_many_arguments)]
impl PartitionState {
    pub(crate) fn new(
        name: Arc<str>,
        layer_name: Arc<str>,
        limit: usize,
        mode: Mode,
        shed_on_deadline: bool,
        adaptive: Option<Aimd>,
        metrics: Option<PartitionMetrics>,
    ) -> Self {
        let capacity = match mode {
            Mode::Queue { max_len, .. } => max_len.min(1024),
            _ => 0,
        };
        if let Some(m) = &metrics {
            m.limit(limit);
            m.queue_depth(0);
        }
        let shed_on_deadline = shed_on_deadline && matches!(mode, Mode::Queue { .. });
        PartitionState {
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            queue: Mutex::new(WaitQueue {
                entries: VecDeque::with_capacity(capacity),
                next_id: 0,
            }),
            service_time: AtomicU64::new(0),
            _settings: CacheLine,
            _queue: CacheLine,
            // Durations cost two clock reads: only when a recorder keeps them, or a policy
            // needs service times.
            timed: (metrics.is_some() && tower_red::red::recorder_installed())
                || shed_on_deadline
                || adaptive.is_some(),
            name,
            layer_name,
            mode,
            shed_on_deadline,
            adaptive,
            metrics,
        }
    }

    /// Calls holding a permit.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    /// Calls waiting for a permit.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(SeqCst)
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, WaitQueue> {
        // No code panics while holding the lock, and the queue stays consistent between
        // statements, so a poisoned lock is still a valid queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a permit if one is free and nobody waits: the lock-free fast path.
    #[inline]
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        if self.queued.load(SeqCst) != 0 {
            return None;
        }
        self.take_count().then(|| Permit {
            part: Arc::clone(self),
        })
    }

    /// Increments the in-flight counter if it is below the limit.
    #[inline]
    fn take_count(&self) -> bool {
        let limit = self.limit.load(Relaxed);
        let mut current = self.in_flight.load(Relaxed);
        loop {
            if current >= limit {
                return false;
            }
            match self
                .in_flight
                .compare_exchange_weak(current, current + 1, SeqCst, Relaxed)
            {
                Ok(_) => {
                    if let Some(m) = &self.metrics {
                        m.acquired();
                    }
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Joins the back of the queue (bounded by `max_len` when given).
    pub(crate) fn enqueue(self: &Arc<Self>, max_len: Option<usize>) -> Enqueued {
        let mut wake = WakeList::new();
        let mut queue = self.lock();
        if max_len.is_some_and(|max| queue.entries.len() >= max) {
            return Enqueued::QueueFull;
        }
        let id = queue.next_id;
        queue.next_id += 1;
        queue.entries.push_back(Entry { id, waker: None });
        self.queued.fetch_add(1, SeqCst);
        // A permit may have been freed since the fast path looked.
        self.grant_locked(&mut queue, &mut wake);
        let granted = queue.position(id).is_none();
        self.report_depth(&queue);
        drop(queue);
        wake.wake_all();
        if granted {
            Enqueued::Granted(Permit {
                part: Arc::clone(self),
            })
        } else {
            Enqueued::Waiting(Waiter {
                part: Arc::clone(self),
                id,
                done: false,
            })
        }
    }

    /// Grants free permits to the front of the queue, collecting wakers up to the list's size.
    fn grant_locked(&self, queue: &mut WaitQueue, wake: &mut WakeList) {
        while !wake.is_full() && !queue.entries.is_empty() {
            if !self.take_count() {
                break;
            }
            if let Some(entry) = queue.entries.pop_front() {
                self.queued.fetch_sub(1, SeqCst);
                wake.push(entry.waker);
            }
        }
    }

    /// Grants what can be granted, waking waiters outside the lock.
    fn grant(&self) {
        let mut wake = WakeList::new();
        loop {
            let mut queue = self.lock();
            self.grant_locked(&mut queue, &mut wake);
            self.report_depth(&queue);
            drop(queue);
            let more = wake.is_full();
            wake.wake_all();
            if !more {
                return;
            }
        }
    }

    fn report_depth(&self, queue: &WaitQueue) {
        if let Some(m) = &self.metrics {
            m.queue_depth(queue.entries.len());
        }
    }

    #[inline]
    fn release(&self) {
        self.in_flight.fetch_sub(1, SeqCst);
        if let Some(m) = &self.metrics {
            m.released();
        }
        if self.queued.load(SeqCst) != 0 {
            self.grant();
        }
    }

    /// Sets the limit; calls in flight keep their permits, waiters get any new room at once.
    pub(crate) fn set_limit(&self, limit: usize) {
        let old = self.limit.swap(limit, SeqCst);
        if old != limit {
            if let Some(m) = &self.metrics {
                m.limit(limit);
            }
            tracing::debug!(
                name = &*self.layer_name,
                partition = &*self.name,
                old,
                limit,
                "bulkhead limit changed"
            );
        }
        if limit > old && self.queued.load(SeqCst) != 0 {
            self.grant();
        }
    }

    /// The recently observed service time, once a call has finished.
    pub(crate) fn service_time(&self) -> Option<Duration> {
        match self.service_time.load(Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Feeds a finished call into the service-time average and the adaptive limit.
    pub(crate) fn observe(&self, service: Duration, failed: bool) {
        if self.shed_on_deadline {
            let sample = u64::try_from(service.as_nanos()).unwrap_or(u64::MAX).max(1);
            let old = self.service_time.load(Relaxed);
            // Weight 1/5 per sample, as Netflix's Gradient2 smooths. Racing updates may lose a
            // sample, which an estimate can afford.
            let new = if old == 0 {
                sample
            } else {
                (old as f64 + (sample as f64 - old as f64) * 0.2) as u64
            };
            self.service_time.store(new.max(1), Relaxed);
        }
        if let Some(aimd) = &self.adaptive {
            let limit = self.limit.load(SeqCst);
            let next = aimd.next(limit, self.in_flight.load(Relaxed), service, failed);
            if next != limit
                && self
                    .limit
                    .compare_exchange(limit, next, SeqCst, Relaxed)
                    .is_ok()
            {
                if let Some(m) = &self.metrics {
                    m.limit(next);
                }
                if next > limit && self.queued.load(SeqCst) != 0 {
                    self.grant();
                }
            }
        }
    }

    /// Counts a rejection and builds its error.
    pub(crate) fn reject(&self, reason: Reason, waited: Option<Duration>) -> tower_red::BoxError {
        if let Some(m) = &self.metrics {
            m.rejected(reason, waited);
        }
        tracing::debug!(
            name = &*self.layer_name,
            partition = &*self.name,
            reason = reason.as_str(),
            "bulkhead rejected a call"
        );
        // A permit frees up, on average, one service time from now: say so in `Retry-After`
        // (at least a second, as the header counts whole seconds).
        let retry_after = self
            .service_time()
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        reason
            .rejection(self.layer_name.clone())
            .with_retry_after(retry_after)
            .into()
    }

    pub(crate) fn record_queue_wait(&self, waited: Duration) {
        if let Some(m) = &self.metrics {
            m.queue_wait(waited);
        }
    }
}

/// A held place in a partition; dropping it frees the place at once and hands it to the first
/// waiter, if any.
pub struct Permit {
    part: Arc<PartitionState>,
}

impl Permit {
    pub(crate) fn partition(&self) -> &PartitionState {
        &self.part
    }

    /// The name of the partition this permit belongs to.
    pub fn partition_name(&self) -> &str {
        &self.part.name
    }

    /// Records a finished call that started at `start` and was served from `served`.
    #[inline]
    pub(crate) fn finished(
        &self,
        start: Option<Instant>,
        served: Option<Instant>,
        outcome: tower_red::Outcome,
    ) {
        let Some(start) = start else { return };
        let now = Instant::now();
        let part = &*self.part;
        if let Some(m) = &part.metrics {
            m.red.record(outcome, now.saturating_duration_since(start));
        }
        if part.shed_on_deadline || part.adaptive.is_some() {
            let service = now.saturating_duration_since(served.unwrap_or(start));
            part.observe(service, outcome != tower_red::Outcome::Ok);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("partition", &self.part.name)
            .finish()
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.part.release();
    }
}

/// A place in a partition's queue; dropping it leaves the queue (or, if it was granted in the
/// meantime, frees the permit) at once.
pub(crate) struct Waiter {
    part: Arc<PartitionState>,
    id: u64,
    done: bool,
}

impl Waiter {
    pub(crate) fn partition(&self) -> &Arc<PartitionState> {
        &self.part
    }

    /// Ready with the permit once this waiter reaches the front and a permit is free.
    pub(crate) fn poll_granted(&mut self, cx: &mut Context<'_>) -> Poll<Permit> {
        if self.done {
            return Poll::Pending;
        }
        let mut queue = self.part.lock();
        match queue.position(self.id) {
            Some(i) => {
                let entry = &mut queue.entries[i];
                match &entry.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => entry.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            None => {
                drop(queue);
                self.done = true;
                Poll::Ready(Permit {
                    part: Arc::clone(&self.part),
                })
            }
        }
    }

    /// Leaves the queue; returns the permit if it was granted before we could leave.
    pub(crate) fn cancel(&mut self) -> Option<Permit> {
        if self.done {
            return None;
        }
        self.done = true;
        let mut queue = self.part.lock();
        match queue.position(self.id) {
            Some(i) => {
                queue.entries.remove(i);
                self.part.queued.fetch_sub(1, SeqCst);
                self.part.report_depth(&queue);
                None
            }
            None => Some(Permit {
                part: Arc::clone(&self.part),
            }),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // A permit granted but never taken is released here, handing it to the next waiter.
        drop(self.cancel());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn part(limit: usize) -> Arc<PartitionState> {
        Arc::new(PartitionState::new(
            "p".into(),
            "b".into(),
            limit,
            Mode::Queue {
                max_len: 8,
                max_wait: Duration::from_secs(1),
            },
            true,
            None,
            None,
        ))
    }

    fn waiting(e: Enqueued) -> Waiter {
        match e {
            Enqueued::Waiting(w) => w,
            _ => panic!("expected to wait"),
        }
    }

    #[test]
    fn permits_are_counted_and_returned_on_drop() {
        let p = part(2);
        let a = p.try_acquire().expect("free");
        let b = p.try_acquire().expect("free");
        assert!(p.try_acquire().is_none());
        assert_eq!(p.in_flight(), 2);
        drop(a);
        assert_eq!(p.in_flight(), 1);
        drop(b);
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn released_permits_go_to_waiters_in_order() {
        let p = part(1);
        let held = p.try_acquire().expect("free");
        let mut first = waiting(p.enqueue(Some(8)));
        let mut second = waiting(p.enqueue(Some(8)));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(first.poll_granted(&mut cx).is_pending());
        assert!(
            p.try_acquire().is_none(),
            "the fast path does not jump the queue"
        );
        drop(held);
        assert!(second.poll_granted(&mut cx).is_pending());
        let granted = first.poll_granted(&mut cx);
        assert!(granted.is_ready());
        assert_eq!(p.queued(), 1);
        drop(granted);
        assert!(second.poll_granted(&mut cx).is_ready());
        assert_eq!(p.queued(), 0);
    }

    #[test]
    fn a_granted_waiter_dropped_unpolled_passes_the_permit_on() {
        let p = part(1);
        let held = p.try_acquire().expect("free");
        let first = waiting(p.enqueue(Some(8)));
        let mut second = waiting(p.enqueue(Some(8)));
        drop(held);
        drop(first);
        let mut cx = Context::from_waker(Waker::noop());
        let permit = second.poll_granted(&mut cx);
        assert!(permit.is_ready());
        assert_eq!(p.in_flight(), 1);
        drop(permit);
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn the_queue_bound_is_enforced() {
        let p = part(1);
        let _held = p.try_acquire().expect("free");
        let _w = waiting(p.enqueue(Some(1)));
        assert!(matches!(p.enqueue(Some(1)), Enqueued::QueueFull));
    }

    #[test]
    fn raising_the_limit_grants_waiters() {
        let p = part(1);
        let _held = p.try_acquire().expect("free");
        let mut w = waiting(p.enqueue(None));
        p.set_limit(2);
        let mut cx = Context::from_waker(Waker::noop());
        let permit = w.poll_granted(&mut cx);
        assert!(permit.is_ready());
        assert_eq!(p.in_flight(), 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Any interleaving of acquires, enqueues, releases and cancellations keeps the
        /// in-flight count within the limit, serves waiters in order, and leaks nothing.
        #[test]
        fn never_over_the_limit_never_leaks(limit in 1usize..4, ops in proptest::collection::vec(0u8..4, 1..200)) {
            let p = part(limit);
            let mut permits: Vec<Permit> = Vec::new();
            let mut waiters: VecDeque<Waiter> = VecDeque::new();
            let mut cx = Context::from_waker(Waker::noop());
            for op in ops {
                match op {
                    0 => if let Some(permit) = p.try_acquire() { permits.push(permit) },
                    1 => match p.enqueue(None) {
                        Enqueued::Granted(permit) => permits.push(permit),
                        Enqueued::Waiting(w) => waiters.push_back(w),
                        Enqueued::QueueFull => unreachable!(),
                    },
                    2 => { permits.pop(); }
                    _ => { waiters.pop_back(); }
                }
                // Only the oldest waiters can have been granted.
                let mut granted_seen_pending = false;
                let mut still = VecDeque::new();
                while let Some(mut w) = waiters.pop_front() {
                    match w.poll_granted(&mut cx) {
                        Poll::Ready(permit) => {
                            proptest::prop_assert!(!granted_seen_pending, "granted out of order");
                            permits.push(permit);
                        }
                        Poll::Pending => { granted_seen_pending = true; still.push_back(w); }
                    }
                }
                waiters = still;
                proptest::prop_assert!(p.in_flight() <= limit);
                proptest::prop_assert_eq!(p.in_flight(), permits.len());
                proptest::prop_assert_eq!(p.queued(), waiters.len());
            }
            drop(permits);
            drop(waiters);
            proptest::prop_assert_eq!(p.in_flight(), 0);
            proptest::prop_assert_eq!(p.queued(), 0);
        }
    }
}
