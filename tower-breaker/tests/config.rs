//! Every invalid configuration value is a typed error naming its field.

use std::time::Duration;

use tower_breaker::{BreakerBuilder, BreakerLayer, OpenTime};

fn field_of(builder: BreakerBuilder) -> String {
    builder
        .build()
        .expect_err("an invalid value")
        .field()
        .to_owned()
}

#[test]
fn defaults_are_valid_and_follow_resilience4j() {
    let config = BreakerLayer::builder().build_config().unwrap();
    assert_eq!(config.name(), "default");
    assert_eq!(config.window(), tower_breaker::Window::Count { size: 100 });
    assert_eq!(config.minimum_calls(), 100);
}

#[test]
fn a_count_window_alone_builds_with_the_minimum_at_its_size() {
    let config = BreakerLayer::builder()
        .count_window(50)
        .build_config()
        .expect("the minimum follows the window");
    assert_eq!(config.minimum_calls(), 50);
    let config = BreakerLayer::builder()
        .count_window(500)
        .build_config()
        .unwrap();
    assert_eq!(config.minimum_calls(), 500);
    let config = BreakerLayer::builder()
        .count_window(50)
        .minimum_calls(10)
        .build_config()
        .unwrap();
    assert_eq!(config.minimum_calls(), 10, "an explicit minimum is kept");
}

#[test]
fn the_builder_builds_the_layer_and_new_is_the_common_case() {
    let layer: BreakerLayer = BreakerLayer::builder()
        .name("inventory")
        .count_window(20)
        .build()
        .expect("valid");
    assert_eq!(layer.handle().name(), "inventory");
    let layer = BreakerLayer::new("payments");
    assert_eq!(layer.handle().name(), "payments");
}

#[test]
fn the_error_is_the_workspaces_config_error() {
    let err: tower_red::ConfigError = BreakerLayer::builder()
        .failure_rate_threshold(1.5)
        .build()
        .unwrap_err();
    assert_eq!(err.layer(), "breaker");
    let _same_type: tower_breaker::error::ConfigError = err;
}

#[test]
fn every_bad_value_names_its_field() {
    let b = BreakerLayer::builder;
    let secs = Duration::from_secs;
    let cases: Vec<(BreakerBuilder, &str)> = vec![
        (b().name(""), "name"),
        (b().failure_rate_threshold(0.0), "failure_rate_threshold"),
        (b().failure_rate_threshold(1.01), "failure_rate_threshold"),
        (
            b().failure_rate_threshold(f64::NAN),
            "failure_rate_threshold",
        ),
        (b().slow_calls(Duration::ZERO, 0.5), "slow_call_duration"),
        (b().slow_calls(secs(1), 0.0), "slow_call_rate_threshold"),
        (b().slow_calls(secs(1), 2.0), "slow_call_rate_threshold"),
        (b().count_window(0).minimum_calls(1), "count_window"),
        (b().count_window(2_000_000), "count_window"),
        (b().count_window(10).minimum_calls(11), "minimum_calls"),
        (b().minimum_calls(0), "minimum_calls"),
        (b().time_window(secs(10), 0), "time_window.buckets"),
        (b().time_window(secs(10), 1_001), "time_window.buckets"),
        (
            b().time_window(Duration::from_micros(500), 1),
            "time_window.length",
        ),
        (b().consecutive_failures(0), "consecutive_failures"),
        (b().open_time(Duration::ZERO), "open_time"),
        (
            b().open_time(OpenTime::exponential(Duration::ZERO, secs(1))),
            "open_time.initial",
        ),
        (
            b().open_time(OpenTime::exponential(secs(1), secs(9)).multiplier(0.5)),
            "open_time.multiplier",
        ),
        (
            b().open_time(OpenTime::exponential(secs(1), secs(9)).multiplier(f64::INFINITY)),
            "open_time.multiplier",
        ),
        (
            b().open_time(OpenTime::exponential(secs(2), secs(1))),
            "open_time.max",
        ),
        (
            b().open_time(OpenTime::exponential(secs(1), secs(9)).jitter(1.5)),
            "open_time.jitter",
        ),
        (
            b().open_time(OpenTime::exponential(secs(1), secs(9)).jitter(-0.1)),
            "open_time.jitter",
        ),
        (b().permitted_probes(0), "permitted_probes"),
        (b().permitted_probes(10_001), "permitted_probes"),
        (b().max_probe_wait(Duration::ZERO), "max_probe_wait"),
        (b().graded_recovery(&[], secs(10)), "graded_recovery.steps"),
        (
            b().graded_recovery(&[0.0, 1.0], secs(10)),
            "graded_recovery.steps",
        ),
        (
            b().graded_recovery(&[0.5, 1.5], secs(10)),
            "graded_recovery.steps",
        ),
        (
            b().graded_recovery(&[0.5, 0.2], secs(10)),
            "graded_recovery.steps",
        ),
        (
            b().graded_recovery(&[0.5], Duration::ZERO),
            "graded_recovery.duration",
        ),
        (b().keys(0, secs(1)), "max_keys"),
        (b().keys(10, Duration::ZERO), "idle_key_timeout"),
    ];
    for (builder, field) in cases {
        assert_eq!(field_of(builder), field);
    }
}

#[test]
fn the_error_says_which_value_and_why() {
    let err = BreakerLayer::builder()
        .count_window(10)
        .minimum_calls(11)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "minimum_calls");
    assert_eq!(err.value(), "11");
    assert!(err.reason().contains("count window"));
    assert!(
        err.to_string()
            .starts_with("invalid breaker config: minimum_calls = 11: ")
    );
}
