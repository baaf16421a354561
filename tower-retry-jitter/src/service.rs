//! The retry service: `poll_ready` and `call`, nothing that belongs to the policy.

use std::fmt;
use std::mem;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tower_red::BoxError;
use tower_red::classify::{AnyError, Classify};
use tower_red::clock::{self, Scope};
use tower_service::Service;
use tower_timeout_budget::DeadlineCarrier;

use crate::budget::BudgetKind;
use crate::future::{Backup, BufferedFuture, ResponseFuture, Run, Start};
use crate::metrics::{Metrics, StopReason};
use crate::policy::{RetryPolicy, Stop};
use crate::replay::{BufferBody, CloneRequest, ReplayRequest, RetryBody};
use crate::retry_on::ReadPushback;
use crate::safety::{Idempotent, RetrySafety};

/// What every service of one layer shares.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) policy: RetryPolicy,
    pub(crate) metrics: Metrics,
    pub(crate) retry_refusals: bool,
    pub(crate) attempt_timeout: Option<Duration>,
    /// No metrics recorder and no attempt timeout: a call that cannot be retried has nothing
    /// to judge, count or time, and its future is the attempt's.
    pub(crate) quiet: bool,
    /// The budget is a ratio budget: a request that may be retried deposits into it.
    pub(crate) ratio: bool,
}

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        policy: RetryPolicy,
        metrics: Metrics,
        retry_refusals: bool,
        attempt_timeout: Option<Duration>,
    ) -> Shared {
        let quiet = !metrics.red.is_recording() && attempt_timeout.is_none();
        let ratio = policy
            .budget()
            .is_some_and(|b| b.kind() == BudgetKind::Ratio);
        Shared {
            name,
            policy,
            metrics,
            retry_refusals,
            attempt_timeout,
            quiet,
            ratio,
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("retry_refusals", &self.retry_refusals)
            .field("attempt_timeout", &self.attempt_timeout)
            .finish_non_exhaustive()
    }
}

/// The copy of the inner service that retries are sent through, one per service the layer
/// built and shared by its clones: made from the service on the first call that may be retried,
/// and cloned from only when a retry is decided. A call therefore carries one reference count
/// into its future, not a clone of the whole inner stack (a breaker, a bulkhead and a deadline
/// layer are ~180 bytes and five reference counts, which every layer above would copy again).
/// The lock is taken only to clone, on the retry path.
pub(crate) struct Spare<S>(OnceLock<Mutex<S>>);

impl<S> Spare<S> {
    fn new() -> Self {
        Spare(OnceLock::new())
    }
}

impl<S: Clone> Spare<S> {
    /// A fresh clone for a retry (to be made ready before it is called).
    pub(crate) fn service(&self) -> S {
        self.0
            .get()
            .expect("the spare is made before a call that may be retried")
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Retries failed calls to `S`: see the [crate docs](crate).
///
/// `C` classifies outcomes (a [`Verdict::Failure`](tower_red::Verdict::Failure) is retried),
/// `P` decides which requests are safe to send twice, `R` copies them. Clones share the
/// policy, the budget and the metrics.
///
/// # Cost of a call that is not retried
///
/// For a request that cannot be retried (not safe, not copyable, or one attempt allowed),
/// with no metrics recorder and no attempt timeout, and not made while serving a request
/// behind a [`DontRetryLayer`](crate::attempt::DontRetryLayer) (whose failures are judged, so
/// a "don't retry" on them travels up), the future is the inner future alone:
/// no clone, no clock read, no allocation, no timer, nothing to drop. A request that may be
/// retried is copied once before its first attempt (the original is gone once sent, and the
/// first attempt cannot be known to succeed before it is sent), the layer's shared state and
/// a handle on its spare copy of the inner service (two `Arc`s: two atomic increments and two
/// decrements) are cloned into the future, and its deadline is read; retries are sent through
/// clones of that spare copy, made from the inner service at the first call that could be
/// retried (so a change made later through [`get_mut`](Retry::get_mut) reaches first
/// attempts only); a first attempt that succeeds at once is judged
/// inline, and the loop's own state (backoff, random number generator, next copy, timer) is
/// made only when it fails. The clock is read once, and only when a ratio budget needs the
/// request's deposit or a deadline needs the attempt's latency; the read is shared with the
/// other layers of the stack through [`tower_red::clock`], so inside a stack that already
/// reads it (a RED or timeout layer) it costs a thread-local access. Nothing is allocated
/// until a retry is decided. With a metrics recorder installed, every call reads the clock
/// for its duration (shared the same way).
///
/// A token budget (gRPC throttling, quota) hears of the successes and failures of requests
/// that may be retried; requests that never could do not touch it.
pub struct Retry<S, C = AnyError, P = Idempotent, R = CloneRequest> {
    inner: S,
    spare: Arc<Spare<S>>,
    shared: Arc<Shared>,
    classifier: C,
    safety: P,
    replay: R,
}

impl<S: Clone, C: Clone, P: Clone, R: Clone> Clone for Retry<S, C, P, R> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            spare: self.spare.clone(),
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
            safety: self.safety.clone(),
            replay: self.replay.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug, P: fmt::Debug, R: fmt::Debug> fmt::Debug for Retry<S, C, P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .field("classifier", &self.classifier)
            .field("safety", &self.safety)
            .field("replay", &self.replay)
            .finish()
    }
}

impl<S> Retry<S> {
    /// Wraps `inner` with the default configuration ([`RetryLayer::new`](crate::RetryLayer::new)).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&crate::RetryLayer::new(), inner)
    }

    /// A layer with the default configuration ([`RetryLayer::new`](crate::RetryLayer::new)).
    pub fn layer() -> crate::RetryLayer {
        crate::RetryLayer::new()
    }
}

