//! The builder, its validation, and how requests pick a partition.
//!
//! ```
//! use std::time::Duration;
//! use tower_bulkhead::{BulkheadLayer, Partition};
//!
//! let layer = BulkheadLayer::builder()
//!     .name("api")
//!     .max_concurrent(64)
//!     .queue(128, Duration::from_millis(50))
//!     .partition(Partition::new("background", 4))
//!     .partition_by(|req: &http::Request<()>| {
//!         req.uri().path().starts_with("/reports").then_some("background")
//!     })
//!     .build()
//!     .expect("a valid configuration");
//! assert_eq!(layer.handle().limit("background"), Some(4));
//!
//! let err = BulkheadLayer::builder().max_concurrent(0).build().unwrap_err();
//! assert_eq!(err.field(), "max_concurrent");
//! assert_eq!(err.to_string(), "invalid bulkhead config: max_concurrent = 0: must be at least 1");
//! ```
//!
//! **Unknown partition names.** A partition function names partitions at run time, so the
//! builder cannot check its names. A request whose name matches no partition runs in the
//! default partition, as a request that names none does; unlike it, it is counted in
//! `resilience_bulkhead_unknown_partition_total{layer="bulkhead",name}` and the first one is
//! logged as a `tracing` warning with the name, so a typo shows instead of silently sharing
//! the default partition's capacity.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower_red::classify::AnyError;
use tower_red::names;

use crate::adaptive::Aimd;
use crate::body::OnResponse;
use crate::deadline::{FromRequest, FromScope};
use crate::error::ConfigError;
use crate::handle::Shared;
use crate::layer::BulkheadLayer;
use crate::metrics::PartitionMetrics;
use crate::partition::{Mode, PartitionState};
use crate::permits::MAX_LIMIT;

fn invalid(
    field: impl Into<Cow<'static, str>>,
    value: impl fmt::Debug,
    reason: &'static str,
) -> ConfigError {
    ConfigError::new(names::layer::BULKHEAD, field, value, reason)
}

/// The name of the partition that takes every request no partition function claims.
pub const DEFAULT_PARTITION: &str = "default";

/// Picks the partition of a request: `None` means the default partition; a name no partition
/// has also runs in the default partition, counted and logged (see [`Builder::partition_by`]).
pub trait Partitioner<Req> {
    /// The partition `req` belongs to.
    fn partition(&self, req: &Req) -> Option<&str>;
}

/// Every request goes to the default partition.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unpartitioned;

impl<Req> Partitioner<Req> for Unpartitioned {
    #[inline]
    fn partition(&self, _req: &Req) -> Option<&str> {
        None
    }
}

/// A function from request to partition name; see [`Builder::partition_by`].
#[derive(Clone, Copy)]
pub struct PartitionFn<F>(F);

impl<F> fmt::Debug for PartitionFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PartitionFn")
    }
}

impl<F, Req> Partitioner<Req> for PartitionFn<F>
where
    F: Fn(&Req) -> Option<&'static str>,
{
    #[inline]
    fn partition(&self, req: &Req) -> Option<&str> {
        (self.0)(req)
    }
}

/// One partition: a class of requests with its own limit and queue.
#[derive(Debug, Clone)]
pub struct Partition {
    name: Arc<str>,
    max_concurrent: usize,
    queue: Option<(usize, Duration)>,
    adaptive: Option<Aimd>,
}

impl Partition {
    /// A partition `name` allowing `max_concurrent` calls at once, rejecting the rest at once.
    pub fn new(name: impl Into<Arc<str>>, max_concurrent: usize) -> Self {
        Partition {
            name: name.into(),
            max_concurrent,
            queue: None,
            adaptive: None,
        }
    }

    /// Lets at most `max_len` calls wait, each for at most `max_wait` (and never past its
    /// deadline), in arrival order, instead of rejecting them at once.
    #[must_use]
    pub fn queue(mut self, max_len: usize, max_wait: Duration) -> Self {
        self.queue = Some((max_len, max_wait));
        self
    }

    /// Makes this partition's limit adaptive, starting from `max_concurrent`.
    #[must_use]
    pub fn adaptive(mut self, aimd: Aimd) -> Self {
        self.adaptive = Some(aimd);
        self
    }

    fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(invalid(format!("{prefix}name"), "", "must not be empty"));
        }
        if self.max_concurrent == 0 {
            return Err(invalid(
                format!("{prefix}max_concurrent"),
                0,
                "must be at least 1",
            ));
        }
        if self.max_concurrent > MAX_LIMIT {
            return Err(invalid(
                format!("{prefix}max_concurrent"),
                self.max_concurrent,
                "must be at most 4294967295",
            ));
        }
        if let Some((max_len, max_wait)) = self.queue {
            if max_len == 0 {
                return Err(invalid(
                    format!("{prefix}queue.max_len"),
                    0,
                    "must be at least 1 (leave the queue out to reject at once)",
                ));
            }
            if max_len > MAX_LIMIT {
                return Err(invalid(
                    format!("{prefix}queue.max_len"),
                    max_len,
                    "must be at most 4294967295",
                ));
            }
            if max_wait.is_zero() {
                return Err(invalid(
                    format!("{prefix}queue.max_wait"),
                    max_wait,
                    "must be positive (leave the queue out to reject at once)",
                ));
            }
        }
        if let Some(aimd) = &self.adaptive {
            aimd.validate(prefix, self.max_concurrent)?;
        }
        Ok(())
    }
}

