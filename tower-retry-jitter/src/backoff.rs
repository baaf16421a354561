//! Exponential backoff with jitter: the delay before each retry.
//!
//! The un-jittered delay before retry `n` (0 for the first retry) is
//! `d(n) = min(cap, base · multiplier^n)`. A [`Jitter`] mode then draws the delay actually slept
//! from it. The modes are those of Marc Brooker, ["Exponential Backoff And
//! Jitter"](https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/) (AWS
//! Architecture Blog, 2015), plus the multiplicative jitter of gRPC's client retry design
//! ([A6](https://github.com/grpc/proposal/blob/master/A6-client-retries.md)):
//!
//! | [`Jitter`] | delay before retry `n` | bounds |
//! |---|---|---|
//! | [`None`](Jitter::None) | `d(n)` | exactly `d(n)` |
//! | [`Full`](Jitter::Full) (default) | `U(0, d(n))` | `[0, d(n)]` |
//! | [`Equal`](Jitter::Equal) | `d(n)/2 + U(0, d(n)/2)` | `[d(n)/2, d(n)]` |
//! | [`Decorrelated`](Jitter::Decorrelated) | `min(cap, U(base, 3 · previous))`, `previous` starting at `base` | `[base, min(cap, 3 · previous)]` |
//! | [`Grpc`](Jitter::Grpc) | `min(cap, d(n) · U(0.8, 1.2))` | `[0.8 · d(n), min(1.2 · d(n), cap)]` |
//!
//! The post's simulation found un-jittered backoff the clear loser and Full jitter the mode
//! that does the least work, hence the default. Decorrelated jitter ignores the multiplier, as
//! in the post: its growth comes from the `3 · previous` bound.
//!
//! **The cap is a hard ceiling in every mode.** gRPC A6 applies its jitter after the cap
//! (`min(initial · multiplier^(n−1), max) · U(0.8, 1.2)`), so an A6 delay can reach
//! `1.2 · max`; here [`Jitter::Grpc`] clamps the jittered delay to the cap again, so no delay
//! ever exceeds `cap` (near the cap the draws above it are clamped to it).
//!
//! Delays are computed in whole nanoseconds, saturating: no attempt number, however large,
//! overflows or panics, and `d(n)` never decreases as `n` grows. A cap beyond `u64::MAX`
//! nanoseconds (about 584 years) is treated as that.
//!
//! The random numbers come from the caller (any [`rand::Rng`]), so tests can seed them; a
//! [`Seeds`] hands a service one cheap, independently seeded [`SmallRng`] per request that
//! retries, without a lock.
//!
//! ```
//! use std::time::Duration;
//! use rand::{SeedableRng, rngs::SmallRng};
//! use tower_retry_jitter::backoff::{Backoff, BackoffState, Jitter};
//!
//! let backoff = Backoff::builder()
//!     .base(Duration::from_millis(100))
//!     .multiplier(2.0)
//!     .cap(Duration::from_secs(1))
//!     .jitter(Jitter::Equal)
//!     .build()
//!     .expect("a valid backoff");
//! assert_eq!(backoff.base_delay(0), Duration::from_millis(100));
//! assert_eq!(backoff.base_delay(3), Duration::from_millis(800));
//! assert_eq!(backoff.base_delay(u32::MAX), Duration::from_secs(1));
//!
//! let mut rng = SmallRng::seed_from_u64(7);
//! let mut state = BackoffState::new();
//! for n in 0..5 {
//!     let d = backoff.base_delay(n);
//!     let slept = backoff.next_delay(&mut state, &mut rng);
//!     assert!(slept >= d / 2 && slept <= d);
//! }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How the delay slept is drawn from the un-jittered delay `d(n)`; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Jitter {
    /// `d(n)` exactly. Retries of many clients stay in lock-step: avoid outside tests.
    None,
    /// `U(0, d(n))`: the least total work in the AWS post's simulation. The default.
    #[default]
    Full,
    /// `d(n)/2 + U(0, d(n)/2)`: never less than half the exponential delay.
    Equal,
    /// `min(cap, U(base, 3 · previous))`, with `previous` the last delay slept (`base` before
    /// the first retry).
    Decorrelated,
    /// gRPC A6: `d(n) · U(0.8, 1.2)`, clamped to the cap.
    Grpc,
}

