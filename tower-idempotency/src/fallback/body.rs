//! The fallback layer's response body, and the tee that stores a response while it streams.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::stale::{Read, Stale};

/// Where a response on its way to the caller is kept once its body has ended: made by the layer
/// for a success it may store, handed to [`FallbackResponse::tee`](super::exchange::FallbackResponse::tee).
pub struct Sink {
    stale: Arc<Stale>,
    read: Read,
    key: String,
    status: StatusCode,
    headers: HeaderMap,
    arrived: Instant,
    chunks: Vec<Bytes>,
    len: usize,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("status", &self.status)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Sink {
    pub(crate) fn new(
        stale: Arc<Stale>,
        read: Read,
        key: String,
        status: StatusCode,
        headers: HeaderMap,
        arrived: Instant,
    ) -> Self {
        Sink {
            stale,
            read,
            key,
            status,
            headers,
            arrived,
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// The largest body this sink keeps.
    pub fn max_bytes(&self) -> usize {
        self.stale.max_entry_bytes()
    }

    /// Keeps a copy of `chunk` (a reference count, not a copy of the bytes); `false` once the
    /// body is larger than [`max_bytes`](Self::max_bytes).
    fn push(&mut self, chunk: &Bytes) -> bool {
        self.len = self.len.saturating_add(chunk.len());
        if self.len > self.max_bytes() {
            return false;
        }
        if !chunk.is_empty() {
            self.chunks.push(chunk.clone());
        }
        true
    }

    /// Stores the whole body: the body ended (now). The entry's age counts from its headers'
    /// arrival, so the store refuses it if that is already longer than `max_age` ago, or if a
    /// younger answer for the key is there.
    pub(crate) fn finish(mut self) {
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.len);
                for chunk in &self.chunks {
                    all.extend_from_slice(chunk);
                }
                all.freeze()
            }
        };
        self.stale.insert(
            self.read,
            &self.key,
            self.status,
            self.headers,
            body,
            self.arrived,
            Instant::now(),
        );
    }
}

/// A body passed to the caller frame by frame while its copy goes into a [`Sink`]; stored when
/// it ends, forgotten if it fails, is dropped early, outgrows the sink or has trailers.
pub(crate) struct Tee<B> {
    inner: B,
    sink: Option<Sink>,
}

impl<B: Body> Tee<B> {
    /// `None` in the sink's place when the body is known to be too large.
    pub(crate) fn new(inner: B, sink: Sink) -> Self {
        let too_large = inner.size_hint().lower() > sink.max_bytes() as u64;
        let mut tee = Tee {
            inner,
            sink: (!too_large).then_some(sink),
        };
        // A body that is empty from the start is never polled (hyper reads `is_end_stream`).
        if tee.inner.is_end_stream()
            && let Some(sink) = tee.sink.take()
        {
            sink.finish();
        }
        tee
    }
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                // Trailers (gRPC's status among them) cannot be replayed: such a body is not kept.
                let keep = match (frame.data_ref(), this.sink.as_mut()) {
                    (Some(data), Some(sink)) => sink.push(data),
                    _ => !frame.is_trailers(),
                };
                if !keep {
                    this.sink = None;
                }
                // The caller may stop at `is_end_stream` without polling for the end.
                if this.inner.is_end_stream()
                    && let Some(sink) = this.sink.take()
                {
                    sink.finish();
                }
            }
            Some(Err(_)) => this.sink = None,
            None => {
                if let Some(sink) = this.sink.take() {
                    sink.finish();
                }
            }
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

/// The body of an `http` response through a [`Fallback`](super::Fallback): the inner one
/// untouched, the inner one being stored as it streams, or an answer the layer made.
///
/// ```
/// use http_body::Body as _;
/// use tower_idempotency::fallback::FallbackBody;
///
/// let body: FallbackBody<String> = FallbackBody::new("from the handler".to_owned());
/// assert_eq!(body.size_hint().exact(), Some(16));
/// ```
pub struct FallbackBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    Inner(B),
    Tee(Tee<B>),
    Full(Option<Bytes>),
}

impl<B> FallbackBody<B> {
    /// The inner service's body, passed on untouched.
    pub fn new(body: B) -> Self {
        FallbackBody {
            kind: Kind::Inner(body),
        }
    }

    pub(crate) fn tee(body: Tee<B>) -> Self {
        FallbackBody {
            kind: Kind::Tee(body),
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        FallbackBody {
            kind: Kind::Full((!data.is_empty()).then_some(data)),
        }
    }
}

impl<B> fmt::Debug for FallbackBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Inner(_) => "Inner",
            Kind::Tee(_) => "Tee",
            Kind::Full(_) => "Full",
        };
        f.debug_tuple("FallbackBody").field(&kind).finish()
    }
}

impl<B> Body for FallbackBody<B>
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
            Kind::Inner(body) => Pin::new(body).poll_frame(cx),
            Kind::Tee(body) => Pin::new(body).poll_frame(cx),
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner(body) => body.is_end_stream(),
            Kind::Tee(body) => body.is_end_stream(),
            Kind::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(body) => body.size_hint(),
            Kind::Tee(body) => body.size_hint(),
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
