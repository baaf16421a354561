//! Shared test helpers: an inner service whose readiness the test switches on and off, and the
//! first readiness wait the tests put a layer over it through.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, Service};
use tower_test::mock::Spawn;
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

/// `layer` over a closed [`Gate`], polled by hand, and the gate's switch.
pub fn gated<L: Layer<Gate>>(layer: L) -> (Spawn<L::Service>, Switch) {
    let (gate, switch) = gate();
    (Spawn::new(layer.layer(gate)), switch)
}

/// A first readiness wait of `wait`: `svc` (over a closed gate) is pending, `wait` passes, the
/// gate opens and `svc` is ready.
pub async fn wait_then_open<S>(svc: &mut Spawn<S>, switch: &Switch, wait: Duration)
where
    S: Service<http::Request<()>>,
    S::Error: std::fmt::Debug,
{
    assert_pending!(svc.poll_ready());
    advance(wait).await;
    switch.open();
    assert_ready_ok!(svc.poll_ready());
}
