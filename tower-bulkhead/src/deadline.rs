//! Where the bulkhead finds a request's [`Deadline`]: the task-local scope (the default, for
//! any request type), or the request itself ([`Builder::deadline_from_request`]).
//!
//! The deadline matters only to a call that queues: it never waits past it, and with
//! deadline-aware shedding it is shed once its remaining time is shorter than the partition's
//! recent service time.
//!
//! Every deadline layer of `tower-timeout-budget` calls its inner service inside the
//! request's task-local scope, so the default finds their deadline without any bound on the
//! request type. A request whose deadline lives only on the request itself (an
//! `http::Request` whose `Deadline` extension was set by hand, or that crossed a
//! `tower::buffer::Buffer`, which calls the inner service from another task) needs
//! [`Builder::deadline_from_request`], which reads the request's
//! [`DeadlineCarrier`] (the earlier of its own deadline and the scope's).
//!
//! [`Builder::deadline_from_request`]: crate::Builder::deadline_from_request
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceExt};
//! use tower_bulkhead::BulkheadLayer;
//! use tower_timeout_budget::Deadline;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // A request type of your own needs no trait to pass a bulkhead.
//! struct Job(u32);
//! let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
//! let svc = tower::Layer::layer(&layer, service_fn(|job: Job| async move {
//!     Ok::<_, std::convert::Infallible>(job.0)
//! }));
//! let within = Deadline::after(Duration::from_secs(1));
//! assert_eq!(within.scope(svc.oneshot(Job(7))).await.unwrap(), 7);
//! # }
//! ```

use tower_timeout_budget::{Deadline, DeadlineCarrier};

/// Reads the deadline of a request.
pub trait DeadlineSource<Req> {
    /// The deadline of `req`, if it has one.
    fn deadline(&self, req: &Req) -> Option<Deadline>;
}

/// The task-local deadline ([`Deadline::current`]), for any request type: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct FromScope;

impl<Req> DeadlineSource<Req> for FromScope {
    #[inline]
    fn deadline(&self, _req: &Req) -> Option<Deadline> {
        Deadline::current()
    }
}

/// The request's own deadline ([`DeadlineCarrier::deadline`]: for `http::Request` the earlier
/// of its `Deadline` extension and the task-local one).
#[derive(Debug, Clone, Copy, Default)]
pub struct FromRequest;

impl<Req: DeadlineCarrier> DeadlineSource<Req> for FromRequest {
    #[inline]
    fn deadline(&self, req: &Req) -> Option<Deadline> {
        req.deadline()
    }
}
