//! Keyed breakers: one layer holding an independent breaker per key taken from the request,
//! such as the host a client calls or the route a server serves.
//!
//! Every key's breaker has the layer's configuration and shares its metric handles (the key
//! is never a label: keys are unbounded). Live keys are bounded by
//! [`BreakerBuilder::keys`](crate::BreakerBuilder::keys): a new key first evicts
//! keys idle for longer than the idle timeout, then, if still full, the least recently used
//! closed key (or, when every key is tripped, the least recently used one).
//!
//! Finding the key's breaker takes a read lock on the key map, and the key function may
//! allocate; the breaker itself then costs what an unkeyed one does.
//!
//! ```
//! use tower::{service_fn, ServiceExt};
//! use tower_breaker::{BreakerLayer, State};
//! use tower::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = BreakerLayer::builder()
//!     .consecutive_failures(1)
//!     .build_keyed(|req: &http::Request<()>| req.uri().host().unwrap_or_default().to_owned())
//!     .unwrap();
//! let svc = layer.layer(service_fn(|req: http::Request<()>| async move {
//!     if req.uri().host() == Some("down.example") { Err("refused") } else { Ok(()) }
//! }));
//! let get = |uri: &str| http::Request::get(uri).body(()).unwrap();
//! assert!(svc.clone().oneshot(get("http://down.example/")).await.is_err());
//! assert!(svc.clone().oneshot(get("http://up.example/")).await.is_ok());
//! assert_eq!(layer.handle(&"down.example".to_owned()).unwrap().state(), State::Open);
//! assert_eq!(layer.handle(&"up.example".to_owned()).unwrap().state(), State::Closed);
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_layer::Layer;
use tower_red::BoxError;
use tower_red::classify::{AnyError, Classify};
use tower_service::Service;

use crate::config::BreakerConfig;
use crate::event::State;
use crate::future::{Permit, ResponseFuture};
use crate::handle::BreakerHandle;
use crate::machine::Machine;
use crate::metrics::Metrics;

struct Entry {
    machine: Arc<Machine>,
    /// When the key was last used. Every access is `Relaxed`: it is an eviction hint that
    /// publishes nothing else, and a stale reading only picks another idle key to evict.
    last_used: AtomicU64,
}

struct Keys<K> {
    config: BreakerConfig,
    metrics: Option<Arc<Metrics>>,
    base: Instant,
    map: RwLock<HashMap<K, Entry>>,
}

/// Whether a key's breaker is held beyond the table: by a call in flight (its permit), a
/// readiness reserved in `poll_ready`, or a [`BreakerHandle`] taken with
/// `KeyedBreakerHandle::breakers`.
fn busy(entry: &Entry) -> bool {
    Arc::strong_count(&entry.machine) > 1
}

impl<K: Hash + Eq + Clone> Keys<K> {
    fn now(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.base)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    fn get(&self, key: &K) -> Option<Arc<Machine>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(key).map(|e| e.machine.clone())
    }

    fn machine(&self, key: K) -> Arc<Machine> {
        let now = self.now();
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = map.get(&key) {
                entry.last_used.store(now, Ordering::Relaxed);
                return entry.machine.clone();
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get(&key) {
            entry.last_used.store(now, Ordering::Relaxed);
            return entry.machine.clone();
        }
        if map.len() >= self.config.max_keys {
            let idle = u64::try_from(self.config.idle_key_timeout.as_nanos()).unwrap_or(u64::MAX);
            map.retain(|_, e| {
                busy(e) || now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < idle
            });
        }
        let machine = Arc::new(Machine::with_metrics(
            self.config.clone(),
            self.metrics.clone(),
            false,
        ));
        if map.len() >= self.config.max_keys {
            // An idle key, closed ones first, least recently used first. A key with a call in
            // flight (or a probe out) is never the victim: its call would end in a breaker no
            // longer in the table, and its key would start again closed.
            let victim = map
                .iter()
                .filter(|(_, e)| !busy(e))
                .min_by_key(|(_, e)| {
                    (
                        e.machine.state() != State::Closed,
                        e.last_used.load(Ordering::Relaxed),
                    )
                })
                .map(|(k, _)| k.clone());
            match victim {
                Some(victim) => {
                    map.remove(&victim);
                }
                // Every key is busy: this call gets a breaker of its own, kept nowhere (it
                // guards nothing beyond the call), rather than one taken from a busy key.
                None => return machine,
            }
        }
        map.insert(
            key,
            Entry {
                machine: machine.clone(),
                last_used: AtomicU64::new(now),
            },
        );
        machine
    }
}

/// Builds [`KeyedBreaker`]s: one breaker per key that `key_fn` takes from the request. All
/// services built by the layer, and their clones, share the keys.
#[must_use]
pub struct KeyedBreakerLayer<K, F, C = AnyError> {
    keys: Arc<Keys<K>>,
    key_fn: F,
    classifier: C,
}

