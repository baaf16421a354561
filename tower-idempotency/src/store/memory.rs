//! The in-memory store: sharded, bounded in entries and bytes, with TTL eviction.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tower_red::ConfigError;
use tower_red::clock::NEVER;

use super::{Claim, Fence, Fingerprint, Record, Store, StoreError, StoreErrorKind, StoreKey};

/// What one entry costs besides its record: the key, the map slot, the expiry queue slot.
const ENTRY_OVERHEAD: usize = 128;

/// An in-process [`Store`]: the default, for one instance of a service (use the Redis store when
/// several instances share keys).
///
/// Entries are spread over shards, each behind its own short `std::sync::Mutex` that is never held
/// across an await (every operation completes synchronously). The store holds at most
/// `max_entries` entries and `max_bytes` of records (split evenly over the shards). Expired entries
/// are evicted first; when a shard is still full, its completed entry closest to expiry is evicted
/// early (that key would run again on its next use), and when only in-flight entries remain the
/// claim fails with [`StoreErrorKind::Full`]. A record larger than a shard's byte budget is
/// refused with [`StoreErrorKind::Full`].
///
/// Clones share the same entries.
///
/// ```
/// use tower_idempotency::store::MemoryStore;
///
/// let store = MemoryStore::builder()
///     .max_entries(10_000)
///     .max_bytes(16 << 20)
///     .shards(8)
///     .build()
///     .expect("valid bounds");
/// assert_eq!(store.len(), 0);
/// ```
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: Box<[Mutex<Shard>]>,
    /// One counter for the whole store, so a fence is never reissued even after its key is evicted.
    next_fence: AtomicU64,
    shard_entries: usize,
    shard_bytes: usize,
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<StoreKey, Entry>,
    /// Every (expiry, key, fence) ever set, oldest first; items no longer matching their entry are
    /// skipped when popped. Bounded by compaction.
    expiries: VecDeque<(Instant, StoreKey, Fence)>,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    fence: Fence,
    fingerprint: Fingerprint,
    expires: Instant,
    state: State,
}

#[derive(Debug)]
enum State {
    InFlight,
    Completed(Record),
}

impl Entry {
    fn size(&self) -> usize {
        ENTRY_OVERHEAD
            + match &self.state {
                State::InFlight => 0,
                State::Completed(record) => record.encoded_len(),
            }
    }
}

/// Builds a [`MemoryStore`] with explicit bounds.
///
/// ```
/// use tower_idempotency::store::MemoryStore;
///
/// let err = MemoryStore::builder().max_entries(0).build().unwrap_err();
/// assert!(err.to_string().contains("max_entries"));
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct MemoryStoreBuilder {
    max_entries: usize,
    max_bytes: usize,
    shards: usize,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 256 << 20,
            shards: 16,
        }
    }
}

impl MemoryStoreBuilder {
    /// The most entries (in flight and completed) the store keeps. Default 100,000.
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
        self
    }

    /// The most bytes of entries the store keeps (records plus a fixed overhead per entry).
    /// Default 256 MiB.
    pub fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// How many independently locked shards. Default 16.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Validates the bounds: at least one shard, and at least one entry and one entry's overhead
    /// in bytes per shard.
    pub fn build(self) -> Result<MemoryStore, ConfigError> {
        const LAYER: &str = "MemoryStore";
        if self.shards == 0 || self.shards > 4096 {
            return Err(ConfigError::new(
                LAYER,
                "shards",
                self.shards,
                "must be between 1 and 4096",
            ));
        }
        if self.max_entries < self.shards {
            return Err(ConfigError::new(
                LAYER,
                "max_entries",
                self.max_entries,
                "must be at least the number of shards",
            ));
        }
        if self.max_bytes / self.shards < ENTRY_OVERHEAD {
            return Err(ConfigError::new(
                LAYER,
                "max_bytes",
                self.max_bytes,
                "must allow at least one entry (128 bytes) per shard",
            ));
        }
        Ok(MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..self.shards).map(|_| Mutex::default()).collect(),
                next_fence: AtomicU64::new(1),
                shard_entries: self.max_entries / self.shards,
                shard_bytes: self.max_bytes / self.shards,
            }),
        })
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

