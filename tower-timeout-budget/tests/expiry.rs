//! Every enforcer of this crate drops the inner future inside `tower_red::cancel::drop_expired`
//! the moment the deadline fires, so drop guards of inner layers (a breaker's) can tell a call
//! cut by its deadline (a timeout) from one its caller abandoned (nothing).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics_util::debugging::DebuggingRecorder;
use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready_err, task};
use tower::{Layer, Service, ServiceExt};
use tower_red::{BoxError, cancel};
use tower_timeout_budget::TimeoutBudgetLayer;
use tower_timeout_budget::inbound::InboundDeadlineLayer;
use tower_timeout_budget::outbound::OutboundDeadlineLayer;

const MS: Duration = Duration::from_millis(1);

/// What the inner future's drop guard saw: `None` while it is alive, then whether it was
/// dropped at a deadline.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Option<bool>>>);

impl Seen {
    fn get(&self) -> Option<bool> {
        *self.0.lock().expect("not poisoned")
    }
}

struct Probe(Seen);

impl Drop for Probe {
    fn drop(&mut self) {
        *self.0.0.lock().expect("not poisoned") = Some(cancel::expired());
    }
}

/// A backend that never answers; its future holds a [`Probe`].
#[derive(Clone)]
struct Hang(Seen);

impl Service<http::Request<()>> for Hang {
    type Response = ();
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<(), Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<()>) -> Self::Future {
        let probe = Probe(self.0.clone());
        Box::pin(async move {
            let _probe = probe;
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

type Enforced = dyn Fn(Hang) -> tower::util::BoxService<http::Request<()>, (), BoxError>;

/// The three enforcers, each with a budget of 100 ms.
fn enforcers() -> Vec<(&'static str, Box<Enforced>)> {
    let timeout = TimeoutBudgetLayer::new(100 * MS).expect("valid cap");
    let inbound = InboundDeadlineLayer::builder()
        .cap(100 * MS)
        .build()
        .expect("valid");
    let outbound = OutboundDeadlineLayer::builder()
        .cap(100 * MS)
        .build()
        .expect("valid");
    vec![
        (
            "timeout",
            Box::new(move |s| tower::util::BoxService::new(timeout.layer(s))),
        ),
        (
            "inbound",
            Box::new(move |s| tower::util::BoxService::new(inbound.layer(s))),
        ),
        (
            "outbound",
            Box::new(move |s| tower::util::BoxService::new(outbound.layer(s))),
        ),
    ]
}

async fn deadline_fires_and_drops_the_inner_future_as_expired() {
    for (which, enforce) in enforcers() {
        let seen = Seen::default();
        let mut svc = enforce(Hang(seen.clone()));
        svc.ready().await.expect("ready");
        let mut fut = task::spawn(svc.call(http::Request::new(())));
        assert_pending!(fut.poll());
        advance(99 * MS).await;
        assert_pending!(fut.poll());
        assert_eq!(seen.get(), None, "{which}: still running");
        advance(MS).await;
        let _err = assert_ready_err!(fut.poll());
        assert_eq!(
            seen.get(),
            Some(true),
            "{which}: the inner future is dropped when the deadline fires, marked expired"
        );
        drop(fut);
        assert_eq!(seen.get(), Some(true), "{which}: dropped once");
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_drops_the_inner_future_marked_expired() {
    deadline_fires_and_drops_the_inner_future_as_expired().await;
}

#[tokio::test(start_paused = true)]
async fn a_deadline_drops_the_inner_future_marked_expired_with_metrics_on() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    deadline_fires_and_drops_the_inner_future_as_expired().await;
}

#[tokio::test(start_paused = true)]
async fn a_caller_dropping_the_call_before_its_deadline_is_not_marked_expired() {
    for (which, enforce) in enforcers() {
        let seen = Seen::default();
        let mut svc = enforce(Hang(seen.clone()));
        svc.ready().await.expect("ready");
        let mut fut = task::spawn(svc.call(http::Request::new(())));
        assert_pending!(fut.poll());
        advance(50 * MS).await;
        assert_pending!(fut.poll());
        drop(fut);
        assert_eq!(seen.get(), Some(false), "{which}: abandoned, not expired");
        assert!(!cancel::expired());
    }
}
