//! [`Deadline`]: the instant by which a request must be done, carried in request extensions
//! and in a task-local scope, and read by every layer that waits.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

// The task-local deadline. A scope sets it for the duration of one synchronous call or poll and
// restores the previous value afterwards (as `tokio::task_local!` does), so it follows the task
// that polls, not the thread. A plain `Cell` with a constant initialiser and no destructor: a
// read or a scope costs a few instructions, no borrow flag and no lazy registration.
thread_local! {
    static CURRENT: Cell<Option<Deadline>> = const { Cell::new(None) };
}

/// Restores the enclosing task-local deadline when a scope ends, unwinding included.
pub(crate) struct Restore(Option<Deadline>);

impl Restore {
    #[inline]
    fn enter(deadline: Deadline) -> Restore {
        Restore(CURRENT.with(|c| c.replace(Some(deadline))))
    }
}

impl Drop for Restore {
    #[inline]
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// The instant by which a request must be done.
///
/// Deadlines are absolute on this host's monotonic clock (`tokio::time::Instant`, so paused-clock
/// tests control them); on the wire they travel as the remaining budget (`grpc-timeout`), so the
/// clocks of two hosts never need to agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline at `at`.
    pub fn at(at: Instant) -> Deadline {
        Deadline { at }
    }

    /// A deadline `budget` from now. A budget too large to represent saturates at about 30
    /// years, which every layer treats as "no practical deadline".
    pub fn after(budget: Duration) -> Deadline {
        let now = Instant::now();
        Deadline {
            at: now.checked_add(budget).unwrap_or_else(|| far_future(now)),
        }
    }

    /// A deadline `budget` after `start`, saturating like [`Deadline::after`]. Layers that
    /// already read the clock use it to avoid a second read.
    #[inline]
    pub fn after_from(start: Instant, budget: Duration) -> Deadline {
        Deadline {
            at: start
                .checked_add(budget)
                .unwrap_or_else(|| far_future(start)),
        }
    }

    /// The instant.
    #[inline]
    pub fn instant(self) -> Instant {
        self.at
    }

    /// Time left; zero once passed.
    pub fn remaining(self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed (a deadline of exactly now has passed).
    pub fn is_expired(self) -> bool {
        Instant::now() >= self.at
    }

    /// The earlier of two deadlines.
    #[must_use]
    #[inline]
    pub fn min(self, other: Deadline) -> Deadline {
        if other.at < self.at { other } else { self }
    }

    /// The earlier of this deadline and `now + cap`.
    #[must_use]
    pub fn capped(self, cap: Duration) -> Deadline {
        self.min(Deadline::after(cap))
    }

    /// The earlier of an optional deadline and `now + cap`: what a layer with a local cap sets.
    pub fn min_with_cap(existing: Option<Deadline>, cap: Duration) -> Deadline {
        match existing {
            Some(d) => d.capped(cap),
            None => Deadline::after(cap),
        }
    }

    /// Whether `duration` from now still ends before the deadline.
    pub fn fits(self, duration: Duration) -> bool {
        Instant::now()
            .checked_add(duration)
            .is_some_and(|end| end < self.at)
    }

    /// A timer that fires at the deadline.
    pub fn sleep(self) -> Sleep {
        tokio::time::sleep_until(self.at)
    }

    /// A timer that fires after `duration` or at the deadline, whichever is first: a wait that
    /// can never outlive the request.
    pub fn sleep_at_most(self, duration: Duration) -> Sleep {
        let now = Instant::now();
        let end = now.checked_add(duration).unwrap_or_else(|| far_future(now));
        tokio::time::sleep_until(end.min(self.at))
    }

    /// Time left as seen at `now`; zero once passed.
    #[inline]
    pub fn remaining_at(self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    /// Runs `fut` until it finishes or the deadline passes, whichever is first.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_timeout_budget::Deadline;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let slow = tokio::time::sleep(Duration::from_secs(5));
    /// assert!(Deadline::after(Duration::from_secs(1)).timeout(slow).await.is_err());
    /// # }
    /// ```
    pub fn timeout<F: Future>(self, fut: F) -> tokio::time::Timeout<F> {
        tokio::time::timeout_at(self.at, fut)
    }

    /// The deadline of the task-local scope this code runs in, if any.
    #[inline]
    pub fn current() -> Option<Deadline> {
        CURRENT.with(Cell::get)
    }

    /// Runs `fut` with `self` as the task-local deadline (the earlier of `self` and any
    /// enclosing one), so calls made inside inherit it without plumbing.
    pub fn scope<F: Future>(self, fut: F) -> Scoped<F> {
        Scoped {
            fut: Some(fut),
            deadline: self.within_current(),
        }
    }

    /// Runs the closure `f` with `self` as the task-local deadline (the earlier of `self` and
    /// any enclosing one): the synchronous twin of [`Deadline::scope`], for code that polls a
    /// future by hand.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        self.within_current().sync_scope_exact(f)
    }

    /// The earlier of `self` and the enclosing task-local deadline: what a scope would hold.
    #[inline]
    pub(crate) fn within_current(self) -> Deadline {
        match Deadline::current() {
            Some(outer) => outer.min(self),
            None => self,
        }
    }

    /// Makes `self` the task-local deadline until the guard is dropped, for a deadline already
    /// known to be no later than the enclosing one (see [`Deadline::within_current`]): skips
    /// reading it again. A guard, not a closure: a request moved into a closure is one more
    /// copy of it (an `http::Request` is ~250 bytes) on every call.
    #[inline]
    pub(crate) fn enter_exact(self) -> Restore {
        Restore::enter(self)
    }

    /// [`Deadline::enter_exact`] for the length of the closure `f`.
    #[inline]
    pub(crate) fn sync_scope_exact<R>(self, f: impl FnOnce() -> R) -> R {
        let _restore = Restore::enter(self);
        f()
    }
}

pin_project! {
    /// The future of [`Deadline::scope`]: polls (and drops) `fut` with the deadline as the
    /// task-local one.
    pub struct Scoped<F> {
        #[pin]
        fut: Option<F>,
        deadline: Deadline,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.fut.is_some() {
                // Code run by the inner future's destructor sees the deadline too.
                let _restore = Restore::enter(*this.deadline);
                this.fut.set(None);
            }
        }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let _restore = Restore::enter(*this.deadline);
        let fut = this
            .fut
            .as_mut()
            .as_pin_mut()
            .expect("`Scoped` polled after completion");
        let res = fut.poll(cx);
        if res.is_ready() {
            this.fut.set(None);
        }
        res
    }
}