/// `now + d`, with `d` bounded by [`NEVER`] (30 years): a lease or TTL too long for the clock
/// holds its entry that long rather than overflow it. The layer bounds both well below; a
/// caller using the store directly may not.
fn later(now: Instant, d: Duration) -> Instant {
    now + d.min(NEVER)
}

impl MemoryStore {
    /// A store with the default bounds (100,000 entries, 256 MiB, 16 shards).
    pub fn new() -> Self {
        MemoryStoreBuilder::default()
            .build()
            .expect("the default bounds are valid")
    }

    /// A builder to choose the bounds.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// How many entries the store holds, expired ones not yet evicted included.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).entries.len())
            .sum()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many bytes of entries the store accounts for.
    pub fn bytes(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).bytes).sum()
    }

    fn shard(&self, key: &StoreKey) -> MutexGuard<'_, Shard> {
        // The key is a SHA-256: any 8 of its bytes are uniformly spread.
        let mut head = [0; 8];
        head.copy_from_slice(&key.as_bytes()[..8]);
        let index = (u64::from_le_bytes(head) % self.inner.shards.len() as u64) as usize;
        lock(&self.inner.shards[index])
    }

    fn claim_now(
        &self,
        key: &StoreKey,
        fp: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let mut shard = self.shard(key);
        // Read under the shard's lock: a clock read before it could be older than an entry
        // another thread wrote while this one waited, and a lease would seem longer than it is.
        let now = Instant::now();
        if let Some(entry) = shard.entries.get(key)
            && entry.expires > now
        {
            return Ok(match &entry.state {
                State::InFlight => Claim::InFlight {
                    fingerprint: entry.fingerprint,
                    lease_left: entry.expires - now,
                },
                State::Completed(record) => Claim::Completed {
                    fingerprint: entry.fingerprint,
                    record: record.clone(),
                },
            });
        }
        shard.remove(key);
        shard.make_room(
            now,
            ENTRY_OVERHEAD,
            self.inner.shard_entries,
            self.inner.shard_bytes,
        )?;
        // Relaxed: only the counter's own order matters (each value handed out once, increasing);
        // the entry it guards is published under the shard's mutex.
        let fence = Fence(self.inner.next_fence.fetch_add(1, Ordering::Relaxed));
        let expires = later(now, lease);
        shard.insert(
            *key,
            Entry {
                fence,
                fingerprint: *fp,
                expires,
                state: State::InFlight,
            },
        );
        Ok(Claim::Acquired(fence))
    }

    fn renew_now(&self, key: &StoreKey, fence: Fence, lease: Duration) -> bool {
        let mut shard = self.shard(key);
        let now = Instant::now(); // under the lock, as in `claim_now`
        let expires = later(now, lease);
        match shard.entries.get_mut(key) {
            Some(entry)
                if entry.fence == fence
                    && entry.expires > now
                    && matches!(entry.state, State::InFlight) =>
            {
                if entry.expires == expires {
                    // Renewed within the same instant: its item in the queue still matches.
                    // Queueing it again would add an item that compaction keeps (it is
                    // current), so the queue would grow with every such renewal.
                    return true;
                }
                entry.expires = expires;
            }
            _ => return false,
        }
        shard.push_expiry(expires, *key, fence);
        true
    }

    fn complete_now(
        &self,
        key: &StoreKey,
        fence: Fence,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut shard = self.shard(key);
        let now = Instant::now(); // under the lock, as in `claim_now`
        let fingerprint = match shard.entries.get(key) {
            Some(entry)
                if entry.fence == fence
                    && entry.expires > now
                    && matches!(entry.state, State::InFlight) =>
            {
                entry.fingerprint
            }
            _ => return Ok(false),
        };
        let size = ENTRY_OVERHEAD + record.encoded_len();
        if size > self.inner.shard_bytes {
            return Err(StoreError::new(StoreErrorKind::Full));
        }
        // Take our own entry out first so making room never evicts it.
        shard.remove(key);
        let room = shard.make_room(now, size, self.inner.shard_entries, self.inner.shard_bytes);
        let (expires, state) = match room {
            Ok(()) => (later(now, ttl), State::Completed(record.clone())),
            // Put the claim back as it was, so its holder can still release it.
            Err(err) => {
                shard.insert(
                    *key,
                    Entry {
                        fence,
                        fingerprint,
                        expires: now + Duration::from_secs(1),
                        state: State::InFlight,
                    },
                );
                return Err(err);
            }
        };
        shard.insert(
            *key,
            Entry {
                fence,
                fingerprint,
                expires,
                state,
            },
        );
        Ok(true)
    }

    fn release_now(&self, key: &StoreKey, fence: Fence) -> bool {
        let mut shard = self.shard(key);
        let now = Instant::now(); // under the lock, as in `claim_now`
        match shard.entries.get(key) {
            Some(entry)
                if entry.fence == fence
                    && entry.expires > now
                    && matches!(entry.state, State::InFlight) =>
            {
                shard.remove(key);
                true
            }
            _ => false,
        }
    }
}

