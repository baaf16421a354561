//! The service: takes a permit (or waits for one) and calls the inner service.

use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;
use tower_red::BoxError;
use tower_service::Service;
use tower_timeout_budget::DeadlineCarrier;

use crate::body::{OnResponse, Release};
use crate::config::{Partitioner, Unpartitioned};
use crate::error::Reason;
use crate::future::{ResponseFuture, doomed};
use crate::handle::{BulkheadHandle, Shared};
use crate::layer::BulkheadLayer;
use crate::partition::{Enqueued, Mode, Permit, Waiter};

/// Limits the calls in flight to an inner service, per partition; see the [crate docs](crate).
///
/// Clones share the permits and queues. In backpressure mode each clone reserves its own permit
/// in `poll_ready`; a clone never inherits a reservation, and dropping a service gives its
/// reservation back.
///
/// Queued calls need their own handle on the inner service, so the inner service must be
/// `Clone` (as axum routers, tower buffers, reqwest and tonic clients are); the service made
/// ready is the one that serves the call.
pub struct Bulkhead<S, P = Unpartitioned, H = OnResponse> {
    inner: S,
    shared: Arc<Shared>,
    partitioner: P,
    reserved: Option<Permit>,
    waiting: Option<Waiter>,
    _release: PhantomData<fn() -> H>,
}

impl<S> Bulkhead<S> {
    /// Wraps `inner` in a bulkhead of `max_concurrent` calls that rejects the rest at once.
    pub fn new(inner: S, max_concurrent: NonZeroUsize) -> Self {
        tower_layer::Layer::layer(&BulkheadLayer::new(max_concurrent), inner)
    }

    /// A layer of `max_concurrent` calls that rejects the rest at once.
    pub fn layer(max_concurrent: NonZeroUsize) -> BulkheadLayer {
        BulkheadLayer::new(max_concurrent)
    }
}

impl<S, P, H> Bulkhead<S, P, H> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>, partitioner: P) -> Self {
        Bulkhead {
            inner,
            shared,
            partitioner,
            reserved: None,
            waiting: None,
            _release: PhantomData,
        }
    }

    /// A handle on the live bulkhead.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.shared.clone())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service; a reserved permit is given back.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P: Clone, H> Clone for Bulkhead<S, P, H> {
    /// Shares the bulkhead, but not this service's reservation.
    fn clone(&self) -> Self {
        Bulkhead::from_parts(
            self.inner.clone(),
            self.shared.clone(),
            self.partitioner.clone(),
        )
    }
}

impl<S: fmt::Debug, P, H> fmt::Debug for Bulkhead<S, P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("bulkhead", &self.shared)
            .field("reserved", &self.reserved.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, Req, P, H> Service<Req> for Bulkhead<S, P, H>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: DeadlineCarrier,
    P: Partitioner<Req>,
    H: Release<S::Response>,
{
    type Response = H::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req, H>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.shared.backpressure && self.reserved.is_none() {
            ready!(self.reserve(cx));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let index = self.shared.index(self.partitioner.partition(&req));
        let part = &self.shared.partitions[index];
        let permit = match self.reserved.take() {
            Some(permit) => Some(permit),
            None => part.try_acquire(),
        };
        if let Some(permit) = permit {
            let start = part.timed.then(Instant::now);
            return ResponseFuture::called(self.inner.call(req), permit, start, None);
        }
        self.full(index, req)
    }
}

impl<S, P, H> Bulkhead<S, P, H> {
    /// Backpressure mode: reserves a permit for the next call, waiting in the queue for one;
    /// `Ready` once reserved (or, were the unbounded queue ever full, to let `call` refuse).
    #[inline(never)]
    fn reserve(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.waiting.is_none() {
            let part = &self.shared.partitions[0];
            match part.try_acquire() {
                Some(permit) => self.reserved = Some(permit),
                None => match part.enqueue(None) {
                    Enqueued::Granted(permit) => self.reserved = Some(permit),
                    Enqueued::Waiting(waiter) => self.waiting = Some(waiter),
                    // An unbounded queue is never full; were it, failing the call beats
                    // failing readiness, which would poison a Buffer in front.
                    Enqueued::QueueFull => return Poll::Ready(()),
                },
            }
        }
        if let Some(waiter) = self.waiting.as_mut() {
            let permit = ready!(waiter.poll_granted(cx));
            self.waiting = None;
            self.reserved = Some(permit);
        }
        Poll::Ready(())
    }

    /// No permit is free: queue or refuse, by the partition's mode.
    #[inline(never)]
    fn full<Req>(&mut self, index: usize, req: Req) -> ResponseFuture<S::Future, S, Req, H>
    where
        S: Service<Req> + Clone,
        Req: DeadlineCarrier,
    {
        let part = &self.shared.partitions[index];
        match part.mode {
            Mode::Queue { max_len, max_wait } => self.enqueue(index, req, max_len, max_wait),
            Mode::Reject | Mode::Backpressure => {
                ResponseFuture::rejected(part.reject(Reason::Full, None))
            }
        }
    }

    /// The slow path: every permit is taken and the partition queues.
    fn enqueue<Req>(
        &mut self,
        index: usize,
        req: Req,
        max_len: usize,
        max_wait: Duration,
    ) -> ResponseFuture<S::Future, S, Req, H>
    where
        S: Service<Req> + Clone,
        Req: DeadlineCarrier,
    {
        let part = &self.shared.partitions[index];
        let now = Instant::now();
        let deadline = req.deadline();
        if doomed(part, deadline, now) {
            return ResponseFuture::rejected(part.reject(Reason::Deadline, None));
        }
        match part.enqueue(Some(max_len)) {
            Enqueued::QueueFull => ResponseFuture::rejected(part.reject(Reason::QueueFull, None)),
            Enqueued::Granted(permit) => {
                let start = part.timed.then_some(now);
                ResponseFuture::called(self.inner.call(req), permit, start, None)
            }
            Enqueued::Waiting(waiter) => {
                // The ready service serves the call later; a fresh clone waits for readiness.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let wait_end = now
                    .checked_add(max_wait)
                    .unwrap_or(now + Duration::from_secs(86_400 * 365));
                ResponseFuture::queued(waiter, inner, req, now, wait_end, deadline, part.timed)
            }
        }
    }
}
