//! Retry budgets: how many retries a client may send, shared by every clone of a service.
//!
//! Retrying every failure multiplies the load on a backend that is already failing. A budget
//! bounds the retries of all requests together. Three kinds, built by
//! [`RetryBudget::builder`]:
//!
//! - **Ratio** (Finagle's `RetryBudget`, the idea behind tower's `TpsBudget`): every request
//!   deposits `ratio` of a retry, every retry withdraws one, and a retry is allowed while the
//!   deposits of the last `window`, plus a reserve of `min_per_second × window` retries, cover
//!   it. Deposits and withdrawals expire with the window (a ring of time buckets). The ratio is
//!   kept in thousandths and all accounting is in integers, so a ratio of 0.1 over 10 requests
//!   allows exactly one retry (tower's `TpsBudget` truncated fractional percentages, tower
//!   issue #857). At the moment of every retry, the retries of the window ending then are at
//!   most `ratio × requests + min_per_second × window` of that window; since a retry stays in
//!   the window as long as a deposit does, it can outlive the deposits that paid for it, so
//!   over an arbitrary window the requests that pay are those of that window and the one
//!   before it (the property tests check both).
//! - **gRPC throttling** ([A6](https://github.com/grpc/proposal/blob/master/A6-client-retries.md#throttling-retry-attempts-and-hedged-rpcs)):
//!   `max_tokens` tokens to start with; each failed attempt costs one token, each success
//!   gives `token_ratio` back (never above `max_tokens`); retries are allowed while more than
//!   `max_tokens / 2` tokens are left. Kept in thousandths, as A6 asks.
//! - **Quota** (the AWS SDKs' retry quota, 500 tokens): each retry withdraws its cost, each
//!   success gives a credit back; a retry is allowed while the quota covers its cost. (The
//!   SDKs give a retry's whole cost back when that retry succeeds; here every success gives
//!   the same credit.)
//!
//! What a retry costs can depend on why the attempt failed: a [`RetryCost`] maps the
//! [`FailureClass`] to a whole number of units. [`RetryCost::AWS_2026`] is the AWS SDKs' 2026
//! retry behaviour (14 tokens after a transient error, 5 after throttling). For the ratio
//! budget the cost is in retries, for the quota in tokens withdrawn per retry, and for gRPC
//! throttling in tokens charged per failure.
//!
//! Time is passed in as a [`tokio::time::Instant`] so tests run on tokio's paused clock.
//!
//! # Cost on the per-call path
//!
//! A `RetryBudget` is an `Arc`; clones share it. A request that does not retry calls
//! [`record_request`](RetryBudget::record_request) and
//! [`record_success`](RetryBudget::record_success): one atomic add (ratio), or one atomic load
//! while the bucket is full (gRPC throttling, quota). No lock, no allocation, ever. The ratio
//! budget finds the time slice of `now` in a per-thread cache of the current slice's bounds
//! (two comparisons of instants); the `Instant` arithmetic that maps an instant to its slice
//! runs once per slice (`window / buckets`) per thread, and on a miss (a budget whose cache
//! slot another budget took, an instant outside the cached slice). The cache holds nothing
//! but a function of the budget's epoch and slice width, so every answer is exact.
//!
//! # Under concurrency
//!
//! A ratio budget's withdrawal takes first and checks after, in one sequentially consistent
//! order: of two retries racing for the last one, the later sees both takes, so they never
//! both go (at worst both are refused, an instant before a deposit would have covered one). A
//! bucket that rolls over to a new time slice is reset before the slice is published, and a
//! caller at that instant waits for those two stores, so no deposit or withdrawal is lost.
//! A caller whose clock lags another's by a slice counts in the newer slice. Token budgets
//! check and take in one atomic read-modify-write.
//!
//! ```
//! use std::time::Duration;
//! use tower_red::classify::FailureClass;
//! use tower_retry_jitter::budget::RetryBudget;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let budget = RetryBudget::builder()
//!     .ratio(0.1)
//!     .min_per_second(0)
//!     .window(Duration::from_secs(10))
//!     .build()
//!     .expect("a valid budget");
//! let now = tokio::time::Instant::now();
//! for _ in 0..10 {
//!     budget.record_request(now);
//! }
//! assert!(budget.try_retry(FailureClass::Error, now)); // 10 × 0.1 = exactly one retry
//! assert!(!budget.try_retry(FailureClass::Error, now));
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower_red::GrpcCode;
use tower_red::classify::FailureClass;

use crate::sync::{AtomicI64, AtomicU64, Ordering, spin};

/// One whole retry or token, in the thousandths the budgets count in.
pub(crate) const MILLI: i64 = 1000;

/// What a retry costs, by the class of the failure that prompted it, in whole units of its
/// budget (retries for a ratio budget, tokens for the others).
#[derive(Clone, Copy)]
pub enum RetryCost {
    /// The same cost for every failure.
    Flat(u32),
    /// A cost computed from the failure class. A plain function, so a cost is `Copy` and
    /// computing it allocates nothing.
    ByClass(fn(FailureClass) -> u32),
}

impl RetryCost {
    /// The AWS SDKs' 2026 retry behaviour: 5 tokens after throttling, 14 after any other
    /// (transient) failure. See [`aws_2026`].
    pub const AWS_2026: RetryCost = RetryCost::ByClass(aws_2026);

    /// The cost of a retry after a failure of this class.
    #[inline]
    pub fn of(&self, class: FailureClass) -> u32 {
        match self {
            RetryCost::Flat(cost) => *cost,
            RetryCost::ByClass(f) => f(class),
        }
    }
}

impl Default for RetryCost {
    /// One unit for every failure.
    fn default() -> Self {
        RetryCost::Flat(1)
    }
}

