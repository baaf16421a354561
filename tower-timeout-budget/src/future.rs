//! [`ResponseFuture`]: the future of every service in this crate.

use std::future::Future;
use std::pin::Pin;
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
            // Boxed so the future stays small (a `Sleep` is large and would be copied on every
            // move); allocated only when the inner future is not ready at once.
            sleep: Option<Pin<Box<Sleep>>>,
            deadline: Option<Deadline>,
            start: Instant,
            shared: Shared,
        },
        Failed { err: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn running(
        fut: F,
        deadline: Option<Deadline>,
        start: Instant,
        shared: Shared,
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
                sleep,
                deadline,
                start,
                shared,
            } => {
                // Only a layer that reads the clock here needs the shared clock scope; inner
                // layers that read it enter their own.
                let _scope = shared.metrics_on().then(Scope::enter);
                let polled = match *deadline {
                    // Already bounded by the enclosing scope when the call was made.
                    Some(d) => d.sync_scope_exact(|| fut.poll(cx)),
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
                let timer = sleep.get_or_insert_with(|| Box::pin(d.sleep()));
                ready!(timer.as_mut().poll(cx));
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
