//! Inbound propagation for servers: the caller's remaining budget, from `grpc-timeout` or a
//! millisecond HTTP header, becomes the request's deadline.
//!
//! For each request, [`InboundDeadline`]:
//!
//! 1. reads `grpc-timeout` (the exact gRPC wire format, see [`wire`](crate::wire)) and the HTTP
//!    header (default [`x-request-timeout-ms`](crate::wire::DEFAULT_HTTP_HEADER), the format of
//!    Envoy's `x-envoy-expected-rq-timeout-ms`); when both are valid the smaller wins;
//! 2. clamps the budget by the server's cap (which also applies when no header is sent), as
//!    tonic's server does with its own timeout;
//! 3. treats a malformed value (never a panic) as absent and counts it in
//!    [`DEADLINE_HEADER_INVALID_TOTAL`](tower_red::names::DEADLINE_HEADER_INVALID_TOTAL), or in
//!    [strict](InboundDeadlineBuilder::strict) mode answers it with an
//!    [`InvalidDeadline`](tower_red::RejectionKind::InvalidDeadline) rejection (400 /
//!    `INVALID_ARGUMENT`);
//! 4. stores the [`Deadline`](crate::Deadline) in the request extensions **and** runs the inner call inside
//!    [`Deadline::scope`](crate::Deadline::scope), so a handler's own outbound calls inherit it without plumbing;
//! 5. fails the call with a `DeadlineExceeded` rejection (504 / `DEADLINE_EXCEEDED`) when it
//!    passes, dropping (cancelling) the handler's future.
//!
//! Readiness waits are not bounded here (no request, so no header, exists yet): put a
//! [`TimeoutBudgetLayer`](crate::TimeoutBudgetLayer) below this layer for that.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_timeout_budget::{inbound::InboundDeadlineLayer, Deadline};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let layer = InboundDeadlineLayer::builder().cap(Duration::from_secs(10)).build().unwrap();
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(|_req: http::Request<()>| async {
//!     // Handler code sees the caller's budget without plumbing.
//!     Ok::<_, std::convert::Infallible>(Deadline::current().map(Deadline::remaining))
//! }));
//! let req = http::Request::builder().header("grpc-timeout", "1500m").body(()).unwrap();
//! // The default margin: this server gives up 20 ms before its caller.
//! assert_eq!(svc.oneshot(req).await.unwrap(), Some(Duration::from_millis(1_480)));
//! # }
//! ```

mod config;
mod layer;
mod service;

use std::time::Duration;

pub use self::config::InboundDeadlineBuilder;
pub use self::layer::InboundDeadlineLayer;
pub use self::service::InboundDeadline;

/// The default inbound [margin](InboundDeadlineBuilder::margin): 20 ms, at most half the
/// caller's budget.
///
/// Measured on loopback (a tonic caller with `set_timeout(200ms)`, a slow tonic server behind
/// this layer, a loaded 2-core machine): the server's answer reached the caller 2 to 16 ms after
/// the server gave up. With 10 ms, about 1 call in 40 still lost to the caller's own timer; with 0,
/// 9 in 9 did.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(20);

/// Where each header's malformed-value counter sits in the metric handles.
const GRPC_INDEX: usize = 0;
const HTTP_INDEX: usize = 1;
