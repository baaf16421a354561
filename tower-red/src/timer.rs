//! A lazily armed timer for a layer's future: [`Timer`].
//!
//! A future that may need a timer (a deadline, an attempt timeout, a backoff) but usually
//! finishes without one keeps a [`Timer`]: boxed, so the future stays small (a
//! [`Sleep`] is large and would be copied on every move), allocated only when first armed.
//! Dropping an unarmed one is a single inlined check; the drop of a `Sleep` (large and never
//! inlined) is out of line, on the cold path.
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tower_red::timer::Timer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let mut timer = Timer::new();
//! assert!(timer.get().is_none());
//!
//! // Armed on first use; armed again, it reuses its allocation.
//! timer.arm(Instant::now() + Duration::from_secs(60));
//! timer.arm(Instant::now() + Duration::from_millis(10)).await;
//! assert!(timer.get().is_some_and(|sleep| sleep.is_elapsed()));
//! # }
//! ```

use std::fmt;
use std::mem::ManuallyDrop;
use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// A timer allocated when first armed; see the [module documentation](self).
pub struct Timer(ManuallyDrop<Option<Pin<Box<Sleep>>>>);

impl Timer {
    /// An unarmed timer: no allocation.
    #[inline]
    pub const fn new() -> Self {
        Timer(ManuallyDrop::new(None))
    }

    /// The timer, if armed.
    #[inline]
    pub fn get(&mut self) -> Option<Pin<&mut Sleep>> {
        self.0.as_mut().map(Pin::as_mut)
    }

    /// Sets the timer to fire at `at`, reusing its allocation once armed.
    #[inline]
    pub fn arm(&mut self, at: Instant) -> Pin<&mut Sleep> {
        match &mut *self.0 {
            Some(sleep) => {
                sleep.as_mut().reset(at);
                sleep.as_mut()
            }
            timer @ None => timer
                .insert(Box::pin(tokio::time::sleep_until(at)))
                .as_mut(),
        }
    }

    /// The timer; armed with `sleep()` first if it is not yet, else left as it is.
    #[inline]
    pub fn get_or_arm_with(&mut self, sleep: impl FnOnce() -> Sleep) -> Pin<&mut Sleep> {
        self.0.get_or_insert_with(|| Box::pin(sleep())).as_mut()
    }

    #[cold]
    #[inline(never)]
    fn disarm(&mut self) {
        drop(ManuallyDrop::into_inner(std::mem::replace(
            &mut self.0,
            ManuallyDrop::new(None),
        )));
    }
}

impl Default for Timer {
    #[inline]
    fn default() -> Self {
        Timer::new()
    }
}

impl Drop for Timer {
    #[inline]
    fn drop(&mut self) {
        if self.0.is_some() {
            self.disarm();
        }
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("deadline", &self.0.as_ref().map(|sleep| sleep.deadline()))
            .finish()
    }
}