/// An exponential backoff: base, multiplier, cap and [`Jitter`]. Built (and validated) by
/// [`Backoff::builder`]; `Copy` and a few words, so a service keeps it inline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub(crate) base: u64,
    pub(crate) cap: u64,
    pub(crate) multiplier: f64,
    pub(crate) jitter: Jitter,
    /// The first retry index whose un-jittered delay is the cap (`u32::MAX` when it never is):
    /// `d(n)` for larger `n` needs no arithmetic.
    pub(crate) capped_from: u32,
}

/// The most multiplications [`Backoff::base_delay`] may take to reach the cap; a multiplier
/// so close to 1 that it needs more is refused by the builder.
pub(crate) const MAX_STEPS_TO_CAP: u32 = 10_000;

impl Backoff {
    /// A builder with the defaults: base 100 ms, multiplier 2, cap 10 s, [`Jitter::Full`].
    pub fn builder() -> crate::config::BackoffBuilder {
        crate::config::BackoffBuilder::default()
    }

    /// Builds a backoff from already validated nanosecond values; `None` when the cap can never
    /// be reached within [`MAX_STEPS_TO_CAP`] multiplications.
    pub(crate) fn from_parts(base: u64, cap: u64, multiplier: f64, jitter: Jitter) -> Option<Self> {
        debug_assert!(base <= cap && multiplier >= 1.0 && multiplier.is_finite());
        let capped_from = if base == cap {
            0
        } else if multiplier == 1.0 {
            u32::MAX
        } else {
            let (cap_f, mut x, mut n) = (cap as f64, base as f64, 0u32);
            loop {
                if x >= cap_f {
                    break n;
                }
                if n == MAX_STEPS_TO_CAP {
                    return None;
                }
                x *= multiplier;
                n += 1;
            }
        };
        Some(Backoff {
            base,
            cap,
            multiplier,
            jitter,
            capped_from,
        })
    }

    /// The delay before the first retry.
    pub fn base(&self) -> Duration {
        Duration::from_nanos(self.base)
    }

    /// The most any delay can be.
    pub fn cap(&self) -> Duration {
        Duration::from_nanos(self.cap)
    }

    /// The factor the un-jittered delay grows by at each retry.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The jitter mode.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The un-jittered delay before retry `retry` (0 for the first retry):
    /// `min(cap, base · multiplier^retry)`. Never decreases as `retry` grows; saturates at the
    /// cap for any `retry`, up to `u32::MAX`.
    pub fn base_delay(&self, retry: u32) -> Duration {
        Duration::from_nanos(self.base_nanos(retry))
    }

    /// [`Backoff::base_delay`] in nanoseconds. Computed by repeated multiplication, which is
    /// monotone by construction (a product `x · m` with `m ≥ 1` never rounds below `x`), and
    /// takes at most [`MAX_STEPS_TO_CAP`] steps (none with a multiplier of 1).
    pub(crate) fn base_nanos(&self, retry: u32) -> u64 {
        if self.multiplier == 1.0 {
            return self.base;
        }
        if retry >= self.capped_from {
            return self.cap;
        }
        let cap = self.cap as f64;
        let mut x = self.base as f64;
        for _ in 0..retry {
            x *= self.multiplier;
        }
        // Above 2^53 ns (104 days) `f64` rounds, possibly below `base`: clamp. `as`
        // saturates, and each step here is monotone, so the sequence still never decreases.
        (x.min(cap) as u64).clamp(self.base, self.cap)
    }

    /// The delay to sleep before retry `retry`, given the delay slept before the previous retry
    /// (`previous`, only read by [`Jitter::Decorrelated`]; `None` before the first retry).
    /// Stateless form of [`Backoff::next_delay`].
    pub fn delay<R: Rng + ?Sized>(
        &self,
        retry: u32,
        previous: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        let previous = previous.map_or(self.base, |p| saturating_nanos(p).max(self.base));
        Duration::from_nanos(self.delay_nanos(retry, previous, rng))
    }