impl<F> std::fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scoped")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

fn far_future(now: Instant) -> Instant {
    // The workspace's one "never", as tokio itself uses for a timer that does not fire.
    now + tower_red::clock::NEVER
}

/// A request type that can carry a [`Deadline`].
///
/// The default methods read the task-local scope and store nothing, which is right for request
/// types without extensions (and for `reqwest::Request`, whose extensions are private);
/// `http::Request` keeps the deadline in its extensions too, and reads the earlier of the two.
/// Implement it for your own request type with `impl DeadlineCarrier for MyRequest {}`, or
/// override both methods.
pub trait DeadlineCarrier {
    /// The request's deadline: the earlier of its own (for `http::Request`, the `Deadline` in its
    /// extensions) and the task-local one ([`Deadline::current`]), or whichever of them there is.
    ///
    /// The task-local scope only ever shrinks, so the earlier one is the one that binds: a
    /// layer that keeps its deadline in the scope alone
    /// ([`carry_in_extensions(false)`](crate::TimeoutBudgetBuilder::carry_in_extensions)) is not
    /// hidden by a later deadline an outer layer left in the extensions.
    #[inline]
    fn deadline(&self) -> Option<Deadline> {
        Deadline::current()
    }

    /// Stores `deadline` on the request; a no-op for request types without extensions.
    #[inline]
    fn set_deadline(&mut self, deadline: Deadline) {
        let _ = deadline;
    }
}

impl<B> DeadlineCarrier for http::Request<B> {
    /// The earlier of the `Deadline` in the request's extensions and the task-local one.
    #[inline]
    fn deadline(&self) -> Option<Deadline> {
        let current = Deadline::current();
        match self.extensions().get::<Deadline>() {
            // Extensions without a deadline (a stack's requests carry none): the scope's.
            None => current,
            Some(&own) => Some(current.map_or(own, |current| own.min(current))),
        }
    }
    /// Stores `deadline` in the request's extensions. The first value stored in a request's
    /// `http::Extensions` costs 3 allocations (the boxed map, its table, the boxed value), the
    /// first `Deadline` added to extensions that hold other values 1 or 2; a `Deadline`
    /// already there (set by an outer layer) is overwritten in place, with none.
    fn set_deadline(&mut self, deadline: Deadline) {
        match self.extensions_mut().get_mut::<Deadline>() {
            Some(existing) => *existing = deadline,
            None => {
                self.extensions_mut().insert(deadline);
            }
        }
    }
}

