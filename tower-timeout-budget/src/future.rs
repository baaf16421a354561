//! [`ResponseFuture`]: the future of every service in this crate.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_red::BoxError;
use tower_red::cancel;
use tower_red::classify::{AnyError, Classify};
use tower_red::clock::{self, Scope};
use tower_red::timer::Timer;

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
    ///
    /// When the deadline fires, the inner future is dropped at once, inside
    /// [`tower_red::cancel::drop_expired`]: the drop guards of inner layers see
    /// [`cancel::expired`](tower_red::cancel::expired) and count a timeout, while a call its
    /// caller drops before the deadline is seen as abandoned.
    ///
    /// `K` is the layer's classifier, which judges the RED outcome of a finished call when
    /// metrics are recorded.
    pub struct ResponseFuture<F, K = AnyError> {
        #[pin]
        state: State<F, K>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, K> {
        Running {
            #[pin]
            fut: F,
            // Boxed so the future stays small (a `Sleep` is large and would be copied on every
            // move); allocated only when the inner future is not ready at once.
            sleep: Timer,
            deadline: Option<Deadline>,
            start: Instant,
            // When the budget written on an outbound request runs out: an inner error from then
            // on is the transport (or the server) enforcing it.
            wire: Option<Instant>,
            shared: Shared<K>,
        },
        Failed { err: Option<BoxError> },
    }
}

impl<F, K> ResponseFuture<F, K> {
    pub(crate) fn running(
        fut: F,
        deadline: Option<Deadline>,
        start: Instant,
        shared: Shared<K>,
    ) -> Self {
        Self::sent(fut, deadline, start, None, shared)
    }

