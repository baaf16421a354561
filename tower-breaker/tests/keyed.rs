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
