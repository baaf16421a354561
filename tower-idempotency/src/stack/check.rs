//! The cross-layer invariants a stack checks when it is built.

use std::fmt;
use std::time::Duration;

use tower_breaker::Window;
use tower_red::classify::Classify;
use tower_red::{BoxError, ConfigError, GrpcCode, Verdict};
use tower_retry_jitter::{Backoff, Jitter};

/// The `layer` of a stack's [`ConfigError`]s.
pub(crate) const STACK: &str = "stack";

/// A breaker's time window must hold at least two timeouts: a window shorter than that rolls
/// over before the calls that time out in it are counted, so a hanging backend never trips it.
pub(crate) fn window_holds_two_timeouts(
    window: Window,
    timeout: Duration,
    timeout_name: &str,
) -> Result<(), ConfigError> {
    if let Window::Time { length, .. } = window
        && length < timeout.saturating_mul(2)
    {
        return Err(ConfigError::new(
            STACK,
            "breaker.time_window",
            length,
            format!(
                "must be at least twice the {timeout_name} ({timeout:?}, so at least {:?}): \
                 a shorter window rolls over before the calls that time out in it are counted, \
                 and a hanging backend never opens the breaker",
                timeout.saturating_mul(2)
            ),
        ));
    }
    Ok(())
}

/// An attempt timeout longer than the whole call's budget never fires: the budget does.
pub(crate) fn attempt_within_budget(attempt: Duration, total: Duration) -> Result<(), ConfigError> {
    if attempt > total {
        return Err(ConfigError::new(
            STACK,
            "attempt_timeout",
            attempt,
            format!(
                "exceeds the total budget ({total:?}): the budget would cut the first attempt \
                 before its own timeout, and no retry could run"
            ),
        ));
    }
    Ok(())
}

/// The longest a retry can wait before retry `retry` (0 for the first), whatever the jitter
/// draws: the un-jittered delay for None, Full and Equal jitter, 1.2 times it (clamped to the
/// cap) for gRPC A6, and `min(cap, base · 3^(retry+1))` for decorrelated jitter.
pub(crate) fn worst_delay(backoff: &Backoff, retry: u32) -> Duration {
    let base = backoff.base_delay(retry);
    match backoff.jitter() {
        Jitter::Grpc => base.mul_f64(1.2).min(backoff.cap()),
        Jitter::Decorrelated => {
            // At most ~41 steps: `delays_within_budget` stops asking once a delay is at the cap.
            let grown = (0..=retry).fold(backoff.base(), |d, _| d.saturating_mul(3));
            grown.min(backoff.cap())
        }
        _ => base,
    }
}

/// The retries' summed worst-case delays must leave time inside the total budget: summed until
/// they reach it (the error names the sum so far, which already reaches it).
pub(crate) fn delays_within_budget(
    backoff: &Backoff,
    max_attempts: u32,
    total: Duration,
) -> Result<(), ConfigError> {
    let retries = max_attempts.saturating_sub(1);
    let mut sum = Duration::ZERO;
    for r in 0..retries {
        let delay = worst_delay(backoff, r);
        // The worst delays never decrease, and once one is at the cap, or with a multiplier of
        // 1 (decorrelated jitter aside, which ignores it), the rest are the same: summed at
        // once. An exponential backoff reaches its cap within 10,000 multiplications (its
        // builder refuses more) and a decorrelated one triples from at least 1 ns, so the loop
        // ends within 10,000 retries whatever `max_attempts` is.
        let constant = backoff.multiplier() == 1.0 && backoff.jitter() != Jitter::Decorrelated;
        if delay >= backoff.cap() || constant {
            sum = sum.saturating_add(delay.saturating_mul(retries - r));
            break;
        }
        sum = sum.saturating_add(delay);
        if sum >= total {
            break;
        }
    }
    if retries > 0 && sum >= total {
        return Err(ConfigError::new(
            STACK,
            "retry.worst_case_delays",
            sum,
            format!(
                "the {retries} retries' summed worst-case backoff delays reach the total budget \
                 ({total:?}): the last retries would only ever sleep until the budget ends; \
                 lower max_attempts, base or cap, or raise the budget"
            ),
        ));
    }
    Ok(())
}

/// What one classifier says of a probe outcome: a failure or not.
fn fails<K: Classify<http::Response<()>, BoxError>>(
    k: &K,
    probe: &Result<http::Response<()>, BoxError>,
) -> bool {
    matches!(k.classify(probe), Verdict::Failure(_))
}

type Probe = (String, Result<http::Response<()>, BoxError>);

/// Every HTTP status, as a plain HTTP response.
fn http_probes() -> Vec<Probe> {
    (100u16..=599)
        .filter_map(|code| {
            let status = http::StatusCode::from_u16(code).ok()?;
            let mut res = http::Response::new(());
            *res.status_mut() = status;
            Some((format!("HTTP {status}"), Ok(res)))
        })
        .collect()
}

/// Every gRPC code but `OK`, as a trailers-only response.
fn grpc_probes() -> Vec<Probe> {
    (1i32..=16)
        .map(|code| {
            let code = GrpcCode::from_i32(code);
            let res = http::Response::builder()
                .header("grpc-status", (code as i32).to_string())
                .body(())
                .expect("a valid response");
            (format!("gRPC {code:?}"), Ok(res))
        })
        .collect()
}

