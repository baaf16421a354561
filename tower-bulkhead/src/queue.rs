//! The FIFO of waiters: plain data, guarded by the caller's lock.
//!
//! A waiter's entry is its id in a `VecDeque` ordered by id; only the front is ever granted
//! (and removed by the granter), while a waiter that gives up removes its own entry, so "my id
//! is gone" means "granted".

use std::collections::VecDeque;
use std::task::Waker;

/// The waiters of one partition, oldest first.
#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    entries: VecDeque<Entry>,
    next_id: u64,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    waker: Option<Waker>,
}

impl WaitQueue {
    /// An empty queue with room for `capacity` waiters before it allocates.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        WaitQueue {
            entries: VecDeque::with_capacity(capacity),
            next_id: 0,
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

    /// Adds a waiter at the back; returns its id.
    pub(crate) fn push(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push_back(Entry { id, waker: None });
        id
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok()
    }

    /// Whether waiter `id` is still queued.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.position(id).is_some()
    }

    /// Stores the waker of waiter `id`; `false` if it is no longer queued (it was granted).
    pub(crate) fn register(&mut self, id: u64, waker: &Waker) -> bool {
        let Some(i) = self.position(id) else {
            return false;
        };
        let entry = &mut self.entries[i];
        match &entry.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => entry.waker = Some(waker.clone()),
        }
        true
    }

    /// Removes the front waiter (it was granted) and returns its waker.
    pub(crate) fn pop_front(&mut self) -> Option<Option<Waker>> {
        self.entries.pop_front().map(|e| e.waker)
    }

    /// Removes waiter `id` (it gave up); `false` if it was no longer queued.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        match self.position(id) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
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
        let a = q.push();
        let b = q.push();
        let c = q.push();
        assert!(q.register(b, Waker::noop()));
        assert!(q.remove(c), "a waiter that gives up leaves from anywhere");
        assert!(!q.remove(c));
        assert!(q.pop_front().is_some());
        assert!(!q.contains(a), "a popped waiter was granted");
        assert!(!q.register(a, Waker::noop()));
        assert_eq!(q.pop_front().map(|w| w.is_some()), Some(true));
        assert!(q.is_empty());
        assert_eq!(q.pop_front().map(|_| ()), None);
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
