//! Keyed breakers: independent per key, bounded, idle keys evicted.

mod common;

use std::time::Duration;

use common::{Call, backend, refused};
use tower::{Layer, Service, ServiceExt};
use tower_breaker::{BreakerConfig, BreakerLayer, KeyedBreakerLayer, State};

/// Routes `(key, call)` requests to the backend.
fn keyed_backend() -> impl Service<(u32, Call), Response = u16, Error = common::Boom> + Clone {
    backend().map_request(|(_, call): (u32, Call)| call)
}

fn config() -> BreakerConfig {
    BreakerLayer::builder()
        .metrics(false)
        .consecutive_failures(2)
        .open_time(Duration::from_secs(10))
        .keys(3, Duration::from_secs(60))
        .build_config()
        .unwrap()
}

/// The first field of a `(key, call)` request: its key.
fn first_field(req: &(u32, Call)) -> u32 {
    req.0
}

/// How a `(key, call)` request names its key.
type KeyFn = fn(&(u32, Call)) -> u32;

/// A keyed breaker over [`config`], one breaker per request's first field.
fn keyed_by_first_field() -> KeyedBreakerLayer<u32, KeyFn> {
    KeyedBreakerLayer::new(config(), first_field)
}

async fn call(
    svc: &mut impl Service<(u32, Call), Response = u16, Error = tower_red::BoxError>,
    key: u32,
    c: Call,
) -> Result<u16, tower_red::BoxError> {
    svc.ready().await?.call((key, c)).await
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_breaker() {
    let layer = keyed_by_first_field();
    let mut svc = layer.layer(keyed_backend());
    let mut other = svc.clone();
    call(&mut svc, 1, Call::Fail).await.unwrap_err();
    call(&mut other, 1, Call::Fail).await.unwrap_err();
    assert!(
        refused(&call(&mut svc, 1, Call::Ok).await),
        "key 1 is open for every clone"
    );
    assert_eq!(
        call(&mut svc, 2, Call::Ok).await.unwrap(),
        200,
        "key 2 is not"
    );
    assert_eq!(layer.handle(&1).unwrap().state(), State::Open);
    assert_eq!(layer.handle(&2).unwrap().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn live_keys_are_bounded_and_the_least_recently_used_closed_key_goes() {
    let layer = keyed_by_first_field();
    let mut svc = layer.layer(keyed_backend());
    // Key 1 is open: it must outlive closed keys.
    call(&mut svc, 1, Call::Fail).await.unwrap_err();
    call(&mut svc, 1, Call::Fail).await.unwrap_err();
    for key in 2..=3 {
        tokio::time::advance(Duration::from_secs(1)).await;
        call(&mut svc, key, Call::Ok).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    call(&mut svc, 4, Call::Ok).await.unwrap();
    assert_eq!(layer.live_keys(), 3);
    assert!(
        layer.handle(&2).is_none(),
        "the least recently used closed key was evicted"
    );
    assert_eq!(layer.handle(&1).unwrap().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted_first() {
    let layer = keyed_by_first_field();
    let mut svc = layer.layer(keyed_backend());
    for key in 1..=3 {
        call(&mut svc, key, Call::Ok).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    call(&mut svc, 3, Call::Ok).await.unwrap();
    call(&mut svc, 4, Call::Ok).await.unwrap();
    assert_eq!(layer.live_keys(), 2, "keys 1 and 2 were idle");
    assert!(layer.handle(&3).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_key_idle_for_exactly_the_idle_timeout_is_idle() {
    let layer = keyed_by_first_field();
    let mut svc = layer.layer(keyed_backend());
    for key in 1..=3 {
        call(&mut svc, key, Call::Ok).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(60)).await;
    call(&mut svc, 4, Call::Ok).await.unwrap();
    assert_eq!(
        layer.live_keys(),
        1,
        "keys 1 to 3 were idle for the whole 60 s timeout"
    );
}

/// A call that fails after `after`, started on `svc` and polled once: in flight.
fn failing_in_flight<'a, S>(
    svc: &'a mut S,
    key: u32,
    after: Duration,
) -> tokio_test::task::Spawn<impl std::future::Future<Output = Result<u16, tower_red::BoxError>> + 'a>
where
    S: Service<(u32, Call), Response = u16, Error = tower_red::BoxError>,
{
    let mut call = tokio_test::task::spawn(call(svc, key, Call::SlowFail(after)));
    assert!(call.poll().is_pending(), "key {key}'s call is in flight");
    call
}

#[tokio::test(start_paused = true)]
async fn a_key_with_a_call_in_flight_is_never_the_one_evicted() {
    // Three keys at most. Key 1 has failed once and has a call in flight (it will fail too);
    // a fourth key must evict an idle key, not key 1, or key 1's second failure lands in a
    // breaker no longer in the table and key 1 never opens.
    let layer = keyed_by_first_field();
    let mut svc = layer.layer(keyed_backend());
    let mut slow_svc = svc.clone();
    call(&mut svc, 1, Call::Fail).await.unwrap_err();
    let mut slow = failing_in_flight(&mut slow_svc, 1, Duration::from_secs(10));
    for key in [2, 3, 4] {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(call(&mut svc, key, Call::Ok).await.unwrap(), 200);
    }
    assert_eq!(layer.live_keys(), 3);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(matches!(slow.poll(), std::task::Poll::Ready(Err(_))));
    drop(slow);
    assert!(
        refused(&call(&mut svc, 1, Call::Ok).await),
        "two failures in a row: key 1 is open"
    );
}

#[tokio::test(start_paused = true)]
async fn with_every_key_busy_a_new_key_is_served_without_taking_a_busy_keys_place() {
    // Keys 1 to 3 (the table's bound) have failed once each and have a failing call in flight.
    let layer = keyed_by_first_field();
    let mut svc = layer.layer(keyed_backend());
    for key in 1..=3 {
        call(&mut svc, key, Call::Fail).await.unwrap_err();
    }
    let mut clones: Vec<_> = (0..3).map(|_| svc.clone()).collect();
    let mut in_flight: Vec<_> = clones
        .iter_mut()
        .zip(1u32..)
        .map(|(s, key)| failing_in_flight(s, key, Duration::from_secs(10)))
        .collect();
    // Key 4 still gets an answer, and takes no busy key's place.
    assert_eq!(call(&mut svc, 4, Call::Ok).await.unwrap(), 200);
    assert_eq!(layer.live_keys(), 3);
    tokio::time::advance(Duration::from_secs(10)).await;
    for f in &mut in_flight {
        assert!(matches!(f.poll(), std::task::Poll::Ready(Err(_))));
    }
    drop(in_flight);
    for key in 1..=3 {
        assert!(
            refused(&call(&mut svc, key, Call::Ok).await),
            "key {key}: its second failure landed in its own breaker"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_whose_call_outlasts_the_idle_timeout_is_not_dropped_as_idle() {
    // Key 1's call runs longer than the 60 s idle timeout (a long poll): not idle.
    let layer = keyed_by_first_field();
    let mut svc = layer.layer(keyed_backend());
    let mut slow_svc = svc.clone();
    call(&mut svc, 1, Call::Fail).await.unwrap_err();
    let mut slow = failing_in_flight(&mut slow_svc, 1, Duration::from_secs(100));
    tokio::time::advance(Duration::from_secs(61)).await;
    for key in [2, 3, 4] {
        assert_eq!(call(&mut svc, key, Call::Ok).await.unwrap(), 200);
    }
    tokio::time::advance(Duration::from_secs(40)).await;
    assert!(matches!(slow.poll(), std::task::Poll::Ready(Err(_))));
    drop(slow);
    assert!(
        refused(&call(&mut svc, 1, Call::Ok).await),
        "key 1's second failure counted: open"
    );
}
