//! The retry layer's metric handles, registered once when the layer is built.

use metrics::{Counter, Gauge, Histogram, Label, SharedString};
use tower_red::FailureClass;
use tower_red::names::{self, label, layer::RETRY};
use tower_red::red::{Outcome, RedMetrics};

use crate::policy::Stop;

/// Why a retry was sent: the `reason` label of
/// [`RETRY_ATTEMPTS_TOTAL`](tower_red::names::RETRY_ATTEMPTS_TOTAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Error,
    Timeout,
    HttpStatus,
    GrpcStatus,
    Other,
    Refused,
}

impl Reason {
    const ALL: [Reason; 6] = [
        Reason::Error,
        Reason::Timeout,
        Reason::HttpStatus,
        Reason::GrpcStatus,
        Reason::Other,
        Reason::Refused,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Error => "error",
            Reason::Timeout => "timeout",
            Reason::HttpStatus => "http_status",
            Reason::GrpcStatus => "grpc_status",
            Reason::Other => "other",
            Reason::Refused => "refused",
        }
    }

    pub(crate) fn of(class: FailureClass) -> Reason {
        match class {
            FailureClass::Error => Reason::Error,
            FailureClass::Timeout => Reason::Timeout,
            FailureClass::HttpStatus(_) => Reason::HttpStatus,
            FailureClass::Grpc(_) => Reason::GrpcStatus,
            _ => Reason::Other,
        }
    }
}

/// Why a failed attempt was not retried: the `reason` label of
/// [`RETRY_STOPS_TOTAL`](tower_red::names::RETRY_STOPS_TOTAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Policy(Stop),
    Unsafe,
    NotReplayable,
}

const STOPS: [StopReason; 7] = [
    StopReason::Policy(Stop::Attempts),
    StopReason::Policy(Stop::Pushback),
    StopReason::Policy(Stop::PushbackOverCap),
    StopReason::Policy(Stop::Deadline),
    StopReason::Policy(Stop::Budget),
    StopReason::Unsafe,
    StopReason::NotReplayable,
];

impl StopReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StopReason::Policy(stop) => stop.as_str(),
            StopReason::Unsafe => "unsafe",
            StopReason::NotReplayable => "not_replayable",
        }
    }
}

/// Every handle of one retry layer instance.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) red: RedMetrics,
    retries: [Counter; Reason::ALL.len()],
    stops: [Counter; STOPS.len()],
    attempts: Histogram,
    balance: Gauge,
    overflow: Counter,
}

/// The outcomes the retry layer records: what the last attempt's verdict says, a stop by the
/// budget, and a caller that gave up.
const TIMED: [Outcome; 6] = [
    Outcome::Ok,
    Outcome::Error,
    Outcome::Timeout,
    Outcome::InnerRefusal,
    Outcome::BudgetExhausted,
    Outcome::Cancelled,
];

impl Metrics {
    pub(crate) fn new(name: &str) -> Metrics {
        let name = SharedString::from(name.to_owned());
        let labels = |extra: Option<&'static str>| {
            let mut l = vec![
                Label::from_static_parts(label::LAYER, RETRY),
                Label::new(label::NAME, name.clone()),
            ];
            if let Some(reason) = extra {
                l.push(Label::from_static_parts(label::REASON, reason));
            }
            l
        };
        Metrics {
            red: RedMetrics::with_outcomes(RETRY, name.clone(), &TIMED, &[]),
            retries: Reason::ALL
                .map(|r| metrics::counter!(names::RETRY_ATTEMPTS_TOTAL, labels(Some(r.as_str())))),
            stops: STOPS
                .map(|s| metrics::counter!(names::RETRY_STOPS_TOTAL, labels(Some(s.as_str())))),
            attempts: metrics::histogram!(names::RETRY_REQUEST_ATTEMPTS, labels(None)),
            balance: metrics::gauge!(names::RETRY_BUDGET_BALANCE, labels(None)),
            overflow: metrics::counter!(names::RETRY_BODY_OVERFLOW_TOTAL, labels(None)),
        }
    }

    #[inline]
    pub(crate) fn retried(&self, reason: Reason) {
        self.retries[reason as usize].increment(1);
    }

    #[inline]
    pub(crate) fn stopped(&self, reason: StopReason) {
        if let Some(i) = STOPS.iter().position(|s| *s == reason) {
            self.stops[i].increment(1);
        }
    }

    /// One sample per request; inside a stack built in `tower_red::red::counts_only`, per
    /// request that was retried only. A first attempt is always the value 1, so the samples
    /// left out are `resilience_requests_total{layer="retry"}` minus the histogram's count:
    /// nothing is lost, and the happy path takes no histogram sample.
    #[inline]
    pub(crate) fn attempts(&self, attempts: u32) {
        if attempts > 1 || self.red.records_durations() {
            self.attempts.record(f64::from(attempts));
        }
    }

    #[inline]
    pub(crate) fn balance(&self, balance: f64) {
        self.balance.set(balance);
    }

    #[inline]
    pub(crate) fn overflowed(&self) {
        self.overflow.increment(1);
    }
}