/// A poisoned shard only means a panic elsewhere while it was held; every method leaves a shard
/// consistent between statements that can panic, so its data is still usable.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shard {
    fn remove(&mut self, key: &StoreKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes -= entry.size();
        }
    }

    fn insert(&mut self, key: StoreKey, entry: Entry) {
        self.bytes += entry.size();
        let (expires, fence) = (entry.expires, entry.fence);
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.size();
        }
        // Queued after the entry is in the map: a compaction this push triggers keeps only the
        // items of entries in the map, and would drop the new entry's own item before it.
        self.push_expiry(expires, key, fence);
    }

    fn push_expiry(&mut self, expires: Instant, key: StoreKey, fence: Fence) {
        self.expiries.push_back((expires, key, fence));
        // Renewals leave stale items behind: keep the queue within a constant factor of the map.
        if self.expiries.len() > 2 * self.entries.len() + 16 {
            let entries = &self.entries;
            self.expiries
                .retain(|(at, key, fence)| is_current(entries, *at, key, *fence));
        }
    }

    /// Evicts until one more entry of `size` bytes fits: stale and expired items first (from the
    /// front of the queue), then the completed entry queued earliest.
    fn make_room(
        &mut self,
        now: Instant,
        size: usize,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<(), StoreError> {
        let fits = |s: &Self| s.entries.len() < max_entries && s.bytes + size <= max_bytes;
        // Expired or stale items at the front cost nothing to drop; do it on every insert so
        // expired entries never pile up.
        while let Some(&(at, key, fence)) = self.expiries.front() {
            let current = is_current(&self.entries, at, &key, fence);
            if current && at > now {
                break;
            }
            self.expiries.pop_front();
            if current {
                self.remove(&key);
            }
        }
        if fits(self) {
            return Ok(());
        }
        // Full of live entries: sweep every expired one, then evict completed ones early.
        let expired: Vec<StoreKey> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in &expired {
            self.remove(key);
        }
        let mut i = 0;
        while !fits(self) && i < self.expiries.len() {
            let (at, key, fence) = self.expiries[i];
            let completed = is_current(&self.entries, at, &key, fence)
                && matches!(
                    self.entries.get(&key).map(|e| &e.state),
                    Some(State::Completed(_))
                );
            if completed {
                self.remove(&key);
                self.expiries.remove(i);
            } else {
                i += 1;
            }
        }
        if fits(self) {
            Ok(())
        } else {
            Err(StoreError::new(StoreErrorKind::Full))
        }
    }
}

fn is_current(
    entries: &HashMap<StoreKey, Entry>,
    at: Instant,
    key: &StoreKey,
    fence: Fence,
) -> bool {
    entries
        .get(key)
        .is_some_and(|e| e.fence == fence && e.expires == at)
}

impl Store for MemoryStore {
    fn claim(
        &self,
        key: &StoreKey,
        fp: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        ready(self.claim_now(key, fp, lease))
    }

