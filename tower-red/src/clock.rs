//! One clock pair per stack instead of one per layer.
//!
//! A clock read costs tens of nanoseconds, and a RED duration needs two. Nested layers call
//! and poll each other synchronously, so within one `call` (or one `poll`) of the outermost
//! layer every layer would read nearly the same instant. Layers wrap their `call` and `poll` in a
//! [`Scope`]; inside a scope, [`now`] reads the clock once and hands every nested layer the same
//! instant. The cached instant is dropped when the outermost scope ends, so it is never older
//! than the CPU time of the poll that read it.
//!
//! Time comes from `tokio::time::Instant`, so paused-clock tests see paused time.
//!
//! ```
//! use tower_red::clock::{self, Scope};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let _outer = Scope::enter();
//! let a = clock::now();
//! {
//!     let _inner = Scope::enter(); // a nested layer
//!     assert_eq!(clock::now(), a); // no second clock read
//! }
//! # }
//! ```

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::Duration;

use tokio::time::Instant;

/// What every layer of this workspace means by "never": about 30 years, as tokio itself uses
/// for a timer that does not fire. A request without a deadline has this much time left.
pub const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static CACHED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Marks a layer's `call` or `poll` as running; see the [module docs](self). Not `Send`: a scope
/// lives on the stack of one synchronous call.
#[derive(Debug)]
#[must_use = "the scope ends when this guard is dropped"]
pub struct Scope {
    _not_send: PhantomData<*const ()>,
}

impl Scope {
    /// Enters a scope.
    #[inline]
    pub fn enter() -> Scope {
        DEPTH.with(|d| d.set(d.get() + 1));
        Scope {
            _not_send: PhantomData,
        }
    }
}

impl Drop for Scope {
    #[inline]
    fn drop(&mut self) {
        let depth = DEPTH.with(|d| {
            let depth = d.get().saturating_sub(1);
            d.set(depth);
            depth
        });
        if depth == 0 {
            CACHED.with(|c| c.set(None));
        }
    }
}

/// The current instant: shared by every layer inside the same outermost [`Scope`], read from
/// the clock outside any scope.
#[inline]
pub fn now() -> Instant {
    if DEPTH.with(Cell::get) == 0 {
        return Instant::now();
    }
    CACHED.with(|c| match c.get() {
        Some(now) => now,
        None => {
            let now = Instant::now();
            c.set(Some(now));
            now
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_cache_ends_with_the_outermost_scope() {
        let first = {
            let _outer = Scope::enter();
            let first = now();
            tokio::time::advance(Duration::from_millis(5)).await;
            {
                let _inner = Scope::enter();
                assert_eq!(now(), first);
            }
            // Still inside the outer scope.
            assert_eq!(now(), first);
            first
        };
        assert_eq!(now(), first + Duration::from_millis(5));
        let _again = Scope::enter();
        assert_eq!(now(), first + Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn outside_a_scope_every_read_is_fresh() {
        let a = now();
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(now(), a + Duration::from_millis(1));
    }
}
