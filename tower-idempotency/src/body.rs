//! The request body the inner service sees, and the response body the layer returns.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tower_red::body::{Overflow, Replay};

/// The request body handed to the inner service: the original one untouched (no key), the
/// bytes the layer read to fingerprint it, or, over the cap in pass-through mode, the bytes read
/// followed by the rest of the original.
///
/// With axum's `Router::layer`, which hands every layer `Request<axum::body::Body>`, turn it back
/// into an axum body with [`IdempotencyLayerBuilder::map_request_body`](crate::IdempotencyLayerBuilder::map_request_body)
/// and `axum::body::Body::new`.
///
/// ```
/// use http_body::Body as _;
/// use tower_idempotency::RequestBody;
///
/// let body: RequestBody<String> = RequestBody::new("as sent".to_owned());
/// assert_eq!(body.size_hint().exact(), Some(7));
/// ```
pub struct RequestBody<B> {
    kind: RequestKind<B>,
}

enum RequestKind<B> {
    Inner(B),
    Replay(Replay),
    Overflow(Overflow<B>),
}

impl<B> RequestBody<B> {
    /// The original body, passed on untouched.
    pub fn new(body: B) -> Self {
        Self {
            kind: RequestKind::Inner(body),
        }
    }

    pub(crate) fn replay(body: Replay) -> Self {
        Self {
            kind: RequestKind::Replay(body),
        }
    }

    pub(crate) fn overflow(body: Overflow<B>) -> Self {
        Self {
            kind: RequestKind::Overflow(body),
        }
    }
}

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            RequestKind::Inner(_) => "Inner",
            RequestKind::Replay(_) => "Replay",
            RequestKind::Overflow(_) => "Overflow",
        };
        f.debug_tuple("RequestBody").field(&kind).finish()
    }
}

fn never<E>(err: Infallible) -> E {
    match err {}
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().kind {
            RequestKind::Inner(body) => Pin::new(body).poll_frame(cx),
            RequestKind::Replay(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(never))),
            RequestKind::Overflow(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Inner(body) => body.is_end_stream(),
            RequestKind::Replay(body) => body.is_end_stream(),
            RequestKind::Overflow(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Inner(body) => body.size_hint(),
            RequestKind::Replay(body) => body.size_hint(),
            RequestKind::Overflow(body) => body.size_hint(),
        }
    }
}

/// The response body of the layer: the inner service's body untouched, or bytes the layer holds
/// (a stored response, a replay, or a refusal's problem+json).
///
/// ```
/// use http_body::Body as _;
/// use tower_idempotency::ResponseBody;
///
/// let body: ResponseBody<String> = ResponseBody::new("from the handler".to_owned());
/// assert!(!body.is_end_stream());
/// ```
pub struct ResponseBody<B> {
    kind: ResponseKind<B>,
}

enum ResponseKind<B> {
    Inner(B),
    Overflow(Overflow<B>),
    Full {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
}

impl<B> ResponseBody<B> {
    /// The inner service's body, passed on untouched.
    pub fn new(body: B) -> Self {
        Self {
            kind: ResponseKind::Inner(body),
        }
    }

    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: ResponseKind::Full {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    pub(crate) fn overflow(body: Overflow<B>) -> Self {
        Self {
            kind: ResponseKind::Overflow(body),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ResponseKind::Inner(_) => "Inner",
            ResponseKind::Overflow(_) => "Overflow",
            ResponseKind::Full { .. } => "Full",
        };
        f.debug_tuple("ResponseBody").field(&kind).finish()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().kind {
            ResponseKind::Inner(body) => Pin::new(body).poll_frame(cx),
            ResponseKind::Overflow(body) => Pin::new(body).poll_frame(cx),
            ResponseKind::Full { data, trailers } => Poll::Ready(
                data.take()
                    .map(|d| Ok(Frame::data(d)))
                    .or_else(|| trailers.take().map(|t| Ok(Frame::trailers(t)))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Inner(body) => body.is_end_stream(),
            ResponseKind::Overflow(body) => body.is_end_stream(),
            ResponseKind::Full { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Inner(body) => body.size_hint(),
            ResponseKind::Overflow(body) => body.size_hint(),
            ResponseKind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
