//! The request and response shapes a [`Fallback`](super::Fallback) serves: `http` types (axum,
//! hyper, tonic-free HTTP clients) and, with the `reqwest` feature, reqwest's.

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use http_body::Body;
use tower_red::RejectionKind;

use super::body::{FallbackBody, Sink, Tee};

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
    /// A view of a request's parts (for key functions under test, or other request types);
    /// `authority` is the URI's (without it, [`authority`](Self::authority) reads `Host`).
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

    /// `host[:port]` the request is for, as sent: the URI's authority when it has one (client
    /// requests, HTTP/2 servers, an HTTP/1.1 absolute-form target), else the `Host` header (an
    /// HTTP/1.1 server's request, whose URI is a path; RFC 9112 §3.2.2 gives the URI's
    /// authority precedence). `None` when there is neither, or the `Host` header is not text.
    pub fn authority(&self) -> Option<&'a str> {
        self.authority.or_else(|| {
            let host = self.headers.get(http::header::HOST)?;
            host.to_str().ok()
        })
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

/// A response a [`Fallback`](super::Fallback) serves: `http::Response<B>` (answered as
/// `http::Response<FallbackBody<B>>`), and `reqwest::Response` with the `reqwest` feature.
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
    /// The response, its body copied into `sink` as it streams to the caller (and stored when
    /// it ends).
    fn tee(self, sink: Sink) -> Self::Output;
    /// A response the layer made (a stale entry or a function's answer) for the request to
    /// `target`.
    fn answer(res: Response<Bytes>, target: Option<&Uri>) -> Self::Output;
}

impl<B> FallbackResponse for Response<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Output = Response<FallbackBody<B>>;

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
        self.map(FallbackBody::new)
    }

    fn tee(self, sink: Sink) -> Self::Output {
        self.map(|body| FallbackBody::tee(Tee::new(body, sink)))
    }

    fn answer(res: Response<Bytes>, _target: Option<&Uri>) -> Self::Output {
        res.map(FallbackBody::full)
    }
}

/// The response's URL as reqwest keeps it (an extension only its builder can set).
#[cfg(feature = "reqwest")]
fn with_url(parts: &mut http::response::Parts, url: reqwest::Url) {
    use reqwest::ResponseBuilderExt as _;
    if let Ok((with_url, ())) = Response::builder()
        .url(url)
        .body(())
        .map(Response::into_parts)
    {
        parts.extensions.extend(with_url.extensions);
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

    fn tee(self, sink: Sink) -> Self::Output {
        let url = self.url().clone();
        let res: Response<reqwest::Body> = self.into();
        let (mut parts, body) = res.into_parts();
        with_url(&mut parts, url);
        let body = reqwest::Body::wrap(Tee::new(body, sink));
        reqwest::Response::from(Response::from_parts(parts, body))
    }

    fn answer(res: Response<Bytes>, target: Option<&Uri>) -> Self::Output {
        let (mut parts, body) = res.into_parts();
        if let Some(url) = target.and_then(|t| reqwest::Url::parse(&t.to_string()).ok()) {
            with_url(&mut parts, url);
        }
        reqwest::Response::from(Response::from_parts(parts, body))
    }
}
