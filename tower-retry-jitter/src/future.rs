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
use tokio::time::Instant;
use tower_red::body::{Buffered as Collected, Collect, Collected as Body};
use tower_red::classify::{Classify, FailureClass, Verdict, judge, refusal_of};
use tower_red::clock::{self, Scope};
use tower_red::red::Outcome;
use tower_red::timer::Timer;
use tower_red::{BoxError, Rejection, RejectionKind};
use tower_service::Service;
use tower_timeout_budget::Deadline;

use crate::metrics::{Reason, StopReason};
use crate::policy::{Decision, Failure, RetryState, Stop};
use crate::pushback::Pushback;
use crate::replay::{ReplayRequest, RetryBody};
use crate::retry_on::ReadPushback;
use crate::service::{Shared, Spare};

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
    /// The layer's spare copy of the inner service, cloned when a retry is decided.
    spare: Arc<Spare<S>>,
    copies: K,
    /// The loop's own state, made when the first attempt fails: a call whose first attempt
    /// succeeds writes one tag for it. Boxed: it holds a second request (the next attempt's)
    /// and the service the retries go through, and every layer above moves this future by
    /// value when its `call` returns, so keeping them inline made every call of the stack copy
    /// hundreds of bytes more at each level to save one allocation on the path that already
    /// failed once.
    looping: Option<Box<Looping<S, Req>>>,
}

/// The state of a request's retries, from its first failure on.
struct Looping<S, Req> {
    next: Option<Req>,
    /// The service the retries are sent through, cloned from the spare at the first retry.
    svc: Option<S>,
    state: RetryState,
    rng: SmallRng,
    phase: Phase,
    /// The retry the budget paid for (the class it was paid for, and when) while it is not
    /// yet sent: given back if it never is.
    paid: Option<(FailureClass, Instant)>,
}

impl<S, Req, K> Retrying<S, Req, K> {
    pub(crate) fn new(spare: Arc<Spare<S>>, copies: K) -> Self {
        Retrying {
            spare,
            copies,
            looping: None,
        }
    }

    /// Attempts made or decided on, the first included.
    fn attempts(&self) -> u32 {
        self.looping.as_ref().map_or(1, |l| l.state.attempts())
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
    ///
    /// A call with nothing to judge, count or retry (it cannot be retried, no metrics
    /// recorder, no attempt timeout, not made for a request a
    /// [`DontRetryLayer`](crate::attempt::DontRetryLayer) serves) is the attempt's future
    /// alone: polling it polls the
    /// attempt. A call that may be retried whose first attempt succeeds is judged inline; a
    /// failure, a timer or a retry go out of line.
    pub struct ResponseFuture<S, Req, C, K>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req, C, K>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, Req, C, K>
    where
        S: Service<Req>,
    {
        // Nothing to judge, count or retry: the attempt alone.
        Passthrough {
            #[pin]
            attempt: Option<S::Future>,
        },
        Running {
            // Declared first, so a call dropped before it ended is counted before its
            // attempt in flight is dropped.
            run: Run<S, Req, C, K>,
            #[pin]
            attempt: Option<S::Future>,
        },
    }
}

/// Everything a call that is judged, counted or may be retried carries besides its attempt.
pub(crate) struct Run<S, Req, C, K> {
    shared: Arc<Shared>,
    retry: Option<Retrying<S, Req, K>>,
    classifier: C,
    start: Start,
    refused: Option<StopReason>,
    timer: Timer,
    armed: bool,
    done: bool,
}

impl<S, Req, C, K> Run<S, Req, C, K> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        retry: Option<Retrying<S, Req, K>>,
        classifier: C,
        start: Start,
        refused: Option<StopReason>,
    ) -> Self {
        Run {
            shared,
            retry,
            classifier,
            start,
            refused,
            timer: Timer::new(),
            armed: false,
            done: false,
        }
    }
}

impl<S, Req, C, K> Drop for Run<S, Req, C, K> {
    #[inline]
    fn drop(&mut self) {
        if !self.done {
            self.dropped();
        }
    }
}

