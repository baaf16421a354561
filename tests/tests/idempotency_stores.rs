//! One behaviour suite for every idempotency store, run against the memory store, a standalone
//! `redis-server` and a three-master Redis Cluster; then what only Redis can show: keys spread
//! over the cluster, one round trip per operation, foreign entries, and outages in the middle of
//! a run (a private server killed, restarted, frozen; a private cluster's master killed).
//!
//! The Redis backends skip, saying so, when Redis is not there; with `TOWER_REDIS_REQUIRED=1`
//! (set by `.ci/run`) they fail instead. Leases and TTLs run on the store's own clock (Redis's
//! `PX`), so the tests that wait for one poll with a bound instead of pausing time.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tower_idempotency::store::redis::{RedisConnection, RedisStore};
use tower_idempotency::store::{
    Claim, Fence, Fingerprint, MemoryStore, Record, Store, StoreErrorKind, StoreKey,
};

/// The bound on any single store call in these tests: past it, the call hung.
const CALL_BOUND: Duration = Duration::from_secs(5);
/// How long a test polls for a lease or TTL to run out.
const EXPIRY_BOUND: Duration = Duration::from_secs(5);
/// The TTL of completed entries written to a shared Redis: they clean up after themselves.
const TTL: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(30);

/// Unique per process run, so reruns against the same Redis never see each other's keys.
fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{nanos}", std::process::id())
    })
}

fn key(test: &str, i: u64) -> StoreKey {
    StoreKey::derive(
        "tower-tests",
        run_id().as_bytes(),
        "POST",
        test,
        &i.to_be_bytes(),
    )
}

fn fp(tag: &str) -> Fingerprint {
    Fingerprint::compute("POST", "/orders", Some(b"application/json"), tag.as_bytes())
}

fn record(body: &str) -> Record {
    Record {
        status: 201,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: body.to_owned().into(),
    }
}

/// Awaits one store call, failing the test if it takes longer than [`CALL_BOUND`].
async fn bounded<T>(what: &str, call: impl Future<Output = T>) -> T {
    bounded_by(CALL_BOUND, what, call).await
}

async fn bounded_by<T>(limit: Duration, what: &str, call: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, call).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not return within {limit:?}"),
    }
}

async fn acquire<S: Store>(store: &S, key: &StoreKey, fp: &Fingerprint, lease: Duration) -> Fence {
    match bounded("claim", store.claim(key, fp, lease)).await {
        Ok(Claim::Acquired(fence)) => fence,
        other => panic!("a free key must be acquired, got {other:?}"),
    }
}

/// Claims `key` until it is acquired (its lease or TTL ran out), for at most [`EXPIRY_BOUND`].
async fn acquire_once_expired<S: Store>(store: &S, key: &StoreKey, fp: &Fingerprint) -> Fence {
    let started = Instant::now();
    loop {
        match bounded("claim", store.claim(key, fp, LEASE)).await {
            Ok(Claim::Acquired(fence)) => return fence,
            Ok(_) if started.elapsed() < EXPIRY_BOUND => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("the entry did not expire within {EXPIRY_BOUND:?}: {other:?}"),
        }
    }
}

/// The behaviours every store must show, generic over the store.
mod behaviour {
    use super::*;

    pub(crate) async fn a_key_is_acquired_exactly_once_under_concurrent_claims<S: Store>(
        store: Arc<S>,
    ) {
        const CLAIMS: u64 = 200;
        for round in 0..3 {
            let key = key("a_key_is_acquired_exactly_once", round);
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..CLAIMS {
                let store = Arc::clone(&store);
                tasks.spawn(async move {
                    let fp = fp("same body");
                    let out = bounded("claim", store.claim(&key, &fp, LEASE)).await;
                    (i, out)
                });
            }
            let (mut acquired, mut in_flight) = (0, 0);
            while let Some(joined) = bounded("a claim task", tasks.join_next()).await {
                match joined.expect("no claim panics").1 {
                    Ok(Claim::Acquired(_)) => acquired += 1,
                    Ok(Claim::InFlight {
                        fingerprint,
                        lease_left,
                    }) => {
                        assert_eq!(fingerprint, fp("same body"));
                        assert!(lease_left <= LEASE, "lease left {lease_left:?}");
                        in_flight += 1;
                    }
                    other => panic!("unexpected claim result {other:?}"),
                }
            }
            assert_eq!(
                (acquired, in_flight),
                (1, CLAIMS - 1),
                "round {round}: exactly one of {CLAIMS} concurrent claims may win"
            );
        }
    }

