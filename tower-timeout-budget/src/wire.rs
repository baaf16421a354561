//! The wire formats a deadline travels in: `grpc-timeout` and a millisecond HTTP header.
//!
//! Both carry the *remaining* budget, not an instant, so each hop derives its own deadline and
//! the clocks of two hosts never need to agree.
//!
//! - [`GrpcTimeout`]: the gRPC over HTTP/2 format (`doc/PROTOCOL-HTTP2.md` in grpc/grpc): a
//!   positive integer of 1 to 8 ASCII digits followed by one unit, `H` hours, `M` minutes,
//!   `S` seconds, `m` milliseconds, `u` microseconds or `n` nanoseconds. Zero (`0n`) is accepted
//!   and means the budget is spent.
//! - [`parse_millis`] / [`millis_header_value`]: an integer number of milliseconds, 1 to 12
//!   ASCII digits (up to about 31 years), the shape of Envoy's `x-envoy-expected-rq-timeout-ms`.
//!   The default header name is [`DEFAULT_HTTP_HEADER`].
//!
//! Parsing is total: any byte string gives a value or a [`ParseError`], never a panic.
//!
//! ```
//! use std::time::Duration;
//! use tower_timeout_budget::wire::{parse_millis, GrpcTimeout};
//!
//! assert_eq!(GrpcTimeout::parse(b"250m").unwrap().duration(), Duration::from_millis(250));
//! assert!(GrpcTimeout::parse(b"123456789S").is_err()); // nine digits
//! assert!(GrpcTimeout::parse(b"10s").is_err()); // `s` is not a unit; `S` is
//! // Outbound values use the finest unit that fits in 8 digits, rounded down.
//! assert_eq!(GrpcTimeout::from_duration(Duration::from_millis(1_500)).to_string(), "1500000u");
//! assert_eq!(parse_millis(b"1500").unwrap(), Duration::from_millis(1_500));
//! ```

use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::error::ParseError;

/// The `grpc-timeout` header name.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The default name of the millisecond HTTP deadline header: `x-request-timeout-ms`.
///
/// No standard header exists; Envoy sends `x-envoy-expected-rq-timeout-ms` in the same format,
/// and the inbound and outbound builders take any name (`http_header`), so a service behind
/// Envoy can read Envoy's header directly.
pub const DEFAULT_HTTP_HEADER: &str = "x-request-timeout-ms";

/// The largest value `grpc-timeout` can carry: 8 digits.
const GRPC_MAX_VALUE: u64 = 99_999_999;

/// The most digits accepted in the millisecond header: 12 (about 31 years).
const MILLIS_MAX_DIGITS: usize = 12;
const MILLIS_MAX_VALUE: u64 = 999_999_999_999;

/// The units of `grpc-timeout`, finest first, with their length in nanoseconds.
const UNITS: [(u8, u128); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60 * 1_000_000_000),
    (b'H', 3_600 * 1_000_000_000),
];

/// A `grpc-timeout` value: up to 8 digits and a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcTimeout {
    value: u32,
    unit: u8,
}

impl GrpcTimeout {
    /// Parses a header value in the exact wire format: 1 to 8 ASCII digits, then one of
    /// `H M S m u n`; nothing else (no sign, no space, no second unit).
    pub fn parse(bytes: &[u8]) -> Result<GrpcTimeout, ParseError> {
        let Some((&unit, digits)) = bytes.split_last() else {
            return Err(ParseError::EMPTY);
        };
        if !UNITS.iter().any(|&(u, _)| u == unit) {
            return Err(ParseError::BAD_UNIT);
        }
        let value = parse_digits(digits, 8)?;
        // At most 8 digits, so the value fits in a u32.
        let value = u32::try_from(value).map_err(|_| ParseError::TOO_LONG)?;
        Ok(GrpcTimeout { value, unit })
    }

