//! The crate's error types: [`ConfigError`] from the builders (the workspace's one
//! [`tower_red::ConfigError`], re-exported) and [`ParseError`] from the header parsers.
//!
//! Deadline refusals themselves are [`tower_red::Rejection`]s of kind
//! [`RejectionKind::DeadlineExceeded`](tower_red::RejectionKind::DeadlineExceeded) (HTTP 504,
//! gRPC `DEADLINE_EXCEEDED`) or, in strict inbound mode,
//! [`RejectionKind::InvalidDeadline`](tower_red::RejectionKind::InvalidDeadline) (HTTP 400, gRPC
//! `INVALID_ARGUMENT`), so every layer of the workspace is answered by the same adapters.
//!
//! ```
//! use tower_timeout_budget::TimeoutBudgetLayer;
//!
//! let err = TimeoutBudgetLayer::new(std::time::Duration::ZERO).unwrap_err();
//! assert_eq!((err.layer(), err.field(), err.value()), ("timeout", "cap", "0ns"));
//! assert_eq!(err.to_string(), "invalid timeout config: cap = 0ns: must be greater than zero");
//! ```

use std::error::Error;
use std::fmt;

/// The configuration error of every builder of this workspace: names the layer (`timeout`,
/// `deadline_inbound` or `deadline_outbound`), the field, the value and why it cannot work.
pub use tower_red::ConfigError;

/// A deadline header value that does not follow its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    reason: &'static str,
}

impl ParseError {
    pub(crate) const EMPTY: ParseError = ParseError {
        reason: "empty value",
    };
    pub(crate) const TOO_LONG: ParseError = ParseError {
        reason: "too many digits",
    };
    pub(crate) const NOT_A_DIGIT: ParseError = ParseError {
        reason: "not an ascii digit",
    };
    pub(crate) const BAD_UNIT: ParseError = ParseError {
        reason: "missing or unknown unit (expected one of H M S m u n)",
    };

    /// Why the value was rejected.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid deadline header: {}", self.reason)
    }
}

impl Error for ParseError {}

/// Where a deadline passed: the `stage` label of
/// [`DEADLINE_EXCEEDED_TOTAL`](tower_red::names::DEADLINE_EXCEEDED_TOTAL) and the detail of the
/// rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// The budget was already spent when the request reached the layer (`arrival`).
    Arrival,
    /// The budget ran out while the layer waited for the inner service's readiness (`ready`).
    Ready,
    /// The budget ran out while the inner call was running (`call`).
    Call,
    /// An outbound request's budget was spent (or left no more than the margin, or under a
    /// millisecond past it for the millisecond HTTP header) before it was sent
    /// (`before_send`); nothing was sent.
    BeforeSend,
}

impl Stage {
    /// Every stage, in label order.
    pub const ALL: [Stage; 4] = [Stage::Arrival, Stage::Ready, Stage::Call, Stage::BeforeSend];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Arrival => "arrival",
            Stage::Ready => "ready",
            Stage::Call => "call",
            Stage::BeforeSend => "before_send",
        }
    }

    /// The rejection detail, such as `waiting for readiness`.
    pub fn detail(self) -> &'static str {
        match self {
            Stage::Arrival => "spent before the request arrived",
            Stage::Ready => "waiting for readiness",
            Stage::Call => "in the call",
            Stage::BeforeSend => "spent before sending",
        }
    }

    /// The stage a rejection from this crate names (its [`reason`](tower_red::Rejection::reason)),
    /// or `None` for other rejections.
    pub fn of(rejection: &tower_red::Rejection) -> Option<Stage> {
        if !rejection.is(tower_red::RejectionKind::DeadlineExceeded) {
            return None;
        }
        let reason = rejection.reason()?;
        Stage::ALL.into_iter().find(|s| s.as_str() == reason)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