/// One classifier per stack: the retry may retry fewer outcomes than the stack judges
/// failures (a 500 is a failure, rarely worth retrying), never one the stack calls a success,
/// or the breaker would count as healthy the very calls the retry multiplies.
///
/// The outcomes compared: a transport error, and every HTTP status and every gRPC code, each
/// family skipped only when the stack's classifier reads the other family and not this one (an
/// HTTP stack's `HttpStatus` ignores `grpc-status`, so a gRPC retry rule cannot apply there).
pub(crate) fn retry_within_classifier<K, R>(stack: &K, retry: &R) -> Result<(), ConfigError>
where
    K: Classify<http::Response<()>, BoxError> + fmt::Debug,
    R: Classify<http::Response<()>, BoxError> + fmt::Debug,
{
    let http = http_probes();
    let grpc = grpc_probes();
    let reads_http = http.iter().any(|(_, p)| fails(stack, p));
    let reads_grpc = grpc.iter().any(|(_, p)| fails(stack, p));
    let error: Probe = (
        "a transport error".to_owned(),
        Err(BoxError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        ))),
    );
    let families = [
        (reads_http || !reads_grpc, http),
        (reads_grpc || !reads_http, grpc),
        (true, vec![error]),
    ];
    for (what, probe) in families
        .into_iter()
        .filter(|(checked, _)| *checked)
        .flat_map(|(_, probes)| probes)
    {
        if fails(retry, &probe) && !fails(stack, &probe) {
            return Err(ConfigError::new(
                STACK,
                "retry_on",
                retry,
                format!(
                    "retries {what}, which the stack's classifier ({stack:?}) judges not a \
                     failure: every layer must share one verdict, so the retry may only retry \
                     outcomes the breaker and bulkhead count as failures"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(base: u64, cap: u64, jitter: Jitter) -> Backoff {
        Backoff::builder()
            .base(Duration::from_millis(base))
            .cap(Duration::from_millis(cap))
            .multiplier(2.0)
            .jitter(jitter)
            .build()
            .unwrap()
    }

    #[test]
    fn worst_case_delays_follow_each_jitter_modes_ceiling() {
        let full = backoff(100, 1_000, Jitter::Full);
        assert_eq!(worst_delay(&full, 0), Duration::from_millis(100));
        assert_eq!(worst_delay(&full, 3), Duration::from_millis(800));
        assert_eq!(worst_delay(&full, 4), Duration::from_millis(1_000));
        let grpc = backoff(100, 1_000, Jitter::Grpc);
        assert_eq!(worst_delay(&grpc, 0), Duration::from_millis(120));
        assert_eq!(worst_delay(&grpc, 4), Duration::from_millis(1_000));
        let decorrelated = backoff(100, 1_000, Jitter::Decorrelated);
        assert_eq!(worst_delay(&decorrelated, 0), Duration::from_millis(300));
        assert_eq!(worst_delay(&decorrelated, 1), Duration::from_millis(900));
        assert_eq!(worst_delay(&decorrelated, 2), Duration::from_millis(1_000));
    }

    #[test]
    fn delays_that_fill_the_budget_are_refused_and_those_that_leave_time_pass() {
        let full = backoff(100, 1_000, Jitter::Full);
        // 100 + 200 + 400 = 700 ms of worst-case sleep for 4 attempts.
        assert!(delays_within_budget(&full, 4, Duration::from_millis(701)).is_ok());
        let err = delays_within_budget(&full, 4, Duration::from_millis(700)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("700ms") && msg.contains("3 retries"), "{msg}");
        // One attempt never sleeps.
        assert!(delays_within_budget(&full, 1, Duration::from_millis(1)).is_ok());
    }

    #[test]
    fn any_number_of_attempts_is_judged_at_once_in_every_jitter_mode() {
        // u32::MAX attempts: a loop over every retry (and, with decorrelated jitter, over every
        // retry before it) would not end; the delays stop growing at the cap, so the rest are
        // summed at once.
        for jitter in [
            Jitter::None,
            Jitter::Full,
            Jitter::Equal,
            Jitter::Grpc,
            Jitter::Decorrelated,
        ] {
            let b = backoff(100, 1_000, jitter);
            let err = delays_within_budget(&b, u32::MAX, Duration::from_secs(3600)).unwrap_err();
            assert!(err.to_string().contains("4294967294 retries"), "{err}");
            // A budget no sum reaches: the tail at the cap is still summed at once.
            assert!(
                delays_within_budget(&b, u32::MAX, Duration::MAX).is_ok(),
                "{jitter:?}"
            );
        }
        // A constant delay (multiplier 1) never reaches a cap above it: summed at once too.
        let constant = Backoff::builder()
            .base(Duration::from_millis(1))
            .cap(Duration::from_millis(10))
            .multiplier(1.0)
            .jitter(Jitter::None)
            .build()
            .unwrap();
        assert!(delays_within_budget(&constant, u32::MAX, Duration::from_secs(3600)).is_err());
        // 1 ms · 99 retries leaves time in 100 ms; 100 retries do not.
        assert!(delays_within_budget(&constant, 100, Duration::from_millis(100)).is_ok());
        assert!(delays_within_budget(&constant, 101, Duration::from_millis(100)).is_err());
        // A constant delay below its cap: the rest are summed at once, the same total as one by
        // one.
        let tiny = Backoff::builder()
            .base(Duration::from_nanos(1))
            .cap(Duration::from_nanos(10))
            .multiplier(1.0)
            .jitter(Jitter::None)
            .build()
            .unwrap();
        let n = 20_000u32;
        assert!(delays_within_budget(&tiny, n + 1, Duration::from_nanos(u64::from(n) + 1)).is_ok());
        assert!(delays_within_budget(&tiny, n + 1, Duration::from_nanos(u64::from(n))).is_err());
    }
}