    /// The value for a remaining budget: the finest unit whose value fits in 8 digits, rounded
    /// down so the receiver never gets more time than the sender has. Budgets beyond
    /// 99,999,999 hours saturate there.
    pub fn from_duration(budget: Duration) -> GrpcTimeout {
        let nanos = budget.as_nanos();
        for (unit, len) in UNITS {
            let value = nanos / len;
            if value <= u128::from(GRPC_MAX_VALUE) {
                // `value` is at most 99,999,999 here.
                let value = u32::try_from(value).unwrap_or(u32::MAX);
                return GrpcTimeout { value, unit };
            }
        }
        GrpcTimeout {
            value: 99_999_999,
            unit: b'H',
        }
    }

    /// The budget this value carries.
    pub fn duration(self) -> Duration {
        let value = u64::from(self.value);
        match self.unit {
            b'H' => Duration::from_secs(value * 3_600),
            b'M' => Duration::from_secs(value * 60),
            b'S' => Duration::from_secs(value),
            b'm' => Duration::from_millis(value),
            b'u' => Duration::from_micros(value),
            _ => Duration::from_nanos(value),
        }
    }

    /// The numeric part.
    pub fn value(self) -> u32 {
        self.value
    }

    /// The unit letter: one of `H M S m u n`.
    pub fn unit(self) -> char {
        char::from(self.unit)
    }

    /// The length of one unit: what a round trip through this value may lose.
    pub fn unit_duration(self) -> Duration {
        let len = UNITS
            .iter()
            .find(|&&(u, _)| u == self.unit)
            .map_or(1, |&(_, len)| len);
        Duration::from_nanos(u64::try_from(len).unwrap_or(u64::MAX))
    }

    /// The header value.
    ///
    /// Values made lately on this thread are reused (see [`millis_header_value`]).
    pub fn to_header_value(self) -> HeaderValue {
        recent(u64::from(self.value) << 8 | u64::from(self.unit), || {
            let mut buf = [0u8; 9];
            let n = write_digits(u64::from(self.value), &mut buf);
            buf[n] = self.unit;
            header_value(&buf[..=n])
        })
    }
}

impl fmt::Display for GrpcTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.value, char::from(self.unit))
    }
}

/// Parses the millisecond HTTP header: 1 to 12 ASCII digits, nothing else.
pub fn parse_millis(bytes: &[u8]) -> Result<Duration, ParseError> {
    parse_digits(bytes, MILLIS_MAX_DIGITS).map(Duration::from_millis)
}

/// The millisecond header value for a remaining budget, rounded down (saturating at 12 digits).
///
/// The last few values made on this thread are kept and shared (a `HeaderValue` clone is a
/// reference count): a stack reads the clock once per call, so every first attempt sends
/// exactly its budget, the same value, and only a retry or a request that waited sends a value
/// that must be allocated.
pub fn millis_header_value(budget: Duration) -> HeaderValue {
    millis_value(whole_millis(budget))
}

/// The header value of `millis` ([`whole_millis`] of a budget), from this thread's recent values
/// when one was made for it.
#[inline]
pub(crate) fn millis_value(millis: u64) -> HeaderValue {
    // Unit byte 0: no unit, never a `GrpcTimeout`'s key.
    recent(millis << 8, || {
        let mut buf = [0u8; 20];
        let n = write_digits(millis, &mut buf);
        header_value(&buf[..n])
    })
}

/// The number [`millis_header_value`] writes for `budget`: whole milliseconds, rounded down and
/// saturating at 12 digits.
#[inline]
pub(crate) fn whole_millis(budget: Duration) -> u64 {
    u64::try_from(budget.as_millis())
        .unwrap_or(u64::MAX)
        .min(MILLIS_MAX_VALUE)
}

/// How many header values each thread keeps.
const RECENT_SLOTS: usize = 4;

thread_local! {
    // Header values made lately on this thread, by key (the number shifted left by 8, or'ed
    // with the unit letter), in slot `key % RECENT_SLOTS`.
    static RECENT: std::cell::RefCell<[Option<(u64, HeaderValue)>; RECENT_SLOTS]> =
        const { std::cell::RefCell::new([const { None }; RECENT_SLOTS]) };
}

