//! [`RedLayer`]: RED metrics for HTTP servers and clients, following the OpenTelemetry HTTP
//! semantic conventions.
//!
//! Records [`HTTP_SERVER_REQUEST_DURATION_SECONDS`](crate::names::HTTP_SERVER_REQUEST_DURATION_SECONDS)
//! (or the client twin) with `http_request_method` (unknown methods fold into `_OTHER`),
//! `http_response_status_code`, `http_route` (from axum's `MatchedPath` with the `axum` feature,
//! or a [`RouteTemplate`] extension; never the raw path), `error_type` (the rejection kind for
//! rejections, also when [`ProblemLayer`](crate::problem::ProblemLayer) turned them into
//! responses; the status code for other server errors; `_OTHER` for other errors) and, on the
//! client side, `server_address` and `server_port`. An in-flight gauge per method counts active
//! requests. Routes, and a client's targets (host and port together), are capped
//! ([`RedLayer::max_routes`]); past the cap they are labelled `_OTHER` (a client's with no
//! port), and every status past 599 is labelled `_OTHER`, so no input can grow the number of
//! series without bound.
//!
//! Route ids and series handles are cached per thread after their first use: the steady state
//! takes no lock, touches no map shared between cores, takes one clock pair shared with the
//! layers inside (see [`crate::clock`]) and no allocation. Routes seen after the cap is reached
//! are the exception: each such request takes a shared read lock (see
//! [`RedLayer::max_routes`]). Handles bind to the recorder installed when the
//! layer is built; a layer built with none passes calls straight through. The request ends when the response head
//! arrives; time spent streaming the body is not counted.
//!
//! ```
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_red::RedLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RedLayer::server())
//!     .service(service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(()))
//!     }));
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # }
//! ```

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use http::{Method, StatusCode};
use metrics::{Gauge, Histogram, Label};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::clock::{self, Scope};
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::names::{self, label};
use crate::parts::{RequestParts, ResponseParts};
use crate::rejection::{Rejection, RejectionKind};

/// A route template a non-axum server can put in request extensions for the `http_route` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTemplate(pub &'static str);

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];
const OTHER: &str = "_OTHER";
const NO_ID: u16 = 0;
const OTHER_ID: u16 = u16::MAX;
/// The status every response past 599 is recorded as (labelled `_OTHER`).
const STATUS_OTHER: u16 = 600;
const ERROR_OTHER: u8 = RejectionKind::ALL.len() as u8 + 1;
const ERROR_STATUS: u8 = ERROR_OTHER + 1;

fn method_index(method: &Method) -> u8 {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// A series key packed in a `u64`: method (4 bits), status (10), error (6), route or host id
/// (16), port (16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key(u64);

impl Key {
    fn new(method: u8, status: u16, error: u8, route: u16, port: u16) -> Key {
        Key(u64::from(method)
            | u64::from(status & 0x3ff) << 4
            | u64::from(error & 0x3f) << 14
            | u64::from(route) << 20
            | u64::from(port) << 36)
    }
    fn method(self) -> usize {
        (self.0 & 0xf) as usize
    }
    fn status(self) -> u16 {
        ((self.0 >> 4) & 0x3ff) as u16
    }
    fn error(self) -> u8 {
        ((self.0 >> 14) & 0x3f) as u8
    }
    fn route(self) -> u16 {
        ((self.0 >> 20) & 0xffff) as u16
    }
    #[cfg(test)]
    fn port(self) -> u16 {
        ((self.0 >> 36) & 0xffff) as u16
    }
}

/// Keys are already well mixed enough for a table; a multiply spreads the low bits.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    /// A multiply carries each input bit only upwards, so the state's low bits (which pick
    /// hashbrown's bucket) hear nothing of its high bits: a route id, a port, or the last
    /// bytes of a word. MurmurHash3's 64-bit finaliser (fmix64) makes every bit of the state
    /// move the low bits: five more operations per lookup, and the per-thread memos skip the
    /// lookup in the steady state.
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    /// Route templates and hosts, hashed on every request: eight bytes per multiply (the
    /// rotate-xor-multiply of rustc's FxHasher), not one. The tables they index are capped
    /// (`max_routes`), so no input can make a long collision chain.
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length tells "a" from "a\0".
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }
    /// A series key: one word, like a string's (the finaliser spreads its high fields).
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }
}

impl KeyHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type SeriesMap = HashMap<Key, Histogram, BuildHasherDefault<KeyHasher>>;
type ById<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