    pub(crate) async fn a_lapsed_lease_admits_a_new_holder_with_a_greater_fence<S: Store>(
        store: Arc<S>,
    ) {
        let key = key("a_lapsed_lease_admits_a_new_holder", 0);
        let lease = Duration::from_millis(150);
        let stale = acquire(&*store, &key, &fp("a"), lease).await;
        match bounded("claim", store.claim(&key, &fp("a"), LEASE)).await {
            Ok(Claim::InFlight { lease_left, .. }) => {
                assert!(lease_left <= lease, "lease left {lease_left:?}")
            }
            other => panic!("a held key must be in flight, got {other:?}"),
        }
        let fresh = acquire_once_expired(&*store, &key, &fp("a")).await;
        assert!(fresh > stale, "fence {fresh:?} must exceed {stale:?}");

        // The stale holder is fenced out of every write...
        let r = record("stale");
        assert!(
            !bounded("renew", store.renew(&key, stale, LEASE))
                .await
                .unwrap()
        );
        assert!(
            !bounded("complete", store.complete(&key, stale, &r, TTL))
                .await
                .unwrap()
        );
        assert!(
            !bounded("release", store.release(&key, stale))
                .await
                .unwrap()
        );
        // ...and none of them disturbed the new holder.
        match bounded("claim", store.claim(&key, &fp("a"), LEASE)).await {
            Ok(Claim::InFlight { lease_left, .. }) => {
                assert!(lease_left > Duration::from_secs(1), "{lease_left:?}")
            }
            other => panic!("the new holder must still hold the key, got {other:?}"),
        }
        let r = record("fresh");
        assert!(
            bounded("complete", store.complete(&key, fresh, &r, TTL))
                .await
                .unwrap()
        );
        match bounded("claim", store.claim(&key, &fp("a"), LEASE)).await {
            Ok(Claim::Completed { record, .. }) => assert_eq!(record, r),
            other => panic!("expected the new holder's record, got {other:?}"),
        }
    }

    pub(crate) async fn a_completion_is_replayed_with_its_fingerprint<S: Store>(store: Arc<S>) {
        let key = key("a_completion_is_replayed", 0);
        let fence = acquire(&*store, &key, &fp("first"), LEASE).await;
        let r = record("created order 7");
        assert!(
            bounded("complete", store.complete(&key, fence, &r, TTL))
                .await
                .unwrap()
        );
        for asked_with in ["first", "another payload"] {
            match bounded("claim", store.claim(&key, &fp(asked_with), LEASE)).await {
                Ok(Claim::Completed {
                    fingerprint,
                    record,
                }) => {
                    // The stored fingerprint, so the layer can tell a mismatch (422).
                    assert_eq!(fingerprint, fp("first"));
                    assert_eq!(record, r);
                }
                other => panic!("expected a replay, got {other:?}"),
            }
        }
        // A completed entry has no holder any more: nothing may rewrite or free it.
        let other = record("overwritten");
        assert!(
            !bounded("complete", store.complete(&key, fence, &other, TTL))
                .await
                .unwrap()
        );
        assert!(
            !bounded("renew", store.renew(&key, fence, LEASE))
                .await
                .unwrap()
        );
        assert!(
            !bounded("release", store.release(&key, fence))
                .await
                .unwrap()
        );
        match bounded("claim", store.claim(&key, &fp("first"), LEASE)).await {
            Ok(Claim::Completed { record, .. }) => assert_eq!(record, r),
            other => panic!("the record must be unchanged, got {other:?}"),
        }
    }

