//! Retries for tower services: exponential backoff with jitter, retry budgets, body replay.
//!
//! Work in progress: the layer lands with its own issue. It reads request deadlines from
//! [`tower_timeout_budget`].

pub mod backoff;
pub mod budget;
pub mod config;
pub mod pushback;
