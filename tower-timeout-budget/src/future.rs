//! [`ResponseFuture`]: the future of every service in this crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_red::BoxError;
use tower_red::clock::{self, Scope};
use tower_red::red::Outcome;

use crate::Deadline;
use crate::error::Stage;
use crate::metrics::Shared;

pin_project! {
    /// Response future of [`TimeoutBudget`](crate::TimeoutBudget),
    /// [`InboundDeadline`](crate::inbound::InboundDeadline) and
    /// [`OutboundDeadline`](crate::outbound::OutboundDeadline).
    ///
    /// It polls the inner future first, inside the deadline's task-local scope, and only arms a
    /// timer when the inner future is not ready: a call that completes at once costs no timer
    /// and no allocation.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running {
            #[pin]
            fut: F,
            #[pin]
            sleep: Option<Sleep>,
            deadline: Option<Deadline>,
            start: Instant,
            shared: Arc<Shared>,
        },
        Failed { err: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn running(
        fut: F,
        deadline: Option<Deadline>,
        start: Instant,
        shared: Arc<Shared>,
    ) -> Self {
        ResponseFuture {
            state: State::Running {
                fut,
                sleep: None,
                deadline,
                start,
                shared,
            },
        }
    }

    pub(crate) fn failed(err: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed { err: Some(err) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Running {
                fut,
                mut sleep,
                deadline,
                start,
                shared,
            } => {
                let _scope = Scope::enter();
                let polled = match *deadline {
                    Some(d) => d.sync_scope(|| fut.poll(cx)),
                    None => fut.poll(cx),
                };
                if let Poll::Ready(res) = polled {
                    let res = res.map_err(Into::into);
                    shared.finished(
                        || match &res {
                            Ok(_) => Outcome::Ok,
                            Err(e) => Outcome::from_error(&**e),
                        },
                        || clock::now().saturating_duration_since(*start),
                    );
                    return Poll::Ready(res);
                }
                let Some(d) = *deadline else {
                    return Poll::Pending;
                };
                if sleep.is_none() {
                    sleep.set(Some(d.sleep()));
                }
                if let Some(timer) = sleep.as_pin_mut() {
                    ready!(timer.poll(cx));
                }
                Poll::Ready(Err(shared.exceeded(
                    Stage::Call,
                    Some(clock::now().saturating_duration_since(*start)),
                )))
            }
            StateProj::Failed { err } => {
                Poll::Ready(Err(err.take().expect("polled after completion")))
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