    fn renew(
        &self,
        key: &StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.renew_now(key, fence, lease)))
    }

    fn complete(
        &self,
        key: &StoreKey,
        fence: Fence,
        record: &Record,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(self.complete_now(key, fence, record, ttl))
    }

    fn release(
        &self,
        key: &StoreKey,
        fence: Fence,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.release_now(key, fence)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const LEASE: Duration = Duration::from_secs(10);
    const TTL: Duration = Duration::from_secs(100);

    fn key(n: u32) -> StoreKey {
        StoreKey::derive("t", b"", "POST", "/", &n.to_be_bytes())
    }

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn record(body: &'static str) -> Record {
        Record {
            status: 200,
            headers: vec![],
            body: body.into(),
        }
    }

    async fn acquire(store: &MemoryStore, k: &StoreKey) -> Fence {
        acquire_for(store, k, LEASE).await
    }

    async fn acquire_for(store: &MemoryStore, k: &StoreKey, lease: Duration) -> Fence {
        match store.claim(k, &fp(1), lease).await.unwrap() {
            Claim::Acquired(fence) => fence,
            other => panic!("expected to acquire, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_that_leave_the_expiry_where_it_was_queue_nothing() {
        let store = MemoryStore::new();
        let k = key(1);
        let fence = acquire(&store, &k).await;
        let queued = store.shard(&k).expiries.len();
        // The clock has not moved: every renewal sets the expiry it already has.
        for _ in 0..1_000 {
            assert!(store.renew_now(&k, fence, LEASE));
        }
        assert_eq!(store.shard(&k).expiries.len(), queued);
        // A renewal that moves it queues the new expiry.
        advance(Duration::from_secs(1)).await;
        assert!(store.renew_now(&k, fence, LEASE));
        assert_eq!(store.shard(&k).expiries.len(), queued + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_or_ttl_too_long_for_the_clock_is_held_for_thirty_years_not_a_panic() {
        let store = MemoryStore::new();
        let fence = match store.claim(&key(1), &fp(1), Duration::MAX).await.unwrap() {
            Claim::Acquired(fence) => fence,
            other => panic!("a free key: {other:?}"),
        };
        assert!(store.renew(&key(1), fence, Duration::MAX).await.unwrap());
        assert!(
            store
                .complete(&key(1), fence, &record("kept"), Duration::MAX)
                .await
                .unwrap()
        );
        advance(Duration::from_secs(86_400 * 365)).await;
        assert!(matches!(
            store.claim(&key(1), &fp(1), LEASE).await.unwrap(),
            Claim::Completed { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_key_reports_in_flight_with_the_lease_left() {
        let store = MemoryStore::new();
        acquire(&store, &key(1)).await;
        advance(Duration::from_secs(3)).await;
        assert_eq!(
            store.claim(&key(1), &fp(2), LEASE).await.unwrap(),
            Claim::InFlight {
                fingerprint: fp(1),
                lease_left: Duration::from_secs(7)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lapsed_lease_is_taken_over_with_a_greater_fence_and_the_stale_holder_is_fenced_out()
    {
        let store = MemoryStore::new();
        let old = acquire(&store, &key(1)).await;
        advance(LEASE).await;
        let new = acquire(&store, &key(1)).await;
        assert!(new > old);
        assert!(
            !store
                .complete(&key(1), old, &record("stale"), TTL)
                .await
                .unwrap()
        );
        assert!(!store.renew(&key(1), old, LEASE).await.unwrap());
        assert!(!store.release(&key(1), old).await.unwrap());
        assert!(
            store
                .complete(&key(1), new, &record("fresh"), TTL)
                .await
                .unwrap()
        );
        match store.claim(&key(1), &fp(1), LEASE).await.unwrap() {
            Claim::Completed { record: r, .. } => assert_eq!(r.body, "fresh"),
            other => panic!("expected completed, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_extends_the_lease_from_now() {
        let store = MemoryStore::new();
        let fence = acquire(&store, &key(1)).await;
        advance(Duration::from_secs(9)).await;
        assert!(store.renew(&key(1), fence, LEASE).await.unwrap());
        advance(Duration::from_secs(9)).await;
        assert!(matches!(
            store.claim(&key(1), &fp(1), LEASE).await.unwrap(),
            Claim::InFlight { lease_left, .. } if lease_left == Duration::from_secs(1)
        ));
        advance(Duration::from_secs(1)).await;
        assert!(!store.renew(&key(1), fence, LEASE).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn release_frees_the_key_for_the_next_claim() {
        let store = MemoryStore::new();
        let fence = acquire(&store, &key(1)).await;
        assert!(store.release(&key(1), fence).await.unwrap());
        assert!(!store.release(&key(1), fence).await.unwrap());
        acquire(&store, &key(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_completed_entry_is_replayed_until_its_ttl_then_runs_again() {
        let store = MemoryStore::new();
        let fence = acquire(&store, &key(1)).await;
        assert!(
            store
                .complete(&key(1), fence, &record("a"), TTL)
                .await
                .unwrap()
        );
        assert!(
            !store.release(&key(1), fence).await.unwrap(),
            "completion is final"
        );
        advance(TTL - Duration::from_millis(1)).await;
        assert!(matches!(
            store.claim(&key(1), &fp(1), LEASE).await.unwrap(),
            Claim::Completed { .. }
        ));
        advance(Duration::from_millis(1)).await;
        acquire(&store, &key(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_distinct_keys_stays_within_the_entry_bound() {
        let store = MemoryStore::builder()
            .max_entries(64)
            .shards(4)
            .build()
            .unwrap();
        for n in 0..10_000 {
            let k = key(n);
            let fence = acquire(&store, &k).await;
            store.complete(&k, fence, &record("x"), TTL).await.unwrap();
            assert!(store.len() <= 64, "len {} after {n}", store.len());
        }
        for shard in store.inner.shards.iter() {
            let shard = lock(shard);
            assert!(shard.expiries.len() <= 2 * shard.entries.len() + 17);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_bound_evicts_completed_entries_and_refuses_oversized_records() {
        let store = MemoryStore::builder()
            .max_bytes(4 * 1024)
            .shards(1)
            .build()
            .unwrap();
        let big = Record {
            status: 200,
            headers: vec![],
            body: vec![0; 1000].into(),
        };
        for n in 0..50 {
            let fence = acquire(&store, &key(n)).await;
            assert!(store.complete(&key(n), fence, &big, TTL).await.unwrap());
            assert!(store.bytes() <= 4 * 1024);
        }
        let huge = Record {
            body: vec![0; 8 * 1024].into(),
            ..big
        };
        let fence = acquire(&store, &key(99)).await;
        let err = store
            .complete(&key(99), fence, &huge, TTL)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Full);
        assert!(store.release(&key(99), fence).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_full_of_live_claims_refuses_new_ones() {
        let store = MemoryStore::builder()
            .max_entries(2)
            .shards(1)
            .build()
            .unwrap();
        acquire(&store, &key(1)).await;
        acquire(&store, &key(2)).await;
        let err = store.claim(&key(3), &fp(1), LEASE).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Full);
        advance(LEASE).await;
        acquire(&store, &key(3)).await;
        assert_eq!(store.len(), 1, "expired claims were evicted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_whose_expiry_item_triggers_compaction_can_still_be_evicted_early() {
        let store = MemoryStore::builder()
            .max_entries(2)
            .shards(1)
            .build()
            .unwrap();
        // A claim held for an hour stays at the front of the queue, so no claim pops the stale
        // items that the claims released behind it leave.
        acquire_for(&store, &key(1_000), Duration::from_secs(3600)).await;
        for n in 0..16 {
            let fence = acquire(&store, &key(n)).await;
            assert!(store.release(&key(n), fence).await.unwrap());
        }
        // The completion's expiry item is the one that pushes the queue past its bound.
        let fence = acquire(&store, &key(100)).await;
        assert!(
            store
                .complete(&key(100), fence, &record("c"), TTL)
                .await
                .unwrap()
        );
        // Full: the completed entry closest to expiry (the only one) makes room.
        let fence = acquire(&store, &key(200)).await;
        assert!(store.release(&key(200), fence).await.unwrap());
        assert!(
            matches!(
                store.claim(&key(100), &fp(1), LEASE).await.unwrap(),
                Claim::Acquired(_)
            ),
            "the completed entry was evicted early"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_evicted_as_new_ones_arrive() {
        let store = MemoryStore::builder().shards(1).build().unwrap();
        for n in 0..100 {
            let fence = acquire(&store, &key(n)).await;
            store
                .complete(&key(n), fence, &record("x"), TTL)
                .await
                .unwrap();
        }
        advance(TTL).await;
        acquire(&store, &key(1000)).await;
        assert_eq!(store.len(), 1);
        assert_eq!(store.bytes(), ENTRY_OVERHEAD);
    }

    fn body_of(len: usize) -> Record {
        let empty = Record {
            status: 200,
            headers: vec![],
            body: Default::default(),
        };
        let len = len - empty.encoded_len();
        Record {
            body: vec![0; len].into(),
            ..empty
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_that_fills_the_byte_bound_exactly_is_stored() {
        let store = MemoryStore::builder()
            .max_bytes(1024)
            .shards(1)
            .build()
            .unwrap();
        let fence = acquire(&store, &key(1)).await;
        let exact = body_of(1024 - ENTRY_OVERHEAD);
        assert!(store.complete(&key(1), fence, &exact, TTL).await.unwrap());
        assert_eq!(store.bytes(), 1024);
        let fence = acquire(&store, &key(2)).await;
        let over = body_of(1024 - ENTRY_OVERHEAD + 1);
        let err = store
            .complete(&key(2), fence, &over, TTL)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Full);
    }

    #[tokio::test(start_paused = true)]
    async fn max_bytes_is_split_evenly_over_the_shards() {
        let store = MemoryStore::builder()
            .max_bytes(4 * 1024)
            .shards(4)
            .build()
            .unwrap();
        let fence = acquire(&store, &key(1)).await;
        let share = body_of(1024 - ENTRY_OVERHEAD);
        assert!(store.complete(&key(1), fence, &share, TTL).await.unwrap());
        let fence = acquire(&store, &key(2)).await;
        let over = body_of(1024 - ENTRY_OVERHEAD + 1);
        let err = store
            .complete(&key(2), fence, &over, TTL)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Full, "over one shard's 1 KiB");
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_that_finds_no_room_leaves_the_claim_to_its_holder_for_a_second() {
        let store = MemoryStore::builder()
            .max_bytes(1024)
            .shards(1)
            .build()
            .unwrap();
        // Two live claims take 256 bytes that nothing may evict.
        acquire(&store, &key(1)).await;
        acquire(&store, &key(2)).await;
        let fence = acquire(&store, &key(3)).await;
        let record = body_of(1024 - ENTRY_OVERHEAD);
        let err = store
            .complete(&key(3), fence, &record, TTL)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Full);
        assert_eq!(
            store.claim(&key(3), &fp(2), LEASE).await.unwrap(),
            Claim::InFlight {
                fingerprint: fp(1),
                lease_left: Duration::from_secs(1)
            },
            "still in flight, for a second"
        );
        assert!(
            store.release(&key(3), fence).await.unwrap(),
            "its holder can still release it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn live_claims_fill_the_byte_bound_to_its_last_entry() {
        let store = MemoryStore::builder()
            .max_bytes(8 * ENTRY_OVERHEAD)
            .shards(1)
            .build()
            .unwrap();
        for n in 0..8 {
            acquire(&store, &key(n)).await;
        }
        assert_eq!(store.bytes(), 8 * ENTRY_OVERHEAD);
        let err = store.claim(&key(8), &fp(1), LEASE).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Full);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_follow_every_claim_completion_and_release() {
        let store = MemoryStore::builder().shards(1).build().unwrap();
        let first = acquire(&store, &key(1)).await;
        let second = acquire(&store, &key(2)).await;
        assert_eq!(store.bytes(), 2 * ENTRY_OVERHEAD);
        let record = body_of(1000);
        assert!(store.complete(&key(1), first, &record, TTL).await.unwrap());
        assert_eq!(store.bytes(), 2 * ENTRY_OVERHEAD + 1000);
        assert!(store.release(&key(2), second).await.unwrap());
        assert_eq!(store.bytes(), ENTRY_OVERHEAD + 1000);
        advance(TTL).await;
        acquire(&store, &key(3)).await;
        assert_eq!(store.bytes(), ENTRY_OVERHEAD, "the expired record is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn the_expiry_queue_stays_compact_after_the_map_shrinks() {
        let store = MemoryStore::builder().shards(1).build().unwrap();
        let queued = |store: &MemoryStore| {
            let shard = lock(&store.inner.shards[0]);
            (shard.expiries.len(), shard.entries.len())
        };
        // A live claim at the front of the queue, so no claim pops the stale items behind it.
        let held = acquire(&store, &key(100)).await;
        let mut fences = Vec::new();
        for n in 0..20 {
            fences.push(acquire(&store, &key(n)).await);
        }
        // Renewed a moment later, so each renewal queues its new expiry.
        advance(Duration::from_millis(1)).await;
        for (n, fence) in (0..20).zip(&fences) {
            assert!(store.renew(&key(n), *fence, LEASE).await.unwrap());
        }
        for (n, fence) in (0..20).zip(&fences) {
            assert!(store.release(&key(n), *fence).await.unwrap());
        }
        assert_eq!(queued(&store), (41, 1), "41 items queued for one entry");
        for _ in 0..50 {
            // Each renewal moves the expiry, so each queues an item.
            advance(Duration::from_millis(1)).await;
            assert!(store.renew(&key(100), held, LEASE).await.unwrap());
            let (items, entries) = queued(&store);
            assert!(
                items <= 2 * entries + 17,
                "{items} items for {entries} entries"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_claim_survives_the_end_of_its_first_lease_when_other_keys_arrive() {
        let store = MemoryStore::builder().shards(1).build().unwrap();
        let fence = acquire(&store, &key(1)).await;
        advance(Duration::from_secs(5)).await;
        assert!(store.renew(&key(1), fence, LEASE).await.unwrap());
        advance(Duration::from_secs(5)).await;
        // The first lease's queue item is due now; making room for key 2 drops it, not the claim.
        acquire(&store, &key(2)).await;
        assert_eq!(
            store.claim(&key(1), &fp(2), LEASE).await.unwrap(),
            Claim::InFlight {
                fingerprint: fp(1),
                lease_left: Duration::from_secs(5)
            }
        );
        assert!(store.release(&key(1), fence).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_is_empty_until_a_claim_and_again_after_its_release() {
        let store = MemoryStore::new();
        assert!(store.is_empty());
        let fence = acquire(&store, &key(1)).await;
        assert!(!store.is_empty(), "an in-flight claim is an entry");
        assert!(store.release(&key(1), fence).await.unwrap());
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn max_entries_bounds_the_whole_store_split_over_its_shards() {
        let store = MemoryStore::builder()
            .max_entries(8)
            .shards(4)
            .build()
            .unwrap();
        let mut held = 0;
        for n in 0..200 {
            match store.claim(&key(n), &fp(1), LEASE).await {
                Ok(Claim::Acquired(_)) => held += 1,
                Ok(other) => panic!("a new key is acquired or refused, got {other:?}"),
                Err(err) => assert_eq!(err.kind(), StoreErrorKind::Full),
            }
        }
        assert_eq!(held, 8, "two live claims in each of four shards");
        assert_eq!(store.len(), 8);
    }

    #[test]
    fn each_bound_is_accepted_at_its_edge_and_refused_past_it() {
        let edge = |shards: usize, entries: usize, bytes: usize| {
            MemoryStore::builder()
                .shards(shards)
                .max_entries(entries)
                .max_bytes(bytes)
                .build()
                .map(|store| store.inner.shards.len())
                .map_err(|err| err.to_string())
        };
        assert_eq!(edge(4096, 4096, 4096 * ENTRY_OVERHEAD), Ok(4096));
        assert!(
            edge(4097, 4097, 4097 * ENTRY_OVERHEAD)
                .unwrap_err()
                .contains("shards")
        );
        assert_eq!(edge(4, 4, 1 << 20), Ok(4), "one entry per shard");
        assert!(edge(4, 3, 1 << 20).unwrap_err().contains("max_entries"));
        assert_eq!(
            edge(4, 8, 4 * ENTRY_OVERHEAD),
            Ok(4),
            "one entry's bytes per shard"
        );
        assert!(
            edge(4, 8, 4 * ENTRY_OVERHEAD - 1)
                .unwrap_err()
                .contains("max_bytes")
        );
    }

    #[test]
    fn bad_bounds_are_config_errors() {
        assert!(MemoryStore::builder().shards(0).build().is_err());
        assert!(
            MemoryStore::builder()
                .max_entries(3)
                .shards(4)
                .build()
                .is_err()
        );
        assert!(MemoryStore::builder().max_bytes(10).build().is_err());
    }
}

/// The store against a plain model of the contract in the module docs, on random operations.
#[cfg(test)]
mod model {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    enum Op {
        Claim { key: u8, fp: u8, lease: u8 },
        Renew { key: u8, lease: u8 },
        Complete { key: u8, ttl: u8 },
        Release { key: u8 },
        Advance { secs: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4u8, 0..2u8, 1..20u8).prop_map(|(key, fp, lease)| Op::Claim { key, fp, lease }),
            (0..4u8, 1..20u8).prop_map(|(key, lease)| Op::Renew { key, lease }),
            (0..4u8, 1..40u8).prop_map(|(key, ttl)| Op::Complete { key, ttl }),
            (0..4u8).prop_map(|key| Op::Release { key }),
            (0..15u8).prop_map(|secs| Op::Advance { secs }),
        ]
    }

    /// What the model remembers of a key: fence, fingerprint, expiry (seconds), completed.
    type Model = HashMap<u8, (Fence, u8, u64, bool)>;

    proptest! {
        #[test]
        fn the_memory_store_follows_the_contract(ops in proptest::collection::vec(op(), 1..60)) {
            check(ops)?;
        }
    }

    fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let store = MemoryStore::new();
            let start = Instant::now();
            let mut model = Model::new();
            // The last fence each key got: a stale holder retries with it.
            let mut fences: HashMap<u8, Fence> = HashMap::new();
            let key = |k: u8| StoreKey::derive("m", b"", "POST", "/", &[k]);
            let fp = |f: u8| Fingerprint::from_bytes([f; 32]);
            let record = Record {
                status: 200,
                headers: vec![],
                body: Bytes::from_static(b"r"),
            };
            for op in ops {
                let now = (Instant::now() - start).as_secs();
                let live = |m: &Model, k: u8| m.get(&k).copied().filter(|e| e.2 > now);
                match op {
                    Op::Claim {
                        key: k,
                        fp: f,
                        lease,
                    } => {
                        let got = store
                            .claim(&key(k), &fp(f), Duration::from_secs(lease.into()))
                            .await
                            .unwrap();
                        match (live(&model, k), got) {
                            (None, Claim::Acquired(fence)) => {
                                if let Some(old) = fences.get(&k) {
                                    prop_assert!(fence > *old, "fences grow");
                                }
                                fences.insert(k, fence);
                                model.insert(k, (fence, f, now + u64::from(lease), false));
                            }
                            (
                                Some((_, mf, exp, false)),
                                Claim::InFlight {
                                    fingerprint,
                                    lease_left,
                                },
                            ) => {
                                prop_assert_eq!(fingerprint, fp(mf));
                                prop_assert_eq!(lease_left, Duration::from_secs(exp - now));
                            }
                            (
                                Some((_, mf, _, true)),
                                Claim::Completed {
                                    fingerprint,
                                    record: r,
                                },
                            ) => {
                                prop_assert_eq!(fingerprint, fp(mf));
                                prop_assert_eq!(&r, &record);
                            }
                            (expected, got) => {
                                prop_assert!(false, "model {expected:?}, store {got:?}")
                            }
                        }
                    }
                    Op::Renew { key: k, lease } => {
                        let Some(&fence) = fences.get(&k) else {
                            continue;
                        };
                        let ok = store
                            .renew(&key(k), fence, Duration::from_secs(lease.into()))
                            .await
                            .unwrap();
                        let holds = matches!(live(&model, k), Some((f, _, _, false)) if f == fence);
                        prop_assert_eq!(ok, holds);
                        if holds {
                            model.get_mut(&k).unwrap().2 = now + u64::from(lease);
                        }
                    }
                    Op::Complete { key: k, ttl } => {
                        let Some(&fence) = fences.get(&k) else {
                            continue;
                        };
                        let ok = store
                            .complete(&key(k), fence, &record, Duration::from_secs(ttl.into()))
                            .await
                            .unwrap();
                        let holds = matches!(live(&model, k), Some((f, _, _, false)) if f == fence);
                        prop_assert_eq!(ok, holds);
                        if holds {
                            let e = model.get_mut(&k).unwrap();
                            e.2 = now + u64::from(ttl);
                            e.3 = true;
                        }
                    }
                    Op::Release { key: k } => {
                        let Some(&fence) = fences.get(&k) else {
                            continue;
                        };
                        let ok = store.release(&key(k), fence).await.unwrap();
                        let holds = matches!(live(&model, k), Some((f, _, _, false)) if f == fence);
                        prop_assert_eq!(ok, holds);
                        if holds {
                            model.remove(&k);
                        }
                    }
                    Op::Advance { secs } => {
                        tokio::time::advance(Duration::from_secs(secs.into())).await
                    }
                }
            }
            Ok(())
        })
    }
}
