//! Circuit breaker for tower services, with half-open probing.
//!
//! Work in progress: the layer lands with its own issue. The crate depends on
//! [`tower_red`] for outcome classification, rejections and RED metrics.
