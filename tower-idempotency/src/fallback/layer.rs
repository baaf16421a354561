//! [`FallbackLayer`], its shared state, and the [`Fallback`] service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_layer::Layer;
use tower_red::classify::{AnyError, Classify, FailureClass, Verdict, refusal_of};
use tower_red::clock;
use tower_red::red::{Outcome, RedMetrics};
use tower_service::Service;

use super::config::{FallbackFn, FallbackLayerBuilder, KeyFn, Reason, When};
use super::exchange::{FallbackRequest, FallbackResponse};
use super::future::ResponseFuture;
use super::stale::{Read, Stale};

/// What every clone of one layer shares.
pub(crate) struct Shared<C> {
    pub(crate) name: Arc<str>,
    pub(crate) when: When,
    pub(crate) classifier: C,
    pub(crate) function: Option<FallbackFn>,
    pub(crate) stale: Option<Arc<Stale>>,
    pub(crate) key: KeyFn,
    pub(crate) max_key_bytes: usize,
    pub(crate) red: RedMetrics,
}

impl<C> Shared<C> {
    /// Why `result` is not a usable answer, or `None` when it is (a success, or an answer the
    /// classifier ignores).
    pub(crate) fn reason<Res, E>(&self, result: &Result<Res, E>) -> Option<Reason>
    where
        C: Classify<Res, E>,
        Res: FallbackResponse,
        E: 'static,
    {
        match result {
            Err(err) => {
                if let Some(rejection) = refusal_of(err) {
                    return Some(Reason::Refused(rejection.kind()));
                }
            }
            Ok(res) => {
                if let Some(kind) = res.refused() {
                    return Some(Reason::Refused(kind));
                }
            }
        }
        match self.classifier.classify(result) {
            Verdict::Failure(class) => Some(Reason::Failure(class)),
            Verdict::Refused(kind) => Some(Reason::Refused(kind)),
            Verdict::Success | Verdict::Ignored => None,
        }
    }
}

/// The RED outcome of a call that ended for `reason` and was passed on as it was.
pub(crate) fn passed(reason: Option<Reason>) -> Outcome {
    match reason {
        None => Outcome::Ok,
        Some(Reason::Refused(_)) => Outcome::InnerRefusal,
        Some(Reason::Failure(FailureClass::Timeout)) => Outcome::Timeout,
        Some(Reason::Failure(_)) => Outcome::Error,
    }
}

/// Records the call's RED outcome once; dropped before that, it counts the call `cancelled`.
pub(crate) struct RedGuard {
    red: Option<(RedMetrics, Option<Instant>)>,
}

impl RedGuard {
    pub(crate) fn new(red: &RedMetrics) -> Self {
        RedGuard {
            red: red
                .is_recording()
                .then(|| (red.clone(), red.records_durations().then(clock::now))),
        }
    }

    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if let Some((red, start)) = self.red.take() {
            match start {
                Some(start) => {
                    red.record(outcome, clock::now().saturating_duration_since(start));
                }
                None => red.record(outcome, std::time::Duration::ZERO),
            }
        }
    }
}

impl Drop for RedGuard {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

impl fmt::Debug for RedGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedGuard")
            .field("armed", &self.red.is_some())
            .finish()
    }
}

/// Answers in place of a call that an inner layer refused or that failed: from the last good
/// response for the same method and key (stale-on-error), else from a function, else the original
/// refusal or failure goes on. See the [module docs](super).
#[must_use]
pub struct FallbackLayer<C = AnyError> {
    shared: Arc<Shared<C>>,
}

impl FallbackLayer {
    /// A builder; see [`FallbackLayerBuilder`].
    pub fn builder() -> FallbackLayerBuilder {
        FallbackLayerBuilder::default()
    }
}

impl<C> FallbackLayer<C> {
    pub(crate) fn from_shared(shared: Arc<Shared<C>>) -> Self {
        FallbackLayer { shared }
    }
}

impl<C> Clone for FallbackLayer<C> {
    fn clone(&self) -> Self {
        FallbackLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for FallbackLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("name", &self.shared.name)
            .field("when", &self.shared.when)
            .field("function", &self.shared.function.is_some())
            .field("stale", &self.shared.stale.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, C> Layer<S> for FallbackLayer<C> {
    type Service = Fallback<S, C>;

    fn layer(&self, inner: S) -> Fallback<S, C> {
        Fallback {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service built by [`FallbackLayer`].
pub struct Fallback<S, C = AnyError> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S, C> Fallback<S, C> {
    tower_red::define_inner_service_accessors!();
}

impl<S: Clone, C> Clone for Fallback<S, C> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Fallback<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, C, Req> Service<Req> for Fallback<S, C>
where
    Req: FallbackRequest,
    S: Service<Req>,
    S::Response: FallbackResponse,
    S::Error: 'static,
    C: Classify<S::Response, S::Error>,
{
    type Response = <S::Response as FallbackResponse>::Output;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        let _scope = clock::Scope::enter();
        let guard = RedGuard::new(&shared.red);
        // The key is computed only when there is a store and the request is a GET or a HEAD
        // (nothing else is stored, whatever the key function says): no allocation otherwise.
        let key = shared.stale.as_ref().and_then(|_| {
            let view = req.view();
            let read = Read::of(view.method())?;
            let key = (shared.key)(&view).filter(|key| key.len() <= shared.max_key_bytes)?;
            Some((read, key))
        });
        let target = (shared.function.is_some() || key.is_some()).then(|| {
            let view = req.view();
            (view.method().clone(), req.target())
        });
        ResponseFuture::new(self.inner.call(req), shared.clone(), key, target, guard)
    }
}
