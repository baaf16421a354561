//! [`BulkheadHandle`] as a [`tower_red::readiness::Dependency`], so a bulkhead can be
//! registered with a [`tower_red::Readiness`].
//!
//! A bulkhead is always available: a full bulkhead is load, not an outage, and an instance
//! taken out of rotation because it is busy moves its load onto the others. Its entry lists
//! each partition's `in_flight`, `queued` and `limit`, and its state reads `full` when no
//! partition has a free permit, `accepting` otherwise.
//!
//! ```
//! use tower_bulkhead::{BulkheadLayer, Partition};
//! use tower_red::Readiness;
//!
//! let bulkhead = BulkheadLayer::builder()
//!     .name("db")
//!     .max_concurrent(8)
//!     .partition(Partition::new("background", 2))
//!     .build()?;
//! let report = Readiness::new().critical(bulkhead.handle()).report();
//! assert!(report.is_ready());
//! let entry = report.entry("db").unwrap();
//! assert_eq!(entry.snapshot().state(), "accepting");
//! let limits: Vec<usize> = entry.snapshot().partitions().iter().map(|p| p.limit).collect();
//! assert_eq!(limits, [8, 2]);
//! # Ok::<(), tower_red::ConfigError>(())
//! ```

use tower_red::readiness::{Dependency, Kind, PartitionSnapshot, Snapshot};

use crate::handle::BulkheadHandle;

impl Dependency for BulkheadHandle {
    fn name(&self) -> &str {
        BulkheadHandle::name(self)
    }

    fn kind(&self) -> Kind {
        Kind::Bulkhead
    }

    /// Every partition's counts, the default partition first; always available.
    fn snapshot(&self) -> Snapshot {
        let partitions: Vec<PartitionSnapshot> = self
            .stats()
            .into_iter()
            .map(|p| PartitionSnapshot {
                name: p.name,
                in_flight: p.in_flight,
                queued: p.queued,
                limit: p.limit,
            })
            .collect();
        let full = partitions.iter().all(PartitionSnapshot::is_full);
        partitions.into_iter().fold(
            Snapshot::new(if full { "full" } else { "accepting" }, true),
            Snapshot::with_partition,
        )
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::future::Future;

    use tokio::sync::oneshot;
    use tower::{Service, ServiceExt, service_fn};
    use tower_red::BoxError;

    use super::*;
    use crate::{BulkheadLayer, Partition};

    #[tokio::test]
    async fn a_bulkhead_reads_full_only_when_no_partition_has_a_free_permit_and_stays_available() {
        let layer = BulkheadLayer::builder()
            .name("db")
            .max_concurrent(1)
            .partition(Partition::new("batch", 1))
            .partition_by(|req: &(&'static str, oneshot::Receiver<()>)| Some(req.0))
            .metrics(false)
            .build()
            .unwrap();
        let handle = layer.handle();
        assert_eq!(Dependency::name(&handle), "db");
        assert_eq!(Dependency::kind(&handle), Kind::Bulkhead);
        let mut svc = tower::ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(
                |(_, done): (&'static str, oneshot::Receiver<()>)| async move {
                    let _ = done.await;
                    Ok::<_, BoxError>(())
                },
            ));
        let mut hold = async |partition: &'static str| {
            let (tx, rx) = oneshot::channel();
            let mut call =
                tokio_test::task::spawn(svc.ready().await.unwrap().call((partition, rx)));
            tokio_test::assert_pending!(call.poll());
            (tx, call)
        };
        let idle = handle.snapshot();
        assert_eq!((idle.state(), idle.is_available()), ("accepting", true));

        let (release_default, default_call) = hold("default").await;
        let one_full = handle.snapshot();
        assert_eq!(
            (one_full.state(), one_full.is_available()),
            ("accepting", true)
        );

        let (release_batch, batch_call) = hold("batch").await;
        let full = handle.snapshot();
        assert_eq!((full.state(), full.is_available()), ("full", true));
        assert_eq!(
            full.partitions(),
            [
                PartitionSnapshot {
                    name: "default".into(),
                    in_flight: 1,
                    queued: 0,
                    limit: 1
                },
                PartitionSnapshot {
                    name: "batch".into(),
                    in_flight: 1,
                    queued: 0,
                    limit: 1
                },
            ]
        );

        for (release, call) in [(release_default, default_call), (release_batch, batch_call)] {
            release.send(()).unwrap();
            finish(call).await;
        }
        assert_eq!(handle.snapshot().state(), "accepting");
    }

    async fn finish<F: Future<Output = Result<(), BoxError>>>(call: tokio_test::task::Spawn<F>) {
        call.await.unwrap();
    }
}
