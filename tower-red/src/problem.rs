//! The HTTP adapter: turns [`Rejection`]s into responses so an axum stack's error is
//! `Infallible`.
//!
//! A rejection becomes its status, a `Retry-After` header when it has one, and an RFC 9457
//! `application/problem+json` body. Any other error becomes a 500 with a problem body that does
//! not leak the error's text, unless [`ProblemLayer::on_error`] says otherwise. Responses of the
//! inner service pass through untouched.
//!
//! Problem bodies go to outside callers, so they do not name the layer instance that refused
//! (its [`Rejection::name`], such as the upstream a client breaker guards) unless asked:
//! [`ProblemLayer::expose_instance_name`] and [`rejection_response_with_instance_name`] add it
//! as `instance_name`.
//!
//! ```
//! use std::convert::Infallible;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_red::{problem::ProblemLayer, BoxError, Rejection, RejectionKind};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new().layer(ProblemLayer::new()).service(service_fn(|_req: http::Request<()>| async {
//!     Err::<http::Response<http_body_util::Full<bytes::Bytes>>, BoxError>(
//!         Rejection::new(RejectionKind::CircuitOpen).with_retry_after(std::time::Duration::from_secs(5)).into(),
//!     )
//! }));
//! let res = svc.oneshot(http::Request::new(())).await.unwrap_or_else(|e: Infallible| match e {});
//! assert_eq!(res.status(), 503);
//! assert_eq!(res.headers()["retry-after"], "5");
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! # }
//! ```
//!
//! With the `axum` feature, [`Rejection`] is an `axum::response::IntoResponse`: a handler whose
//! outbound call was refused returns the rejection as it is, and gets the same response (marked
//! as a refusal, so classifiers and `RedLayer` outside see one).
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{routing::get, Router};
//! use tower::ServiceExt;
//! use tower_red::{Rejection, RejectionKind};
//!
//! async fn quote() -> Result<String, Rejection> {
//!     // The outbound call's breaker refused: pass the refusal on.
//!     Err(Rejection::new(RejectionKind::CircuitOpen).with_retry_after(std::time::Duration::from_secs(2)))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let app = Router::new().route("/quote", get(quote));
//! let res = app.oneshot(http::Request::get("/quote").body(axum::body::Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), 503);
//! assert_eq!(res.headers()["retry-after"], "2");
//! # }
//! # }
//! ```

use std::fmt::{self, Write as _};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use tower_layer::Layer;

use crate::BoxError;
use crate::adapt::{Adapter, AdapterFuture, Convert};
use crate::rejection::Rejection;

/// The body of responses built by this adapter.
pub type ProblemBody = Full<Bytes>;

/// The media type of RFC 9457 problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The `type` URI of a rejection's problem body: `urn:tower-red:rejection:<kind>`.
pub const TYPE_PREFIX: &str = "urn:tower-red:rejection:";

/// Builds the response for a rejection: status, `Retry-After`, problem+json body (without the
/// layer instance's name). The response carries the [`RejectionKind`](crate::RejectionKind) in
/// its extensions, so classifiers judge it a refusal and `RedLayer` labels it.
pub fn rejection_response(rejection: &Rejection) -> Response<ProblemBody> {
    build(rejection, false)
}

/// Like [`rejection_response`], and the body names the layer instance that refused
/// (`instance_name`), when it has a name. For callers allowed to see internal names.
pub fn rejection_response_with_instance_name(rejection: &Rejection) -> Response<ProblemBody> {
    build(rejection, true)
}

