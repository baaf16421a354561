//! Parsing the `Idempotency-Key` header value.

use http::HeaderValue;

/// The longest key accepted, in characters (Stripe's limit).
pub(crate) const MAX_KEY_LEN: usize = 255;

/// Why a key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    Empty,
    TooLong,
    NotVisibleAscii,
    BadString,
    Repeated,
}

impl Invalid {
    /// The problem body's `detail`.
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Invalid::Empty => "the idempotency key is empty",
            Invalid::TooLong => "the idempotency key is longer than 255 characters",
            Invalid::NotVisibleAscii => {
                "the idempotency key must be visible ASCII characters (0x21 to 0x7E)"
            }
            Invalid::BadString => "the idempotency key is not a valid structured-field string",
            Invalid::Repeated => "the idempotency key header is sent more than once",
        }
    }
}

/// Reads a key sent as the draft's structured-field string (`"abc"`, with `\"` and `\\`
/// escapes) or as a bare token (`abc`, as Stripe's clients send it). Either way the key is 1 to
/// 255 visible ASCII characters (0x21–0x7E); anything else (spaces, control characters, CR/LF,
/// non-ASCII bytes, a malformed string) is refused. Returns the key's bytes, unescaped.
pub(crate) fn parse(value: &HeaderValue) -> Result<Vec<u8>, Invalid> {
    let raw = trim_ows(value.as_bytes());
    let key = match raw {
        [b'"', inner @ .., b'"'] => unescape(inner)?,
        [b'"', ..] => return Err(Invalid::BadString),
        _ => raw.to_vec(),
    };
    if key.is_empty() {
        return Err(Invalid::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Invalid::TooLong);
    }
    if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(Invalid::NotVisibleAscii);
    }
    Ok(key)
}

/// Field values may carry optional whitespace at either end (RFC 9110 §5.5).
fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// RFC 9651 §4.2.5: inside the quotes, `\` escapes only `"` and `\`; a bare `"` ends the string.
fn unescape(inner: &[u8]) -> Result<Vec<u8>, Invalid> {
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(c),
                _ => return Err(Invalid::BadString),
            },
            b'"' => return Err(Invalid::BadString),
            _ => out.push(b),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_str(s: &str) -> Result<Vec<u8>, Invalid> {
        parse(&HeaderValue::from_str(s).unwrap())
    }

    #[test]
    fn bare_tokens_and_structured_strings_give_the_same_key() {
        assert_eq!(parse_str("abc-123").unwrap(), b"abc-123");
        assert_eq!(parse_str("\"abc-123\"").unwrap(), b"abc-123");
        assert_eq!(parse_str("  abc  ").unwrap(), b"abc");
        assert_eq!(parse_str(r#""a\"b\\c""#).unwrap(), br#"a"b\c"#);
    }

    #[test]
    fn keys_outside_1_to_255_visible_ascii_are_refused() {
        assert_eq!(parse_str(""), Err(Invalid::Empty));
        assert_eq!(parse_str("\"\""), Err(Invalid::Empty));
        assert_eq!(parse_str(&"a".repeat(255)).map(|k| k.len()), Ok(255));
        assert_eq!(parse_str(&"a".repeat(256)), Err(Invalid::TooLong));
        assert_eq!(parse_str("a b"), Err(Invalid::NotVisibleAscii));
        assert_eq!(parse_str("a\tb"), Err(Invalid::NotVisibleAscii));
        assert_eq!(
            parse(&HeaderValue::from_bytes("clé".as_bytes()).unwrap()),
            Err(Invalid::NotVisibleAscii)
        );
    }

    #[test]
    fn each_refusal_says_in_the_problem_detail_what_is_wrong_with_the_key() {
        let details = [
            (Invalid::Empty, "empty"),
            (Invalid::TooLong, "longer than 255"),
            (Invalid::NotVisibleAscii, "visible ASCII"),
            (Invalid::BadString, "structured-field string"),
            (Invalid::Repeated, "more than once"),
        ];
        for (invalid, says) in details {
            let detail = invalid.detail();
            assert!(detail.starts_with("the idempotency key"), "{detail}");
            assert!(detail.contains(says), "{invalid:?}: {detail}");
        }
    }

    #[test]
    fn malformed_structured_strings_are_refused() {
        assert_eq!(parse_str("\"abc"), Err(Invalid::BadString));
        assert_eq!(parse_str(r#""a\b""#), Err(Invalid::BadString));
        assert_eq!(parse_str(r#""a"b""#), Err(Invalid::BadString));
        assert_eq!(parse_str("\"a\\\""), Err(Invalid::BadString));
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_accepts_only_visible_ascii(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes)
                && let Ok(key) = parse(&value)
            {
                prop_assert!((1..=MAX_KEY_LEN).contains(&key.len()));
                prop_assert!(key.iter().all(|b| (0x21..=0x7e).contains(b)));
            }
        }
    }
}