/// The value `make` makes for `key`, shared with the last caller that asked for the same key on
/// this thread when it is still kept. While the thread is being torn down, `make` alone.
fn recent(key: u64, make: impl FnOnce() -> HeaderValue) -> HeaderValue {
    // The low byte is the unit: slot by the number.
    let slot = ((key >> 8) % RECENT_SLOTS as u64) as usize;
    let kept = RECENT
        .try_with(|slots| match &slots.try_borrow().ok()?[slot] {
            Some((k, value)) if *k == key => Some(value.clone()),
            _ => None,
        })
        .ok()
        .flatten();
    if let Some(value) = kept {
        return value;
    }
    let value = make();
    let _ = RECENT.try_with(|slots| {
        if let Ok(mut slots) = slots.try_borrow_mut() {
            slots[slot] = Some((key, value.clone()));
        }
    });
    value
}

fn parse_digits(digits: &[u8], max_digits: usize) -> Result<u64, ParseError> {
    if digits.is_empty() {
        return Err(ParseError::EMPTY);
    }
    if digits.len() > max_digits {
        return Err(ParseError::TOO_LONG);
    }
    // At most 12 digits: the sum stays far below u64::MAX.
    digits.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            Ok(acc * 10 + u64::from(b - b'0'))
        } else {
            Err(ParseError::NOT_A_DIGIT)
        }
    })
}

