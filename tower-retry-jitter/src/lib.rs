//! Retries for tower services: exponential backoff with jitter, retry budgets shared across
//! clones, server pushback, and request replay.
//!
//! [`RetryLayer`] wraps a service in a [`Retry`], whose [`ResponseFuture`](future::ResponseFuture)
//! runs the retry loop of one request: send, judge the outcome, and, for a failure worth
//! retrying on a request that is safe to send twice, ask the [`RetryPolicy`] whether and when
//! to try again (attempts, the server's pushback, the request's deadline, the budget).
//!
//! - **What is retried**: what the classifier calls a failure. The default
//!   ([`AnyError`](tower_red::classify::AnyError)) fails every `Err`; [`RetryOn`] adds HTTP 502,
//!   503, 504 (408 and 429 opt-in) and gRPC `UNAVAILABLE` (other codes configurable). A
//!   [`Rejection`](tower_red::Rejection) from one of our layers below (open circuit, full
//!   bulkhead, spent deadline) is not retried unless asked: it means back off.
//! - **What may be retried** ([`safety`]): idempotent HTTP methods or requests carrying an
//!   `Idempotency-Key` by default; [`AlwaysSafe`] or a closure for other request types.
//! - **Pushback**: `Retry-After` and `grpc-retry-pushback-ms` on the failed response replace
//!   the computed delay; a pushback over the cap (or past the deadline) ends the retries and
//!   the response comes back as it was; a negative or malformed gRPC pushback means stop.
//! - **Deadline**: the request's [`Deadline`](tower_timeout_budget::Deadline) (its own or the
//!   task-local one) bounds the whole loop: no backoff and no attempt starts that cannot end
//!   before it, judging by the last attempt's latency. An optional per-attempt timeout is
//!   itself capped by the deadline.
//! - **Budget** ([`budget`]): shared by every clone; when it is spent, the last response or
//!   error comes back as it was, and the call is counted as `budget_exhausted`.
//! - **Replay** ([`replay`]): `Clone` requests are cloned, `reqwest::Request`s
//!   `try_clone`d (feature `reqwest`), and `http::Request<B>` with any body is replayed from a
//!   buffer of at most 64 KiB ([`BufferBody`]); over the cap it is sent once.
//! - **No storms across hops** ([`attempt`]): retries carry their attempt number
//!   (`x-retry-attempt`, `grpc-previous-rpc-attempts`), and a server's `x-retry-pushback:
//!   stop` ends the retries and travels up through a serving [`DontRetryLayer`](attempt::DontRetryLayer).
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_red::BoxError;
//! use tower_retry_jitter::{RetryLayer, RetryOn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
//! let seen = calls.clone();
//! let backend = service_fn(move |_req: http::Request<()>| {
//!     // 503 for the first attempt, 200 afterwards.
//!     let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     let status = if n == 0 { 503 } else { 200 };
//!     async move { Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap()) }
//! });
//! let client = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::builder()
//!             .name("orders")
//!             .max_attempts(3)
//!             .base(Duration::from_millis(50))
//!             .cap(Duration::from_secs(2))
//!             .retry_on(RetryOn::new()) // errors, 502, 503, 504, gRPC UNAVAILABLE
//!             .build()
//!             .expect("a valid configuration"),
//!     )
//!     .service(backend);
//!
//! let res = client.oneshot(http::Request::get("/orders/7").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
//! # }
//! ```
//!
//! The policy core is plain Rust with no Tower in it, each part in its own module and
//! property-tested alone:
//!
//! - [`backoff`]: exponential backoff (base, multiplier, cap) with no, full, equal or
//!   decorrelated jitter as defined in Marc Brooker's ["Exponential Backoff And
//!   Jitter"](https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/) (AWS
//!   Architecture Blog, 2015), or gRPC A6's multiplicative `U(0.8, 1.2)`; Full is the default.
//!   The random numbers are injected and seedable.
//! - [`budget`]: a retry budget shared by every clone, lock-free: a ratio of retries to
//!   requests over a sliding window with a floor per second (Finagle's, exact for fractional
//!   ratios), gRPC A6 throttling, or a token quota; a retry's cost can depend on its
//!   [`FailureClass`](tower_red::classify::FailureClass) (the AWS SDKs' 2026 costs are built in).
//! - [`pushback`]: `Retry-After` (seconds and HTTP-date) and `grpc-retry-pushback-ms`.
//! - [`config`]: the builders, validated into a [`tower_red::ConfigError`] that names the bad
//!   setting.
//! - [`policy`]: [`RetryPolicy`] bundles attempts (3 by default), backoff and budget, and
//!   decides after each failed attempt: retry after a delay, or stop and why.
//!
//! A request that cannot be retried costs the layer nothing beyond polling its inner future
//! (see [`Retry`] for the cost of one that may be). The layer's metrics: the RED pair
//! per request (`layer="retry"`), `resilience_retry_attempts_total{reason}`,
//! `resilience_retry_stops_total{reason}`, `resilience_retry_request_attempts`,
//! `resilience_retry_budget_balance` and `resilience_retry_body_overflow_total`
//! ([`tower_red::names`]); a `tracing` debug event per retry (attempt, delay, reason) and per
//! failure not retried. A server's [`DontRetryLayer`](attempt::DontRetryLayer) counts its
//! answers in `resilience_retry_dont_retry_total{reason}` (`retry_refused`,
//! `downstream_said_stop`).
//!
//! The policy alone:
//!
//! ```
//! use std::time::Duration;
//! use tower_red::classify::FailureClass;
//! use tower_retry_jitter::{BackoffState, Jitter, RetryBudget, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let budget = RetryBudget::builder()
//!     .ratio(0.1) // one retry per ten requests...
//!     .min_per_second(1) // ...plus one per second, over...
//!     .window(Duration::from_secs(10)) // ...a ten-second window
//!     .build()
//!     .expect("a valid budget");
//! let policy = RetryPolicy::builder()
//!     .base(Duration::from_millis(50))
//!     .cap(Duration::from_secs(2))
//!     .jitter(Jitter::Full)
//!     .budget(budget.clone()) // shared: clones count against the same budget
//!     .seed(42) // reproducible jitter
//!     .build()
//!     .expect("a valid policy");
//!
//! let now = tokio::time::Instant::now();
//! budget.record_request(now);
//! let mut rng = policy.rng();
//! let mut state = BackoffState::new();
//! let mut slept = Vec::new();
//! for _ in 1..policy.max_attempts() {
//!     if !budget.try_retry(FailureClass::Timeout, now) {
//!         break;
//!     }
//!     slept.push(policy.backoff().next_delay(&mut state, &mut rng));
//! }
//! // Two retries, each at most its exponential delay: 50 ms, then 100 ms.
//! assert_eq!(slept.len(), 2);
//! assert!(slept[0] <= Duration::from_millis(50) && slept[1] <= Duration::from_millis(100));
//! // 10 retries of floor, 0.1 deposited, 2 taken.
//! assert_eq!(budget.balance(now), 8.1);
//! # }
//! ```

pub mod attempt;
pub mod backoff;
pub mod budget;
pub mod config;
pub mod future;
mod layer;
mod metrics;
pub mod policy;
pub mod pushback;
pub mod replay;
pub mod retry_on;
pub mod safety;
mod service;
mod sync;

pub use crate::backoff::{Backoff, BackoffState, Jitter};
pub use crate::budget::{RetryBudget, RetryCost};
pub use crate::config::RetryLayerBuilder;
pub use crate::layer::RetryLayer;
pub use crate::policy::RetryPolicy;
pub use crate::pushback::Pushback;
pub use crate::replay::{BufferBody, CloneRequest, ReplayRequest, RetryBody};
pub use crate::retry_on::{ReadPushback, RetryOn};
pub use crate::safety::{AlwaysSafe, Idempotent, RetrySafety};
pub use crate::service::Retry;
