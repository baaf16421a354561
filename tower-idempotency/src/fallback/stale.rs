//! The stale store: the last good response per key, bounded in age, entries and bytes.
//!
//! Plain Rust, no Tower: the service only calls [`Stale::insert`] after a success and
//! [`Stale::get`] when it must answer in place of a call. Entries are kept per [`Read`] (GET or
//! HEAD) and key, so an entry only ever answers a request of its own method. One
//! `std::sync::Mutex` guards the maps; its critical sections are a hash lookup, an insert and
//! the evictions it forces, with the key, headers and body prepared before the lock is taken.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use super::config::StaleConfig;

/// The methods the store keeps, each apart: GET, and HEAD (whose empty body must never answer a
/// GET). Unsafe methods are never stored: a stale success would tell the caller that a POST
/// succeeded when it never ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    Get,
    Head,
}

impl Read {
    /// The read `method` is, or `None` for any other method.
    pub(crate) fn of(method: &Method) -> Option<Read> {
        match *method {
            Method::GET => Some(Read::Get),
            Method::HEAD => Some(Read::Head),
            _ => None,
        }
    }
}

/// A response held for stale-on-error.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    stored_at: Instant,
    seq: u64,
    size: usize,
}

/// What [`Stale::get`] hands out: the entry and how long it has been held.
#[derive(Debug)]
pub(crate) struct Hit {
    pub(crate) entry: Entry,
    pub(crate) age: Duration,
}

#[derive(Debug, Default)]
struct Entries {
    /// One map per [`Read`]: a key the key function gave a GET and a HEAD alike is two entries.
    maps: [HashMap<Arc<str>, Entry>; 2],
    /// Keys by age (`stored_at`, then `seq` among equals): the first is the oldest, evicted
    /// first. Not insertion order: a slow body ends after younger answers.
    order: BTreeMap<(Instant, u64), (Read, Arc<str>)>,
    next: u64,
    bytes: usize,
}

impl Entries {
    fn map(&self, read: Read) -> &HashMap<Arc<str>, Entry> {
        &self.maps[read as usize]
    }

    fn map_mut(&mut self, read: Read) -> &mut HashMap<Arc<str>, Entry> {
        &mut self.maps[read as usize]
    }

    fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum()
    }

    fn remove_oldest(&mut self) {
        if let Some((_, (read, key))) = self.order.pop_first()
            && let Some(old) = self.map_mut(read).remove(&key)
        {
            self.bytes -= old.size;
        }
    }

    fn remove(&mut self, read: Read, key: &str) {
        if let Some(old) = self.map_mut(read).remove(key) {
            self.order.remove(&(old.stored_at, old.seq));
            self.bytes -= old.size;
        }
    }
}

/// The store of one fallback layer (shared by its clones).
#[derive(Debug)]
pub(crate) struct Stale {
    config: StaleConfig,
    entries: Mutex<Entries>,
}

/// What an entry costs: its key, header names and values, and body.
fn size_of(key: &str, headers: &HeaderMap, body: &Bytes) -> usize {
    let headers: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    key.len() + headers + body.len()
}

