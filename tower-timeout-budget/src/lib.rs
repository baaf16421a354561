//! Deadlines for tower services: a per-request budget that covers the whole call and travels
//! across hops.
//!
//! - [`Deadline`] is the shared currency: the layers here set it, and the bulkhead, retry and
//!   idempotency layers read it (from the task-local scope set with [`Deadline::scope`] and from
//!   request extensions, the earlier of the two) so that none of their waits outlives the
//!   request.
//! - [`TimeoutBudgetLayer`] gives each request min(its deadline, start + cap), with an optional
//!   per-request cap ([`CapFn`]), and fails the call with a [`tower_red::Rejection`] of kind
//!   `DeadlineExceeded` (HTTP 504, gRPC `DEADLINE_EXCEEDED`) when it passes, **time spent
//!   waiting in `poll_ready` included** (tower #648). The [`Stage`] where it passed is in the
//!   rejection's detail and in the metrics.
//! - [`inbound::InboundDeadlineLayer`] (servers) turns `grpc-timeout` or a millisecond HTTP
//!   header into the deadline and a task-local scope; [`outbound::OutboundDeadlineLayer`]
//!   (clients: reqwest, tonic, hyper) writes the remaining budget into the outgoing request and
//!   fails fast when it is spent; it goes **innermost**, just above the transport, so no wait
//!   happens after the budget is written. [`wire`] holds both header formats.
//!
//! # gRPC: deadlines against tonic's own timers
//!
//! tonic enforces `grpc-timeout` on both sides, outside every user layer, and reports its own
//! timer as `CANCELLED "Timeout expired"`. With the defaults the caller sees
//! `DEADLINE_EXCEEDED` whichever timer fires first: the inbound layer gives up its
//! [margin](inbound::DEFAULT_MARGIN) (20 ms) before the caller's budget ends, so its answer
//! arrives before the caller's `Channel` gives up; and the outbound layer takes its `Channel`'s
//! timeout error, once the budget it sent has run out, for the deadline passing. On a tonic
//! client, put `tower_red::grpc::client::ClientStatusLayer` above it so a rejection reaches the
//! caller as its `Status`; on a tonic server, `tower_red::grpc::status::StatusLayer` above the
//! inbound layer.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_red::{Rejection, RejectionKind};
//! use tower_timeout_budget::{Stage, TimeoutBudgetLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(TimeoutBudgetLayer::new(Duration::from_millis(100)).expect("a valid cap"))
//!     .service(service_fn(|_req: http::Request<()>| async {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         Ok::<_, std::convert::Infallible>("too late")
//!     }));
//! let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
//! let rejection = Rejection::find_in(&err).expect("a rejection");
//! assert_eq!(rejection.kind(), RejectionKind::DeadlineExceeded);
//! assert_eq!(Stage::of(rejection), Some(Stage::Call));
//! # }
//! ```
//!
//! # What a call costs
//!
//! Measured exactly (`tests/allocations.rs`):
//!
//! - a call whose inner future is ready at once arms no timer; on a request type without
//!   extensions (`u64`, `reqwest::Request`, whose deadline travels in the task-local scope) it
//!   allocates nothing;
//! - on an `http::Request`, storing the [`Deadline`] in its `http::Extensions` allocates: **3
//!   allocations** when the request has no extensions yet (the boxed map, its table, the boxed
//!   value), 1 or 2 when it has others. A `Deadline` already there, put by an outer layer, is
//!   overwritten in place for free, so a stack of these layers pays once per request;
//! - a call still pending after its first poll arms one boxed timer (1 allocation);
//! - the outbound layer's header value is 1 more (a stack of all three layers on an
//!   `http::Request`: 4 in all).
//!
//! # Metrics
//!
//! Every layer instance records the `tower-red` RED pair
//! ([`REQUESTS_TOTAL`](tower_red::names::REQUESTS_TOTAL),
//! [`REQUEST_DURATION_SECONDS`](tower_red::names::REQUEST_DURATION_SECONDS)) labelled by its
//! `name` and its own `layer`: [`timeout`](tower_red::names::layer::TIMEOUT),
//! [`deadline_inbound`](tower_red::names::layer::DEADLINE_INBOUND) or
//! [`deadline_outbound`](tower_red::names::layer::DEADLINE_OUTBOUND). Outcomes are `ok`,
//! `error`, `timeout` (this layer's deadline passed), `inner_refusal` (a layer inside refused,
//! and counted it) and, for a strict inbound layer, `rejected` (a malformed header).
//!
//! Whether a finished call is `ok` or `error` is the verdict of the layer's
//! [`tower_red::classify`] classifier, through [`tower_red::judge`], as at the breaker and the
//! bulkhead of the same stack: [`AnyError`](tower_red::classify::AnyError) by default (an `Ok`
//! response is `ok` whatever its status), `.http_status()` or `.grpc_status()` on every builder
//! of this crate for a 5xx or a failing `grpc-status` to be an `error`, `.classifier(c)` for any
//! other. The classifier judges only the RED outcome (this layer's own refusals are `timeout` or
//! `rejected` whatever it says) and is called only when metrics are recorded. Plus
//! [`DEADLINE_EXCEEDED_TOTAL`](tower_red::names::DEADLINE_EXCEEDED_TOTAL) by `stage` and, for the
//! inbound layer, [`DEADLINE_HEADER_INVALID_TOTAL`](tower_red::names::DEADLINE_HEADER_INVALID_TOTAL)
//! by `header`. Only the series a layer can produce are registered, when it is built; a call
//! allocates nothing for metrics.

mod config;
mod deadline;
pub mod error;
mod future;
pub mod inbound;
mod layer;
mod metrics;
pub mod outbound;
mod ready;
mod service;
pub mod wire;

pub use crate::config::{CapFn, DefaultCap, TimeoutBudgetBuilder};
pub use crate::deadline::{Deadline, DeadlineCarrier, Scoped};
pub use crate::error::{ConfigError, Stage};
pub use crate::future::ResponseFuture;
pub use crate::layer::TimeoutBudgetLayer;
pub use crate::service::TimeoutBudget;