static NEXT_LAYER_ID: AtomicU64 = AtomicU64::new(1);

/// How many layers one thread caches for; past it the cache starts over (layers built per
/// request would otherwise grow it without bound).
const MAX_CACHED_LAYERS: usize = 64;

/// Per-thread copies of the layers' route ids and series handles: with two or more runtime
/// workers, a shared map's read lock would move its reader count between cores on every
/// request.
#[derive(Default)]
struct LocalCache {
    routes: ById<HashMap<Box<str>, u16, BuildHasherDefault<KeyHasher>>>,
    /// Each layer's series, by key: the index of its handle in `handles`.
    series: ById<HashMap<Key, usize, BuildHasherDefault<KeyHasher>>>,
    handles: Vec<Histogram>,
    /// The series this thread recorded into last (layer, key, index in `handles`): a hot
    /// series' next sample compares two words instead of looking it up in two tables, and
    /// touches no reference count (an index, not a clone of the handle).
    last_series: Option<(u64, Key, usize)>,
    /// The client target this thread's last request went to, and what it resolved to.
    last_target: Option<LastTarget>,
    /// The route (or host) this thread interned last, and its id.
    last_route: Option<LastRoute>,
}

/// A route template (or host) as interned last on this thread, verbatim, and its id: a hot
/// route's next request compares one string instead of hashing it into two tables. The buffer
/// is reused, so a new route allocates only when it is longer than any before.
struct LastRoute {
    layer: u64,
    route: String,
    id: u16,
}

impl LastRoute {
    fn remember(slot: &mut Option<LastRoute>, layer: u64, route: &str, id: u16) {
        let last = slot.get_or_insert_with(|| LastRoute {
            layer,
            route: String::new(),
            id,
        });
        last.layer = layer;
        last.route.clear();
        last.route.push_str(route);
        last.id = id;
    }
}

/// A client request's scheme and authority, verbatim, and the host id and port they gave.
/// A client stack usually serves one dependency, so its next request goes to the same target:
/// two string compares instead of parsing the authority and hashing the host. The buffers are
/// reused, so a new target allocates only when it is longer than any before.
struct LastTarget {
    layer: u64,
    scheme: String,
    authority: String,
    id: u16,
    port: u16,
}

impl LocalCache {
    fn make_room(&mut self, layer: u64) {
        let known = self.routes.contains_key(&layer) || self.series.contains_key(&layer);
        if !known && self.routes.len().max(self.series.len()) >= MAX_CACHED_LAYERS {
            self.routes.clear();
            self.series.clear();
            self.handles.clear();
            self.last_series = None;
        }
    }
}

thread_local! {
    static LOCAL: RefCell<LocalCache> = RefCell::new(LocalCache::default());
}

struct Interner {
    ids: HashMap<Box<str>, u16>,
    names: Vec<Arc<str>>,
}

struct Shared {
    /// Unique per layer for the life of the process: the key of this layer's per-thread caches.
    id: u64,
    side: Side,
    /// A recorder was installed when the layer was built: without one, every handle would be a
    /// no-op, so calls skip the work (and the clock) altogether.
    recording: bool,
    max_routes: usize,
    routes: RwLock<Interner>,
    series: RwLock<SeriesMap>,
    active: [Gauge; METHODS.len()],
}

