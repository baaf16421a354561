//! One call that installs a Prometheus recorder set up for this workspace's metrics (feature
//! `prometheus`).
//!
//! `metrics-exporter-prometheus` on its own renders every histogram as a summary unless buckets
//! are set, and keeps every recorded sample until its upkeep runs. [`install`] sets the
//! OpenTelemetry HTTP duration buckets ([`names::HTTP_DURATION_BUCKETS`]) for every metric whose
//! name ends in `_seconds` (all our duration histograms, and the OpenTelemetry HTTP ones), starts
//! a thread that runs the upkeep every [`DEFAULT_UPKEEP_INTERVAL`], installs the recorder
//! globally and calls [`describe_metrics`], so every metric has its `# HELP` line.
//!
//! **Call it before building layers.** Layers check once, when they are built, whether a
//! recorder is installed ([`recorder_installed`](crate::red::recorder_installed)), and layers
//! built before it skip their durations for good.
//!
//! It starts no HTTP listener: serve [`PrometheusHandle::render`] at `/metrics` from your own
//! server, for instance an axum route:
//!
//! ```no_run
//! # fn main() -> Result<(), tower_red::prometheus::InstallError> {
//! let handle = tower_red::prometheus::install()?;
//! // ... build the layers, then serve `handle.render()` at GET /metrics.
//! # let _ = handle;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

pub use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::names;
use crate::red::describe_metrics;

/// How often the upkeep thread started by [`install`] drains the exporter's histogram samples
/// (the exporter's own default for its upkeep task).
pub const DEFAULT_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder globally with the OpenTelemetry buckets, an upkeep thread and
/// the descriptions of our metrics. Same as [`Builder::new().install()`](Builder::install).
///
/// # Errors
///
/// When a global recorder is already installed, or the upkeep thread could not be started.
pub fn install() -> Result<PrometheusHandle, InstallError> {
    Builder::new().install()
}

/// [`install`] with settings: the upkeep interval, or your own [`PrometheusBuilder`] (global
/// labels, idle timeouts, …) to which the buckets are added.
#[derive(Debug)]
pub struct Builder {
    prometheus: PrometheusBuilder,
    upkeep_interval: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A default [`PrometheusBuilder`] and [`DEFAULT_UPKEEP_INTERVAL`].
    pub fn new() -> Self {
        Self::from_prometheus(PrometheusBuilder::new())
    }

    /// Starts from a [`PrometheusBuilder`] configured by the caller; the `_seconds` buckets are
    /// set on top of it.
    pub fn from_prometheus(prometheus: PrometheusBuilder) -> Self {
        Self {
            prometheus,
            upkeep_interval: DEFAULT_UPKEEP_INTERVAL,
        }
    }

    /// How often the upkeep thread runs (a zero interval is taken as one millisecond).
    pub fn upkeep_interval(mut self, interval: Duration) -> Self {
        self.upkeep_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Builds the recorder with the buckets set, without installing it or starting upkeep:
    /// for a local recorder (`metrics::with_local_recorder`) or a composite one. The caller runs
    /// [`PrometheusHandle::run_upkeep`] and [`describe_metrics`] under it.
    ///
    /// # Errors
    ///
    /// Never with the constant buckets; kept for the exporter's [`BuildError`].
    pub fn build_recorder(self) -> Result<PrometheusRecorder, InstallError> {
        Ok(self
            .prometheus
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &names::HTTP_DURATION_BUCKETS,
            )?
            .build_recorder())
    }

    /// Builds the recorder, starts the upkeep thread, installs the recorder globally and calls
    /// [`describe_metrics`]. Call it before building any layer.
    ///
    /// # Errors
    ///
    /// When a global recorder is already installed, or the upkeep thread could not be started.
    pub fn install(self) -> Result<PrometheusHandle, InstallError> {
        let interval = self.upkeep_interval;
        let recorder = self.build_recorder()?;
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|_| InstallError::AlreadyInstalled)?;
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("tower-red-prometheus-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    upkeep.run_upkeep();
                }
            })
            .map_err(InstallError::Upkeep)?;
        describe_metrics();
        Ok(handle)
    }
}

/// Why [`install`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum InstallError {
    /// The exporter refused its configuration.
    Build(BuildError),
    /// A global recorder was already installed (by this or by anything else).
    AlreadyInstalled,
    /// The upkeep thread could not be started (the recorder is installed, without upkeep).
    Upkeep(std::io::Error),
}

impl From<BuildError> for InstallError {
    fn from(error: BuildError) -> Self {
        Self::Build(error)
    }
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Build(error) => write!(f, "prometheus exporter: {error}"),
            Self::AlreadyInstalled => f.write_str("a global metrics recorder is already installed"),
            Self::Upkeep(error) => write!(f, "prometheus upkeep thread: {error}"),
        }
    }
}

impl std::error::Error for InstallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Build(error) => Some(error),
            Self::AlreadyInstalled => None,
            Self::Upkeep(error) => Some(error),
        }
    }
}