    /// The next delay of a request's retry sequence, advancing `state`.
    pub fn next_delay<R: Rng + ?Sized>(&self, state: &mut BackoffState, rng: &mut R) -> Duration {
        let previous = if state.previous == 0 {
            self.base
        } else {
            state.previous
        };
        let d = self.delay_nanos(state.retry, previous, rng);
        state.retry = state.retry.saturating_add(1);
        // Decorrelated jitter never draws below `base > 0`, so 0 still means "no retry yet".
        state.previous = d.max(1);
        Duration::from_nanos(d)
    }

    fn delay_nanos<R: Rng + ?Sized>(&self, retry: u32, previous: u64, rng: &mut R) -> u64 {
        match self.jitter {
            Jitter::None => self.base_nanos(retry),
            Jitter::Full => rng.random_range(0..=self.base_nanos(retry)),
            Jitter::Equal => {
                let d = self.base_nanos(retry);
                // `[d - floor(d/2), d]`: at least `d/2`, at most `d`.
                (d - d / 2) + rng.random_range(0..=d / 2)
            }
            Jitter::Decorrelated => {
                let high = previous.max(self.base).saturating_mul(3);
                rng.random_range(self.base..=high).min(self.cap)
            }
            Jitter::Grpc => {
                let d = u128::from(self.base_nanos(retry));
                // `[ceil(0.8 d), floor(1.2 d)]`, never empty for an integer `d`.
                let low = (d * 4).div_ceil(5);
                let high = d * 6 / 5;
                let drawn = rng.random_range(low..=high);
                u64::try_from(drawn).unwrap_or(u64::MAX).min(self.cap)
            }
        }
    }
}

/// Where a request is in its retry sequence: how many delays were drawn and the last one.
/// `Copy` and two words, kept in a request's future; no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackoffState {
    retry: u32,
    /// The last delay drawn, in nanoseconds (at least 1), or 0 before the first.
    previous: u64,
}

impl BackoffState {
    /// The state before the first retry.
    pub const fn new() -> Self {
        BackoffState {
            retry: 0,
            previous: 0,
        }
    }

    /// Counts a delay the backoff did not draw (a server's pushback) as the next one.
    pub(crate) fn record(&mut self, delay: Duration) {
        self.retry = self.retry.saturating_add(1);
        self.previous = saturating_nanos(delay).max(1);
    }

    /// How many delays were drawn: the index of the next retry.
    pub fn retries(&self) -> u32 {
        self.retry
    }

    /// The last delay drawn, if any.
    pub fn previous(&self) -> Option<Duration> {
        (self.previous != 0).then(|| Duration::from_nanos(self.previous))
    }
}

/// A lock-free source of independently seeded random number generators, one per request that
/// retries, shared by every clone of a service.
///
/// Each [`Seeds::rng`] advances one atomic counter and mixes it (SplitMix64) into the seed of a
/// fresh [`SmallRng`], so a request that never retries costs nothing, and two requests never
/// share a stream. Seeded with [`Seeds::from_seed`], the sequence of generators is
/// deterministic (for tests; across threads, which request gets which generator depends on
/// their order).
#[derive(Debug)]
pub struct Seeds {
    next: AtomicU64,
}

impl Seeds {
    /// Generators seeded from `seed`, deterministically.
    pub const fn from_seed(seed: u64) -> Self {
        Seeds {
            next: AtomicU64::new(seed),
        }
    }

    /// Generators seeded from the operating system's randomness.
    pub fn from_os() -> Self {
        Seeds::from_seed(rand::rngs::StdRng::from_os_rng().random())
    }