impl Stale {
    pub(crate) fn new(config: StaleConfig) -> Self {
        Stale {
            config,
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic under this lock leaves the maps consistent (every step keeps `bytes` and both
        // maps in agreement before the next), so the poison is ignored.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `body`, whose headers arrived at `stored_at` and whose body ended at `now`, as the
    /// last good response to a `read` for `key`, replacing the previous one unless that one is
    /// younger; evicts expired entries, then the oldest, until the bounds hold. Returns whether
    /// it was kept: not an entry larger than `max_bytes` on its own, nor one already older than
    /// `max_age` (it could never be served), nor one older than the entry it would replace (a
    /// slow body must not overwrite a later answer), each leaving the store as it was; nor one
    /// that the bounds would evict first, being older than every entry held (it evicts only
    /// expired entries and its key's older one).
    #[allow(clippy::too_many_arguments)] // the entry's parts, moved in, and its two instants
    pub(crate) fn insert(
        &self,
        read: Read,
        key: &str,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        stored_at: Instant,
        now: Instant,
    ) -> bool {
        let size = size_of(key, &headers, &body);
        let max_age = self.config.max_age;
        if size > self.config.max_bytes
            || body.len() > self.config.max_entry_bytes
            || now.saturating_duration_since(stored_at) > max_age
        {
            return false;
        }
        let key: Arc<str> = Arc::from(key);
        let mut entries = self.lock();
        if let Some(newer) = entries.map(read).get(&key)
            && newer.stored_at > stored_at
        {
            return false;
        }
        entries.remove(read, &key);
        while let Some((&(oldest_at, _), _)) = entries.order.first_key_value() {
            let expired = now.saturating_duration_since(oldest_at) > max_age;
            let full = entries.len() >= self.config.max_entries
                || entries.bytes + size > self.config.max_bytes;
            if !(expired || full) {
                break;
            }
            if !expired && oldest_at > stored_at {
                // Oldest first: the new entry would be the one to go.
                return false;
            }
            entries.remove_oldest();
        }
        let seq = entries.next;
        entries.next += 1;
        entries.bytes += size;
        entries.order.insert((stored_at, seq), (read, key.clone()));
        entries.map_mut(read).insert(
            key,
            Entry {
                status,
                headers,
                body,
                stored_at,
                seq,
                size,
            },
        );
        true
    }

    /// The largest body stored.
    pub(crate) fn max_entry_bytes(&self) -> usize {
        self.config.max_entry_bytes
    }

    /// The entry of a `read` for `key` (never one of the other method) if it has been held for
    /// at most `max_age` at `now`; an older one is removed and never served.
    pub(crate) fn get(&self, read: Read, key: &str, now: Instant) -> Option<Hit> {
        let mut entries = self.lock();
        let entry = entries.map(read).get(key)?;
        let age = now.saturating_duration_since(entry.stored_at);
        if age > self.config.max_age {
            entries.remove(read, key);
            return None;
        }
        Some(Hit {
            entry: entry.clone(),
            age,
        })
    }

    /// How many entries and bytes are held now.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        let entries = self.lock();
        (entries.len(), entries.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StaleConfig {
        StaleConfig {
            max_age: Duration::from_secs(10),
            max_entries: 2,
            max_bytes: 100,
            max_entry_bytes: 50,
        }
    }

    /// Stores `body` for a GET of `key`, its headers and its end both at `at`.
    fn put(stale: &Stale, key: &str, body: &'static str, at: Instant) -> bool {
        put_slow(stale, key, body, at, at)
    }

    /// Stores `body` for a GET of `key`, its headers at `stored_at` and its end at `now`.
    fn put_slow(
        stale: &Stale,
        key: &str,
        body: &'static str,
        stored_at: Instant,
        now: Instant,
    ) -> bool {
        let (status, headers) = (StatusCode::OK, HeaderMap::new());
        stale.insert(
            Read::Get,
            key,
            status,
            headers,
            Bytes::from(body),
            stored_at,
            now,
        )
    }

    #[test]
    fn an_entry_is_served_up_to_its_max_age_and_never_after() {
        let stale = Stale::new(config());
        let t0 = Instant::now();
        assert!(put(&stale, "a", "one", t0));
        let hit = stale
            .get(Read::Get, "a", t0 + Duration::from_secs(10))
            .expect("at max_age");
        assert_eq!(hit.entry.body, "one");
        assert_eq!(hit.age, Duration::from_secs(10));
        assert!(
            stale
                .get(Read::Get, "a", t0 + Duration::from_millis(10_001))
                .is_none()
        );
        // The expired entry is gone, not just hidden.
        assert_eq!(stale.usage(), (0, 0));
        assert!(stale.get(Read::Get, "a", t0).is_none());
    }

    #[test]
    fn an_entry_costs_its_key_header_names_and_values_and_body() {
        let stale = Stale::new(config());
        let mut headers = HeaderMap::new();
        headers.insert("etag", http::HeaderValue::from_static("\"v1\""));
        headers.insert("x-a", http::HeaderValue::from_static("1"));
        assert!(stale.insert(
            Read::Get,
            "k",
            StatusCode::OK,
            headers,
            Bytes::from("body"),
            Instant::now(),
            Instant::now(),
        ));
        assert_eq!(stale.usage(), (1, 1 + (4 + 4) + (3 + 1) + 4));
    }

    #[test]
    fn a_get_and_a_head_of_one_key_are_two_entries_each_served_to_its_own_method() {
        let stale = Stale::new(config());
        let t0 = Instant::now();
        let put_as = |read, body: &'static str| {
            let (status, headers) = (StatusCode::OK, HeaderMap::new());
            stale.insert(read, "k", status, headers, Bytes::from(body), t0, t0)
        };
        assert!(put_as(Read::Get, "page"));
        assert!(stale.get(Read::Head, "k", t0).is_none());
        assert!(put_as(Read::Head, ""));
        assert_eq!(stale.get(Read::Get, "k", t0).unwrap().entry.body, "page");
        assert_eq!(stale.get(Read::Head, "k", t0).unwrap().entry.body, "");
        assert_eq!(stale.usage(), (2, 1 + 4 + 1));
        assert_eq!(Read::of(&Method::POST), None);
    }

    #[test]
    fn the_oldest_entry_is_evicted_past_max_entries() {
        let stale = Stale::new(config());
        let t0 = Instant::now();
        put(&stale, "a", "1", t0);
        put(&stale, "b", "2", t0);
        put(&stale, "c", "3", t0);
        assert!(stale.get(Read::Get, "a", t0).is_none());
        assert!(stale.get(Read::Get, "b", t0).is_some());
        assert!(stale.get(Read::Get, "c", t0).is_some());
        assert_eq!(stale.usage(), (2, 4));
    }

    #[test]
    fn replacing_a_key_refreshes_it_and_keeps_the_byte_count_exact() {
        let stale = Stale::new(config());
        let t0 = Instant::now();
        put(&stale, "a", "old", t0);
        put(&stale, "b", "x", t0);
        put(&stale, "a", "newer", t0 + Duration::from_secs(1));
        assert_eq!(stale.usage(), (2, 1 + 5 + 1 + 1));
        // "b" is now the oldest: a third key evicts it, not the refreshed "a".
        put(&stale, "c", "y", t0 + Duration::from_secs(2));
        assert!(stale.get(Read::Get, "b", t0).is_none());
        assert_eq!(
            stale
                .get(Read::Get, "a", t0 + Duration::from_secs(2))
                .unwrap()
                .entry
                .body,
            "newer"
        );
    }

    #[test]
    fn the_byte_bound_evicts_oldest_first_and_refuses_what_cannot_fit() {
        let stale = Stale::new(StaleConfig {
            max_entries: 10,
            max_bytes: 10,
            max_entry_bytes: 10,
            ..config()
        });
        let t0 = Instant::now();
        assert!(put(&stale, "a", "1234", t0)); // 5 bytes
        assert!(put(&stale, "b", "1234", t0)); // 10
        assert!(put(&stale, "c", "12", t0)); // evicts a
        assert!(stale.get(Read::Get, "a", t0).is_none());
        assert_eq!(stale.usage(), (2, 8));
        assert!(
            !put(&stale, "d", "1234567890", t0),
            "key + body > max_bytes"
        );
        assert_eq!(stale.usage(), (2, 8));
    }

    #[test]
    fn the_bounds_are_inclusive() {
        let stale = Stale::new(StaleConfig {
            max_entries: 10,
            max_bytes: 10,
            max_entry_bytes: 4,
            ..config()
        });
        let t0 = Instant::now();
        assert!(put(&stale, "a", "1234", t0), "a body of max_entry_bytes");
        assert!(!put(&stale, "b", "12345", t0), "one byte more");
        // "a" + "1234" and "bc" + "123" make exactly max_bytes: both stay.
        assert!(put(&stale, "bc", "123", t0));
        assert_eq!(stale.usage(), (2, 10));
        // An entry of exactly max_bytes on its own is kept (evicting the others).
        let whole = Stale::new(StaleConfig {
            max_bytes: 5,
            max_entry_bytes: 5,
            ..config()
        });
        assert!(put(&whole, "k", "1234", t0));
        // An entry exactly max_age old is still servable, so a new one does not evict it.
        assert!(put(&stale, "c", "1", t0 + Duration::from_secs(10)));
        assert!(
            stale
                .get(Read::Get, "a", t0 + Duration::from_secs(10))
                .is_none(),
            "evicted for bytes"
        );
        let young = Stale::new(StaleConfig {
            max_entries: 10,
            ..config()
        });
        put(&young, "a", "1", t0);
        put(&young, "b", "2", t0 + Duration::from_secs(10));
        assert_eq!(young.usage(), (2, 4));
    }

    #[test]
    fn an_older_entry_never_replaces_a_younger_one() {
        let stale = Stale::new(config());
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        assert!(put_slow(&stale, "k", "young", secs(5), secs(5)));
        assert!(
            !put_slow(&stale, "k", "old", t0, secs(8)),
            "its headers came first, its body last"
        );
        let hit = stale.get(Read::Get, "k", secs(8)).unwrap();
        assert_eq!(
            (hit.entry.body, hit.age),
            ("young".into(), Duration::from_secs(3))
        );
        assert!(put_slow(&stale, "k", "same age", secs(5), secs(9)));
        assert!(put_slow(&stale, "k", "younger", secs(6), secs(9)));
        assert_eq!(stale.usage(), (1, 1 + 7));
    }

    #[test]
    fn an_entry_already_older_than_max_age_is_refused_and_evicts_nothing() {
        let stale = Stale::new(StaleConfig {
            max_entries: 1,
            ..config()
        });
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        assert!(!put_slow(&stale, "slow", "late", t0, secs(11)), "into room");
        assert_eq!(stale.usage(), (0, 0));
        assert!(put_slow(&stale, "menu", "kept", secs(5), secs(5)));
        assert!(!put_slow(&stale, "slow", "late", t0, secs(11)));
        assert_eq!(stale.usage(), (1, 4 + 4));
        assert!(stale.get(Read::Get, "menu", secs(11)).is_some());
        // Exactly max_age old when its body ends: still servable, so kept.
        let edge = Stale::new(config());
        assert!(put_slow(&edge, "edge", "x", secs(1), secs(11)));
    }

    #[test]
    fn the_oldest_answer_is_evicted_first_whatever_order_bodies_end_in() {
        let stale = Stale::new(config());
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        assert!(put_slow(&stale, "young", "1", secs(5), secs(5)));
        assert!(put_slow(&stale, "old", "2", t0, secs(8)));
        // max_entries is 2: the third evicts "old", whose body ended last.
        assert!(put_slow(&stale, "third", "3", secs(8), secs(8)));
        assert!(stale.get(Read::Get, "old", secs(8)).is_none());
        assert!(stale.get(Read::Get, "young", secs(8)).is_some());
        // Older than every entry held when the store is full: it would go first, so it is not
        // kept, and evicts nothing.
        assert!(!put_slow(&stale, "older", "4", secs(2), secs(9)));
        assert_eq!(stale.usage(), (2, 6 + 6));
        // An entry expired by the time a new one's body ends goes, even one whose body ended
        // after a younger one's.
        let sweep = Stale::new(StaleConfig {
            max_entries: 10,
            ..config()
        });
        assert!(put_slow(&sweep, "young", "1", secs(5), secs(5)));
        assert!(put_slow(&sweep, "old", "2", secs(1), secs(8)));
        assert!(put_slow(&sweep, "new", "3", secs(6), secs(12)));
        assert_eq!(sweep.usage(), (2, 6 + 4));
    }

    #[test]
    fn expired_entries_are_dropped_when_a_new_one_comes() {
        let stale = Stale::new(StaleConfig {
            max_entries: 10,
            ..config()
        });
        let t0 = Instant::now();
        put(&stale, "a", "1", t0);
        put(&stale, "b", "2", t0 + Duration::from_secs(11));
        assert_eq!(stale.usage(), (1, 2));
    }
}
