//! Shared test helpers: an inner service whose readiness the test switches on and off.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;
use tower_timeout_budget::{Deadline, DeadlineCarrier};

/// Opens and closes a [`Gate`].
#[derive(Debug, Clone, Default)]
pub struct Switch(Arc<AtomicBool>);

impl Switch {
    /// The gate is ready from now on.
    pub fn open(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// The gate is not ready from now on, called or not.
    pub fn close(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// An inner service that is ready only while its [`Switch`] is open, so it can stop being
/// ready without being called, as a pooled connection that drops does (a `tower_test` mock,
/// once ready, stays ready until called). A call answers at once with the time the request's
/// deadline left it. It registers no waker: the tests poll by hand.
#[derive(Debug, Clone)]
pub struct Gate(Switch);

/// A closed gate and its switch.
pub fn gate() -> (Gate, Switch) {
    let switch = Switch::default();
    (Gate(switch.clone()), switch)
}

impl Service<http::Request<()>> for Gate {
    type Response = Option<Duration>;
    type Error = Infallible;
    type Future = Ready<Result<Option<Duration>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if (self.0).0.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, req: http::Request<()>) -> Self::Future {
        ready(Ok(req.deadline().map(Deadline::remaining)))
    }
}