impl Shared {
    fn new(side: Side, max_routes: usize) -> Shared {
        let active_name = match side {
            Side::Server => names::HTTP_SERVER_ACTIVE_REQUESTS,
            Side::Client => names::HTTP_CLIENT_ACTIVE_REQUESTS,
        };
        let active = METHODS.map(|m| {
            metrics::gauge!(
                active_name,
                [Label::from_static_parts(label::HTTP_REQUEST_METHOD, m)].iter()
            )
        });
        Shared {
            id: NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed),
            side,
            recording: crate::red::recorder_installed(),
            max_routes,
            routes: RwLock::new(Interner {
                ids: HashMap::new(),
                names: vec![Arc::from("")],
            }),
            series: RwLock::new(SeriesMap::default()),
            active,
        }
    }

    /// The id of a route template or host, `OTHER_ID` once the cap is reached. Looked up in
    /// this thread's cache first, so the steady state takes no lock and touches no shared line.
    fn intern(&self, s: &str) -> u16 {
        let cached = LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let local = &mut *local;
            if let Some(last) = &local.last_route
                && last.layer == self.id
                && last.route == s
            {
                return Some(last.id);
            }
            let id = local
                .routes
                .get(&self.id)
                .and_then(|routes| routes.get(s))
                .copied()?;
            LastRoute::remember(&mut local.last_route, self.id, s, id);
            Some(id)
        });
        if let Some(id) = cached {
            return id;
        }
        let id = self.intern_shared(s);
        // Past the cap every new string maps to `_OTHER`: those are not cached, so no input
        // can grow the cache.
        if id != OTHER_ID {
            LOCAL.with(|local| {
                let mut local = local.borrow_mut();
                local.make_room(self.id);
                local
                    .routes
                    .entry(self.id)
                    .or_default()
                    .insert(s.into(), id);
                LastRoute::remember(&mut local.last_route, self.id, s, id);
            });
        }
        id
    }

    /// The host id and port of a client request, remembered per thread for its last target.
    fn client_target<R: RequestParts>(&self, req: &R) -> (u16, u16) {
        let target = req.target();
        if let Some((scheme, authority)) = target {
            let hit = LOCAL.with(|local| {
                let local = local.borrow();
                local
                    .last_target
                    .as_ref()
                    .filter(|t| {
                        t.layer == self.id && t.authority == authority && t.scheme == scheme
                    })
                    .map(|t| (t.id, t.port))
            });
            if let Some(hit) = hit {
                return hit;
            }
        }
        let (id, port) = req.host_port().map_or((NO_ID, 0), |(host, port)| {
            (self.intern_target(host, port), port)
        });
        if let Some((scheme, authority)) = target
            && id != OTHER_ID
        {
            LOCAL.with(|local| {
                let mut local = local.borrow_mut();
                let last = local.last_target.get_or_insert_with(|| LastTarget {
                    layer: 0,
                    scheme: String::new(),
                    authority: String::new(),
                    id: NO_ID,
                    port: 0,
                });
                last.layer = self.id;
                last.scheme.clear();
                last.scheme.push_str(scheme);
                last.authority.clear();
                last.authority.push_str(authority);
                last.id = id;
                last.port = port;
            });
        }
        (id, port)
    }

    /// A client's target, host and port together, in the capped table: past the cap a new
    /// host *or port* is `_OTHER`, so a client calling URLs from its users (any port) grows no
    /// series without bound. Written as `host port` (a host has no space) in a buffer on the
    /// stack, so a target already in the table costs no allocation.
    fn intern_target(&self, host: &str, port: u16) -> u16 {
        const MAX: usize = 256;
        let mut buf = [0u8; MAX + 6];
        if host.len() > MAX {
            return self.intern(&format!("{host} {port}"));
        }
        buf[..host.len()].copy_from_slice(host.as_bytes());
        buf[host.len()] = b' ';
        let mut end = host.len() + 1;
        let mut div = 10_000;
        let mut started = false;
        while div > 0 {
            let digit = (port / div % 10) as u8;
            if digit != 0 || started || div == 1 {
                buf[end] = b'0' + digit;
                end += 1;
                started = true;
            }
            div /= 10;
        }
        // Valid UTF-8: `host` was a `&str`, the rest ASCII.
        match std::str::from_utf8(&buf[..end]) {
            Ok(target) => self.intern(target),
            Err(_) => OTHER_ID,
        }
    }

    fn intern_shared(&self, s: &str) -> u16 {
        {
            let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
            if let Some(id) = routes.ids.get(s) {
                return *id;
            }
            // Full: the table never changes again, so a new string needs no write lock.
            if routes.ids.len() >= self.max_routes {
                return OTHER_ID;
            }
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = routes.ids.get(s) {
            return *id;
        }
        if routes.ids.len() >= self.max_routes {
            return OTHER_ID;
        }
        let id = routes.names.len() as u16;
        routes.ids.insert(s.into(), id);
        routes.names.push(Arc::from(s));
        id
    }

    /// Records into the series' histogram, found in this thread's cache first.
    fn record(&self, key: Key, seconds: f64) {
        let hit = LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let local = &mut *local;
            let index = match local.last_series {
                Some((layer, last, index)) if layer == self.id && last == key => index,
                _ => {
                    let Some(&index) = local
                        .series
                        .get(&self.id)
                        .and_then(|series| series.get(&key))
                    else {
                        return false;
                    };
                    local.last_series = Some((self.id, key, index));
                    index
                }
            };
            local.handles[index].record(seconds);
            true
        });
        if hit {
            return;
        }
        let histogram = self.histogram_shared(key);
        histogram.record(seconds);
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            local.make_room(self.id);
            let index = local.handles.len();
            local.handles.push(histogram);
            local.series.entry(self.id).or_default().insert(key, index);
            local.last_series = Some((self.id, key, index));
        });
    }

    fn histogram_shared(&self, key: Key) -> Histogram {
        if let Some(h) = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return h.clone();
        }
        let histogram = self.register(key);
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        series.entry(key).or_insert(histogram).clone()
    }

    fn register(&self, key: Key) -> Histogram {
        let mut labels = Vec::with_capacity(6);
        labels.push(Label::from_static_parts(
            label::HTTP_REQUEST_METHOD,
            METHODS[key.method()],
        ));
        match key.status() {
            0 => {}
            // Every status past 599 (hyper takes up to 999) in one series.
            STATUS_OTHER => labels.push(Label::from_static_parts(
                label::HTTP_RESPONSE_STATUS_CODE,
                OTHER,
            )),
            status => labels.push(Label::new(
                label::HTTP_RESPONSE_STATUS_CODE,
                status.to_string(),
            )),
        }
        let route = match key.route() {
            NO_ID => None,
            OTHER_ID => Some(Arc::<str>::from(OTHER)),
            id => self
                .routes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .names
                .get(usize::from(id))
                .cloned(),
        };
        let error = match key.error() {
            0 => None,
            ERROR_OTHER => Some(OTHER.to_string()),
            ERROR_STATUS => Some(key.status().to_string()),
            i => RejectionKind::ALL
                .get(usize::from(i) - 1)
                .map(|k| k.as_str().to_string()),
        };
        if let Some(error) = error {
            labels.push(Label::new(label::ERROR_TYPE, error));
        }
        let name = match self.side {
            Side::Server => {
                if let Some(route) = route {
                    labels.push(Label::new(label::HTTP_ROUTE, route.to_string()));
                }
                names::HTTP_SERVER_REQUEST_DURATION_SECONDS
            }
            Side::Client => {
                // `host port` as interned; `_OTHER` (past the cap) has no port.
                if let Some(target) = route {
                    match target.rsplit_once(' ') {
                        Some((host, port)) => {
                            labels.push(Label::new(label::SERVER_ADDRESS, host.to_string()));
                            labels.push(Label::new(label::SERVER_PORT, port.to_string()));
                        }
                        None => labels.push(Label::new(label::SERVER_ADDRESS, target.to_string())),
                    }
                }
                names::HTTP_CLIENT_REQUEST_DURATION_SECONDS
            }
        };
        metrics::histogram!(name, labels.iter())
    }
}

