//! Deadlines for tower services: a per-request budget that covers the whole call and travels
//! across hops.
//!
//! [`Deadline`] is the shared currency: the timeout layers set it, and the bulkhead, retry and
//! idempotency layers read it (from request extensions, or from the task-local scope set with
//! [`Deadline::scope`]) so that none of their waits outlives the request.
//!
//! ```
//! use std::time::Duration;
//! use tower_timeout_budget::{Deadline, DeadlineCarrier};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut req = http::Request::new(());
//! req.set_deadline(Deadline::after(Duration::from_secs(2)));
//! assert!(req.deadline().unwrap().remaining() <= Duration::from_secs(2));
//! # }
//! ```

mod deadline;

pub use crate::deadline::{Deadline, DeadlineCarrier};
