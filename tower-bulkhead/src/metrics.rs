//! Metric handles of one partition, registered once when the layer is built: only the series
//! the partition can produce (no queue series for a partition that never queues, no rejection
//! reason its mode cannot give).

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label, SharedString};
use tower_red::names::{self, label};
use tower_red::red::{Outcome, RedMetrics};

use crate::error::Reason;
use crate::partition::Mode;
use crate::permits::Observer;

/// The outcomes a bulkhead records with a duration: calls that ran (judged by its classifier,
/// or refused by an inner layer) and calls dropped before they finished.
const TIMED_OUTCOMES: [Outcome; 5] = [
    Outcome::Ok,
    Outcome::Error,
    Outcome::Timeout,
    Outcome::Cancelled,
    Outcome::InnerRefusal,
];

/// The RED handles of a bulkhead named `name`; `queues` when a partition can wait (its
/// refusals after a wait are `shed` with the time waited).
pub(crate) fn red(name: &str, queues: bool) -> RedMetrics {
    let shed_timed = [TIMED_OUTCOMES.as_slice(), &[Outcome::Shed]].concat();
    RedMetrics::with_outcomes(
        names::layer::BULKHEAD,
        name.to_owned(),
        if queues { &shed_timed } else { &TIMED_OUTCOMES },
        // A call refused before it waited: counted without a duration.
        &[Outcome::Shed],
    )
}

/// The rejection reasons a partition in `mode` can give.
fn reasons(mode: Mode) -> &'static [Reason] {
    match mode {
        Mode::Reject => &[Reason::Full],
        Mode::Queue { .. } => &[Reason::QueueFull, Reason::QueueTimeout, Reason::Deadline],
        // `Full` for a call made without a reservation (or, never in practice, a full
        // unbounded queue).
        Mode::Backpressure => &[Reason::Full],
    }
}

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
    /// Registers the handles of partition `partition` (in `mode`) of the bulkhead whose RED
    /// handles are `red`, with the recorder installed now.
    pub(crate) fn new(red: RedMetrics, partition: &str, mode: Mode) -> Self {
        let name: SharedString = red.name().clone();
        let partition: SharedString = partition.to_owned().into();
        let labels = || {
            vec![
                Label::from_static_parts(label::LAYER, names::layer::BULKHEAD),
                Label::new(label::NAME, name.clone()),
                Label::new(label::PARTITION, partition.clone()),
            ]
        };
        let possible = reasons(mode);
        let rejections = Reason::ALL.map(|reason| {
            if !possible.contains(&reason) {
                return Counter::noop();
            }
            let mut labels = labels();
            labels.push(Label::from_static_parts(label::REASON, reason.as_str()));
            metrics::counter!(names::BULKHEAD_REJECTIONS_TOTAL, labels)
        });
        let queues = !matches!(mode, Mode::Reject);
        let (queue_depth, queue_wait) = if queues {
            let depth = metrics::gauge!(names::BULKHEAD_QUEUE_DEPTH, labels());
            depth.set(0.0);
            (
                depth,
                metrics::histogram!(names::BULKHEAD_QUEUE_WAIT_SECONDS, labels()),
            )
        } else {
            (Gauge::noop(), Histogram::noop())
        };
        PartitionMetrics {
            in_flight: metrics::gauge!(names::BULKHEAD_IN_FLIGHT, labels()),
            queue_depth,
            limit: metrics::gauge!(names::BULKHEAD_LIMIT, labels()),
            queue_wait,
            rejections,
            red,
        }
    }

    /// Whether the handles record (a recorder was installed when they were registered).
    pub(crate) fn is_recording(&self) -> bool {
        self.red.is_recording()
    }

    /// Whether the handles record durations (recording, and not registered inside
    /// [`tower_red::red::counts_only`]): only then is a call timed for its RED series.
    pub(crate) fn records_durations(&self) -> bool {
        self.red.records_durations()
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

impl Observer for Option<PartitionMetrics> {
    #[inline]
    fn acquired(&self) {
        if let Some(m) = self {
            m.in_flight.increment(1.0);
        }
    }

    #[inline]
    fn released(&self) {
        if let Some(m) = self {
            m.in_flight.decrement(1.0);
        }
    }

    fn queue_depth(&self, depth: usize) {
        if let Some(m) = self {
            m.queue_depth.set(depth as f64);
        }
    }
}
