//! The bounded body collector: under the cap a replayable body, over it the original stream with
//! nothing lost, errors surfaced.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower_red::body::{Buffered, collect};

/// A body that yields the given frames one by one (and can fail), with no size hint.
struct Frames {
    frames: VecDeque<Result<Frame<Bytes>, &'static str>>,
}

impl Frames {
    fn data(chunks: &[&[u8]]) -> Frames {
        Frames {
            frames: chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect(),
        }
    }

    fn with_trailers(mut self, trailers: HeaderMap) -> Frames {
        self.frames.push_back(Ok(Frame::trailers(trailers)));
        self
    }

    fn then_fail(mut self, err: &'static str) -> Frames {
        self.frames.push_back(Err(err));
        self
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        Poll::Ready(self.frames.pop_front())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn grpc_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    t
}

/// Every frame of a body, data concatenated, trailers kept, the error if any.
async fn drain<B>(body: B) -> (Vec<u8>, Option<HeaderMap>, Option<String>)
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Err(e) => return (data, trailers, Some(e.to_string())),
        }
    }
    (data, trailers, None)
}

#[tokio::test]
async fn under_the_cap_the_body_replays_any_number_of_times() {
    let buffered = collect(Frames::data(&[b"hello ", b"wor", b"ld"]), 64)
        .await
        .unwrap();
    let Buffered::Complete(collected) = buffered else {
        panic!("11 bytes fit in 64");
    };
    assert_eq!(collected.data(), &Bytes::from_static(b"hello world"));
    assert_eq!(collected.len(), 11);
    for _ in 0..3 {
        let replay = collected.body();
        assert_eq!(replay.size_hint().exact(), Some(11));
        let (data, trailers, err) = drain(replay).await;
        assert_eq!(data, b"hello world");
        assert!(trailers.is_none());
        assert!(err.is_none());
    }
}

#[tokio::test]
async fn exactly_at_the_cap_is_complete() {
    let buffered = collect(Frames::data(&[b"12345", b"67890"]), 10)
        .await
        .unwrap();
    assert!(matches!(buffered, Buffered::Complete(ref c) if c.len() == 10));
}

#[tokio::test]
async fn an_empty_body_is_complete_and_replays_empty() {
    let buffered = collect(Frames::data(&[]), 0).await.unwrap();
    let Buffered::Complete(collected) = buffered else {
        panic!("empty fits in 0");
    };
    assert!(collected.is_empty());
    let replay = collected.body();
    assert!(replay.is_end_stream());
    assert_eq!(drain(replay).await.0, b"");
}

#[tokio::test]
async fn over_the_cap_the_prefix_and_the_rest_are_the_original_body() {
    let buffered = collect(Frames::data(&[b"12345", b"67890", b"abc", b"def"]), 9)
        .await
        .unwrap();
    let Buffered::Overflow(over) = buffered else {
        panic!("16 bytes do not fit in 9");
    };
    // Read up to and including the frame that crossed the cap, no further.
    assert_eq!(over.prefix_len(), 10);
    let (data, trailers, err) = drain(over).await;
    assert_eq!(data, b"1234567890abcdef");
    assert!(trailers.is_none());
    assert!(err.is_none());
}

#[tokio::test]
async fn a_size_hint_over_the_cap_reads_nothing() {
    let body = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
    let Buffered::Overflow(over) = collect(body, 4).await.unwrap() else {
        panic!("the hint says 10 bytes");
    };
    assert_eq!(over.prefix_len(), 0);
    assert_eq!(drain(over).await.0, b"0123456789");
}

#[tokio::test]
async fn trailers_are_kept_under_the_cap() {
    let body = Frames::data(&[b"\0\0\0\0\x02hi"]).with_trailers(grpc_trailers());
    let Buffered::Complete(collected) = collect(body, 1024).await.unwrap() else {
        panic!("fits");
    };
    assert_eq!(collected.trailers(), Some(&grpc_trailers()));
    for _ in 0..2 {
        let (data, trailers, _) = drain(collected.body()).await;
        assert_eq!(data, b"\0\0\0\0\x02hi");
        assert_eq!(trailers, Some(grpc_trailers()));
    }
}

