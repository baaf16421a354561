//! The sliding windows the failure and slow-call rates are measured over, lock-free.
//!
//! Both windows are written by many threads at once with atomics only. A count window is a
//! ring of one-byte samples with a running count of failures and slow calls; a time window is
//! a ring of buckets, each stamped with the time slice it counts, expiring whole.
//!
//! Reads are a snapshot, exact when writers are quiet and off by at most the number of calls
//! finishing at that instant otherwise: enough to decide a trip.

use crate::sync::{AtomicI64, AtomicU64, Ordering};

use crate::config::Window as WindowConfig;

/// One finished call, as the window sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Sample {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

/// Calls, failures and slow calls over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Calls recorded.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
    /// Of which were slow.
    pub slow: u64,
}

impl Counts {
    /// The failure rate in `[0, 1]`; 0 with no calls.
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.calls)
    }

    /// The slow-call rate in `[0, 1]`; 0 with no calls.
    pub fn slow_rate(&self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per breaker; the count window is padded on purpose, and boxing it would add a pointer chase to every call"
)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn new(config: WindowConfig) -> Window {
        match config {
            WindowConfig::Count { size } => Window::Count(CountWindow::new(size)),
            WindowConfig::Time { length, buckets } => {
                let width = (length.as_nanos() / u128::from(buckets)).max(1);
                Window::Time(TimeWindow::new(
                    buckets,
                    u64::try_from(width).unwrap_or(u64::MAX),
                ))
            }
        }
    }

    /// Records one call finished at `now_nanos` and says whether the rates should be checked.
    #[inline]
    pub(crate) fn record(&self, sample: Sample, now_nanos: u64, minimum_calls: u32) -> bool {
        match self {
            Window::Count(w) => w.record(sample, minimum_calls),
            Window::Time(w) => {
                w.record(sample, now_nanos);
                true
            }
        }
    }

    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        match self {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(now_nanos),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }
}

/// The last `size` calls.
pub(crate) struct CountWindow {
    size: u64,
    /// `2^64 / size` rounded up (wrapping to 0 for a size of 1): the multiplier that finds the
    /// ring slot without a division.
    magic: u64,
    /// Two bits per slot (failure, slow), 32 slots per word.
    bits: Box<[AtomicU64]>,
    /// Calls recorded since the last reset; the next slot is `seq % size`. Written by every
    /// call, so on a cache line of its own (with the counts, written on flips only).
    seq: Padded<AtomicU64>,
    /// Set bits, kept exactly: a bit's flip is counted by the writer whose RMW flipped it.
    /// Signed, as the count may trail its bit for an instant.
    failures: AtomicI64,
    slow: AtomicI64,
}

/// Keeps what it holds off the cache lines of its neighbours: two lines, as adjacent lines
/// are fetched in pairs.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

