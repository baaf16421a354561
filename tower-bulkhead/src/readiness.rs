//! [`BulkheadHandle`] as a [`tower_red::readiness::Dependency`], so a bulkhead can be
//! registered with a [`tower_red::Readiness`].
//!
//! A bulkhead is always available: a full bulkhead is load, not an outage, and an instance
//! taken out of rotation because it is busy moves its load onto the others. Its entry lists
//! each partition's `in_flight`, `queued` and `limit`, and its state reads `full` when no
//! partition has a free permit, `accepting` otherwise.
//!
//! ```
//! use tower_bulkhead::{BulkheadLayer, Partition};
//! use tower_red::Readiness;
//!
//! let bulkhead = BulkheadLayer::builder()
//!     .name("db")
//!     .max_concurrent(8)
//!     .partition(Partition::new("background", 2))
//!     .build()?;
//! let report = Readiness::new().critical(bulkhead.handle()).report();
//! assert!(report.is_ready());
//! let entry = report.entry("db").unwrap();
//! assert_eq!(entry.snapshot().state(), "accepting");
//! let limits: Vec<usize> = entry.snapshot().partitions().iter().map(|p| p.limit).collect();
//! assert_eq!(limits, [8, 2]);
//! # Ok::<(), tower_red::ConfigError>(())
//! ```

use tower_red::readiness::{Dependency, Kind, PartitionSnapshot, Snapshot};

use crate::handle::BulkheadHandle;

impl Dependency for BulkheadHandle {
    fn name(&self) -> &str {
        BulkheadHandle::name(self)
    }

    fn kind(&self) -> Kind {
        Kind::Bulkhead
    }

    /// Every partition's counts, the default partition first; always available.
    fn snapshot(&self) -> Snapshot {
        let partitions: Vec<PartitionSnapshot> = self
            .stats()
            .into_iter()
            .map(|p| PartitionSnapshot {
                name: p.name,
                in_flight: p.in_flight,
                queued: p.queued,
                limit: p.limit,
            })
            .collect();
        let full = partitions.iter().all(PartitionSnapshot::is_full);
        partitions.into_iter().fold(
            Snapshot::new(if full { "full" } else { "accepting" }, true),
            Snapshot::with_partition,
        )
    }
}
