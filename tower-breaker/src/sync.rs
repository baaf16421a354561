//! The atomics and the lock of the breaker's windows and state machine: std's, or loom's under
//! `cfg(loom)` so the model checker can explore every interleaving of
//! [`window`](crate::window) and [`machine`](crate::machine).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// One turn of a wait for another thread to finish a few stores: a spin hint, then the
/// scheduler once the wait grows (under loom, always a yield, so the model can make progress).
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