/// Layer recording OpenTelemetry HTTP metrics; see the [module docs](self).
///
/// Clones share their series cache. Handles are registered with the recorder installed when
/// the layer is built and when a series is first seen.
#[derive(Clone)]
#[must_use]
pub struct RedLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for RedLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedLayer")
            .field("side", &self.shared.side)
            .field("max_routes", &self.shared.max_routes)
            .finish()
    }
}

impl RedLayer {
    /// The default cap on distinct routes (server) or hosts (client).
    pub const DEFAULT_MAX_ROUTES: usize = 256;

    /// Server metrics: `http_server_request_duration_seconds`, `http_server_active_requests`.
    pub fn server() -> Self {
        RedLayer {
            shared: Arc::new(Shared::new(Side::Server, Self::DEFAULT_MAX_ROUTES)),
        }
    }

    /// Client metrics: `http_client_request_duration_seconds`, `http_client_active_requests`,
    /// labelled with the server's address and port.
    pub fn client() -> Self {
        RedLayer {
            shared: Arc::new(Shared::new(Side::Client, Self::DEFAULT_MAX_ROUTES)),
        }
    }

    /// Caps the number of distinct route templates (server) or targets, a host and port
    /// together (client), that become labels; later ones are labelled `_OTHER`. The cap is at
    /// most 65,534.
    ///
    /// What a request costs depends on which side of the cap its route is. A route that got
    /// an id (one of the first `max` seen) is cached per thread after its first use there: no
    /// lock. A route seen after the table is full is not cached (input must not grow memory),
    /// so every such request takes the table's shared read lock once, an atomic
    /// read-modify-write on a cache line all cores share, but never the write lock (which
    /// would serialise them). Its `_OTHER` series handle is cached per thread like any other.
    /// Set the cap above the number of routes (or hosts) you really have, so only unexpected
    /// ones pay.
    pub fn max_routes(self, max: usize) -> Self {
        let side = self.shared.side;
        RedLayer {
            shared: Arc::new(Shared::new(side, max.min(usize::from(OTHER_ID) - 1))),
        }
    }
}

