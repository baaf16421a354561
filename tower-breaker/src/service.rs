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
    /// `poll_ready` answered for an open circuit without readying `inner`: the next `call`
    /// must not reach it.
    unready: bool,
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
            unready: false,
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
        Breaker {
            inner,
            machine,
            classifier,
            reserved: None,
            unready: false,
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
                // the caller back for a readiness that polls the inner service.
                drop(Permit::new(self.machine.clone(), adm));
                Refusal {
                    state: self.machine.state(),
                    retry_after: Duration::ZERO,
                }
            }
        };
        self.reject(refusal)
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
        if self.machine.config.backpressure {
            if self.poll_admission(cx).is_pending() {
                return Poll::Pending;
            }
        } else if self.machine.refuses_now() {
            // Refuse at once in `call` rather than wait on an inner service the call will
            // never reach (a saturated pool or bulkhead below).
            self.unready = true;
            return Poll::Ready(Ok(()));
        }
        self.unready = false;
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        if self.unready {
            self.unready = false;
            return ResponseFuture::rejected(self.reject_unready());
        }
        let permit = match self.reserved.take() {
            // A reservation made before a transition (a trip, say) is decided again.
            Some(permit) if self.machine.is_current(permit.admission()) => permit,
            _ => match self.machine.admit() {
                Ok(adm) => Permit::new(self.machine.clone(), adm),
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

/// The shortest `Retry-After` a refusal gives.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
