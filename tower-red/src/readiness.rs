//! Readiness: one endpoint that reports every registered breaker and bulkhead as JSON, and
//! answers 503 when the critical dependencies are down, so an orchestrator (a Kubernetes
//! readiness probe, a load balancer health check) stops routing to this instance.
//!
//! The registry lives here, in the shared core, because the layer crates depend only on
//! `tower-red` (and `tower-timeout-budget`): `tower-breaker`'s `BreakerHandle` (one breaker) and
//! `KeyedBreakerHandle` (every key of a keyed breaker, down only when all refuse calls) and
//! `tower-bulkhead`'s `BulkheadHandle` implement [`Dependency`], and a [`Readiness`] holds any
//! number of them, each marked [`critical`](Readiness::critical) or
//! [`optional`](Readiness::optional). Anything else (a connection pool, a cache) can implement
//! [`Dependency`] too.
//!
//! # What counts as down
//!
//! Each dependency decides whether it is available ([`Snapshot::is_available`]):
//!
//! - **A breaker** is unavailable while it refuses every call: `forced_open`, and `open`
//!   *while its open time runs*. Half-open is available, since probes flow and their outcome
//!   decides. An `open` breaker whose open time has passed is available too (`"open_for_ms":
//!   0`): it moves to half-open on the next call, and only traffic sends that call. Were it
//!   counted as down, an instance taken out of rotation would get no traffic, its breaker would
//!   never probe, and it would stay unready after the dependency recovered. So an instance whose
//!   critical breaker opened is unready for the open time, then ready again to let a probe
//!   through; a failing probe reopens it for another open time.
//! - **A keyed breaker** (one breaker per host or route, as one dependency) is unavailable only
//!   while every live key's breaker refuses calls by the rule above; its state reads
//!   `partially_open` while some do. Its keys are usually replicas of one service, any of which
//!   can serve: this is [`ReadyWhen::AnyCriticalAvailable`] within one entry.
//! - **A bulkhead** is always available: a full bulkhead is load, not an outage, and taking a
//!   loaded instance out of rotation moves its load onto the others, which then fill up too. Its
//!   entry reports each partition's `in_flight`, `queued` and `limit` for dashboards and
//!   debugging, and `state` reads `full` when no partition has a free permit.
//!
//! # The policy
//!
//! [`ReadyWhen::AllCriticalAvailable`] (the default): not ready when **any** critical
//! dependency is unavailable. [`ReadyWhen::AnyCriticalAvailable`]: not ready only when **all**
//! critical dependencies are unavailable, for critical dependencies that are replicas of one
//! service (one breaker per replica), any of which can serve. Optional dependencies are
//! reported and never change the answer; with no critical dependency the instance is ready.
//!
//! # Serving it
//!
//! [`Readiness`] is a `tower::Service` for any `http::Request<B>` (mount it with axum's
//! `Router::route_service("/ready", readiness)`), and [`Readiness::http_response`] is the same
//! response from a plain function. The response is `200 OK` or `503 Service Unavailable`, with
//! `content-type: application/json` and `cache-control: no-store`. With the `axum` feature a
//! [`Report`] is an `IntoResponse`, and `handler` takes the `Readiness` from axum's state.
//!
//! It costs nothing on the layers' request path: the layers know nothing of it, and it reads
//! their handles (a few atomic loads each) only when asked. Registration builds an immutable
//! list shared by every clone, so a report takes no lock either.
//!
//! # Example
//!
//! A real stack registers `breaker_layer.handle()` and `bulkhead_layer.handle()`; here a
//! hand-written [`Dependency`] shows the JSON shape.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use tower_red::readiness::{Dependency, Kind, PartitionSnapshot, Readiness, Snapshot};
//!
//! struct Db(Arc<AtomicBool>);
//!
//! impl Dependency for Db {
//!     fn name(&self) -> &str { "db" }
//!     fn kind(&self) -> Kind { Kind::Breaker }
//!     fn snapshot(&self) -> Snapshot {
//!         if self.0.load(Ordering::Relaxed) {
//!             Snapshot::new("closed", true).with_count("failures", 0)
//!         } else {
//!             Snapshot::new("open", false).with_open_for(std::time::Duration::from_secs(30))
//!         }
//!     }
//! }
//!
//! struct Pool;
//!
//! impl Dependency for Pool {
//!     fn name(&self) -> &str { "pool" }
//!     fn kind(&self) -> Kind { Kind::Bulkhead }
//!     fn snapshot(&self) -> Snapshot {
//!         Snapshot::new("accepting", true).with_partition(PartitionSnapshot {
//!             name: "default".into(),
//!             in_flight: 3,
//!             queued: 0,
//!             limit: 16,
//!         })
//!     }
//! }
//!
//! let up = Arc::new(AtomicBool::new(true));
//! let readiness = Readiness::new().critical(Db(up.clone())).optional(Pool);
//!
//! let report = readiness.report();
//! assert!(report.is_ready());
//! assert_eq!(report.status(), 200);
//!
//! up.store(false, Ordering::Relaxed);
//! let report = readiness.report();
//! assert!(!report.is_ready());
//! assert_eq!(
//!     report.to_json(),
//!     r#"{"status":"not_ready","ready_when":"all_critical_available","dependencies":[{"name":"db","kind":"breaker","critical":true,"available":false,"state":"open","open_for_ms":30000},{"name":"pool","kind":"bulkhead","critical":false,"available":true,"state":"accepting","partitions":[{"name":"default","in_flight":3,"queued":0,"limit":16}]}]}"#
//! );
//!
//! let res = readiness.http_response();
//! assert_eq!(res.status(), 503);
//! assert_eq!(res.headers()["content-type"], "application/json");
//! assert_eq!(res.headers()["cache-control"], "no-store");
//! ```
//!
//! Mounted on an axum router (feature `axum` only for the `handler` form):
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{routing::get, Router};
//! use tower_red::readiness::{self, Readiness};
//!
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let ready = Readiness::new(); // .critical(breaker.handle()).optional(bulkhead.handle())
//! let app: Router = Router::new()
//!     .route_service("/ready", ready.clone()) // the tower Service
//!     .route("/readyz", get(readiness::handler)) // or a handler reading the state
//!     .with_state(ready);
//! for path in ["/ready", "/readyz"] {
//!     let req = http::Request::get(path).body(axum::body::Body::empty()).unwrap();
//!     let res = app.clone().oneshot(req).await.unwrap();
//!     assert_eq!(res.status(), 200);
//!     assert_eq!(res.headers()["content-type"], "application/json");
//! }
//! # }
//! # }
//! ```

