//! The response future of [`Breaker`](crate::Breaker).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_red::BoxError;
use tower_red::classify::{Classify, Verdict, judge};
use tower_red::red::Outcome;

use crate::machine::{Admission, Kind as AdmissionKind, Machine};
use crate::window::Sample;

/// An admitted call's claim on the breaker. Dropped unused (a cancelled call, or a
/// reservation made in `poll_ready` that was never called), it gives a probe slot back.
pub(crate) struct Permit {
    machine: Arc<Machine>,
    /// The [`Admission`], packed, and [`SPENT`] once the call's end was reported. One word, so
    /// the permit moves as two words.
    adm: u64,
}

/// Set in a permit's packed admission once the call's end was reported.
const SPENT: u64 = 0x80;

impl Permit {
    #[inline]
    pub(crate) fn new(machine: Arc<Machine>, adm: Admission) -> Self {
        Permit {
            machine,
            adm: adm.pack(),
        }
    }

    #[inline]
    pub(crate) fn admission(&self) -> Admission {
        Admission::unpack(self.adm)
    }

    #[inline]
    fn armed(&self) -> bool {
        self.adm & SPENT == 0
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        // Only a probe has anything to give back.
        if self.armed() && self.admission().kind == AdmissionKind::Probe {
            self.machine.cancel(self.admission());
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
    /// Reports the call's end; the guard is spent after this (its drop does nothing but
    /// release the machine).
    #[inline(always)]
    fn finish<T, E: 'static>(&mut self, result: &Result<T, E>)
    where
        C: Classify<T, E>,
    {
        // An inner layer's refusal is judged as one whatever the classifier says.
        let verdict = judge(&self.classifier, result);
        let adm = self.permit.adm;
        self.permit.adm |= SPENT;
        let machine = &*self.permit.machine;
        let Some(start) = self.start else {
            // No clock: nothing needs a duration (slow calls and time windows read it), so
            // nothing is slow.
            machine.complete(adm, sample(verdict, false), 0);
            if let Some(red) = &machine.red {
                red.record(Outcome::judged(verdict, result), Duration::ZERO);
            }
            return;
        };
        // Shared with the other layers of the stack finishing in this poll.
        let end = tower_red::clock::now();
        let (now, elapsed) = (machine.nanos(end), end.saturating_duration_since(start));
        let slow = machine
            .config
            .slow_call_duration
            .is_some_and(|d| elapsed >= d);
        machine.complete(adm, sample(verdict, slow), now);
        if let Some(red) = &machine.red {
            red.record(Outcome::judged(verdict, result), elapsed);
        }
    }
}

/// What the window records of a call: nothing when its classifier ignored it.
#[inline]
fn sample(verdict: Verdict, slow: bool) -> Option<Sample> {
    match verdict {
        Verdict::Ignored | Verdict::Refused(_) => None,
        Verdict::Success => Some(Sample {
            failure: false,
            slow,
        }),
        Verdict::Failure(_) => Some(Sample {
            failure: true,
            slow,
        }),
    }
}

impl<C> Drop for Guard<C> {
    #[inline]
    fn drop(&mut self) {
        // Still armed: the future was dropped before the inner call finished.
        if self.permit.armed() {
            self.dropped();
        }
    }
}

impl<C> Guard<C> {
    /// The future was dropped before the inner call finished. Dropped by a deadline enforcer
    /// because the request's deadline passed ([`tower_red::cancel::expired`]), the backend did
    /// not answer in time: a failure of class timeout, and slow. Dropped by its caller, it is
    /// no verdict: the permit's own drop gives a probe slot back. Either way the RED outcome
    /// is `cancelled` (the enforcer counts the `timeout`).
    #[cold]
    #[inline(never)]
    fn dropped(&mut self) {
        let machine = &*self.permit.machine;
        let expired = tower_red::cancel::expired();
        if !expired && machine.red.is_none() {
            return;
        }
        let end = Instant::now();
        if expired {
            let adm = self.permit.adm;
            self.permit.adm |= SPENT;
            let timeout = Sample {
                failure: true,
                slow: true,
            };
            machine.complete(adm, Some(timeout), machine.nanos(end));
        }
        if let Some(red) = &machine.red {
            let elapsed = self
                .start
                .map_or(Duration::ZERO, |s| end.saturating_duration_since(s));
            red.record(Outcome::Cancelled, elapsed);
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
            // Spent once the call's end is reported, and dropped with the future: neither
            // moved out nor dropped twice.
            guard: Guard<C>,
        },
        Rejected {
            err: Option<BoxError>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn called(fut: F, permit: Permit, classifier: C, start: Option<Instant>) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                fut,
                guard: Guard {
                    permit,
                    classifier,
                    start,
                },
            },
        }
    }

    #[inline]
    pub(crate) fn rejected(err: BoxError) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { err: Some(err) },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { fut, guard } => {
                assert!(guard.permit.armed(), "polled after completion");
                let _scope = guard.start.is_some().then(tower_red::clock::Scope::enter);
                let result = ready!(fut.poll(cx));
                // Finished in place; the spent guard goes with the future.
                guard.finish(&result);
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
