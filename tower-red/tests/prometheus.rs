//! `tower_red::prometheus`: durations render as histograms with the OpenTelemetry boundaries,
//! and our metrics carry their HELP lines.
#![cfg(feature = "prometheus")]

use tower_red::names::{self, HTTP_DURATION_BUCKETS, label};
use tower_red::prometheus::{Builder, InstallError};

fn assert_otel_histogram(text: &str, name: &str) {
    let buckets: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with(&format!("{name}_bucket{{")))
        .collect();
    assert_eq!(
        buckets.len(),
        HTTP_DURATION_BUCKETS.len() + 1,
        "one line per OTel boundary and +Inf:\n{text}"
    );
    for bound in HTTP_DURATION_BUCKETS {
        assert!(
            buckets
                .iter()
                .any(|line| line.contains(&format!("le=\"{bound}\""))),
            "no le=\"{bound}\" bucket:\n{text}"
        );
    }
    assert!(buckets.iter().any(|line| line.contains("le=\"+Inf\"")));
    assert!(text.contains(&format!("# TYPE {name} histogram")), "{text}");
    assert!(
        !text.contains("quantile="),
        "rendered as a summary:\n{text}"
    );
}

#[test]
fn local_recorder_renders_otel_histograms_and_help() {
    let recorder = Builder::new().build_recorder().unwrap();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        tower_red::describe_metrics();
        metrics::histogram!(
            names::REQUEST_DURATION_SECONDS,
            label::LAYER => "breaker",
            label::NAME => "db",
            label::OUTCOME => "success",
        )
        .record(0.02);
        metrics::counter!(names::REQUESTS_TOTAL, label::OUTCOME => "success").increment(1);
    });
    handle.run_upkeep();
    let text = handle.render();
    assert_otel_histogram(&text, names::REQUEST_DURATION_SECONDS);
    // 0.02 s falls in the 0.025 bucket, not in the 0.01 one.
    assert!(text.contains("le=\"0.01\"} 0"), "{text}");
    assert!(text.contains("le=\"0.025\"} 1"), "{text}");
    for name in [names::REQUEST_DURATION_SECONDS, names::REQUESTS_TOTAL] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{text}"
        );
    }
}

/// The only global install of this test binary.
#[test]
fn install_is_global_describes_and_refuses_twice() {
    let handle = tower_red::prometheus::install().unwrap();
    assert!(tower_red::red::recorder_installed());
    metrics::histogram!(names::HTTP_SERVER_REQUEST_DURATION_SECONDS, label::HTTP_ROUTE => "/")
        .record(0.3);
    let text = handle.render();
    assert_otel_histogram(&text, names::HTTP_SERVER_REQUEST_DURATION_SECONDS);
    assert!(
        text.contains(&format!(
            "# HELP {} ",
            names::HTTP_SERVER_REQUEST_DURATION_SECONDS
        )),
        "{text}"
    );
    assert!(matches!(
        tower_red::prometheus::install(),
        Err(InstallError::AlreadyInstalled)
    ));
}