use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use tower_service::Service;

use crate::problem::push_json_string;

/// The body of readiness responses.
pub type ReadinessBody = Full<Bytes>;

/// What kind of dependency an entry is: its `kind` in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A circuit breaker (`"breaker"`).
    Breaker,
    /// A bulkhead (`"bulkhead"`).
    Bulkhead,
    /// Anything else, named by the implementer (a pool, a cache).
    Other(&'static str),
}

impl Kind {
    /// The JSON value: `breaker`, `bulkhead`, or the name of [`Kind::Other`].
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Breaker => "breaker",
            Kind::Bulkhead => "bulkhead",
            Kind::Other(name) => name,
        }
    }
}

/// Something readiness reports on: a breaker, a bulkhead, or anything that can say whether it
/// is available. Implemented by `tower_breaker::BreakerHandle`,
/// `tower_breaker::KeyedBreakerHandle` and `tower_bulkhead::BulkheadHandle`.
///
/// [`snapshot`](Dependency::snapshot) is called on every report, from the task serving the
/// readiness request: keep it to a few reads of shared state, with no I/O and no waiting.
pub trait Dependency: Send + Sync + 'static {
    /// The instance name, reported as `name` (read once, when registered).
    fn name(&self) -> &str;

    /// The kind, reported as `kind`.
    fn kind(&self) -> Kind;

    /// The dependency's state now.
    fn snapshot(&self) -> Snapshot;
}

/// One partition of a bulkhead (or any pool) at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSnapshot {
    /// The partition's name.
    pub name: Arc<str>,
    /// Calls holding a permit.
    pub in_flight: usize,
    /// Calls waiting for a permit.
    pub queued: usize,
    /// The current limit.
    pub limit: usize,
}

