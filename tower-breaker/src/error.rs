//! The crate's errors.
//!
//! A breaker refuses calls with [`tower_red::Rejection`] of kind
//! `RejectionKind::CircuitOpen`, boxed into a
//! [`BoxError`](tower_red::BoxError), so every layer of the workspace is refused the same way;
//! [`is_circuit_open`] recognises one. A bad configuration is a [`ConfigError`] naming the field.
//!
//! ```
//! use tower_breaker::BreakerConfig;
//!
//! let err = BreakerConfig::builder().failure_rate_threshold(1.5).build().unwrap_err();
//! assert_eq!(err.field(), "failure_rate_threshold");
//! assert_eq!(err.to_string(), "invalid breaker config: failure_rate_threshold = 1.5: must be in (0, 1]");
//! ```

use std::error::Error;
use std::fmt;

use tower_red::{Rejection, RejectionKind};

/// A configuration value that cannot work, found when the configuration is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    value: String,
    reason: &'static str,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, value: impl fmt::Debug, reason: &'static str) -> Self {
        ConfigError {
            field,
            value: format!("{value:?}"),
            reason,
        }
    }

    /// The name of the bad setting, as spelled by its builder method.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The rejected value, formatted with `Debug`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Why the value was rejected.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid breaker config: {} = {}: {}",
            self.field, self.value, self.reason
        )
    }
}

impl Error for ConfigError {}

/// Whether `err` (or anything in its `source()` chain) is a breaker's refusal.
pub fn is_circuit_open(err: &(dyn Error + 'static)) -> bool {
    Rejection::find(err).is_some_and(|r| r.is(RejectionKind::CircuitOpen))
}
