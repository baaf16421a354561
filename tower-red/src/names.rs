//! Metric names and label keys: public API, pinned by a test. Prometheus style: snake_case,
//! base units, counters end in `_total`, durations in `_seconds`.
//!
//! Every layer instance records [`REQUESTS_TOTAL`] and [`REQUEST_DURATION_SECONDS`] labelled
//! by [`label::LAYER`], [`label::NAME`] and [`label::OUTCOME`] (see
//! [`Outcome`](crate::red::Outcome) for the bounded values). The HTTP names follow the
//! OpenTelemetry HTTP semantic conventions as an OpenTelemetry Prometheus exporter writes them
//! (dots become underscores, the unit becomes a suffix).

/// Counter: calls seen by a layer instance, by outcome.
pub const REQUESTS_TOTAL: &str = "resilience_requests_total";
/// Histogram (seconds): duration of calls through a layer instance, by outcome.
pub const REQUEST_DURATION_SECONDS: &str = "resilience_request_duration_seconds";

/// Gauge: breaker state (0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics only).
pub const BREAKER_STATE: &str = "resilience_breaker_state";
/// Counter: breaker state transitions, labelled `from` and `to`.
pub const BREAKER_TRANSITIONS_TOTAL: &str = "resilience_breaker_transitions_total";

/// Gauge: calls holding a bulkhead permit, by partition.
pub const BULKHEAD_IN_FLIGHT: &str = "resilience_bulkhead_in_flight";
/// Gauge: calls waiting in a bulkhead queue, by partition.
pub const BULKHEAD_QUEUE_DEPTH: &str = "resilience_bulkhead_queue_depth";
/// Gauge: the current concurrency limit, by partition.
pub const BULKHEAD_LIMIT: &str = "resilience_bulkhead_limit";
/// Histogram (seconds): time spent waiting in a bulkhead queue, by partition.
pub const BULKHEAD_QUEUE_WAIT_SECONDS: &str = "resilience_bulkhead_queue_wait_seconds";
/// Counter: calls whose partition function named a partition the bulkhead does not have (they
/// ran in the default partition).
pub const BULKHEAD_UNKNOWN_PARTITION_TOTAL: &str = "resilience_bulkhead_unknown_partition_total";
/// Counter: bulkhead rejections, by partition and reason.
pub const BULKHEAD_REJECTIONS_TOTAL: &str = "resilience_bulkhead_rejections_total";

/// Counter: retry attempts after the first, labelled `reason`.
pub const RETRY_ATTEMPTS_TOTAL: &str = "resilience_retry_attempts_total";
/// Gauge: tokens left in a retry budget.
pub const RETRY_BUDGET_BALANCE: &str = "resilience_retry_budget_balance";
/// Counter: failed attempts that were not retried, labelled `reason` (`attempts`, `pushback`,
/// `pushback_over_cap`, `deadline`, `budget`, `unsafe`, `not_replayable`).
pub const RETRY_STOPS_TOTAL: &str = "resilience_retry_stops_total";
/// Histogram: attempts per request through a retry layer (1 when it was not retried).
pub const RETRY_REQUEST_ATTEMPTS: &str = "resilience_retry_request_attempts";
/// Counter: requests whose body was over the retry layer's replay cap, so were sent once.
pub const RETRY_BODY_OVERFLOW_TOTAL: &str = "resilience_retry_body_overflow_total";
/// Counter: responses a server's `DontRetryLayer` answered with the don't-retry signal,
/// labelled `reason` (`retry_refused`: a retry it refused; `downstream_said_stop`: a failed
/// response after an outbound call made for it was told not to retry).
pub const RETRY_DONT_RETRY_TOTAL: &str = "resilience_retry_dont_retry_total";

/// Counter: deadlines exceeded, labelled `stage`.
pub const DEADLINE_EXCEEDED_TOTAL: &str = "resilience_deadline_exceeded_total";
/// Counter: malformed inbound deadline headers, labelled `header`.
pub const DEADLINE_HEADER_INVALID_TOTAL: &str = "resilience_deadline_header_invalid_total";