/// Builds a [`BulkheadLayer`]; [`Builder::build`] checks every value.
///
/// Defaults: name `bulkhead`, 25 concurrent calls (Resilience4j's default), reject at once when
/// full, no partitions, deadline-aware shedding on for queues, metrics on, the [`AnyError`]
/// classifier (as every layer of the workspace), the deadline from the task-local scope.
#[must_use]
pub struct Builder<P = Unpartitioned, H = OnResponse, C = AnyError, D = FromScope> {
    name: Arc<str>,
    default: Partition,
    partitions: Vec<Partition>,
    backpressure: bool,
    shed_on_deadline: bool,
    metrics: bool,
    partitioned: bool,
    partitioner: P,
    classifier: C,
    deadline: D,
    _release: PhantomData<fn() -> H>,
}

impl<P: Clone, H, C: Clone, D: Clone> Clone for Builder<P, H, C, D> {
    fn clone(&self) -> Self {
        Builder {
            name: self.name.clone(),
            default: self.default.clone(),
            partitions: self.partitions.clone(),
            backpressure: self.backpressure,
            shed_on_deadline: self.shed_on_deadline,
            metrics: self.metrics,
            partitioned: self.partitioned,
            partitioner: self.partitioner.clone(),
            classifier: self.classifier.clone(),
            deadline: self.deadline.clone(),
            _release: PhantomData,
        }
    }
}

impl<P, H, C: fmt::Debug, D: fmt::Debug> fmt::Debug for Builder<P, H, C, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("default", &self.default)
            .field("partitions", &self.partitions)
            .field("backpressure", &self.backpressure)
            .field("shed_on_deadline", &self.shed_on_deadline)
            .field("metrics", &self.metrics)
            .field("classifier", &self.classifier)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: "bulkhead".into(),
            default: Partition::new(DEFAULT_PARTITION, 25),
            partitions: Vec::new(),
            backpressure: false,
            shed_on_deadline: true,
            metrics: true,
            partitioned: false,
            partitioner: Unpartitioned,
            classifier: AnyError,
            deadline: FromScope,
            _release: PhantomData,
        }
    }
}

impl<P, H, C, D> Builder<P, H, C, D> {
    /// The instance name: the `name` label of every metric and the name in rejections.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The limit of the default partition.
    pub fn max_concurrent(mut self, max_concurrent: usize) -> Self {
        self.default.max_concurrent = max_concurrent;
        self
    }

    /// Lets at most `max_len` calls of the default partition wait, each for at most `max_wait`
    /// and never past its deadline, in arrival order.
    pub fn queue(mut self, max_len: usize, max_wait: Duration) -> Self {
        self.default.queue = Some((max_len, max_wait));
        self
    }

    /// With `true`, waits for a permit in `poll_ready` instead of rejecting, like
    /// `tower::limit::ConcurrencyLimit`; the permit reserved there is used by the next `call`,
    /// and a clone of the service does not inherit it. The wait is unbounded: put a timeout
    /// layer above. Incompatible with partitions and queues, since `poll_ready` runs before
    /// the request is seen. Off by default.
    pub fn backpressure(mut self, on: bool) -> Self {
        self.backpressure = on;
        self
    }

    /// Makes the default partition's limit adaptive, starting from `max_concurrent`.
    pub fn adaptive(mut self, aimd: Aimd) -> Self {
        self.default.adaptive = Some(aimd);
        self
    }

    /// Adds a partition. Requests reach it through [`Builder::partition_by`].
    pub fn partition(mut self, partition: Partition) -> Self {
        self.partitions.push(partition);
        self
    }

    /// Sheds a queued call as soon as its remaining deadline is no longer than the recently
    /// observed service time of its partition (an exponentially weighted mean), instead of
    /// letting it wait for a permit it could not use in time: when it arrives, when its
    /// remaining time reaches the estimate, and when a finished call grows the estimate past
    /// its remaining time. On by default; applies to partitions with a queue.
    pub fn shed_on_deadline(mut self, on: bool) -> Self {
        self.shed_on_deadline = on;
        self
    }

    /// Records metrics (on by default). Off, a call with a free permit reads no clock.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Picks each request's partition by name; `None` means the default partition.
    ///
    /// The names a function returns are known only at run time, so the builder cannot check
    /// them. A name no partition has also runs in the default partition, but not silently: it
    /// is counted in `resilience_bulkhead_unknown_partition_total{layer="bulkhead",name}` and
    /// the first one is logged as a `tracing` warning naming it.
    pub fn partition_by<F, Req>(self, f: F) -> Builder<PartitionFn<F>, H, C, D>
    where
        F: Fn(&Req) -> Option<&'static str>,
    {
        let mut builder = self.rebuild(|_| PartitionFn(f), |c| c, |d| d);
        builder.partitioned = true;
        builder
    }