impl fmt::Debug for RetryCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryCost::Flat(cost) => f.debug_tuple("Flat").field(cost).finish(),
            RetryCost::ByClass(_) => f.write_str("ByClass(..)"),
        }
    }
}

/// The AWS SDKs' 2026 retry costs (aws-smithy-runtime 1.14, `token_bucket.rs`): 5 tokens for a
/// retry after throttling (HTTP 429, gRPC `RESOURCE_EXHAUSTED`, or a custom class named
/// `"throttling"`), 14 after any other failure. Timeouts have no special cost any more.
pub fn aws_2026(class: FailureClass) -> u32 {
    if is_throttling(class) { 5 } else { 14 }
}

/// Whether a failure says the server is throttling this client.
pub fn is_throttling(class: FailureClass) -> bool {
    match class {
        FailureClass::HttpStatus(status) => status == http::StatusCode::TOO_MANY_REQUESTS,
        FailureClass::Grpc(code) => code == GrpcCode::ResourceExhausted,
        FailureClass::Other(name) => name == "throttling",
        _ => false,
    }
}

/// Which kind of budget a [`RetryBudget`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BudgetKind {
    /// A ratio of retries to requests over a sliding window, with a floor (Finagle).
    Ratio,
    /// gRPC A6 retry throttling.
    GrpcThrottling,
    /// A token quota withdrawn by retries and refilled by successes (AWS SDKs).
    Quota,
}

/// A retry budget shared by every clone; see the [module docs](self).
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    kind: Kind,
    cost: RetryCost,
    epoch: Instant,
    /// Names this budget in the per-thread slice cache ([`SLICES`]); unique per process.
    id: u64,
}

/// Where the ids of budgets come from. A plain std atomic even under loom: an id is handed out
/// once per budget and only its uniqueness matters.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One ratio budget's current time slice as last computed on a thread: every instant in
/// `[from, until)` is in slice `slice` of budget `id`.
#[derive(Clone, Copy)]
struct CachedSlice {
    id: u64,
    from: Instant,
    until: Instant,
    slice: u64,
}

/// Slots of the per-thread slice cache, by budget id. A few, so that several budgets used on
/// one thread rarely evict each other; a miss only costs the exact computation.
const SLOTS: usize = 4;

thread_local! {
    /// Instant arithmetic (a `Timespec` subtraction, then a conversion to nanoseconds) costs
    /// more than the rest of a deposit: each thread remembers the bounds of a budget's current
    /// slice and compares instants against them, redoing the arithmetic once per slice
    /// (`window / buckets`). The cache is a pure function of the budget's epoch and slice
    /// width, so it is exact whatever the instants asked about.
    static SLICES: [std::cell::Cell<Option<CachedSlice>>; SLOTS] =
        const { [const { std::cell::Cell::new(None) }; SLOTS] };
}

enum Kind {
    Ratio(RatioWindow),
    Throttle(Tokens),
    Quota(Tokens),
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("kind", &self.kind())
            .field("cost", &self.inner.cost)
            .finish_non_exhaustive()
    }
}

impl RetryBudget {
    /// A builder; see [`BudgetBuilder`](crate::config::BudgetBuilder) for the defaults.
    pub fn builder() -> crate::config::BudgetBuilder {
        crate::config::BudgetBuilder::default()
    }

    pub(crate) fn ratio(
        deposit: i64,
        reserve: i64,
        window_nanos: u64,
        buckets: u32,
        cost: RetryCost,
        epoch: Instant,
    ) -> Self {
        Self::from_kind(
            Kind::Ratio(RatioWindow::new(deposit, reserve, window_nanos, buckets)),
            cost,
            epoch,
        )
    }

    pub(crate) fn throttle(max: i64, credit: i64, cost: RetryCost) -> Self {
        Self::from_kind(
            Kind::Throttle(Tokens::new(max, credit)),
            cost,
            Instant::now(),
        )
    }

    pub(crate) fn quota(max: i64, credit: i64, cost: RetryCost) -> Self {
        Self::from_kind(Kind::Quota(Tokens::new(max, credit)), cost, Instant::now())
    }

    fn from_kind(kind: Kind, cost: RetryCost, epoch: Instant) -> Self {
        // Relaxed: only the uniqueness of each id matters, which the RMW gives on every
        // architecture; nothing is published through the counter.
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RetryBudget {
            inner: Arc::new(Inner {
                kind,
                cost,
                epoch,
                id,
            }),
        }
    }

    /// Which kind of budget this is.
    pub fn kind(&self) -> BudgetKind {
        match self.inner.kind {
            Kind::Ratio(_) => BudgetKind::Ratio,
            Kind::Throttle(_) => BudgetKind::GrpcThrottling,
            Kind::Quota(_) => BudgetKind::Quota,
        }
    }

    /// What a retry costs.
    pub fn cost(&self) -> RetryCost {
        self.inner.cost
    }

    /// A new request (its first attempt, not a retry) started at `now`: a ratio budget
    /// deposits its share of a retry. The others do nothing.
    #[inline]
    pub fn record_request(&self, now: Instant) {
        if let Kind::Ratio(w) = &self.inner.kind {
            w.deposit_in(self.slice(w, now));
        }
    }

    /// An attempt succeeded: a token budget gets its credit back (up to its maximum).
    #[inline]
    pub fn record_success(&self) {
        match &self.inner.kind {
            Kind::Ratio(_) => {}
            Kind::Throttle(t) | Kind::Quota(t) => t.credit(),
        }
    }

    /// An attempt failed with this class: gRPC throttling charges the class's cost (one token
    /// by default). The others do nothing (they charge when a retry is taken). A6 charges the
    /// failures whose status is retryable or that carry a pushback: report those.
    #[inline]
    pub fn record_failure(&self, class: FailureClass) {
        if let Kind::Throttle(t) = &self.inner.kind {
            t.charge(i64::from(self.inner.cost.of(class)) * MILLI);
        }
    }

