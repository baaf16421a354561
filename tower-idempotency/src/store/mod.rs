//! The store contract: what the layer asks of a store, and what any store must guarantee.
//!
//! A store keeps one entry per [`StoreKey`]. An entry is either **in flight** (claimed by one
//! holder, identified by its [`Fence`], until its lease runs out) or **completed** (a [`Record`]
//! to replay, until its TTL runs out). Every operation is one round trip for a remote store, and
//! every operation is atomic for that key.
//!
//! | operation | entry absent or expired | in flight, same fence | in flight, other fence | completed |
//! |---|---|---|---|---|
//! | [`Store::claim`] | becomes in flight: [`Claim::Acquired`] with a new fence | [`Claim::InFlight`] | [`Claim::InFlight`] | [`Claim::Completed`] |
//! | [`Store::renew`] | `false` | lease reset, `true` | `false` | `false` |
//! | [`Store::complete`] | `false` | becomes completed, `true` | `false` | `false` |
//! | [`Store::release`] | `false` | removed, `true` | `false` | `false` |
//!
//! An in-flight entry whose lease has passed counts as absent: the next claim takes it over with a
//! **greater** fence, and the old holder's `renew`, `complete` and `release` then return `false`
//! (it is *fenced out*). A fence must never be handed out twice for a key while a holder of the
//! earlier one could still call the store; a store that forgets a key must still never hand out a
//! smaller or equal fence for it than one it already issued (a process-wide counter, or a per-key
//! counter kept at least as long as the longest lease, does this).
//!
//! The store never sees a raw `Idempotency-Key`: [`StoreKey`] is a SHA-256 of the whole scope,
//! and [`Fingerprint`] a SHA-256 of the request, both stable across processes, versions and
//! machines.
//!
//! ```
//! use std::time::Duration;
//! use tower_idempotency::store::{Claim, Fingerprint, MemoryStore, Record, Store, StoreKey};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_idempotency::store::StoreError> {
//! let store = MemoryStore::new();
//! let key = StoreKey::derive("orders", b"user-1", "POST", "/orders", b"key-1");
//! let fp = Fingerprint::compute("POST", "/orders", Some(b"application/json"), b"{}");
//!
//! let Claim::Acquired(fence) = store.claim(&key, &fp, Duration::from_secs(30)).await? else {
//!     unreachable!("a fresh key is free");
//! };
//! let record = Record { status: 201, headers: vec![], body: "created".into() };
//! assert!(store.complete(&key, fence, &record, Duration::from_secs(3600)).await?);
//!
//! match store.claim(&key, &fp, Duration::from_secs(30)).await? {
//!     Claim::Completed { record: stored, .. } => assert_eq!(stored, record),
//!     other => panic!("expected a replay, got {other:?}"),
//! }
//! # Ok(())
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

mod memory;
#[cfg(feature = "redis")]
pub mod redis;

pub use memory::{MemoryStore, MemoryStoreBuilder};

/// Where a store keeps one idempotency entry: the SHA-256 of the whole scope.
///
/// Built with [`StoreKey::derive`] from the configured prefix, the principal, the method, the
/// route template and the client's key. Two builds of a service derive the same `StoreKey` for the
/// same request, so a rolling deploy shares entries.
///
/// ```
/// use tower_idempotency::store::StoreKey;
///
/// let a = StoreKey::derive("p", b"alice", "POST", "/orders", b"k");
/// let b = StoreKey::derive("p", b"bob", "POST", "/orders", b"k");
/// assert_ne!(a, b);
/// assert_eq!(a.to_hex().len(), 64);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey([u8; 32]);

/// Domain separation, so our hashes never collide with another use of SHA-256 on the same bytes.
const KEY_DOMAIN: &[u8] = b"tower-idempotency/key/v1";
const FINGERPRINT_DOMAIN: &[u8] = b"tower-idempotency/fingerprint/v1";

/// Hashes each part with its length first, so no two different part lists hash the same bytes.
fn update_framed(hasher: &mut Sha256, part: &[u8]) {
    hasher.update((part.len() as u64).to_be_bytes());
    hasher.update(part);
}

impl StoreKey {
    /// Derives the key of one scope: `prefix`, `principal` (empty when there is none), `method`,
    /// `route` (the template, such as `/orders/{id}`, or the path) and the client's `key`.
    pub fn derive(prefix: &str, principal: &[u8], method: &str, route: &str, key: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(KEY_DOMAIN);
        for part in [
            prefix.as_bytes(),
            principal,
            method.as_bytes(),
            route.as_bytes(),
            key,
        ] {
            update_framed(&mut hasher, part);
        }
        Self(hasher.finalize().into())
    }

