//! Outbound propagation for clients: the remaining budget, minus a margin, travels in the
//! outgoing `grpc-timeout` or HTTP header, and is enforced locally.
//!
//! For each request, [`OutboundDeadline`]:
//!
//! 1. reads the deadline from the request's extensions or the task-local scope (so a handler
//!    behind [`InboundDeadlineLayer`](crate::inbound::InboundDeadlineLayer) needs no plumbing),
//!    capped by the layer's own [`cap`](OutboundDeadlineBuilder::cap) when set;
//! 2. fails fast with [`Stage::BeforeSend`](crate::Stage::BeforeSend), **without sending**, when
//!    the remaining budget is no more than the margin, or when the millisecond HTTP header is
//!    to be written and remaining − margin is under one millisecond (the header would say `0`,
//!    which [`InboundDeadlineLayer`](crate::inbound::InboundDeadlineLayer) refuses on arrival
//!    and a header like Envoy's reads as no timeout; `1` would promise more than is left);
//! 3. writes remaining − margin (rounded down) into `grpc-timeout` (the finest unit that fits 8
//!    digits) for gRPC requests (`content-type: application/grpc…`), or into the millisecond
//!    HTTP header for others ([`Propagation`] changes that); a smaller value already on the
//!    request (say, from tonic's `Request::set_timeout`) is kept;
//! 4. enforces the deadline itself, so the call is cut even if the server ignores the header;
//! 5. takes an error of the inner service that comes **once the budget written on the request
//!    has run out** for that budget being enforced below it, and answers it as its own
//!    `DeadlineExceeded` ([`Stage::Call`](crate::Stage::Call)). tonic's `Channel` enforces the `grpc-timeout` it
//!    sends and fails with `tonic::TimeoutExpired`, which tonic reports as
//!    `CANCELLED "Timeout expired"`, possibly before this layer's timer fires (always, with a
//!    margin); the caller then sees `DEADLINE_EXCEEDED` whichever timer won (through
//!    `tower_red::grpc::client::ClientStatusLayer` on a tonic client). Errors that come earlier,
//!    and inner layers' [`Rejection`](tower_red::Rejection)s, pass through untouched.
//!
//! The margin is the time the response needs to travel back: the Google SRE book suggests
//! shaving a few hundred milliseconds; Envoy offers the same offset for `grpc-timeout`. An
//! upstream behind [`InboundDeadlineLayer`](crate::inbound::InboundDeadlineLayer) already gives
//! up its own inbound margin early, so the default here is zero.
//!
//! # Where it goes: innermost, just above the transport
//!
//! The budget is written when this layer's `call` runs. A wait *below* it (a bulkhead or pool
//! queue that waits inside the call, a `tower::buffer`) is spent after the header was written,
//! so the server would be told it has more time than is left. Put the layer innermost, right
//! above the client (`reqwest::Client`, tonic `Channel`): every wait above it, in `poll_ready`
//! or in a call, is then already subtracted. The standard client stack is
//! retry → breaker → bulkhead → per-attempt [`TimeoutBudgetLayer`](crate::TimeoutBudgetLayer)
//! → `OutboundDeadlineLayer` → transport. Below a `tower::buffer`, whose worker task makes the
//! inner calls, only a deadline in the request's extensions is seen (not the caller's
//! task-local one): a [`TimeoutBudgetLayer`](crate::TimeoutBudgetLayer) or
//! [`InboundDeadlineLayer`](crate::inbound::InboundDeadlineLayer) above puts it there. tonic's
//! `Channel` queues internally too; the server's inbound margin absorbs that wait.
//!
//! It serves `http::Request` (tonic `Channel`, hyper clients) and, with the `reqwest` feature,
//! `reqwest::Request` (whose deadline comes from the task-local scope only).
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_timeout_budget::{outbound::OutboundDeadlineLayer, Deadline};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let layer = OutboundDeadlineLayer::builder().margin(Duration::from_millis(50)).build().unwrap();
//! let client = ServiceBuilder::new().layer(layer).service(service_fn(|req: http::Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(req.headers()["x-request-timeout-ms"].clone())
//! }));
//! let sent = Deadline::after(Duration::from_secs(2)).scope(client.oneshot(http::Request::new(()))).await;
//! assert_eq!(sent.unwrap(), "1950");
//! # }
//! ```

mod config;
mod layer;
mod service;

pub use self::config::{OutboundDeadlineBuilder, Propagation};
pub use self::layer::OutboundDeadlineLayer;
pub use self::service::OutboundDeadline;