    /// Asks to retry an attempt that failed with `class`, at `now`; `true` when the budget
    /// allows it, and then the retry has been paid for.
    #[must_use = "a retry the budget refused must not be sent"]
    #[inline]
    pub fn try_retry(&self, class: FailureClass, now: Instant) -> bool {
        match &self.inner.kind {
            Kind::Ratio(w) => w.withdraw_in(
                i64::from(self.inner.cost.of(class)) * MILLI,
                self.slice(w, now),
            ),
            Kind::Throttle(t) => t.above_half(),
            Kind::Quota(t) => t.withdraw(i64::from(self.inner.cost.of(class)) * MILLI),
        }
    }

    /// Gives back a retry that [`try_retry`](Self::try_retry)`(class, paid_at)` paid for and
    /// that was not sent after all (its caller left during the backoff, the request could not
    /// be copied again, the service failed to become ready): the budget pays only for retries
    /// that go. A ratio budget gives the withdrawal back to the time slice it was taken from
    /// while a bucket still counts that slice (once the slice has expired, so has the
    /// withdrawal); a quota gets the tokens back, up to its maximum; gRPC throttling takes
    /// nothing for a retry, so it gives nothing back.
    #[inline]
    pub fn refund(&self, class: FailureClass, paid_at: Instant) {
        match &self.inner.kind {
            Kind::Ratio(w) => w.refund_in(
                i64::from(self.inner.cost.of(class)) * MILLI,
                self.slice(w, paid_at),
            ),
            Kind::Throttle(_) => {}
            Kind::Quota(t) => t.refund(i64::from(self.inner.cost.of(class)) * MILLI),
        }
    }

    /// What is left at `now`: retries for a ratio budget (the reserve included), tokens for
    /// the others. For the balance gauge
    /// ([`RETRY_BUDGET_BALANCE`](tower_red::names::RETRY_BUDGET_BALANCE)).
    pub fn balance(&self, now: Instant) -> f64 {
        self.balance_milli(now) as f64 / MILLI as f64
    }

    pub(crate) fn balance_milli(&self, now: Instant) -> i64 {
        match &self.inner.kind {
            Kind::Ratio(w) => w.balance(self.slice(w, now)),
            Kind::Throttle(t) | Kind::Quota(t) => t.tokens(),
        }
    }

    #[inline]
    fn nanos(&self, now: Instant) -> u64 {
        crate::backoff::saturating_nanos(now.saturating_duration_since(self.inner.epoch))
    }

    /// The slice of `w` that `now` falls in: from this thread's cache when `now` is within the
    /// slice last computed here (two comparisons of instants), else computed and cached.
    #[inline]
    fn slice(&self, w: &RatioWindow, now: Instant) -> u64 {
        let id = self.inner.id;
        let hit = SLICES.with(|slots| {
            let cached = slots[id as usize % SLOTS].get()?;
            (cached.id == id && cached.from <= now && now < cached.until).then_some(cached.slice)
        });
        match hit {
            Some(slice) => {
                debug_assert_eq!(slice, w.exact_slice(self.nanos(now)));
                slice
            }
            None => self.slice_slow(w, now),
        }
    }

    #[cold]
    #[inline(never)]
    fn slice_slow(&self, w: &RatioWindow, now: Instant) -> u64 {
        let slice = w.slice(self.nanos(now));
        // The bounds of the slice, when they are instants and the slice is not the clamped
        // last one; else nothing is cached and every call computes.
        let bounds = (slice < u64::MAX - 2)
            .then(|| {
                let from = slice.checked_mul(w.width)?;
                let until = from.checked_add(w.width)?;
                Some((
                    self.inner.epoch.checked_add(Duration::from_nanos(from))?,
                    self.inner.epoch.checked_add(Duration::from_nanos(until))?,
                ))
            })
            .flatten();
        if let Some((from, until)) = bounds {
            let id = self.inner.id;
            SLICES.with(|slots| {
                slots[id as usize % SLOTS].set(Some(CachedSlice {
                    id,
                    from,
                    until,
                    slice,
                }));
            });
        }
        slice
    }
}

/// A bucket's stamp while one writer resets it for a new time slice.
const CLAIMING: u64 = u64::MAX;
/// A bucket's stamp before it was ever used. Stamps are `slice + 1`, so 0 is older than all.
const EMPTY: u64 = 0;

/// The ratio budget: a ring of time buckets, each holding deposits minus withdrawals (in
/// thousandths of a retry) for the time slice its stamp names.
struct RatioWindow {
    /// Deposited per request: the ratio, in thousandths.
    deposit: i64,
    /// The floor: `min_per_second × window`, in thousandths of a retry.
    reserve: i64,
    /// Nanoseconds per bucket.
    width: u64,
    /// Buckets in the window.
    window: u64,
    /// A ring of `window` rounded up to a power of two, so a slice's bucket is found with a
    /// mask; the extra buckets only ever hold expired slices.
    buckets: Box<[Bucket]>,
    /// The last slice seen, so the common call finds its slice with a multiplication
    /// instead of a division.
    hint: AtomicU64,
}

struct Bucket {
    /// `slice + 1` of the slice counted here, [`EMPTY`] or [`CLAIMING`].
    stamp: AtomicU64,
    net: AtomicI64,
}

impl RatioWindow {
    fn new(deposit: i64, reserve: i64, window_nanos: u64, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        RatioWindow {
            deposit,
            reserve,
            width: (window_nanos / u64::from(buckets)).max(1),
            window: u64::from(buckets),
            buckets: (0..buckets.next_power_of_two())
                .map(|_| Bucket {
                    stamp: AtomicU64::new(EMPTY),
                    net: AtomicI64::new(0),
                })
                .collect(),
            hint: AtomicU64::new(0),
        }
    }