/// Writes `value` in decimal at the start of `buf`; returns the number of bytes written.
fn write_digits(mut value: u64, buf: &mut [u8]) -> usize {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        // `value % 10` is below 10.
        tmp[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    buf[..len].copy_from_slice(&tmp[i..]);
    len
}

fn header_value(bytes: &[u8]) -> HeaderValue {
    // Only ASCII digits and a unit letter are ever written, all valid header bytes.
    HeaderValue::from_bytes(bytes).expect("ascii digits and letters are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_value_made_again_on_the_same_thread_is_shared_not_allocated() {
        let a = millis_header_value(Duration::from_millis(2_000));
        let b = millis_header_value(Duration::from_millis(2_000));
        assert_eq!(a, "2000");
        assert_eq!(
            a.as_bytes().as_ptr(),
            b.as_bytes().as_ptr(),
            "one allocation, shared"
        );
        let g = GrpcTimeout::from_duration(Duration::from_secs(2));
        assert_eq!(
            g.to_header_value().as_bytes().as_ptr(),
            g.to_header_value().as_bytes().as_ptr()
        );
    }

    #[test]
    fn the_last_four_numbers_are_kept_side_by_side() {
        // Four numbers in a row, one per slot (a retry's budget, a waited request's, ...):
        // made again, each is the value made first, not a new one.
        let first: Vec<HeaderValue> = (1_000..1_004)
            .map(|ms| millis_header_value(Duration::from_millis(ms)))
            .collect();
        for (ms, value) in (1_000..1_004).zip(&first) {
            let again = millis_header_value(Duration::from_millis(ms));
            assert_eq!(again, value, "{ms}");
            assert_eq!(
                again.as_bytes().as_ptr(),
                value.as_bytes().as_ptr(),
                "{ms} ms made again"
            );
        }
    }

    #[test]
    fn kept_values_never_answer_for_another_number_or_unit() {
        // 1, 5 and 9 share a slot; the same number in ms, in `m` and in `S` are three keys.
        for round in 0..3 {
            for ms in [1u64, 5, 9, 2_000, 2_004] {
                let d = Duration::from_millis(ms);
                assert_eq!(
                    millis_header_value(d),
                    ms.to_string().as_str(),
                    "round {round}"
                );
                let g = GrpcTimeout::from_duration(d);
                assert_eq!(g.to_header_value(), g.to_string().as_str(), "round {round}");
            }
            let secs = GrpcTimeout::parse(b"5S").expect("valid");
            let millis = GrpcTimeout::parse(b"5m").expect("valid");
            assert_eq!(secs.to_header_value(), "5S");
            assert_eq!(millis.to_header_value(), "5m");
            assert_eq!(millis_header_value(Duration::from_millis(5)), "5");
        }
    }

    #[test]
    fn every_unit_parses() {
        let cases: [(&[u8], Duration); 6] = [
            (b"2H", Duration::from_secs(7_200)),
            (b"3M", Duration::from_secs(180)),
            (b"4S", Duration::from_secs(4)),
            (b"5m", Duration::from_millis(5)),
            (b"6u", Duration::from_micros(6)),
            (b"7n", Duration::from_nanos(7)),
        ];
        for (raw, want) in cases {
            assert_eq!(
                GrpcTimeout::parse(raw).map(GrpcTimeout::duration),
                Ok(want),
                "{raw:?}"
            );
        }
        assert_eq!(
            GrpcTimeout::parse(b"99999999H").unwrap().duration(),
            Duration::from_secs(99_999_999 * 3_600)
        );
        assert_eq!(
            GrpcTimeout::parse(b"00000001m").unwrap().duration(),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn malformed_grpc_timeouts_are_errors() {
        for raw in [
            &b""[..],
            b"m",
            b"1",
            b"10",
            b"10s",
            b"10ms",
            b"-1S",
            b"+1S",
            b" 1S",
            b"1 S",
            b"123456789S",
            b"1.5S",
            b"\xff1S",
            b"1\xff",
        ] {
            assert!(GrpcTimeout::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn formatting_picks_the_finest_unit_that_fits() {
        let f = |d| GrpcTimeout::from_duration(d).to_string();
        assert_eq!(f(Duration::ZERO), "0n");
        assert_eq!(f(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(f(Duration::from_millis(100)), "100000u");
        assert_eq!(f(Duration::from_secs(30)), "30000000u");
        assert_eq!(f(Duration::from_secs(300)), "300000m");
        assert_eq!(f(Duration::from_secs(200_000)), "200000S");
        assert_eq!(f(Duration::from_secs(100_000_000)), "1666666M");
        assert_eq!(f(Duration::from_secs(6_000_000_000)), "1666666H");
        assert_eq!(f(Duration::MAX), "99999999H");
        assert_eq!(
            GrpcTimeout::from_duration(Duration::from_millis(5)).to_header_value(),
            "5000000n"
        );
    }

    #[test]
    fn millis_header_is_digits_only() {
        assert_eq!(parse_millis(b"0"), Ok(Duration::ZERO));
        assert_eq!(
            parse_millis(b"999999999999"),
            Ok(Duration::from_millis(999_999_999_999))
        );
        for raw in [
            &b""[..],
            b"1000000000000",
            b"-5",
            b"5ms",
            b"1e3",
            b" 5",
            b"5.0",
        ] {
            assert!(parse_millis(raw).is_err(), "{raw:?}");
        }
        assert_eq!(millis_header_value(Duration::from_micros(1_999)), "1");
        assert_eq!(millis_header_value(Duration::MAX), "999999999999");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn grpc_parser_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(t) = GrpcTimeout::parse(&raw) {
                prop_assert!(raw.len() >= 2 && raw.len() <= 9);
                let _ = t.duration();
            }
        }

        #[test]
        fn grpc_parser_accepts_exactly_the_wire_format(digits in "[0-9]{0,10}", unit in "[HMSmunsxh ]") {
            let raw = format!("{digits}{unit}");
            let valid = (1..=8).contains(&digits.len()) && "HMSmun".contains(unit.as_str());
            prop_assert_eq!(GrpcTimeout::parse(raw.as_bytes()).is_ok(), valid);
        }

        #[test]
        fn grpc_round_trip_loses_less_than_one_unit(nanos in any::<u64>()) {
            let budget = Duration::from_nanos(nanos);
            let sent = GrpcTimeout::from_duration(budget);
            let header = sent.to_header_value();
            let back = GrpcTimeout::parse(header.as_bytes()).expect("formatted values parse");
            prop_assert_eq!(back, sent);
            prop_assert!(back.duration() <= budget);
            prop_assert!(budget - back.duration() < sent.unit_duration());
        }

        #[test]
        fn millis_parser_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(d) = parse_millis(&raw) {
                prop_assert!(d <= Duration::from_millis(MILLIS_MAX_VALUE));
            }
        }

        #[test]
        fn millis_round_trip_loses_less_than_a_millisecond(nanos in 0u64..MILLIS_MAX_VALUE * 1_000_000) {
            let budget = Duration::from_nanos(nanos);
            let back = parse_millis(millis_header_value(budget).as_bytes()).expect("formatted values parse");
            prop_assert!(back <= budget);
            prop_assert!(budget - back < Duration::from_millis(1));
        }
    }
}
