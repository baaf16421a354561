//! Breaker states and the events hooks receive.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use tower_breaker::{BreakerLayer, State};
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! let layer = BreakerLayer::builder()
//!     .on_transition(move |t| log.lock().unwrap().push((t.from, t.to)))
//!     .build()
//!     .unwrap();
//! layer.handle().force_open();
//! assert_eq!(*seen.lock().unwrap(), [(State::Closed, State::ForcedOpen)]);
//! ```

use std::fmt;
use std::time::Duration;

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Calls pass and are measured; a trip rule opens the circuit.
    Closed = 0,
    /// Calls are refused until the open time has passed.
    Open = 1,
    /// A few probes pass; their outcome closes or reopens the circuit.
    HalfOpen = 2,
    /// Every call is refused until the handle says otherwise (sticky).
    ForcedOpen = 3,
    /// Every call passes, nothing is measured (sticky).
    Disabled = 4,
    /// Every call passes and is measured, but the circuit never trips (sticky).
    MetricsOnly = 5,
}

impl State {
    /// Every state, in gauge order.
    pub const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
        State::MetricsOnly,
    ];

    /// The snake_case label value, such as `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics_only",
        }
    }

    /// The value of the state gauge (`resilience_breaker_state`).
    pub fn gauge_value(self) -> f64 {
        f64::from(self as u8)
    }

    pub(crate) fn from_bits(bits: u64) -> State {
        match bits & 0x7 {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            4 => State::Disabled,
            _ => State::MetricsOnly,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The failure rate reached its threshold.
    FailureRate,
    /// The slow-call rate reached its threshold.
    SlowCallRate,
    /// Too many failures in a row.
    ConsecutiveFailures,
    /// The open time passed and a request arrived.
    OpenTimeElapsed,
    /// The half-open probes succeeded.
    ProbesSucceeded,
    /// The half-open probes failed (or were slow).
    ProbesFailed,
    /// The half-open probes did not all finish within `max_probe_wait`.
    ProbesHung,
    /// A call failed during graded recovery.
    RecoveryFailed,
    /// A handle forced it.
    Forced,
}

impl Reason {
    /// The snake_case name, such as `failure_rate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FailureRate => "failure_rate",
            Reason::SlowCallRate => "slow_call_rate",
            Reason::ConsecutiveFailures => "consecutive_failures",
            Reason::OpenTimeElapsed => "open_time_elapsed",
            Reason::ProbesSucceeded => "probes_succeeded",
            Reason::ProbesFailed => "probes_failed",
            Reason::ProbesHung => "probes_hung",
            Reason::RecoveryFailed => "recovery_failed",
            Reason::Forced => "forced",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state transition, given to `on_transition` hooks.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Transition {
    /// The breaker's name.
    pub name: std::sync::Arc<str>,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// When entering [`State::Open`]: how long it stays open.
    pub open_for: Option<Duration>,
    /// The failure rate of the window (or of the probes) that decided, when one did.
    pub failure_rate: Option<f64>,
}

/// A refused call, given to `on_rejection` hooks.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Rejected {
    /// The state that refused.
    pub state: State,
    /// How long until a call may be admitted again, when known.
    pub retry_after: Option<Duration>,
}
