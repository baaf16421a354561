//! [`ResponseFuture`]: the call holding its permit, or waiting in the queue for one.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_red::classify::{Classify, Verdict};
use tower_red::clock::{self, Scope};
use tower_red::red::Outcome;
use tower_red::{BoxError, cancel};
use tower_service::Service;
use tower_timeout_budget::Deadline;

use crate::body::Release;
use crate::error::Reason;
use crate::partition::{PartitionState, Permit, Signal, Waiter};

/// Whether a call with `deadline` cannot be served in time: the deadline has passed, or (with
/// deadline-aware shedding) no more time is left than the partition's recent service time,
/// so a call starting now could not end before the deadline.
pub(crate) fn doomed(part: &PartitionState, deadline: Option<Deadline>, now: Instant) -> bool {
    let Some(deadline) = deadline else {
        return false;
    };
    let remaining = deadline.remaining_at(now);
    remaining.is_zero()
        || (part.shed_on_deadline && part.service_time().is_some_and(|s| remaining <= s))
}

pin_project! {
    /// The future of a [`Bulkhead`](crate::Bulkhead) call.
    ///
    /// Dropping it at any point gives back its permit or its place in the queue at once. A
    /// running call dropped by a deadline enforcer above (inside
    /// [`tower_red::cancel::drop_expired`]) is a timeout for the adaptive limit, and the time
    /// it ran feeds the service-time estimate as a lower bound of its service time; a call its
    /// caller dropped earlier feeds neither. Both are `cancelled` in the bulkhead's RED series
    /// (the enforcer counts the `timeout`).
    pub struct ResponseFuture<F, S, Req, H, C> {
        #[pin]
        state: State<F, S, Req>,
        permit: PermitSlot,
        // When the call reached the bulkhead, if its partition times calls.
        start: Option<Instant>,
        // When a queued call got its permit.
        served: Option<Instant>,
        classifier: C,
        _release: PhantomData<fn() -> H>,
    }

    impl<F, S, Req, H, C> PinnedDrop for ResponseFuture<F, S, Req, H, C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A call that reached the bulkhead and never finished was cancelled.
            let part = match (this.permit.0.as_ref(), this.state.project()) {
                (Some(permit), _) => Some((permit.partition(), true)),
                (None, StateProj::Queued { queued }) => {
                    Some((&**queued.waiter.partition(), false))
                }
                _ => None,
            };
            if let Some((part, running)) = part {
                match *this.start {
                    Some(start) => dropped(part, running, start, *this.served),
                    None => dropped_untimed(part),
                }
            }
        }
    }
}

/// Accounts for a timed call dropped before it finished; `running` when it held its permit.
#[cold]
fn dropped(part: &PartitionState, running: bool, start: Instant, served: Option<Instant>) {
    // Cut off by its deadline while the backend worked on it: the backend was too slow.
    let timed_out = running && part.observes() && cancel::expired();
    let recording = part.metrics.as_ref().filter(|m| m.is_recording());
    if !timed_out && recording.is_none() {
        return;
    }
    let now = clock::now();
    if let Some(m) = recording {
        m.red
            .record(Outcome::Cancelled, now.saturating_duration_since(start));
    }
    if timed_out {
        // The time it ran is a lower bound of its service time.
        let ran = now.saturating_duration_since(served.unwrap_or(start));
        part.observe(ran, Signal::Drop);
    }
}

