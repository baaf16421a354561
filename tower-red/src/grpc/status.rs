//! The server half of the tonic adapter (feature `tonic`): rejections become `tonic::Status`es,
//! and a layer turns them into trailers-only gRPC responses so a tonic server answers with the
//! right code. For clients see [`client`](super::client).
//!
//! Rejections with a `Retry-After` also carry `grpc-retry-pushback-ms`, which gRPC clients
//! with retries enabled (gRFC A6) honour as the delay before the next attempt.
//!
//! ```
//! use tower_red::{Rejection, RejectionKind};
//!
//! let status = tonic::Status::from(Rejection::new(RejectionKind::BulkheadFull));
//! assert_eq!(status.code(), tonic::Code::ResourceExhausted);
//! ```

use std::fmt::{self, Write as _};

use bytes::Bytes;
use tonic::body::Body;
use tower_layer::Layer;

use crate::BoxError;
use crate::adapt::{Adapter, AdapterFuture, Convert};
use crate::rejection::Rejection;

/// The trailer gRPC clients read as a server-chosen retry delay (gRFC A6).
pub const RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

impl Rejection {
    /// The `tonic::Status` for this rejection: its code, its text as message (naming the layer
    /// instance, as its `Display` does), and `grpc-retry-pushback-ms` metadata when it has a
    /// `Retry-After`. For callers in the same process; a server answers outside callers with
    /// [`status_of`], which leaves the instance name out.
    pub fn to_status(&self) -> tonic::Status {
        self.status_with_message(self.to_string())
    }

    /// Like [`Rejection::to_status`], without the layer instance's name in the message.
    fn to_public_status(&self) -> tonic::Status {
        let mut message = String::from(self.kind().title());
        if !self.detail().is_empty() {
            message.push_str(": ");
            message.push_str(self.detail());
        }
        if let Some(secs) = self.retry_after_secs() {
            let _ = write!(message, "; retry after {secs}s");
        }
        self.status_with_message(message)
    }

    fn status_with_message(&self, message: String) -> tonic::Status {
        let mut status = tonic::Status::new(self.grpc_code().into(), message);
        if let Some(after) = self.retry_after() {
            let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            if let Ok(value) = ms.to_string().parse() {
                status.metadata_mut().insert(RETRY_PUSHBACK_MS, value);
            }
        }
        status
    }
}

impl From<Rejection> for tonic::Status {
    fn from(rejection: Rejection) -> tonic::Status {
        rejection.to_status()
    }
}

/// The `tonic::Status` a server answers for any error: a rejection's own status (its code,
/// title, detail and pushback, without the name of the layer instance, which is internal), a
/// `tonic::Status` found in the error unchanged, tonic's own mapping of its transport errors
/// (`tonic::ConnectError` is `UNAVAILABLE`, `tonic::TimeoutExpired` is `CANCELLED`, as
/// `tonic::Status::from_error` maps them), else `UNKNOWN "internal error"` (the error's text may
/// hold internals, so it is not sent).
///
/// This is the server's mapping. A tonic client needs none: put
/// [`ClientStatusLayer`](super::client::ClientStatusLayer) in its stack and let tonic map every
/// other error (it also knows hyper's and h2's, which this function cannot see).
///
/// ```
/// use tower_red::grpc::status::status_of;
/// use tower_red::BoxError;
///
/// let refused: BoxError = tonic::ConnectError("tcp connect error".into()).into();
/// assert_eq!(status_of(&refused).code(), tonic::Code::Unavailable);
/// let secret: BoxError = "password=hunter2".into();
/// assert_eq!(status_of(&secret).message(), "internal error");
/// ```
pub fn status_of(err: &BoxError) -> tonic::Status {
    if let Some(rejection) = Rejection::find_in(err) {
        return rejection.to_public_status();
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&**err);
    while let Some(e) = current {
        if let Some(status) = e.downcast_ref::<tonic::Status>() {
            return status.clone();
        }
        if let Some(timeout) = e.downcast_ref::<tonic::TimeoutExpired>() {
            return tonic::Status::cancelled(timeout.to_string());
        }
        if let Some(connect) = e.downcast_ref::<tonic::ConnectError>() {
            return tonic::Status::unavailable(connect.to_string());
        }
        current = e.source();
    }
    tonic::Status::unknown("internal error")
}

