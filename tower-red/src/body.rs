//! A bounded body collector, for layers that must send a request more than once (retries) or
//! read its payload before passing it on (idempotency fingerprints).
//!
//! [`collect`] reads an [`http_body::Body`] up to a byte cap and loses nothing:
//!
//! - **At or under the cap** you get [`Buffered::Complete`]: the bytes and the trailers (gRPC
//!   requests may carry some), and [`Collected::body`] builds a fresh [`Replay`] body from them
//!   as many times as you need, without copying.
//! - **Over the cap** you get [`Buffered::Overflow`]: a body that yields the frames already read
//!   and then the rest of the original stream, untouched (trailers and errors included), so the
//!   request can still be sent once. Reading stops at the frame that crossed the cap; a body
//!   whose size hint already says it is too large is not read at all.
//! - **A body error** while collecting is returned as the error; nothing is swallowed.
//!
//! `http_body_util::Limited` caps a body too, but it fails with an error once the cap is
//! crossed and drops what it read, so the request could not be sent at all.
//!
//! The body must be `Unpin` so an overflowing one can be handed back; tonic's, hyper's and
//! axum's bodies are, and any other can be passed as `Box::pin(body)`.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Either, Full};
//! use tower_red::body::{collect, Buffered, Overflow, Replay};
//!
//! // What the layer sends on: a replayed body, or the original one (read part and rest).
//! type Outgoing = http::Request<Either<Replay, Overflow<Full<Bytes>>>>;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let req = http::Request::post("/orders").body(Full::new(Bytes::from("{\"qty\":1}"))).unwrap();
//! let (parts, body) = req.into_parts();
//! let mut sent = Vec::new();
//! match collect(body, 64 * 1024).await.expect("the body did not fail") {
//!     // Every attempt gets its own copy of the same bytes.
//!     Buffered::Complete(collected) => {
//!         for _attempt in 0..2 {
//!             let req: Outgoing = http::Request::from_parts(parts.clone(), Either::Left(collected.body()));
//!             sent.push(req.into_body().collect().await.unwrap().to_bytes());
//!         }
//!     }
//!     // Too large to replay: send it once, as it was.
//!     Buffered::Overflow(rest) => {
//!         let req: Outgoing = http::Request::from_parts(parts, Either::Right(rest));
//!         sent.push(req.into_body().collect().await.unwrap().to_bytes());
//!     }
//! }
//! assert_eq!(sent, ["{\"qty\":1}", "{\"qty\":1}"]);
//! # }
//! //! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// Reads `body` until it ends or more than `limit` bytes of data have been read; see the
/// [module docs](self).
pub fn collect<B>(body: B, limit: usize) -> Collect<B>
where
    B: Body + Unpin,
{
    Collect {
        body: Some(body),
        limit,
        chunks: Vec::new(),
        len: 0,
        trailers: None,
    }
}

/// What [`collect`] found.
#[derive(Debug)]
pub enum Buffered<B> {
    /// The whole body, at most `limit` bytes of data: it can be replayed.
    Complete(Collected),
    /// The body has more than `limit` bytes of data: what was read, then the rest of it.
    Overflow(Overflow<B>),
}

/// A whole body held in memory: its data and trailers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Collected {
    /// The body's data, contiguous.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The body's trailers, if it had any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// The number of data bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the body had no data.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// A new body with the same data and trailers. Cheap: the data is shared, not copied (the
    /// trailers, if any, are cloned).
    pub fn body(&self) -> Replay {
        Replay {
            data: (!self.data.is_empty()).then(|| self.data.clone()),
            trailers: self.trailers.clone(),
        }
    }

    /// The data and the trailers.
    pub fn into_parts(self) -> (Bytes, Option<HeaderMap>) {
        (self.data, self.trailers)
    }
}

/// A body replayed from a [`Collected`]: one data frame, then the trailers if there were any.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// A body over the cap: the data frames [`collect`] read, then the rest of the original body.
pub struct Overflow<B> {
    prefix: VecDeque<Frame<Bytes>>,
    prefix_len: usize,
    rest: B,
}

impl<B> fmt::Debug for Overflow<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overflow")
            .field("prefix_len", &self.prefix_len)
            .finish_non_exhaustive()
    }
}

impl<B> Overflow<B> {
    /// How many data bytes were read before the cap was crossed (0 when the size hint alone
    /// showed the body was too large).
    pub fn prefix_len(&self) -> usize {
        self.prefix_len
    }
}

impl<B> Body for Overflow<B>
where
    B: Body + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(frame) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let frame = ready!(Pin::new(&mut self.rest).poll_frame(cx));
        Poll::Ready(frame.map(|f| f.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let queued: u64 = self
            .prefix
            .iter()
            .filter_map(Frame::data_ref)
            .map(|c| c.len() as u64)
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(queued));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(queued));
        }
        hint
    }
}

/// Future of [`collect`].
#[must_use = "futures do nothing unless polled"]
pub struct Collect<B> {
    body: Option<B>,
    limit: usize,
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
}

impl<B> fmt::Debug for Collect<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collect")
            .field("limit", &self.limit)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<B> Collect<B> {
    fn overflow(&mut self, rest: B) -> Buffered<B> {
        let mut prefix: VecDeque<_> = self.chunks.drain(..).map(Frame::data).collect();
        // Trailers come last; a body that sent data after them still gets every frame back.
        if let Some(trailers) = self.trailers.take() {
            prefix.push_back(Frame::trailers(trailers));
        }
        Buffered::Overflow(Overflow {
            prefix,
            prefix_len: self.len,
            rest,
        })
    }

    fn complete(&mut self) -> Buffered<B> {
        let data = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().expect("one chunk"),
            _ => {
                let mut all = BytesMut::with_capacity(self.len);
                for chunk in self.chunks.drain(..) {
                    all.extend_from_slice(&chunk);
                }
                all.freeze()
            }
        };
        Buffered::Complete(Collected {
            data,
            trailers: self.trailers.take(),
        })
    }
}

impl<B> Future for Collect<B>
where
    B: Body + Unpin,
{
    type Output = Result<Buffered<B>, B::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let body = this.body.as_mut().expect("polled after completion");
        if this.len == 0 && this.chunks.is_empty() && body.size_hint().lower() > this.limit as u64 {
            let rest = this.body.take().expect("checked above");
            return Poll::Ready(Ok(this.overflow(rest)));
        }
        loop {
            let body = this.body.as_mut().expect("polled after completion");
            match ready!(Pin::new(body).poll_frame(cx)) {
                None => {
                    this.body = None;
                    return Poll::Ready(Ok(this.complete()));
                }
                Some(Err(err)) => {
                    this.body = None;
                    return Poll::Ready(Err(err));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let chunk = data.copy_to_bytes(data.remaining());
                        if chunk.is_empty() {
                            continue;
                        }
                        this.len = this.len.saturating_add(chunk.len());
                        this.chunks.push(chunk);
                        if this.len > this.limit {
                            let rest = this.body.take().expect("polled above");
                            return Poll::Ready(Ok(this.overflow(rest)));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match &mut this.trailers {
                                Some(seen) => seen.extend(trailers),
                                None => this.trailers = Some(trailers),
                            }
                        }
                    }
                },
            }
        }
    }
}
