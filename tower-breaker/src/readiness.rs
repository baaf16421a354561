//! [`BreakerHandle`] as a [`tower_red::readiness::Dependency`], so a breaker can be registered
//! with a [`tower_red::Readiness`].
//!
//! A breaker is unavailable while it refuses every call: [`State::ForcedOpen`], and
//! [`State::Open`] while its open time runs. Half-open counts as available (probes flow), and so
//! does an open circuit whose open time has passed: only a call moves it to half-open, and an
//! instance taken out of rotation for it would never get that call.
//!
//! ```
//! use tower_breaker::BreakerLayer;
//! use tower_red::Readiness;
//!
//! let breaker = BreakerLayer::new("inventory");
//! let readiness = Readiness::new().critical(breaker.handle());
//! assert!(readiness.report().is_ready());
//!
//! breaker.handle().force_open();
//! let report = readiness.report();
//! assert_eq!(report.status(), 503);
//! assert_eq!(report.entry("inventory").unwrap().snapshot().state(), "forced_open");
//! ```

use std::time::Duration;

use tower_red::readiness::{Dependency, Kind, Snapshot};

use crate::event::State;
use crate::handle::BreakerHandle;

impl Dependency for BreakerHandle {
    fn name(&self) -> &str {
        BreakerHandle::name(self)
    }

    fn kind(&self) -> Kind {
        Kind::Breaker
    }

    /// The state, whether it refuses calls, the open time left (while open), and the window's
    /// `calls`, `failures` and `slow` calls, `consecutive_failures` and `rejected_total`.
    fn snapshot(&self) -> Snapshot {
        let state = self.state();
        let (available, open_for) = match state {
            State::Open => {
                // Read after the state: a circuit that moved on meanwhile reads zero time left.
                let left = self.remaining_open_time().unwrap_or(Duration::ZERO);
                (left.is_zero(), Some(left))
            }
            State::ForcedOpen => (false, None),
            State::Closed | State::HalfOpen | State::Disabled | State::MetricsOnly => (true, None),
        };
        let counts = self.counts();
        let mut snapshot = Snapshot::new(state.as_str(), available);
        if let Some(left) = open_for {
            snapshot = snapshot.with_open_for(left);
        }
        snapshot
            .with_count("calls", counts.calls)
            .with_count("failures", counts.failures)
            .with_count("slow", counts.slow)
            .with_count(
                "consecutive_failures",
                u64::from(self.consecutive_failures()),
            )
            .with_count("rejected_total", self.rejected_calls())
    }
}