    /// Judges finished calls with `classifier` (any [`tower_red::Classify`] of the inner
    /// service's response and a [`tower_red::BoxError`]), as the breaker and retry layers of
    /// the stack do; [`AnyError`] by default. The verdict feeds the adaptive limit and the
    /// service-time estimate, and the RED `outcome`, through [`tower_red::judge`]: a refusal of
    /// an inner layer (an open breaker below) never counts as the backend's failure or
    /// latency, and is recorded as `inner_refusal`. With
    /// [`HttpStatus`](tower_red::classify::HttpStatus), a 5xx is a failure for AIMD.
    pub fn classifier<C2>(self, classifier: C2) -> Builder<P, H, C2, D> {
        self.rebuild(|p| p, |_| classifier, |d| d)
    }

    /// Reads a queued call's deadline from the request ([`tower_timeout_budget::DeadlineCarrier`],
    /// then the task-local scope) instead of the task-local scope alone; needed when a
    /// deadline lives only on the request (see [`deadline`](crate::deadline)). Requires the
    /// request type to implement `DeadlineCarrier`.
    pub fn deadline_from_request(self) -> Builder<P, H, C, FromRequest> {
        self.rebuild(|p| p, |c| c, |_| FromRequest)
    }

    /// Holds each permit until the HTTP response body has ended or was dropped, not just until
    /// the response head arrives: a streamed body keeps its place in the bulkhead. (A method
    /// without a flag: it changes the response type.)
    pub fn hold_permit_until_body_end(self) -> Builder<P, crate::body::OnBodyEnd, C, D> {
        self.rebuild(|p| p, |c| c, |d| d)
    }

    fn rebuild<P2, H2, C2, D2>(
        self,
        p: impl FnOnce(P) -> P2,
        c: impl FnOnce(C) -> C2,
        d: impl FnOnce(D) -> D2,
    ) -> Builder<P2, H2, C2, D2> {
        Builder {
            name: self.name,
            default: self.default,
            partitions: self.partitions,
            backpressure: self.backpressure,
            shed_on_deadline: self.shed_on_deadline,
            metrics: self.metrics,
            partitioned: self.partitioned,
            partitioner: p(self.partitioner),
            classifier: c(self.classifier),
            deadline: d(self.deadline),
            _release: PhantomData,
        }
    }

    /// Checks every value and builds the layer, registering its metric handles with the
    /// recorder installed now.
    pub fn build(self) -> Result<BulkheadLayer<P, H, C, D>, ConfigError> {
        if self.name.is_empty() {
            return Err(invalid("name", "", "must not be empty"));
        }
        self.default.validate("")?;
        for (i, p) in self.partitions.iter().enumerate() {
            p.validate(&format!("partitions.{}.", p.name))?;
            let taken = &*p.name == DEFAULT_PARTITION
                || self.partitions[..i].iter().any(|q| q.name == p.name);
            if taken {
                return Err(invalid(
                    format!("partitions.{}.name", p.name),
                    &*p.name,
                    "is already taken (`default` is reserved for the default partition)",
                ));
            }
        }
        if self.backpressure {
            if !self.partitions.is_empty() {
                return Err(invalid(
                    "backpressure",
                    true,
                    "cannot be combined with partitions: poll_ready runs before the request picks its partition",
                ));
            }
            if self.default.queue.is_some() {
                return Err(invalid(
                    "backpressure",
                    true,
                    "cannot be combined with a queue: backpressure already waits in poll_ready",
                ));
            }
        }
        let queues = std::iter::once(&self.default)
            .chain(&self.partitions)
            .any(|p| p.queue.is_some());
        let red = self
            .metrics
            .then(|| crate::metrics::red(&self.name, queues));
        let state = |p: &Partition, backpressure: bool| {
            let mode = match (backpressure, p.queue) {
                (true, _) => Mode::Backpressure,
                (false, Some((max_len, max_wait))) => Mode::Queue { max_len, max_wait },
                (false, None) => Mode::Reject,
            };
            Arc::new(PartitionState::new(
                p.name.clone(),
                self.name.clone(),
                p.max_concurrent,
                mode,
                self.shed_on_deadline,
                p.adaptive,
                red.clone()
                    .map(|red| PartitionMetrics::new(red, &p.name, mode)),
            ))
        };
        let partitions = std::iter::once(state(&self.default, self.backpressure))
            .chain(self.partitions.iter().map(|p| state(p, false)))
            .collect();
        let shared = Arc::new(Shared::new(
            self.name,
            partitions,
            self.backpressure,
            self.metrics && self.partitioned,
        ));
        Ok(BulkheadLayer::from_parts(
            shared,
            self.partitioner,
            self.classifier,
            self.deadline,
        ))
    }
}
