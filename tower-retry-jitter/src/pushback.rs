//! Server pushback: a server saying how long to wait before retrying, or not to retry.
//!
//! - HTTP `Retry-After` ([RFC 9110 §10.2.3](https://www.rfc-editor.org/rfc/rfc9110#section-10.2.3)):
//!   `delay-seconds` (one or more digits) or an `HTTP-date` (parsed by [`httpdate`], all three
//!   formats RFC 9110 accepts). A date in the past means no wait. A value that is neither is
//!   ignored ([`Pushback::Absent`]), as RFC 9110 asks of invalid fields.
//! - gRPC `grpc-retry-pushback-ms` ([A6](https://github.com/grpc/proposal/blob/master/A6-client-retries.md#pushback)):
//!   a non-negative integer is the exact delay in milliseconds; a negative or malformed value
//!   means do not retry ([`Pushback::Stop`]).
//!
//! Parsing never panics on any bytes and allocates nothing. Huge values saturate; what is too
//! long to wait (past the backoff's cap or the request's deadline) is the caller's decision.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::HeaderMap;
//! use tower_retry_jitter::pushback::{self, Pushback};
//!
//! let mut headers = HeaderMap::new();
//! assert_eq!(pushback::from_headers(&headers, SystemTime::now()), Pushback::Absent);
//! headers.insert("retry-after", "120".parse().unwrap());
//! assert_eq!(
//!     pushback::from_headers(&headers, SystemTime::now()),
//!     Pushback::Delay(Duration::from_secs(120)),
//! );
//! headers.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
//! assert_eq!(pushback::from_headers(&headers, SystemTime::now()), Pushback::Stop);
//! ```

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// The gRPC pushback trailer (or header, in a trailers-only response).
pub const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// What a response says about retrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pushback {
    /// Wait exactly this long before the retry, instead of the computed backoff.
    Delay(Duration),
    /// Do not retry.
    Stop,
    /// Nothing said: use the computed backoff.
    Absent,
}

/// A parsed `Retry-After` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryAfter {
    /// `delay-seconds`, saturating at `u64::MAX`.
    Seconds(u64),
    /// An `HTTP-date`.
    Date(SystemTime),
}

impl RetryAfter {
    /// Parses a `Retry-After` value; `None` when it is neither `delay-seconds` nor an
    /// `HTTP-date`. Surrounding spaces and tabs are ignored.
    pub fn parse(value: &[u8]) -> Option<RetryAfter> {
        let value = trim(value);
        if value.is_empty() {
            return None;
        }
        if value.iter().all(u8::is_ascii_digit) {
            let seconds = value.iter().fold(0u64, |n, d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            });
            return Some(RetryAfter::Seconds(seconds));
        }
        let text = std::str::from_utf8(value).ok()?;
        httpdate::parse_http_date(text).ok().map(RetryAfter::Date)
    }

    /// How long to wait, seen at the wall-clock time `now` (only a date reads it); no wait
    /// for a date in the past.
    pub fn delay(self, now: SystemTime) -> Duration {
        match self {
            RetryAfter::Seconds(s) => Duration::from_secs(s),
            RetryAfter::Date(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        }
    }
}

/// The pushback of a `Retry-After` value: [`Pushback::Delay`], or [`Pushback::Absent`] when it
/// is missing or invalid. `now` is the wall-clock time, read only for an `HTTP-date`.
pub fn retry_after(value: Option<&[u8]>, now: SystemTime) -> Pushback {
    match value.and_then(RetryAfter::parse) {
        Some(r) => Pushback::Delay(r.delay(now)),
        None => Pushback::Absent,
    }
}

/// The pushback of a `grpc-retry-pushback-ms` value: [`Pushback::Delay`] for a non-negative
/// integer (saturating), [`Pushback::Stop`] for anything else, [`Pushback::Absent`] when
/// missing. Surrounding spaces and tabs are ignored; a `+` sign is malformed.
pub fn grpc_retry_pushback(value: Option<&[u8]>) -> Pushback {
    let Some(value) = value else {
        return Pushback::Absent;
    };
    let value = trim(value);
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        // Negative ("-5"), empty, or not a number: A6 says do not retry.
        return Pushback::Stop;
    }
    let ms = value.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Pushback::Delay(Duration::from_millis(ms))
}

/// The pushback of a response's headers (or a gRPC response's trailers): the gRPC pushback
/// when present, else `Retry-After`. Each header is read once, its first value.
pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Pushback {
    match grpc_retry_pushback(headers.get(GRPC_RETRY_PUSHBACK_MS).map(|v| v.as_bytes())) {
        Pushback::Absent => retry_after(headers.get(RETRY_AFTER).map(|v| v.as_bytes()), now),
        said => said,
    }
}