    pub(crate) async fn a_completed_entry_runs_again_after_its_ttl<S: Store>(store: Arc<S>) {
        let key = key("a_completed_entry_runs_again", 0);
        let fence = acquire(&*store, &key, &fp("a"), LEASE).await;
        let r = record("short-lived");
        let ttl = Duration::from_millis(150);
        assert!(
            bounded("complete", store.complete(&key, fence, &r, ttl))
                .await
                .unwrap()
        );
        assert!(matches!(
            bounded("claim", store.claim(&key, &fp("a"), LEASE)).await,
            Ok(Claim::Completed { .. })
        ));
        let again = acquire_once_expired(&*store, &key, &fp("a")).await;
        assert!(again > fence, "fence {again:?} must exceed {fence:?}");
    }

    pub(crate) async fn release_frees_the_key_for_the_next_claim<S: Store>(store: Arc<S>) {
        let key = key("release_frees_the_key", 0);
        let first = acquire(&*store, &key, &fp("a"), LEASE).await;
        assert!(
            bounded("release", store.release(&key, first))
                .await
                .unwrap()
        );
        assert!(
            !bounded("release", store.release(&key, first))
                .await
                .unwrap(),
            "a second release finds nothing to free"
        );
        let second = acquire(&*store, &key, &fp("b"), LEASE).await;
        assert!(second > first, "fence {second:?} must exceed {first:?}");
        assert!(
            !bounded("release", store.release(&key, first))
                .await
                .unwrap(),
            "the old fence must not free the new holder's claim"
        );
        assert!(matches!(
            bounded("claim", store.claim(&key, &fp("b"), LEASE)).await,
            Ok(Claim::InFlight { .. })
        ));
    }

    pub(crate) async fn renew_extends_the_holders_lease<S: Store>(store: Arc<S>) {
        let key = key("renew_extends_the_lease", 0);
        let fence = acquire(&*store, &key, &fp("a"), Duration::from_millis(200)).await;
        assert!(
            bounded("renew", store.renew(&key, fence, LEASE))
                .await
                .unwrap()
        );
        match bounded("claim", store.claim(&key, &fp("a"), LEASE)).await {
            Ok(Claim::InFlight { lease_left, .. }) => assert!(
                lease_left > Duration::from_secs(10),
                "renewed lease left {lease_left:?}"
            ),
            other => panic!("a renewed key must be in flight, got {other:?}"),
        }
        let wrong = Fence::new(fence.get() + 1);
        assert!(
            !bounded("renew", store.renew(&key, wrong, LEASE))
                .await
                .unwrap()
        );
    }

    pub(crate) async fn distinct_keys_do_not_interfere<S: Store>(store: Arc<S>) {
        const KEYS: u64 = 50;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..KEYS {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                let key = key("distinct_keys_do_not_interfere", i);
                let fence = acquire(&*store, &key, &fp(&i.to_string()), LEASE).await;
                if i % 2 == 0 {
                    let r = record(&format!("body {i}"));
                    assert!(
                        bounded("complete", store.complete(&key, fence, &r, TTL))
                            .await
                            .unwrap()
                    );
                } else {
                    assert!(
                        bounded("release", store.release(&key, fence))
                            .await
                            .unwrap()
                    );
                }
                fence
            });
        }
        let mut fences = Vec::new();
        while let Some(joined) = bounded("a key's task", tasks.join_next()).await {
            fences.push(joined.expect("no task panics"));
        }
        assert_eq!(fences.len(), KEYS as usize);
        for i in 0..KEYS {
            let key = key("distinct_keys_do_not_interfere", i);
            match bounded("claim", store.claim(&key, &fp(&i.to_string()), LEASE)).await {
                Ok(Claim::Completed {
                    fingerprint,
                    record: r,
                }) if i % 2 == 0 => {
                    assert_eq!(fingerprint, fp(&i.to_string()));
                    assert_eq!(r, record(&format!("body {i}")));
                }
                Ok(Claim::Acquired(_)) if i % 2 == 1 => {}
                other => panic!("key {i}: unexpected {other:?}"),
            }
        }
    }
}