impl PartitionSnapshot {
    /// Whether every permit is taken.
    pub fn is_full(&self) -> bool {
        self.in_flight >= self.limit
    }
}

/// A dependency's state at a moment, as its [`Dependency::snapshot`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    state: &'static str,
    available: bool,
    open_for: Option<Duration>,
    counts: Vec<(&'static str, u64)>,
    partitions: Vec<PartitionSnapshot>,
}

impl Snapshot {
    /// A snapshot in `state` (such as `closed`, `open`, `accepting`), available or not.
    pub fn new(state: &'static str, available: bool) -> Self {
        Snapshot {
            state,
            available,
            open_for: None,
            counts: Vec::new(),
            partitions: Vec::new(),
        }
    }

    /// With the time until the dependency may be tried again (a breaker's remaining open
    /// time), reported as `open_for_ms`, rounded up.
    pub fn with_open_for(mut self, open_for: Duration) -> Self {
        self.open_for = Some(open_for);
        self
    }

    /// With a named count, reported in the `counts` object in the order added.
    pub fn with_count(mut self, name: &'static str, value: u64) -> Self {
        self.counts.push((name, value));
        self
    }

    /// With a partition, reported in the `partitions` array in the order added.
    pub fn with_partition(mut self, partition: PartitionSnapshot) -> Self {
        self.partitions.push(partition);
        self
    }

    /// The state's name.
    pub fn state(&self) -> &'static str {
        self.state
    }

    /// Whether the dependency can serve calls now.
    pub fn is_available(&self) -> bool {
        self.available
    }

    /// The time until the dependency may be tried again, if it said.
    pub fn open_for(&self) -> Option<Duration> {
        self.open_for
    }

    /// The named counts.
    pub fn counts(&self) -> &[(&'static str, u64)] {
        &self.counts
    }

    /// The partitions.
    pub fn partitions(&self) -> &[PartitionSnapshot] {
        &self.partitions
    }
}

/// Whether a dependency being down makes the instance unready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Criticality {
    /// Counts for readiness under the [`ReadyWhen`] policy.
    Critical,
    /// Reported, never changes the answer.
    Optional,
}

/// When the instance is ready, given its critical dependencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ReadyWhen {
    /// Ready when every critical dependency is available: any one down makes it unready.
    #[default]
    AllCriticalAvailable,
    /// Ready when at least one critical dependency is available: unready only when all are
    /// down. For critical dependencies that are replicas of one service.
    AnyCriticalAvailable,
}

impl ReadyWhen {
    /// The JSON value: `all_critical_available` or `any_critical_available`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyWhen::AllCriticalAvailable => "all_critical_available",
            ReadyWhen::AnyCriticalAvailable => "any_critical_available",
        }
    }

    fn decide(self, mut critical_available: impl Iterator<Item = bool>) -> bool {
        match self {
            ReadyWhen::AllCriticalAvailable => critical_available.all(|up| up),
            ReadyWhen::AnyCriticalAvailable => {
                let mut any = false;
                let mut none_critical = true;
                for up in critical_available {
                    none_critical = false;
                    any |= up;
                }
                any || none_critical
            }
        }
    }
}

#[derive(Clone)]
struct Registered {
    name: Arc<str>,
    critical: bool,
    dependency: Arc<dyn Dependency>,
}

/// The registry of dependencies and the readiness endpoint; see the [module docs](self).
///
/// Built once at start-up with [`critical`](Readiness::critical) and
/// [`optional`](Readiness::optional); cheap to clone (clones share the list).
#[derive(Clone, Default)]
#[must_use]
pub struct Readiness {
    dependencies: Arc<Vec<Registered>>,
    ready_when: ReadyWhen,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for dep in self.dependencies.iter() {
            list.entry(&(&*dep.name, dep.dependency.kind(), dep.critical));
        }
        list.finish()?;
        f.write_str(" ready_when ")?;
        f.write_str(self.ready_when.as_str())
    }
}

impl Readiness {
    /// An empty registry (ready) with the default policy,
    /// [`ReadyWhen::AllCriticalAvailable`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a dependency whose outage makes the instance unready (under the policy).
    pub fn critical(self, dependency: impl Dependency) -> Self {
        self.register(dependency, Criticality::Critical)
    }