impl<S, C, P, R> Retry<S, C, P, R> {
    pub(crate) fn from_parts(
        inner: S,
        shared: Arc<Shared>,
        classifier: C,
        safety: P,
        replay: R,
    ) -> Self {
        Retry {
            inner,
            spare: Arc::new(Spare::new()),
            shared,
            classifier,
            safety,
            replay,
        }
    }

    /// The policy: attempts, backoff and budget.
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }

    tower_red::define_inner_service_accessors!();

    /// Why a request cannot be retried, or `None` when it may be.
    #[inline]
    fn refuse<Req>(&self, req: &Req) -> Option<StopReason>
    where
        P: RetrySafety<Req>,
    {
        if self.shared.policy.max_attempts() <= 1 {
            Some(StopReason::Policy(Stop::Attempts))
        } else if !self.safety.is_safe(req) {
            Some(StopReason::Unsafe)
        } else {
            None
        }
    }

    /// The handle on the spare copy of the inner service, made from it on first use.
    #[inline]
    fn spare(&self) -> Arc<Spare<S>>
    where
        S: Clone,
    {
        self.spare.0.get_or_init(|| Mutex::new(self.inner.clone()));
        self.spare.clone()
    }

    /// The start of a request: the clock read (once) when anything needs it: a RED duration,
    /// a deposit into a ratio budget, or the latency of an attempt judged against a deadline.
    /// The read is made inside a [`Scope`], handed back to be held over the inner `call`, so
    /// the layers inside share it; without a read, no scope.
    #[inline(always)]
    fn start(
        &self,
        retrying: bool,
        deadline: Option<tower_timeout_budget::Deadline>,
    ) -> (Start, Option<Scope>) {
        let recording = self.shared.metrics.red.is_recording();
        let ratio = retrying && self.shared.ratio;
        let timed = ratio || (retrying && deadline.is_some());
        if !(recording || timed) {
            let start = Start {
                red: None,
                attempt: None,
                deadline,
            };
            return (start, None);
        }
        let scope = Scope::enter();
        let now = clock::now();
        if ratio && let Some(budget) = self.shared.policy.budget() {
            budget.record_request(now);
        }
        let start = Start {
            red: recording.then_some(now),
            attempt: (retrying && deadline.is_some()).then_some(now),
            deadline,
        };
        (start, Some(scope))
    }
}

impl<S, C, P, R, Req> Service<Req> for Retry<S, C, P, R>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + ReadPushback<S::Response> + Clone,
    P: RetrySafety<Req>,
    R: ReplayRequest<Req> + Clone,
    Req: DeadlineCarrier,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C, Backup<Req, R>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
    fn call(&mut self, mut req: Req) -> Self::Future {
        <P as RetrySafety<Req>>::mark_attempt(&mut req, 1);
        let mut refused = self.refuse(&req);
        // A call made for a server's request is judged: a "don't retry" it hears travels up.
        if refused.is_some() && self.shared.quiet && !crate::attempt::serving() {
            // Nothing to judge, count, time or retry: the attempt's future is the call's.
            return ResponseFuture::new(self.inner.call(req), None);
        }
        let copy = match refused {
            None => {
                let copy = self.replay.replay(&req);
                if copy.is_none() {
                    refused = Some(StopReason::NotReplayable);
                }
                copy
            }
            Some(_) => None,
        };
        let deadline = if copy.is_some() || self.shared.attempt_timeout.is_some() {
            req.deadline()
        } else {
            None
        };
        let (start, _scope) = self.start(copy.is_some(), deadline);
        let fut = self.inner.call(req);
        if let Some(copy) = copy {
            // `refused` is `None`: a copy is made only for a call that may be retried.
            return ResponseFuture::retrying(
                fut,
                self.spare(),
                copy,
                self.replay.clone(),
                <P as RetrySafety<Req>>::mark_attempt,
                self.shared.clone(),
                self.classifier.clone(),
                start,
            );
        }
        let run = (start.red.is_some()
            || self.shared.attempt_timeout.is_some()
            || crate::attempt::serving())
        .then(|| {
            Run::new(
                self.shared.clone(),
                None,
                self.classifier.clone(),
                start,
                refused,
            )
        });
        ResponseFuture::new(fut, run)
    }
}

impl<S, C, P, B> Service<http::Request<B>> for Retry<S, C, P, BufferBody>
where
    S: Service<http::Request<RetryBody<B>>> + Clone,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + ReadPushback<S::Response> + Clone,
    P: RetrySafety<http::Request<B>>,
    B: http_body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BufferedFuture<S, B, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        crate::attempt::write_attempt(req.headers_mut(), 1);
        let refused = self.refuse(&req);
        let deadline = if refused.is_none() || self.shared.attempt_timeout.is_some() {
            req.deadline()
        } else {
            None
        };
        let (start, _scope) = self.start(refused.is_none(), deadline);
        let shared = self.shared.clone();
        if refused.is_some() {
            let fut = self.inner.call(req.map(RetryBody::once));
            let run = Run::new(shared, None, self.classifier.clone(), start, refused);
            return BufferedFuture::running(ResponseFuture::new(fut, Some(run)));
        }
        // The body is read before the first attempt, so the service made ready for this call
        // goes into the future and this one keeps a clone (which must be made ready again).
        let clone = self.inner.clone();
        let svc = mem::replace(&mut self.inner, clone);
        BufferedFuture::collecting(
            svc,
            self.spare(),
            req,
            self.replay.limit(),
            shared,
            self.classifier.clone(),
            start,
        )
    }
}