/// Counter: responses replayed from an idempotency store.
pub const IDEMPOTENCY_REPLAYS_TOTAL: &str = "resilience_idempotency_replays_total";
/// Counter: idempotency store errors, labelled `operation`.
pub const IDEMPOTENCY_STORE_ERRORS_TOTAL: &str = "resilience_idempotency_store_errors_total";
/// Counter: requests carrying an idempotency key, by what the layer did, labelled `reason`
/// (`executed`, `replayed`, `conflict`, `mismatch`, `invalid_key`, `missing_key`, `too_large`,
/// `store_error`).
pub const IDEMPOTENCY_DECISIONS_TOTAL: &str = "resilience_idempotency_decisions_total";
/// Histogram (seconds): duration of idempotency store operations, labelled `operation`
/// (`claim`, `renew`, `complete`, `release`).
pub const IDEMPOTENCY_STORE_DURATION_SECONDS: &str =
    "resilience_idempotency_store_duration_seconds";

/// Histogram (seconds): OpenTelemetry `http.server.request.duration`.
pub const HTTP_SERVER_REQUEST_DURATION_SECONDS: &str = "http_server_request_duration_seconds";
/// UpDownCounter as a gauge: OpenTelemetry `http.server.active_requests`.
pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http_server_active_requests";
/// Histogram (seconds): OpenTelemetry `http.client.request.duration`.
pub const HTTP_CLIENT_REQUEST_DURATION_SECONDS: &str = "http_client_request_duration_seconds";
/// UpDownCounter as a gauge: OpenTelemetry `http.client.active_requests`.
pub const HTTP_CLIENT_ACTIVE_REQUESTS: &str = "http_client_active_requests";

/// OpenTelemetry's advised bucket boundaries for HTTP durations, in seconds.
pub const HTTP_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Label keys.
pub mod label {
    /// Which kind of layer recorded (`breaker`, `bulkhead`, …: see [`super::layer`]).
    pub const LAYER: &str = "layer";
    /// The layer instance's configured name.
    pub const NAME: &str = "name";
    /// The bounded outcome (see [`Outcome`](crate::red::Outcome)).
    pub const OUTCOME: &str = "outcome";
    /// A breaker state a transition left.
    pub const FROM: &str = "from";
    /// A breaker state a transition entered.
    pub const TO: &str = "to";
    /// A bulkhead partition.
    pub const PARTITION: &str = "partition";
    /// Why a bulkhead or retry acted.
    pub const REASON: &str = "reason";
    /// Where a deadline passed (`ready`, `call`, `queue`, `before_send`, …).
    pub const STAGE: &str = "stage";
    /// Which deadline header was malformed.
    pub const HEADER: &str = "header";
    /// Which store operation failed.
    pub const OPERATION: &str = "operation";
    /// OpenTelemetry `http.request.method`.
    pub const HTTP_REQUEST_METHOD: &str = "http_request_method";
    /// OpenTelemetry `http.response.status_code`.
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http_response_status_code";
    /// OpenTelemetry `http.route`: a route template, never a raw path.
    pub const HTTP_ROUTE: &str = "http_route";
    /// OpenTelemetry `error.type`.
    pub const ERROR_TYPE: &str = "error_type";
    /// OpenTelemetry `server.address` (client side).
    pub const SERVER_ADDRESS: &str = "server_address";
    /// OpenTelemetry `server.port` (client side).
    pub const SERVER_PORT: &str = "server_port";
}

/// Values of the [`label::LAYER`] label.
pub mod layer {
    /// `tower-breaker`.
    pub const BREAKER: &str = "breaker";
    /// `tower-bulkhead`.
    pub const BULKHEAD: &str = "bulkhead";
    /// `tower-retry-jitter`.
    pub const RETRY: &str = "retry";
    /// `tower-timeout-budget`'s `TimeoutBudgetLayer`.
    pub const TIMEOUT: &str = "timeout";
    /// `tower-timeout-budget`'s `InboundDeadlineLayer`.
    pub const DEADLINE_INBOUND: &str = "deadline_inbound";
    /// `tower-timeout-budget`'s `OutboundDeadlineLayer`.
    pub const DEADLINE_OUTBOUND: &str = "deadline_outbound";
    /// `tower-idempotency`.
    pub const IDEMPOTENCY: &str = "idempotency";
    /// `tower-idempotency`'s `FallbackLayer`.
    pub const FALLBACK: &str = "fallback";
}