/// The function type that maps errors to statuses.
pub type OnError = fn(&BoxError) -> tonic::Status;

/// Layer for tonic servers (`Server::builder().layer(StatusLayer::new())`): errors of the
/// inner stack become trailers-only responses with the right `grpc-status`. A response made
/// from a [`Rejection`] carries its [`RejectionKind`](crate::RejectionKind) in its extensions,
/// so classifiers above judge it a refusal (not the backend's status) and `RedLayer` labels it.
#[derive(Clone, Copy)]
#[must_use]
pub struct StatusLayer<F = OnError> {
    on_error: F,
}

impl<F> fmt::Debug for StatusLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusLayer").finish_non_exhaustive()
    }
}

impl Default for StatusLayer {
    fn default() -> Self {
        StatusLayer::new()
    }
}

impl StatusLayer {
    /// Rejections map to their codes, `tonic::Status` errors to themselves, others to UNKNOWN.
    pub fn new() -> Self {
        StatusLayer {
            on_error: status_of,
        }
    }
}

impl<F> StatusLayer<F> {
    /// Maps every error with `f` instead (call [`status_of`] inside to keep the defaults).
    ///
    /// To show outside callers the name of the layer instance that refused, map rejections
    /// with [`Rejection::to_status`]:
    ///
    /// ```
    /// use tower_red::grpc::status::{status_of, StatusLayer};
    /// use tower_red::{BoxError, Rejection};
    ///
    /// let layer = StatusLayer::new().on_error(|err: &BoxError| {
    ///     Rejection::find_in(err).map_or_else(|| status_of(err), Rejection::to_status)
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_error<G>(self, f: G) -> StatusLayer<G>
    where
        G: Fn(&BoxError) -> tonic::Status + Clone,
    {
        StatusLayer { on_error: f }
    }
}

impl<S, F: Clone> Layer<S> for StatusLayer<F> {
    type Service = StatusService<S, F>;
    fn layer(&self, inner: S) -> Self::Service {
        Adapter::with(
            inner,
            ToStatus {
                on_error: self.on_error.clone(),
            },
        )
    }
}

/// Service built by [`StatusLayer`].
pub type StatusService<S, F = OnError> = Adapter<S, ToStatus<F>>;

/// Future of [`StatusService`].
pub type ResponseFuture<Fut, F = OnError> = AdapterFuture<Fut, ToStatus<F>>;

/// The conversion of [`StatusLayer`]: errors to trailers-only gRPC responses, inner responses
/// re-boxed into tonic's body.
#[derive(Clone, Copy)]
pub struct ToStatus<F> {
    on_error: F,
}

impl<F> fmt::Debug for ToStatus<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToStatus").finish_non_exhaustive()
    }
}

impl<F, B> Convert<B> for ToStatus<F>
where
    F: Fn(&BoxError) -> tonic::Status + Clone,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;

    fn ok(&self, res: http::Response<B>) -> Self::Response {
        res.map(Body::new)
    }

    fn err(&self, err: BoxError) -> Self::Response {
        let mut res = (self.on_error)(&err).into_http();
        // As `ProblemLayer` does: an outer layer judges a refusal by this mark (a verdict of
        // `Refused`, counted `inner_refusal`), not by its gRPC code, which for a full bulkhead
        // is the same `RESOURCE_EXHAUSTED` a backend could answer.
        if let Some(rejection) = Rejection::find(&*err) {
            res.extensions_mut().insert(rejection.kind());
        }
        res
    }
}
