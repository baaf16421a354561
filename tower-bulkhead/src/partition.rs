//! One partition: wires its permits ([`permits`](crate::permits)), its service-time estimate
//! ([`ewma`](crate::ewma)), its adaptive limit ([`adaptive`](crate::adaptive)), its
//! `Retry-After` ([`retry_after`](crate::retry_after)) and its metrics together, and hands out
//! the RAII [`Permit`] and [`Waiter`] that give everything back on drop.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::adaptive::Aimd;
use crate::error::Reason;
use crate::ewma::ServiceTime;
use crate::metrics::PartitionMetrics;
use crate::permits::{Enqueue, Permits};

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

/// What a finished call tells the partition's policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The backend answered well: AIMD may grow.
    Success,
    /// The backend failed, or ran out of time: AIMD backs off.
    Drop,
    /// The backend answered, but the classifier ignores the outcome: a service time, and
    /// nothing for AIMD.
    Neutral,
}

/// A zero-sized field that starts a new cache line: it keeps the state every call writes away
/// from the settings every call reads.
#[derive(Default)]
#[repr(align(64))]
struct CacheLine;

/// The shared state of one partition.
#[repr(C)]
pub(crate) struct PartitionState {
    permits: Permits,
    service_time: ServiceTime,
    _settings: CacheLine,
    pub(crate) name: Arc<str>,
    pub(crate) layer_name: Arc<str>,
    pub(crate) mode: Mode,
    pub(crate) shed_on_deadline: bool,
    pub(crate) adaptive: Option<Aimd>,
    pub(crate) metrics: Option<PartitionMetrics>,
    /// Whether calls need a start time (metrics with a recorder that record durations,
    /// deadline-aware shedding or an adaptive limit); without, a call reads no clock.
    pub(crate) timed: bool,
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
        }
        let shed_on_deadline = shed_on_deadline && matches!(mode, Mode::Queue { .. });
        PartitionState {
            permits: Permits::new(limit, capacity),
            service_time: ServiceTime::default(),
            _settings: CacheLine,
            timed: metrics
                .as_ref()
                .is_some_and(PartitionMetrics::records_durations)
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
        self.permits.in_flight()
    }

    /// Calls waiting for a permit.
    pub(crate) fn queued(&self) -> usize {
        self.permits.queued()
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.permits.limit()
    }

    /// Takes a permit if one is free and nobody waits: no lock, no allocation.
    #[inline]
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.permits.try_acquire(&self.metrics).then(|| Permit {
            part: Arc::clone(self),
        })
    }

    /// Joins the back of the queue (bounded by `max_len` when given). A waiter with a
    /// `deadline` in a partition that sheds on deadlines is woken when a grown service-time
    /// estimate makes its timer late (see [`PartitionState::observe`]).
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        max_len: Option<usize>,
        deadline: Option<Instant>,
    ) -> Enqueued {
        let deadline = deadline.filter(|_| self.shed_on_deadline);
        match self.permits.enqueue(max_len, deadline, &self.metrics) {
            Enqueue::Granted => Enqueued::Granted(Permit {
                part: Arc::clone(self),
            }),
            Enqueue::Waiting(id) => Enqueued::Waiting(Waiter {
                part: Arc::clone(self),
                id,
                done: false,
            }),
            Enqueue::QueueFull => Enqueued::QueueFull,
        }
    }

    /// Sets the limit; calls in flight keep their permits, waiters get any new room at once.
    pub(crate) fn set_limit(&self, limit: usize) {
        let old = self.permits.set_limit(limit, &self.metrics);
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
    }

    /// The recently observed service time, once a call has finished.
    pub(crate) fn service_time(&self) -> Option<Duration> {
        self.service_time.get()
    }

    /// Whether a finished call's service time is of use (an estimate or an adaptive limit).
    #[inline]
    pub(crate) fn observes(&self) -> bool {
        self.shed_on_deadline || self.adaptive.is_some()
    }

    /// Feeds a call that reached the backend into the service-time average and the adaptive
    /// limit. Refusals of inner layers are never fed (they say nothing about the backend).
    pub(crate) fn observe(&self, service: Duration, signal: Signal) {
        if self.shed_on_deadline
            && let Some(grown) = self.service_time.record(service)
        {
            // Every queued deadline's shed point moved earlier: wake the waiters whose timers
            // are now late, to be shed at once or to set their timers earlier.
            self.permits.wake_late(|deadline, timer| {
                deadline
                    .checked_sub(grown)
                    .is_some_and(|shed_at| shed_at < timer)
            });
        }
        let Some(aimd) = &self.adaptive else { return };
        let failed = match signal {
            Signal::Success => false,
            Signal::Drop => true,
            Signal::Neutral => return,
        };
        let limit = self.permits.limit();
        let next = aimd.next(limit, self.permits.in_flight(), service, failed);
        if next != limit
            && self.permits.update_limit(limit, next, &self.metrics)
            && let Some(m) = &self.metrics
        {
            m.limit(next);
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
        reason
            .rejection(self.layer_name.clone())
            .with_retry_after(crate::retry_after::retry_after(self.service_time()))
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
        self.part.permits.release(&self.part.metrics);
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

    /// Ready with the permit once this waiter reaches the front and a permit is free; until
    /// then the waker of the latest poll is the one woken, and `timer` (the instant the
    /// waiter's timer is set for) says when a grown service-time estimate makes it late.
    pub(crate) fn poll_granted(
        &mut self,
        timer: Option<Instant>,
        cx: &mut Context<'_>,
    ) -> Poll<Permit> {
        if self.done {
            return Poll::Pending;
        }
        match self.part.permits.poll_granted(self.id, timer, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
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
        self.part
            .permits
            .cancel(self.id, &self.part.metrics)
            .then(|| Permit {
                part: Arc::clone(&self.part),
            })
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // A permit granted but never taken is released here, handing it to the next waiter.
        drop(self.cancel());
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::task::Waker;

    fn part(limit: usize, adaptive: Option<Aimd>) -> Arc<PartitionState> {
        Arc::new(PartitionState::new(
            "p".into(),
            "b".into(),
            limit,
            Mode::Queue {
                max_len: 8,
                max_wait: Duration::from_secs(1),
            },
            true,
            adaptive,
            None,
        ))
    }

    #[test]
    fn a_granted_waiter_dropped_unpolled_passes_the_permit_on() {
        let p = part(1, None);
        let held = p.try_acquire().expect("free");
        let Enqueued::Waiting(first) = p.enqueue(Some(8), None) else {
            panic!("expected to wait")
        };
        let Enqueued::Waiting(mut second) = p.enqueue(Some(8), None) else {
            panic!("expected to wait")
        };
        drop(held);
        drop(first);
        let mut cx = Context::from_waker(Waker::noop());
        let permit = second.poll_granted(None, &mut cx);
        assert!(permit.is_ready());
        assert_eq!(p.in_flight(), 1);
        drop(permit);
        drop(second);
        assert_eq!((p.in_flight(), p.queued()), (0, 0));
    }

    #[test]
    fn a_permit_names_its_partition() {
        let p = part(1, None);
        let permit = p.try_acquire().expect("free");
        assert_eq!(permit.partition_name(), "p");
    }

    #[test]
    fn only_backend_signals_move_the_adaptive_limit() {
        let p = part(10, Some(Aimd::new(2, 20)));
        let _busy: Vec<_> = (0..8).map(|_| p.try_acquire().expect("free")).collect();
        let ms = Duration::from_millis(5);
        p.observe(ms, Signal::Neutral);
        assert_eq!(p.limit(), 10, "an ignored outcome is no signal");
        p.observe(ms, Signal::Success);
        assert_eq!(p.limit(), 11);
        p.observe(ms, Signal::Drop);
        assert_eq!(p.limit(), 9);
        assert_eq!(p.service_time(), Some(ms));
    }
}