    /// Registers a dependency that is reported but never makes the instance unready.
    pub fn optional(self, dependency: impl Dependency) -> Self {
        self.register(dependency, Criticality::Optional)
    }

    /// Registers a dependency as critical or optional. Entries are reported in the order
    /// registered.
    pub fn register(mut self, dependency: impl Dependency, criticality: Criticality) -> Self {
        let registered = Registered {
            name: Arc::from(dependency.name()),
            critical: criticality == Criticality::Critical,
            dependency: Arc::new(dependency),
        };
        // Clones made before this call keep their own list; registering is a start-up step.
        Arc::make_mut(&mut self.dependencies).push(registered);
        self
    }

    /// Sets the policy; [`ReadyWhen::AllCriticalAvailable`] by default.
    pub fn ready_when(mut self, ready_when: ReadyWhen) -> Self {
        self.ready_when = ready_when;
        self
    }

    /// Every dependency's state now, and the verdict.
    pub fn report(&self) -> Report {
        let entries: Vec<Entry> = self
            .dependencies
            .iter()
            .map(|dep| Entry {
                name: dep.name.clone(),
                kind: dep.dependency.kind(),
                critical: dep.critical,
                snapshot: dep.dependency.snapshot(),
            })
            .collect();
        let ready = self.ready_when.decide(
            entries
                .iter()
                .filter(|e| e.critical)
                .map(|e| e.snapshot.available),
        );
        Report {
            ready,
            ready_when: self.ready_when,
            entries,
        }
    }

    /// Whether the instance is ready now (the verdict of [`report`](Readiness::report)).
    pub fn is_ready(&self) -> bool {
        self.ready_when.decide(
            self.dependencies
                .iter()
                .filter(|dep| dep.critical)
                .map(|dep| dep.dependency.snapshot().available),
        )
    }

    /// The readiness response now: 200 or 503, `application/json`, `no-store`, the report as
    /// the body. The same as the [`Service`] answers.
    pub fn http_response(&self) -> Response<ReadinessBody> {
        self.report().http_response()
    }
}

impl<B> Service<http::Request<B>> for Readiness {
    type Response = Response<ReadinessBody>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<B>) -> Self::Future {
        ready(Ok(self.http_response()))
    }
}

/// One dependency in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    name: Arc<str>,
    kind: Kind,
    critical: bool,
    snapshot: Snapshot,
}

impl Entry {
    /// The dependency's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether it was registered as critical.
    pub fn is_critical(&self) -> bool {
        self.critical
    }

    /// Its state when the report was made.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// Every registered dependency's state at one moment, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    ready: bool,
    ready_when: ReadyWhen,
    entries: Vec<Entry>,
}

impl Report {
    /// Whether the instance is ready.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// `200 OK` when ready, `503 Service Unavailable` when not.
    pub fn status(&self) -> StatusCode {
        if self.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }

    /// The policy that decided.
    pub fn ready_when(&self) -> ReadyWhen {
        self.ready_when
    }

