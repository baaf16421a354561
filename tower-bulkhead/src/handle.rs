//! The live view of a bulkhead: counts per partition and limits changed at run time.

use std::fmt;
use std::sync::Arc;

use crate::error::ConfigError;
use crate::partition::PartitionState;

/// What every clone of a bulkhead shares.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    /// The default partition first, then the configured ones in order.
    pub(crate) partitions: Box<[Arc<PartitionState>]>,
    pub(crate) backpressure: bool,
}

impl Shared {
    /// The index of the partition named `name`; the default partition for `None` or an
    /// unknown name.
    #[inline]
    pub(crate) fn index(&self, name: Option<&str>) -> usize {
        match name {
            None => 0,
            Some(name) => self
                .partitions
                .iter()
                .position(|p| &*p.name == name)
                .unwrap_or(0),
        }
    }

    fn find(&self, name: &str) -> Option<&PartitionState> {
        self.partitions
            .iter()
            .find(|p| &*p.name == name)
            .map(|p| &**p)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.name)
            .field("partitions", &self.partitions)
            .finish()
    }
}

/// One partition's counts at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    /// The partition's name.
    pub name: Arc<str>,
    /// Calls holding a permit (may exceed `limit` for a while after the limit was lowered).
    pub in_flight: usize,
    /// Calls waiting for a permit.
    pub queued: usize,
    /// The current limit.
    pub limit: usize,
}

/// Reads and steers a running bulkhead; every clone of its layer and services is affected.
///
/// ```
/// use tower_bulkhead::{BulkheadLayer, Partition};
///
/// let layer = BulkheadLayer::builder()
///     .partition(Partition::new("background", 2))
///     .build()
///     .unwrap();
/// let handle = layer.handle();
/// handle.set_limit("background", 8).unwrap();
/// assert_eq!(handle.limit("background"), Some(8));
/// assert_eq!(handle.in_flight("background"), Some(0));
/// assert!(handle.set_limit("background", 0).is_err());
/// assert!(handle.set_limit("nope", 1).is_err());
/// ```
#[derive(Clone)]
pub struct BulkheadHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for BulkheadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl BulkheadHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        BulkheadHandle { shared }
    }

    /// The bulkhead's instance name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The partition names, the default partition first.
    pub fn partitions(&self) -> impl Iterator<Item = &str> {
        self.shared.partitions.iter().map(|p| &*p.name)
    }

    /// Calls holding a permit of `partition`, or `None` if there is no such partition.
    pub fn in_flight(&self, partition: &str) -> Option<usize> {
        self.shared.find(partition).map(PartitionState::in_flight)
    }

    /// Calls waiting for a permit of `partition`.
    pub fn queued(&self, partition: &str) -> Option<usize> {
        self.shared.find(partition).map(PartitionState::queued)
    }

    /// The current limit of `partition`.
    pub fn limit(&self, partition: &str) -> Option<usize> {
        self.shared.find(partition).map(PartitionState::limit)
    }

    /// The counts of every partition, the default first.
    pub fn stats(&self) -> Vec<PartitionStats> {
        self.shared
            .partitions
            .iter()
            .map(|p| PartitionStats {
                name: p.name.clone(),
                in_flight: p.in_flight(),
                queued: p.queued(),
                limit: p.limit(),
            })
            .collect()
    }

    /// Changes the limit of `partition`. Calls in flight keep their permits: lowering the limit
    /// only holds back new ones until enough have finished; raising it admits waiters at once.
    /// With an adaptive limit this sets the current value, which keeps adapting within bounds.
    pub fn set_limit(&self, partition: &str, limit: usize) -> Result<(), ConfigError> {
        let part = self.shared.find(partition).ok_or_else(|| {
            ConfigError::new(format!("partitions[{partition}]"), "no such partition")
        })?;
        if limit == 0 {
            return Err(ConfigError::new("limit", "must be at least 1"));
        }
        if let Some(aimd) = &part.adaptive
            && (limit < aimd.min() || limit > aimd.max())
        {
            return Err(ConfigError::new(
                "limit",
                "must lie between the partition's adaptive min and max",
            ));
        }
        part.set_limit(limit);
        Ok(())
    }
}
