//! The Grafana dashboard (`examples/grafana/resilience.json`) queries only metrics the layers
//! register, and every one of them: a renamed constant in `tower_red::names`, or a panel with a
//! typo, fails here.

use std::collections::BTreeSet;

use serde_json::Value;
use tower_red::names;

const DASHBOARD: &str = include_str!("../../examples/grafana/resilience.json");

/// Every metric name of `tower_red::names`, from the constants.
const KNOWN: [&str; 26] = [
    names::REQUESTS_TOTAL,
    names::REQUEST_DURATION_SECONDS,
    names::BREAKER_STATE,
    names::BREAKER_TRANSITIONS_TOTAL,
    names::BULKHEAD_IN_FLIGHT,
    names::BULKHEAD_QUEUE_DEPTH,
    names::BULKHEAD_LIMIT,
    names::BULKHEAD_QUEUE_WAIT_SECONDS,
    names::BULKHEAD_UNKNOWN_PARTITION_TOTAL,
    names::BULKHEAD_REJECTIONS_TOTAL,
    names::RETRY_ATTEMPTS_TOTAL,
    names::RETRY_BUDGET_BALANCE,
    names::RETRY_STOPS_TOTAL,
    names::RETRY_REQUEST_ATTEMPTS,
    names::RETRY_BODY_OVERFLOW_TOTAL,
    names::RETRY_DONT_RETRY_TOTAL,
    names::DEADLINE_EXCEEDED_TOTAL,
    names::DEADLINE_HEADER_INVALID_TOTAL,
    names::IDEMPOTENCY_REPLAYS_TOTAL,
    names::IDEMPOTENCY_STORE_ERRORS_TOTAL,
    names::IDEMPOTENCY_DECISIONS_TOTAL,
    names::IDEMPOTENCY_STORE_DURATION_SECONDS,
    names::HTTP_SERVER_REQUEST_DURATION_SECONDS,
    names::HTTP_SERVER_ACTIVE_REQUESTS,
    names::HTTP_CLIENT_REQUEST_DURATION_SECONDS,
    names::HTTP_CLIENT_ACTIVE_REQUESTS,
];

/// PromQL words that are neither functions (those are followed by `(`) nor metrics: keywords,
/// and the aggregation operators, which may be followed by `by (…)` instead.
const KEYWORDS: [&str; 25] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Every PromQL expression of the dashboard: panel targets' `expr`, and the `label_values`
/// queries of its variables.
fn expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(expr)) => out.push(expr.clone()),
                    _ => expressions(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| expressions(item, out)),
        _ => {}
    }
}

/// Drops what is between `open` and its matching `close` (label matchers, range windows, string
/// literals), keeping the delimiters apart.
fn drop_between(expr: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in expr.chars() {
        if c == open && (open != close || depth == 0) {
            depth += 1;
            out.push(' ');
        } else if c == close && depth > 0 {
            depth -= 1;
            out.push(' ');
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

/// The metric names an expression selects, with `_bucket` / `_sum` / `_count` stripped.
fn metrics_of(expr: &str) -> BTreeSet<String> {
    let mut rest = drop_between(expr, '"', '"');
    rest = drop_between(&rest, '{', '}');
    rest = drop_between(&rest, '[', ']');
    let chars: Vec<char> = rest.chars().collect();
    let mut found = BTreeSet::new();
    let mut grouping = false;
    let mut label_values = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let variable = start > 0 && chars[start - 1] == '$';
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let is_call = next == Some(&'(');
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                // `by (label, …)`: the parenthesis holds labels, not metrics.
                grouping = true;
            } else if variable || is_call || KEYWORDS.contains(&word.to_lowercase().as_str()) {
                label_values |= is_call && word == "label_values";
            } else if !grouping {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(&word);
                found.insert(base.to_string());
                if label_values {
                    // `label_values(metric, label)`: the label after the metric is not one.
                    break;
                }
            }
            continue;
        }
        if c == ')' {
            grouping = false;
        }
        i += 1;
    }
    found
}

fn dashboard_metrics() -> (Vec<String>, BTreeSet<String>) {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    let metrics = exprs.iter().flat_map(|e| metrics_of(e)).collect();
    (exprs, metrics)
}

#[test]
fn the_parser_finds_metrics_and_only_metrics() {
    let expr = r#"histogram_quantile(0.99, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket{http_route=~"$route", error_type=""}[$__rate_interval]))) / on (x) resilience_requests_total"#;
    assert_eq!(
        metrics_of(expr),
        BTreeSet::from([
            "http_server_request_duration_seconds".to_string(),
            "resilience_requests_total".to_string(),
        ])
    );
    assert_eq!(
        metrics_of("label_values(resilience_requests_total, layer)"),
        BTreeSet::from(["resilience_requests_total".to_string()])
    );
    // A panel querying a metric no layer registers is caught.
    assert_eq!(
        metrics_of("sum(rate(resilience_request_total[5m]))"),
        BTreeSet::from(["resilience_request_total".to_string()])
    );
    assert!(!KNOWN.contains(&"resilience_request_total"));
}

#[test]
fn dashboard_queries_only_metrics_the_layers_register() {
    let (exprs, metrics) = dashboard_metrics();
    assert!(exprs.len() > 30, "too few expressions found: {exprs:?}");
    let unknown: Vec<&String> = metrics
        .iter()
        .filter(|m| !KNOWN.contains(&m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics not in tower_red::names: {unknown:?}"
    );
}

#[test]
fn dashboard_covers_every_metric() {
    let (_, metrics) = dashboard_metrics();
    let missing: Vec<&&str> = KNOWN
        .iter()
        .filter(|name| !metrics.contains(**name))
        .collect();
    assert!(missing.is_empty(), "no panel queries {missing:?}");
}

#[test]
fn dashboard_has_a_datasource_variable_and_an_slo_objective() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name).cloned();
    assert_eq!(variable("datasource").unwrap()["query"], "prometheus");
    assert!(variable("objective").is_some());
    let (exprs, _) = dashboard_metrics();
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("$objective") && e.contains("by (http_route)"))
    );
}
