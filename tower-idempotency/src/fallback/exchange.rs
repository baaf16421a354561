//! The request and response shapes a [`Fallback`](super::Fallback) serves: `http` types (axum,
//! hyper, tonic-free HTTP clients) and, with the `reqwest` feature, reqwest's.

use std::future::Future;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use http_body::Body;
use tower_red::RejectionKind;
use tower_red::body::{Buffered, collect};

use crate::body::ResponseBody;

/// What the key function sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    method: &'a Method,
    authority: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// A view of a request's parts (for key functions under test, or other request types).
    pub fn new(
        method: &'a Method,
        authority: Option<&'a str>,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> Self {
        RequestView {
            method,
            authority,
            path,
            query,
            headers,
        }
    }

    /// The method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// `host[:port]` when the URI is absolute (client requests), else `None`.
    pub fn authority(&self) -> Option<&'a str> {
        self.authority
    }

    /// The path.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The query, without `?`.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }
}

/// A request a [`Fallback`](super::Fallback) serves: `http::Request<B>`, and `reqwest::Request`
/// with the `reqwest` feature.
pub trait FallbackRequest {
    /// The parts the key function reads.
    fn view(&self) -> RequestView<'_>;
    /// The URI, for a fallback function's context (may allocate; only called when one is set).
    fn target(&self) -> Uri;
}

impl<B> FallbackRequest for http::Request<B> {
    fn view(&self) -> RequestView<'_> {
        let uri = self.uri();
        RequestView::new(
            self.method(),
            uri.authority().map(|a| a.as_str()),
            uri.path(),
            uri.query(),
            self.headers(),
        )
    }

    fn target(&self) -> Uri {
        self.uri().clone()
    }
}

#[cfg(feature = "reqwest")]
impl FallbackRequest for reqwest::Request {
    fn view(&self) -> RequestView<'_> {
        let url = self.url();
        RequestView::new(
            self.method(),
            Some(url.authority()).filter(|a| !a.is_empty()),
            url.path(),
            url.query(),
            self.headers(),
        )
    }

    fn target(&self) -> Uri {
        let url = self.url();
        let end = url.as_str().len() - url.fragment().map_or(0, |f| f.len() + 1);
        Uri::try_from(&url.as_str()[..end]).unwrap_or_default()
    }
}

/// What [`FallbackResponse::capture`] made of a response.
#[derive(Debug)]
pub enum Captured<O> {
    /// The whole body was read (at most the cap): the response to send, and its body to store.
    Whole(O, Bytes),
    /// The body is larger than the cap: the response streams on, unstored.
    Streamed(O),
    /// The body failed while it was read: nothing is left to send.
    Failed,
}

/// A response a [`Fallback`](super::Fallback) serves: `http::Response<B>` (answered as
/// `http::Response<ResponseBody<B>>`), and `reqwest::Response` with the `reqwest` feature.
pub trait FallbackResponse: Sized {
    /// What the layer answers with.
    type Output;

    /// The status.
    fn status(&self) -> StatusCode;
    /// The headers.
    fn headers(&self) -> &HeaderMap;
    /// The refusal this response was built from, when an inner layer's refusal became it.
    fn refused(&self) -> Option<RejectionKind>;
    /// The response as it is.
    fn pass(self) -> Self::Output;
    /// Reads the body, up to `max_bytes`, so it can be stored.
    fn capture(self, max_bytes: usize) -> impl Future<Output = Captured<Self::Output>> + Send;
    /// A response the layer made (a stale entry or a function's answer) for the request to
    /// `target`.
    fn answer(res: Response<Bytes>, target: Option<&Uri>) -> Self::Output;
    /// An empty 502 for a body that failed while the layer read it, when nothing else can answer.
    fn body_failed() -> Self::Output;
}

impl<B> FallbackResponse for Response<B>
where
    B: Body<Data = Bytes> + Unpin + Send,
{
    type Output = Response<ResponseBody<B>>;

    fn status(&self) -> StatusCode {
        Response::status(self)
    }

    fn headers(&self) -> &HeaderMap {
        Response::headers(self)
    }

    fn refused(&self) -> Option<RejectionKind> {
        self.extensions().get::<RejectionKind>().copied()
    }

    fn pass(self) -> Self::Output {
        self.map(ResponseBody::new)
    }

    fn capture(self, max_bytes: usize) -> impl Future<Output = Captured<Self::Output>> + Send {
        let (parts, body) = self.into_parts();
        async move {
            match collect(body, max_bytes).await {
                Ok(Buffered::Complete(collected)) => {
                    let (data, trailers) = collected.into_parts();
                    let res =
                        Response::from_parts(parts, ResponseBody::full(data.clone(), trailers));
                    Captured::Whole(res, data)
                }
                Ok(Buffered::Overflow(rest)) => {
                    Captured::Streamed(Response::from_parts(parts, ResponseBody::overflow(rest)))
                }
                Err(_) => Captured::Failed,
            }
        }
    }

    fn answer(res: Response<Bytes>, _target: Option<&Uri>) -> Self::Output {
        res.map(|body| ResponseBody::full(body, None))
    }

    fn body_failed() -> Self::Output {
        let mut res = Response::new(ResponseBody::full(Bytes::new(), None));
        *res.status_mut() = StatusCode::BAD_GATEWAY;
        res
    }
}

#[cfg(feature = "reqwest")]
impl FallbackResponse for reqwest::Response {
    type Output = reqwest::Response;

    fn status(&self) -> StatusCode {
        reqwest::Response::status(self)
    }

    fn headers(&self) -> &HeaderMap {
        reqwest::Response::headers(self)
    }

    fn refused(&self) -> Option<RejectionKind> {
        None
    }

    fn pass(self) -> Self::Output {
        self
    }

    fn capture(self, max_bytes: usize) -> impl Future<Output = Captured<Self::Output>> + Send {
        use reqwest::ResponseBuilderExt as _;
        let url = self.url().clone();
        let res: Response<reqwest::Body> = self.into();
        let (mut parts, body) = res.into_parts();
        // Keeps the response's URL on the rebuilt one (reqwest reads it from an extension).
        let (with_url, ()) = Response::builder()
            .url(url)
            .body(())
            .map(Response::into_parts)
            .unwrap_or_else(|_| Response::new(()).into_parts());
        parts.extensions.extend(with_url.extensions);
        async move {
            match collect(body, max_bytes).await {
                Ok(Buffered::Complete(collected)) => {
                    let data = collected.data().clone();
                    let res = Response::from_parts(parts, reqwest::Body::wrap(collected.body()));
                    Captured::Whole(reqwest::Response::from(res), data)
                }
                Ok(Buffered::Overflow(rest)) => {
                    let res = Response::from_parts(parts, reqwest::Body::wrap(rest));
                    Captured::Streamed(reqwest::Response::from(res))
                }
                Err(_) => Captured::Failed,
            }
        }
    }

    fn answer(res: Response<Bytes>, target: Option<&Uri>) -> Self::Output {
        use reqwest::ResponseBuilderExt as _;
        let (mut parts, body) = res.into_parts();
        if let Some(url) = target.and_then(|t| reqwest::Url::parse(&t.to_string()).ok())
            && let Ok((with_url, ())) = Response::builder()
                .url(url)
                .body(())
                .map(Response::into_parts)
        {
            parts.extensions.extend(with_url.extensions);
        }
        reqwest::Response::from(Response::from_parts(parts, body))
    }

    fn body_failed() -> Self::Output {
        let mut res = Response::new(Bytes::new());
        *res.status_mut() = StatusCode::BAD_GATEWAY;
        reqwest::Response::from(res)
    }
}