    /// Wraps 32 bytes computed elsewhere (tests, or a key read back from a store).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes of the hash.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hash as 64 lowercase hex digits, for a store that keys by string.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({})", self.to_hex())
    }
}

/// The SHA-256 of what makes two requests "the same": method, path and query, content type, body.
///
/// A key reused with another fingerprint is refused with 422.
///
/// ```
/// use tower_idempotency::store::Fingerprint;
///
/// let a = Fingerprint::compute("POST", "/orders?x=1", Some(b"application/json"), b"{}");
/// let b = Fingerprint::compute("POST", "/orders?x=1", Some(b"application/json"), b"{ }");
/// assert_ne!(a, b);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Computes the fingerprint of a request from its method, path and query, `Content-Type`
    /// (if any) and whole body.
    pub fn compute(
        method: &str,
        path_and_query: &str,
        content_type: Option<&[u8]>,
        body: &[u8],
    ) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(FINGERPRINT_DOMAIN);
        update_framed(&mut hasher, method.as_bytes());
        update_framed(&mut hasher, path_and_query.as_bytes());
        match content_type {
            Some(ct) => {
                hasher.update([1]);
                update_framed(&mut hasher, ct);
            }
            None => hasher.update([0]),
        }
        update_framed(&mut hasher, body);
        Self(hasher.finalize().into())
    }

    /// Wraps 32 bytes computed elsewhere (tests, or a fingerprint read back from a store).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes of the hash.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", to_hex(&self.0))
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// A fencing token: identifies one claim of one key. Each new claim of a key gets a greater one.
///
/// The layer puts the fence of the running request in its extensions, so a handler can make its
/// own downstream writes conditional on it (`UPDATE … WHERE fence < $1`).
///
/// ```
/// use tower_idempotency::store::Fence;
///
/// assert!(Fence::new(2) > Fence::new(1));
/// assert_eq!(Fence::new(7).get(), 7);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fence(u64);

impl Fence {
    /// Wraps a token issued by a store.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token's value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// A stored response, replayed to later requests with the same key and fingerprint.
///
/// Header names are lowercase; hop-by-hop headers, `Set-Cookie` and the configured deny list are
/// already removed when the layer builds a record. The response's trailers (gRPC's
/// `grpc-status` among them) are kept in `headers` too, after the headers, each name prefixed
/// with [`Record::TRAILER_PREFIX`]. [`Record::encode`] is the exact byte form a remote store keeps.
///
/// ```
/// use tower_idempotency::store::Record;
///
/// let record = Record {
///     status: 200,
///     headers: vec![
///         ("content-type".into(), b"application/grpc".to_vec()),
///         (format!("{}grpc-status", Record::TRAILER_PREFIX), b"0".to_vec()),
///     ],
///     body: "created".into(),
/// };
/// let bytes = record.encode();
/// assert_eq!(Record::decode(&bytes).unwrap(), record);
/// assert!(Record::decode(b"garbage").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The HTTP status code, 100 to 999.
    pub status: u16,
    /// Header names (lowercase) and values, in response order; a name may repeat. Then the
    /// trailers, in order, each name prefixed with [`Record::TRAILER_PREFIX`].
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole response body.
    pub body: Bytes,
}

/// First bytes of an encoded [`Record`]: a magic and the format version.
const RECORD_MAGIC: [u8; 3] = *b"TIR";
const RECORD_VERSION: u8 = 1;

impl Record {
    /// The prefix of a trailer's name in [`Record::headers`]: `:trailer:grpc-status` is the
    /// trailer `grpc-status`.
    ///
    /// No header name can start with `:`, so a trailer is never taken for a header, and the
    /// encoding is unchanged: a record with trailers reads as before, and a reader that does not
    /// know the prefix (an earlier version of this crate, during a rolling deploy) skips these
    /// names as invalid and replays the response without its trailers.
    pub const TRAILER_PREFIX: &'static str = ":trailer:";

