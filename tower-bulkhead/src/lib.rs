//! Bulkhead for tower services: concurrency limits, bounded deadline-aware queues and
//! partitions.
//!
//! A [`Bulkhead`] lets a bounded number of calls run at once. When every permit is taken it
//! rejects the call at once (the default, like Resilience4j's bulkhead with a max wait of 0),
//! lets it wait in a bounded FIFO queue for at most `max_wait` and never past the request's
//! [`Deadline`](tower_timeout_budget::Deadline), or, in backpressure mode, waits in
//! `poll_ready` like `tower::limit::ConcurrencyLimit`.
//!
//! - **Partitions** give classes of requests (say critical and background) their own limits and
//!   queues from one layer, so slow background work never takes capacity from critical work.
//! - **Deadline-aware admission** sheds a queued call as soon as its remaining deadline is no
//!   longer than the recently observed service time, also when a slow call grows that estimate.
//! - **HTTP bodies**: [`Builder::hold_permit_until_body_end`] keeps the permit until a streamed
//!   response body ends, not just its head.
//! - **Cancellation**: dropping a future returns its permit or queue place at once.
//! - **Rejections** are [`tower_red::Rejection`]s (HTTP 503, gRPC `RESOURCE_EXHAUSTED`) whose
//!   [`error::Reason`] says why: full, queue full, queue timeout or deadline.
//! - **Live**: a [`BulkheadHandle`] reads in-flight and queued counts per partition and changes
//!   limits at run time; an [`Aimd`] adaptive limit is opt-in.
//! - **One verdict per stack**: finished calls are judged by the stack's classifier
//!   ([`Builder::classifier`], `AnyError` by default) through [`tower_red::judge`], so a refusal
//!   of an inner layer (an open breaker below) never moves the adaptive limit or the
//!   service-time estimate, and is counted as `inner_refusal`.
//! - **Any request type**: the deadline comes from the task-local scope by default
//!   ([`deadline`]), so a request type needs no trait to pass.
//! - **Metrics** (through `metrics`, handles registered once at build): the `tower-red` RED
//!   pair under `layer="bulkhead"`, `resilience_bulkhead_in_flight`,
//!   `resilience_bulkhead_queue_depth` and `resilience_bulkhead_limit` gauges,
//!   `resilience_bulkhead_queue_wait_seconds` and `resilience_bulkhead_rejections_total`, all
//!   labelled by `partition` (and `reason`).
//!
//! A call with a free permit takes no lock and allocates nothing: one compare-and-swap on the
//! partition's counter. Time comes from `tokio::time` through the stack's shared
//! [`tower_red::clock`], and is read only when something needs it (metrics with a recorder,
//! deadline-aware shedding of a queue, or an adaptive limit), so tests can pause the clock.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_bulkhead::{error::Reason, BulkheadLayer, Partition};
//! use tower_red::Rejection;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let bulkhead = BulkheadLayer::builder()
//!     .name("api")
//!     .max_concurrent(32)
//!     .queue(64, Duration::from_millis(100))
//!     .partition(Partition::new("background", 1))
//!     .partition_by(|req: &http::Request<()>| {
//!         req.uri().path().starts_with("/reports").then_some("background")
//!     })
//!     .build()
//!     .expect("a valid configuration");
//! let handle = bulkhead.handle();
//! let svc = ServiceBuilder::new().layer(bulkhead).service(service_fn(|_req| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! }));
//!
//! let report = || http::Request::get("/reports/daily").body(()).unwrap();
//! assert!(svc.clone().oneshot(report()).await.is_ok());
//!
//! // A report in flight holds the background partition's only permit: the next one is
//! // refused at once, while other requests still get through.
//! let mut ready = svc.clone();
//! let busy = ready.ready().await.unwrap().call(report());
//! let err = svc.clone().oneshot(report()).await.unwrap_err();
//! let rejection = Rejection::find_in(&err).unwrap();
//! assert_eq!(Reason::of(rejection), Some(Reason::Full));
//! assert_eq!(rejection.http_status(), 503);
//! assert_eq!(handle.in_flight("background"), Some(1));
//! let home = http::Request::get("/").body(()).unwrap();
//! assert!(svc.clone().oneshot(home).await.is_ok());
//! drop(busy);
//! assert_eq!(handle.in_flight("background"), Some(0));
//! # }
//! ```

mod adaptive;
pub mod body;
mod config;
pub mod deadline;
pub mod error;
mod ewma;
pub mod future;
mod handle;
mod layer;
mod metrics;
mod partition;
mod permits;
mod queue;
mod readiness;
mod retry_after;
mod service;
mod sync;

pub use crate::adaptive::Aimd;
pub use crate::body::{OnBodyEnd, OnResponse, PermitBody};
pub use crate::config::{
    Builder, DEFAULT_PARTITION, Partition, PartitionFn, Partitioner, Unpartitioned,
};
pub use crate::deadline::{DeadlineSource, FromRequest, FromScope};
pub use crate::error::{ConfigError, Reason};
pub use crate::handle::{BulkheadHandle, PartitionStats};
pub use crate::layer::BulkheadLayer;
pub use crate::partition::Permit;
pub use crate::service::Bulkhead;
