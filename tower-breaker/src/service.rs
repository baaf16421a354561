//! The breaker service: wires the [`Machine`](crate::machine::Machine) to `poll_ready` and
//! `call`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower_red::classify::{AnyError, Classify};
use tower_red::red::Outcome;
use tower_red::{BoxError, Rejection, RejectionKind};
use tower_service::Service;

use crate::config::BreakerConfig;
use crate::future::{Permit, ResponseFuture};
use crate::handle::BreakerHandle;
use crate::layer::BreakerLayer;
use crate::machine::{Machine, Refusal};

/// A circuit breaker around the service `S`, classifying outcomes with `C`.
///
/// `poll_ready` only polls the inner service (unless backpressure is on); `call` refuses at
/// once with a [`Rejection`] of kind [`RejectionKind::CircuitOpen`] when the circuit is open.
/// Clones share one breaker.
pub struct Breaker<S, C = AnyError> {
    inner: S,
    machine: Arc<Machine>,
    classifier: C,
    /// Backpressure mode: the admission `poll_ready` reserved for the next `call`.
    reserved: Option<Permit>,
    /// `BACKPRESSURE` and `UNREADY`, in one byte so that the closed path of `poll_ready`
    /// tests both at once.
    flags: u8,
    notified: Option<Pin<Box<OwnedNotified>>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: Clone, C: Clone> Clone for Breaker<S, C> {
    fn clone(&self) -> Self {
        // A clone shares the breaker but not this instance's reservation.
        Breaker {
            inner: self.inner.clone(),
            machine: self.machine.clone(),
            classifier: self.classifier.clone(),
            reserved: None,
            flags: self.flags & BACKPRESSURE,
            notified: None,
            sleep: None,
        }
    }
}

impl<S: std::fmt::Debug, C: std::fmt::Debug> std::fmt::Debug for Breaker<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("inner", &self.inner)
            .field("breaker", &self.machine)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S> Breaker<S, AnyError> {
    /// Wraps `inner` in a new breaker that counts any `Err` as a failure.
    pub fn new(inner: S, config: BreakerConfig) -> Self {
        Breaker::from_parts(inner, Arc::new(Machine::new(config)), AnyError)
    }

    /// A layer building breakers that share one state; see [`BreakerLayer::from_config`].
    pub fn layer(config: BreakerConfig) -> BreakerLayer {
        BreakerLayer::from_config(config)
    }
}

impl<S, C> Breaker<S, C> {
    pub(crate) fn from_parts(inner: S, machine: Arc<Machine>, classifier: C) -> Self {
        let flags = if machine.config.backpressure {
            BACKPRESSURE
        } else {
            0
        };
        Breaker {
            inner,
            machine,
            classifier,
            reserved: None,
            flags,
            notified: None,
            sleep: None,
        }
    }

    /// Uses `classifier` to decide which outcomes are failures.
    pub fn with_classifier<C2>(self, classifier: C2) -> Breaker<S, C2> {
        Breaker::from_parts(self.inner, self.machine, classifier)
    }

    /// A handle on this breaker's shared state.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.machine.clone())
    }

    tower_red::define_inner_service_accessors!();

    /// The error of a refused call.
    #[cold]
    #[inline(never)]
    fn reject(&self, refusal: Refusal) -> BoxError {
        rejection(&self.machine, refusal)
    }

    /// `poll_ready` did not ready the inner service (the circuit was open), so this call
    /// cannot reach it, whatever the state is now.
    #[cold]
    #[inline(never)]
    fn reject_unready(&self) -> BoxError {
        let refusal = match self.machine.admit() {
            Err(refusal) => refusal,
            Ok(adm) => {
                // The circuit moved on since `poll_ready`: give a probe slot back, and send
                // the caller back for a readiness that polls the inner service. A refusal all
                // the same: counted and reported as the machine's own are.
                drop(Permit::new(self.machine.clone(), adm));
                let refusal = Refusal {
                    state: self.machine.state(),
                    retry_after: Duration::ZERO,
                };
                self.machine.report(&refusal);
                refusal
            }
        };
        self.reject(refusal)
    }

    /// Every `poll_ready` but the closed path's: backpressure, a circuit not closed, or a
    /// refusal pending from an earlier `poll_ready` to clear.
    #[inline(never)]
    fn poll_ready_slow<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        if self.flags & BACKPRESSURE != 0 {
            if self.poll_admission(cx).is_pending() {
                return Poll::Pending;
            }
        } else if self.machine.refuses_now() {
            // Refuse at once in `call` rather than wait on an inner service the call will
            // never reach (a saturated pool or bulkhead below).
            self.flags |= UNREADY;
            return Poll::Ready(Ok(()));
        }
        self.flags &= !UNREADY;
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    /// Backpressure mode: the admission `poll_ready` reserved, if no transition (a trip, say)
    /// happened since; else the call is decided again.
    #[inline]
    fn redeem(&self, permit: Permit) -> Result<Permit, Refusal> {
        if self.machine.is_current(permit.admission()) {
            return Ok(permit);
        }
        drop(permit);
        self.machine
            .admit()
            .map(|adm| Permit::new(self.machine.clone(), adm))
    }

