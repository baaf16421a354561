//! The client half of the tonic adapter (feature `tonic`): a layer's [`Rejection`] in a tonic
//! client stack reaches the caller as its own `tonic::Status`.
//!
//! A generated tonic client (`HealthClient<S>`, …) turns its service's error into a `Status`
//! with `tonic::Status::from_error`, which knows `Status` itself and tonic's transport errors
//! (a refused connection is `UNAVAILABLE`) but not [`Rejection`]: an open circuit in the stack
//! would reach the caller as `UNKNOWN`, with no `grpc-retry-pushback-ms`. [`ClientStatusLayer`]
//! replaces each rejection, found anywhere in the error's source chain, by its
//! [`Rejection::to_status`] (code, message, pushback), boxed as the error: `from_error` returns
//! a boxed `Status` as it is. The original error stays reachable as the status's `source()`, so
//! the caller can still [`Rejection::find`] it in the `Status` the client returns. Every other
//! error is passed on untouched, so tonic's own mapping still applies to it. Put the layer
//! outermost in the stack, right under the generated client: layers above it would no longer see
//! a `Rejection` but a `Status`.
//!
//! Do not map a client's errors with [`status_of`](super::status::status_of): it is the
//! server's mapping, which hides what it does not know behind `UNKNOWN "internal error"`.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_red::grpc::client::ClientStatusLayer;
//! use tower_red::{BoxError, Rejection, RejectionKind};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Stands in for `ServiceBuilder::new().layer(ClientStatusLayer::new()).layer(breaker).service(channel)`.
//! let mut stack = ServiceBuilder::new()
//!     .layer(ClientStatusLayer::new())
//!     .service(service_fn(|_req: http::Request<()>| async {
//!         Err::<http::Response<()>, BoxError>(
//!             Rejection::new(RejectionKind::CircuitOpen)
//!                 .with_retry_after(Duration::from_millis(1_500))
//!                 .into(),
//!         )
//!     }));
//! let err = stack.ready().await.unwrap().call(http::Request::new(())).await.unwrap_err();
//! // What a generated client does with the error:
//! let status = tonic::Status::from_error(err);
//! assert_eq!(status.code(), tonic::Code::Unavailable);
//! assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "1500");
//! assert_eq!(Rejection::find(&status).unwrap().kind(), RejectionKind::CircuitOpen);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::rejection::Rejection;

/// The error a tonic client should see for `err`: the `Status` of a [`Rejection`] found in it,
/// boxed, with `err` as the status's `source()` (so the caller can still
/// [`Rejection::find`] it); else `err` untouched (tonic maps it with `Status::from_error`).
///
/// One of tonic's own errors is mapped too: `tonic::TimeoutExpired`, which tonic's channel
/// raises when the `grpc-timeout` it was given runs out and which `Status::from_error` would make
/// `CANCELLED`. The gRPC spec says a call whose deadline passed on the client ends with
/// `DEADLINE_EXCEEDED`, whichever timer noticed first, so that is what the caller sees.
pub fn client_error(err: BoxError) -> BoxError {
    let mut status = match Rejection::find_in(&err) {
        Some(rejection) => rejection.to_status(),
        None if timed_out(&err) => {
            tonic::Status::deadline_exceeded("deadline exceeded: the channel's timeout expired")
        }
        None => return err,
    };
    status.set_source(Arc::from(err));
    Box::new(status)
}

/// Whether tonic's own timeout is anywhere in `err`'s source chain.
fn timed_out(err: &BoxError) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&**err);
    while let Some(e) = current {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Layer for tonic clients: rejections of the layers below become their `tonic::Status`; see
/// the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub struct ClientStatusLayer {
    _priv: (),
}

impl ClientStatusLayer {
    /// The layer.
    pub fn new() -> Self {
        ClientStatusLayer { _priv: () }
    }
}

impl<S> Layer<S> for ClientStatusLayer {
    type Service = ClientStatus<S>;
    fn layer(&self, inner: S) -> ClientStatus<S> {
        ClientStatus::new(inner)
    }
}

/// Service built by [`ClientStatusLayer`].
#[derive(Clone)]
pub struct ClientStatus<S> {
    inner: S,
}

impl<S: fmt::Debug> fmt::Debug for ClientStatus<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStatus")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S> ClientStatus<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ClientStatus { inner }
    }

    crate::define_inner_service_accessors!();
}

impl<S, Req> Service<Req> for ClientStatus<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| client_error(e.into()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Future of [`ClientStatus`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F: fmt::Debug> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(ready!(self.project().inner.poll(cx)).map_err(|e| client_error(e.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_own_timeout_reaches_the_caller_as_deadline_exceeded() {
        let err: BoxError = Box::new(tonic::TimeoutExpired(()));
        assert_eq!(
            tonic::Status::from_error(client_error(err)).code(),
            tonic::Code::DeadlineExceeded
        );
        // Without the adapter, tonic says CANCELLED.
        let err: BoxError = Box::new(tonic::TimeoutExpired(()));
        assert_eq!(
            tonic::Status::from_error(err).code(),
            tonic::Code::Cancelled
        );
    }

    #[test]
    fn other_transport_errors_keep_tonics_mapping() {
        let err: BoxError = "connection reset".into();
        let mapped = client_error(err);
        assert_eq!(mapped.to_string(), "connection reset");
        assert!(mapped.downcast_ref::<tonic::Status>().is_none());
    }
}
