//! The live view of a bulkhead: counts per partition and limits changed at run time.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use metrics::Counter;
use tower_red::names::{self, label};

use crate::error::ConfigError;
use crate::partition::PartitionState;

/// What every clone of a bulkhead shares.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    /// The default partition first, then the configured ones in order.
    pub(crate) partitions: Box<[Arc<PartitionState>]>,
    pub(crate) backpressure: bool,
    /// Calls that named an unknown partition (a no-op unless a partition function is set and
    /// metrics are on).
    unknown: Counter,
    warned: AtomicBool,
}

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        partitions: Box<[Arc<PartitionState>]>,
        backpressure: bool,
        count_unknown: bool,
    ) -> Self {
        let unknown = if count_unknown {
            metrics::counter!(
                tower_red::names::BULKHEAD_UNKNOWN_PARTITION_TOTAL,
                label::LAYER => names::layer::BULKHEAD,
                label::NAME => name.to_string()
            )
        } else {
            Counter::noop()
        };
        Shared {
            name,
            partitions,
            backpressure,
            unknown,
            warned: AtomicBool::new(false),
        }
    }

    /// The index of the partition named `name`: the default partition for `None`, and for an
    /// unknown name (counted, and logged the first time).
    #[inline]
    pub(crate) fn index(&self, name: Option<&str>) -> usize {
        match name {
            None => 0,
            Some(name) => match self.partitions.iter().position(|p| &*p.name == name) {
                Some(i) => i,
                None => self.unknown(name),
            },
        }
    }

    #[cold]
    fn unknown(&self, name: &str) -> usize {
        self.unknown.increment(1);
        // Relaxed: the flag only limits a log line to once; no other memory depends on it, and
        // a swap is atomic on every architecture, so exactly one caller logs.
        if !self.warned.swap(true, Relaxed) {
            tracing::warn!(
                name = &*self.name,
                partition = name,
                "a bulkhead's partition function named a partition it does not have: such calls \
                 run in the default partition (counted in \
                 resilience_bulkhead_unknown_partition_total; logged once per bulkhead)"
            );
        }
        0
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
/// assert_eq!(handle.set_limit("background", 0).unwrap_err().field(), "partitions.background.limit");
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
        let invalid = |field: String, value: &dyn fmt::Debug, reason: &'static str| {
            ConfigError::new(names::layer::BULKHEAD, field, value, reason)
        };
        let Some(part) = self.shared.find(partition) else {
            return Err(invalid(
                "partition".to_owned(),
                &partition,
                "no such partition",
            ));
        };
        let field = || format!("partitions.{partition}.limit");
        if limit == 0 {
            return Err(invalid(field(), &limit, "must be at least 1"));
        }
        if limit > crate::permits::MAX_LIMIT {
            return Err(invalid(field(), &limit, "must be at most 4294967295"));
        }
        if let Some(aimd) = &part.adaptive
            && (limit < aimd.min() || limit > aimd.max())
        {
            return Err(invalid(
                field(),
                &limit,
                "must lie between the partition's adaptive min and max",
            ));
        }
        part.set_limit(limit);
        Ok(())
    }
}