const FAILURE_BIT: u64 = 1;
const SLOW_BIT: u64 = 2;
/// The failure bits of every slot of a word.
const FAILURE_BITS: u64 = 0x5555_5555_5555_5555;
/// The slow bits of every slot of a word.
const SLOW_BITS: u64 = FAILURE_BITS << 1;

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        let size = u64::from(size.max(1));
        CountWindow {
            size,
            magic: (u64::MAX / size).wrapping_add(1),
            bits: (0..size.div_ceil(32)).map(|_| AtomicU64::new(0)).collect(),
            seq: Padded(AtomicU64::new(0)),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    /// One atomic add and one load when a success replaces a success, the steady state.
    #[inline]
    pub(crate) fn record(&self, sample: Sample, minimum_calls: u32) -> bool {
        // Relaxed: the RMW alone hands each writer its own slot; nothing else is published
        // through the sequence.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let slot = self.slot(seq);
        // `slot < size <= 32 * bits.len()`, so the index is in bounds.
        let word = &self.bits[(slot / 32) as usize];
        let shift = (slot % 32) * 2;
        let new = (u64::from(sample.failure) * FAILURE_BIT) | (u64::from(sample.slow) * SLOW_BIT);
        // Relaxed: only a hint to skip the RMWs when the slot already holds this sample; the
        // flips below decide by what their own RMW returns.
        let current = (word.load(Ordering::Relaxed) >> shift) & 3;
        if current != new {
            self.flip(word, shift, current ^ new, new, FAILURE_BIT, &self.failures);
            self.flip(word, shift, current ^ new, new, SLOW_BIT, &self.slow);
        }
        // A success never raises a rate, except by bringing the window to its minimum.
        sample.failure || sample.slow || seq + 1 == u64::from(minimum_calls)
    }

    /// `seq % size`, by multiplication while `seq` fits in 32 bits (Lemire's "faster remainder
    /// by direct computation", exact for 32-bit numerators and divisors).
    #[inline]
    fn slot(&self, seq: u64) -> u64 {
        if seq <= u64::from(u32::MAX) {
            let low = self.magic.wrapping_mul(seq);
            ((u128::from(low) * u128::from(self.size)) >> 64) as u64
        } else {
            seq % self.size
        }
    }

    #[inline]
    fn flip(&self, word: &AtomicU64, shift: u64, diff: u64, new: u64, bit: u64, count: &AtomicI64) {
        if diff & bit == 0 {
            return;
        }
        let mask = bit << shift;
        // Relaxed: a count is exact because each bit flip is paired with one count change by
        // the thread whose RMW flipped it; that needs each word's and each count's own
        // modification order only, which every architecture gives every atomic.
        if new & bit != 0 {
            if word.fetch_or(mask, Ordering::Relaxed) & mask == 0 {
                count.fetch_add(1, Ordering::Relaxed);
            }
        } else if word.fetch_and(!mask, Ordering::Relaxed) & mask != 0 {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        // Relaxed: a snapshot, clamped; a read off by the calls finishing at this instant is
        // enough to decide a trip.
        let calls = self.seq.load(Ordering::Relaxed).min(self.size);
        let clamp = |v: i64| (v.max(0) as u64).min(calls);
        Counts {
            calls,
            failures: clamp(self.failures.load(Ordering::Relaxed)),
            slow: clamp(self.slow.load(Ordering::Relaxed)),
        }
    }

    /// Clears the window. Racing writers are not lost track of: every bit is cleared by an
    /// RMW that says which bits it cleared, and their counts are taken back exactly, so a bit
    /// and its count change together whoever flips it (a plain store of zero could clear a
    /// bit whose writer then counts it, leaving the count off by one for good).
    pub(crate) fn reset(&self) {
        let (mut failures, mut slow) = (0, 0);
        for word in self.bits.iter() {
            // Relaxed: the counts are kept exact by pairing each bit flip with one count
            // change, which needs only each word's modification order, not ordering between
            // words or with the counts.
            let cleared = word.swap(0, Ordering::Relaxed);
            failures += i64::from((cleared & FAILURE_BITS).count_ones());
            slow += i64::from((cleared & SLOW_BITS).count_ones());
        }
        // Relaxed: as above, an RMW per count; readers clamp a count that trails its bits.
        self.failures.fetch_sub(failures, Ordering::Relaxed);
        self.slow.fetch_sub(slow, Ordering::Relaxed);
        // Relaxed: the sequence only picks the next slot; a writer that took a slot before
        // the reset writes a sample the ring overwrites in turn, counted like any other.
        self.seq.store(0, Ordering::Relaxed);
    }
}

/// Set in a bucket's stamp while its claimer zeroes its counters: readers skip the bucket,
/// writers wait for the new stamp.
const BUSY: u64 = 1 << 63;
/// The stamp of a bucket that counts nothing.
const EMPTY: u64 = BUSY - 1;

struct Bucket {
    /// The time slice (`now / width`) this bucket counts, or `EMPTY`, with `BUSY` set while
    /// it is being zeroed for a new slice.
    stamp: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

/// The calls of the last `buckets · width` nanoseconds.
///
/// A bucket moves to a new slice by a claim: the claimer marks its stamp `BUSY`, zeroes the
/// counters and only then publishes the new slice (a seqlock's write side). A writer adds to
/// a bucket only once it reads the slice it counts, so nothing is added before the zeroing
/// (and lost to it); a reader counts a bucket only if its stamp was the same slice before and
/// after reading the counters, so the old slice's counts are never taken for the new one's.
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    width: u64,
}

impl TimeWindow {
    pub(crate) fn new(buckets: u32, width: u64) -> Self {
        TimeWindow {
            buckets: (0..buckets.max(1))
                .map(|_| Bucket {
                    stamp: AtomicU64::new(EMPTY),
                    calls: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    slow: AtomicU64::new(0),
                })
                .collect(),
            width: width.max(1),
        }
    }

    #[inline]
    pub(crate) fn record(&self, sample: Sample, now_nanos: u64) {
        let slice = now_nanos / self.width;
        let n = self.buckets.len() as u64;
        // `slice % n < buckets.len()`.
        let bucket = &self.buckets[(slice % n) as usize];
        // Acquire: pairs with the claimer's publishing store, so its zeroing happens before
        // this writer's additions.
        let stamp = bucket.stamp.load(Ordering::Acquire);
        if stamp != slice {
            self.advance(bucket, slice);
        }
        // Relaxed: additions commute; the stamp's acquire above orders them after the zeroing,
        // and readers tolerate a snapshot off by the calls finishing at that instant.
        bucket.calls.fetch_add(1, Ordering::Relaxed);
        if sample.failure {
            bucket.failures.fetch_add(1, Ordering::Relaxed);
        }
        if sample.slow {
            bucket.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Brings `bucket` to `slice` (claiming and zeroing it when it counts an older one), or
    /// returns when it already counts a newer slice (this call finished a moment ago: it is
    /// counted with the newer calls).
    #[cold]
    #[inline(never)]
    fn advance(&self, bucket: &Bucket, slice: u64) {
        let mut turn = 0;
        loop {
            let stamp = bucket.stamp.load(Ordering::Acquire);
            if stamp & BUSY != 0 {
                // Another writer (or a reset) is zeroing it: wait for its few stores.
                crate::sync::spin(&mut turn);
                continue;
            }
            if stamp != EMPTY && stamp >= slice {
                return;
            }
            if bucket
                .stamp
                .compare_exchange(stamp, slice | BUSY, Ordering::Acquire, Ordering::Acquire)
                .is_ok()
            {
                Self::zero(bucket, slice);
                return;
            }
        }
    }

    /// The claimer's side: the stamp is `BUSY`, held by this thread alone.
    fn zero(bucket: &Bucket, stamp: u64) {
        // Release fence: a reader that sees any of the zeroes below also sees the `BUSY`
        // stamp (or a later one) when it reads the stamp again, and drops the bucket.
        crate::sync::fence(Ordering::Release);
        // Relaxed: ordered by the fence above and the release store below.
        bucket.calls.store(0, Ordering::Relaxed);
        bucket.failures.store(0, Ordering::Relaxed);
        bucket.slow.store(0, Ordering::Relaxed);
        // Release: writers that read this stamp add after the zeroes.
        bucket.stamp.store(stamp, Ordering::Release);
    }

    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        let slice = now_nanos / self.width;
        let n = self.buckets.len() as u64;
        let mut counts = Counts::default();
        for bucket in self.buckets.iter() {
            // Acquire: pairs with the claimer's publishing store, so the counters read below
            // are this slice's (zeroed, then added to), not an older one's.
            let stamp = bucket.stamp.load(Ordering::Acquire);
            if stamp & BUSY != 0 || stamp == EMPTY || stamp > slice || slice - stamp >= n {
                continue;
            }
            // Relaxed: validated by the stamp read again after the fence below.
            let calls = bucket.calls.load(Ordering::Relaxed);
            let failures = bucket.failures.load(Ordering::Relaxed);
            let slow = bucket.slow.load(Ordering::Relaxed);
            // Acquire fence: if a counter read above saw a claimer's zero, the stamp read
            // below sees its `BUSY` (or later) stamp, and the bucket is dropped.
            crate::sync::fence(Ordering::Acquire);
            // Relaxed: ordered by the fence above.
            if bucket.stamp.load(Ordering::Relaxed) != stamp {
                continue; // moved to a newer slice while being read
            }
            counts.calls += calls;
            counts.failures += failures;
            counts.slow += slow;
        }
        counts.failures = counts.failures.min(counts.calls);
        counts.slow = counts.slow.min(counts.calls);
        counts
    }

    /// Empties every bucket, through the same claim as a writer's so no racing writer's
    /// additions land on a half-zeroed bucket.
    pub(crate) fn reset(&self) {
        for bucket in self.buckets.iter() {
            let mut turn = 0;
            loop {
                let stamp = bucket.stamp.load(Ordering::Acquire);
                if stamp & BUSY != 0 {
                    crate::sync::spin(&mut turn);
                    continue;
                }
                if bucket
                    .stamp
                    .compare_exchange(stamp, EMPTY | BUSY, Ordering::Acquire, Ordering::Acquire)
                    .is_ok()
                {
                    Self::zero(bucket, EMPTY);
                    break;
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OK: Sample = Sample {
        failure: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };

    #[test]
    fn count_window_keeps_the_last_n_calls() {
        let w = CountWindow::new(4);
        for s in [FAIL, FAIL, OK, OK] {
            w.record(s, 1);
        }
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
        w.record(OK, 1);
        w.record(OK, 1);
        assert_eq!(w.counts().failures, 0);
        w.reset();
        assert_eq!(w.counts(), Counts::default());
    }

    #[test]
    fn count_window_reset_forgets_failures_and_slow_calls_in_every_slot() {
        let both = Sample {
            failure: true,
            slow: true,
        };
        // 64 slots: two words, so every bit of a word (the last slot's slow bit is bit 63).
        let w = CountWindow::new(64);
        for _ in 0..64 {
            w.record(both, 1);
        }
        assert_eq!(
            w.counts(),
            Counts {
                calls: 64,
                failures: 64,
                slow: 64
            }
        );
        w.reset();
        for _ in 0..4 {
            w.record(OK, 1);
        }
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failures: 0,
                slow: 0
            },
            "nothing from before the reset is left"
        );
    }

    #[test]
    fn count_window_asks_for_a_check_when_reaching_the_minimum() {
        let w = CountWindow::new(10);
        assert!(!w.record(OK, 3));
        assert!(!w.record(OK, 3));
        assert!(w.record(OK, 3));
        assert!(!w.record(OK, 3));
        assert!(w.record(FAIL, 3));
    }

    #[test]
    fn time_window_expires_whole_buckets() {
        let w = TimeWindow::new(3, 10);
        w.record(FAIL, 0);
        w.record(OK, 15);
        w.record(OK, 25);
        assert_eq!(w.counts(25).calls, 3);
        assert_eq!(w.counts(25).failures, 1);
        // Slice 3 begins at 30: the bucket of slice 0 has expired.
        assert_eq!(w.counts(30).calls, 2);
        assert_eq!(w.counts(30).failures, 0);
        w.record(FAIL, 31);
        assert_eq!(w.counts(31).failures, 1);
        assert_eq!(w.counts(31).calls, 3);
        assert_eq!(w.counts(100).calls, 0);
    }

    #[test]
    fn time_window_read_on_a_clock_behind_a_writer_skips_the_newer_bucket() {
        let w = TimeWindow::new(3, 10);
        w.record(FAIL, 5);
        w.record(OK, 25);
        // A reader that read the clock (slice 1) just before a writer finished (slice 2).
        assert_eq!(
            w.counts(15),
            Counts {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
    }

    #[test]
    fn slots_are_remainders() {
        for size in [1u32, 2, 3, 7, 31, 32, 33, 100, 1000, 65_537, 1 << 20] {
            let w = CountWindow::new(size);
            let size = u64::from(size);
            let edges = [0, 1, size - 1, size, size + 1, u64::from(u32::MAX) - size];
            for base in edges {
                for seq in base..base + 2 * size.min(1000) {
                    assert_eq!(w.slot(seq), seq % size, "seq {seq} size {size}");
                }
            }
            for seq in [
                u64::from(u32::MAX),
                1 << 32,
                (1 << 32) + 1,
                u64::MAX - 1,
                u64::MAX,
            ] {
                assert_eq!(w.slot(seq), seq % size, "seq {seq} size {size}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn slot_matches_remainder(size in 1u32..=(1 << 20), seq in any::<u64>()) {
            let w = CountWindow::new(size);
            prop_assert_eq!(w.slot(seq), seq % u64::from(size));
            let small = seq & u64::from(u32::MAX);
            prop_assert_eq!(w.slot(small), small % u64::from(size));
        }

        #[test]
        fn count_window_matches_a_deque(size in 1u32..80, samples in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..200)) {
            let w = CountWindow::new(size);
            let mut model = std::collections::VecDeque::new();
            for (failure, slow) in samples {
                w.record(Sample { failure, slow }, 1);
                model.push_back((failure, slow));
                if model.len() > size as usize {
                    model.pop_front();
                }
                let c = w.counts();
                prop_assert_eq!(c.calls, model.len() as u64);
                prop_assert_eq!(c.failures, model.iter().filter(|s| s.0).count() as u64);
                prop_assert_eq!(c.slow, model.iter().filter(|s| s.1).count() as u64);
            }
        }

        #[test]
        fn time_window_matches_a_list(buckets in 1u32..8, events in proptest::collection::vec((0u64..40, any::<bool>()), 0..60)) {
            let width = 10;
            let w = TimeWindow::new(buckets, width);
            let mut now = 0;
            let mut model: Vec<(u64, bool)> = Vec::new();
            for (step, failure) in events {
                now += step;
                w.record(Sample { failure, slow: false }, now);
                model.push((now / width, failure));
                let slice = now / width;
                let live: Vec<_> = model.iter().filter(|(s, _)| slice - s < u64::from(buckets)).collect();
                let c = w.counts(now);
                prop_assert_eq!(c.calls, live.len() as u64);
                prop_assert_eq!(c.failures, live.iter().filter(|(_, f)| *f).count() as u64);
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! Every interleaving of the window's racing writers, readers and resets. Run with
    //! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p tower-breaker --release --lib loom`.

    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    const OK: Sample = Sample {
        failure: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failure: true,
        slow: true,
    };

    /// The failures a count window holds, from its bits.
    fn failure_bits(w: &CountWindow) -> i64 {
        w.bits
            .iter()
            .map(|b| i64::from((b.load(Ordering::Relaxed) & 0x5555_5555_5555_5555).count_ones()))
            .sum()
    }

    #[test]
    fn loom_count_window_reset_racing_a_record_keeps_the_count_exact() {
        loom::model(|| {
            let w = Arc::new(CountWindow::new(2));
            w.record(OK, 1);
            let writer = {
                let w = w.clone();
                thread::spawn(move || {
                    w.record(FAIL, 1);
                })
            };
            w.reset();
            writer.join().unwrap();
            // Whatever the interleaving, the count matches the bits, so the next calls that
            // overwrite them bring it back to the truth.
            assert_eq!(w.failures.load(Ordering::Relaxed), failure_bits(&w));
            w.record(OK, 1);
            w.record(OK, 1);
            assert_eq!(w.counts().failures, 0, "no failure is left over for good");
        });
    }

    #[test]
    fn loom_count_window_racing_writers_on_one_slot_keep_the_count_exact() {
        loom::model(|| {
            let w = Arc::new(CountWindow::new(1));
            w.record(OK, 1);
            let writer = {
                let w = w.clone();
                thread::spawn(move || {
                    w.record(FAIL, 1);
                })
            };
            w.record(OK, 1);
            writer.join().unwrap();
            assert_eq!(w.failures.load(Ordering::Relaxed), failure_bits(&w));
        });
    }

    #[test]
    fn loom_count_window_two_writers_clearing_one_slot_count_the_clear_once() {
        loom::model(|| {
            let w = Arc::new(CountWindow::new(1));
            w.record(FAIL, 1);
            let writer = {
                let w = w.clone();
                thread::spawn(move || {
                    w.record(OK, 1);
                })
            };
            w.record(OK, 1);
            writer.join().unwrap();
            // Both may see the failure and clear it; only the one whose RMW cleared it counts.
            assert_eq!(w.failures.load(Ordering::Relaxed), failure_bits(&w));
            assert_eq!(w.slow.load(Ordering::Relaxed), 0);
            assert_eq!(w.counts().failures, 0);
        });
    }

    #[test]
    fn loom_time_window_never_counts_the_old_period_as_current() {
        loom::model(|| {
            // One bucket of 10 ns: slice 1 expires slice 0.
            let w = Arc::new(TimeWindow::new(1, 10));
            w.record(FAIL, 0);
            let reader = {
                let w = w.clone();
                thread::spawn(move || w.counts(10))
            };
            w.record(OK, 10);
            let seen = reader.join().unwrap();
            assert_eq!(
                seen.failures, 0,
                "slice 0's failure counted at slice 1: {seen:?}"
            );
        });
    }

    #[test]
    fn loom_time_window_loses_no_call_when_a_bucket_rolls_over() {
        loom::model(|| {
            let w = Arc::new(TimeWindow::new(1, 10));
            w.record(FAIL, 0);
            let writer = {
                let w = w.clone();
                thread::spawn(move || w.record(FAIL, 10))
            };
            w.record(OK, 10);
            writer.join().unwrap();
            let c = w.counts(10);
            assert_eq!((c.calls, c.failures, c.slow), (2, 1, 1));
        });
    }

    #[test]
    fn loom_time_window_reader_racing_a_reset_sees_the_bucket_whole_or_not_at_all() {
        loom::model(|| {
            let w = Arc::new(TimeWindow::new(1, 10));
            w.record(FAIL, 0);
            let reader = {
                let w = w.clone();
                thread::spawn(move || w.counts(0))
            };
            w.reset();
            let seen = reader.join().unwrap();
            let whole = Counts {
                calls: 1,
                failures: 1,
                slow: 1,
            };
            assert!(
                seen == whole || seen == Counts::default(),
                "a half-zeroed bucket was counted: {seen:?}"
            );
        });
    }

    #[test]
    fn loom_time_window_reset_racing_a_record_leaves_a_consistent_bucket() {
        loom::model(|| {
            let w = Arc::new(TimeWindow::new(1, 10));
            w.record(FAIL, 0);
            let writer = {
                let w = w.clone();
                thread::spawn(move || w.record(OK, 0))
            };
            w.reset();
            writer.join().unwrap();
            let c = w.counts(0);
            // The racing call may land before or after the reset, but never on top of the
            // failure the reset cleared.
            assert!(c.failures == 0 && c.calls <= 1, "{c:?}");
        });
    }
}