impl<K, F: Clone, C: Clone> Clone for KeyedBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        KeyedBreakerLayer {
            keys: self.keys.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K, F, C: fmt::Debug> fmt::Debug for KeyedBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakerLayer")
            .field("config", &self.keys.config)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<K, F> KeyedBreakerLayer<K, F, AnyError>
where
    K: Hash + Eq + Clone,
{
    /// One breaker per `key_fn(&request)`, each configured by `config` (from
    /// [`BreakerBuilder::build_config`](crate::BreakerBuilder::build_config); or build the
    /// layer with [`BreakerBuilder::build_keyed`](crate::BreakerBuilder::build_keyed)).
    pub fn new(config: BreakerConfig, key_fn: F) -> Self {
        let metrics = config.metrics.then(|| Arc::new(Metrics::new(&config.name)));
        KeyedBreakerLayer {
            keys: Arc::new(Keys {
                config,
                metrics,
                base: Instant::now(),
                map: RwLock::new(HashMap::new()),
            }),
            key_fn,
            classifier: AnyError,
        }
    }
}

impl<K: Hash + Eq + Clone, F, C> KeyedBreakerLayer<K, F, C> {
    /// Uses `classifier` to decide which outcomes are failures.
    pub fn with_classifier<C2>(self, classifier: C2) -> KeyedBreakerLayer<K, F, C2> {
        KeyedBreakerLayer {
            keys: self.keys,
            key_fn: self.key_fn,
            classifier,
        }
    }

    /// A handle on the breaker of `key`, if it is live.
    pub fn handle(&self, key: &K) -> Option<BreakerHandle> {
        self.keys.get(key).map(BreakerHandle::new)
    }

    /// How many keys have a live breaker.
    pub fn live_keys(&self) -> usize {
        self.keys_handle().live_keys()
    }

    /// A handle on every live key's breaker: a readiness
    /// [`Dependency`](tower_red::readiness::Dependency) for the whole layer.
    pub fn keys_handle(&self) -> KeyedBreakerHandle<K> {
        KeyedBreakerHandle {
            keys: self.keys.clone(),
        }
    }
}

/// A handle on all the live breakers of one [`KeyedBreakerLayer`], from
/// [`KeyedBreakerLayer::keys_handle`]. Cheap to clone; it sees keys as they come and go.
///
/// As a readiness [`Dependency`](tower_red::readiness::Dependency) the layer is one dependency
/// whose keys are usually replicas or hosts of one service: it is **available while any live
/// key's breaker admits calls** (or no key is live yet), and unavailable once every live key
/// refuses them. Its state is `closed` when no key refuses calls, `partially_open` when some
/// do and `open` when all do; `open_for_ms` (when all refuse) is the time until the first of
/// them may be tried again. Its counts are `keys`, `open` (keys refusing calls), `half_open`
/// and `rejected_total` (calls refused by the live keys). To make one key critical on its own,
/// register that key's [`KeyedBreakerLayer::handle`] instead.
pub struct KeyedBreakerHandle<K> {
    keys: Arc<Keys<K>>,
}

impl<K> Clone for KeyedBreakerHandle<K> {
    fn clone(&self) -> Self {
        KeyedBreakerHandle {
            keys: self.keys.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedBreakerHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakerHandle")
            .field("name", &self.keys.config.name)
            .finish_non_exhaustive()
    }
}

impl<K> KeyedBreakerHandle<K> {
    /// The layer's name (every key's breaker has it).
    pub fn name(&self) -> &str {
        &self.keys.config.name
    }

    /// How many keys have a live breaker.
    pub fn live_keys(&self) -> usize {
        self.keys
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// A handle on each live key's breaker, taken under one read of the key map.
    pub fn breakers(&self) -> Vec<BreakerHandle> {
        self.keys
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|entry| BreakerHandle::new(entry.machine.clone()))
            .collect()
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for KeyedBreakerLayer<K, F, C> {
    type Service = KeyedBreaker<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBreaker {
            inner,
            keys: self.keys.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service with one breaker per key; built by [`KeyedBreakerLayer`].
pub struct KeyedBreaker<S, K, F, C = AnyError> {
    inner: S,
    keys: Arc<Keys<K>>,
    key_fn: F,
    classifier: C,
}

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        KeyedBreaker {
            inner: self.inner.clone(),
            keys: self.keys.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F, C: fmt::Debug> fmt::Debug for KeyedBreaker<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreaker")
            .field("inner", &self.inner)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C> KeyedBreaker<S, K, F, C> {
    tower_red::define_inner_service_accessors!();
}

impl<S, K, F, C, Req> Service<Req> for KeyedBreaker<S, K, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> K,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The key is only known in `call`, so refusals happen there, even in backpressure mode.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let machine = self.keys.machine((self.key_fn)(&req));
        match machine.admit() {
            Ok(adm) => {
                let _scope = machine.needs_clock.then(tower_red::clock::Scope::enter);
                let start = machine.needs_clock.then(tower_red::clock::now);
                let permit = Permit::new(machine, adm);
                ResponseFuture::called(self.inner.call(req), permit, self.classifier.clone(), start)
            }
            Err(refusal) => ResponseFuture::rejected(crate::service::rejection(&machine, refusal)),
        }
    }
}