impl<S, Req, C, K> Run<S, Req, C, K> {
    /// A call dropped before it ended: counted, and a retry paid for but not sent given back.
    #[cold]
    #[inline(never)]
    fn dropped(&mut self) {
        if let Some(start) = self.start.red {
            cancelled(&self.shared, start);
        }
        if let Some(looping) = self.retry.as_mut().and_then(|r| r.looping.as_mut()) {
            refund(&self.shared, looping.paid.take());
        }
    }
}

/// Gives back to the budget a retry it paid for that is not sent after all.
#[cold]
fn refund(shared: &Shared, paid: Option<(FailureClass, Instant)>) {
    if let (Some(budget), Some((class, at))) = (shared.policy.budget(), paid) {
        budget.refund(class, at);
        shared.metrics.balance(budget.balance(clock::now()));
    }
}

/// Counts a call dropped before it ended.
#[cold]
#[inline(never)]
fn cancelled(shared: &Shared, start: Instant) {
    let _scope = Scope::enter();
    // Dropped by a deadline enforcer outside: out of time; else the caller left.
    let outcome = if tower_red::cancel::expired() {
        Outcome::Timeout
    } else {
        Outcome::Cancelled
    };
    let red = &shared.metrics.red;
    let elapsed = if red.records_durations() {
        clock::now().saturating_duration_since(start)
    } else {
        Duration::ZERO
    };
    red.record(outcome, elapsed);
}

impl<S, Req, C, K> fmt::Debug for ResponseFuture<S, Req, C, K>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (attempts, done) = match &self.state {
            State::Running { run, .. } => {
                (run.retry.as_ref().map_or(1, Retrying::attempts), run.done)
            }
            State::Passthrough { attempt } => (1, attempt.is_none()),
        };
        f.debug_struct("ResponseFuture")
            .field("attempts", &attempts)
            .field("done", &done)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, K> ResponseFuture<S, Req, C, K>
where
    S: Service<Req>,
{
    /// The future of a call whose first attempt is `attempt`; `run` is `None` when there is
    /// nothing to judge, count or retry.
    #[inline]
    pub(crate) fn new(attempt: S::Future, run: Option<Run<S, Req, C, K>>) -> Self {
        let attempt = Some(attempt);
        let state = match run {
            Some(run) => State::Running { run, attempt },
            None => State::Passthrough { attempt },
        };
        ResponseFuture { state }
    }
}

impl<S, Req, C, R> ResponseFuture<S, Req, C, Backup<Req, R>>
where
    S: Service<Req>,
{
    /// The future of a call that may be retried, its first attempt `attempt` sent and `copy`
    /// kept for the next: built in one place, not through the optional parts of
    /// [`ResponseFuture::new`], so the compiler moves the copy and the attempt's future once
    /// (each move of the request is ~250 bytes copied on every call).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn retrying(
        attempt: S::Future,
        spare: Arc<Spare<S>>,
        copy: Req,
        replay: R,
        mark: fn(&mut Req, u32),
        shared: Arc<Shared>,
        classifier: C,
        start: Start,
    ) -> Self {
        ResponseFuture {
            state: State::Running {
                run: Run {
                    shared,
                    retry: Some(Retrying {
                        spare,
                        copies: Backup {
                            req: Some(copy),
                            replay,
                            mark,
                        },
                        looping: None,
                    }),
                    classifier,
                    start,
                    refused: None,
                    timer: Timer::new(),
                    armed: false,
                    done: false,
                },
                attempt: Some(attempt),
            },
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

fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by)
        .unwrap_or_else(|| now + tower_red::clock::NEVER)
}

impl<S, Req, C, K> Future for ResponseFuture<S, Req, C, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + ReadPushback<S::Response>,
    K: Copies<Req>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Passthrough { mut attempt } => {
                let fut = attempt
                    .as_mut()
                    .as_pin_mut()
                    .expect("polled after completion");
                let result = ready!(fut.poll(cx));
                attempt.set(None);
                Poll::Ready(result.map_err(Into::into))
            }
            StateProj::Running { run, attempt } => run.poll(attempt, cx),
        }
    }
}