fn build(rejection: &Rejection, instance_name: bool) -> Response<ProblemBody> {
    let status = rejection.http_status();
    let mut body = String::with_capacity(192);
    body.push_str("{\"type\":\"");
    body.push_str(TYPE_PREFIX);
    body.push_str(rejection.kind().as_str());
    body.push_str("\",\"title\":\"");
    body.push_str(rejection.kind().title());
    let _ = write!(body, "\",\"status\":{}", status.as_u16());
    if let Some(reason) = rejection.reason() {
        body.push_str(",\"reason\":");
        push_json_string(&mut body, reason);
    }
    if !rejection.detail().is_empty() {
        body.push_str(",\"detail\":");
        push_json_string(&mut body, rejection.detail());
    }
    if instance_name && let Some(name) = rejection.name() {
        body.push_str(",\"instance_name\":");
        push_json_string(&mut body, name);
    }
    if let Some(secs) = rejection.retry_after_secs() {
        let _ = write!(body, ",\"retry_after\":{secs}");
    }
    body.push('}');
    let mut res = problem(status, body);
    // Lets an outer `RedLayer` label the response with the rejection, not just its status.
    res.extensions_mut().insert(rejection.kind());
    if let Some(secs) = rejection.retry_after_secs() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Rejection {
    /// [`rejection_response`], without the instance name; see the [module docs](self).
    fn into_response(self) -> axum::response::Response {
        rejection_response(&self).map(axum::body::Body::new)
    }
}

/// The default response for errors that are not rejections: a 500 that says nothing about the
/// error itself (its text may hold internals).
pub fn internal_error_response(_err: &BoxError) -> Response<ProblemBody> {
    let body = format!(
        "{{\"type\":\"about:blank\",\"title\":\"Internal Server Error\",\"status\":{}}}",
        StatusCode::INTERNAL_SERVER_ERROR.as_u16()
    );
    problem(StatusCode::INTERNAL_SERVER_ERROR, body)
}

fn problem(status: StatusCode, body: String) -> Response<ProblemBody> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}

/// A JSON string literal (RFC 8259): quotes, backslashes and control characters escaped.
/// Shared by problem bodies and readiness reports.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The function type that maps errors other than rejections to responses.
pub type OnError = fn(&BoxError) -> Response<ProblemBody>;

/// Layer that turns rejections and other errors into HTTP responses; see the
/// [module docs](self).
#[derive(Clone, Copy)]
#[must_use]
pub struct ProblemLayer<F = OnError> {
    on_error: F,
    instance_name: bool,
}

impl<F> fmt::Debug for ProblemLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProblemLayer")
            .field("instance_name", &self.instance_name)
            .finish_non_exhaustive()
    }
}

impl Default for ProblemLayer {
    fn default() -> Self {
        ProblemLayer::new()
    }
}

impl ProblemLayer {
    /// Rejections become their responses; other errors a bare 500.
    pub fn new() -> Self {
        ProblemLayer {
            on_error: internal_error_response,
            instance_name: false,
        }
    }
}

impl<F> ProblemLayer<F> {
    /// Maps errors that are not rejections with `f` instead of the default 500.
    pub fn on_error<G>(self, f: G) -> ProblemLayer<G>
    where
        G: Fn(&BoxError) -> Response<ProblemBody> + Clone,
    {
        ProblemLayer {
            on_error: f,
            instance_name: self.instance_name,
        }
    }

    /// Whether problem bodies name the layer instance that refused (`instance_name`); off by
    /// default, since the names are internal (an upstream, a database).
    pub fn expose_instance_name(mut self, expose: bool) -> Self {
        self.instance_name = expose;
        self
    }
}

impl<S, F: Clone> Layer<S> for ProblemLayer<F> {
    type Service = Problem<S, F>;
    fn layer(&self, inner: S) -> Self::Service {
        Adapter::with(
            inner,
            ToProblem {
                on_error: self.on_error.clone(),
                instance_name: self.instance_name,
            },
        )
    }
}

/// Service built by [`ProblemLayer`].
pub type Problem<S, F = OnError> = Adapter<S, ToProblem<F>>;

/// Future of [`Problem`].
pub type ResponseFuture<Fut, F = OnError> = AdapterFuture<Fut, ToProblem<F>>;

impl<S> Problem<S> {
    /// Wraps `inner` with the default error mapping.
    pub fn new(inner: S) -> Self {
        ProblemLayer::new().layer(inner)
    }
}

/// The conversion of [`ProblemLayer`]: rejections to problem responses, other errors through
/// its `on_error` function, inner responses untouched.
#[derive(Clone, Copy)]
pub struct ToProblem<F> {
    on_error: F,
    instance_name: bool,
}

impl<F> fmt::Debug for ToProblem<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToProblem").finish_non_exhaustive()
    }
}

impl<F, B> Convert<B> for ToProblem<F>
where
    F: Fn(&BoxError) -> Response<ProblemBody> + Clone,
{
    type Response = Response<Either<B, ProblemBody>>;

    fn ok(&self, res: Response<B>) -> Self::Response {
        res.map(Either::Left)
    }

    fn err(&self, err: BoxError) -> Self::Response {
        let res = match Rejection::find_in(&err) {
            Some(rejection) => build(rejection, self.instance_name),
            None => (self.on_error)(&err),
        };
        res.map(Either::Right)
    }
}