fn trim(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_reads_seconds_and_all_three_date_formats() {
        let now = t(784_111_770); // Sun, 06 Nov 1994 08:49:30 GMT
        let seven = Pushback::Delay(Duration::from_secs(7));
        assert_eq!(retry_after(Some(b"7"), now), seven);
        assert_eq!(retry_after(Some(b" 7\t"), now), seven);
        assert_eq!(
            retry_after(Some(b"0"), now),
            Pushback::Delay(Duration::ZERO)
        );
        for date in [
            &b"Sun, 06 Nov 1994 08:49:37 GMT"[..],
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                retry_after(Some(date), now),
                seven,
                "{:?}",
                String::from_utf8_lossy(date)
            );
        }
        // A date in the past: retry at once.
        assert_eq!(
            retry_after(Some(b"Sun, 06 Nov 1994 08:49:00 GMT"), now),
            Pushback::Delay(Duration::ZERO)
        );
        assert_eq!(
            retry_after(Some(b"99999999999999999999999"), now),
            Pushback::Delay(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn an_invalid_retry_after_is_ignored() {
        for bad in [
            &b""[..],
            b"   ",
            b"-1",
            b"+5",
            b"1.5",
            b"5s",
            b"soon",
            b"Sun, 32 Nov 1994 08:49:37 GMT",
            b"\xff\xfe",
        ] {
            assert_eq!(retry_after(Some(bad), t(0)), Pushback::Absent, "{bad:?}");
        }
        assert_eq!(retry_after(None, t(0)), Pushback::Absent);
    }

    #[test]
    fn grpc_pushback_follows_a6() {
        assert_eq!(
            grpc_retry_pushback(Some(b"250")),
            Pushback::Delay(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_retry_pushback(Some(b"0")),
            Pushback::Delay(Duration::ZERO)
        );
        for stop in [
            &b"-1"[..],
            b"-0",
            b"",
            b"abc",
            b"1e3",
            b"+5",
            b"1 2",
            b"\xff",
        ] {
            assert_eq!(grpc_retry_pushback(Some(stop)), Pushback::Stop, "{stop:?}");
        }
        assert_eq!(grpc_retry_pushback(None), Pushback::Absent);
    }

    #[test]
    fn headers_prefer_the_grpc_pushback() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().expect("valid"));
        assert_eq!(
            from_headers(&headers, t(0)),
            Pushback::Delay(Duration::from_secs(3))
        );
        headers.insert(GRPC_RETRY_PUSHBACK_MS, "10".parse().expect("valid"));
        assert_eq!(
            from_headers(&headers, t(0)),
            Pushback::Delay(Duration::from_millis(10))
        );
        headers.insert(GRPC_RETRY_PUSHBACK_MS, "nope".parse().expect("valid"));
        assert_eq!(from_headers(&headers, t(0)), Pushback::Stop);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), now in any::<u64>()) {
            let now = t(now % (400 * 365 * 86_400));
            let r = retry_after(Some(&bytes), now);
            if let Pushback::Delay(_) = r {
                prop_assert!(RetryAfter::parse(&bytes).is_some());
            }
            prop_assert_ne!(r, Pushback::Stop);
            prop_assert_ne!(grpc_retry_pushback(Some(&bytes)), Pushback::Absent);
        }

        #[test]
        fn delay_seconds_round_trip(secs in any::<u64>()) {
            prop_assert_eq!(RetryAfter::parse(secs.to_string().as_bytes()), Some(RetryAfter::Seconds(secs)));
        }

        /// Any whole second from 1970 to 9999 survives `fmt_http_date` then parsing, and its
        /// delay is the distance from `now`.
        #[test]
        fn http_dates_round_trip(secs in 0u64..253_402_300_800, now in 0u64..253_402_300_800) {
            let at = t(secs);
            let text = httpdate::fmt_http_date(at);
            prop_assert_eq!(RetryAfter::parse(text.as_bytes()), Some(RetryAfter::Date(at)));
            prop_assert_eq!(
                retry_after(Some(text.as_bytes()), t(now)),
                Pushback::Delay(Duration::from_secs(secs.saturating_sub(now)))
            );
        }

        #[test]
        fn grpc_pushback_round_trips(ms in any::<i64>()) {
            let expected = match u64::try_from(ms) {
                Ok(ms) => Pushback::Delay(Duration::from_millis(ms)),
                Err(_) => Pushback::Stop,
            };
            prop_assert_eq!(grpc_retry_pushback(Some(ms.to_string().as_bytes())), expected);
        }
    }
}
