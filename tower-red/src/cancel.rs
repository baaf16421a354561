//! Telling the layers inside a stack why their future was dropped.
//!
//! A layer that enforces a deadline (the timeout layers of `tower-timeout-budget`, or your own)
//! stops a call by dropping the inner future. The layers inside it see only the drop; a
//! circuit breaker must count a call cut off by its deadline as a timeout (the backend did not
//! answer in time), but a call its caller abandoned early as nothing. An enforcer drops the
//! inner future inside [`drop_expired`]; a drop guard asks [`expired`] from its `Drop`.
//!
//! The mark is a thread-local set only for the duration of the drop, so it costs nothing on
//! any other path and cannot leak to an unrelated future.
//!
//! ```
//! use tower_red::cancel;
//!
//! struct Guard;
//! impl Drop for Guard {
//!     fn drop(&mut self) {
//!         println!("dropped at a deadline: {}", cancel::expired());
//!     }
//! }
//!
//! cancel::drop_expired(Guard); // prints `true`
//! drop(Guard); // prints `false`
//! assert!(!cancel::expired());
//! ```

use std::cell::Cell;

thread_local! {
    static EXPIRED: Cell<u32> = const { Cell::new(0) };
}

/// Drops `value` with the mark set: everything its destructor runs sees [`expired`] as `true`.
#[inline(never)]
pub fn drop_expired<T>(value: T) {
    struct Unmark;
    impl Drop for Unmark {
        fn drop(&mut self) {
            EXPIRED.with(|e| e.set(e.get().saturating_sub(1)));
        }
    }
    EXPIRED.with(|e| e.set(e.get() + 1));
    let _unmark = Unmark;
    drop(value);
}

/// Whether the drop now running was caused by a request's deadline passing (it runs inside
/// [`drop_expired`]). Meant for `Drop` impls; `false` everywhere else.
#[inline]
pub fn expired() -> bool {
    EXPIRED.with(Cell::get) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    struct Probe(Rc<Cell<Option<bool>>>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.set(Some(expired()));
        }
    }

    #[test]
    fn the_mark_is_seen_only_inside_the_drop() {
        let seen = Rc::new(Cell::new(None));
        drop_expired(Probe(seen.clone()));
        assert_eq!(seen.get(), Some(true));
        assert!(!expired());
        drop(Probe(seen.clone()));
        assert_eq!(seen.get(), Some(false));
    }

    #[test]
    fn a_panicking_destructor_does_not_leave_the_mark_set() {
        struct Boom;
        impl Drop for Boom {
            fn drop(&mut self) {
                panic!("boom");
            }
        }
        let caught = std::panic::catch_unwind(|| drop_expired(Boom));
        assert!(caught.is_err());
        assert!(!expired());
    }
}
