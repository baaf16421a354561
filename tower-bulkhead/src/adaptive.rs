//! The adaptive limit: additive increase, multiplicative decrease, in the spirit of Netflix's
//! concurrency-limits `AimdLimit`.
//!
//! Each call that reached the backend adjusts its partition's limit, as the bulkhead's
//! classifier judged it (refusals of inner layers, such as an open breaker below, are no signal
//! and leave the limit alone; outcomes the classifier ignores neither): a call that failed, took
//! longer than [`Aimd::timeout`] or was dropped at its request's deadline cuts the limit to
//! `limit × backoff_ratio` (never below [`Aimd::min`]); a successful call made while at least
//! half the limit was in use raises it by one (never above
//! [`Aimd::max`]). Netflix's defaults: min 20, max 200, backoff ratio 0.9, timeout 5 s. The
//! partition's `max_concurrent` is the initial limit.
//!
//! ```
//! use std::time::Duration;
//! use tower_bulkhead::{Aimd, BulkheadLayer};
//!
//! let layer = BulkheadLayer::builder()
//!     .max_concurrent(20)
//!     .adaptive(Aimd::new(4, 100).backoff_ratio(0.8).timeout(Duration::from_secs(2)))
//!     .build()
//!     .expect("a valid configuration");
//! assert_eq!(layer.handle().limit("default"), Some(20));
//! ```

use std::time::Duration;

use crate::error::ConfigError;
use crate::permits::MAX_LIMIT;

/// AIMD settings for an adaptive limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aimd {
    min: usize,
    max: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

impl Default for Aimd {
    /// Netflix concurrency-limits' defaults: min 20, max 200, ratio 0.9, timeout 5 s.
    fn default() -> Self {
        Aimd::new(20, 200)
    }
}

impl Aimd {
    /// A limit kept between `min` and `max`, with backoff ratio 0.9 and a 5 s timeout.
    pub fn new(min: usize, max: usize) -> Self {
        Aimd {
            min,
            max,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }

    /// The factor the limit is multiplied by after a failed or slow call, in `(0, 1)`.
    #[must_use]
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// A call slower than this counts as a drop, like a failure.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The lowest limit.
    pub fn min(&self) -> usize {
        self.min
    }

    /// The highest limit.
    pub fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn validate(&self, prefix: &str, initial: usize) -> Result<(), ConfigError> {
        let err = |field: &str, value: &dyn std::fmt::Debug, reason: &'static str| {
            ConfigError::new(
                tower_red::names::layer::BULKHEAD,
                format!("{prefix}{field}"),
                value,
                reason,
            )
        };
        if self.min == 0 {
            return Err(err("adaptive.min", &self.min, "must be at least 1"));
        }
        if self.max < self.min {
            return Err(err(
                "adaptive.max",
                &self.max,
                "must be at least adaptive.min",
            ));
        }
        if self.max > MAX_LIMIT {
            return Err(err("adaptive.max", &self.max, "must be at most 4294967295"));
        }
        if !(self.backoff_ratio > 0.0 && self.backoff_ratio < 1.0) {
            return Err(err(
                "adaptive.backoff_ratio",
                &self.backoff_ratio,
                "must be between 0 and 1, exclusive",
            ));
        }
        if self.timeout.is_zero() {
            return Err(err("adaptive.timeout", &self.timeout, "must be positive"));
        }
        if initial < self.min || initial > self.max {
            return Err(err(
                "max_concurrent",
                &initial,
                "is the initial adaptive limit and must lie between adaptive.min and adaptive.max",
            ));
        }
        Ok(())
    }

