//! Test doubles shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use tower_idempotency::store::{
    Claim, Fence, Fingerprint, Record, Store, StoreError, StoreErrorKind, StoreKey,
};

/// A store whose every operation fails.
#[derive(Clone)]
pub struct Down;

impl Store for Down {
    async fn claim(&self, _: &StoreKey, _: &Fingerprint, _: Duration) -> Result<Claim, StoreError> {
        Err(StoreError::new(StoreErrorKind::Unavailable))
    }
    async fn renew(&self, _: &StoreKey, _: Fence, _: Duration) -> Result<bool, StoreError> {
        Err(StoreError::new(StoreErrorKind::Unavailable))
    }
    async fn complete(
        &self,
        _: &StoreKey,
        _: Fence,
        _: &Record,
        _: Duration,
    ) -> Result<bool, StoreError> {
        Err(StoreError::new(StoreErrorKind::Unavailable))
    }
    async fn release(&self, _: &StoreKey, _: Fence) -> Result<bool, StoreError> {
        Err(StoreError::new(StoreErrorKind::Unavailable))
    }
}
