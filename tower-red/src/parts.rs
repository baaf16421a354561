//! What the classifiers and [`RedLayer`](crate::http::RedLayer) read from requests and
//! responses, so one implementation serves `http` types and (feature `reqwest`) reqwest's.

use http::{Extensions, HeaderMap, Method, StatusCode, Uri};

/// The parts of a response a classifier reads: its status and headers.
pub trait ResponseParts {
    /// The HTTP status.
    fn status(&self) -> StatusCode;
    /// The response headers (for gRPC, trailers-only responses carry `grpc-status` here).
    fn headers(&self) -> &HeaderMap;
    /// The response extensions, for response types that expose them.
    fn extensions(&self) -> Option<&Extensions> {
        None
    }
}

impl<B> ResponseParts for http::Response<B> {
    fn status(&self) -> StatusCode {
        http::Response::status(self)
    }
    fn headers(&self) -> &HeaderMap {
        http::Response::headers(self)
    }
    fn extensions(&self) -> Option<&Extensions> {
        Some(http::Response::extensions(self))
    }
}

#[cfg(feature = "reqwest")]
impl ResponseParts for reqwest::Response {
    fn status(&self) -> StatusCode {
        reqwest::Response::status(self)
    }
    fn headers(&self) -> &HeaderMap {
        reqwest::Response::headers(self)
    }
}

/// The parts of a request that HTTP metrics and the layers read.
pub trait RequestParts {
    /// The request method.
    fn method(&self) -> &Method;
    /// The request headers.
    fn headers(&self) -> &HeaderMap;
    /// Mutable headers, for layers that write propagation headers.
    fn headers_mut(&mut self) -> &mut HeaderMap;
    /// The request extensions, for request types that expose them (reqwest's do not).
    fn extensions(&self) -> Option<&Extensions>;
    /// Mutable request extensions, for request types that expose them.
    fn extensions_mut(&mut self) -> Option<&mut Extensions>;
    /// The host and port the request goes to, when the request names them (client requests).
    fn host_port(&self) -> Option<(&str, u16)>;
}

fn uri_host_port(uri: &Uri) -> Option<(&str, u16)> {
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    Some((host, port))
}

impl<B> RequestParts for http::Request<B> {
    fn method(&self) -> &Method {
        http::Request::method(self)
    }
    fn headers(&self) -> &HeaderMap {
        http::Request::headers(self)
    }
    fn headers_mut(&mut self) -> &mut HeaderMap {
        http::Request::headers_mut(self)
    }
    fn extensions(&self) -> Option<&Extensions> {
        Some(http::Request::extensions(self))
    }
    fn extensions_mut(&mut self) -> Option<&mut Extensions> {
        Some(http::Request::extensions_mut(self))
    }
    fn host_port(&self) -> Option<(&str, u16)> {
        uri_host_port(self.uri())
    }
}

#[cfg(feature = "reqwest")]
impl RequestParts for reqwest::Request {
    fn method(&self) -> &Method {
        reqwest::Request::method(self)
    }
    fn headers(&self) -> &HeaderMap {
        reqwest::Request::headers(self)
    }
    fn headers_mut(&mut self) -> &mut HeaderMap {
        reqwest::Request::headers_mut(self)
    }
    fn extensions(&self) -> Option<&Extensions> {
        None
    }
    fn extensions_mut(&mut self) -> Option<&mut Extensions> {
        None
    }
    fn host_port(&self) -> Option<(&str, u16)> {
        let url = self.url();
        Some((url.host_str()?, url.port_or_known_default()?))
    }
}
