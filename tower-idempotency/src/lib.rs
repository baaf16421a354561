//! `Idempotency-Key` deduplication for tower HTTP services, with in-memory and Redis stores.
//!
//! Work in progress.

mod body;
pub mod client;
mod config;
pub mod future;
mod key;
mod layer;
mod metrics;
mod response;
mod service;
pub mod store;

pub use crate::body::{RequestBody, ResponseBody};
pub use crate::config::{
    IdempotencyLayerBuilder, InFlight, MapRequestBody, OnStoreError, Oversized, StorePolicy, Wrap,
};
pub use crate::layer::IdempotencyLayer;
pub use crate::response::REPLAYED;
pub use crate::service::Idempotency;
pub use crate::store::Fence;
