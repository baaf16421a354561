//! The shared core of the tower resilience layers: one outcome classification, one rejection
//! shape with its HTTP and gRPC mapping, and one RED metrics vocabulary.
//!
//! - [`classify`]: success, failure or ignored, from `&Result<Res, E>`.
//! - [`rejection`]: [`Rejection`], what every layer fails a call with when it refuses it.
//! - [`problem`]: rejections to HTTP responses (RFC 9457 problem details), so axum stacks stay
//!   `Infallible`; [`grpc`] does the same for tonic (feature `tonic`).
//! - [`red`] and [`names`]: per-layer RED handles and the metric names; [`clock`] lets a
//!   stack of layers share one clock pair per call.
//! - [`http`]: [`RedLayer`], OpenTelemetry HTTP server and client metrics.
//! - [`body`]: a bounded body collector, for layers that must replay or store a body.
//! - [`config`]: [`ConfigError`], what every layer builder returns for a bad value;
//!   [`cancel`]: how a deadline enforcer tells the layers inside it why their future was
//!   dropped; [`define_inner_service_accessors!`] for services.
//! - [`readiness`]: [`Readiness`], a readiness endpoint (JSON, 200 or 503) over the
//!   registered breakers and bulkheads.
//! - [`timer`]: [`Timer`](timer::Timer), a lazily armed, boxed timer whose unarmed drop is one
//!   inlined check.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_red::{problem::ProblemLayer, RedLayer, BoxError, Rejection, RejectionKind};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let app = ServiceBuilder::new()
//!     .layer(RedLayer::server())
//!     .layer(ProblemLayer::new())
//!     .service(service_fn(|req: http::Request<()>| async move {
//!         if req.uri().path() == "/busy" {
//!             return Err(BoxError::from(Rejection::new(RejectionKind::BulkheadFull)));
//!         }
//!         Ok(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
//!     }));
//! let res = app.oneshot(http::Request::get("/busy").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), 503);
//! # }
//! ```

mod accessors;
pub mod adapt;
pub mod body;
pub mod cancel;
pub mod classify;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod http;
pub mod names;
pub mod parts;
pub mod problem;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod readiness;
pub mod red;
pub mod rejection;
pub mod timer;

pub use crate::classify::{Classify, FailureClass, Verdict, judge};
pub use crate::config::ConfigError;
pub use crate::grpc::GrpcCode;
pub use crate::http::RedLayer;
pub use crate::readiness::Readiness;
pub use crate::red::{Outcome, RedMetrics, describe_metrics};
pub use crate::rejection::{Rejection, RejectionKind};

/// The boxed error type of tower services: `Box<dyn Error + Send + Sync>`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
