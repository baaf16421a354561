//! The retry loop: [`ResponseFuture`], a state machine that runs an attempt, judges it, sleeps
//! the backoff, readies the service again and sends the next copy; and [`BufferedFuture`],
//! which first reads a request body into memory.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rand::rngs::SmallRng;
use tokio::time::{Instant, Sleep};
use tower_red::body::{Buffered as Collected, Collect, Collected as Body};
use tower_red::classify::{Classify, FailureClass, Verdict, judge, refusal_of};
use tower_red::clock::{self, Scope};
use tower_red::red::Outcome;
use tower_red::{BoxError, Rejection, RejectionKind};
use tower_service::Service;
use tower_timeout_budget::Deadline;

use crate::metrics::{Reason, StopReason};
use crate::policy::{Decision, Failure, RetryState, Stop};
use crate::pushback::Pushback;
use crate::replay::{ReplayRequest, RetryBody};
use crate::retry_on::ReadPushback;
use crate::service::Shared;

/// How the retry loop gets each retry's request.
pub trait Copies<Req> {
    /// The request of attempt `attempt` (2 or more); `last` when no attempt can follow it
    /// (the original may then be moved instead of copied). `None` when no copy can be made.
    fn next(&mut self, attempt: u32, last: bool) -> Option<Req>;
}

/// The copy of a request made before its first attempt, the [`ReplayRequest`] that copies it
/// again for each retry but the last, and how each attempt is marked
/// ([`RetrySafety::mark_attempt`](crate::RetrySafety::mark_attempt)).
pub struct Backup<Req, R> {
    req: Option<Req>,
    replay: R,
    mark: fn(&mut Req, u32),
}

impl<Req, R: fmt::Debug> fmt::Debug for Backup<Req, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backup")
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

impl<Req, R> Backup<Req, R> {
    pub(crate) fn new(req: Req, replay: R, mark: fn(&mut Req, u32)) -> Self {
        Backup {
            req: Some(req),
            replay,
            mark,
        }
    }
}

impl<Req, R: ReplayRequest<Req>> Copies<Req> for Backup<Req, R> {
    #[inline]
    fn next(&mut self, attempt: u32, last: bool) -> Option<Req> {
        let mut req = if last {
            self.req.take()
        } else {
            self.replay.replay(self.req.as_ref()?)
        }?;
        (self.mark)(&mut req, attempt);
        Some(req)
    }
}

/// A buffered request: its head and its whole body, replayed for every attempt.
#[derive(Debug)]
pub struct Buffered {
    parts: http::request::Parts,
    body: Body,
}

impl Buffered {
    /// Attempt `attempt` of the request, marked with its attempt headers
    /// ([`write_attempt`](crate::attempt::write_attempt)).
    fn request<B>(&self, attempt: u32) -> http::Request<RetryBody<B>> {
        let mut parts = self.parts.clone();
        if attempt > 1 {
            // The first attempt's headers were cleaned when the request arrived.
            crate::attempt::write_attempt(&mut parts.headers, attempt);
        }
        http::Request::from_parts(parts, RetryBody::replay(self.body.body()))
    }
}

impl<B> Copies<http::Request<RetryBody<B>>> for Buffered {
    #[inline]
    fn next(&mut self, attempt: u32, _last: bool) -> Option<http::Request<RetryBody<B>>> {
        Some(self.request(attempt))
    }
}

/// When a request started, and its deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    /// The start of the whole call, for its RED duration (`None` when not recording).
    pub(crate) red: Option<Instant>,
    /// The start of the current attempt (`None` when nothing needs its latency).
    pub(crate) attempt: Option<Instant>,
    pub(crate) deadline: Option<Deadline>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Attempt,
    Backoff,
    Ready,
}

/// Everything a request that may be retried carries between attempts.
pub(crate) struct Retrying<S, Req, K> {
    svc: S,
    copies: K,
    next: Option<Req>,
    state: RetryState,
    rng: Option<SmallRng>,
    phase: Phase,
}

impl<S, Req, K> Retrying<S, Req, K> {
    pub(crate) fn new(svc: S, copies: K) -> Self {
        Retrying {
            svc,
            copies,
            next: None,
            state: RetryState::new(),
            rng: None,
            phase: Phase::Attempt,
        }
    }
}

/// The result of one attempt.
enum Attempted<T, E> {
    Done(Result<T, E>),
    TimedOut,
}