#[tokio::test]
async fn trailers_are_kept_over_the_cap() {
    let body = Frames::data(&[b"0123", b"4567"]).with_trailers(grpc_trailers());
    let Buffered::Overflow(over) = collect(body, 5).await.unwrap() else {
        panic!("8 bytes do not fit in 5");
    };
    let (data, trailers, err) = drain(over).await;
    assert_eq!(data, b"01234567");
    assert_eq!(trailers, Some(grpc_trailers()));
    assert!(err.is_none());
}

#[tokio::test]
async fn an_error_while_collecting_is_returned() {
    let body = Frames::data(&[b"abc"]).then_fail("connection reset");
    let err = collect(body, 64).await.err();
    assert_eq!(err, Some("connection reset"));
}

#[tokio::test]
async fn an_error_after_the_cap_comes_through_the_rest() {
    let body = Frames::data(&[b"abcdef", b"ghi"]).then_fail("connection reset");
    let Buffered::Overflow(over) = collect(body, 4).await.unwrap() else {
        panic!("over the cap");
    };
    let (data, _, err) = drain(over).await;
    assert_eq!(data, b"abcdefghi");
    assert_eq!(err.as_deref(), Some("connection reset"));
}

#[tokio::test]
async fn a_replay_is_infallible_and_clone() {
    let Buffered::Complete(collected) = collect(Frames::data(&[b"x"]), 1).await.unwrap() else {
        panic!("fits");
    };
    let replay = collected.body();
    let again = replay.clone();
    let _: Result<_, Infallible> = replay.collect().await;
    assert_eq!(drain(again).await.0, b"x");
}

proptest! {
    #[test]
    fn prefix_and_rest_are_the_original_for_any_chunking(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..12),
        limit in 0usize..300,
        trailers in any::<bool>(),
    ) {
        let original: Vec<u8> = chunks.concat();
        let slices: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let mut body = Frames::data(&slices);
        if trailers {
            body = body.with_trailers(grpc_trailers());
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            match collect(body, limit).await.unwrap() {
                Buffered::Complete(collected) => {
                    prop_assert!(original.len() <= limit);
                    prop_assert_eq!(collected.data().as_ref(), original.as_slice());
                    let (data, t, _) = drain(collected.body()).await;
                    prop_assert_eq!(data, original.clone());
                    prop_assert_eq!(t.is_some(), trailers);
                }
                Buffered::Overflow(over) => {
                    prop_assert!(original.len() > limit);
                    prop_assert!(over.prefix_len() > limit);
                    let (data, t, err) = drain(over).await;
                    prop_assert_eq!(data, original.clone());
                    prop_assert_eq!(t.is_some(), trailers);
                    prop_assert!(err.is_none());
                }
            }
            Ok(())
        })?;
    }
}

/// The bodies the retry and idempotency layers meet are `Unpin`, so they collect as they are,
/// and the collector's types can cross threads with them.
#[allow(dead_code)]
fn framework_bodies_collect_as_they_are() {
    fn send<T: Send + 'static>(_: &T) {}
    #[cfg(feature = "tonic")]
    {
        let c = collect(tonic::body::Body::empty(), 1024);
        send(&c);
    }
    #[cfg(feature = "axum")]
    {
        let c = collect(axum::body::Body::empty(), 1024);
        send(&c);
    }
    send(&collect(http_body_util::Full::new(Bytes::new()), 0));
}

#[cfg(feature = "tonic")]
#[tokio::test]
async fn a_tonic_request_body_replays_with_its_frames() {
    let body =
        tonic::body::Body::new(Frames::data(&[b"\0\0\0\0\x01a"]).map_err(tonic::Status::internal));
    let Buffered::Complete(collected) = collect(body, 64).await.unwrap() else {
        panic!("fits");
    };
    for _ in 0..2 {
        let replayed = tonic::body::Body::new(collected.body());
        assert_eq!(
            replayed.collect().await.unwrap().to_bytes(),
            &b"\0\0\0\0\x01a"[..]
        );
    }
}
