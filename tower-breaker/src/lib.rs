//! A circuit breaker for Tower services, with half-open probing.
//!
//! [`BreakerLayer`] wraps any service (an axum router, a tonic server, a reqwest `Client`, a
//! tonic `Channel`) in a breaker shared by every clone:
//!
//! - **Closed**: calls pass and are measured. The circuit opens when the failure rate (over a
//!   count or a bucketed time [`Window`]) reaches its threshold once `minimum_calls` are in, on
//!   `consecutive_failures` failures in a row, or when the slow-call rate reaches its own.
//!   Outcomes are judged by [`tower_red::classify::judge`]: any `Err` by default, HTTP 5xx or
//!   gRPC codes on request, and an ignored verdict counts neither way. A
//!   [`tower_red::Rejection`] raised by a layer inside the breaker (a full bulkhead, a deadline
//!   spent before sending) is that layer's refusal, never the backend's failure: it does not
//!   enter the window (a deadline that passed *during* the call is a timeout failure).
//! - **Deadlines**: a call whose future is dropped because its request's deadline passed (a
//!   deadline layer above the breaker, such as `tower-timeout-budget`'s, dropping it inside
//!   [`tower_red::cancel::drop_expired`]) counts in the window as a failure of class timeout,
//!   and as slow: a backend that never answers opens the circuit. A call its caller drops
//!   before its deadline counts as nothing (a probe gives its slot back).
//! - **Open**: `poll_ready` is ready at once, without waiting on the inner service (over a
//!   saturated pool or bulkhead a caller is refused, not queued), and `call` refuses with a
//!   [`tower_red::Rejection`] ([`RejectionKind::CircuitOpen`](tower_red::RejectionKind)). A
//!   call never reaches an inner service its `poll_ready` did not ready: if the circuit closed
//!   in between, that one call is refused too. A call made after a trip is refused, whenever
//!   its service was readied. Every refusal carries a `Retry-After` of at least 1 s: the open
//!   time left; forced open, the configured open time; half-open with every probe slot busy,
//!   the probe wait left. The open time is fixed or grows with each consecutive
//!   trip ([`OpenTime`]).
//! - **Half-open**: the first call after the open time moves the circuit to half-open (no
//!   background task). Exactly `permitted_probes` probes are admitted; their rates close or
//!   reopen it. A cancelled probe gives its slot back; probes still out after
//!   `max_probe_wait` reopen it.
//! - **ForcedOpen**, **Disabled**, **MetricsOnly**: sticky, left only through a
//!   [`BreakerHandle`].
//!
//! Opt-in: graded recovery (traffic ramps back after closing), backpressure (`poll_ready` is
//! `Pending` while open), and [`keyed`] breakers (one per host or route).
//!
//! In the closed state a call costs a few atomic operations: no lock, no allocation.
//!
//! # Building one
//!
//! [`BreakerLayer::new`]`("name")` is a breaker with the defaults (a count window of the last
//! 100 calls, tripping at 50 % failures once 100 calls are in, open for 60 s, 10 probes).
//! [`BreakerLayer::builder`] sets everything and checks it in `build`, which returns
//! `Result<BreakerLayer, tower_red::ConfigError>`. Settings that switch something on take a
//! `bool` (`.backpressure(true)`); the minimum number of calls defaults to the count window's
//! size, so `.count_window(50)` alone builds.
//!
//! **Classifying HTTP and gRPC.** The default classifier ([`AnyError`](tower_red::classify::AnyError))
//! counts only an `Err` as a failure. An axum handler is `Infallible` and a tonic service
//! answers errors as statuses, so over either **the default classifier never opens the
//! circuit**: choose [`BreakerBuilder::http_status`] (5xx and 429 fail) or
//! [`BreakerBuilder::grpc_status`] (UNAVAILABLE, DEADLINE_EXCEEDED, … fail).
//!
//! ```
//! use tower_breaker::BreakerLayer;
//!
//! let api = BreakerLayer::builder().name("api").http_status().build()?;
//! let grpc = BreakerLayer::builder().name("grpc").grpc_status().count_window(50).build()?;
//! # Ok::<(), tower_red::ConfigError>(())
//! ```
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_breaker::{BreakerLayer, State};
//! use tower_red::{BoxError, Rejection, RejectionKind};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let breaker = BreakerLayer::builder()
//!     .name("inventory")
//!     .consecutive_failures(3)
//!     .open_time(Duration::from_secs(10))
//!     .build()?;
//! let handle = breaker.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service(service_fn(|fail: bool| async move {
//!         if fail { Err::<&str, BoxError>("backend down".into()) } else { Ok("ok") }
//!     }));
//!
//! for _ in 0..3 {
//!     assert!(svc.clone().oneshot(true).await.is_err());
//! }
//! assert_eq!(handle.state(), State::Open);
//! let err = svc.clone().oneshot(false).await.unwrap_err();
//! let rejection = Rejection::find_in(&err).expect("refused by the breaker");
//! assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
//! assert_eq!(rejection.retry_after_secs(), Some(10));
//! # Ok(()) }
//! ```
//!
//! # Metrics
//!
//! With metrics on (the default), each breaker registers when it is built: the RED counter
//! and histogram of [`tower_red::red`] (`layer="breaker"`, `name`, `outcome`, where refusals
//! count as `circuit_open`, dropped calls as `cancelled` and a refusal from a layer inside
//! the breaker as `inner_refusal`), the state gauge
//! [`BREAKER_STATE`](tower_red::names::BREAKER_STATE) (0 closed … 5 metrics only) and the
//! counter [`BREAKER_TRANSITIONS_TOTAL`](tower_red::names::BREAKER_TRANSITIONS_TOTAL) by
//! `from` and `to`.
//!
//! A call dropped at its deadline is `cancelled` at the breaker even though its window counts
//! it as a timeout: the deadline layer that enforced it counts it as `timeout`, so summing
//! `outcome="timeout"` over a stack counts each timed-out call once.
//!
//! Every transition is also a `tracing` event at `INFO`, every refusal one at
//! `DEBUG`.

pub mod config;
pub mod error;
pub mod event;
pub mod future;
pub mod handle;
pub mod keyed;
mod layer;
mod machine;
mod metrics;
mod readiness;
mod service;
mod sync;
mod window;

pub use crate::config::{BreakerBuilder, BreakerConfig, GradedRecovery, OpenTime, Window};
pub use crate::error::{ConfigError, is_circuit_open};
pub use crate::event::{Reason, Rejected, State, Transition};
pub use crate::handle::BreakerHandle;
pub use crate::keyed::{KeyedBreaker, KeyedBreakerHandle, KeyedBreakerLayer};
pub use crate::layer::BreakerLayer;
pub use crate::service::Breaker;
pub use crate::window::Counts;
