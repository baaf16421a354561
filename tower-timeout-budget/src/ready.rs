//! Enforcing the deadline while waiting in `poll_ready` (tower #648).
//!
//! `poll_ready` has no request, so the request's own deadline is unknown there. The clock starts
//! at the first `poll_ready` since the last `call` that finds the inner service *not* ready (an
//! inner service that is ready at once costs no clock read and no timer). From then on the wait
//! is bounded by the task-local deadline ([`Deadline::current`]) and by the layer's readiness
//! limit, with one timer armed for the whole wait. When it fires, `poll_ready` returns `Ready`
//! and the next `call` fails with [`Stage::Ready`](crate::Stage::Ready) without calling the inner
//! service (fail-fast refusals come from `call`, never from `poll_ready`). When the inner service
//! becomes ready in time, the request's deadline is counted from the start of the wait; idle time
//! between readiness and `call` (a ready cache such as `tower::balance` keeps ready services for
//! later) is not charged to the request. A service that stops being ready again before a `call`
//! starts a new wait at that `Pending`: every wait since the last `call` is charged and bounded
//! by the limit together, and the idle time between them is not.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::Deadline;

/// The readiness-wait state of one service instance; a clone starts fresh.
#[derive(Debug, Default)]
pub(crate) struct ReadyWait {
    /// When the waits since the last `call` began, as if there had been no idle time between
    /// them: the current wait's start minus the time waited before it.
    since: Option<Instant>,
    /// How long the waits since the last `call` lasted, once the last one ended.
    waited: Option<Duration>,
    // Boxed: only allocated when a wait actually happens, and keeps the service `Unpin`.
    timer: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl ReadyWait {
    /// Whether the wait already ran out (the next `call` must fail).
    #[inline]
    pub(crate) fn expired(&self) -> bool {
        self.expired
    }

    /// Folds in the inner service's readiness; `limit` bounds the time waited since the last
    /// `call`.
    #[inline]
    pub(crate) fn after_poll<E>(
        &mut self,
        cx: &mut Context<'_>,
        inner: Poll<Result<(), E>>,
        limit: Option<Duration>,
    ) -> Poll<Result<(), E>> {
        match inner {
            Poll::Ready(Ok(())) => {
                if let Some(since) = self.since
                    && self.waited.is_none()
                {
                    self.end_wait(since);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                *self = ReadyWait::default();
                Poll::Ready(Err(e))
            }
            Poll::Pending => self.wait(cx, limit),
        }
    }

    #[cold]
    fn wait<E>(&mut self, cx: &mut Context<'_>, limit: Option<Duration>) -> Poll<Result<(), E>> {
        let since = match (self.since, self.waited.take()) {
            (Some(since), None) => since,
            // Ready after an earlier wait, never called, and not ready again: a new wait from
            // now, carried on from what was waited before (the idle time is not charged).
            (Some(_), Some(waited)) => {
                let now = Instant::now();
                *self.since.insert(now.checked_sub(waited).unwrap_or(now))
            }
            (None, _) => *self.since.insert(Instant::now()),
        };
        if self.timer.is_none() {
            let own = limit.map(|limit| Deadline::after_from(since, limit));
            let bound = match (Deadline::current(), own) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(d) => d,
                    None => return Poll::Pending,
                },
            };
            self.timer = Some(Box::pin(bound.sleep()));
        }
        if let Some(timer) = self.timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            self.end_wait(since);
            self.expired = true;
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    #[cold]
    fn end_wait(&mut self, since: Instant) {
        self.waited = Some(Instant::now().saturating_duration_since(since));
        self.timer = None;
    }

    /// Taken by `call` at `now`: when the request's budget started (`now` minus the time spent
    /// waiting, if the service was ever not ready) and whether the wait ran out. Resets the
    /// state for the next request.
    #[inline]
    pub(crate) fn take(&mut self, now: Instant) -> (Option<Instant>, bool) {
        let Some(since) = self.since.take() else {
            return (None, false);
        };
        let start = match self.waited.take() {
            Some(waited) => now.checked_sub(waited).unwrap_or(since),
            // Called without a `Ready` after the wait: charge it all.
            None => since,
        };
        self.timer = None;
        (Some(start), std::mem::take(&mut self.expired))
    }
}
