//! Stored responses: what is kept of a response, how it is replayed, and the layer's refusals.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode, response::Parts};
use tower_red::{Rejection, RejectionKind, problem};

use crate::body::ResponseBody;
use crate::store::Record;

/// The header that marks a replayed response.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

/// Headers that belong to one connection (RFC 9110 §7.6.1), to one client (`Set-Cookie`), or that
/// the replay recomputes (`Content-Length`).
const NEVER_STORED: [HeaderName; 11] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::SET_COOKIE,
    header::CONTENT_LENGTH,
];

/// The headers of `headers` worth replaying: not hop-by-hop, not named by `Connection`, not
/// `Set-Cookie`, not denied.
pub(crate) fn kept_headers(headers: &HeaderMap, deny: &[HeaderName]) -> Vec<(String, Vec<u8>)> {
    let named_by_connection = |name: &HeaderName| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
            })
        })
    };
    headers
        .iter()
        .filter(|(name, _)| {
            !NEVER_STORED.contains(name) && !deny.contains(name) && !named_by_connection(name)
        })
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// The record of a response: its status, kept headers, whole body and kept trailers (after the
/// headers, under [`Record::TRAILER_PREFIX`]).
pub(crate) fn record(
    parts: &Parts,
    body: Bytes,
    trailers: Option<&HeaderMap>,
    deny: &[HeaderName],
) -> Record {
    let mut headers = kept_headers(&parts.headers, deny);
    if let Some(trailers) = trailers {
        headers.extend(
            kept_headers(trailers, deny)
                .into_iter()
                .map(|(name, value)| (format!("{}{name}", Record::TRAILER_PREFIX), value)),
        );
    }
    Record {
        status: parts.status.as_u16(),
        headers,
        body,
    }
}

/// The replay of a stored record, with its trailers, marked with `Idempotency-Replayed: true`. A
/// header or trailer that does not parse (only possible from a foreign or corrupt entry) is
/// skipped.
pub(crate) fn replay<B>(record: Record) -> Response<ResponseBody<B>> {
    let mut headers = HeaderMap::with_capacity(record.headers.len() + 1);
    let mut trailers = HeaderMap::new();
    for (name, value) in record.headers {
        let (map, name) = match name.strip_prefix(Record::TRAILER_PREFIX) {
            Some(name) => (&mut trailers, name),
            None => (&mut headers, name.as_str()),
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            map.append(name, value);
        }
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    let trailers = (!trailers.is_empty()).then_some(trailers);
    let mut res = Response::new(ResponseBody::full(record.body, trailers));
    *res.status_mut() = StatusCode::from_u16(record.status).unwrap_or(StatusCode::OK);
    *res.headers_mut() = headers;
    res
}

/// The problem+json response of one of the layer's refusals.
pub(crate) fn refusal<B>(
    kind: RejectionKind,
    detail: &'static str,
    retry_after: Option<Duration>,
    name: &std::sync::Arc<str>,
) -> Response<ResponseBody<B>> {
    let mut rejection = Rejection::new(kind)
        .with_detail(detail)
        .with_name(name.clone());
    if let Some(after) = retry_after {
        rejection = rejection.with_retry_after(after);
    }
    problem::rejection_response(&rejection).map(|body| ResponseBody::full(full_bytes(body), None))
}

/// 413 for a body too large to fingerprint (no rejection kind of the workspace is about size).
pub(crate) fn too_large<B>(max: usize) -> Response<ResponseBody<B>> {
    let body = format!(
        "{{\"type\":\"{}idempotency_body_too_large\",\"title\":\"request body too large\",\
         \"status\":413,\"detail\":\"a request with an idempotency key may carry at most {max} bytes\"}}",
        problem::TYPE_PREFIX
    );
    let mut res = Response::new(ResponseBody::full(Bytes::from(body), None));
    *res.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(problem::PROBLEM_JSON),
    );
    res
}

/// A 500 for a handler whose response body failed while the layer read it: nothing to send.
pub(crate) fn body_failed<B>() -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::full(Bytes::new(), None));
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res
}

fn full_bytes(body: problem::ProblemBody) -> Bytes {
    use http_body::Body as _;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    // A `Full` body yields its one frame at once, without waking anyone.
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    match body.as_mut().poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_cookies_length_denied_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("location", HeaderValue::from_static("/orders/1"));
        h.insert("set-cookie", HeaderValue::from_static("s=1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("connection", HeaderValue::from_static("close, x-trace"));
        h.insert("x-trace", HeaderValue::from_static("abc"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        let kept = kept_headers(&h, &[HeaderName::from_static("x-secret")]);
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "location"]);
    }

    #[test]
    fn a_record_keeps_the_trailers_after_the_headers_under_their_prefix() {
        let (parts, ()) = Response::builder()
            .header("content-type", "application/grpc")
            .header("trailer", "grpc-status")
            .body(())
            .unwrap()
            .into_parts();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-secret", HeaderValue::from_static("s"));
        let deny = [HeaderName::from_static("x-secret")];
        let kept = record(&parts, Bytes::new(), Some(&trailers), &deny);
        let names: Vec<&str> = kept.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", ":trailer:grpc-status"]);
        let none = record(&parts, Bytes::new(), None, &deny);
        assert_eq!(none.headers.len(), 1);
    }

    #[tokio::test]
    async fn a_replay_sends_the_stored_trailers_after_the_body() {
        use http_body_util::BodyExt as _;
        let record = Record {
            status: 200,
            headers: vec![
                ("content-type".into(), b"application/grpc".to_vec()),
                (":trailer:grpc-status".into(), b"13".to_vec()),
                (":trailer:grpc-message".into(), b"internal".to_vec()),
                (":trailer:bad name".into(), b"v".to_vec()),
            ],
            body: "msg".into(),
        };
        let res = replay::<String>(record);
        assert_eq!(res.headers().len(), 2, "content-type and the marker");
        let collected = res.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers.len(), 2);
        assert_eq!(trailers["grpc-status"], "13");
        assert_eq!(trailers["grpc-message"], "internal");
        assert_eq!(collected.to_bytes(), "msg");
    }

    #[tokio::test]
    async fn a_replay_without_trailers_sends_none() {
        use http_body_util::BodyExt as _;
        let record = Record {
            status: 201,
            headers: vec![],
            body: "done".into(),
        };
        let collected = replay::<String>(record)
            .into_body()
            .collect()
            .await
            .unwrap();
        assert!(collected.trailers().is_none());
    }

    #[test]
    fn a_replay_carries_status_headers_body_and_the_marker() {
        let record = Record {
            status: 201,
            headers: vec![
                ("x-a".into(), b"1".to_vec()),
                ("x-a".into(), b"2".to_vec()),
                ("bad name".into(), b"v".to_vec()),
            ],
            body: "done".into(),
        };
        let res = replay::<String>(record);
        assert_eq!(res.status(), 201);
        let all: Vec<_> = res.headers().get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(res.headers()[REPLAYED], "true");
        assert_eq!(res.headers().len(), 3);
    }
}
