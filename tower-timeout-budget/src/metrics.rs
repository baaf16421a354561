//! Metric handles and the shared per-layer state, registered once when a layer is built.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Label};
use tower_red::names::{self, label};
use tower_red::red::{Outcome, RedMetrics};
use tower_red::{BoxError, Rejection, RejectionKind};

use crate::error::Stage;

/// What every service and future of one layer instance shares: its name and its handles.
#[derive(Debug)]
pub(crate) struct Shared {
    name: Arc<str>,
    metrics: Option<Handles>,
}

struct Handles {
    red: RedMetrics,
    exceeded: [Counter; Stage::ALL.len()],
    invalid: Vec<Counter>,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles")
            .field("red", &self.red)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Registers the handles (when `metrics` is on) with the recorder installed now;
    /// `headers` are the inbound headers whose malformed values are counted, in index order.
    pub(crate) fn new(name: Arc<str>, metrics: bool, headers: &[&str]) -> Arc<Shared> {
        let metrics = metrics.then(|| {
            let labels = |key: &'static str, value: String| {
                [
                    Label::from_static_parts(label::LAYER, names::layer::TIMEOUT),
                    Label::new(label::NAME, name.to_string()),
                    Label::new(key, value),
                ]
            };
            Handles {
                red: RedMetrics::new(names::layer::TIMEOUT, name.to_string()),
                exceeded: Stage::ALL.map(|stage| {
                    metrics::counter!(
                        names::DEADLINE_EXCEEDED_TOTAL,
                        labels(label::STAGE, stage.as_str().to_owned()).iter()
                    )
                }),
                invalid: headers
                    .iter()
                    .map(|h| {
                        metrics::counter!(
                            names::DEADLINE_HEADER_INVALID_TOTAL,
                            labels(label::HEADER, (*h).to_owned()).iter()
                        )
                    })
                    .collect(),
            }
        });
        Arc::new(Shared { name, metrics })
    }

    /// Counts a finished call.
    #[inline]
    pub(crate) fn finished(
        &self,
        outcome: impl FnOnce() -> Outcome,
        elapsed: impl FnOnce() -> Duration,
    ) {
        if let Some(m) = &self.metrics {
            m.red.record(outcome(), elapsed());
        }
    }

    /// Counts a deadline that passed at `stage` (after `elapsed`, when the call had started
    /// waiting) and builds the rejection.
    pub(crate) fn exceeded(&self, stage: Stage, elapsed: Option<Duration>) -> BoxError {
        if let Some(m) = &self.metrics {
            m.exceeded[stage as usize].increment(1);
            match elapsed {
                Some(elapsed) => m.red.record(Outcome::Timeout, elapsed),
                None => m.red.record_rejection(Outcome::Timeout),
            }
        }
        tracing::debug!(
            name = &*self.name,
            stage = stage.as_str(),
            "deadline exceeded"
        );
        Rejection::new(RejectionKind::DeadlineExceeded)
            .with_name(self.name.clone())
            .with_detail(stage.detail())
            .into()
    }

    /// Counts a malformed inbound header (by its index in `headers` of [`Shared::new`]).
    pub(crate) fn invalid_header(&self, index: usize, header: &str) {
        if let Some(counter) = self.metrics.as_ref().and_then(|m| m.invalid.get(index)) {
            counter.increment(1);
        }
        tracing::debug!(
            name = &*self.name,
            header,
            "malformed deadline header ignored or rejected"
        );
    }

    /// The strict-mode rejection of a malformed header.
    pub(crate) fn invalid(&self, detail: &'static str) -> BoxError {
        if let Some(m) = &self.metrics {
            m.red.record_rejection(Outcome::Rejected);
        }
        Rejection::new(RejectionKind::InvalidDeadline)
            .with_name(self.name.clone())
            .with_detail(detail)
            .into()
    }
}
