//! Metric handles and the shared per-layer state, registered once when a layer is built.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Label};
use tower_red::classify::{AnyError, Classify};
use tower_red::names::{self, label};
use tower_red::red::{Outcome, RedMetrics};
use tower_red::{BoxError, Rejection, RejectionKind};

use crate::error::Stage;

/// A layer instance's name: a static name is copied into each call's future for free; only a
/// name built at run time costs a reference-count bump per call.
#[derive(Debug, Clone)]
pub(crate) enum Name {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Name {
    pub(crate) fn new(name: Cow<'static, str>) -> Name {
        match name {
            Cow::Borrowed(s) => Name::Static(s),
            Cow::Owned(s) => Name::Shared(Arc::from(s)),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Name::Static(s) => s,
            Name::Shared(s) => s,
        }
    }

    fn to_arc(&self) -> Arc<str> {
        match self {
            Name::Static(s) => Arc::from(*s),
            Name::Shared(s) => s.clone(),
        }
    }
}

/// What every service and future of one layer instance shares: its name and, when metrics are
/// on, its handles and the classifier `K` that judges the RED outcome of a finished call.
/// Cloned into each call's future: free with a static name and metrics off.
pub(crate) struct Shared<K = AnyError> {
    name: Name,
    metrics: Option<Arc<Handles<K>>>,
}

impl<K> Clone for Shared<K> {
    #[inline]
    fn clone(&self) -> Self {
        Shared {
            name: self.name.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<K> std::fmt::Debug for Shared<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("metrics", &self.metrics)
            .finish()
    }
}

struct Handles<K> {
    red: RedMetrics,
    exceeded: [Counter; Stage::ALL.len()],
    invalid: [Counter; 2],
    /// Only the RED outcome needs it, so only a layer that records keeps it.
    classifier: K,
}

impl<K> std::fmt::Debug for Handles<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles")
            .field("red", &self.red)
            .finish_non_exhaustive()
    }
}

/// Which layer of this crate records, and so which series it can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `TimeoutBudgetLayer`: `layer="timeout"`.
    Timeout,
    /// `InboundDeadlineLayer`: `layer="deadline_inbound"`; strict mode refuses malformed headers.
    Inbound { strict: bool },
    /// `OutboundDeadlineLayer`: `layer="deadline_outbound"`.
    Outbound,
}

/// What every call of every layer here can end as: the inner result (`ok`, `error`, or an
/// inner layer's refusal) or this layer's own `timeout`, each with its duration.
const TIMED: [Outcome; 4] = [
    Outcome::Ok,
    Outcome::Error,
    Outcome::Timeout,
    Outcome::InnerRefusal,
];

impl Kind {
    fn layer(self) -> &'static str {
        match self {
            Kind::Timeout => names::layer::TIMEOUT,
            Kind::Inbound { .. } => names::layer::DEADLINE_INBOUND,
            Kind::Outbound => names::layer::DEADLINE_OUTBOUND,
        }
    }

    /// The stages at which this layer can find a deadline passed.
    fn stages(self) -> &'static [Stage] {
        match self {
            Kind::Timeout => &[Stage::Arrival, Stage::Ready, Stage::Call],
            // No request, so no deadline, exists while the inbound layer waits for readiness.
            Kind::Inbound { .. } => &[Stage::Arrival, Stage::Call],
            // A spent outbound budget is found before sending, never "on arrival".
            Kind::Outbound => &[Stage::Ready, Stage::Call, Stage::BeforeSend],
        }
    }

    fn refusals(self) -> &'static [Outcome] {
        match self {
            Kind::Inbound { strict: true } => &[Outcome::Rejected],
            _ => &[],
        }
    }
}

impl<K> Shared<K> {
    /// Registers the handles (when `metrics` is on) with the recorder installed now: only the
    /// series a layer of `kind` can produce. `headers` are the inbound headers whose malformed
    /// values are counted, by index (`None`: not read, nothing registered). `classifier` judges
    /// finished calls for the RED outcome; without metrics it is dropped, never called.
    pub(crate) fn new(
        kind: Kind,
        name: Name,
        metrics: bool,
        headers: [Option<&str>; 2],
        classifier: K,
    ) -> Shared<K> {
        // Handles registered with no recorder installed are no-ops for life: skip them, and
        // the clock reads their durations would cost.
        let metrics = (metrics && tower_red::red::recorder_installed()).then(|| {
            let layer = kind.layer();
            let labels = |key: &'static str, value: String| {
                [
                    Label::from_static_parts(label::LAYER, layer),
                    Label::new(label::NAME, name.as_str().to_owned()),
                    Label::new(key, value),
                ]
            };
            Arc::new(Handles {
                red: RedMetrics::with_outcomes(
                    layer,
                    name.as_str().to_owned(),
                    &TIMED,
                    kind.refusals(),
                ),
                exceeded: Stage::ALL.map(|stage| {
                    if kind.stages().contains(&stage) {
                        metrics::counter!(
                            names::DEADLINE_EXCEEDED_TOTAL,
                            labels(label::STAGE, stage.as_str().to_owned()).iter()
                        )
                    } else {
                        Counter::noop()
                    }
                }),
                invalid: headers.map(|h| match h {
                    Some(h) => metrics::counter!(
                        names::DEADLINE_HEADER_INVALID_TOTAL,
                        labels(label::HEADER, h.to_owned()).iter()
                    ),
                    None => Counter::noop(),
                }),
                classifier,
            })
        });
        Shared { name, metrics }
    }

    /// Whether a finished call's duration is recorded (so its future reads the clock when it
    /// ends): metrics are recorded, and the handles were not registered inside
    /// [`tower_red::red::counts_only`].
    #[inline]
    pub(crate) fn records_durations(&self) -> bool {
        self.metrics
            .as_ref()
            .is_some_and(|m| m.red.records_durations())
    }

    /// Counts a finished call: its outcome is the classifier's verdict through
    /// [`tower_red::judge`] (an inner layer's refusal is `inner_refusal`, whatever the
    /// classifier). Neither the classifier nor `elapsed` is called when metrics are off.
    #[inline]
    pub(crate) fn finished<T>(
        &self,
        result: &Result<T, BoxError>,
        elapsed: impl FnOnce() -> Duration,
    ) where
        K: Classify<T, BoxError>,
    {
        if let Some(m) = &self.metrics {
            let verdict = tower_red::judge(&m.classifier, result);
            // Counted only (no clock read) inside a stack that times the call once.
            let elapsed = if m.red.records_durations() {
                elapsed()
            } else {
                Duration::ZERO
            };
            m.red.record(Outcome::judged(verdict, result), elapsed);
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
            name = self.name.as_str(),
            stage = stage.as_str(),
            "deadline exceeded"
        );
        Rejection::new(RejectionKind::DeadlineExceeded)
            .with_name(self.name.to_arc())
            .with_reason(stage.as_str())
            .with_detail(stage.detail())
            .into()
    }

    /// Counts a malformed inbound header (by its index in `headers` of [`Shared::new`]).
    pub(crate) fn invalid_header(&self, index: usize, header: &str) {
        if let Some(m) = &self.metrics {
            m.invalid[index].increment(1);
        }
        tracing::debug!(
            name = self.name.as_str(),
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
            .with_name(self.name.to_arc())
            .with_detail(detail)
            .into()
    }
}
