//! The breaker service: wires the [`Machine`](crate::machine::Machine) to `poll_ready` and
//! `call`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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

    /// A layer building breakers that share one state; see [`BreakerLayer::new`].
    pub fn layer(config: BreakerConfig) -> BreakerLayer {
        BreakerLayer::new(config)
    }
}

impl<S, C> Breaker<S, C> {
    pub(crate) fn from_parts(inner: S, machine: Arc<Machine>, classifier: C) -> Self {
        Breaker {
            inner,
            machine,
            classifier,
            reserved: None,
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

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The error of a refused call.
    #[cold]
    #[inline(never)]
    fn reject(&self, refusal: Refusal) -> BoxError {
        if let Some(m) = &self.machine.metrics {
            m.red.record_rejection(Outcome::CircuitOpen);
        }
        let mut rejection =
            Rejection::new(RejectionKind::CircuitOpen).with_name(self.machine.config.name.clone());
        if let Some(after) = refusal.retry_after {
            rejection = rejection.with_retry_after(after);
        }
        Box::new(rejection)
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
                    if let Some(after) = retry_after {
                        let deadline = Instant::now() + after;
                        match &mut self.sleep {
                            Some(sleep) => sleep.as_mut().reset(deadline),
                            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                        }
                    } else {
                        self.sleep = None;
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
        if self.machine.config.backpressure && self.poll_admission(cx).is_pending() {
            return Poll::Pending;
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match self.reserved.take() {
            Some(permit) => permit,
            None => match self.machine.admit() {
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
