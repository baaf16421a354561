//! Retries for tower services: exponential backoff with jitter, retry budgets, server pushback.
//!
//! **The Tower layer is not here yet.** This release is the policy core the layer will be
//! wired to, plain Rust with no Tower in it, each part in its own module and property-tested
//! alone:
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
//!   decides after each failed attempt: retry after a delay, or stop and why (attempts spent,
//!   the server said stop, its pushback is over the cap, the deadline cannot be met, the budget
//!   is spent).
//!
//! A request that does not retry costs the policy no lock and no allocation: the backoff is
//! `Copy`, the per-request [`BackoffState`] is two words, the budget is one atomic operation
//! per request, and a random number generator ([`backoff::Seeds`]) is only made for a request
//! that retries. The layer will read the request's deadline from [`tower_timeout_budget`].
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
