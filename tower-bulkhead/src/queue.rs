//! The FIFO of waiters: plain data, guarded by the caller's lock.
//!
//! A waiter's entry is its id in a `VecDeque` ordered by id; only the front is ever granted
//! (and removed by the granter), while a waiter that gives up removes its own entry, so "my id
//! is gone" means "granted".
//!
//! A waiter with a deadline also keeps, in its entry, that deadline and the instant its timer is
//! set for, so that a grown service-time estimate can wake exactly the waiters whose timers it
//! made late (deadline-aware shedding).

use std::collections::VecDeque;
use std::task::Waker;

use tokio::time::Instant;

/// The waiters of one partition, oldest first.
#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    entries: VecDeque<Entry>,
    next_id: u64,
    /// Entries with a [`Watch`]: with none, nothing is scanned for late timers.
    watched: usize,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    waker: Option<Waker>,
    watch: Option<Watch>,
}

/// A waiter's deadline, and the instant its timer is set for.
#[derive(Debug, Clone, Copy)]
struct Watch {
    deadline: Instant,
    timer: Instant,
}

impl WaitQueue {
    /// An empty queue with room for `capacity` waiters before it allocates.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        WaitQueue {
            entries: VecDeque::with_capacity(capacity),
            next_id: 0,
            watched: 0,
        }
    }

    /// Waiters in the queue.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nobody waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a waiter at the back, watched when it has a `deadline`; returns its id.
    pub(crate) fn push(&mut self, deadline: Option<Instant>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        // Until its first poll says when its timer is set, the deadline bounds it.
        let watch = deadline.map(|deadline| Watch {
            deadline,
            timer: deadline,
        });
        self.watched += usize::from(watch.is_some());
        self.entries.push_back(Entry {
            id,
            waker: None,
            watch,
        });
        id
    }

    /// Takes an entry out of the queue.
    fn left(&mut self, entry: Entry) -> Option<Waker> {
        self.watched -= usize::from(entry.watch.is_some());
        entry.waker
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok()
    }

    /// Whether waiter `id` is still queued.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.position(id).is_some()
    }

    /// Stores the waker of waiter `id`, and for a watched waiter the instant its `timer` is
    /// set for; `false` if it is no longer queued (it was granted).
    pub(crate) fn register(&mut self, id: u64, waker: &Waker, timer: Option<Instant>) -> bool {
        let Some(i) = self.position(id) else {
            return false;
        };
        let entry = &mut self.entries[i];
        match &entry.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => entry.waker = Some(waker.clone()),
        }
        if let (Some(watch), Some(timer)) = (&mut entry.watch, timer) {
            watch.timer = timer;
        }
        true
    }

    /// Removes the front waiter (it was granted) and returns its waker.
    pub(crate) fn pop_front(&mut self) -> Option<Option<Waker>> {
        let entry = self.entries.pop_front()?;
        Some(self.left(entry))
    }

    /// Removes waiter `id` (it gave up); `false` if it was no longer queued.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        match self.position(id).and_then(|i| self.entries.remove(i)) {
            Some(entry) => {
                self.left(entry);
                true
            }
            None => false,
        }
    }

    /// Takes the wakers of the watched waiters queued after waiter `after` (from the front
    /// when `None`) whose deadline and timer `late` says are late, oldest first, until `wake`
    /// is full; returns the id to resume after when it filled. A waiter whose waker is taken
    /// was woken already: it registers again when it polls.
    pub(crate) fn take_late(
        &mut self,
        after: Option<u64>,
        wake: &mut WakeList,
        late: impl Fn(Instant, Instant) -> bool,
    ) -> Option<u64> {
        if self.watched == 0 {
            return None;
        }
        let start = after.map_or(0, |after| self.entries.partition_point(|e| e.id <= after));
        for entry in self.entries.range_mut(start..) {
            let Some(watch) = entry.watch else { continue };
            if entry.waker.is_none() || !late(watch.deadline, watch.timer) {
                continue;
            }
            wake.push(entry.waker.take());
            if wake.is_full() {
                return Some(entry.id);
            }
        }
        None
    }
}

/// Wakers collected under the lock and woken after it is released.
pub(crate) struct WakeList {
    wakers: [Option<Waker>; 8],
    len: usize,
}

impl WakeList {
    pub(crate) fn new() -> Self {
        WakeList {
            wakers: Default::default(),
            len: 0,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == self.wakers.len()
    }

    pub(crate) fn push(&mut self, waker: Option<Waker>) {
        self.wakers[self.len] = waker;
        self.len += 1;
    }

    pub(crate) fn wake_all(&mut self) {
        for waker in self.wakers[..self.len].iter_mut() {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        self.len = 0;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn waiters_leave_from_the_front_in_arrival_order() {
        let mut q = WaitQueue::with_capacity(2);
        let a = q.push(None);
        let b = q.push(None);
        let c = q.push(None);
        assert!(q.register(b, Waker::noop(), None));
        assert!(q.remove(c), "a waiter that gives up leaves from anywhere");
        assert!(!q.remove(c));
        assert!(q.pop_front().is_some());
        assert!(!q.contains(a), "a popped waiter was granted");
        assert!(!q.register(a, Waker::noop(), None));
        assert_eq!(q.pop_front().map(|w| w.is_some()), Some(true));
        assert!(q.is_empty());
        assert_eq!(q.pop_front().map(|_| ()), None);
    }

    #[test]
    fn only_registered_watched_waiters_whose_timer_is_late_are_taken_in_batches() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let mut q = WaitQueue::with_capacity(0);
        let late = |deadline: Instant, timer: Instant| deadline - (at(100) - t0) < timer;
        let unwatched = q.push(None);
        assert!(q.register(unwatched, Waker::noop(), Some(at(1))));
        let mut wake = WakeList::new();
        assert_eq!(q.take_late(None, &mut wake, late), None);
        assert_eq!(wake.len, 0, "a waiter without a deadline is never taken");

        let unpolled = q.push(Some(at(500)));
        let early = q.push(Some(at(500)));
        assert!(q.register(early, Waker::noop(), Some(at(300))));
        let ids: Vec<u64> = (0..10).map(|_| q.push(Some(at(500)))).collect();
        for &id in &ids {
            assert!(q.register(id, Waker::noop(), Some(at(450))));
        }
        // Shed points at 400: the timers at 450 are late, the one at 300 and the one of a
        // waiter that never polled (no waker to wake) are not.
        assert_eq!(q.take_late(None, &mut wake, late), Some(ids[7]));
        assert!(wake.is_full());
        wake.wake_all();
        // A woken waiter that registers again before the next batch is behind the resume point.
        assert!(q.register(ids[0], Waker::noop(), Some(at(450))));
        assert_eq!(q.take_late(Some(ids[7]), &mut wake, late), None);
        assert_eq!(wake.len, 2, "the batch resumes after the last waiter taken");
        wake.wake_all();
        assert_eq!(q.take_late(None, &mut wake, late), None);
        assert_eq!(
            wake.len, 1,
            "a taken waker is not taken twice, one registered again is"
        );

        assert!(q.remove(unpolled) && q.remove(early));
        while q.pop_front().is_some() {}
        assert_eq!(
            q.watched, 0,
            "every watched waiter that leaves is counted out"
        );
    }

    #[test]
    fn a_full_wake_list_is_emptied_by_waking() {
        let mut list = WakeList::new();
        while !list.is_full() {
            list.push(Some(Waker::noop().clone()));
        }
        list.wake_all();
        assert!(!list.is_full());
    }
}
