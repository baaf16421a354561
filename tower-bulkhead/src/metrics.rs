//! Metric handles of one partition, registered once when the layer is built.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label, SharedString};
use tower_red::names::{self, label};
use tower_red::red::{Outcome, RedMetrics};

use crate::error::Reason;

/// The handles of one partition; every update indexes an array and bumps a handle.
pub(crate) struct PartitionMetrics {
    pub(crate) red: RedMetrics,
    in_flight: Gauge,
    queue_depth: Gauge,
    limit: Gauge,
    queue_wait: Histogram,
    rejections: [Counter; Reason::ALL.len()],
}

impl PartitionMetrics {
    /// Registers the handles of partition `partition` of the bulkhead whose RED handles are
    /// `red`, with the recorder installed now.
    pub(crate) fn new(red: RedMetrics, partition: &str) -> Self {
        let name: SharedString = red.name().clone();
        let partition: SharedString = partition.to_owned().into();
        let labels = || {
            vec![
                Label::from_static_parts(label::LAYER, names::layer::BULKHEAD),
                Label::new(label::NAME, name.clone()),
                Label::new(label::PARTITION, partition.clone()),
            ]
        };
        let rejections = Reason::ALL.map(|reason| {
            let mut labels = labels();
            labels.push(Label::from_static_parts(label::REASON, reason.as_str()));
            metrics::counter!(names::BULKHEAD_REJECTIONS_TOTAL, labels)
        });
        PartitionMetrics {
            in_flight: metrics::gauge!(names::BULKHEAD_IN_FLIGHT, labels()),
            queue_depth: metrics::gauge!(names::BULKHEAD_QUEUE_DEPTH, labels()),
            limit: metrics::gauge!(names::BULKHEAD_LIMIT, labels()),
            queue_wait: metrics::histogram!(names::BULKHEAD_QUEUE_WAIT_SECONDS, labels()),
            rejections,
            red,
        }
    }

    #[inline]
    pub(crate) fn acquired(&self) {
        self.in_flight.increment(1.0);
    }

    #[inline]
    pub(crate) fn released(&self) {
        self.in_flight.decrement(1.0);
    }

    pub(crate) fn queue_depth(&self, depth: usize) {
        self.queue_depth.set(depth as f64);
    }

    pub(crate) fn limit(&self, limit: usize) {
        self.limit.set(limit as f64);
    }

    pub(crate) fn queue_wait(&self, waited: Duration) {
        self.queue_wait.record(waited.as_secs_f64());
    }

    /// Counts a rejection by reason and as a shed call in RED (with its time in the queue when
    /// it waited).
    pub(crate) fn rejected(&self, reason: Reason, waited: Option<Duration>) {
        self.rejections[reason as usize].increment(1);
        match waited {
            Some(waited) => self.red.record(Outcome::Shed, waited),
            None => self.red.record_rejection(Outcome::Shed),
        }
    }
}
