//! `Idempotency-Key` deduplication for tower HTTP services, with in-memory and Redis stores.
//!
//! Work in progress: the layer lands with its own issue. It reads request deadlines from
//! [`tower_timeout_budget`].

pub mod store;