    #[inline]
    fn slice(&self, nanos: u64) -> u64 {
        // Relaxed: the hint is checked by arithmetic before it is used, so a stale or racing
        // value only sends this call down the division; it publishes nothing.
        let hint = self.hint.load(Ordering::Relaxed);
        // `hint` is a slice some caller saw, so `hint · width <= nanos` of that caller: no
        // overflow.
        if nanos.wrapping_sub(hint.wrapping_mul(self.width)) < self.width {
            return hint;
        }
        // Below `u64::MAX - 1`, so `slice + 1` is never `CLAIMING`.
        let slice = (nanos / self.width).min(u64::MAX - 2);
        // Relaxed: see the load above.
        self.hint.store(slice, Ordering::Relaxed);
        slice
    }

    /// The bucket counting `slice` (or a later slice, if another thread has moved the ring on
    /// past this caller's clock), reset first when it held an expired slice.
    #[inline]
    fn bucket(&self, mut slice: u64) -> &Bucket {
        // The ring's length is a power of two.
        let mask = self.buckets.len() as u64 - 1;
        let mut turn = 0;
        loop {
            // `slice & mask < buckets.len()`.
            let bucket = &self.buckets[(slice & mask) as usize];
            let stamp = bucket.stamp.load(Ordering::Acquire);
            if stamp == slice + 1 {
                return bucket;
            }
            if stamp == CLAIMING {
                // Another thread is resetting it: two stores, then it is ours to add to.
                spin(&mut turn);
                continue;
            }
            if stamp > slice + 1 {
                // Another caller's clock is ahead: count this one in its slice.
                slice = stamp - 1;
                continue;
            }
            if bucket
                .stamp
                // Relaxed on failure: the loop loads the stamp again, with Acquire.
                .compare_exchange(stamp, CLAIMING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // Relaxed: nobody adds to `net` while the stamp is CLAIMING, and the Release
                // store of the stamp below orders this reset before every add of the new
                // slice (their Acquire load of the stamp sees it), on every architecture.
                bucket.net.store(0, Ordering::Relaxed);
                bucket.stamp.store(slice + 1, Ordering::Release);
                return bucket;
            }
        }
    }

    /// The slice `nanos` after the epoch falls in, computed without the hint (to check the
    /// caches against, in debug builds).
    fn exact_slice(&self, nanos: u64) -> u64 {
        (nanos / self.width).min(u64::MAX - 2)
    }

    #[cfg(loom)]
    fn deposit(&self, nanos: u64) {
        self.deposit_in(self.slice(nanos));
    }

    #[inline]
    fn deposit_in(&self, slice: u64) {
        // Relaxed: a deposit only raises the balance. The add is atomic, so none is lost on
        // any architecture; a withdrawal that does not see it yet refuses (never over-admits),
        // and nothing else is published through it.
        self.bucket(slice)
            .net
            .fetch_add(self.deposit, Ordering::Relaxed);
    }

    #[cfg(loom)]
    fn withdraw(&self, cost: i64, nanos: u64) -> bool {
        self.withdraw_in(cost, self.slice(nanos))
    }

    fn withdraw_in(&self, cost: i64, slice: u64) -> bool {
        let bucket = self.bucket(slice);
        // Take first, then check: of two withdrawals racing for the last retry, the later one
        // in the SeqCst order sees both takes, so they cannot both pass.
        bucket.net.fetch_sub(cost, Ordering::SeqCst);
        if self.balance(slice) < 0 {
            bucket.net.fetch_add(cost, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Gives `cost` back to `slice` while its bucket still counts it; a bucket that moved on
    /// to a later slice expired the withdrawal with the old one. A refund racing the bucket's
    /// reset for a later slice counts in that slice, as a deposit racing it does.
    fn refund_in(&self, cost: i64, slice: u64) {
        // The ring's length is a power of two.
        let mask = self.buckets.len() as u64 - 1;
        let bucket = &self.buckets[(slice & mask) as usize];
        if bucket.stamp.load(Ordering::Acquire) == slice + 1 {
            // SeqCst, as a withdrawal's take and its undo.
            bucket.net.fetch_add(cost, Ordering::SeqCst);
        }
    }

    /// The reserve plus the net of every bucket of the window ending in `slice`.
    fn balance(&self, slice: u64) -> i64 {
        let oldest = (slice + 1).saturating_sub(self.window - 1);
        let mut sum = self.reserve;
        for bucket in self.buckets.iter() {
            let mut turn = 0;
            loop {
                let stamp = bucket.stamp.load(Ordering::Acquire);
                if stamp == CLAIMING {
                    // Being reset for a new slice: wait for it, it may be in the window.
                    spin(&mut turn);
                    continue;
                }
                if stamp < oldest.max(1) {
                    break;
                }
                let net = bucket.net.load(Ordering::SeqCst);
                // A reset between the two loads would pass the new slice's net off as the
                // old one's: read it again.
                if bucket.stamp.load(Ordering::Acquire) == stamp {
                    sum += net;
                    break;
                }
            }
        }
        sum
    }
}

/// A token count in thousandths, between 0 and `max`.
struct Tokens {
    max: i64,
    /// Given back per success.
    credit: i64,
    tokens: AtomicI64,
}

impl Tokens {
    fn new(max: i64, credit: i64) -> Self {
        Tokens {
            max,
            credit,
            tokens: AtomicI64::new(max),
        }
    }

    // Relaxed throughout (each use below says which of these reasons holds): the count
    // publishes no other memory, so no acquire/release pairing is needed on any
    // architecture; every change is a single atomic read-modify-write, so no update is lost
    // and the count stays in [0, max]; a load that lags behind a concurrent update only
    // decides one retry on a count that was true an instant before, which A6 throttling
    // tolerates by design.

    fn tokens(&self) -> i64 {
        // Relaxed: a snapshot for a gauge; it publishes nothing.
        self.tokens.load(Ordering::Relaxed)
    }

    #[inline]
    fn credit(&self) {
        // The steady state of a healthy backend is a full bucket: one load, no write.
        // Relaxed: a stale "full" skips one credit the RMW below would have capped anyway
        // or that a concurrent charge made room for an instant ago; nothing is published.
        if self.tokens.load(Ordering::Relaxed) >= self.max {
            return;
        }
        // Relaxed: a single RMW, so no concurrent update is lost; nothing is published.
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t < self.max).then(|| (t + self.credit).min(self.max))
            });
    }

