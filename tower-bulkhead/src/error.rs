//! Why the bulkhead refused a call, and what a bad configuration looks like.
//!
//! Refusals are [`tower_red::Rejection`]s boxed into [`tower_red::BoxError`], so one adapter
//! maps them to HTTP 503 or gRPC `RESOURCE_EXHAUSTED` across every layer of the workspace.
//! [`Reason::of`] reads the bulkhead's own reason back from a rejection.
//!
//! ```
//! use tower_bulkhead::error::Reason;
//! use tower_red::{Rejection, RejectionKind};
//!
//! let err = Reason::QueueTimeout.rejection("api".into());
//! assert_eq!(err.kind(), RejectionKind::QueueTimeout);
//! assert_eq!(err.http_status(), 503);
//! assert_eq!(Reason::of(&err), Some(Reason::QueueTimeout));
//! ```

use std::fmt;
use std::sync::Arc;

use tower_red::{Rejection, RejectionKind};

/// Why the bulkhead refused a call: the `reason` label of
/// [`BULKHEAD_REJECTIONS_TOTAL`](tower_red::names::BULKHEAD_REJECTIONS_TOTAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Every permit was taken and the partition does not queue.
    Full,
    /// Every permit was taken and the queue was at its maximum length.
    QueueFull,
    /// The call waited in the queue for the partition's `max_wait`.
    QueueTimeout,
    /// The call's deadline passed, or would pass before a call of the recently observed service
    /// time could finish, while it was queued.
    Deadline,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 4] = [
        Reason::Full,
        Reason::QueueFull,
        Reason::QueueTimeout,
        Reason::Deadline,
    ];

    /// The label value, such as `queue_timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Full => "full",
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::Deadline => "deadline",
        }
    }

    /// The `tower-red` kind a rejection of this reason carries: `BulkheadFull` for a full
    /// bulkhead or queue, `QueueTimeout`, and `LoadShed` for a deadline that cannot be met. All
    /// three answer HTTP 503 and gRPC `RESOURCE_EXHAUSTED`.
    pub fn kind(self) -> RejectionKind {
        match self {
            Reason::Full | Reason::QueueFull => RejectionKind::BulkheadFull,
            Reason::QueueTimeout => RejectionKind::QueueTimeout,
            Reason::Deadline => RejectionKind::LoadShed,
        }
    }

    /// The human detail the rejection carries.
    pub fn detail(self) -> &'static str {
        match self {
            Reason::Full => "no free permit",
            Reason::QueueFull => "no free permit and the queue is full",
            Reason::QueueTimeout => "waited for a permit for the longest allowed time",
            Reason::Deadline => "the request's deadline would pass before it could finish",
        }
    }

    /// The rejection the bulkhead named `name` fails a call with.
    pub fn rejection(self, name: Arc<str>) -> Rejection {
        Rejection::new(self.kind())
            .with_name(name)
            .with_reason(self.as_str())
            .with_detail(self.detail())
    }

    /// The bulkhead reason of a rejection this crate built, if it is one.
    pub fn of(rejection: &Rejection) -> Option<Reason> {
        Reason::ALL
            .into_iter()
            .find(|r| r.kind() == rejection.kind() && rejection.reason() == Some(r.as_str()))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The configuration error every layer of this workspace returns: the layer (`bulkhead`), the
/// setting, the value and why it cannot work. Returned by [`Builder::build`](crate::Builder::build)
/// and [`BulkheadHandle::set_limit`](crate::BulkheadHandle::set_limit).
pub use tower_red::ConfigError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_and_maps_to_503_and_resource_exhausted() {
        for reason in Reason::ALL {
            let rejection = reason.rejection("x".into());
            assert_eq!(Reason::of(&rejection), Some(reason));
            assert_eq!(rejection.http_status(), 503);
            assert_eq!(
                rejection.grpc_code(),
                tower_red::GrpcCode::ResourceExhausted
            );
            assert_eq!(rejection.outcome(), tower_red::Outcome::Shed);
        }
        assert_eq!(
            Reason::of(&Rejection::new(RejectionKind::BulkheadFull)),
            None
        );
    }
}
