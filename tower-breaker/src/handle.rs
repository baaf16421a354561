//! A handle on a breaker's shared state: read it, force transitions.
//!
//! ```
//! use tower_breaker::{BreakerLayer, State};
//!
//! let layer = BreakerLayer::new("inventory");
//! let handle = layer.handle();
//! assert_eq!(handle.state(), State::Closed);
//! handle.force_open();
//! assert_eq!(handle.state(), State::ForcedOpen);
//! handle.reset();
//! assert_eq!(handle.state(), State::Closed);
//! assert_eq!(handle.counts().calls, 0);
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::event::State;
use crate::machine::Machine;
use crate::window::Counts;

/// Reads a breaker's state and forces transitions. Cheap to clone; every clone, layer and
/// service of the breaker sees the same state.
#[derive(Debug, Clone)]
pub struct BreakerHandle {
    machine: Arc<Machine>,
}

impl BreakerHandle {
    pub(crate) fn new(machine: Arc<Machine>) -> Self {
        BreakerHandle { machine }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.machine.config.name
    }

    /// The current state. An open circuit whose open time has passed still reads
    /// [`State::Open`] until the next call moves it to half-open.
    pub fn state(&self) -> State {
        self.machine.state()
    }

    /// Calls, failures and slow calls in the current window (cleared on every close).
    pub fn counts(&self) -> Counts {
        self.machine.counts()
    }

    /// The failure rate of the current window, in `[0, 1]`.
    pub fn failure_rate(&self) -> f64 {
        self.counts().failure_rate()
    }

    /// The slow-call rate of the current window, in `[0, 1]`.
    pub fn slow_call_rate(&self) -> f64 {
        self.counts().slow_rate()
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.machine.consecutive_failures()
    }

    /// Calls refused since the breaker was built.
    pub fn rejected_calls(&self) -> u64 {
        self.machine.rejected_total()
    }

    /// While [`State::Open`]: how long until a probe may go.
    pub fn remaining_open_time(&self) -> Option<Duration> {
        (self.state() == State::Open).then(|| {
            self.machine
                .open_until()
                .saturating_duration_since(Instant::now())
        })
    }

    /// Opens the circuit until told otherwise ([`State::ForcedOpen`]): every call is refused.
    pub fn force_open(&self) {
        self.machine.force(State::ForcedOpen);
    }

    /// Closes the circuit, clearing the window and the open-time backoff.
    pub fn reset(&self) {
        self.machine.force(State::Closed);
    }

    /// Lets every call through unmeasured until told otherwise ([`State::Disabled`]).
    pub fn disable(&self) {
        self.machine.force(State::Disabled);
    }

    /// Lets every call through, measured, never tripping ([`State::MetricsOnly`]).
    pub fn metrics_only(&self) {
        self.machine.force(State::MetricsOnly);
    }
}
