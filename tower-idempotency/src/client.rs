//! The client-side layer: a key on every unsafe outbound request that has none.

use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tower_layer::Layer;
use tower_service::Service;

/// A request the client layer can add a key to: `http::Request<B>`, and `reqwest::Request` with
/// the `reqwest` feature.
pub trait KeyedRequest {
    /// The request method.
    fn method(&self) -> &Method;
    /// The request headers, to read and add the key.
    fn headers_mut(&mut self) -> &mut HeaderMap;
}

impl<B> KeyedRequest for http::Request<B> {
    fn method(&self) -> &Method {
        self.method()
    }

    fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers_mut()
    }
}

#[cfg(feature = "reqwest")]
impl KeyedRequest for reqwest::Request {
    fn method(&self) -> &Method {
        self.method()
    }

    fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers_mut()
    }
}

/// Adds an `Idempotency-Key` (a fresh UUID v7, quoted: the draft's Structured Field String) to
/// every POST and PATCH that has none, so a retry layer below it may retry them and every attempt
/// carries the same key. Put it **above** the retry layer: it runs once per logical request, and
/// the retries below reuse the request with its key. A request that already has a key keeps it.
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_idempotency::client::IdempotencyKeyLayer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(IdempotencyKeyLayer::new())
///     .service_fn(|req: http::Request<()>| async move {
///         Ok::<_, std::convert::Infallible>(req.headers().get("idempotency-key").cloned())
///     });
/// let key = svc.oneshot(http::Request::post("/orders").body(()).unwrap()).await.unwrap();
/// let key = key.unwrap();
/// assert_eq!(key.len(), 38); // "0193…", quotes included
/// assert!(key.as_bytes().starts_with(b"\"") && key.as_bytes().ends_with(b"\""));
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct IdempotencyKeyLayer {
    header: HeaderName,
}

impl Default for IdempotencyKeyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl IdempotencyKeyLayer {
    /// Adds `Idempotency-Key` to POST and PATCH requests.
    pub fn new() -> Self {
        Self {
            header: HeaderName::from_static("idempotency-key"),
        }
    }

    /// Uses another header name (the server's layer must use the same).
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }
}

impl<S> Layer<S> for IdempotencyKeyLayer {
    type Service = IdempotencyKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyKey {
            inner,
            header: self.header.clone(),
        }
    }
}

/// The service of [`IdempotencyKeyLayer`].
#[derive(Clone, Debug)]
pub struct IdempotencyKey<S> {
    inner: S,
    header: HeaderName,
}

impl<S> IdempotencyKey<S> {
    /// Wraps `inner`, adding `Idempotency-Key` to POST and PATCH requests.
    pub fn new(inner: S) -> Self {
        IdempotencyKeyLayer::new().layer(inner)
    }

    tower_red::define_inner_service_accessors!();
}

/// A fresh key: a UUID v7 (time-ordered, 74 random bits), as its 36-character hyphenated text
/// in a Structured Field String (quoted, RFC 9651), as the draft defines the header.
fn fresh_key() -> HeaderValue {
    let mut buf = [b'"'; 38];
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buf[1..37]);
    HeaderValue::from_bytes(&buf).expect("a quoted hyphenated UUID is a valid header value")
}

impl<S, R> Service<R> for IdempotencyKey<S>
where
    S: Service<R>,
    R: KeyedRequest,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: R) -> S::Future {
        let unsafe_method = matches!(*req.method(), Method::POST | Method::PATCH);
        let headers = req.headers_mut();
        if unsafe_method && !headers.contains_key(&self.header) {
            headers.insert(self.header.clone(), fresh_key());
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn key_of(req: http::Request<()>) -> Option<HeaderValue> {
        let svc = IdempotencyKey::new(tower::service_fn(|req: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(req.headers().get("idempotency-key").cloned())
        }));
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn posts_and_patches_get_a_fresh_uuid_v7_key() {
        let a = key_of(http::Request::post("/").body(()).unwrap())
            .await
            .unwrap();
        let b = key_of(http::Request::patch("/").body(()).unwrap())
            .await
            .unwrap();
        assert_ne!(a, b);
        // A Structured Field String (RFC 9651), as the draft defines the header: quoted.
        let text = a.to_str().unwrap();
        let unquoted = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or_else(|| panic!("not an sf-string: {text}"));
        let uuid = uuid::Uuid::parse_str(unquoted).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        // Our own server layer reads it as the same key.
        assert_eq!(crate::key::parse(&a).unwrap(), unquoted.as_bytes());
    }

    #[tokio::test]
    async fn safe_and_idempotent_methods_and_requests_with_a_key_are_untouched() {
        for method in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
            let req = http::Request::builder().method(method).body(()).unwrap();
            assert_eq!(key_of(req).await, None);
        }
        let req = http::Request::post("/")
            .header("idempotency-key", "mine")
            .body(())
            .unwrap();
        assert_eq!(key_of(req).await.unwrap(), "mine");
    }
}
