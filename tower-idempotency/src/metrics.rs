//! Metric handles, registered once when the layer is built.

use std::time::Duration;

use metrics::{Counter, Histogram, Label};
use tower_red::names::{self, label};
use tower_red::red::{Outcome, RedMetrics};

/// What the layer did with a request that carried a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Executed,
    Replayed,
    Conflict,
    Mismatch,
    InvalidKey,
    MissingKey,
    TooLarge,
    StoreError,
}

impl Decision {
    const ALL: [Decision; 8] = [
        Decision::Executed,
        Decision::Replayed,
        Decision::Conflict,
        Decision::Mismatch,
        Decision::InvalidKey,
        Decision::MissingKey,
        Decision::TooLarge,
        Decision::StoreError,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Decision::Executed => "executed",
            Decision::Replayed => "replayed",
            Decision::Conflict => "conflict",
            Decision::Mismatch => "mismatch",
            Decision::InvalidKey => "invalid_key",
            Decision::MissingKey => "missing_key",
            Decision::TooLarge => "too_large",
            Decision::StoreError => "store_error",
        }
    }
}

/// A store operation, for the store latency and error series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Claim,
    Renew,
    Complete,
    Release,
}

impl Op {
    const ALL: [Op; 4] = [Op::Claim, Op::Renew, Op::Complete, Op::Release];

    fn as_str(self) -> &'static str {
        match self {
            Op::Claim => "claim",
            Op::Renew => "renew",
            Op::Complete => "complete",
            Op::Release => "release",
        }
    }
}

/// The outcomes a request through the layer can end with: ran (ok or error), refused by a layer
/// inside this one, replayed, refused by this layer (conflict, mismatch, bad key, store down),
/// dropped before the end.
const TIMED: [Outcome; 6] = [
    Outcome::Ok,
    Outcome::Error,
    Outcome::InnerRefusal,
    Outcome::Replayed,
    Outcome::Rejected,
    Outcome::Cancelled,
];

/// The outcome of a response from the inner service: a refusal of an inner layer (its response
/// carries the [`RejectionKind`](tower_red::RejectionKind)) is that layer's, counted here as
/// `inner_refusal`; otherwise 5xx is an error.
pub(crate) fn outcome_of<B>(res: &http::Response<B>) -> Outcome {
    if res.extensions().get::<tower_red::RejectionKind>().is_some() {
        Outcome::InnerRefusal
    } else if res.status().is_server_error() {
        Outcome::Error
    } else {
        Outcome::Ok
    }
}

/// The outcome of an error from the inner service: a [`Rejection`](tower_red::Rejection) of an
/// inner layer (a bulkhead's or breaker's `Err(BoxError)`) is that layer's, counted here as
/// `inner_refusal`; any other error is an error. Only called on the error path.
#[inline]
pub(crate) fn outcome_of_error<E: 'static>(err: &E) -> Outcome {
    match tower_red::classify::refusal_of(err) {
        Some(_) => Outcome::InnerRefusal,
        None => Outcome::Error,
    }
}

#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) red: RedMetrics,
    replays: Counter,
    decisions: [Counter; Decision::ALL.len()],
    store_errors: [Counter; Op::ALL.len()],
    store_durations: [Histogram; Op::ALL.len()],
}

impl Metrics {
    pub(crate) fn new(name: &str) -> Self {
        let red = RedMetrics::with_outcomes(
            names::layer::IDEMPOTENCY,
            name.to_owned(),
            &TIMED,
            &[Outcome::Rejected],
        );
        let base = |key: &'static str, value: &'static str| {
            [
                Label::from_static_parts(label::LAYER, names::layer::IDEMPOTENCY),
                Label::new(label::NAME, red.name().clone()),
                Label::from_static_parts(key, value),
            ]
        };
        let replays = metrics::counter!(
            names::IDEMPOTENCY_REPLAYS_TOTAL,
            base(label::NAME, "")[..2].iter()
        );
        Self {
            replays,
            decisions: Decision::ALL.map(|d| {
                metrics::counter!(
                    names::IDEMPOTENCY_DECISIONS_TOTAL,
                    base(label::REASON, d.as_str()).iter()
                )
            }),
            store_errors: Op::ALL.map(|op| {
                metrics::counter!(
                    names::IDEMPOTENCY_STORE_ERRORS_TOTAL,
                    base(label::OPERATION, op.as_str()).iter()
                )
            }),
            store_durations: Op::ALL.map(|op| {
                metrics::histogram!(
                    names::IDEMPOTENCY_STORE_DURATION_SECONDS,
                    base(label::OPERATION, op.as_str()).iter()
                )
            }),
            red,
        }
    }

    pub(crate) fn decision(&self, decision: Decision) {
        self.decisions[decision as usize].increment(1);
        if decision == Decision::Replayed {
            self.replays.increment(1);
        }
    }

    pub(crate) fn store(&self, op: Op, elapsed: Duration, ok: bool) {
        self.store_durations[op as usize].record(elapsed.as_secs_f64());
        if !ok {
            self.store_errors[op as usize].increment(1);
        }
    }
}
