//! The Redis plumbing every Redis-backed test uses: a real `redis-server` on loopback.
//!
//! Without Redis these tests say that they skipped; with `TOWER_REDIS_REQUIRED=1` (set by
//! `.ci/run`) an unreachable Redis fails them.

use tests::redis_connection;

#[tokio::test]
async fn redis_claims_a_key_atomically_once() {
    let Some(mut conn) = redis_connection("redis_claims_a_key_atomically_once").await else {
        return;
    };
    let key = format!("tower-tests:claim:{}:{}", std::process::id(), rand_suffix());
    let first: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg("owner-1")
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET NX");
    let second: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg("owner-2")
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET NX");
    assert_eq!(first.as_deref(), Some("OK"));
    assert_eq!(second, None, "a second claim must not win");
    let owner: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(owner, "owner-1");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!((1..=60_000).contains(&ttl), "lease must expire, got {ttl}");
    let deleted: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert_eq!(deleted, 1);
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
