//! The atomics of the retry budgets: std's, or loom's under `cfg(loom)` so the model checker
//! can explore every interleaving of [`budget`](crate::budget).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// One turn of a wait for another thread to finish two stores: a spin hint, then the
/// scheduler once the wait grows (under loom, always a yield, so the model can progress).
#[inline]
pub(crate) fn spin(turn: &mut u32) {
    #[cfg(loom)]
    {
        let _ = turn;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    {
        *turn += 1;
        if *turn < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}