    /// A running call whose request carries a budget that runs out at `wire`.
    pub(crate) fn sent(
        fut: F,
        deadline: Option<Deadline>,
        start: Instant,
        wire: Option<Instant>,
        shared: Shared<K>,
    ) -> Self {
        ResponseFuture {
            state: State::Running {
                fut,
                sleep: Timer::new(),
                deadline,
                start,
                wire,
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

impl<F, T, E, K> Future for ResponseFuture<F, K>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    K: Classify<T, BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The fast path, small enough to inline: a deadline, and no duration to record (no
        // metrics, or counts only inside a stack that times the call once).
        if let StateProj::Running {
            fut,
            sleep,
            deadline: Some(d),
            start,
            wire,
            shared,
        } = self.as_mut().project().state.project()
            && !shared.records_durations()
        {
            let d = *d;
            if let Poll::Ready(res) = d.sync_scope_exact(|| fut.poll(cx)) {
                let res = match res {
                    Ok(res) => Ok(res),
                    Err(err) => match wire {
                        // The budget sent on the wire ran out: this layer's own timeout,
                        // counted where it is made.
                        Some(wire) => match wire_error(err.into(), *wire, *start, shared) {
                            Ok(exceeded) => return Poll::Ready(Err(exceeded)),
                            Err(err) => Err(err),
                        },
                        None => Err(err.into()),
                    },
                };
                // Counted only: nothing here reads the clock.
                shared.finished(&res, || Duration::ZERO);
                return Poll::Ready(res);
            }
            let err = ready!(poll_timer(sleep, d, *start, shared, cx));
            return self.expire(err);
        }
        self.poll_slow(cx)
    }
}

impl<F, K> ResponseFuture<F, K> {
    /// The deadline fired: drops the inner future now, inside [`cancel::drop_expired`], so the
    /// drop guards of inner layers (a breaker's) count a timeout rather than a caller who
    /// walked away; then fails with `err`.
    #[cold]
    #[inline(never)]
    fn expire<T>(self: Pin<&mut Self>, err: BoxError) -> Poll<Result<T, BoxError>> {
        /// Replaces the running state when dropped, that is inside `drop_expired`.
        struct Finish<'a, F, K>(Pin<&'a mut State<F, K>>);
        impl<F, K> Drop for Finish<'_, F, K> {
            fn drop(&mut self) {
                self.0.set(State::Failed { err: None });
            }
        }
        cancel::drop_expired(Finish(self.project().state));
        Poll::Ready(Err(err))
    }
}

/// `Ok` with this layer's counted rejection when `err` is the budget sent on the wire running
/// out, else `Err(err)` untouched.
#[cold]
#[inline(never)]
fn wire_error<K>(
    err: BoxError,
    wire: Instant,
    start: Instant,
    shared: &Shared<K>,
) -> Result<BoxError, BoxError> {
    let now = clock::now();
    if !spent_on_the_wire(&err, wire, now) {
        return Err(err);
    }
    tracing::debug!(
        error = %err,
        "the inner service failed once the budget sent with the request had run out"
    );
    Ok(shared.exceeded(Stage::Call, Some(now.saturating_duration_since(start))))
}

/// Whether `err`, seen at `now`, is the budget written on the request (`grpc-timeout`, or the
/// HTTP header) being enforced by the transport or the server: it came once that budget had
/// run out, and it is not an inner layer's own refusal. tonic's `Channel` enforces
/// `grpc-timeout` itself and fails with `tonic::TimeoutExpired` (which tonic maps to
/// `CANCELLED "Timeout expired"`), possibly before this layer's own timer fires; taken as
/// this layer's deadline passing, the caller sees `DEADLINE_EXCEEDED` whichever timer won.
fn spent_on_the_wire(err: &BoxError, wire: Instant, now: Instant) -> bool {
    now >= wire && tower_red::Rejection::find_in(err).is_none()
}

/// The inner future is not ready: arms the deadline's timer (once) and polls it; ready with
/// the rejection once it fires.
#[inline(never)]
fn poll_timer<K>(
    sleep: &mut Timer,
    deadline: Deadline,
    start: Instant,
    shared: &Shared<K>,
    cx: &mut Context<'_>,
) -> Poll<BoxError> {
    ready!(sleep.get_or_arm_with(|| deadline.sleep()).poll(cx));
    Poll::Ready(shared.exceeded(
        Stage::Call,
        Some(clock::now().saturating_duration_since(start)),
    ))
}

impl<F, T, E, K> ResponseFuture<F, K>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    K: Classify<T, BoxError>,
{
    /// Every other case: metrics on (the call's duration is recorded), no deadline, or a
    /// refusal.
    #[inline(never)]
    fn poll_slow(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, BoxError>> {
        let err = match self.as_mut().project().state.project() {
            StateProj::Running {
                fut,
                sleep,
                deadline,
                start,
                wire,
                shared,
            } => {
                // Only a layer that reads the clock here needs the shared clock scope; inner
                // layers that read it enter their own.
                let _scope = shared.records_durations().then(Scope::enter);
                let polled = match *deadline {
                    // Already bounded by the enclosing scope when the call was made.
                    Some(d) => d.sync_scope_exact(|| fut.poll(cx)),
                    None => fut.poll(cx),
                };
                if let Poll::Ready(res) = polled {
                    let res = match (res, *wire) {
                        (Err(err), Some(wire)) => {
                            match wire_error(err.into(), wire, *start, shared) {
                                // Counted as this layer's timeout.
                                Ok(exceeded) => return Poll::Ready(Err(exceeded)),
                                Err(err) => Err(err),
                            }
                        }
                        (res, _) => res.map_err(Into::into),
                    };
                    // Judged by the layer's classifier only here, when metrics are on.
                    shared.finished(&res, || clock::now().saturating_duration_since(*start));
                    return Poll::Ready(res);
                }
                let Some(d) = *deadline else {
                    return Poll::Pending;
                };
                ready!(poll_timer(sleep, d, *start, shared, cx))
            }
            StateProj::Failed { err } => {
                return Poll::Ready(Err(err.take().expect("polled after completion")));
            }
        };
        self.expire(err)
    }
}

impl<F, K> std::fmt::Debug for ResponseFuture<F, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