    /// A fresh generator.
    pub fn rng(&self) -> SmallRng {
        // Relaxed: only the uniqueness of each returned counter value matters, which the RMW
        // gives on every architecture; no other memory is published through this counter.
        let n = self.next.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed);
        SmallRng::seed_from_u64(splitmix64(n.wrapping_add(GOLDEN_GAMMA)))
    }
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finaliser (Steele, Lea, Flood, "Fast splittable pseudorandom number
/// generators", 2014).
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::Rng;
    use rand::rngs::StdRng;

    fn backoff(base: u64, cap: u64, multiplier: f64, jitter: Jitter) -> Backoff {
        Backoff::from_parts(base, cap, multiplier, jitter).expect("reaches the cap")
    }

    #[test]
    fn no_jitter_follows_base_times_multiplier_to_the_power_until_the_cap() {
        let b = backoff(5, 2_000, 2.0, Jitter::None);
        let seq: Vec<u64> = (0..11).map(|n| b.base_nanos(n)).collect();
        assert_eq!(seq, [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2000, 2000]);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut state = BackoffState::new();
        for expected in seq {
            assert_eq!(
                b.next_delay(&mut state, &mut rng),
                Duration::from_nanos(expected)
            );
        }
        assert_eq!(state.retries(), 11);
        assert_eq!(b.base_delay(u32::MAX), Duration::from_nanos(2_000));
    }

    #[test]
    fn a_backoff_reports_the_settings_it_was_built_with() {
        let b = Backoff::builder()
            .base(Duration::from_millis(20))
            .multiplier(3.0)
            .cap(Duration::from_secs(2))
            .jitter(Jitter::Equal)
            .build()
            .expect("valid");
        assert_eq!(b.base(), Duration::from_millis(20));
        assert_eq!(b.multiplier(), 3.0);
        assert_eq!(b.cap(), Duration::from_secs(2));
        assert_eq!(b.jitter(), Jitter::Equal, "not the default, Full");
    }

    #[test]
    fn a_multiplier_of_one_is_a_constant_delay() {
        let b = backoff(7, 100, 1.0, Jitter::None);
        assert_eq!(b.capped_from, u32::MAX);
        for n in [0, 1, 1000, u32::MAX - 1, u32::MAX] {
            assert_eq!(b.base_nanos(n), 7);
        }
    }

    #[test]
    fn a_fractional_multiplier_grows_by_its_factor() {
        let b = backoff(1_000, 1_000_000, 1.5, Jitter::None);
        assert_eq!(b.base_nanos(1), 1_500);
        assert_eq!(b.base_nanos(2), 2_250);
    }

    #[test]
    fn a_multiplier_too_close_to_one_is_refused() {
        assert!(Backoff::from_parts(1, u64::MAX, 1.000_000_1, Jitter::Full).is_none());
        assert!(Backoff::from_parts(1, u64::MAX, 1.01, Jitter::Full).is_some());
    }

    #[test]
    fn decorrelated_starts_from_base_and_grows_from_the_previous_delay() {
        let b = backoff(10, 1_000_000, 2.0, Jitter::Decorrelated);
        let mut rng = StdRng::seed_from_u64(3);
        let mut state = BackoffState::new();
        let first = b.next_delay(&mut state, &mut rng).as_nanos() as u64;
        assert!((10..=30).contains(&first), "{first}");
        assert_eq!(state.previous(), Some(Duration::from_nanos(first)));
        let second = b.next_delay(&mut state, &mut rng).as_nanos() as u64;
        assert!((10..=3 * first).contains(&second), "{second}");
    }

    #[test]
    fn grpc_jitter_spans_eighty_to_one_hundred_twenty_percent() {
        let b = backoff(1_000, 1_000_000, 2.0, Jitter::Grpc);
        let mut rng = StdRng::seed_from_u64(9);
        let draws: Vec<u64> = (0..2_000)
            .map(|_| b.delay(0, None, &mut rng).as_nanos() as u64)
            .collect();
        assert!(draws.iter().all(|d| (800..=1_200).contains(d)));
        // Both tails are reached: the factor is not stuck at one end.
        assert!(draws.iter().any(|d| *d < 850));
        assert!(draws.iter().any(|d| *d > 1_150));
    }

    #[test]
    fn full_jitter_covers_the_whole_range() {
        let b = backoff(1_000, 1_000_000, 2.0, Jitter::Full);
        let mut rng = StdRng::seed_from_u64(5);
        let draws: Vec<u64> = (0..2_000)
            .map(|_| b.delay(0, None, &mut rng).as_nanos() as u64)
            .collect();
        assert!(draws.iter().all(|d| *d <= 1_000));
        assert!(draws.iter().any(|d| *d < 50));
        assert!(draws.iter().any(|d| *d > 950));
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let b = backoff(1_000, 1_000_000, 2.0, Jitter::Full);
        let run = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut state = BackoffState::new();
            (0..8)
                .map(|_| b.next_delay(&mut state, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn generators_are_seeded_by_the_published_splitmix64_sequence() {
        // SplitMix64 seeded with 0 (Vigna's reference `splitmix64.c`): its first outputs.
        let reference = [
            0xe220_a839_7b1d_cdaf,
            0x6e78_9e6a_a1b9_65f4,
            0x06c4_5d18_8009_454f,
        ];
        let mixed = [1, 2, 3].map(|n: u64| splitmix64(GOLDEN_GAMMA.wrapping_mul(n)));
        assert_eq!(mixed, reference);
    }

    #[test]
    fn seeds_are_deterministic_and_distinct() {
        let a = Seeds::from_seed(1);
        let b = Seeds::from_seed(1);
        let mut first = a.rng();
        let mut again = b.rng();
        let x: u64 = first.random();
        assert_eq!(x, again.random::<u64>());
        let mut second = a.rng();
        assert_ne!(x, second.random::<u64>());
        let mut os = Seeds::from_os().rng();
        let _: u64 = os.random();
    }

    /// A generator that always returns the same bits: draws at the ends of every range.
    struct Constant(u64);

    impl rand::RngCore for Constant {
        fn next_u32(&mut self) -> u32 {
            self.0 as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(self.0 as u8);
        }
    }

    #[test]
    fn each_mode_reaches_the_ends_of_its_range() {
        // d(0) = 1001 ns, odd, so the halves and fifths round.
        let ends = |jitter, previous| {
            let b = backoff(1_001, 1_000_000, 2.0, jitter);
            let low = b.delay(0, previous, &mut Constant(0)).as_nanos();
            let high = b.delay(0, previous, &mut Constant(u64::MAX)).as_nanos();
            (low, high)
        };
        assert_eq!(ends(Jitter::None, None), (1_001, 1_001));
        assert_eq!(ends(Jitter::Full, None), (0, 1_001));
        assert_eq!(ends(Jitter::Equal, None), (501, 1_001));
        assert_eq!(ends(Jitter::Grpc, None), (801, 1_201));
        assert_eq!(ends(Jitter::Decorrelated, None), (1_001, 3_003));
        let previous = Some(Duration::from_nanos(400_000));
        assert_eq!(ends(Jitter::Decorrelated, previous), (1_001, 1_000_000));
    }

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
            Just(Jitter::Grpc),
        ]
    }

    /// Base, cap and multiplier of a backoff that the builder accepts, over the whole range.
    fn any_backoff() -> impl Strategy<Value = (u64, u64, f64)> {
        (1u64..=u64::MAX, any::<u64>(), 1.01f64..100.0, any::<bool>()).prop_map(
            |(base, extra, multiplier, one)| {
                let cap = base.saturating_add(extra % (base.saturating_mul(1 << 20)).max(1));
                (base, cap, if one { 1.0 } else { multiplier })
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn base_delays_never_decrease_and_never_pass_the_cap(
            (base, cap, multiplier) in any_backoff(),
            n in any::<u32>(),
        ) {
            let b = backoff(base, cap, multiplier, Jitter::None);
            let mut last = 0;
            for retry in 0..64 {
                let d = b.base_nanos(retry);
                prop_assert!(d >= last, "d({retry}) = {d} < {last}");
                prop_assert!(d >= base && d <= cap);
                last = d;
            }
            let (x, y) = (b.base_nanos(n), b.base_nanos(n.saturating_add(1)));
            prop_assert!(x <= y && y <= cap && x >= base);
            prop_assert_eq!(b.base_nanos(u32::MAX), if multiplier == 1.0 && base < cap { base } else { cap });
        }

        #[test]
        fn base_delay_is_base_times_multiplier_to_the_power(
            base in 1u64..1_000_000,
            multiplier in 1.01f64..4.0,
            n in 0u32..20,
        ) {
            let b = backoff(base, u64::MAX / 2, multiplier, Jitter::None);
            let exact = base as f64 * multiplier.powi(n as i32);
            let got = b.base_nanos(n) as f64;
            prop_assert!((got - exact).abs() <= exact * 1e-9 + 1.0, "{got} vs {exact}");
        }

        #[test]
        fn every_jittered_delay_stays_in_its_bounds(
            (base, cap, multiplier) in any_backoff(),
            jitter in any_jitter(),
            seed in any::<u64>(),
            start in prop_oneof![0u32..4, any::<u32>()],
        ) {
            let b = backoff(base, cap, multiplier, jitter);
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut previous: Option<Duration> = None;
            for retry in start..start.saturating_add(24) {
                let d = b.base_nanos(retry);
                let got = b.delay(retry, previous, &mut rng);
                let g = u128::from(saturating_nanos(got));
                let (d128, cap128) = (u128::from(d), u128::from(cap));
                prop_assert!(g <= cap128, "over the cap: {g} > {cap}");
                match jitter {
                    Jitter::None => prop_assert_eq!(g, d128),
                    Jitter::Full => prop_assert!(g <= d128),
                    Jitter::Equal => prop_assert!(2 * g >= d128 && g <= d128),
                    Jitter::Decorrelated => {
                        let prev = previous.map_or(u128::from(base), |p| p.as_nanos());
                        prop_assert!(g >= u128::from(base), "{g} < base {base}");
                        prop_assert!(g <= cap128.min(3 * prev), "{g} > min(cap, 3 * {prev})");
                    }
                    Jitter::Grpc => {
                        prop_assert!(5 * g >= 4 * d128, "{g} < 0.8 * {d}");
                        prop_assert!(5 * g <= 6 * d128, "{g} > 1.2 * {d}");
                    }
                }
                previous = Some(got);
            }
        }

        #[test]
        fn the_stateful_sequence_matches_the_stateless_one(
            (base, cap, multiplier) in any_backoff(),
            jitter in any_jitter(),
            seed in any::<u64>(),
        ) {
            let b = backoff(base, cap, multiplier, jitter);
            let (mut r1, mut r2) = (SmallRng::seed_from_u64(seed), SmallRng::seed_from_u64(seed));
            let mut state = BackoffState::new();
            let mut previous = None;
            for retry in 0..16 {
                let stateful = b.next_delay(&mut state, &mut r1);
                let stateless = b.delay(retry, previous, &mut r2);
                // The state keeps a zero draw as 1 ns, which only Full jitter can draw and
                // only Decorrelated reads.
                prop_assert_eq!(stateful, stateless);
                previous = Some(stateless);
            }
        }

        #[test]
        fn huge_durations_and_attempts_never_panic(
            base in any::<u64>(),
            multiplier in 1.0f64..1e6,
            jitter in any_jitter(),
            retry in any::<u32>(),
            previous in any::<u64>(),
            seed in any::<u64>(),
        ) {
            let base = base.max(1);
            if let Some(b) = Backoff::from_parts(base, u64::MAX, multiplier, jitter) {
                let mut rng = SmallRng::seed_from_u64(seed);
                let d = b.delay(retry, Some(Duration::from_nanos(previous)), &mut rng);
                let least = u64::from(jitter != Jitter::Full);
                prop_assert!(saturating_nanos(d) >= least);
                let mut state = BackoffState { retry, previous };
                b.next_delay(&mut state, &mut rng);
                prop_assert_eq!(state.retries(), retry.saturating_add(1));
            }
        }
    }
}
