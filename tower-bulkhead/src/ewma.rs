//! The recent service time of a partition: an exponentially weighted mean, the estimate that
//! deadline-aware shedding and `Retry-After` use.
//!
//! Fed by calls that reached the backend: successes, failures and ignored outcomes with their
//! full time, and calls cut off at their deadline with the time they ran, a lower bound of
//! their service time (so a backend that hangs raises the estimate instead of leaving it at the
//! last call that finished). Refusals of inner layers never reached the backend and are not fed.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Weight of a new sample: 1/5, as Netflix's Gradient2 smooths.
const WEIGHT: f64 = 0.2;

/// An exponentially weighted mean of durations, shared between threads.
#[derive(Debug, Default)]
pub(crate) struct ServiceTime {
    /// Nanoseconds; 0 until the first sample.
    nanos: AtomicU64,
}

impl ServiceTime {
    /// The mean, once a sample was recorded.
    pub(crate) fn get(&self) -> Option<Duration> {
        // Relaxed: the value is a standalone estimate that guards no other memory; a single
        // 64-bit atomic never tears on any architecture, and a slightly old estimate is as good.
        match self.nanos.load(Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Adds one sample; returns the new mean when it grew (the first sample always does).
    pub(crate) fn record(&self, sample: Duration) -> Option<Duration> {
        let sample = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX).max(1);
        // Relaxed (see `get`). Racing updates may lose a sample, which an estimate can afford.
        // A waiter that must see a grown mean does: the caller then makes a read-modify-write
        // of the permit counter (`Permits::wake_late`), and a waiter ordered after it by that
        // word or the queue's lock reads this store or a later one (write-read coherence).
        let old = self.nanos.load(Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old as f64 + (sample as f64 - old as f64) * WEIGHT) as u64
        }
        .max(1);
        self.nanos.store(new, Relaxed);
        (new > old).then(|| Duration::from_nanos(new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sample_is_the_mean_and_later_ones_weigh_a_fifth() {
        let ewma = ServiceTime::default();
        assert_eq!(ewma.get(), None);
        let first = Some(Duration::from_millis(100));
        assert_eq!(ewma.record(Duration::from_millis(100)), first, "it grew");
        assert_eq!(ewma.get(), first);
        let grown = Some(Duration::from_millis(120));
        assert_eq!(ewma.record(Duration::from_millis(200)), grown);
        assert_eq!(ewma.get(), grown);
        assert_eq!(ewma.record(Duration::from_millis(120)), None, "it stayed");
        assert_eq!(ewma.record(Duration::ZERO), None, "it shrank");
        assert!(
            ewma.get().is_some(),
            "a zero sample never reads as no sample"
        );
    }

    proptest::proptest! {
        #[test]
        fn the_mean_stays_between_the_smallest_and_largest_sample(
            samples in proptest::collection::vec(1u64..1_000_000, 1..50),
        ) {
            let ewma = ServiceTime::default();
            for &s in &samples {
                ewma.record(Duration::from_nanos(s));
            }
            let mean = ewma.get().unwrap().as_nanos() as u64;
            let (lo, hi) = (*samples.iter().min().unwrap(), *samples.iter().max().unwrap());
            proptest::prop_assert!(mean >= lo.saturating_sub(1) && mean <= hi);
        }
    }
}