impl<S> Layer<S> for RedLayer {
    type Service = Red<S>;
    fn layer(&self, inner: S) -> Red<S> {
        Red {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Service built by [`RedLayer`].
#[derive(Clone)]
pub struct Red<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for Red<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Red")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Red<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn route_of<R: RequestParts>(req: &R) -> Option<&str> {
    let extensions = req.extensions()?;
    #[cfg(feature = "axum")]
    if let Some(path) = extensions.get::<axum::extract::MatchedPath>() {
        return Some(path.as_str());
    }
    extensions.get::<RouteTemplate>().map(|r| r.0)
}

impl<S, Req> Service<Req> for Red<S>
where
    S: Service<Req>,
    S::Response: ResponseParts,
    S::Error: 'static,
    Req: RequestParts,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if !self.shared.recording {
            return ResponseFuture {
                inner: self.inner.call(req),
                guard: None,
            };
        }
        let method = method_index(req.method());
        let (route, port) = match self.shared.side {
            Side::Server => (route_of(&req).map_or(NO_ID, |r| self.shared.intern(r)), 0),
            Side::Client => self.shared.client_target(&req),
        };
        self.shared.active[usize::from(method)].increment(1.0);
        // One clock read shared with the layers this call goes through.
        let _scope = Scope::enter();
        let guard = Guard {
            shared: self.shared.clone(),
            method,
            route,
            port,
            start: clock::now(),
        };
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

/// Keeps the active-requests gauge right when a future is dropped before it finishes.
struct Guard {
    shared: Arc<Shared>,
    method: u8,
    route: u16,
    port: u16,
    start: Instant,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.active[usize::from(self.method)].decrement(1.0);
    }
}

fn error_index<E: 'static>(err: &E) -> u8 {
    let any: &dyn Any = err;
    let rejection = if let Some(boxed) = any.downcast_ref::<BoxError>() {
        Rejection::find_in(boxed)
    } else {
        any.downcast_ref::<Rejection>()
    };
    rejection.map_or(ERROR_OTHER, |r| kind_index(r.kind()))
}

fn kind_index(kind: RejectionKind) -> u8 {
    RejectionKind::ALL
        .iter()
        .position(|k| *k == kind)
        .map_or(ERROR_OTHER, |i| i as u8 + 1)
}

pin_project! {
    /// Future of [`Red`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<Guard>,
    }
}

impl<F, Res, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Res, E>>,
    Res: ResponseParts,
    E: 'static,
{
    type Output = Result<Res, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _scope = this.guard.is_some().then(Scope::enter);
        // The inner poll is returned as it is, in every branch, and only read here: the
        // compiler then writes it straight into this poll's return slot instead of copying
        // the response once more.
        let poll = this.inner.poll(cx);
        let Poll::Ready(result) = &poll else {
            return poll;
        };
        // No guard: nothing records (no recorder at build), or already completed.
        let Some(guard) = this.guard.take() else {
            return poll;
        };
        let elapsed = clock::now().saturating_duration_since(guard.start);
        let (status, error) = match result {
            Ok(res) => {
                let status = res.status();
                let failed = match guard.shared.side {
                    Side::Server => status.is_server_error(),
                    Side::Client => status.is_client_error() || status.is_server_error(),
                };
                let rejected = res
                    .extensions()
                    .and_then(|e| e.get::<RejectionKind>())
                    .map(|k| kind_index(*k));
                (
                    status.as_u16().min(STATUS_OTHER),
                    rejected.unwrap_or(if failed { ERROR_STATUS } else { 0 }),
                )
            }
            Err(err) => (0, error_index(err)),
        };
        // Past the cap a target is `_OTHER` whatever its port: one series, one key.
        let port = if guard.route == OTHER_ID {
            0
        } else {
            guard.port
        };
        let key = Key::new(guard.method, status, error, guard.route, port);
        guard.shared.record(key, elapsed.as_secs_f64());
        poll
    }
}