pin_project_lite::pin_project! {
    /// The future of [`Retry`](crate::Retry): the retry loop of one request.
    ///
    /// Dropping it at any point (mid-attempt, mid-backoff) drops the attempt in flight, the
    /// timer and the copies; nothing outlives it. A dropped future is counted as
    /// `cancelled` in the RED series (`timeout` when a deadline enforcer outside dropped it,
    /// see [`tower_red::cancel`]). An attempt cut by the attempt timeout is dropped with the
    /// deadline mark, so the layers inside count a timeout.
    pub struct ResponseFuture<S, Req, C, K>
    where
        S: Service<Req>,
    {
        #[pin]
        attempt: Option<S::Future>,
        retry: Option<Retrying<S, Req, K>>,
        shared: Option<Arc<Shared>>,
        classifier: C,
        start: Start,
        refused: Option<StopReason>,
        timer: Option<Pin<Box<Sleep>>>,
        armed: bool,
        done: bool,
    }

    impl<S, Req, C, K> PinnedDrop for ResponseFuture<S, Req, C, K>
    where
        S: Service<Req>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done
                && let (Some(shared), Some(start)) = (this.shared.as_ref(), this.start.red)
            {
                let _scope = Scope::enter();
                // Dropped by a deadline enforcer outside: out of time; else the caller left.
                let outcome = if tower_red::cancel::expired() {
                    Outcome::Timeout
                } else {
                    Outcome::Cancelled
                };
                shared
                    .metrics
                    .red
                    .record(outcome, clock::now().saturating_duration_since(start));
            }
        }
    }
}

impl<S, Req, C, K> fmt::Debug for ResponseFuture<S, Req, C, K>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field(
                "attempts",
                &self.retry.as_ref().map_or(1, |r| r.state.attempts()),
            )
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, K> ResponseFuture<S, Req, C, K>
where
    S: Service<Req>,
{
    pub(crate) fn new(
        attempt: S::Future,
        retry: Option<Retrying<S, Req, K>>,
        shared: Option<Arc<Shared>>,
        classifier: C,
        start: Start,
        refused: Option<StopReason>,
    ) -> Self {
        ResponseFuture {
            attempt: Some(attempt),
            retry,
            shared,
            classifier,
            start,
            refused,
            timer: None,
            armed: false,
            done: false,
        }
    }
}

/// Runs its closure when dropped.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Sets `timer` to fire at `at`, reusing its allocation.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant) -> Pin<&mut Sleep> {
    match timer {
        Some(sleep) => {
            sleep.as_mut().reset(at);
            sleep.as_mut()
        }
        None => timer
            .insert(Box::pin(tokio::time::sleep_until(at)))
            .as_mut(),
    }
}

fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by)
        .unwrap_or_else(|| now + tower_red::clock::NEVER)
}

