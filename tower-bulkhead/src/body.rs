//! When a permit is given back: when the response arrives ([`OnResponse`], the default), or
//! when an HTTP response body has ended or was dropped ([`OnBodyEnd`]).
//!
//! tower's `ConcurrencyLimit` frees its permit when the response head arrives, so a server
//! streaming large bodies can hold far more bodies open than its limit says. With
//! [`Builder::hold_permit_until_body_end`](crate::Builder::hold_permit_until_body_end) the body
//! is wrapped in a [`PermitBody`] that carries the permit to the end.
//!
//! ```
//! use std::num::NonZeroUsize;
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_bulkhead::BulkheadLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = BulkheadLayer::builder()
//!     .max_concurrent(1)
//!     .hold_permit_until_body_end()
//!     .build()
//!     .unwrap();
//! let handle = layer.handle();
//! let svc = layer.layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from("hi"))))
//! }));
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(handle.in_flight("default"), Some(1), "the body still holds the permit");
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "hi");
//! assert_eq!(handle.in_flight("default"), Some(0));
//! # }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::partition::Permit;

/// Decides what happens to a call's permit when its response arrives.
pub trait Release<Res> {
    /// The response the bulkhead returns.
    type Output;

    /// Attaches `permit` to `res`, or drops it.
    fn attach(res: Res, permit: Permit) -> Self::Output;
}

/// Frees the permit when the response arrives (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct OnResponse;

impl<Res> Release<Res> for OnResponse {
    type Output = Res;

    #[inline]
    fn attach(res: Res, permit: Permit) -> Res {
        drop(permit);
        res
    }
}

/// Frees the permit when the HTTP response body has ended, failed or was dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnBodyEnd;

impl<B: Body> Release<http::Response<B>> for OnBodyEnd {
    type Output = http::Response<PermitBody<B>>;

    fn attach(res: http::Response<B>, permit: Permit) -> Self::Output {
        res.map(|body| PermitBody::new(body, permit))
    }
}

pin_project! {
    /// A response body holding a bulkhead permit until it has ended, failed or was dropped.
    #[derive(Debug)]
    pub struct PermitBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }
}

impl<B: Body> PermitBody<B> {
    fn new(inner: B, permit: Permit) -> Self {
        // An empty body has nothing left to hold the place for.
        let permit = (!inner.is_end_stream()).then_some(permit);
        PermitBody { inner, permit }
    }
}

impl<B> PermitBody<B> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Whether the permit is still held.
    pub fn holds_permit(&self) -> bool {
        self.permit.is_some()
    }
}

impl<B: Body> Body for PermitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
        };
        if ended {
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