/// The status code a `Key` stores must fit in 10 bits; valid codes (100..=999) do.
const _: () = assert!(StatusCode::NETWORK_AUTHENTICATION_REQUIRED.as_u16() < 1024);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_every_field() {
        let k = Key::new(9, 999, ERROR_STATUS, OTHER_ID, 65535);
        assert_eq!(
            (k.method(), k.status(), k.error(), k.route(), k.port()),
            (9, 999, ERROR_STATUS, OTHER_ID, 65535)
        );
        let k = Key::new(0, 200, 0, 1, 8080);
        assert_eq!(
            (k.method(), k.status(), k.error(), k.route(), k.port()),
            (0, 200, 0, 1, 8080)
        );
    }

    fn hash_of(bytes: &[u8]) -> u64 {
        let mut hasher = KeyHasher::default();
        hasher.write(bytes);
        hasher.finish()
    }

    /// hashbrown picks a bucket by the hash's low bits (and tags it with the top 7): keys that
    /// differ only in the fields packed high (a route id, a port), and route templates that
    /// differ only in their last word's last byte, must still land in different buckets, or a
    /// table of them degrades into one probe chain. (Before the finaliser they took 1, 8 and 1
    /// buckets.)
    #[test]
    fn keys_and_routes_that_differ_only_in_high_bits_spread_over_buckets() {
        fn buckets(hashes: impl Iterator<Item = u64>) -> usize {
            hashes
                .map(|h| h & 0x3ff)
                .collect::<std::collections::HashSet<_>>()
                .len()
        }
        let key_hash = |k: Key| {
            let mut hasher = KeyHasher::default();
            std::hash::Hash::hash(&k, &mut hasher);
            hasher.finish()
        };
        // 128 values in 1,024 buckets: a uniform hash fills ~120 distinct ones.
        let routes = buckets((0..128).map(|route| key_hash(Key::new(0, 200, 0, route, 0))));
        let ports = buckets((0..128).map(|port| key_hash(Key::new(0, 200, 0, 1, 8000 + port))));
        let templates =
            buckets((0..128u8).map(|b| hash_of(&[b'/', b'r', b'/', b'a', b'b', b'c', b'd', b])));
        assert!(routes >= 100, "routes in {routes} buckets");
        assert!(ports >= 100, "ports in {ports} buckets");
        assert!(templates >= 100, "templates in {templates} buckets");
    }

    /// Route templates and hosts index the tables by this hash: strings that differ in one
    /// byte (of a whole word or of the tail) hash apart, and so do strings that differ only by
    /// trailing zero bytes. (Across positions FxHash's rotate-xor-multiply does collide: a
    /// word's last byte moves only the top bits of the product.)
    #[test]
    fn key_hasher_tells_apart_strings_that_differ_in_one_byte_or_in_length() {
        for len in 1..=17 {
            for at in 0..len {
                let mut hashes = std::collections::HashSet::new();
                for byte in 0..=255u8 {
                    let mut s = vec![b'r'; len];
                    s[at] = byte;
                    hashes.insert(hash_of(&s));
                }
                assert_eq!(hashes.len(), 256, "length {len}, byte {at}");
            }
        }
        assert_ne!(hash_of(b"a"), hash_of(b"a\0"));
        assert_ne!(hash_of(b"payments"), hash_of(b"payments\0"));
    }

    #[test]
    fn unknown_methods_fold_into_other() {
        assert_eq!(
            METHODS[usize::from(method_index(&Method::from_bytes(b"BREW").unwrap()))],
            "_OTHER"
        );
        assert_eq!(METHODS[usize::from(method_index(&Method::PATCH))], "PATCH");
    }

    #[test]
    fn routes_past_the_cap_are_other() {
        let shared = Shared::new(Side::Server, 2);
        let a = shared.intern("/a");
        let b = shared.intern("/b");
        assert_ne!(a, b);
        assert_eq!(shared.intern("/a"), a);
        assert_eq!(shared.intern("/c"), OTHER_ID);
    }

    #[test]
    fn routes_past_the_cap_take_no_write_lock() {
        let shared = Arc::new(Shared::new(Side::Server, 1));
        assert_ne!(shared.intern("/a"), OTHER_ID);
        // A reader holds the table: a request that wanted the write lock would wait for it.
        let held = shared.routes.read().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = shared.clone();
        std::thread::spawn(move || {
            let ids: Vec<u16> = (0..100).map(|i| other.intern(&format!("/x{i}"))).collect();
            let _ = tx.send(ids);
        });
        // Bounded so that a regression fails instead of hanging; it answers at once when right.
        let ids = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("interning past the cap waited for the write lock");
        assert!(ids.iter().all(|id| *id == OTHER_ID));
        drop(held);
    }
}
