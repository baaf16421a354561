//! The service: takes a permit (or waits for one) and calls the inner service; the policies
//! live in [`partition`](crate::partition) and the files it wires.

use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tower_red::BoxError;
use tower_red::classify::{AnyError, Classify};
use tower_red::clock::{self, NEVER, Scope};
use tower_service::Service;
use tower_timeout_budget::Deadline;

use crate::body::{OnResponse, Release};
use crate::config::{Partitioner, Unpartitioned};
use crate::deadline::{DeadlineSource, FromScope};
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
/// The inner service must be `Clone` (as axum routers, tower buffers, reqwest and tonic
/// clients are): a queued call needs its own handle on it, and whether a partition queues is
/// decided at run time by the builder, while trait bounds are fixed at compile time. A service
/// that is not `Clone` passes once wrapped in a buffer: `ServiceBuilder::new().layer(bulkhead)
/// .buffer(1024).service(svc)`.
pub struct Bulkhead<S, P = Unpartitioned, H = OnResponse, C = AnyError, D = FromScope> {
    inner: S,
    shared: Arc<Shared>,
    partitioner: P,
    classifier: C,
    deadline: D,
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

impl<S, P, H, C, D> Bulkhead<S, P, H, C, D> {
    pub(crate) fn from_parts(
        inner: S,
        shared: Arc<Shared>,
        partitioner: P,
        classifier: C,
        deadline: D,
    ) -> Self {
        Bulkhead {
            inner,
            shared,
            partitioner,
            classifier,
            deadline,
            reserved: None,
            waiting: None,
            _release: PhantomData,
        }
    }

    /// A handle on the live bulkhead.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.shared.clone())
    }

    // `into_inner` gives a reserved permit back (it is dropped with `self`).
    tower_red::define_inner_service_accessors!();
}

impl<S: Clone, P: Clone, H, C: Clone, D: Clone> Clone for Bulkhead<S, P, H, C, D> {
    /// Shares the bulkhead, but not this service's reservation.
    fn clone(&self) -> Self {
        Bulkhead::from_parts(
            self.inner.clone(),
            self.shared.clone(),
            self.partitioner.clone(),
            self.classifier.clone(),
            self.deadline.clone(),
        )
    }
}

impl<S: fmt::Debug, P, H, C, D> fmt::Debug for Bulkhead<S, P, H, C, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("bulkhead", &self.shared)
            .field("reserved", &self.reserved.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, Req, P, H, C, D> Service<Req> for Bulkhead<S, P, H, C, D>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Partitioner<Req>,
    H: Release<S::Response>,
    C: Classify<S::Response, BoxError> + Clone,
    D: DeadlineSource<Req>,
{
    type Response = H::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req, H, C>;

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
            if !part.timed {
                // Nothing needs the time: no clock read at all.
                let fut = self.inner.call(req);
                return ResponseFuture::called(fut, permit, None, self.classifier.clone());
            }
            // One clock read, shared with every layer of the stack inside this call.
            let _scope = Scope::enter();
            let start = clock::now();
            let fut = self.inner.call(req);
            return ResponseFuture::called(fut, permit, Some(start), self.classifier.clone());
        }
        self.full(index, req)
    }
}

impl<S, P, H, C: Clone, D> Bulkhead<S, P, H, C, D> {
    /// Backpressure mode: reserves a permit for the next call, waiting in the queue for one;
    /// `Ready` once reserved (or, were the unbounded queue ever full, to let `call` refuse).
    #[inline(never)]
    fn reserve(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.waiting.is_none() {
            let part = &self.shared.partitions[0];
            match part.try_acquire() {
                Some(permit) => self.reserved = Some(permit),
                None => match part.enqueue(None, None) {
                    Enqueued::Granted(permit) => self.reserved = Some(permit),
                    Enqueued::Waiting(waiter) => self.waiting = Some(waiter),
                    // An unbounded queue is never full; were it, failing the call beats
                    // failing readiness, which would poison a Buffer in front.
                    Enqueued::QueueFull => return Poll::Ready(()),
                },
            }
        }
        if let Some(waiter) = self.waiting.as_mut() {
            let permit = ready!(waiter.poll_granted(None, cx));
            self.waiting = None;
            self.reserved = Some(permit);
        }
        Poll::Ready(())
    }

    /// No permit is free: queue or refuse, by the partition's mode.
    #[inline(never)]
    fn full<Req>(&mut self, index: usize, req: Req) -> ResponseFuture<S::Future, S, Req, H, C>
    where
        S: Service<Req> + Clone,
        D: DeadlineSource<Req>,
    {
        let part = &self.shared.partitions[index];
        match part.mode {
            Mode::Queue { max_len, max_wait } => self.enqueue(index, req, max_len, max_wait),
            Mode::Reject | Mode::Backpressure => {
                ResponseFuture::rejected(part.reject(Reason::Full, None), self.classifier.clone())
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
    ) -> ResponseFuture<S::Future, S, Req, H, C>
    where
        S: Service<Req> + Clone,
        D: DeadlineSource<Req>,
    {
        let _scope = Scope::enter();
        let part = &self.shared.partitions[index];
        let now = clock::now();
        let deadline = self.deadline.deadline(&req);
        let classifier = self.classifier.clone();
        if doomed(part, deadline, now) {
            return ResponseFuture::rejected(part.reject(Reason::Deadline, None), classifier);
        }
        match part.enqueue(Some(max_len), deadline.map(Deadline::instant)) {
            Enqueued::QueueFull => {
                ResponseFuture::rejected(part.reject(Reason::QueueFull, None), classifier)
            }
            Enqueued::Granted(permit) => {
                let start = part.timed.then_some(now);
                ResponseFuture::called(self.inner.call(req), permit, start, classifier)
            }
            Enqueued::Waiting(waiter) => {
                // The ready service serves the call later; a fresh clone waits for readiness.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let wait_end = now + max_wait.min(NEVER);
                let timed = part.timed;
                ResponseFuture::queued(
                    waiter, inner, req, now, wait_end, deadline, timed, classifier,
                )
            }
        }
    }
}
