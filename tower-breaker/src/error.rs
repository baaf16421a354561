//! The crate's errors.
//!
//! A breaker refuses calls with [`tower_red::Rejection`] of kind
//! `RejectionKind::CircuitOpen`, boxed into a
//! [`BoxError`](tower_red::BoxError), so every layer of the workspace is refused the same way;
//! [`is_circuit_open`] recognises one. A bad configuration is the workspace's
//! [`ConfigError`] (re-exported from [`tower_red`]), naming the layer and the field.
//!
//! ```
//! use tower_breaker::BreakerLayer;
//!
//! let err = BreakerLayer::builder().failure_rate_threshold(1.5).build().unwrap_err();
//! assert_eq!(err.layer(), "breaker");
//! assert_eq!(err.field(), "failure_rate_threshold");
//! assert_eq!(err.to_string(), "invalid breaker config: failure_rate_threshold = 1.5: must be in (0, 1]");
//! ```

use std::error::Error;

pub use tower_red::ConfigError;
use tower_red::{Rejection, RejectionKind};

/// Whether `err` (or anything in its `source()` chain) is a breaker's refusal.
pub fn is_circuit_open(err: &(dyn Error + 'static)) -> bool {
    Rejection::find(err).is_some_and(|r| r.is(RejectionKind::CircuitOpen))
}
