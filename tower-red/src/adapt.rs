//! The service shared by the error adapters ([`ProblemLayer`](crate::problem::ProblemLayer)
//! for HTTP, `StatusLayer` for tonic): it turns every error of the inner stack into a response,
//! so the stack's error type is `Infallible`.
//!
//! A readiness error of the inner service is not returned from `poll_ready` (that would be
//! fatal to the stack): it is answered, as a response, on the next call.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::BoxError;

/// How an adapter turns the inner service's results into responses.
pub trait Convert<B>: Clone {
    /// The adapted response type.
    type Response;
    /// Converts a response of the inner service (usually only its body type changes).
    fn ok(&self, res: Response<B>) -> Self::Response;
    /// Converts an error of the inner service into a response.
    fn err(&self, err: BoxError) -> Self::Response;
}

/// Service built by the error adapters.
pub struct Adapter<S, C> {
    inner: S,
    convert: C,
    ready_error: Option<BoxError>,
}

impl<S, C> Adapter<S, C> {
    pub(crate) fn with(inner: S, convert: C) -> Self {
        Adapter {
            inner,
            convert,
            ready_error: None,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Adapter<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adapter")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S: Clone, C: Clone> Clone for Adapter<S, C> {
    fn clone(&self) -> Self {
        // A readiness error belongs to the instance that saw it.
        Adapter::with(self.inner.clone(), self.convert.clone())
    }
}

impl<S, C, Req, B> Service<Req> for Adapter<S, C>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    C: Convert<B>,
{
    type Response = C::Response;
    type Error = Infallible;
    type Future = AdapterFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.ready_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        if let Err(e) = ready!(self.inner.poll_ready(cx)) {
            self.ready_error = Some(e.into());
        }
        Poll::Ready(Ok(()))
    }

    // Forced inline, as the server stack's other pass-through steps: measured, the five save
    // ~200 instructions a call there (benches/README, "RED in a stack").
    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let convert = self.convert.clone();
        let state = match self.ready_error.take() {
            Some(err) => State::Failed {
                err: Some(err),
                convert,
            },
            None => State::Called {
                fut: self.inner.call(req),
                convert,
            },
        };
        AdapterFuture { state }
    }
}

pin_project! {
    /// Future of [`Adapter`].
    pub struct AdapterFuture<Fut, C> {
        #[pin]
        state: State<Fut, C>,
    }
}

pin_project! {
    #[project = Proj]
    enum State<Fut, C> {
        Called { #[pin] fut: Fut, convert: C },
        Failed { err: Option<BoxError>, convert: C },
    }
}

impl<Fut, C, B, E> Future for AdapterFuture<Fut, C>
where
    Fut: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    C: Convert<B>,
{
    type Output = Result<C::Response, Infallible>;

    // Forced inline, as the server stack's other pass-through steps: measured, the five save
    // ~200 instructions a call there (benches/README, "RED in a stack").
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match self.project().state.project() {
            Proj::Called { fut, convert } => match ready!(fut.poll(cx)) {
                Ok(res) => convert.ok(res),
                Err(err) => convert.err(err.into()),
            },
            Proj::Failed { err, convert } => {
                convert.err(err.take().expect("polled after completion"))
            }
        }))
    }
}