    /// Backpressure mode: reserve an admission, or register to be woken when one may exist.
    #[inline(never)]
    fn poll_admission(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.reserved.is_some() {
                return Poll::Ready(());
            }
            match self.machine.try_admit() {
                Ok(adm) => {
                    self.reserved = Some(Permit::new(self.machine.clone(), adm));
                    self.notified = None;
                    self.sleep = None;
                    return Poll::Ready(());
                }
                Err(Refusal { retry_after, .. }) => {
                    if self.notified.is_none() {
                        // Listen before deciding again, so no wake-up falls in between.
                        let mut notified = Box::pin(self.machine.notify.clone().notified_owned());
                        notified.as_mut().enable();
                        self.notified = Some(notified);
                        continue;
                    }
                    // Every refusal says when to look again (an open time, a probe wait, a
                    // ramp step), so a waiter never depends on a wake-up alone.
                    let deadline = Instant::now() + retry_after;
                    match &mut self.sleep {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    let slept = self
                        .sleep
                        .as_mut()
                        .is_some_and(|s| s.as_mut().poll(cx).is_ready());
                    let notified = self
                        .notified
                        .as_mut()
                        .is_some_and(|n| n.as_mut().poll(cx).is_ready());
                    if notified {
                        self.notified = None;
                    }
                    if !(slept || notified) {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl<S, C, Req> Service<Req> for Breaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The closed path: no backpressure, no refusal pending from an earlier `poll_ready`,
        // and one load of the state word, which says closed (so nothing would be refused).
        if self.flags == 0 && self.machine.is_closed() {
            return self.inner.poll_ready(cx).map_err(Into::into);
        }
        self.poll_ready_slow(cx)
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        if self.flags & UNREADY != 0 {
            self.flags &= !UNREADY;
            return ResponseFuture::rejected(self.reject_unready());
        }
        // Each arm consumes what it took (a stale reservation is dropped in `redeem`), so
        // nothing is left to drop after the match.
        let permit = match self.reserved.take() {
            None => match self.machine.admit() {
                Ok(adm) => Permit::new(self.machine.clone(), adm),
                Err(refusal) => return ResponseFuture::rejected(self.reject(refusal)),
            },
            Some(permit) => match self.redeem(permit) {
                Ok(permit) => permit,
                Err(refusal) => return ResponseFuture::rejected(self.reject(refusal)),
            },
        };
        if self.machine.needs_clock {
            // One clock read shared by every layer of the stack calling in this scope.
            let _scope = tower_red::clock::Scope::enter();
            let start = tower_red::clock::now();
            let fut = self.inner.call(req);
            ResponseFuture::called(fut, permit, self.classifier.clone(), Some(start))
        } else {
            let fut = self.inner.call(req);
            ResponseFuture::called(fut, permit, self.classifier.clone(), None)
        }
    }
}

/// The error of a call `machine` refused: a [`Rejection`] of kind
/// [`RejectionKind::CircuitOpen`] whose `Retry-After` is the refusal's, at least a second (a
/// client told to come back in 0 s comes back at once).
#[cold]
#[inline(never)]
pub(crate) fn rejection(machine: &Machine, refusal: Refusal) -> BoxError {
    if let Some(m) = &machine.metrics {
        m.red.record_rejection(Outcome::CircuitOpen);
    }
    let rejection = Rejection::new(RejectionKind::CircuitOpen)
        .with_name(machine.config.name.clone())
        .with_retry_after(refusal.retry_after.max(MIN_RETRY_AFTER));
    Box::new(rejection)
}

/// `Breaker::flags`: backpressure mode (the machine's configuration, fixed for life).
const BACKPRESSURE: u8 = 1;
/// `Breaker::flags`: `poll_ready` answered for an open circuit without readying `inner`, so
/// the next `call` must not reach it.
const UNREADY: u8 = 2;

/// The shortest `Retry-After` a refusal gives.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

#[cfg(all(test, not(loom)))]
mod tests {
    use std::task::Poll;

    use tokio_test::{assert_pending, assert_ready};
    use tower::{Layer, Service, ServiceExt};

    use crate::BreakerLayer;

    fn layer() -> BreakerLayer {
        BreakerLayer::builder()
            .name("service-unit")
            .metrics(false)
            .consecutive_failures(1)
            .build()
            .expect("valid config")
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_after_one_that_skipped_the_inner_service_polls_it_again() {
        let (mock, mut inner) = tower_test::mock::pair::<u16, u16>();
        let layer = layer();
        let handle = layer.handle();
        let mut svc = layer.layer(mock);
        inner.allow(0);
        // Closed: readiness is the inner service's.
        assert_pending!(tokio_test::task::spawn(svc.ready()).poll());
        handle.force_open();
        assert!(matches!(
            tokio_test::task::spawn(svc.ready()).poll(),
            Poll::Ready(Ok(_))
        ));
        handle.reset();
        // Closed again, before any call: the next readiness waits on the inner service again,
        // and once it is ready the call goes through.
        assert_pending!(tokio_test::task::spawn(svc.ready()).poll());
        inner.allow(1);
        assert!(matches!(
            tokio_test::task::spawn(svc.ready()).poll(),
            Poll::Ready(Ok(_))
        ));
        let call = svc.call(7);
        let (req, send_response) =
            assert_ready!(tokio_test::task::spawn(inner.next_request()).poll())
                .expect("the call reached the inner service");
        assert_eq!(req, 7);
        send_response.send_response(200);
        assert_eq!(call.await.unwrap(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_future_polled_after_completion_panics_and_counts_once() {
        let (mock, mut inner) = tower_test::mock::pair::<u16, u16>();
        let layer = layer();
        let handle = layer.handle();
        let mut svc = layer.layer(mock);
        inner.allow(1);
        svc.ready().await.unwrap();
        let mut call = tokio_test::task::spawn(svc.call(1));
        let (_, send_response) = inner.next_request().await.expect("a request");
        send_response.send_response(200);
        assert_eq!(assert_ready!(call.poll()).unwrap(), 200);
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.poll()));
        let panic = again.expect_err("a completed future panics when polled again");
        let message = panic.downcast_ref::<&str>().copied().unwrap_or_default();
        assert_eq!(message, "polled after completion");
        drop(call);
        assert_eq!(handle.counts().calls, 1, "the call was counted once");
    }
}
