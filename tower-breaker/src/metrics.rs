//! Metric handles, registered once when a breaker is built: the RED handles of
//! [`tower_red::RedMetrics`], the state gauge and one transitions counter per (from, to) pair.

use std::sync::Arc;

use metrics::{Counter, Gauge, Label, SharedString};
use tower_red::names::{self, label};
use tower_red::red::{Outcome, RedMetrics};

use crate::event::State;

/// The outcomes of calls the breaker let through: a classifier may say timeout, a deadline
/// drop is `cancelled`, a refusal from inside is `inner_refusal`.
const TIMED_OUTCOMES: [Outcome; 5] = [
    Outcome::Ok,
    Outcome::Error,
    Outcome::Timeout,
    Outcome::Cancelled,
    Outcome::InnerRefusal,
];

/// Whether a breaker can move from `from` to `to`: a handle forces closed, forced open,
/// disabled or metrics only from anywhere else; on its own a breaker only trips, probes, and
/// closes or reopens after probing.
fn possible(from: State, to: State) -> bool {
    from != to
        && match to {
            State::Closed | State::ForcedOpen | State::Disabled | State::MetricsOnly => true,
            State::Open => matches!(from, State::Closed | State::HalfOpen),
            State::HalfOpen => from == State::Open,
        }
}

pub(crate) struct Metrics {
    pub(crate) red: RedMetrics,
    state: Gauge,
    transitions: [[Counter; State::ALL.len()]; State::ALL.len()],
}

impl Metrics {
    pub(crate) fn new(name: &Arc<str>) -> Self {
        let shared = SharedString::from(name.clone());
        let red = RedMetrics::with_outcomes(
            names::layer::BREAKER,
            shared.clone(),
            &TIMED_OUTCOMES,
            &[Outcome::CircuitOpen],
        );
        let state = metrics::gauge!(
            names::BREAKER_STATE,
            [Label::new(label::NAME, shared.clone())].iter()
        );
        state.set(State::Closed.gauge_value());
        let transitions = State::ALL.map(|from| {
            State::ALL.map(|to| {
                if !possible(from, to) {
                    return Counter::noop();
                }
                let labels = [
                    Label::new(label::NAME, shared.clone()),
                    Label::from_static_parts(label::FROM, from.as_str()),
                    Label::from_static_parts(label::TO, to.as_str()),
                ];
                metrics::counter!(names::BREAKER_TRANSITIONS_TOTAL, labels.iter())
            })
        });
        Metrics {
            red,
            state,
            transitions,
        }
    }

    pub(crate) fn transition(&self, from: State, to: State, gauge: bool) {
        self.transitions[from as usize][to as usize].increment(1);
        if gauge {
            self.state.set(to.gauge_value());
        }
    }
}