impl<S, Req, C, K> Future for ResponseFuture<S, Req, C, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + ReadPushback<S::Response>,
    K: Copies<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _scope = Scope::enter();
        let mut this = self.project();
        loop {
            if let Some(fut) = this.attempt.as_mut().as_pin_mut() {
                let attempted = match fut.poll(cx) {
                    Poll::Ready(result) => Attempted::Done(result),
                    Poll::Pending => {
                        let Some(limit) = this.shared.as_ref().and_then(|s| s.attempt_timeout)
                        else {
                            return Poll::Pending;
                        };
                        // Armed only once the attempt is pending: an answer ready at once
                        // costs no timer.
                        let timer = if *this.armed {
                            this.timer.as_mut().expect("armed").as_mut()
                        } else {
                            *this.armed = true;
                            let mut at = later(clock::now(), limit);
                            if let Some(deadline) = this.start.deadline {
                                at = at.min(deadline.instant());
                            }
                            arm(this.timer, at)
                        };
                        ready!(timer.poll(cx));
                        Attempted::TimedOut
                    }
                };
                if matches!(attempted, Attempted::TimedOut) {
                    // Dropped at its deadline: the layers inside count a timeout, not a caller
                    // that went away (see `tower_red::cancel`).
                    let attempt = &mut this.attempt;
                    tower_red::cancel::drop_expired(OnDrop(Some(|| attempt.set(None))));
                } else {
                    this.attempt.set(None);
                }
                *this.armed = false;
                let Some(shared) = this.shared.as_ref() else {
                    // Nothing to judge, count or retry: the passthrough path.
                    *this.done = true;
                    return Poll::Ready(output(attempted, shared_name(None)));
                };
                let verdict = match &attempted {
                    Attempted::Done(result) => judge(&*this.classifier, result),
                    Attempted::TimedOut => Verdict::Failure(FailureClass::Timeout),
                };
                if this.retry.is_some()
                    && let Some(budget) = shared.policy.budget()
                {
                    match verdict {
                        Verdict::Success => budget.record_success(),
                        Verdict::Failure(class) => budget.record_failure(class),
                        Verdict::Ignored | Verdict::Refused(_) => {}
                    }
                }
                let retryable = match verdict {
                    Verdict::Failure(class) => Some((class, Reason::of(class))),
                    Verdict::Refused(_) if shared.retry_refusals => {
                        Some((FailureClass::Error, Reason::Refused))
                    }
                    _ => None,
                };
                let mut outcome = match &attempted {
                    Attempted::Done(result) => Outcome::judged(verdict, result),
                    Attempted::TimedOut => Outcome::Timeout,
                };
                let Some((class, reason)) = retryable else {
                    return Poll::Ready(finish(
                        shared, this.start, this.retry, this.done, attempted, outcome,
                    ));
                };
                let Some(retry) = this.retry.as_mut() else {
                    if let Some(why) = *this.refused {
                        shared.metrics.stopped(why);
                    }
                    return Poll::Ready(finish(
                        shared, this.start, this.retry, this.done, attempted, outcome,
                    ));
                };
                let now = clock::now();
                let latency = this
                    .start
                    .attempt
                    .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                let pushback = match &attempted {
                    Attempted::Done(Ok(res)) => this.classifier.pushback(res),
                    Attempted::Done(Err(err)) => refusal_of(err)
                        .and_then(Rejection::retry_after)
                        .map_or(Pushback::Absent, Pushback::Delay),
                    Attempted::TimedOut => Pushback::Absent,
                };
                let failure = Failure::new(class)
                    .with_pushback(pushback)
                    .with_latency(latency);
                let rng = retry.rng.get_or_insert_with(|| shared.policy.rng());
                let decision =
                    shared
                        .policy
                        .decide(&mut retry.state, failure, now, this.start.deadline, rng);
                let budget = shared.policy.budget();
                let stop = match decision {
                    Decision::Retry(delay) => {
                        let attempt = retry.state.attempts();
                        let last = attempt >= shared.policy.max_attempts();
                        match retry.copies.next(attempt, last) {
                            Some(req) => {
                                retry.next = Some(req);
                                shared.metrics.retried(reason);
                                if let Some(budget) = budget {
                                    shared.metrics.balance(budget.balance(now));
                                }
                                tracing::debug!(
                                    name = &*shared.name,
                                    attempt = retry.state.attempts(),
                                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                                    reason = reason.as_str(),
                                    "retrying"
                                );
                                if delay.is_zero() {
                                    retry.phase = Phase::Ready;
                                } else {
                                    arm(this.timer, later(now, delay));
                                    retry.phase = Phase::Backoff;
                                }
                                None
                            }
                            None => Some(StopReason::NotReplayable),
                        }
                    }
                    Decision::Stop(stop) => {
                        if stop == Stop::Pushback {
                            // Told not to retry: a server serving this task hears of it.
                            crate::attempt::note_dont_retry();
                        }
                        if stop == Stop::Budget {
                            outcome = Outcome::BudgetExhausted;
                            if let Some(budget) = budget {
                                shared.metrics.balance(budget.balance(now));
                            }
                        }
                        Some(StopReason::Policy(stop))
                    }
                };
                if let Some(why) = stop {
                    shared.metrics.stopped(why);
                    tracing::debug!(
                        name = &*shared.name,
                        attempt = retry.state.attempts(),
                        reason = why.as_str(),
                        "not retried"
                    );
                    return Poll::Ready(finish(
                        shared, this.start, this.retry, this.done, attempted, outcome,
                    ));
                }
            }
            let retry = this
                .retry
                .as_mut()
                .expect("between attempts only while retrying");
            match retry.phase {
                Phase::Backoff => {
                    let timer = this.timer.as_mut().expect("a backoff timer");
                    ready!(timer.as_mut().poll(cx));
                    retry.phase = Phase::Ready;
                }
                Phase::Ready | Phase::Attempt => {
                    if let Err(err) = ready!(retry.svc.poll_ready(cx)) {
                        let shared = this.shared.as_ref().expect("shared while retrying");
                        let err: BoxError = err.into();
                        let outcome = Outcome::from_error(&*err);
                        return Poll::Ready(finish(
                            shared,
                            this.start,
                            this.retry,
                            this.done,
                            Attempted::<S::Response, BoxError>::Done(Err(err)),
                            outcome,
                        ));
                    }
                    let req = retry
                        .next
                        .take()
                        .expect("a copy is made when a retry is decided");
                    this.attempt.set(Some(retry.svc.call(req)));
                    if this.start.attempt.is_some() {
                        this.start.attempt = Some(clock::now());
                    }
                    retry.phase = Phase::Attempt;
                }
            }
        }
    }
}

fn shared_name(shared: Option<&Shared>) -> Option<Arc<str>> {
    shared.map(|s| s.name.clone())
}

/// The caller's result of an attempt: its own, or the timeout of an attempt.
fn output<T, E: Into<BoxError>>(
    attempted: Attempted<T, E>,
    name: Option<Arc<str>>,
) -> Result<T, BoxError> {
    match attempted {
        Attempted::Done(result) => result.map_err(Into::into),
        Attempted::TimedOut => {
            let mut rejection = Rejection::new(RejectionKind::DeadlineExceeded)
                .with_reason("call")
                .with_detail("a retry attempt ran out of time");
            if let Some(name) = name {
                rejection = rejection.with_name(name);
            }
            Err(rejection.into())
        }
    }
}

