//! The `Retry-After` a rejection carries: a permit frees up, on average, one service time from
//! now, and the header counts whole seconds, so at least one second.

use std::time::Duration;

/// The shortest `Retry-After`: the header counts whole seconds.
const MIN: Duration = Duration::from_secs(1);

/// When a refused caller should come back, given the partition's recent service time.
pub(crate) fn retry_after(service_time: Option<Duration>) -> Duration {
    service_time.unwrap_or_default().max(MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_service_time_and_at_least_a_second() {
        assert_eq!(retry_after(None), MIN);
        assert_eq!(retry_after(Some(Duration::from_millis(20))), MIN);
        assert_eq!(
            retry_after(Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
    }
}
