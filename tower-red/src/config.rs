//! [`ConfigError`]: the one error every layer builder of this workspace returns.
//!
//! Layers are built with `XLayer::builder()…build() -> Result<XLayer, ConfigError>` (and a
//! `new` for the common case). A bad value is refused when the layer is built, never later
//! on a call, and the error names the layer, the setting (as spelled by its builder method),
//! the value it was given and why that value cannot work.
//!
//! ```
//! use tower_red::ConfigError;
//!
//! let err = ConfigError::new("breaker", "failure_rate_threshold", 1.5, "must be in (0, 1]");
//! assert_eq!(err.layer(), "breaker");
//! assert_eq!(err.field(), "failure_rate_threshold");
//! assert_eq!(err.value(), "1.5");
//! assert_eq!(
//!     err.to_string(),
//!     "invalid breaker config: failure_rate_threshold = 1.5: must be in (0, 1]"
//! );
//! ```

use std::borrow::Cow;
use std::error::Error;
use std::fmt;

/// A configuration value that cannot work, found when a layer is built.
///
/// Built only at configuration time, so it may own strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    layer: &'static str,
    field: Cow<'static, str>,
    value: String,
    reason: Cow<'static, str>,
}

impl ConfigError {
    /// An error for the setting `field` of a `layer` (one of [`crate::names::layer`]), given
    /// `value` (formatted with `Debug`, so strings show quoted), refused for `reason`.
    pub fn new(
        layer: &'static str,
        field: impl Into<Cow<'static, str>>,
        value: impl fmt::Debug,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        ConfigError {
            layer,
            field: field.into(),
            value: format!("{value:?}"),
            reason: reason.into(),
        }
    }

    /// The kind of layer whose configuration is bad, such as `breaker`.
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// The bad setting, as spelled by its builder method (a partition's settings are prefixed
    /// by the partition: `partitions.critical.max_concurrent`).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The rejected value, formatted with `Debug`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Why the value was rejected; for a value that conflicts with another setting, it names
    /// that setting and its value.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} config: {} = {}: {}",
            self.layer, self.field, self.value, self.reason
        )
    }
}

impl Error for ConfigError {}