    /// The dependencies, in the order registered.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry named `name` (the first, if several share it).
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| &*e.name == name)
    }

    /// The report as one line of JSON (shape in the [module docs](self)). Optional fields
    /// (`open_for_ms`, `counts`, `partitions`) are left out when the dependency gave none.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(96 + 160 * self.entries.len());
        out.push_str("{\"status\":");
        push_json_string(&mut out, if self.ready { "ready" } else { "not_ready" });
        out.push_str(",\"ready_when\":");
        push_json_string(&mut out, self.ready_when.as_str());
        out.push_str(",\"dependencies\":[");
        for (i, entry) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            entry.write_json(&mut out);
        }
        out.push_str("]}");
        out
    }

    /// The HTTP response: [`status`](Report::status), `content-type: application/json`,
    /// `cache-control: no-store`, and [`to_json`](Report::to_json) as the body.
    pub fn http_response(&self) -> Response<ReadinessBody> {
        let mut res = Response::new(Full::new(Bytes::from(self.to_json())));
        *res.status_mut() = self.status();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // A probe must see the state now, never a cached answer.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

impl Entry {
    fn write_json(&self, out: &mut String) {
        let snap = &self.snapshot;
        out.push_str("{\"name\":");
        push_json_string(out, &self.name);
        out.push_str(",\"kind\":");
        push_json_string(out, self.kind.as_str());
        let _ = write!(
            out,
            ",\"critical\":{},\"available\":{},\"state\":",
            self.critical, snap.available
        );
        push_json_string(out, snap.state);
        if let Some(open_for) = snap.open_for {
            let _ = write!(out, ",\"open_for_ms\":{}", ceil_millis(open_for));
        }
        if !snap.counts.is_empty() {
            out.push_str(",\"counts\":{");
            for (i, (name, value)) in snap.counts.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(out, name);
                let _ = write!(out, ":{value}");
            }
            out.push('}');
        }
        if !snap.partitions.is_empty() {
            out.push_str(",\"partitions\":[");
            for (i, p) in snap.partitions.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"name\":");
                push_json_string(out, &p.name);
                let _ = write!(
                    out,
                    ",\"in_flight\":{},\"queued\":{},\"limit\":{}}}",
                    p.in_flight, p.queued, p.limit
                );
            }
            out.push(']');
        }
        out.push('}');
    }
}