impl<S, Req, C, K> Run<S, Req, C, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + ReadPushback<S::Response>,
    K: Copies<Req>,
{
    /// The loop: the attempt in flight, its verdict, and the next attempt. Inline up to a
    /// success; the rest (timers, failures, retries) is out of line.
    #[inline(always)]
    fn poll(
        &mut self,
        mut attempt: Pin<&mut Option<S::Future>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        // The clock is read in this poll (and shared with the layers inside) only for a RED
        // duration or an attempt timeout; a failure's decision enters its own scope.
        let _scope =
            (self.start.red.is_some() || self.shared.attempt_timeout.is_some()).then(Scope::enter);
        loop {
            if let Some(fut) = attempt.as_mut().as_pin_mut() {
                let attempted = match fut.poll(cx) {
                    Poll::Ready(result) => {
                        attempt.set(None);
                        Attempted::Done(result)
                    }
                    Poll::Pending => {
                        if self.shared.attempt_timeout.is_none() {
                            return Poll::Pending;
                        }
                        ready!(self.poll_attempt_timeout(attempt.as_mut(), cx));
                        Attempted::TimedOut
                    }
                };
                self.armed = false;
                let verdict = match &attempted {
                    Attempted::Done(result) => judge(&self.classifier, result),
                    Attempted::TimedOut => Verdict::Failure(FailureClass::Timeout),
                };
                if matches!(verdict, Verdict::Success)
                    && (self.start.red.is_none() || !self.shared.metrics.red.records_durations())
                {
                    // The common end, no duration to record (nothing recorded, or counts only
                    // inside a stack that times the call once): a token budget hears of it,
                    // and a recording layer counts it, inline.
                    if self.retry.is_some()
                        && let Some(budget) = self.shared.policy.budget()
                    {
                        budget.record_success();
                    }
                    self.done = true;
                    if self.start.red.is_some()
                        && let Attempted::Done(result) = &attempted
                    {
                        let metrics = &self.shared.metrics;
                        metrics
                            .red
                            .record(Outcome::judged(verdict, result), Duration::ZERO);
                        metrics.attempts(self.retry.as_ref().map_or(1, Retrying::attempts));
                    }
                    return Poll::Ready(output(attempted, Some(&self.shared.name)));
                }
                if let Some(out) = self.judged(attempted, verdict) {
                    return Poll::Ready(out);
                }
            }
            if let Some(out) = ready!(self.poll_between(attempt.as_mut(), cx)) {
                return Poll::Ready(out);
            }
        }
    }

    /// The attempt in flight is pending: waits for the attempt timeout (armed now if it is
    /// not yet), then drops the attempt with the deadline mark.
    #[inline(never)]
    fn poll_attempt_timeout(
        &mut self,
        mut attempt: Pin<&mut Option<S::Future>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let timer = if self.armed {
            self.timer.get().expect("armed")
        } else {
            // Armed only once the attempt is pending: an answer ready at once costs no timer.
            self.armed = true;
            let limit = self.shared.attempt_timeout.unwrap_or(clock::NEVER);
            let mut at = later(clock::now(), limit);
            if let Some(deadline) = self.start.deadline {
                at = at.min(deadline.instant());
            }
            self.timer.arm(at)
        };
        ready!(timer.poll(cx));
        // Dropped at its deadline: the layers inside count a timeout, not a caller that went
        // away (see `tower_red::cancel`).
        let attempt = &mut attempt;
        tower_red::cancel::drop_expired(OnDrop(Some(|| attempt.set(None))));
        Poll::Ready(())
    }

    /// Judges a finished attempt that is not a success nobody counts: ends the call (`Some`,
    /// its result) or decides a retry (`None`, and the next attempt is due).
    #[inline(never)]
    fn judged(
        &mut self,
        attempted: Attempted<S::Response, S::Error>,
        verdict: Verdict,
    ) -> Option<Result<S::Response, BoxError>> {
        let _scope = Scope::enter();
        let Run {
            shared,
            retry,
            classifier,
            start,
            refused,
            timer,
            done,
            ..
        } = self;
        let shared = &**shared;
        if retry.is_some()
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
        let attempts = retry.as_ref().map_or(1, Retrying::attempts);
        // Read on every failed attempt, retried or not: a server serving this task hears of a
        // "don't retry", whatever ends the retries (the signal, the last attempt, a request
        // that may not be retried).
        let pushback = match &attempted {
            Attempted::Done(_) if matches!(verdict, Verdict::Success) => Pushback::Absent,
            Attempted::Done(Ok(res)) => classifier.pushback(res),
            Attempted::Done(Err(err)) => refusal_of(err)
                .and_then(Rejection::retry_after)
                .map_or(Pushback::Absent, Pushback::Delay),
            Attempted::TimedOut => Pushback::Absent,
        };
        if pushback == Pushback::Stop {
            crate::attempt::note_dont_retry();
        }
        let Some((class, reason)) = retryable else {
            return Some(finish(shared, start, attempts, done, attempted, outcome));
        };
        let Some(retry) = retry.as_mut() else {
            if let Some(why) = *refused {
                shared.metrics.stopped(why);
            }
            return Some(finish(shared, start, attempts, done, attempted, outcome));
        };
        let now = clock::now();
        let latency = start
            .attempt
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let failure = Failure::new(class)
            .with_pushback(pushback)
            .with_latency(latency);
        let looping = retry.looping.get_or_insert_with(|| {
            Box::new(Looping {
                next: None,
                svc: None,
                state: RetryState::new(),
                rng: shared.policy.rng(),
                phase: Phase::Attempt,
                paid: None,
            })
        });
        let decision = shared.policy.decide(
            &mut looping.state,
            failure,
            now,
            start.deadline,
            &mut looping.rng,
        );
        let budget = shared.policy.budget();
        let stop = match decision {
            Decision::Retry(delay) => {
                let paid = budget.is_some().then_some((class, now));
                let attempt = looping.state.attempts();
                let last = attempt >= shared.policy.max_attempts();
                match retry.copies.next(attempt, last) {
                    Some(req) => {
                        looping.next = Some(req);
                        looping.paid = paid;
                        shared.metrics.retried(reason);
                        if let Some(budget) = budget {
                            shared.metrics.balance(budget.balance(now));
                        }
                        tracing::debug!(
                            name = &*shared.name,
                            attempt = looping.state.attempts(),
                            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            reason = reason.as_str(),
                            "retrying"
                        );
                        if delay.is_zero() {
                            looping.phase = Phase::Ready;
                        } else {
                            timer.arm(later(now, delay));
                            looping.phase = Phase::Backoff;
                        }
                        None
                    }
                    None => {
                        refund(shared, paid);
                        Some(StopReason::NotReplayable)
                    }
                }
            }
            Decision::Stop(stop) => {
                if stop == Stop::Budget {
                    outcome = Outcome::BudgetExhausted;
                    if let Some(budget) = budget {
                        shared.metrics.balance(budget.balance(now));
                    }
                }
                Some(StopReason::Policy(stop))
            }
        };
        let why = stop?;
        shared.metrics.stopped(why);
        tracing::debug!(
            name = &*shared.name,
            attempt = looping.state.attempts(),
            reason = why.as_str(),
            "not retried"
        );
        let attempts = looping.state.attempts();
        Some(finish(shared, start, attempts, done, attempted, outcome))
    }

    /// Between attempts: sleeps the backoff, readies the service and sends the next copy.
    /// `Ready(None)` once it is sent; `Ready(Some(_))` ends the call (the service failed).
    #[inline(never)]
    fn poll_between(
        &mut self,
        mut attempt: Pin<&mut Option<S::Future>>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<S::Response, BoxError>>> {
        let _scope = Scope::enter();
        let retry = self
            .retry
            .as_mut()
            .expect("between attempts only while retrying");
        let looping = retry
            .looping
            .as_mut()
            .expect("between attempts only after a failure");
        loop {
            match looping.phase {
                Phase::Backoff => {
                    let timer = self.timer.get().expect("a backoff timer");
                    ready!(timer.poll(cx));
                    looping.phase = Phase::Ready;
                }
                Phase::Ready | Phase::Attempt => {
                    let svc = looping.svc.get_or_insert_with(|| retry.spare.service());
                    if let Err(err) = ready!(svc.poll_ready(cx)) {
                        refund(&self.shared, looping.paid.take());
                        let err: BoxError = err.into();
                        let outcome = Outcome::from_error(&*err);
                        let attempts = looping.state.attempts();
                        return Poll::Ready(Some(finish(
                            &self.shared,
                            &self.start,
                            attempts,
                            &mut self.done,
                            Attempted::<S::Response, BoxError>::Done(Err(err)),
                            outcome,
                        )));
                    }
                    let req = looping
                        .next
                        .take()
                        .expect("a copy is made when a retry is decided");
                    attempt.set(Some(svc.call(req)));
                    looping.paid = None;
                    if self.start.attempt.is_some() {
                        self.start.attempt = Some(clock::now());
                    }
                    looping.phase = Phase::Attempt;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// The caller's result of an attempt: its own, or the timeout of an attempt (naming the layer
/// when it has a name).
#[inline]
fn output<T, E: Into<BoxError>>(
    attempted: Attempted<T, E>,
    name: Option<&Arc<str>>,
) -> Result<T, BoxError> {
    match attempted {
        Attempted::Done(result) => result.map_err(Into::into),
        Attempted::TimedOut => Err(timed_out(name)),
    }
}

#[cold]
fn timed_out(name: Option<&Arc<str>>) -> BoxError {
    let mut rejection = Rejection::new(RejectionKind::DeadlineExceeded)
        .with_reason("call")
        .with_detail("a retry attempt ran out of time");
    if let Some(name) = name {
        rejection = rejection.with_name(name.clone());
    }
    rejection.into()
}

/// Ends the loop: records the call and hands back the last attempt's result as it was.
fn finish<T, E: Into<BoxError>>(
    shared: &Shared,
    start: &Start,
    attempts: u32,
    done: &mut bool,
    attempted: Attempted<T, E>,
    outcome: Outcome,
) -> Result<T, BoxError> {
    *done = true;
    if let Some(at) = start.red {
        let metrics = &shared.metrics;
        // Counted only (no clock read) inside a stack that times the call once.
        let elapsed = if metrics.red.records_durations() {
            clock::now().saturating_duration_since(at)
        } else {
            Duration::ZERO
        };
        metrics.red.record(outcome, elapsed);
        metrics.attempts(attempts);
    }
    output(attempted, Some(&shared.name))
}

pin_project_lite::pin_project! {
    /// The future of a [`Retry`](crate::Retry) built with
    /// [`buffer_body`](crate::config::RetryLayerBuilder::buffer_body): reads the request body
    /// (up to the cap), then runs the retry loop. Dropped while it reads the body, it is
    /// counted as a [`ResponseFuture`] dropped mid-attempt is: `cancelled`, or `timeout` when
    /// a deadline enforcer outside dropped it.
    pub struct BufferedFuture<S, B, C>
    where
        S: Service<http::Request<RetryBody<B>>>,
    {
        #[pin]
        state: BufState<S, B, C>,
    }

    impl<S, B, C> PinnedDrop for BufferedFuture<S, B, C>
    where
        S: Service<http::Request<RetryBody<B>>>,
    {
        fn drop(this: Pin<&mut Self>) {
            // Once the body is read, the retry loop's own drop counts the call.
            if let BufStateProj::Collecting { job: Some(job), .. } = this.project().state.project()
                && let Some(start) = job.start.red
            {
                cancelled(&job.shared, start);
            }
        }
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
    spare: Arc<Spare<S>>,
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
        spare: Arc<Spare<S>>,
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
                    spare,
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
                        spare,
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
                            let retry = Retrying::new(spare, buffered);
                            ResponseFuture::new(
                                fut,
                                Some(Run::new(shared, Some(retry), classifier, start, None)),
                            )
                        }
                        Ok(Collected::Overflow(rest)) => {
                            shared.metrics.overflowed();
                            let fut = svc
                                .call(http::Request::from_parts(parts, RetryBody::overflow(rest)));
                            ResponseFuture::new(
                                fut,
                                Some(Run::new(
                                    shared,
                                    None,
                                    classifier,
                                    start,
                                    Some(StopReason::NotReplayable),
                                )),
                            )
                        }
                    }
                }
            };
            state.set(BufState::Running { fut: running });
        }
    }
}