/// reqwest keeps its request extensions private, so a reqwest request's deadline is the
/// task-local one ([`Deadline::scope`]).
#[cfg(feature = "reqwest")]
impl DeadlineCarrier for reqwest::Request {}

macro_rules! task_local_carriers {
    ($($t:ty),*) => { $(impl DeadlineCarrier for $t {})* };
}
task_local_carriers!(
    (),
    bool,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    String,
    &'static str,
    Vec<u8>
);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn remaining_shrinks_with_the_clock_and_saturates() {
        let d = Deadline::after(Duration::from_secs(2));
        assert_eq!(d.remaining(), Duration::from_secs(2));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(d.remaining(), Duration::from_millis(500));
        assert!(!d.is_expired());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(d.remaining(), Duration::ZERO);
        assert!(d.is_expired());
    }

    #[tokio::test(start_paused = true)]
    async fn cap_takes_the_earlier_deadline() {
        let outer = Deadline::after(Duration::from_secs(10));
        assert_eq!(
            outer.capped(Duration::from_secs(3)).remaining(),
            Duration::from_secs(3)
        );
        assert_eq!(outer.capped(Duration::from_secs(30)), outer);
        assert_eq!(
            Deadline::min_with_cap(None, Duration::from_secs(1)).remaining(),
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn huge_budgets_saturate_instead_of_panicking() {
        let d = Deadline::after(Duration::MAX);
        assert!(d.remaining() > Duration::from_secs(86_400 * 365));
        assert!(d.fits(Duration::from_secs(3600)));
        assert!(!d.fits(Duration::MAX));
    }

    #[tokio::test(start_paused = true)]
    async fn scope_is_inherited_and_only_ever_shrinks() {
        assert_eq!(Deadline::current(), None);
        let outer = Deadline::after(Duration::from_secs(5));
        outer
            .scope(async move {
                assert_eq!(Deadline::current(), Some(outer));
                let later = Deadline::after(Duration::from_secs(50));
                later
                    .scope(async move { assert_eq!(Deadline::current(), Some(outer)) })
                    .await;
                let sooner = Deadline::after(Duration::from_secs(1));
                sooner
                    .scope(async move { assert_eq!(Deadline::current(), Some(sooner)) })
                    .await;
                assert_eq!(0u64.deadline(), Some(outer));
            })
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn scopes_end_with_their_poll_and_survive_a_panic() {
        let d = Deadline::after(Duration::from_secs(1));
        let panicked = std::panic::catch_unwind(|| d.sync_scope(|| panic!("boom")));
        assert!(panicked.is_err());
        assert_eq!(Deadline::current(), None, "restored while unwinding");
        // A task spawned inside a scope does not inherit it: the scope belongs to the task.
        let spawned = d
            .scope(async { tokio::spawn(async { Deadline::current() }).await.unwrap() })
            .await;
        assert_eq!(spawned, None);
        // The scope holds across awaits, and the inner future is dropped inside it.
        struct SeesDeadline(Option<Deadline>);
        impl Drop for SeesDeadline {
            fn drop(&mut self) {
                assert_eq!(Deadline::current(), self.0);
            }
        }
        let guard = SeesDeadline(Some(d));
        let pending = d.scope(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(1), pending)
                .await
                .is_err()
        );
        assert_eq!(Deadline::current(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_at_most_never_outlives_the_deadline() {
        let d = Deadline::after(Duration::from_millis(100));
        let start = Instant::now();
        d.sleep_at_most(Duration::from_secs(10)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        let start = Instant::now();
        Deadline::after(Duration::from_secs(10))
            .sleep_at_most(Duration::from_millis(7))
            .await;
        assert_eq!(start.elapsed(), Duration::from_millis(7));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http_request_reads_the_earlier_of_its_extension_and_the_scope() {
        let near = Deadline::after(Duration::from_secs(1));
        let far = Deadline::after(Duration::from_secs(10));
        let mut req = http::Request::new(());
        req.set_deadline(far);
        assert_eq!(near.sync_scope(|| req.deadline()), Some(near));
        req.set_deadline(near);
        assert_eq!(far.sync_scope(|| req.deadline()), Some(near));
        assert_eq!(req.deadline(), Some(near), "no scope: the extension");
    }

    #[test]
    fn http_requests_carry_their_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut req = http::Request::new(());
            assert_eq!(req.deadline(), None);
            let d = Deadline::after(Duration::from_secs(1));
            req.set_deadline(d);
            assert_eq!(req.deadline(), Some(d));
        });
    }
}