    /// The limit after a call that took `latency` and `failed` or not, with `in_flight` calls
    /// running (itself included).
    pub(crate) fn next(
        &self,
        limit: usize,
        in_flight: usize,
        latency: Duration,
        failed: bool,
    ) -> usize {
        let next = if failed || latency > self.timeout {
            (limit as f64 * self.backoff_ratio) as usize
        } else if in_flight * 2 >= limit {
            limit.saturating_add(1)
        } else {
            limit
        };
        next.clamp(self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn drops_cut_and_busy_successes_grow() {
        let aimd = Aimd::new(2, 10);
        let ms = Duration::from_millis;
        assert_eq!(aimd.next(10, 10, ms(1), true), 9);
        assert_eq!(aimd.next(5, 3, ms(1), false), 6);
        assert_eq!(
            aimd.next(5, 1, ms(1), false),
            5,
            "an idle partition does not grow"
        );
        assert_eq!(
            aimd.next(5, 5, Duration::from_secs(6), false),
            4,
            "slow calls count as drops"
        );
        assert_eq!(aimd.next(10, 10, ms(1), false), 10, "capped at max");
        assert_eq!(aimd.next(2, 2, ms(1), true), 2, "floored at min");
    }

    #[test]
    fn the_rules_hold_exactly_at_their_edges() {
        let aimd = Aimd::new(2, 10).timeout(Duration::from_secs(5));
        let fast = Duration::from_millis(1);
        assert_eq!(
            aimd.next(6, 3, Duration::from_secs(5), false),
            7,
            "a call of exactly the timeout is not slow"
        );
        assert_eq!(
            aimd.next(6, 3, Duration::from_nanos(5_000_000_001), false),
            5,
            "a nanosecond over is"
        );
        assert_eq!(aimd.next(6, 3, fast, false), 7, "exactly half busy grows");
        assert_eq!(aimd.next(6, 4, fast, false), 7);
        assert_eq!(aimd.next(3, 1, fast, false), 3, "under half busy holds");
        assert_eq!(aimd.next(9, 4, fast, false), 9);
        assert_eq!(aimd.next(9, 1, fast, false), 9);
        assert_eq!(
            aimd.next(9, 1, fast, true),
            8,
            "a failure cuts by the ratio"
        );
        assert_eq!(aimd.next(9, 9, fast, false), 10, "grows up to max");
        assert_eq!(aimd.next(10, 10, fast, false), 10, "and not past it");
        assert_eq!(aimd.next(3, 3, fast, true), 2, "cuts down to min");
        assert_eq!(
            Aimd::new(2, 10).backoff_ratio(0.5).next(3, 3, fast, true),
            2,
            "and not past it"
        );
    }

    #[test]
    fn settings_at_their_bounds_are_valid() {
        let ok = |a: Aimd, initial| a.validate("", initial).is_ok();
        assert!(ok(Aimd::new(1, 1), 1), "min = max = initial");
        assert!(ok(Aimd::new(2, 5), 2), "initial at min");
        assert!(ok(Aimd::new(2, 5), 5), "initial at max");
        assert!(!ok(Aimd::new(2, 5), 1));
        assert!(!ok(Aimd::new(2, 5), 6));
        assert!(ok(Aimd::new(1, MAX_LIMIT), 1));
        assert!(!ok(Aimd::new(1, MAX_LIMIT + 1), 1));
        assert!(ok(Aimd::new(1, 5).backoff_ratio(f64::MIN_POSITIVE), 3));
        assert!(!ok(Aimd::new(1, 5).backoff_ratio(0.0), 3));
        assert!(ok(Aimd::new(1, 5).backoff_ratio(1.0 - f64::EPSILON), 3));
        assert!(ok(Aimd::new(1, 5).timeout(Duration::from_nanos(1)), 3));
        assert_eq!((Aimd::new(3, 7).min(), Aimd::new(3, 7).max()), (3, 7));
        assert_eq!(Aimd::default(), Aimd::new(20, 200));
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let err = |a: Aimd, initial| a.validate("", initial).unwrap_err().field().to_owned();
        assert_eq!(err(Aimd::new(0, 5), 3), "adaptive.min");
        assert_eq!(err(Aimd::new(5, 4), 5), "adaptive.max");
        assert_eq!(
            err(Aimd::new(1, 5).backoff_ratio(1.0), 3),
            "adaptive.backoff_ratio"
        );
        assert_eq!(
            err(Aimd::new(1, 5).timeout(Duration::ZERO), 3),
            "adaptive.timeout"
        );
        assert_eq!(err(Aimd::new(2, 5), 9), "max_concurrent");
        assert!(Aimd::default().validate("", 20).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_limit_stays_within_bounds(
            min in 1usize..50,
            span in 0usize..100,
            ratio in 0.05f64..0.99,
            steps in proptest::collection::vec((0usize..300, 0u64..10_000, any::<bool>()), 1..64),
        ) {
            let aimd = Aimd::new(min, min + span).backoff_ratio(ratio).timeout(Duration::from_millis(5_000));
            let mut limit = min;
            for (in_flight, latency, failed) in steps {
                limit = aimd.next(limit, in_flight, Duration::from_millis(latency), failed);
                prop_assert!(limit >= min && limit <= min + span);
            }
        }
    }
}