    /// The length of [`Record::encode`]'s output, without encoding; stores bound entries by it.
    pub fn encoded_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| 2 + name.len() + 4 + value.len())
            .sum();
        RECORD_MAGIC.len() + 1 + 2 + 2 + headers + 8 + self.body.len()
    }

    /// Encodes the record in the versioned binary format that [`Record::decode`] reads:
    /// `"TIR" 0x01`, status (u16 BE), header count (u16 BE), then per header name length (u16 BE),
    /// name, value length (u32 BE), value, then body length (u64 BE) and body.
    ///
    /// Header lists longer than `u16::MAX`, names longer than `u16::MAX` bytes or values longer than
    /// `u32::MAX` bytes cannot come from an `http` response; they are truncated to fit.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&RECORD_MAGIC);
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.status.to_be_bytes());
        let count = self.headers.len().min(usize::from(u16::MAX));
        out.extend_from_slice(&(count as u16).to_be_bytes());
        for (name, value) in self.headers.iter().take(count) {
            let name = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
            let value = &value[..value.len().min(u32::MAX as usize)];
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&(self.body.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Decodes bytes written by [`Record::encode`]. Anything else (another version, truncated or
    /// trailing bytes, a status outside 100–999, a name that is not UTF-8) is an error, never a
    /// panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        if r.take(3)? != RECORD_MAGIC {
            return Err(DecodeError("not an encoded record"));
        }
        if r.take(1)?[0] != RECORD_VERSION {
            return Err(DecodeError("unknown record version"));
        }
        let status = r.u16()?;
        if !(100..=999).contains(&status) {
            return Err(DecodeError("status out of range"));
        }
        let count = r.u16()?;
        // Each header takes at least six bytes: never reserve more than the input can hold.
        let mut headers = Vec::with_capacity(usize::from(count).min(r.0.len() / 6));
        for _ in 0..count {
            let len = usize::from(r.u16()?);
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| DecodeError("header name is not UTF-8"))?
                .to_owned();
            let len = r.u32()? as usize;
            headers.push((name, r.take(len)?.to_vec()));
        }
        let len = usize::try_from(r.u64()?).map_err(|_| DecodeError("body too long"))?;
        let body = Bytes::copy_from_slice(r.take(len)?);
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Self {
            status,
            headers,
            body,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated record"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }
}

/// Bytes that [`Record::decode`] cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid idempotency record: {}", self.0)
    }
}

impl StdError for DecodeError {}

/// What [`Store::claim`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key was free (absent, or its lease or TTL had run out): the caller now holds it with
    /// this fence and must `complete` or `release` it.
    Acquired(Fence),
    /// Another request holds the key.
    InFlight {
        /// The fingerprint of the request that holds it.
        fingerprint: Fingerprint,
        /// How long until its lease runs out (unless renewed).
        lease_left: Duration,
    },
    /// A request with this key completed; its response is stored.
    Completed {
        /// The fingerprint of the request that completed.
        fingerprint: Fingerprint,
        /// The response to replay.
        record: Record,
    },
}

/// A store of idempotency entries, shared by every clone of a layer (and, for a remote store, by
/// every process). See the [module docs](self) for the exact semantics.
///
/// Each method is one atomic operation on one key, and one round trip for a remote store. The
/// futures must be cancel-safe in the sense that dropping one leaves the entry in a state the table
/// above allows (the layer's drop guard calls `release` again on a fresh future).
pub trait Store: Send + Sync + 'static {
    /// Claims `key` for a request with fingerprint `fp` for `lease`, or reports who holds it.
    fn claim(
        &self,
        key: &StoreKey,
        fp: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Extends the holder's lease to `lease` from now; `false` when `fence` no longer holds `key`.
    fn renew(
        &self,
        key: &StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores `record` as the key's result for `ttl`; `false` (and nothing stored) when `fence` no
    /// longer holds `key`: a stale holder's completion is refused.
    fn complete(
        &self,
        key: &StoreKey,
        fence: Fence,
        record: &Record,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Frees `key` so the next claim runs the request again; `false` when `fence` no longer
    /// holds it.
    fn release(
        &self,
        key: &StoreKey,
        fence: Fence,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

impl<S: Store> Store for Arc<S> {
    fn claim(
        &self,
        key: &StoreKey,
        fp: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        (**self).claim(key, fp, lease)
    }

    fn renew(
        &self,
        key: &StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).renew(key, fence, lease)
    }

    fn complete(
        &self,
        key: &StoreKey,
        fence: Fence,
        record: &Record,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).complete(key, fence, record, ttl)
    }

    fn release(
        &self,
        key: &StoreKey,
        fence: Fence,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).release(key, fence)
    }
}

/// What kind of failure a [`StoreError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store could not be reached or refused the operation (connection, failover, overload).
    Unavailable,
    /// The store did not answer in time.
    Timeout,
    /// The store answered with data this crate cannot read (a corrupt or foreign entry).
    Corrupt,
    /// The store is full and could not make room (the memory store when every entry is in flight).
    Full,
}

impl StoreErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "store unavailable",
            StoreErrorKind::Timeout => "store timed out",
            StoreErrorKind::Corrupt => "store returned a corrupt entry",
            StoreErrorKind::Full => "store full",
        }
    }
}

