//! Bulkhead for tower services: concurrency limits, bounded queues and partitions.
//!
//! Work in progress: the layer lands with its own issue. It reads request deadlines from
//! [`tower_timeout_budget`].
