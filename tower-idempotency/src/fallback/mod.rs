//! Graceful degradation: answer from the last good response (stale-on-error) or from a
//! function when the call cannot give a usable answer.
//!
//! [`FallbackLayer`] answers in place of a call when ([`When`], all by default):
//!
//! | trigger | what came up from inside |
//! |---|---|
//! | [`When::circuit_open`] | a `circuit_open` [`Rejection`](tower_red::Rejection) |
//! | [`When::overload`] | `bulkhead_full`, `queue_timeout` or `load_shed` |
//! | [`When::deadline`] | `deadline_exceeded`, spent before sending or while the call ran |
//! | [`When::retry_budget`] | `retry_budget_exhausted` |
//! | [`When::failure`] | an answer the [classifier](FallbackLayerBuilder::classifier) judges a failure (default: any other `Err`; [`http_status`](FallbackLayerBuilder::http_status): 5xx, 429) |
//!
//! A refusal is recognised both as an `Err` holding a `Rejection` and as a response built from
//! one (it carries the [`RejectionKind`](tower_red::RejectionKind) in its extensions, as
//! [`ProblemLayer`](tower_red::problem::ProblemLayer) and the axum `IntoResponse` of a
//! `Rejection` make them), so the layer works above or below `ProblemLayer`.
//!
//! **The answer**, first that applies:
//!
//! 1. **Stale** ([`stale_on_error`](FallbackLayerBuilder::stale_on_error)): the last good
//!    response to a request of the same method (`GET` or `HEAD`) stored under the request's
//!    [key](FallbackLayerBuilder::key), if it was stored at most
//!    [`max_age`](StaleConfig::max_age) ago (checked when it would be served: an older one is
//!    dropped, never served). Marked `x-fallback: stale` ([`FALLBACK`]), with an `Age`
//!    header in seconds (RFC 9111 §5.1: the `Age` it came with plus the time it was held).
//! 2. **Function** ([`from_fn`](FallbackLayerBuilder::from_fn)): whatever it returns, marked
//!    `x-fallback: function`; it sees the [`Reason`], method and URI, and may return `None`.
//! 3. Otherwise the original refusal or failure goes on, untouched.
//!
//! **What is stored.** Successes (the classifier's verdict) with a 2xx status other than 206,
//! not themselves fallbacks, not `Vary: *`, and without a `Cache-Control` directive that
//! forbids serving them stale (`no-store`, `private`, `no-cache`, `must-revalidate`,
//! `proxy-revalidate`: RFC 9111 §4.2.4, §5.2.2). The response goes on to its caller at once;
//! its body is kept as it streams (reference-counted chunks, joined once at the end) and stored
//! when it ends, if it is at most [`max_entry_bytes`](StaleConfig::max_entry_bytes) (a larger
//! one is forgotten as soon as it is known to be larger). A body that fails, or that the caller
//! drops before its end, stores nothing: there is never a half entry. An entry's age counts
//! from when its headers arrived, not when its body ended: a body that ends more than
//! [`max_age`](StaleConfig::max_age) after its headers is not stored (it could never be
//! served), and an entry never replaces a younger one for its key (a slow body that ends after
//! a later answer leaves that answer in place); neither evicts anything. Hop-by-hop headers,
//! `Set-Cookie` and `Content-Length` are not kept, and a body with trailers is not stored (so
//! neither is a gRPC response). The store is bounded by entries and bytes (oldest by age
//! evicted first, so a new entry older than every entry held is not kept when the store is
//! full) and by age; one `std::sync::Mutex` guards it, held for one hash lookup or
//! insert (and the evictions it forces) when a body ends or a fallback is served.
//!
//! **The key** ([`key`](FallbackLayerBuilder::key), by default [`default_key`]: method,
//! authority (the URI's, else the `Host` header, so virtual hosts never share an entry) and path
//! and query of `GET` and `HEAD` requests that carry no `Authorization` or `Cookie`). Only `GET` and `HEAD` requests are stored or answered from the store, whatever the
//! key function returns (it is not even called for other methods), and each only from an entry
//! of its own method: a key that leaves the method out never answers a `POST` from a `GET`'s
//! entry, nor a `GET` with a `HEAD`'s empty body. Other methods can still get the function's
//! answer. Keys over [`max_key_bytes`](FallbackLayerBuilder::max_key_bytes) are not cached. A
//! request without a key costs no allocation: the inner future, one classifier call and one
//! counter (a stored success costs its key, its kept headers and the chunk list).
//!
//! **Where it goes.** Above the layers whose refusals it answers (breaker, bulkhead, inbound
//! deadline) and below RED, so RED sees the answer the caller got and the breaker still sees
//! the backend's failure: `RED → fallback → (problem) → inbound deadline → bulkhead → breaker →
//! handler`. An inbound deadline layer *above* it would cancel the call, fallback included,
//! when the deadline passes.
//!
//! **Metrics**: the RED pair with `layer="fallback"` ([`LAYER`]) and outcomes `ok`, `error`,
//! `timeout`, `inner_refusal` (passed on, no fallback), `fallback` (answered here) and
//! `cancelled`.
//!
//! Works for `http::Request<B>` → `http::Response<B>` services (answering
//! `http::Response<FallbackBody<B>>`: an axum route, hyper) and, with the `reqwest` feature,
//! for `reqwest::Client` stacks (a stored response keeps its `url()`; classify with
//! `tower-red`'s `reqwest` feature for `http_status`); see [`exchange`].
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_idempotency::fallback::{FallbackLayer, StaleConfig, FALLBACK};
//! use tower_red::{BoxError, Rejection, RejectionKind};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let layer = FallbackLayer::builder()
//!     .name("prices")
//!     .stale_on_error(StaleConfig { max_age: Duration::from_secs(30), ..StaleConfig::default() })
//!     .from_fn(|_ctx| Some(Response::new(Bytes::from("[]"))))
//!     .build()?;
//! let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
//! let breaker = open.clone();
//! let svc = ServiceBuilder::new().layer(layer).service_fn(move |_req: Request<()>| {
//!     let open = breaker.load(std::sync::atomic::Ordering::Relaxed);
//!     async move {
//!         if open {
//!             return Err(BoxError::from(Rejection::new(RejectionKind::CircuitOpen)));
//!         }
//!         Ok(Response::new(http_body_util::Full::new(Bytes::from("[42]"))))
//!     }
//! });
//! let get = |path: &str| Request::get(path).body(()).unwrap();
//!
//! // Stored once its body has been read, as a server reads it.
//! let fresh = svc.clone().oneshot(get("/prices")).await?;
//! http_body_util::BodyExt::collect(fresh.into_body()).await?;
//! open.store(true, std::sync::atomic::Ordering::Relaxed);
//! let stale = svc.clone().oneshot(get("/prices")).await?;
//! assert_eq!(stale.headers()[FALLBACK], "stale");
//! assert_eq!(stale.headers()["age"], "0");
//! let other = svc.clone().oneshot(get("/other")).await?; // nothing stored: the function
//! assert_eq!(other.headers()[FALLBACK], "function");
//! # Ok(()) }
//! ```

mod body;
mod config;
pub mod exchange;
pub mod future;
mod layer;
mod stale;

pub use self::body::{FallbackBody, Sink};
pub use self::config::{
    FallbackContext, FallbackLayerBuilder, Reason, StaleConfig, When, default_key,
};
pub use self::exchange::RequestView;
pub use self::layer::{Fallback, FallbackLayer};

use http::HeaderName;

/// The `layer` label of the fallback layer's RED series: [`tower_red::names::layer::FALLBACK`].
pub const LAYER: &str = tower_red::names::layer::FALLBACK;

/// The header that marks an answer the layer made: `stale` or `function`.
pub const FALLBACK: HeaderName = HeaderName::from_static("x-fallback");

/// The [`FALLBACK`] value of an answer from the stale store.
pub const STALE: &str = "stale";

/// The [`FALLBACK`] value of an answer from the fallback function.
pub const FUNCTION: &str = "function";
