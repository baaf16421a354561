//! The deadline's arithmetic and the wire format at their edges, on a paused clock: the
//! behaviours a mutation run found unchecked (see CONTRIBUTING.md, "Mutation testing").

use std::time::Duration;

use tokio::time::{Instant, advance};
use tower_timeout_budget::wire::GrpcTimeout;
use tower_timeout_budget::{Deadline, Stage, TimeoutBudgetLayer};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn work_that_ends_exactly_at_the_deadline_does_not_fit() {
    let d = Deadline::after(Duration::from_secs(1));
    advance(Duration::from_millis(400)).await;
    assert_eq!(d.remaining(), Duration::from_millis(600));
    assert!(d.fits(Duration::from_millis(599)), "one ms to spare");
    assert!(
        !d.fits(Duration::from_millis(600)),
        "ending exactly at the deadline is too late: the deadline has passed by then"
    );
    assert!(!d.fits(Duration::from_millis(601)));
    advance(Duration::from_millis(600)).await;
    assert!(!d.fits(Duration::ZERO), "nothing fits once it has passed");
}

#[tokio::test(start_paused = true)]
async fn an_unrepresentable_budget_means_no_deadline_for_the_workspace_horizon() {
    let start = Instant::now();
    let never = tower_red::clock::NEVER;
    let d = Deadline::after(Duration::MAX);
    assert_eq!(
        d.instant(),
        start + never,
        "saturates at the workspace's one \"never\""
    );
    assert_eq!(d.remaining(), never);
    assert_eq!(
        Deadline::after_from(start, Duration::MAX).instant(),
        start + never
    );
    assert_eq!(
        Deadline::after_from(start, Duration::MAX).remaining_at(start),
        never
    );
    assert_eq!(
        Deadline::min_with_cap(None, Duration::MAX).remaining(),
        never
    );
    // A representable budget is kept as it is, even one longer than the horizon.
    let long = never + Duration::from_secs(1);
    assert_eq!(Deadline::after_from(start, long).remaining_at(start), long);
}

#[tokio::test(start_paused = true)]
async fn an_unbounded_wait_still_ends_at_the_deadline() {
    let d = Deadline::after(Duration::from_secs(3));
    let start = Instant::now();
    d.sleep_at_most(Duration::MAX).await;
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn min_keeps_the_earlier_deadline_either_way_round() {
    let soon = Deadline::after(MS);
    let late = Deadline::after(Duration::from_secs(1));
    assert_eq!(soon.min(late), soon);
    assert_eq!(late.min(soon), soon);
    assert_eq!(soon.min(soon), soon);
}

#[test]
fn a_parsed_grpc_timeout_keeps_its_value_and_unit() {
    let cases: [(&[u8], u32, char, Duration); 7] = [
        (b"250m", 250, 'm', MS),
        (b"7H", 7, 'H', Duration::from_secs(3_600)),
        (b"12M", 12, 'M', Duration::from_secs(60)),
        (b"3S", 3, 'S', Duration::from_secs(1)),
        (b"40u", 40, 'u', Duration::from_micros(1)),
        (b"99999999n", 99_999_999, 'n', Duration::from_nanos(1)),
        (b"0n", 0, 'n', Duration::from_nanos(1)),
    ];
    for (raw, value, unit, unit_len) in cases {
        let t = GrpcTimeout::parse(raw).expect("valid");
        assert_eq!(t.value(), value, "{raw:?}");
        assert_eq!(t.unit(), unit, "{raw:?}");
        assert_eq!(t.unit_duration(), unit_len, "{raw:?}");
        assert_eq!(t.to_string().as_bytes(), raw, "{raw:?}");
        assert_eq!(t.to_header_value().as_bytes(), raw, "{raw:?}");
    }
    assert_eq!(
        GrpcTimeout::parse(b"250m").unwrap().duration(),
        Duration::from_millis(250)
    );
}

#[test]
fn an_outbound_grpc_timeout_rounds_down_to_the_finest_unit_that_fits() {
    let t = GrpcTimeout::from_duration(Duration::from_secs(300));
    assert_eq!((t.value(), t.unit()), (300_000, 'm'));
    let t = GrpcTimeout::from_duration(Duration::from_nanos(100_000_001));
    assert_eq!((t.value(), t.unit()), (100_000, 'u'), "1 ns is dropped");
    let t = GrpcTimeout::from_duration(Duration::MAX);
    assert_eq!((t.value(), t.unit()), (99_999_999, 'H'));
}

#[test]
fn a_rejected_header_value_says_why_and_a_stage_prints_its_label() {
    let cases: [(&[u8], &str); 3] = [
        (b"123456789S", "too many digits"),
        (b"1x0m", "not an ascii digit"),
        (
            b"10s",
            "missing or unknown unit (expected one of H M S m u n)",
        ),
    ];
    for (raw, reason) in cases {
        let err = GrpcTimeout::parse(raw).expect_err("invalid");
        assert_eq!(err.reason(), reason, "{raw:?}");
        assert_eq!(
            err.to_string(),
            format!("invalid deadline header: {reason}")
        );
    }
    for stage in Stage::ALL {
        assert_eq!(stage.to_string(), stage.as_str());
    }
    assert_eq!(Stage::BeforeSend.to_string(), "before_send");
}

#[test]
fn a_name_is_a_metric_label_of_at_most_64_bytes_and_the_cap_reads_back() {
    let longest = "n".repeat(64);
    let layer = TimeoutBudgetLayer::builder()
        .name(longest.clone())
        .cap(3_000 * MS)
        .build()
        .expect("64 bytes is a valid name");
    assert_eq!(layer.cap(), 3_000 * MS);
    let err = TimeoutBudgetLayer::builder()
        .name(format!("{longest}n"))
        .cap(3_000 * MS)
        .build()
        .expect_err("65 bytes");
    assert!(err.to_string().contains("at most 64 bytes"), "{err}");
}