/// Counts an untimed call dropped before it finished: its partition records no duration
/// (handles registered inside [`tower_red::red::counts_only`]) and needs no time of its own.
#[cold]
fn dropped_untimed(part: &PartitionState) {
    if let Some(m) = part.metrics.as_ref().filter(|m| m.is_recording()) {
        m.red.record(Outcome::Cancelled, Duration::ZERO);
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, Req> {
        Called { #[pin] fut: F },
        Queued { queued: Pin<Box<Queued<S, Req>>> },
        Done { err: Option<BoxError> },
    }
}

pin_project! {
    struct Queued<S, Req> {
        #[pin]
        sleep: Sleep,
        waiter: Waiter,
        inner: Option<S>,
        req: Option<Req>,
        enqueued: Instant,
        wait_end: Instant,
        deadline: Option<Deadline>,
    }
}

impl<F, S, Req, H, C> fmt::Debug for ResponseFuture<F, S, Req, H, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Queued { .. } => "queued",
            State::Done { .. } => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<F, S, Req, H, C> ResponseFuture<F, S, Req, H, C> {
    #[inline]
    pub(crate) fn called(fut: F, permit: Permit, start: Option<Instant>, classifier: C) -> Self {
        ResponseFuture {
            state: State::Called { fut },
            permit: PermitSlot(ManuallyDrop::new(Some(permit))),
            start,
            served: None,
            classifier,
            _release: PhantomData,
        }
    }

    pub(crate) fn rejected(err: BoxError, classifier: C) -> Self {
        ResponseFuture {
            state: State::Done { err: Some(err) },
            permit: PermitSlot(ManuallyDrop::new(None)),
            start: None,
            served: None,
            classifier,
            _release: PhantomData,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn queued(
        waiter: Waiter,
        inner: S,
        req: Req,
        now: Instant,
        wait_end: Instant,
        deadline: Option<Deadline>,
        timed: bool,
        classifier: C,
    ) -> Self {
        let wake = wake_at(waiter.partition(), wait_end, deadline);
        ResponseFuture {
            state: State::Queued {
                queued: Box::pin(Queued {
                    sleep: tokio::time::sleep_until(wake),
                    waiter,
                    inner: Some(inner),
                    req: Some(req),
                    enqueued: now,
                    wait_end,
                    deadline,
                }),
            },
            permit: PermitSlot(ManuallyDrop::new(None)),
            start: timed.then_some(now),
            served: None,
            classifier,
            _release: PhantomData,
        }
    }
}

/// A call's permit, if it holds one. Dropping an empty slot (the usual case: the permit goes
/// when the response arrives) is one inlined check; only a held permit takes the out-of-line
/// release.
struct PermitSlot(ManuallyDrop<Option<Permit>>);

impl Drop for PermitSlot {
    #[inline]
    fn drop(&mut self) {
        if self.0.is_some() {
            self.release();
        }
    }
}

impl PermitSlot {
    #[cold]
    #[inline(never)]
    fn release(&mut self) {
        drop(ManuallyDrop::into_inner(std::mem::replace(
            &mut self.0,
            ManuallyDrop::new(None),
        )));
    }
}

/// When a queued call must next check whether it should give up.
fn wake_at(part: &PartitionState, wait_end: Instant, deadline: Option<Deadline>) -> Instant {
    let Some(deadline) = deadline else {
        return wait_end;
    };
    let mut at = wait_end.min(deadline.instant());
    if part.shed_on_deadline
        && let Some(shed_at) = part
            .service_time()
            .and_then(|s| deadline.instant().checked_sub(s))
    {
        at = at.min(shed_at);
    }
    at
}

type Granted<S, Req> = (Permit, S, Req, Instant);

impl<S, Req> Queued<S, Req> {
    /// Ready with the permit and the call's parts once granted, or with the rejection.
    fn poll_permit(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Granted<S, Req>, BoxError>> {
        let mut this = self.project();
        loop {
            let timer = this.sleep.deadline();
            if let Poll::Ready(permit) = this.waiter.poll_granted(Some(timer), cx) {
                return Poll::Ready(Self::granted(
                    this.waiter,
                    permit,
                    this.inner,
                    this.req,
                    *this.enqueued,
                    *this.deadline,
                ));
            }
            // A finished call may have grown the service-time estimate, moving the shed point
            // before the timer. Read after the queue's lock: a call that grew it earlier is
            // seen here, a later one sees the timer just registered and wakes us.
            let at = wake_at(this.waiter.partition(), *this.wait_end, *this.deadline);
            if at < timer {
                // Fires at once, on the next pass, if `at` has passed.
                this.sleep.as_mut().reset(at);
                continue;
            }
            ready!(this.sleep.as_mut().poll(cx));
            // A fired timer means its instant has come, even when the shared clock reading is
            // older (an outer layer read it earlier in this poll, or on a thread that ran
            // before the timer's); a timer re-armed for an instant already due fires at once,
            // so trusting the older reading spun here.
            let now = clock::now().max(this.sleep.deadline());
            let part = this.waiter.partition();
            let reason = if now >= *this.wait_end {
                Reason::QueueTimeout
            } else if doomed(part, *this.deadline, now) {
                Reason::Deadline
            } else {
                // The service time shrank since the timer was set: look again later.
                let at = wake_at(part, *this.wait_end, *this.deadline);
                this.sleep.as_mut().reset(at.max(now));
                continue;
            };
            return Poll::Ready(match this.waiter.cancel() {
                // Granted just as we gave up: the permit is ours, use it.
                Some(permit) => Self::granted(
                    this.waiter,
                    permit,
                    this.inner,
                    this.req,
                    *this.enqueued,
                    *this.deadline,
                ),
                None => {
                    let part = this.waiter.partition();
                    let waited = now.saturating_duration_since(*this.enqueued);
                    part.record_queue_wait(waited);
                    Err(part.reject(reason, Some(waited)))
                }
            });
        }
    }

    fn granted(
        waiter: &Waiter,
        permit: Permit,
        inner: &mut Option<S>,
        req: &mut Option<Req>,
        enqueued: Instant,
        deadline: Option<Deadline>,
    ) -> Result<Granted<S, Req>, BoxError> {
        let now = clock::now();
        let part = waiter.partition();
        let waited = now.saturating_duration_since(enqueued);
        part.record_queue_wait(waited);
        if doomed(part, deadline, now) {
            drop(permit);
            return Err(part.reject(Reason::Deadline, Some(waited)));
        }
        let inner = inner.take().expect("polled after completion");
        let req = req.take().expect("polled after completion");
        Ok((permit, inner, req, now))
    }
}

impl<S, Req, H, C> Future for ResponseFuture<S::Future, S, Req, H, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    H: Release<S::Response>,
    C: Classify<S::Response, BoxError>,
{
    type Output = Result<H::Output, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The fast path, small enough to inline: a call holding its permit.
        let this = self.as_mut().project();
        if let StateProj::Called { fut } = this.state.project() {
            // A timed call shares one clock read with the layers it polls.
            let _scope = this.start.is_some().then(Scope::enter);
            let result = ready!(fut.poll(cx));
            return Poll::Ready(Self::finish(
                result,
                &mut this.permit.0,
                this.start,
                *this.served,
                this.classifier,
            ));
        }
        self.poll_queued_or_done(cx)
    }
}

impl<S, Req, H, C> ResponseFuture<S::Future, S, Req, H, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    H: Release<S::Response>,
    C: Classify<S::Response, BoxError>,
{
    /// The call's result, with the permit released (or attached to the response).
    #[inline]
    fn finish(
        result: Result<S::Response, S::Error>,
        permit: &mut Option<Permit>,
        start: &mut Option<Instant>,
        served: Option<Instant>,
        classifier: &C,
    ) -> Result<H::Output, BoxError> {
        let permit = permit.take().expect("polled after completion");
        let result = result.map_err(Into::into);
        match start.take() {
            Some(start) => judged(&permit, &result, classifier, start, served),
            None => counted(&permit, &result, classifier),
        }
        match result {
            Ok(res) => Ok(H::attach(res, permit)),
            Err(err) => Err(err),
        }
    }

    /// The slow path: waiting in the queue, then the call; or the refusal.
    #[inline(never)]
    fn poll_queued_or_done(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H::Output, BoxError>> {
        let _scope = Scope::enter();
        let mut this = self.project();
        loop {
            let (permit, mut inner, req, now) = match this.state.as_mut().project() {
                StateProj::Called { fut } => {
                    let result = ready!(fut.poll(cx));
                    return Poll::Ready(Self::finish(
                        result,
                        &mut this.permit.0,
                        this.start,
                        *this.served,
                        this.classifier,
                    ));
                }
                StateProj::Done { err } => {
                    return Poll::Ready(Err(err.take().expect("polled after completion")));
                }
                StateProj::Queued { queued } => match ready!(queued.as_mut().poll_permit(cx)) {
                    Ok(granted) => granted,
                    Err(err) => {
                        *this.start = None;
                        this.state.set(State::Done { err: None });
                        return Poll::Ready(Err(err));
                    }
                },
            };
            *this.permit.0 = Some(permit);
            *this.served = Some(now);
            let fut = inner.call(req);
            this.state.set(State::Called { fut });
        }
    }
}

/// Counts an untimed call's verdict when its partition's handles record counters but no
/// duration (registered inside [`tower_red::red::counts_only`]): no clock read.
#[inline]
fn counted<T, C: Classify<T, BoxError>>(
    permit: &Permit,
    result: &Result<T, BoxError>,
    classifier: &C,
) {
    let part = permit.partition();
    if let Some(m) = part.metrics.as_ref().filter(|m| m.is_recording()) {
        let verdict = tower_red::judge(classifier, result);
        m.red
            .record(Outcome::judged(verdict, result), Duration::ZERO);
    }
}

/// Records a timed call's verdict: RED by [`Outcome::judged`], and, for a call that reached
/// the backend, its service time and AIMD signal. A refusal of an inner layer (an open breaker
/// below) feeds neither: it says nothing about the backend.
#[inline]
fn judged<T, C: Classify<T, BoxError>>(
    permit: &Permit,
    result: &Result<T, BoxError>,
    classifier: &C,
    start: Instant,
    served: Option<Instant>,
) {
    let part = permit.partition();
    let verdict = tower_red::judge(classifier, result);
    let now = clock::now();
    if let Some(m) = &part.metrics {
        m.red.record(
            Outcome::judged(verdict, result),
            now.saturating_duration_since(start),
        );
    }
    if part.observes() {
        let signal = match verdict {
            Verdict::Success => Signal::Success,
            Verdict::Failure(_) => Signal::Drop,
            Verdict::Ignored => Signal::Neutral,
            Verdict::Refused(_) => return,
        };
        part.observe(
            now.saturating_duration_since(served.unwrap_or(start)),
            signal,
        );
    }
}
