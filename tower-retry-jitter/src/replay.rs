//! Request replay: how the layer gets a second copy of a request to send again.
//!
//! - [`CloneRequest`] (the default): `Clone` requests are cloned. The copy is made before the
//!   first attempt (the request is gone once sent) and only for a request that may be retried
//!   (safe, and the policy allows more than one attempt): one `clone()` per such request, and
//!   another per retry except the last.
//! - [`TryCloneRequest`] (feature `reqwest`): `reqwest::Request::try_clone`; a request whose
//!   body is a stream cannot be cloned and is sent once.
//! - [`BufferBody`]: `http::Request<B>` whose body is not `Clone` (a streaming body, every
//!   tonic request): the body is read into memory up to a cap (64 KiB by default) with
//!   [`tower_red::body::collect`] and every attempt gets the same bytes as a [`RetryBody`].
//!   A body over the cap is sent once, as it was (the bytes read so far, then the rest of the
//!   stream), and not retried. The inner service sees `http::Request<RetryBody<B>>`; a tonic
//!   `Channel` takes `http::Request<tonic::body::Body>`, so put
//!   `map_request(|r: http::Request<RetryBody<_>>| r.map(tonic::body::Body::new))` between
//!   them.
//!
//! Implement [`ReplayRequest`] for any other way of copying a request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tower_red::body::{Overflow, Replay};

/// Makes a copy of a request for the next attempt.
pub trait ReplayRequest<Req> {
    /// A copy of `req` to send again, or `None` when it cannot be copied (it is then sent once).
    fn replay(&self, req: &Req) -> Option<Req>;
}

/// Replays `Clone` requests by cloning them; the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloneRequest;

impl<Req: Clone> ReplayRequest<Req> for CloneRequest {
    #[inline]
    fn replay(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// Replays `reqwest::Request`s with `try_clone` (feature `reqwest`).
#[cfg(feature = "reqwest")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TryCloneRequest;

#[cfg(feature = "reqwest")]
impl ReplayRequest<reqwest::Request> for TryCloneRequest {
    #[inline]
    fn replay(&self, req: &reqwest::Request) -> Option<reqwest::Request> {
        req.try_clone()
    }
}

/// The default cap of [`BufferBody`]: 64 KiB, as linkerd2-proxy replays.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Replays `http::Request<B>` with any body by buffering it up to a cap; see the
/// [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferBody {
    limit: usize,
}

impl Default for BufferBody {
    fn default() -> Self {
        BufferBody {
            limit: DEFAULT_BODY_LIMIT,
        }
    }
}

impl BufferBody {
    /// Buffers bodies of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        BufferBody { limit }
    }

    /// The cap, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// The body the inner service sees behind a [`BufferBody`] retry layer: a replayed copy, a
/// body over the cap sent once, or the original body of a request that is never retried.
#[derive(Debug)]
pub struct RetryBody<B> {
    kind: Kind<B>,
}

#[derive(Debug)]
enum Kind<B> {
    Replay(Replay),
    Overflow(Overflow<B>),
    Once(B),
}

impl<B> RetryBody<B> {
    pub(crate) fn replay(body: Replay) -> Self {
        RetryBody {
            kind: Kind::Replay(body),
        }
    }

    pub(crate) fn overflow(body: Overflow<B>) -> Self {
        RetryBody {
            kind: Kind::Overflow(body),
        }
    }

    pub(crate) fn once(body: B) -> Self {
        RetryBody {
            kind: Kind::Once(body),
        }
    }

    /// Whether this is a replayable copy of a buffered body.
    pub fn is_replay(&self) -> bool {
        matches!(self.kind, Kind::Replay(_))
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.kind {
            Kind::Replay(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Kind::Overflow(body) => Pin::new(body).poll_frame(cx),
            Kind::Once(body) => Pin::new(body).poll_frame(cx).map(|frame| {
                frame.map(|f| f.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining()))))
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Replay(body) => body.is_end_stream(),
            Kind::Overflow(body) => body.is_end_stream(),
            Kind::Once(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Replay(body) => body.size_hint(),
            Kind::Overflow(body) => body.size_hint(),
            Kind::Once(body) => body.size_hint(),
        }
    }
}