/// Runs every behaviour against one backend: `$make(test name)` gives `Option<Arc<impl Store>>`
/// (`None`: the backend is not there and not required; the test says it skipped).
macro_rules! behaviour_suite {
    ($backend:ident, $make:path) => {
        mod $backend {
            use super::*;

            behaviour_suite!(@test $make, a_key_is_acquired_exactly_once_under_concurrent_claims);
            behaviour_suite!(@test $make, a_lapsed_lease_admits_a_new_holder_with_a_greater_fence);
            behaviour_suite!(@test $make, a_completion_is_replayed_with_its_fingerprint);
            behaviour_suite!(@test $make, a_completed_entry_runs_again_after_its_ttl);
            behaviour_suite!(@test $make, release_frees_the_key_for_the_next_claim);
            behaviour_suite!(@test $make, renew_extends_the_holders_lease);
            behaviour_suite!(@test $make, distinct_keys_do_not_interfere);
        }
    };
    (@test $make:path, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let test = concat!(module_path!(), "::", stringify!($name));
            let Some(store) = $make(test).await else {
                return;
            };
            behaviour::$name(store).await;
        }
    };
}

async fn memory(_test: &str) -> Option<Arc<MemoryStore>> {
    Some(Arc::new(MemoryStore::new()))
}

/// A prefix of this run's own, so a shared Redis never mixes runs.
fn prefix() -> String {
    format!("tower-tests:{}:", run_id())
}

async fn redis_standalone(test: &str) -> Option<Arc<RedisStore>> {
    // Says it skipped, or fails under TOWER_REDIS_REQUIRED, when Redis is not there.
    tests::redis_connection(test).await?;
    let connection = RedisConnection::connect(&tests::redis_url())
        .await
        .expect("connect the store to the test Redis");
    Some(Arc::new(
        RedisStore::builder()
            .prefix(prefix())
            .build(connection)
            .expect("a valid store config"),
    ))
}

async fn redis_cluster(test: &str) -> Option<Arc<RedisStore>> {
    let urls = tests::redis_cluster_urls(test).await?;
    let connection = RedisConnection::connect_cluster(&urls)
        .await
        .expect("connect the store to the test Redis Cluster");
    Some(Arc::new(
        RedisStore::builder()
            .prefix(prefix())
            .build(connection)
            .expect("a valid store config"),
    ))
}

behaviour_suite!(memory_store, memory);
behaviour_suite!(redis_store, redis_standalone);
behaviour_suite!(redis_cluster_store, redis_cluster);

fn note(line: &str) {
    // Straight to the terminal: the figures belong in the test log even when the test passes.
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_entries_spread_over_every_master_with_both_keys_in_one_slot() {
    let test = "redis_cluster_entries_spread_over_every_master_with_both_keys_in_one_slot";
    let Some(urls) = tests::redis_cluster_urls(test).await else {
        return;
    };
    let store = redis_cluster(test).await.expect("the cluster is up");
    let mut nodes = Vec::new();
    for url in &urls {
        let client = redis::Client::open(url.as_str()).expect("a valid URL");
        let mut conn = bounded("connect", client.get_multiplexed_async_connection())
            .await
            .expect("a cluster node accepts a connection");
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await.unwrap();
        if role.first() == Some(&redis::Value::BulkString(b"master".to_vec())) {
            nodes.push((url.clone(), conn));
        }
    }
    assert!(
        nodes.len() >= 3,
        "expected three masters, found {}",
        nodes.len()
    );

    const KEYS: u64 = 60;
    let mut holders = BTreeSet::new();
    for i in 0..KEYS {
        let key = key(test, i);
        let fence = acquire(&*store, &key, &fp("a"), LEASE).await;
        assert!(
            bounded("release", store.release(&key, fence))
                .await
                .unwrap()
        );
        let fence = acquire(&*store, &key, &fp("a"), LEASE).await;
        assert!(fence.get() > 0);
        let entry = store.entry_key(&key);
        let counter = format!("{entry}:fence");
        let conn = &mut nodes[0].1;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&entry)
            .query_async(conn)
            .await
            .unwrap();
        let counter_slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&counter)
            .query_async(conn)
            .await
            .unwrap();
        assert_eq!(
            slot, counter_slot,
            "entry and fence counter must share a slot"
        );
        let mut held_by = Vec::new();
        for (url, conn) in &mut nodes {
            let exists: i64 = redis::cmd("EXISTS")
                .arg(&entry)
                .arg(&counter)
                .query_async(conn)
                .await
                .unwrap_or(0); // a node that does not own the slot answers MOVED
            if exists > 0 {
                assert_eq!(exists, 2, "{url} holds only one of the entry's two keys");
                held_by.push(url.clone());
            }
        }
        assert_eq!(
            held_by.len(),
            1,
            "key {i} (slot {slot}) held by {held_by:?}"
        );
        holders.extend(held_by);
        assert!(
            bounded("release", store.release(&key, fence))
                .await
                .unwrap()
        );
    }
    note(&format!("{KEYS} entries spread over masters {holders:?}"));
    assert_eq!(
        holders.len(),
        nodes.len(),
        "every master must hold some entries"
    );
}