    fn charge(&self, cost: i64) {
        // Relaxed: a single RMW, so no concurrent update is lost; nothing is published.
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t > 0).then(|| (t - cost).max(0))
            });
    }

    /// Gives back `cost` withdrawn for a retry that was not sent, up to `max`.
    fn refund(&self, cost: i64) {
        // Relaxed: a single RMW, so no concurrent update is lost; nothing is published.
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + cost).min(self.max))
            });
    }

    /// A6: retries are allowed while `tokens > max / 2`.
    fn above_half(&self) -> bool {
        // Relaxed: A6 decides on the count as last seen; nothing is published through it.
        2 * self.tokens.load(Ordering::Relaxed) > self.max
    }

    fn withdraw(&self, cost: i64) -> bool {
        // Relaxed: the check and the withdrawal are one RMW, so two withdrawals can never
        // both take the last tokens, on any architecture; nothing is published.
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= cost).then(|| t - cost)
            })
            .is_ok()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const WIDTH: u64 = 1_000_000_000;

    fn ratio(deposit: i64, reserve: i64, buckets: u32) -> RetryBudget {
        RetryBudget::ratio(
            deposit,
            reserve,
            WIDTH * u64::from(buckets),
            buckets,
            RetryCost::default(),
            Instant::now(),
        )
    }

    fn at(budget: &RetryBudget, nanos: u64) -> Instant {
        budget.inner.epoch + Duration::from_nanos(nanos)
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenth_of_ten_requests_is_exactly_one_retry() {
        let budget = ratio(100, 0, 10);
        let now = Instant::now();
        for _ in 0..9 {
            budget.record_request(now);
        }
        // 9 × 0.1 = 0.9 of a retry: not enough.
        assert!(!budget.try_retry(FailureClass::Error, now));
        budget.record_request(now);
        assert!(budget.try_retry(FailureClass::Error, now));
        assert!(!budget.try_retry(FailureClass::Error, now));
        assert_eq!(budget.balance(now), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_retries_without_requests_and_deposits_expire() {
        let budget = ratio(200, 2 * MILLI, 10);
        let start = Instant::now();
        assert!(budget.try_retry(FailureClass::Error, start));
        assert!(budget.try_retry(FailureClass::Error, start));
        assert!(!budget.try_retry(FailureClass::Error, start));
        for _ in 0..5 {
            budget.record_request(start);
        }
        assert!(budget.try_retry(FailureClass::Error, start));
        assert!(!budget.try_retry(FailureClass::Error, start));
        // Nine buckets later everything from the first slice is still in the window...
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!budget.try_retry(FailureClass::Error, Instant::now()));
        // ...and at ten it has expired, withdrawals with it: the reserve is back.
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert_eq!(budget.balance(now), 2.0);
        assert!(budget.try_retry(FailureClass::Error, now));
        assert!(budget.try_retry(FailureClass::Error, now));
        assert!(!budget.try_retry(FailureClass::Error, now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_gives_back_a_withdrawal_while_its_slice_counts() {
        let budget = ratio(0, 2 * MILLI, 10);
        let paid = at(&budget, 3 * WIDTH);
        assert!(budget.try_retry(FailureClass::Error, paid));
        assert!(budget.try_retry(FailureClass::Error, paid));
        // Given back later in the window, to the slice it was taken from.
        budget.refund(FailureClass::Error, paid);
        assert_eq!(budget.balance(at(&budget, 12 * WIDTH)), 1.0);
        assert_eq!(
            budget.balance(at(&budget, 13 * WIDTH)),
            2.0,
            "the other withdrawal has expired with slice 3"
        );
        // Once the slice's bucket counts a later slice, the withdrawal expired with it: a
        // refund then gives nothing.
        let later = at(&budget, 20 * WIDTH);
        assert!(budget.try_retry(FailureClass::Error, later));
        let ring = 16; // ten buckets, rounded up to a power of two
        budget.record_request(at(&budget, (3 + ring) * WIDTH));
        budget.refund(FailureClass::Error, paid);
        assert_eq!(budget.balance(later), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_gives_a_quota_its_cost_back_and_throttling_nothing() {
        let quota = RetryBudget::quota(20 * MILLI, MILLI, RetryCost::AWS_2026);
        let now = Instant::now();
        let unavailable = FailureClass::HttpStatus(http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(quota.try_retry(unavailable, now));
        assert_eq!(quota.balance(now), 6.0);
        quota.refund(unavailable, now);
        assert_eq!(quota.balance(now), 20.0);
        // Never above the maximum.
        quota.refund(unavailable, now);
        assert_eq!(quota.balance(now), 20.0);

        let throttle = RetryBudget::throttle(10 * MILLI, 100, RetryCost::default());
        throttle.record_failure(FailureClass::Error);
        assert!(throttle.try_retry(FailureClass::Error, now));
        throttle.refund(FailureClass::Error, now);
        assert_eq!(
            throttle.balance(now),
            9.0,
            "a failure's charge is not a retry's"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deposit_at_an_earlier_instant_counts_in_its_own_slice_and_expires_first() {
        let budget = ratio(MILLI, 0, 10);
        budget.record_request(at(&budget, 5 * WIDTH));
        // Earlier than the slice this thread just looked up: not answered from its cache.
        budget.record_request(at(&budget, 4 * WIDTH + WIDTH / 2));
        assert_eq!(budget.balance(at(&budget, 5 * WIDTH)), 2.0);
        assert_eq!(
            budget.balance(at(&budget, 14 * WIDTH)),
            1.0,
            "the deposit of slice 4 has left the window of slices 5 to 14"
        );
        assert_eq!(budget.balance(at(&budget, 15 * WIDTH)), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn nanosecond_buckets_keep_their_slices_apart_centuries_after_the_epoch() {
        // Ten buckets of 1 ns: slices past 2^63 are still told apart.
        let budget = RetryBudget::ratio(MILLI, 0, 10, 10, RetryCost::default(), Instant::now());
        let late = 1u64 << 63;
        // The second deposit finds its slice in this thread's cache.
        budget.record_request(at(&budget, late + 5));
        budget.record_request(at(&budget, late + 5));
        assert_eq!(budget.balance(at(&budget, late + 14)), 2.0);
        assert_eq!(
            budget.balance(at(&budget, late + 100)),
            0.0,
            "95 ns later the deposit has left the 10 ns window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_a_whole_ring_behind_counts_in_the_newer_slice_of_its_bucket() {
        // Ten buckets in a ring of 16: slices 4 and 20 share a bucket.
        let budget = ratio(MILLI, 0, 10);
        budget.record_request(at(&budget, 20 * WIDTH));
        budget.record_request(at(&budget, 4 * WIDTH));
        assert_eq!(
            budget.balance(at(&budget, 20 * WIDTH)),
            2.0,
            "the late deposit neither reset slice 20 nor went elsewhere"
        );
        assert_eq!(budget.balance(at(&budget, 29 * WIDTH)), 2.0);
        assert_eq!(
            budget.balance(at(&budget, 30 * WIDTH)),
            0.0,
            "both leave the window with slice 20"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_costs_what_its_class_costs() {
        let budget = RetryBudget::ratio(
            MILLI,
            0,
            10 * WIDTH,
            10,
            RetryCost::ByClass(|c| if c == FailureClass::Timeout { 3 } else { 1 }),
            Instant::now(),
        );
        let now = Instant::now();
        for _ in 0..4 {
            budget.record_request(now);
        }
        assert!(budget.try_retry(FailureClass::Timeout, now));
        assert!(!budget.try_retry(FailureClass::Timeout, now));
        assert!(budget.try_retry(FailureClass::Error, now));
        assert!(!budget.try_retry(FailureClass::Error, now));
    }

    #[test]
    fn a_budget_reports_the_cost_it_was_built_with() {
        let budget = RetryBudget::builder()
            .quota(500)
            .cost(RetryCost::AWS_2026)
            .build()
            .expect("valid");
        assert_eq!(budget.kind(), BudgetKind::Quota);
        assert_eq!(
            budget.cost().of(FailureClass::Error),
            14,
            "not the default, 1"
        );
        assert_eq!(budget.cost().of(FailureClass::Other("throttling")), 5);
    }

    #[test]
    fn aws_2026_charges_14_for_transient_errors_and_5_for_throttling() {
        let cost = RetryCost::AWS_2026;
        assert_eq!(cost.of(FailureClass::Error), 14);
        assert_eq!(cost.of(FailureClass::Timeout), 14);
        assert_eq!(
            cost.of(FailureClass::HttpStatus(
                http::StatusCode::SERVICE_UNAVAILABLE
            )),
            14
        );
        assert_eq!(
            cost.of(FailureClass::HttpStatus(
                http::StatusCode::TOO_MANY_REQUESTS
            )),
            5
        );
        assert_eq!(cost.of(FailureClass::Grpc(GrpcCode::ResourceExhausted)), 5);
        assert_eq!(cost.of(FailureClass::Grpc(GrpcCode::Unavailable)), 14);
        assert_eq!(cost.of(FailureClass::Other("throttling")), 5);
        assert_eq!(RetryCost::default().of(FailureClass::Timeout), 1);
        assert_eq!(format!("{:?}", RetryCost::Flat(2)), "Flat(2)");
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_throttling_follows_the_a6_example() {
        // A6: max_tokens 10, token_ratio 0.1.
        let budget = RetryBudget::throttle(10 * MILLI, 100, RetryCost::default());
        let now = Instant::now();
        assert!(budget.try_retry(FailureClass::Error, now));
        for _ in 0..4 {
            budget.record_failure(FailureClass::Error);
        }
        // 6 > 10 / 2.
        assert!(budget.try_retry(FailureClass::Error, now));
        budget.record_failure(FailureClass::Error);
        // 5 is not > 5.
        assert!(!budget.try_retry(FailureClass::Error, now));
        budget.record_success();
        assert_eq!(budget.balance(now), 5.1);
        assert!(budget.try_retry(FailureClass::Error, now));
        for _ in 0..20 {
            budget.record_failure(FailureClass::Error);
        }
        assert_eq!(budget.balance(now), 0.0);
        for _ in 0..200 {
            budget.record_success();
        }
        assert_eq!(budget.balance(now), 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quota_pays_for_each_retry_by_class() {
        let budget = RetryBudget::quota(20 * MILLI, MILLI, RetryCost::AWS_2026);
        let now = Instant::now();
        let throttled = FailureClass::HttpStatus(http::StatusCode::TOO_MANY_REQUESTS);
        assert!(budget.try_retry(FailureClass::Error, now)); // 20 - 14 = 6
        assert!(!budget.try_retry(FailureClass::Error, now));
        assert!(budget.try_retry(throttled, now)); // 6 - 5 = 1
        assert!(!budget.try_retry(throttled, now));
        for _ in 0..4 {
            budget.record_success();
        }
        assert!(budget.try_retry(throttled, now));
        assert_eq!(budget.balance(now), 0.0);
        budget.record_failure(FailureClass::Error); // a quota charges retries, not failures
        assert_eq!(budget.balance(now), 0.0);
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw_the_window() {
        let budget = ratio(100, 3 * MILLI, 10);
        let now = Instant::now();
        let threads = 4;
        let per_thread = 2_000;
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let budget = budget.clone();
                    s.spawn(move || {
                        let mut admitted = 0;
                        for i in 0..per_thread {
                            budget.record_request(now);
                            if i % 2 == 0 && budget.try_retry(FailureClass::Error, now) {
                                admitted += 1;
                            }
                        }
                        admitted
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic"))
                .sum()
        });
        // 8000 requests × 0.1 + 3 = 803 retries at most, and all deposits came in.
        assert!(admitted <= 803, "{admitted}");
        assert_eq!(
            budget.balance_milli(now),
            (threads * per_thread) as i64 * 100 + 3 * MILLI - admitted as i64 * MILLI
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        Request,
        Retry(FailureClass),
    }

    /// Costs 1, 2 and 3 for the three classes the model draws.
    fn test_cost(class: FailureClass) -> u32 {
        match class {
            FailureClass::Error => 1,
            FailureClass::Timeout => 2,
            _ => 3,
        }
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let class = prop_oneof![
            Just(FailureClass::Error),
            Just(FailureClass::Timeout),
            Just(FailureClass::Other("x")),
        ];
        proptest::collection::vec(
            prop_oneof![
                2 => prop_oneof![0u64..WIDTH / 2, 0u64..3 * WIDTH].prop_map(Op::Advance),
                6 => Just(Op::Request),
                4 => class.prop_map(Op::Retry),
            ],
            0..200,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The ratio budget admits a retry exactly when an integer model of the window says the
        /// deposits and the reserve cover it; right after a retry, the retries of its window
        /// never exceed `ratio × requests + floor × window`; and at any time the retries of the
        /// current window never exceed `ratio × requests + floor × window` counting the
        /// requests of that window and the one before.
        #[test]
        fn ratio_budget_matches_the_model_and_never_exceeds_its_bound(
            ratio_milli in 0i64..=2_000,
            floor in 0i64..4,
            buckets in 1u32..12,
            ops in ops(),
        ) {
            let window_ms = i64::from(buckets) * (WIDTH / 1_000_000) as i64;
            let reserve = floor * window_ms;
            let budget = RetryBudget::ratio(
                ratio_milli,
                reserve,
                WIDTH * u64::from(buckets),
                buckets,
                RetryCost::ByClass(test_cost),
                Instant::now(),
            );
            let n = u64::from(buckets);
            let mut now = 0u64;
            // (slice, requests, retries in units) of every event.
            let mut events: Vec<(u64, i64, i64)> = Vec::new();
            let live = |events: &[(u64, i64, i64)], slice: u64| {
                events
                    .iter()
                    .filter(|e| e.0 + n > slice)
                    .fold((0, 0), |(r, u), e| (r + e.1, u + e.2))
            };
            for op in ops {
                let slice = now / WIDTH;
                let mut op_admitted = None;
                match op {
                    Op::Advance(d) => now += d,
                    Op::Request => {
                        budget.record_request(at(&budget, now));
                        events.push((slice, 1, 0));
                    }
                    Op::Retry(class) => {
                        let cost = i64::from(test_cost(class));
                        let (requests, units) = live(&events, slice);
                        let model = (units + cost) * MILLI <= ratio_milli * requests + reserve;
                        let got = budget.try_retry(class, at(&budget, now));
                        prop_assert_eq!(got, model, "requests {} units {} cost {}", requests, units, cost);
                        op_admitted = Some(got);
                        if got {
                            events.push((slice, 0, cost));
                        }
                    }
                }
                let slice = now / WIDTH;
                let (requests, units) = live(&events, slice);
                if matches!(op_admitted, Some(true)) {
                    // Right after a retry, its window pays for every retry in it.
                    prop_assert!(units * MILLI <= ratio_milli * requests + reserve);
                }
                // Over any window, retries are paid for by that window's requests and those of
                // the window before it (a retry can outlive the deposits that paid for it).
                let paid_by = events
                    .iter()
                    .filter(|e| e.0 + 2 * n - 1 > slice)
                    .map(|e| e.1)
                    .sum::<i64>();
                prop_assert!(units * MILLI <= ratio_milli * paid_by + reserve);
                prop_assert_eq!(
                    budget.balance_milli(at(&budget, now)),
                    ratio_milli * requests + reserve - units * MILLI
                );
            }
        }

        /// Exact for every ratio with three decimals: `n` requests at ratio `r` allow exactly
        /// `floor(n · r)` retries (tower's `TpsBudget` truncated fractional percentages).
        #[test]
        fn ratio_budget_allows_exactly_ratio_times_requests(
            ratio_milli in 0i64..=3_000,
            requests in 0i64..500,
        ) {
            let budget = ratio(ratio_milli, 0, 10);
            let now = at(&budget, 0);
            for _ in 0..requests {
                budget.record_request(now);
            }
            let mut admitted = 0;
            while budget.try_retry(FailureClass::Error, now) {
                admitted += 1;
                prop_assert!(admitted <= requests * 3);
            }
            prop_assert_eq!(admitted, ratio_milli * requests / MILLI);
        }

        /// gRPC throttling against a rational model: the count stays in `[0, max]`, and a retry
        /// is allowed exactly while `tokens > max / 2`.
        #[test]
        fn grpc_throttling_matches_the_model(
            max_milli in 1i64..=1_000_000,
            ratio_milli in 1i64..=10_000,
            outcomes in proptest::collection::vec(any::<bool>(), 0..300),
        ) {
            let budget = RetryBudget::throttle(max_milli, ratio_milli, RetryCost::default());
            let now = Instant::now();
            let mut model = max_milli;
            for success in outcomes {
                if success {
                    budget.record_success();
                    model = (model + ratio_milli).min(max_milli);
                } else {
                    budget.record_failure(FailureClass::Error);
                    model = (model - MILLI).max(0);
                }
                prop_assert_eq!(budget.balance_milli(now), model);
                prop_assert_eq!(budget.try_retry(FailureClass::Error, now), 2 * model > max_milli);
            }
        }

        /// A quota never goes below zero and never above its maximum, and the retries it
        /// admitted never cost more than it started with plus what successes gave back.
        #[test]
        fn quota_never_overdraws(
            max in 1i64..1_000,
            credit in 0i64..3_000,
            ops in proptest::collection::vec(prop_oneof![Just(None), (0u32..3).prop_map(Some)], 0..300),
        ) {
            let budget = RetryBudget::quota(max * MILLI, credit, RetryCost::ByClass(test_cost));
            let now = Instant::now();
            let (mut spent, mut credited) = (0, 0);
            for op in ops {
                let before = budget.balance_milli(now);
                match op {
                    None => {
                        budget.record_success();
                        credited += budget.balance_milli(now) - before;
                    }
                    Some(c) => {
                        let class = [FailureClass::Error, FailureClass::Timeout, FailureClass::Other("x")][c as usize];
                        let cost = i64::from(test_cost(class)) * MILLI;
                        let got = budget.try_retry(class, now);
                        prop_assert_eq!(got, before >= cost);
                        if got {
                            spent += cost;
                        }
                    }
                }
                let b = budget.balance_milli(now);
                prop_assert!((0..=max * MILLI).contains(&b));
                prop_assert_eq!(spent, max * MILLI + credited - b);
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! Every interleaving of racing deposits, withdrawals and bucket roll-overs. Run with
    //! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p tower-retry-jitter --lib loom`
    //! (in a target directory of its own: the flag rebuilds every dependency).

    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    #[test]
    fn loom_two_withdrawals_never_both_take_the_last_retry() {
        loom::model(|| {
            // Ten requests at 0.1: exactly one retry.
            let w = Arc::new(RatioWindow::new(100, 0, 10, 1));
            for _ in 0..10 {
                w.deposit(0);
            }
            let other = {
                let w = w.clone();
                thread::spawn(move || w.withdraw(MILLI, 0))
            };
            let mine = w.withdraw(MILLI, 0);
            let theirs = other.join().unwrap();
            assert!(!(mine && theirs), "both took the last retry");
            let taken = i64::from(mine) + i64::from(theirs);
            assert_eq!(w.balance(0), MILLI - taken * MILLI);
        });
    }

    #[test]
    fn loom_no_deposit_is_lost_when_a_bucket_rolls_over() {
        loom::model(|| {
            // One bucket of 10 ns: slice 1 expires slice 0.
            let w = Arc::new(RatioWindow::new(100, 0, 10, 1));
            w.deposit(0);
            let other = {
                let w = w.clone();
                thread::spawn(move || w.deposit(10))
            };
            w.deposit(10);
            other.join().unwrap();
            assert_eq!(w.balance(1), 200);
        });
    }

    #[test]
    fn loom_a_reader_never_counts_an_expired_slice_as_current() {
        loom::model(|| {
            // Slice 0 withdrew its reserve; at slice 1 the reserve is whole again.
            let w = Arc::new(RatioWindow::new(100, MILLI, 10, 1));
            assert!(w.withdraw(MILLI, 0));
            let reader = {
                let w = w.clone();
                thread::spawn(move || w.balance(1))
            };
            w.deposit(10);
            let seen = reader.join().unwrap();
            assert!(seen == MILLI || seen == MILLI + 100, "saw {seen}");
            assert_eq!(w.balance(1), MILLI + 100);
        });
    }

    #[test]
    fn loom_a_refunded_retry_is_taken_once_more_at_most_and_the_balance_adds_up() {
        loom::model(|| {
            // Exactly one retry; one thread takes it and gives it back (never sent), the other
            // tries to take it.
            let w = Arc::new(RatioWindow::new(100, 0, 10, 1));
            for _ in 0..10 {
                w.deposit(0);
            }
            let other = {
                let w = w.clone();
                thread::spawn(move || w.withdraw(MILLI, 0))
            };
            let mine = w.withdraw(MILLI, 0);
            if mine {
                w.refund_in(MILLI, 0);
            }
            let theirs = other.join().unwrap();
            assert_eq!(
                w.balance(0),
                MILLI - i64::from(theirs) * MILLI,
                "a refund gives back what it took, no more"
            );
        });
    }

    #[test]
    fn loom_a_token_refund_racing_a_credit_never_passes_the_maximum() {
        loom::model(|| {
            // 5 of at most 5, a credit of 3; 3 taken for a retry that is never sent, then
            // given back while a success credits 3.
            let t = Arc::new(Tokens::new(5 * MILLI, 3 * MILLI));
            assert!(t.withdraw(3 * MILLI));
            let other = {
                let t = t.clone();
                thread::spawn(move || t.credit())
            };
            t.refund(3 * MILLI);
            other.join().unwrap();
            assert_eq!(t.tokens(), 5 * MILLI, "full, and never past the maximum");
        });
    }

    #[test]
    fn loom_racing_token_withdrawals_never_overdraw() {
        loom::model(|| {
            let t = Arc::new(Tokens::new(5 * MILLI, MILLI));
            let other = {
                let t = t.clone();
                thread::spawn(move || t.withdraw(3 * MILLI))
            };
            let mine = t.withdraw(3 * MILLI);
            let theirs = other.join().unwrap();
            assert!(mine ^ theirs, "exactly one fits");
            assert_eq!(t.tokens(), 2 * MILLI);
        });
    }
}
