//! The response future of [`Breaker`](crate::Breaker).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_red::BoxError;
use tower_red::classify::{Classify, Verdict};
use tower_red::red::Outcome;

use crate::machine::{Admission, Machine};
use crate::window::Sample;

/// An admitted call's claim on the breaker. Dropped unused (a cancelled call, or a
/// reservation made in `poll_ready` that was never called), it gives a probe slot back.
pub(crate) struct Permit {
    machine: Arc<Machine>,
    adm: Admission,
    armed: bool,
}

impl Permit {
    pub(crate) fn new(machine: Arc<Machine>, adm: Admission) -> Self {
        Permit {
            machine,
            adm,
            armed: true,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.machine.cancel(self.adm);
        }
    }
}

/// Finishes a call exactly once: with a verdict when the inner future completes, or as
/// cancelled when dropped first.
struct Guard<C> {
    permit: Permit,
    classifier: C,
    start: Option<Instant>,
}

impl<C> Guard<C> {
    fn finish<T, E>(mut self, result: &Result<T, E>)
    where
        C: Classify<T, E>,
    {
        let verdict = self.classifier.classify(result);
        let machine = &*self.permit.machine;
        let (now, elapsed) = match self.start {
            Some(start) => {
                // Shared with the other layers of the stack finishing in this poll.
                let end = tower_red::clock::now();
                (machine.nanos(end), end.saturating_duration_since(start))
            }
            None => (0, Duration::ZERO),
        };
        let slow = machine
            .config
            .slow_call_duration
            .is_some_and(|d| elapsed >= d);
        let sample = match verdict {
            Verdict::Ignored => None,
            Verdict::Success => Some(Sample {
                failure: false,
                slow,
            }),
            Verdict::Failure(_) => Some(Sample {
                failure: true,
                slow,
            }),
        };
        self.permit.armed = false;
        machine.complete(self.permit.adm, sample, now);
        if let Some(m) = &machine.metrics {
            m.red.record(Outcome::from_verdict(verdict), elapsed);
        }
    }
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        // Still armed: the future was dropped before the inner call finished. The permit's
        // own drop gives a probe slot back; here the cancellation is counted.
        if !self.permit.armed {
            return;
        }
        if let Some(m) = &self.permit.machine.metrics {
            let elapsed = self.start.map_or(Duration::ZERO, |s| {
                Instant::now().saturating_duration_since(s)
            });
            m.red.record(Outcome::Cancelled, elapsed);
        }
    }
}

pin_project! {
    /// The response future of [`Breaker`](crate::Breaker): the inner call, measured, or a
    /// rejection ready at once.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            fut: F,
            guard: Option<Guard<C>>,
        },
        Rejected {
            err: Option<BoxError>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(fut: F, permit: Permit, classifier: C, start: Option<Instant>) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                fut,
                guard: Some(Guard {
                    permit,
                    classifier,
                    start,
                }),
            },
        }
    }

    pub(crate) fn rejected(err: BoxError) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { err: Some(err) },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { fut, guard } => {
                let timed = guard.as_ref().is_some_and(|g| g.start.is_some());
                let _scope = timed.then(tower_red::clock::Scope::enter);
                let result = ready!(fut.poll(cx));
                guard
                    .take()
                    .expect("polled after completion")
                    .finish(&result);
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { err } => {
                Poll::Ready(Err(err.take().expect("polled after completion")))
            }
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