/// The commands that only run inside our scripts: Redis counts them in `INFO commandstats`, but
/// they are not round trips.
const SCRIPT_INNER: &[&str] = &[
    "hmget", "hset", "time", "get", "set", "del", "pttl", "pexpire",
];

/// Round trips and `EVALSHA`s since the last reset: every command a client sent, less the
/// test's own `INFO` and `CONFIG RESETSTAT`.
async fn round_trips(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let calls = tests::redis_command_calls(conn).await;
    let trips = calls
        .iter()
        .filter(|(name, _)| {
            !SCRIPT_INNER.contains(&name.as_str()) && *name != "info" && *name != "config|resetstat"
        })
        .map(|(_, n)| n)
        .sum();
    (trips, calls.get("evalsha").copied().unwrap_or(0))
}

async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .expect("CONFIG RESETSTAT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redis_store_operation_is_one_round_trip() {
    let test = "every_redis_store_operation_is_one_round_trip";
    let Some(server) = tests::PrivateRedis::start(test).await else {
        return;
    };
    let mut admin = server.connection().await;
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    // Warm-up: the first call of each script loads it (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA).
    let warm = key(test, u64::MAX);
    let fence = acquire(&store, &warm, &fp("a"), LEASE).await;
    assert!(store.renew(&warm, fence, LEASE).await.unwrap());
    assert!(
        store
            .complete(&warm, fence, &record("w"), TTL)
            .await
            .unwrap()
    );
    let fence = acquire(&store, &key(test, u64::MAX - 1), &fp("a"), LEASE).await;
    assert!(
        store
            .release(&key(test, u64::MAX - 1), fence)
            .await
            .unwrap()
    );

    const N: u64 = 20;
    let keys: Vec<StoreKey> = (0..N).map(|i| key(test, i)).collect();
    let mut fences = Vec::new();
    let mut report = Vec::new();
    let half = N as usize / 2;
    let mut measure = |op: &'static str, calls: u64, (trips, evalsha): (u64, u64)| {
        assert_eq!(trips, calls, "{op}: {trips} round trips for {calls} calls");
        assert_eq!(evalsha, calls, "{op}: {evalsha} EVALSHA for {calls} calls");
        report.push(format!("{op}: {trips} round trips / {calls} calls"));
    };

    reset_stats(&mut admin).await;
    for k in &keys {
        fences.push(acquire(&store, k, &fp("a"), LEASE).await);
    }
    measure("claim (acquired)", N, round_trips(&mut admin).await);

    reset_stats(&mut admin).await;
    for k in &keys {
        let out = store.claim(k, &fp("a"), LEASE).await.unwrap();
        assert!(matches!(out, Claim::InFlight { .. }));
    }
    measure("claim (in flight)", N, round_trips(&mut admin).await);

    reset_stats(&mut admin).await;
    for (k, f) in keys.iter().zip(&fences) {
        assert!(store.renew(k, *f, LEASE).await.unwrap());
    }
    measure("renew", N, round_trips(&mut admin).await);

    reset_stats(&mut admin).await;
    for (k, f) in keys.iter().zip(&fences).take(half) {
        assert!(store.complete(k, *f, &record("r"), TTL).await.unwrap());
    }
    measure("complete", N / 2, round_trips(&mut admin).await);

    reset_stats(&mut admin).await;
    for (k, f) in keys.iter().zip(&fences).skip(half) {
        assert!(store.release(k, *f).await.unwrap());
    }
    measure("release", N / 2, round_trips(&mut admin).await);

    reset_stats(&mut admin).await;
    for k in keys.iter().take(half) {
        let out = store.claim(k, &fp("a"), LEASE).await.unwrap();
        assert!(matches!(out, Claim::Completed { .. }));
    }
    measure("claim (replay)", N / 2, round_trips(&mut admin).await);

    reset_stats(&mut admin).await;
    for (k, f) in keys.iter().zip(&fences).skip(half) {
        assert!(!store.complete(k, *f, &record("late"), TTL).await.unwrap());
    }
    measure(
        "complete (fenced out)",
        N / 2,
        round_trips(&mut admin).await,
    );

    for line in report {
        note(&format!("round trips: {line}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_each_call_in_bounded_time_and_the_store_recovers() {
    let test = "a_redis_outage_fails_each_call_in_bounded_time_and_the_store_recovers";
    let Some(mut server) = tests::PrivateRedis::start(test).await else {
        return;
    };
    let op_timeout = Duration::from_millis(500);
    let connection = RedisConnection::connect(&server.url())
        .await
        .expect("connect");
    let store = RedisStore::builder()
        .timeout(op_timeout)
        .build(connection)
        .expect("a valid store config");
    let held = key(test, 0);
    let fence = acquire(&store, &held, &fp("a"), LEASE).await;

    // Every kind of call fails, none panics, none outlives the store's bound (plus slack).
    const ROUNDS: u64 = 3;
    let per_call = op_timeout + Duration::from_millis(250);
    let phase_bound = per_call * 4 * ROUNDS as u32;
    let all_fail = |phase: &'static str, expected: &'static [StoreErrorKind]| {
        let store = store.clone();
        async move {
            for i in 0..ROUNDS {
                let probe = key(test, 100 + i);
                let started = Instant::now();
                let errors = [
                    store.claim(&probe, &fp("a"), LEASE).await.err(),
                    store.renew(&held, fence, LEASE).await.err(),
                    store.complete(&held, fence, &record("x"), TTL).await.err(),
                    store.release(&held, fence).await.err(),
                ];
                let took = started.elapsed();
                let mut kinds = Vec::new();
                for err in errors {
                    let err = err.unwrap_or_else(|| panic!("{phase}: a call succeeded"));
                    kinds.push(err.kind());
                    assert!(
                        expected.contains(&err.kind()),
                        "{phase}: unexpected {:?} ({err})",
                        err.kind()
                    );
                }
                assert!(took < 4 * per_call, "{phase}: four calls took {took:?}");
                note(&format!(
                    "{phase}: four failed calls in {took:?}: {kinds:?}"
                ));
            }
        }
    };

    server.stop();
    bounded_by(
        phase_bound,
        "calls while Redis is down",
        all_fail(
            "down",
            &[StoreErrorKind::Unavailable, StoreErrorKind::Timeout],
        ),
    )
    .await;

    server.restart().await;
    let back = wait_until_the_store_answers(&store, test).await;
    note(&format!("store answered again {back:?} after the restart"));
    // Redis lost everything in the crash: the old claim is gone and the key runs again.
    assert!(
        !bounded("release", store.release(&held, fence))
            .await
            .unwrap()
    );
    let after = acquire(&store, &held, &fp("a"), LEASE).await;
    assert!(
        after > fence,
        "a fence after the crash ({after:?}) must exceed {fence:?}"
    );
    assert!(
        bounded(
            "complete",
            store.complete(&held, after, &record("done"), TTL)
        )
        .await
        .unwrap()
    );

    // A frozen Redis accepts nothing and answers nothing: calls time out, then it recovers.
    server.freeze();
    bounded_by(
        phase_bound,
        "calls while Redis is frozen",
        all_fail("frozen", &[StoreErrorKind::Timeout]),
    )
    .await;
    server.thaw();
    let back = wait_until_the_store_answers(&store, test).await;
    note(&format!("store answered again {back:?} after the thaw"));
    match bounded("claim", store.claim(&held, &fp("a"), LEASE)).await {
        Ok(Claim::Completed { record: r, .. }) => assert_eq!(r, record("done")),
        other => panic!("the completion before the freeze must survive it, got {other:?}"),
    }
}

/// Claims fresh keys until the store answers again, for at most ten seconds; how long it took.
async fn wait_until_the_store_answers(store: &RedisStore, test: &str) -> Duration {
    let started = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        let probe = key(test, 1_000 + i);
        match bounded("claim", store.claim(&probe, &fp("a"), LEASE)).await {
            Ok(Claim::Acquired(fence)) => {
                assert!(
                    bounded("release", store.release(&probe, fence))
                        .await
                        .unwrap()
                );
                return started.elapsed();
            }
            Ok(other) => panic!("a fresh key must be acquired, got {other:?}"),
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("the store did not recover within 10 s: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_or_corrupt_redis_entry_is_an_error_never_a_panic() {
    let test = "a_foreign_or_corrupt_redis_entry_is_an_error_never_a_panic";
    let Some(mut conn) = tests::redis_connection(test).await else {
        return;
    };
    let store = redis_standalone(test).await.expect("Redis is up");
    let store_entry = |i: u64| store.entry_key(&key(test, i));
    let plant = |i: u64, cmd: redis::Cmd| {
        let mut conn = conn.clone();
        async move {
            let () = cmd.query_async(&mut conn).await.expect("plant an entry");
            let _: i64 = redis::cmd("PEXPIRE")
                .arg(store_entry(i))
                .arg(60_000)
                .query_async(&mut conn)
                .await
                .expect("PEXPIRE");
        }
    };

    // 0: not a hash at all; 1: a completed entry whose record is garbage; 2: an in-flight entry
    // whose fingerprint is not 32 bytes; 3: an entry in a state we never write.
    let mut set = redis::cmd("SET");
    set.arg(store_entry(0)).arg("someone else's value");
    plant(0, set).await;
    let mut hset = redis::cmd("HSET");
    hset.arg(store_entry(1))
        .arg("st")
        .arg("c")
        .arg("fp")
        .arg(&[7u8; 32][..])
        .arg("rec")
        .arg("not a record");
    plant(1, hset).await;
    let mut hset = redis::cmd("HSET");
    hset.arg(store_entry(2))
        .arg("st")
        .arg("i")
        .arg("fp")
        .arg("short")
        .arg("fe")
        .arg("1");
    plant(2, hset).await;

    for i in 0..3 {
        let err = bounded("claim", store.claim(&key(test, i), &fp("a"), LEASE))
            .await
            .expect_err("a foreign entry cannot be claimed");
        assert_eq!(err.kind(), StoreErrorKind::Corrupt, "entry {i}: {err}");
    }
    let fence = Fence::new(1);
    let k = key(test, 0);
    for err in [
        bounded("renew", store.renew(&k, fence, LEASE)).await.err(),
        bounded("complete", store.complete(&k, fence, &record("x"), TTL))
            .await
            .err(),
        bounded("release", store.release(&k, fence)).await.err(),
    ] {
        let err = err.expect("a write over a foreign entry must fail");
        assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
    }
    // A garbage fence counter does not stop a claim, and the fence still comes from the clock.
    let free = key(test, 3);
    let () = redis::cmd("SET")
        .arg(format!("{}:fence", store.entry_key(&free)))
        .arg("not a number")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("plant a counter");
    let fence = acquire(&*store, &free, &fp("a"), LEASE).await;
    assert!(fence.get() > 1_600_000_000_000_000, "{fence:?}");
    assert!(
        bounded("release", store.release(&free, fence))
            .await
            .unwrap()
    );
}

/// Which of `nodes` holds `entry` (asked directly; a node that does not own the slot answers
/// `MOVED`, read as "not here").
async fn owner(urls: &[String], entry: &str) -> Option<usize> {
    for (i, url) in urls.iter().enumerate() {
        let client = redis::Client::open(url.as_str()).expect("a valid URL");
        let Ok(Ok(mut conn)) = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            continue;
        };
        let exists: i64 = redis::cmd("EXISTS")
            .arg(entry)
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        if exists == 1 {
            return Some(i);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_mid_run_fails_calls_in_bounded_time_and_the_store_recovers() {
    let test = "a_cluster_master_killed_mid_run_fails_calls_in_bounded_time_and_the_store_recovers";
    let Some(mut cluster) = tests::PrivateRedisCluster::start(test).await else {
        return;
    };
    let urls = cluster.urls();
    let op_timeout = Duration::from_millis(500);
    let connection = RedisConnection::connect_cluster(&urls)
        .await
        .expect("connect");
    let store = RedisStore::builder()
        .timeout(op_timeout)
        .build(connection)
        .expect("a valid store config");

    // Claim keys until some live on node 0 (the victim) and some elsewhere.
    let (mut victims, mut survivors) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let k = key(test, i);
        let fence = acquire(&store, &k, &fp("a"), LEASE).await;
        match owner(&urls, &store.entry_key(&k)).await {
            Some(0) => victims.push((k, fence)),
            Some(_) => survivors.push((k, fence)),
            None => panic!("key {i} is on no node"),
        }
        if victims.len() >= 3 && survivors.len() >= 3 {
            break;
        }
    }
    assert!(
        victims.len() >= 3 && survivors.len() >= 3,
        "keys did not spread"
    );

    cluster.node(0).stop();
    let per_call = op_timeout + Duration::from_millis(250);
    for (k, fence) in &victims {
        let started = Instant::now();
        let out = bounded("claim on a dead master", store.claim(k, &fp("a"), LEASE)).await;
        let err = out.expect_err("a key on a dead master cannot be claimed");
        assert!(
            matches!(
                err.kind(),
                StoreErrorKind::Unavailable | StoreErrorKind::Timeout
            ),
            "{err}"
        );
        let renewed = bounded("renew on a dead master", store.renew(k, *fence, LEASE)).await;
        assert!(renewed.is_err(), "renew on a dead master: {renewed:?}");
        assert!(
            started.elapsed() < 2 * per_call,
            "took {:?}",
            started.elapsed()
        );
    }
    // Keys on the live masters answer or fail (once the cluster marks itself down), but in time.
    for (k, _) in &survivors {
        let started = Instant::now();
        let _ = bounded("claim on a live master", store.claim(k, &fp("a"), LEASE)).await;
        assert!(started.elapsed() < per_call, "took {:?}", started.elapsed());
    }

    cluster.node(0).restart().await;
    cluster.wait_until_ok().await;
    // The victim lost its data (nothing persisted): its keys are free again, with greater fences.
    let started = Instant::now();
    let (k, old) = victims[0];
    let fresh = loop {
        match bounded("claim", store.claim(&k, &fp("a"), LEASE)).await {
            Ok(Claim::Acquired(fence)) => break fence,
            Ok(other) => panic!("the restarted master kept an entry: {other:?}"),
            Err(err) => {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "the store did not recover within 15 s: {err}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    note(&format!(
        "cluster store answered again {:?} after the restart",
        started.elapsed()
    ));
    assert!(
        fresh > old,
        "fence {fresh:?} after the crash must exceed {old:?}"
    );
    // The live masters kept theirs.
    for (k, _) in &survivors {
        assert!(matches!(
            bounded("claim", store.claim(k, &fp("a"), LEASE)).await,
            Ok(Claim::InFlight { .. })
        ));
    }
}