/// Ends the loop: records the call and hands back the last attempt's result as it was.
fn finish<T, E: Into<BoxError>, S, Req, K>(
    shared: &Shared,
    start: &Start,
    retry: &Option<Retrying<S, Req, K>>,
    done: &mut bool,
    attempted: Attempted<T, E>,
    outcome: Outcome,
) -> Result<T, BoxError> {
    *done = true;
    if let Some(at) = start.red {
        let metrics = &shared.metrics;
        metrics
            .red
            .record(outcome, clock::now().saturating_duration_since(at));
        metrics.attempts(retry.as_ref().map_or(1, |r| r.state.attempts()));
    }
    output(attempted, Some(shared.name.clone()))
}

pin_project_lite::pin_project! {
    /// The future of a [`Retry`](crate::Retry) built with
    /// [`buffer_body`](crate::config::RetryLayerBuilder::buffer_body): reads the request body
    /// (up to the cap), then runs the retry loop.
    pub struct BufferedFuture<S, B, C>
    where
        S: Service<http::Request<RetryBody<B>>>,
    {
        #[pin]
        state: BufState<S, B, C>,
    }
}

pin_project_lite::pin_project! {
    #[project = BufStateProj]
    enum BufState<S, B, C>
    where
        S: Service<http::Request<RetryBody<B>>>,
    {
        Collecting {
            collect: Collect<B>,
            job: Option<Job<S, C>>,
        },
        Running {
            #[pin]
            fut: ResponseFuture<S, http::Request<RetryBody<B>>, C, Buffered>,
        },
    }
}

/// What a request waiting for its body holds.
struct Job<S, C> {
    svc: S,
    parts: http::request::Parts,
    shared: Arc<Shared>,
    classifier: C,
    start: Start,
}

impl<S, B, C> fmt::Debug for BufferedFuture<S, B, C>
where
    S: Service<http::Request<RetryBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferedFuture").finish_non_exhaustive()
    }
}

impl<S, B, C> BufferedFuture<S, B, C>
where
    S: Service<http::Request<RetryBody<B>>>,
    B: http_body::Body + Unpin,
{
    pub(crate) fn running(
        fut: ResponseFuture<S, http::Request<RetryBody<B>>, C, Buffered>,
    ) -> Self {
        BufferedFuture {
            state: BufState::Running { fut },
        }
    }

    pub(crate) fn collecting(
        svc: S,
        req: http::Request<B>,
        limit: usize,
        shared: Arc<Shared>,
        classifier: C,
        start: Start,
    ) -> Self {
        let (parts, body) = req.into_parts();
        BufferedFuture {
            state: BufState::Collecting {
                collect: tower_red::body::collect(body, limit),
                job: Some(Job {
                    svc,
                    parts,
                    shared,
                    classifier,
                    start,
                }),
            },
        }
    }
}

impl<S, B, C> Future for BufferedFuture<S, B, C>
where
    S: Service<http::Request<RetryBody<B>>> + Clone,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + ReadPushback<S::Response>,
    B: http_body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let running = match state.as_mut().project() {
                BufStateProj::Running { fut } => return fut.poll(cx),
                BufStateProj::Collecting { collect, job } => {
                    let _scope = Scope::enter();
                    let collected = ready!(Pin::new(collect).poll(cx));
                    let Job {
                        mut svc,
                        parts,
                        shared,
                        classifier,
                        mut start,
                    } = job.take().expect("polled after completion");
                    if start.attempt.is_some() {
                        start.attempt = Some(clock::now());
                    }
                    match collected {
                        Err(err) => {
                            let err: BoxError = err.into();
                            if let Some(at) = start.red {
                                shared.metrics.red.record(
                                    Outcome::Error,
                                    clock::now().saturating_duration_since(at),
                                );
                            }
                            return Poll::Ready(Err(err));
                        }
                        Ok(Collected::Complete(body)) => {
                            let buffered = Buffered { parts, body };
                            let fut = svc.call(buffered.request(1));
                            let retry = Retrying::new(svc, buffered);
                            ResponseFuture::new(
                                fut,
                                Some(retry),
                                Some(shared),
                                classifier,
                                start,
                                None,
                            )
                        }
                        Ok(Collected::Overflow(rest)) => {
                            shared.metrics.overflowed();
                            let fut = svc
                                .call(http::Request::from_parts(parts, RetryBody::overflow(rest)));
                            ResponseFuture::new(
                                fut,
                                None,
                                Some(shared),
                                classifier,
                                start,
                                Some(StopReason::NotReplayable),
                            )
                        }
                    }
                }
            };
            state.set(BufState::Running { fut: running });
        }
    }
}
