//! The tonic adapter (feature `tonic`): rejections become `tonic::Status`es, and a layer turns
//! them into trailers-only gRPC responses so a tonic server answers with the right code.
//!
//! Rejections with a `Retry-After` also carry `grpc-retry-pushback-ms`, which gRPC clients
//! with retries enabled (gRFC A6) honour as the delay before the next attempt.
//!
//! ```
//! use tower_red::{Rejection, RejectionKind};
//!
//! let status = tonic::Status::from(Rejection::new(RejectionKind::BulkheadFull));
//! assert_eq!(status.code(), tonic::Code::ResourceExhausted);
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use pin_project_lite::pin_project;
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::rejection::Rejection;

/// The trailer gRPC clients read as a server-chosen retry delay (gRFC A6).
pub const RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

impl Rejection {
    /// The `tonic::Status` for this rejection: its code, its text as message, and
    /// `grpc-retry-pushback-ms` metadata when it has a `Retry-After`.
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.grpc_code().into(), self.to_string());
        if let Some(after) = self.retry_after() {
            let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            if let Ok(value) = ms.to_string().parse() {
                status.metadata_mut().insert(RETRY_PUSHBACK_MS, value);
            }
        }
        status
    }
}

impl From<Rejection> for tonic::Status {
    fn from(rejection: Rejection) -> tonic::Status {
        rejection.to_status()
    }
}

/// The `tonic::Status` for any error: a rejection's own status, a `tonic::Status` found in the
/// error unchanged, else `UNKNOWN` with a generic message (the error's text may hold internals).
pub fn status_of(err: &BoxError) -> tonic::Status {
    if let Some(rejection) = Rejection::find_in(err) {
        return rejection.to_status();
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&**err);
    while let Some(e) = current {
        if let Some(status) = e.downcast_ref::<tonic::Status>() {
            return status.clone();
        }
        current = e.source();
    }
    tonic::Status::unknown("internal error")
}

/// The function type that maps errors to statuses.
pub type OnError = fn(&BoxError) -> tonic::Status;

/// Layer for tonic servers (`Server::builder().layer(StatusLayer::new())`): errors of the
/// inner stack become trailers-only responses with the right `grpc-status`.
#[derive(Clone, Copy)]
#[must_use]
pub struct StatusLayer<F = OnError> {
    on_error: F,
}

impl<F> fmt::Debug for StatusLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusLayer").finish_non_exhaustive()
    }
}

impl Default for StatusLayer {
    fn default() -> Self {
        StatusLayer::new()
    }
}

impl StatusLayer {
    /// Rejections map to their codes, `tonic::Status` errors to themselves, others to UNKNOWN.
    pub fn new() -> Self {
        StatusLayer {
            on_error: status_of,
        }
    }
}

impl<F> StatusLayer<F> {
    /// Maps every error with `f` instead (call [`status_of`] inside to keep the defaults).
    pub fn on_error<G>(self, f: G) -> StatusLayer<G>
    where
        G: Fn(&BoxError) -> tonic::Status + Clone,
    {
        StatusLayer { on_error: f }
    }
}

impl<S, F: Clone> Layer<S> for StatusLayer<F> {
    type Service = StatusService<S, F>;
    fn layer(&self, inner: S) -> Self::Service {
        StatusService {
            inner,
            on_error: self.on_error.clone(),
            ready_error: None,
        }
    }
}

/// Service built by [`StatusLayer`].
pub struct StatusService<S, F = OnError> {
    inner: S,
    on_error: F,
    ready_error: Option<BoxError>,
}

impl<S: Clone, F: Clone> Clone for StatusService<S, F> {
    fn clone(&self) -> Self {
        StatusService {
            inner: self.inner.clone(),
            on_error: self.on_error.clone(),
            ready_error: None,
        }
    }
}

impl<S: fmt::Debug, F> fmt::Debug for StatusService<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F, Req, B> Service<Req> for StatusService<S, F>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    F: Fn(&BoxError) -> tonic::Status + Clone,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.ready_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        if let Err(e) = ready!(self.inner.poll_ready(cx)) {
            self.ready_error = Some(e.into());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let on_error = self.on_error.clone();
        match self.ready_error.take() {
            Some(err) => ResponseFuture::failed(err, on_error),
            None => ResponseFuture::called(self.inner.call(req), on_error),
        }
    }
}

pin_project! {
    /// Future of [`StatusService`].
    pub struct ResponseFuture<Fut, F> {
        #[pin]
        state: State<Fut, F>,
    }
}

pin_project! {
    #[project = Proj]
    enum State<Fut, F> {
        Called { #[pin] fut: Fut, on_error: F },
        Failed { err: Option<BoxError>, on_error: F },
    }
}

impl<Fut, F> ResponseFuture<Fut, F> {
    fn called(fut: Fut, on_error: F) -> Self {
        ResponseFuture {
            state: State::Called { fut, on_error },
        }
    }
    fn failed(err: BoxError, on_error: F) -> Self {
        ResponseFuture {
            state: State::Failed {
                err: Some(err),
                on_error,
            },
        }
    }
}

impl<Fut, F, B, E> Future for ResponseFuture<Fut, F>
where
    Fut: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    F: Fn(&BoxError) -> tonic::Status,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (err, on_error) = match self.project().state.project() {
            Proj::Called { fut, on_error } => match ready!(fut.poll(cx)) {
                Ok(res) => return Poll::Ready(Ok(res.map(Body::new))),
                Err(err) => (err.into(), on_error),
            },
            Proj::Failed { err, on_error } => {
                (err.take().expect("polled after completion"), on_error)
            }
        };
        Poll::Ready(Ok(on_error(&err).into_http()))
    }
}