/// A store operation failed. The layer fails closed on it (503 with `Retry-After`) unless
/// configured to fail open, and counts it.
///
/// ```
/// use tower_idempotency::store::{StoreError, StoreErrorKind};
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
/// let err = StoreError::with_source(StoreErrorKind::Unavailable, io);
/// assert_eq!(err.kind(), StoreErrorKind::Unavailable);
/// assert_eq!(err.to_string(), "store unavailable");
/// assert!(std::error::Error::source(&err).is_some());
/// ```
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl StoreError {
    /// An error of `kind` with no underlying cause.
    pub fn new(kind: StoreErrorKind) -> Self {
        Self { kind, source: None }
    }

    /// An error of `kind` caused by `source` (a client error, a [`DecodeError`]).
    pub fn with_source(
        kind: StoreErrorKind,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<DecodeError> for StoreError {
    fn from(err: DecodeError) -> Self {
        Self::with_source(StoreErrorKind::Corrupt, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = Record> {
        (
            100u16..=999,
            proptest::collection::vec(
                (
                    "(:trailer:)?[a-z-]{1,20}",
                    proptest::collection::vec(any::<u8>(), 0..40),
                ),
                0..8,
            ),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(status, headers, body)| Record {
                status,
                headers,
                body: body.into(),
            })
    }

    proptest! {
        #[test]
        fn record_round_trips(record in record()) {
            let bytes = record.encode();
            prop_assert_eq!(bytes.len(), record.encoded_len());
            prop_assert_eq!(Record::decode(&bytes).unwrap(), record);
        }

        #[test]
        fn decoding_garbage_errs_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn every_truncation_or_extension_is_refused(record in record(), cut in any::<prop::sample::Index>(), extra in 1u8..) {
            let bytes = record.encode();
            let at = cut.index(bytes.len());
            prop_assert!(Record::decode(&bytes[..at]).is_err());
            let mut longer = bytes.clone();
            longer.push(extra);
            prop_assert!(Record::decode(&longer).is_err());
        }
    }

    #[test]
    fn a_record_with_trailers_and_one_without_round_trip() {
        let without = Record {
            status: 200,
            headers: vec![("content-type".into(), b"application/grpc".to_vec())],
            body: Bytes::from_static(b"\0\0\0\0\x02hi"),
        };
        let mut with = without.clone();
        with.headers.push((
            format!("{}grpc-status", Record::TRAILER_PREFIX),
            b"0".to_vec(),
        ));
        for record in [without, with] {
            let bytes = record.encode();
            assert_eq!(bytes.len(), record.encoded_len());
            assert_eq!(Record::decode(&bytes), Ok(record));
        }
    }

    #[test]
    fn a_record_encoded_before_trailers_were_kept_still_decodes() {
        // The bytes an earlier version wrote (pinned): the format did not change.
        let old = b"TIR\x01\x00\xc9\x00\x01\x00\x0ccontent-type\x00\x00\x00\x0atext/plain\
                    \x00\x00\x00\x00\x00\x00\x00\x07created";
        assert_eq!(
            Record::decode(old),
            Ok(Record {
                status: 201,
                headers: vec![("content-type".into(), b"text/plain".to_vec())],
                body: Bytes::from_static(b"created"),
            })
        );
    }

    #[test]
    fn decoding_refuses_other_versions_and_bad_statuses() {
        let mut bytes = Record {
            status: 200,
            headers: vec![],
            body: Bytes::new(),
        }
        .encode();
        bytes[3] = 2;
        assert_eq!(
            Record::decode(&bytes),
            Err(DecodeError("unknown record version"))
        );
        bytes[3] = 1;
        bytes[4..6].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            Record::decode(&bytes),
            Err(DecodeError("status out of range"))
        );
    }

    #[test]
    fn store_key_is_a_stable_sha256() {
        // Pinned (SHA-256 over the domain tag and length-framed parts, checked with Python's
        // hashlib): a change here breaks every stored key in a rolling deploy.
        let key = StoreKey::derive("p", b"alice", "POST", "/orders", b"k");
        assert_eq!(
            key.to_hex(),
            "a6cd4c4f3b3597b422c66fcac760d193e9e4f46ab764e16228edb45f60f2bb63"
        );
    }

    #[test]
    fn store_key_parts_are_framed() {
        // Moving bytes between parts must change the key.
        let a = StoreKey::derive("p", b"ab", "POST", "/x", b"c");
        let b = StoreKey::derive("p", b"a", "POST", "/x", b"bc");
        assert_ne!(a, b);
        let c = StoreKey::derive("p", b"alice", "PUT", "/x", b"c");
        let d = StoreKey::derive("p", b"alice", "POST", "/x", b"c");
        assert_ne!(c, d);
    }

    #[test]
    fn fingerprint_tells_no_content_type_from_empty() {
        let none = Fingerprint::compute("POST", "/", None, b"");
        let empty = Fingerprint::compute("POST", "/", Some(b""), b"");
        assert_ne!(none, empty);
        assert_ne!(
            Fingerprint::compute("POST", "/?a=1", None, b""),
            Fingerprint::compute("POST", "/?a=2", None, b"")
        );
    }
}
