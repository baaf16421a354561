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
    /// The scheme and authority the request names, verbatim, when reading them costs nothing:
    /// the key under which the client `RedLayer` remembers what [`host_port`](Self::host_port)
    /// and its host table answered for the last request, so the next one to the same target
    /// parses and looks up nothing. `None` (the default) means no memo.
    fn target(&self) -> Option<(&str, &str)> {
        None
    }
}

/// The host and port of `uri`'s authority, exactly as `Uri::host` and `Uri::port_u16` give them
/// (an IPv6 host keeps its brackets; no port, or one that is not a `u16`, is the scheme's
/// default), reading the authority once per question with `memchr`-backed searches: the host
/// after the userinfo's last `@`, up to its `]` when it starts with `[` or else up to its first
/// `:`; the port after the authority's last `:`. Unlike `http`'s own accessors, it never
/// panics, whatever the authority. The client `RedLayer` calls it only when a request goes to
/// another target than the thread's last ([`RequestParts::target`]).
fn uri_host_port(uri: &Uri) -> Option<(&str, u16)> {
    let authority = uri.authority()?.as_str();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let host = if host_port.starts_with('[') {
        host_port.find(']').map_or(host_port, |i| &host_port[..=i])
    } else {
        host_port
            .split_once(':')
            .map_or(host_port, |(host, _)| host)
    };
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .unwrap_or(match uri.scheme_str() {
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
    fn target(&self) -> Option<(&str, &str)> {
        let uri = self.uri();
        Some((uri.scheme_str().unwrap_or(""), uri.authority()?.as_str()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `http`'s own accessors give, the reference the one-pass parse must match.
    fn by_http(uri: &Uri) -> Option<(&str, u16)> {
        let host = uri.host()?;
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        Some((host, port))
    }

    #[test]
    fn host_and_port_match_http_accessors_for_every_authority_shape() {
        for text in [
            "http://api.internal:8080/users/7",
            "http://api.internal/users/7",
            "https://api.internal/users/7",
            "https://api.internal:8443",
            "http://user:secret@api.internal:81/x",
            "http://user@api.internal/x",
            "http://a@b@api.internal:82/x",
            "http://[::1]:8080/x",
            "http://[::1]/x",
            "https://[2001:db8::7]/x",
            "http://user:pw@[::1]:9/x",
            "http://api.internal:/x",
            "http://127.0.0.1:65535/x",
            "http://api.internal:99999/x",
            "/relative/path",
            "api.internal:8080",
        ] {
            let uri: Uri = text.parse().expect(text);
            assert_eq!(uri_host_port(&uri), by_http(&uri), "{text}");
        }
    }

    /// Every authority of up to five characters from the ones that shape it (digits ending a
    /// host, `:`, a signed port, brackets, userinfo) that `http` accepts, under both default
    /// ports, stray brackets included: each must give what `http` gives.
    #[test]
    fn host_and_port_match_http_accessors_for_every_short_authority() {
        const ALPHABET: &[u8] = b"a1:[]@+.";
        let mut checked = 0;
        let mut authority = Vec::new();
        for len in 1..=5u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                authority.clear();
                for _ in 0..len {
                    authority.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                let authority = std::str::from_utf8(&authority).unwrap();
                for scheme in ["http", "https"] {
                    let Ok(uri) = format!("{scheme}://{authority}/x").parse::<Uri>() else {
                        continue;
                    };
                    assert_eq!(uri_host_port(&uri), by_http(&uri), "{uri}");
                    checked += 1;
                }
            }
        }
        // Most strings are not authorities; enough are for every branch.
        assert!(checked > 1000, "{checked}");
    }
}
