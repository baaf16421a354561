//! `Idempotency-Key` deduplication for tower HTTP services, with in-memory and Redis stores.
//!
//! A client that retries a `POST` after a lost response must not charge a card twice. With the
//! [IETF httpapi draft]'s `Idempotency-Key` header (and Stripe's semantics), the client sends the
//! same key on every attempt and [`IdempotencyLayer`] makes sure the handler runs once:
//!
//! | the request | the answer |
//! |---|---|
//! | safe method (`GET`, `HEAD`, `OPTIONS`, `TRACE`), or no key | passed through untouched, nothing allocated |
//! | no key on `POST`/`PATCH` with [`required`](IdempotencyLayerBuilder::required) | 400 problem+json |
//! | key not 1–255 visible ASCII characters (token or structured-field string), or sent twice | 400 problem+json |
//! | body over [`max_request_bytes`](IdempotencyLayerBuilder::max_request_bytes) | 413, or passed through undeduplicated ([`Oversized`]) |
//! | first with its key | runs; its response is stored for the [`ttl`](IdempotencyLayerBuilder::ttl) (24 h) |
//! | same key, other method/path/query/content type/body | 422 problem+json |
//! | same key while the first runs | 409 + `Retry-After` (lease left), or waits for the result ([`InFlight`]) |
//! | same key after the first completed | the stored status, headers, body and trailers, plus `Idempotency-Replayed: true` |
//! | the store fails | 503 + `Retry-After`, or runs undeduplicated ([`OnStoreError`]); counted |
//!
//! **Scope.** The store key is a SHA-256 of (prefix, principal, method, route, key): keys of two
//! callers never meet, raw keys never reach the store, and every build of the service derives the
//! same hash. Set a [`principal`](IdempotencyLayerBuilder::principal): without one, every caller
//! shares one key space (see its docs for the risk).
//!
//! **What is stored** ([`StorePolicy`]): by default every response but 5xx, 408, 409 and 429
//! (and the gRPC statuses that stand for them, in the headers or the trailers), which release
//! the key so the client may retry; [`StorePolicy::Everything`] is Stripe's
//! behaviour. Hop-by-hop headers, `Set-Cookie`, `Content-Length` and a deny list are never
//! stored. A response over [`max_response_bytes`](IdempotencyLayerBuilder::max_response_bytes)
//! streams to its client unstored and releases the key (a retry runs again; size the cap for your
//! largest response).
//!
//! **Leases and fencing.** A claim lasts the longer of the [`lease`](IdempotencyLayerBuilder::lease)
//! and the request's remaining [`Deadline`](tower_timeout_budget::Deadline), and is renewed while
//! the handler runs and its response body is read. Its [`Fence`] is in the request's extensions, for the handler's own
//! conditional writes; the store refuses a completion from a holder whose lease lapsed. A request
//! that is cancelled, fails or panics releases its key at once (a drop guard).
//!
//! **Stores** ([`store`]): [`MemoryStore`](store::MemoryStore) (sharded, bounded in entries and
//! bytes, TTL eviction) for one instance; `store::redis::RedisStore` (feature `redis`, Redis or
//! Redis Cluster) for many. [`client::IdempotencyKeyLayer`] adds a key to outbound `POST`s.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_idempotency::{IdempotencyLayer, RequestBody};
//! use tower_idempotency::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = IdempotencyLayer::builder(MemoryStore::new())
//!     .principal(|parts| parts.headers.get("x-user")?.to_str().ok().map(str::to_owned))
//!     .build()?;
//! let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<RequestBody<String>>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("charged")))
//! });
//! let charge = || Request::post("/charges").header("x-user", "alice")
//!     .header("idempotency-key", "8e03978e").body(String::from("10 EUR")).unwrap();
//!
//! let first = svc.clone().oneshot(charge()).await?;
//! let retry = svc.clone().oneshot(charge()).await?;
//! assert!(first.headers().get("idempotency-replayed").is_none());
//! assert_eq!(retry.headers()["idempotency-replayed"], "true");
//! # Ok(()) }
//! ```
//!
//! Metrics (names in [`tower_red::names`]): the RED pair with `layer="idempotency"` and outcomes
//! `ok`, `error`, `inner_refusal`, `replayed`, `rejected`, `cancelled`; `resilience_idempotency_decisions_total`
//! by `reason`; `resilience_idempotency_replays_total`; store latency and errors by `operation`.
//!
//! [IETF httpapi draft]: https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/

mod body;
pub mod client;
mod config;
pub mod fallback;
pub mod future;
mod key;
mod layer;
mod metrics;
mod response;
mod service;
#[cfg(feature = "stack")]
pub mod stack;
pub mod store;

pub use crate::body::{RequestBody, ResponseBody};
pub use crate::config::{
    IdempotencyLayerBuilder, InFlight, MapRequestBody, OnStoreError, Oversized, StorePolicy, Wrap,
};
pub use crate::layer::IdempotencyLayer;
pub use crate::response::REPLAYED;
pub use crate::service::Idempotency;
pub use crate::store::Fence;