/// Milliseconds, rounded up: a dependency with 0.4 ms left is not `0` ms from retrying.
fn ceil_millis(d: Duration) -> u128 {
    d.as_nanos().div_ceil(1_000_000)
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Report {
    /// [`Report::http_response`].
    fn into_response(self) -> axum::response::Response {
        self.http_response().map(axum::body::Body::new)
    }
}

/// An axum handler that answers the readiness report of the `Readiness` in the router's state
/// (`Router::with_state(readiness)`, or any state it can be taken from with `FromRef`).
#[cfg(feature = "axum")]
pub async fn handler(axum::extract::State(readiness): axum::extract::State<Readiness>) -> Report {
    readiness.report()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    /// A dependency whose snapshot the test sets.
    #[derive(Clone)]
    struct Fake {
        name: &'static str,
        kind: Kind,
        snapshot: Arc<Mutex<Snapshot>>,
    }

    impl Fake {
        fn breaker(name: &'static str) -> Self {
            Fake {
                name,
                kind: Kind::Breaker,
                snapshot: Arc::new(Mutex::new(Snapshot::new("closed", true))),
            }
        }

        fn set(&self, snapshot: Snapshot) {
            *self.snapshot.lock().unwrap() = snapshot;
        }

        fn open(&self) {
            self.set(Snapshot::new("open", false).with_open_for(Duration::from_secs(5)));
        }
    }

    impl Dependency for Fake {
        fn name(&self) -> &str {
            self.name
        }
        fn kind(&self) -> Kind {
            self.kind
        }
        fn snapshot(&self) -> Snapshot {
            self.snapshot.lock().unwrap().clone()
        }
    }

    #[test]
    fn an_empty_registry_is_ready() {
        let report = Readiness::new().report();
        assert!(report.is_ready());
        assert_eq!(
            report.to_json(),
            r#"{"status":"ready","ready_when":"all_critical_available","dependencies":[]}"#
        );
        let any = Readiness::new().ready_when(ReadyWhen::AnyCriticalAvailable);
        assert!(any.report().is_ready());
        assert!(any.is_ready());
    }

    #[test]
    fn one_critical_dependency_down_makes_the_instance_unready_by_default() {
        let (a, b) = (Fake::breaker("a"), Fake::breaker("b"));
        let readiness = Readiness::new().critical(a.clone()).critical(b.clone());
        assert!(readiness.report().is_ready());
        b.open();
        let report = readiness.report();
        assert!(!report.is_ready());
        assert!(!readiness.is_ready());
        assert_eq!(report.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!report.entry("b").unwrap().snapshot().is_available());
        assert!(report.entry("a").unwrap().snapshot().is_available());
        b.set(Snapshot::new("closed", true));
        assert!(readiness.report().is_ready());
        assert_eq!(readiness.report().status(), StatusCode::OK);
    }

    #[test]
    fn an_optional_dependency_down_keeps_the_instance_ready() {
        let (a, b) = (Fake::breaker("a"), Fake::breaker("b"));
        let readiness = Readiness::new().critical(a.clone()).optional(b.clone());
        b.open();
        let report = readiness.report();
        assert!(report.is_ready());
        assert!(!report.entry("b").unwrap().is_critical());
        assert!(!report.entry("b").unwrap().snapshot().is_available());
        a.open();
        assert!(!readiness.report().is_ready());
    }

    #[test]
    fn any_critical_available_is_unready_only_when_every_critical_one_is_down() {
        let (a, b, c) = (Fake::breaker("a"), Fake::breaker("b"), Fake::breaker("c"));
        let readiness = Readiness::new()
            .ready_when(ReadyWhen::AnyCriticalAvailable)
            .critical(a.clone())
            .critical(b.clone())
            .optional(c.clone());
        c.open();
        a.open();
        assert!(readiness.report().is_ready());
        assert!(readiness.is_ready());
        b.open();
        let report = readiness.report();
        assert!(!report.is_ready());
        assert!(!readiness.is_ready());
        assert_eq!(report.ready_when(), ReadyWhen::AnyCriticalAvailable);
        assert!(
            report
                .to_json()
                .contains(r#""ready_when":"any_critical_available""#)
        );
        a.set(Snapshot::new("half_open", true));
        assert!(readiness.report().is_ready());
    }

    #[test]
    fn any_critical_available_with_only_optional_dependencies_down_is_ready() {
        let a = Fake::breaker("a");
        a.open();
        let readiness = Readiness::new()
            .ready_when(ReadyWhen::AnyCriticalAvailable)
            .optional(a);
        assert!(readiness.report().is_ready());
    }

    #[test]
    fn names_and_states_are_escaped_as_json_strings() {
        let dep = Fake {
            name: "a\"b\\c\nd\te\u{1}f\u{7f}é☃/ g",
            kind: Kind::Other("po\"ol"),
            snapshot: Arc::new(Mutex::new(
                Snapshot::new("we\"ird", true)
                    .with_count("x\ty", 7)
                    .with_partition(PartitionSnapshot {
                        name: "p\r\"q".into(),
                        in_flight: 1,
                        queued: 2,
                        limit: 3,
                    }),
            )),
        };
        let json = Readiness::new().optional(dep).report().to_json();
        assert_eq!(
            json,
            "{\"status\":\"ready\",\"ready_when\":\"all_critical_available\",\"dependencies\":[\
             {\"name\":\"a\\\"b\\\\c\\nd\\te\\u0001f\u{7f}é☃/ g\",\"kind\":\"po\\\"ol\",\
             \"critical\":false,\"available\":true,\"state\":\"we\\\"ird\",\
             \"counts\":{\"x\\ty\":7},\
             \"partitions\":[{\"name\":\"p\\r\\\"q\",\"in_flight\":1,\"queued\":2,\"limit\":3}]}]}"
        );
    }

    #[test]
    fn several_entries_counts_and_partitions_are_comma_separated() {
        let part = |name: &str, in_flight| PartitionSnapshot {
            name: name.into(),
            in_flight,
            queued: 0,
            limit: 4,
        };
        let pool = Fake {
            name: "pool",
            kind: Kind::Bulkhead,
            snapshot: Arc::new(Mutex::new(
                Snapshot::new("accepting", true)
                    .with_partition(part("default", 1))
                    .with_partition(part("batch", 2)),
            )),
        };
        let a = Fake::breaker("a");
        a.set(
            Snapshot::new("closed", true)
                .with_count("calls", 9)
                .with_count("failures", 2),
        );
        let report = Readiness::new().critical(a).optional(pool).report();
        assert_eq!(
            report.to_json(),
            "{\"status\":\"ready\",\"ready_when\":\"all_critical_available\",\"dependencies\":[\
             {\"name\":\"a\",\"kind\":\"breaker\",\"critical\":true,\"available\":true,\
             \"state\":\"closed\",\"counts\":{\"calls\":9,\"failures\":2}},\
             {\"name\":\"pool\",\"kind\":\"bulkhead\",\"critical\":false,\"available\":true,\
             \"state\":\"accepting\",\"partitions\":[\
             {\"name\":\"default\",\"in_flight\":1,\"queued\":0,\"limit\":4},\
             {\"name\":\"batch\",\"in_flight\":2,\"queued\":0,\"limit\":4}]}]}"
        );
        let a = report.entry("a").unwrap();
        assert!(a.is_critical());
        assert_eq!(a.kind(), Kind::Breaker);
        assert_eq!(a.snapshot().state(), "closed");
        assert_eq!(a.snapshot().counts(), [("calls", 9), ("failures", 2)]);
        assert_eq!(a.snapshot().open_for(), None);
        let pool = report.entry("pool").unwrap();
        assert!(!pool.is_critical());
        let names: Vec<&str> = pool
            .snapshot()
            .partitions()
            .iter()
            .map(|p| &*p.name)
            .collect();
        assert_eq!(names, ["default", "batch"]);
    }

    #[test]
    fn debug_lists_the_dependencies_and_the_policy() {
        let readiness = Readiness::new()
            .critical(Fake::breaker("a"))
            .optional(Fake::breaker("b"));
        let debug = format!("{readiness:?}");
        assert_eq!(
            debug,
            r#"[("a", Breaker, true), ("b", Breaker, false)] ready_when all_critical_available"#
        );
    }

    #[test]
    fn open_time_is_reported_in_milliseconds_rounded_up() {
        let a = Fake::breaker("a");
        a.set(Snapshot::new("open", false).with_open_for(Duration::from_micros(1_400)));
        let json = Readiness::new().critical(a.clone()).report().to_json();
        assert!(json.contains(r#""open_for_ms":2"#), "{json}");
        let report = Readiness::new().critical(a.clone()).report();
        let snapshot = report.entry("a").unwrap().snapshot();
        assert_eq!(snapshot.open_for(), Some(Duration::from_micros(1_400)));
        a.set(Snapshot::new("open", true).with_open_for(Duration::ZERO));
        let json = Readiness::new().critical(a).report().to_json();
        assert!(json.contains(r#""open_for_ms":0"#), "{json}");
    }

    #[test]
    fn entries_keep_the_order_of_registration() {
        let readiness = Readiness::new()
            .optional(Fake::breaker("z"))
            .critical(Fake::breaker("a"))
            .optional(Fake::breaker("m"));
        let report = readiness.report();
        let names: Vec<&str> = report.entries().iter().map(Entry::name).collect();
        assert_eq!(names, ["z", "a", "m"]);
    }

    #[test]
    fn a_clone_made_before_a_registration_keeps_its_own_list() {
        let first = Readiness::new().critical(Fake::breaker("a"));
        let copy = first.clone();
        let b = Fake::breaker("b");
        b.open();
        let extended = first.critical(b);
        assert_eq!(copy.report().entries().len(), 1);
        assert!(copy.report().is_ready());
        assert_eq!(extended.report().entries().len(), 2);
        assert!(!extended.report().is_ready());
    }

    #[tokio::test]
    async fn the_service_answers_the_report_with_json_headers() {
        let a = Fake::breaker("a");
        let readiness = Readiness::new().critical(a.clone());
        let res = readiness
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, readiness.report().to_json());

        a.open();
        let res = readiness.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let body = std::str::from_utf8(&body).unwrap();
        assert!(body.starts_with(r#"{"status":"not_ready""#), "{body}");
        assert!(
            body.contains(r#""name":"a","kind":"breaker","critical":true,"available":false,"state":"open","open_for_ms":5000"#),
            "{body}"
        );
    }

    #[test]
    fn a_full_partition_reads_full() {
        let p = |in_flight| PartitionSnapshot {
            name: "default".into(),
            in_flight,
            queued: 0,
            limit: 2,
        };
        assert!(!p(1).is_full());
        assert!(p(2).is_full());
        assert!(p(3).is_full());
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn with_axum_a_report_and_the_handler_answer_the_readiness_response() {
        use axum::response::IntoResponse;

        let a = Fake::breaker("a");
        a.open();
        let readiness = Readiness::new().critical(a);
        let res = readiness.report().into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, readiness.report().to_json());

        let report = handler(axum::extract::State(readiness.clone())).await;
        assert_eq!(report, readiness.report());
        assert_eq!(report.entries().len(), 1);
    }
}
