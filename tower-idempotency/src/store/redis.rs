//! [`RedisStore`]: the [`Store`] on Redis, standalone or Redis Cluster (feature `redis`).
//!
//! Every operation is **one round trip**: one `EVALSHA` of a small Lua script, which Redis runs
//! atomically (the script is sent in full once per server, on the first `NOSCRIPT`). Each key
//! keeps two Redis keys, both under the hash tag of the key's hex SHA-256, so every script touches
//! one hash slot and runs unchanged on **Redis Cluster**:
//!
//! | Redis key | type | holds | expires |
//! |---|---|---|---|
//! | `<prefix>{<hex>}` | hash | `st` (`i` in flight, `c` completed), `fp`, `fe` (fence), `rec` | the lease (`PX`) while in flight, the TTL once completed |
//! | `<prefix>{<hex>}:fence` | string | the last fence issued for this key | never before the entry |
//!
//! Lease expiry is Redis's own `PX`: a holder that crashes frees its key when the lease runs out,
//! with no sweeper. A new fence is `max(last fence + 1, the server's TIME in µs)`, so fences keep
//! growing even after Redis forgot a key (its counter expired or was evicted), as long as the
//! server clock does not step back.
//!
//! Needs Redis 5.0 or later (scripts read `TIME` and then write, which needs effects
//! replication, the default since 5.0), standalone or cluster; tested with Redis 7.0.
//! Each operation is bounded by [`tokio::time::timeout`]: under a paused Tokio clock a call that
//! waits on the network times out at once, so test a layer on this store with real time.
//!
//! Durability: Redis replicates asynchronously, so a claim or completion acknowledged by a
//! primary can be lost if that primary fails over before its replica received it; the next
//! request with that key then runs again. `WAIT` narrows that window but does not close it. Run
//! Redis with a `maxmemory-policy` that does not evict these keys early (`noeviction` or a
//! `volatile-*` policy with room to spare): an evicted completed entry is a request run twice.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_idempotency::store::redis::{RedisConnection, RedisStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Standalone Redis, through a connection manager that reconnects by itself:
//! let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
//!
//! // Redis Cluster, with a prefix of our own and a tighter bound on every operation:
//! let connection = RedisConnection::connect_cluster([
//!     "redis://127.0.0.1:7000/",
//!     "redis://127.0.0.1:7001/",
//!     "redis://127.0.0.1:7002/",
//! ])
//! .await?;
//! let store = RedisStore::builder()
//!     .prefix("payments:idem:")
//!     .timeout(Duration::from_millis(250))
//!     .build(connection)?;
//! # let _ = store;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script, ScriptInvocation, Value};
use tower_red::ConfigError;

use super::{Claim, Fence, Fingerprint, Record, Store, StoreError, StoreErrorKind, StoreKey};

/// The prefix of every Redis key unless [`RedisStoreBuilder::prefix`] says otherwise.
pub const DEFAULT_PREFIX: &str = "tower-idempotency:";

/// The bound on one store operation unless [`RedisStoreBuilder::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The layer name in a [`ConfigError`].
const LAYER: &str = "idempotency";

/// The longest prefix accepted: a key name must stay small next to its value.
const MAX_PREFIX_LEN: usize = 256;

// The fence: above the last one issued for this key and at least the server time in µs, so it
// still grows after the counter is gone. The counter lives at least as long as the entry.
// `%.0f`: a Lua number prints in exponent form past 1e14; µs since 1970 stay below 2^53.
const NEW_FENCE: &str = r"
local t = redis.call('TIME')
local fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if last + 1 > fence then fence = last + 1 end
";

// Keeps the counter alive at least `ms` more (and puts it back at the entry's fence if Redis
// evicted it), so it never expires before the entry it fences.
const KEEP_COUNTER: &str = r"
local function keep_counter(fence, ms)
  local left = redis.call('PTTL', KEYS[2])
  if left == -2 then
    redis.call('SET', KEYS[2], fence, 'PX', ms)
  elseif left >= 0 and left < ms then
    redis.call('PEXPIRE', KEYS[2], ms)
  end
end
";

/// KEYS: entry, counter. ARGV: fingerprint, lease ms.
/// Returns `{0, fence}`, `{1, fingerprint, lease left ms}` or `{2, fingerprint, record}`.
fn claim_script() -> String {
    format!(
        r"
local e = redis.call('HMGET', KEYS[1], 'st', 'fp', 'rec')
if e[1] == 'c' then return {{2, e[2], e[3]}} end
if e[1] == 'i' then return {{1, e[2], redis.call('PTTL', KEYS[1])}} end
{NEW_FENCE}
local f = string.format('%.0f', fence)
local lease = tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'st', 'i', 'fp', ARGV[1], 'fe', f)
redis.call('PEXPIRE', KEYS[1], lease)
local left = redis.call('PTTL', KEYS[2])
redis.call('SET', KEYS[2], f)
if left < lease then left = lease end
redis.call('PEXPIRE', KEYS[2], left)
return {{0, f}}
"
    )
}

/// KEYS: entry, counter. ARGV: fence, lease ms. Returns 1 when renewed, else 0.
fn renew_script() -> String {
    format!(
        r"
{KEEP_COUNTER}
local e = redis.call('HMGET', KEYS[1], 'st', 'fe')
if e[1] ~= 'i' or e[2] ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
keep_counter(e[2], tonumber(ARGV[2]))
return 1
"
    )
}

/// KEYS: entry, counter. ARGV: fence, record, ttl ms. Returns 1 when stored, else 0.
fn complete_script() -> String {
    format!(
        r"
{KEEP_COUNTER}
local e = redis.call('HMGET', KEYS[1], 'st', 'fe')
if e[1] ~= 'i' or e[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'st', 'c', 'rec', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
keep_counter(e[2], tonumber(ARGV[3]))
return 1
"
    )
}

/// KEYS: entry. ARGV: fence. Returns 1 when released, else 0. The counter stays.
const RELEASE_SCRIPT: &str = r"
local e = redis.call('HMGET', KEYS[1], 'st', 'fe')
if e[1] ~= 'i' or e[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
";

/// The four scripts, hashed once per store.
struct Scripts {
    claim: Script,
    renew: Script,
    complete: Script,
    release: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            claim: Script::new(&claim_script()),
            renew: Script::new(&renew_script()),
            complete: Script::new(&complete_script()),
            release: Script::new(RELEASE_SCRIPT),
        }
    }
}

/// A connection a [`RedisStore`] runs its scripts on: standalone or cluster.
///
/// Both kinds are cheap to clone and shared by every clone of the store; both reconnect by
/// themselves after an outage (the store's operations fail with [`StoreError`] meanwhile).
#[derive(Clone)]
pub struct RedisConnection(Inner);

#[derive(Clone)]
enum Inner {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Inner::Standalone(_) => "RedisConnection::Standalone",
            Inner::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl RedisConnection {
    /// Connects to a standalone Redis at `url`, such as `redis://127.0.0.1:6379/`, through a
    /// [`ConnectionManager`] that reconnects after a dropped connection. Each connection attempt
    /// and each reply is bounded by [`DEFAULT_TIMEOUT`]; fails when Redis cannot be reached now.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(connect_error)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEFAULT_TIMEOUT))
            .set_response_timeout(Some(DEFAULT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(DEFAULT_TIMEOUT);
        let connect = ConnectionManager::new_with_config(client, config);
        let manager = bounded(DEFAULT_TIMEOUT * 4, connect).await?;
        Ok(Self(Inner::Standalone(manager)))
    }

    /// Connects to a Redis Cluster through any of its nodes (`redis://host:port/` each); the
    /// client follows `MOVED` and `ASK` and refreshes its slot map by itself. Each connection
    /// attempt and each reply is bounded by [`DEFAULT_TIMEOUT`]; fails when no node answers now.
    pub async fn connect_cluster<I, S>(urls: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let client = ClusterClientBuilder::new(urls)
            .connection_timeout(DEFAULT_TIMEOUT)
            .response_timeout(DEFAULT_TIMEOUT)
            .retries(2)
            .build()
            .map_err(connect_error)?;
        let connection = bounded(DEFAULT_TIMEOUT * 4, client.get_async_connection()).await?;
        Ok(Self(Inner::Cluster(connection)))
    }

    async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, RedisError> {
        match &self.0 {
            Inner::Standalone(manager) => invocation.invoke_async(&mut manager.clone()).await,
            Inner::Cluster(cluster) => invocation.invoke_async(&mut cluster.clone()).await,
        }
    }
}

impl From<ConnectionManager> for RedisConnection {
    /// A standalone connection configured by the caller (timeouts, retries, credentials).
    fn from(manager: ConnectionManager) -> Self {
        Self(Inner::Standalone(manager))
    }
}

impl From<ClusterConnection> for RedisConnection {
    /// A cluster connection configured by the caller (timeouts, retries, credentials, TLS).
    fn from(cluster: ClusterConnection) -> Self {
        Self(Inner::Cluster(cluster))
    }
}

/// Idempotency entries in Redis or Redis Cluster; see the [module docs](self).
///
/// Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: RedisConnection,
    prefix: Arc<str>,
    timeout: Duration,
    scripts: Arc<Scripts>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &self.connection)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder to set the key prefix and the bound on each operation.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// A store on the standalone Redis at `url` with the default prefix and timeout; see
    /// [`RedisConnection::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let connection = RedisConnection::connect(url).await?;
        Ok(Self::with_defaults(connection))
    }

    /// A store on the Redis Cluster reached through `urls` with the default prefix and timeout;
    /// see [`RedisConnection::connect_cluster`].
    pub async fn connect_cluster<I, S>(urls: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let connection = RedisConnection::connect_cluster(urls).await?;
        Ok(Self::with_defaults(connection))
    }

    fn with_defaults(connection: RedisConnection) -> Self {
        Self {
            connection,
            prefix: DEFAULT_PREFIX.into(),
            timeout: DEFAULT_TIMEOUT,
            scripts: Arc::new(Scripts::new()),
        }
    }

    /// The Redis key of `key`'s entry: `<prefix>{<hex>}`. Its fencing counter is the same name
    /// followed by `:fence`, in the same hash slot.
    pub fn entry_key(&self, key: &StoreKey) -> String {
        entry_key(&self.prefix, key)
    }

    fn keys(&self, key: &StoreKey) -> (String, String) {
        let entry = self.entry_key(key);
        let counter = format!("{entry}:fence");
        (entry, counter)
    }

    async fn run(&self, invocation: ScriptInvocation<'_>) -> Result<Value, StoreError> {
        bounded(self.timeout, self.connection.invoke(&invocation)).await
    }
}

/// Configures a [`RedisStore`]; [`build`](Self::build) validates.
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisStoreBuilder {
    prefix: String,
    timeout: Duration,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl RedisStoreBuilder {
    /// Every Redis key the store writes starts with `prefix` (default [`DEFAULT_PREFIX`]), so one
    /// Redis can serve several services, and ACLs can be scoped to `~<prefix>*`. At most 256
    /// bytes, and no `{` or `}`: the hash tag must be the key's own.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bounds each operation, round trip and any reconnect wait included (default
    /// [`DEFAULT_TIMEOUT`]); past it the operation fails with [`StoreErrorKind::Timeout`]. Must be
    /// positive.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The store on `connection`, or which setting is wrong.
    pub fn build(self, connection: RedisConnection) -> Result<RedisStore, ConfigError> {
        self.validate()?;
        Ok(RedisStore {
            connection,
            prefix: self.prefix.into(),
            timeout: self.timeout,
            scripts: Arc::new(Scripts::new()),
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                LAYER,
                "prefix",
                &self.prefix,
                "must not contain `{` or `}`: the key's hash tag must decide its cluster slot",
            ));
        }
        if self.prefix.len() > MAX_PREFIX_LEN {
            return Err(ConfigError::new(
                LAYER,
                "prefix",
                &self.prefix,
                "must be at most 256 bytes",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                LAYER,
                "timeout",
                self.timeout,
                "must be positive",
            ));
        }
        Ok(())
    }
}

impl Store for RedisStore {
    async fn claim(
        &self,
        key: &StoreKey,
        fp: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let (entry, counter) = self.keys(key);
        let mut invocation = self.scripts.claim.key(entry);
        invocation
            .key(counter)
            .arg(&fp.as_bytes()[..])
            .arg(millis(lease));
        let reply = self.run(invocation).await?;
        parse_claim(reply)
    }

    async fn renew(
        &self,
        key: &StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let (entry, counter) = self.keys(key);
        let mut invocation = self.scripts.renew.key(entry);
        invocation.key(counter).arg(fence.get()).arg(millis(lease));
        parse_flag(self.run(invocation).await?)
    }

    async fn complete(
        &self,
        key: &StoreKey,
        fence: Fence,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (entry, counter) = self.keys(key);
        let mut invocation = self.scripts.complete.key(entry);
        invocation
            .key(counter)
            .arg(fence.get())
            .arg(record.encode())
            .arg(millis(ttl));
        parse_flag(self.run(invocation).await?)
    }

    async fn release(&self, key: &StoreKey, fence: Fence) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.release.key(self.entry_key(key));
        invocation.arg(fence.get());
        parse_flag(self.run(invocation).await?)
    }
}

fn entry_key(prefix: &str, key: &StoreKey) -> String {
    let hex = key.to_hex();
    let mut name = String::with_capacity(prefix.len() + hex.len() + 2);
    name.push_str(prefix);
    name.push('{');
    name.push_str(&hex);
    name.push('}');
    name
}

/// A duration in whole milliseconds for `PEXPIRE`: at least 1 (0 would be refused), at most
/// what Redis accepts.
fn millis(d: Duration) -> u64 {
    // Redis refuses expiries past ~2^62 ms; a century is far beyond any lease or TTL.
    const MAX: u64 = 100 * 365 * 24 * 3600 * 1000;
    u64::try_from(d.as_millis()).unwrap_or(MAX).clamp(1, MAX)
}

async fn bounded<T>(
    limit: Duration,
    op: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(redis_error(err)),
        Err(elapsed) => Err(StoreError::with_source(StoreErrorKind::Timeout, elapsed)),
    }
}

fn redis_error(err: RedisError) -> StoreError {
    let kind = if err.is_timeout() {
        StoreErrorKind::Timeout
    } else if err.code() == Some("WRONGTYPE")
        || matches!(
            err.kind(),
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
        )
    {
        // Something else wrote our key: a foreign entry, not an outage.
        StoreErrorKind::Corrupt
    } else {
        StoreErrorKind::Unavailable
    };
    StoreError::with_source(kind, err)
}

fn connect_error(err: RedisError) -> StoreError {
    StoreError::with_source(StoreErrorKind::Unavailable, err)
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::with_source(StoreErrorKind::Corrupt, what)
}

fn parse_flag(reply: Value) -> Result<bool, StoreError> {
    match reply {
        Value::Int(0) => Ok(false),
        Value::Int(1) => Ok(true),
        _ => Err(corrupt("unexpected reply from an idempotency script")),
    }
}

fn parse_claim(reply: Value) -> Result<Claim, StoreError> {
    let Value::Array(items) = reply else {
        return Err(corrupt("claim reply is not an array"));
    };
    match items.as_slice() {
        [Value::Int(0), fence] => {
            let fence = std::str::from_utf8(bulk(fence)?)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("fence is not a number"))?;
            Ok(Claim::Acquired(Fence::new(fence)))
        }
        [Value::Int(1), fp, Value::Int(left)] => Ok(Claim::InFlight {
            fingerprint: fingerprint(fp)?,
            lease_left: Duration::from_millis(u64::try_from(*left).unwrap_or(0)),
        }),
        [Value::Int(2), fp, record] => Ok(Claim::Completed {
            fingerprint: fingerprint(fp)?,
            record: Record::decode(bulk(record)?)?,
        }),
        _ => Err(corrupt("unexpected claim reply")),
    }
}

fn bulk(value: &Value) -> Result<&[u8], StoreError> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        _ => Err(corrupt("entry field missing or not a string")),
    }
}

fn fingerprint(value: &Value) -> Result<Fingerprint, StoreError> {
    let bytes: [u8; 32] = bulk(value)?
        .try_into()
        .map_err(|_| corrupt("stored fingerprint is not 32 bytes"))?;
    Ok(Fingerprint::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_rounds_into_what_pexpire_accepts() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
        assert_eq!(millis(Duration::MAX), 100 * 365 * 24 * 3600 * 1000);
    }

    #[test]
    fn claim_replies_parse_and_garbage_is_corrupt() {
        let fp = Value::BulkString(vec![7; 32]);
        assert_eq!(
            parse_claim(Value::Array(vec![
                Value::Int(0),
                Value::BulkString(b"1796046808729123".to_vec())
            ]))
            .unwrap(),
            Claim::Acquired(Fence::new(1_796_046_808_729_123))
        );
        assert_eq!(
            parse_claim(Value::Array(vec![
                Value::Int(1),
                fp.clone(),
                Value::Int(-2)
            ]))
            .unwrap(),
            Claim::InFlight {
                fingerprint: Fingerprint::from_bytes([7; 32]),
                lease_left: Duration::ZERO
            }
        );
        let record = Record {
            status: 200,
            headers: vec![],
            body: "ok".into(),
        };
        assert_eq!(
            parse_claim(Value::Array(vec![
                Value::Int(2),
                fp.clone(),
                Value::BulkString(record.encode())
            ]))
            .unwrap(),
            Claim::Completed {
                fingerprint: Fingerprint::from_bytes([7; 32]),
                record
            }
        );
        for garbage in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(0), Value::BulkString(b"x".to_vec())]),
            Value::Array(vec![
                Value::Int(1),
                Value::BulkString(vec![1; 31]),
                Value::Int(5),
            ]),
            Value::Array(vec![Value::Int(2), fp, Value::Nil]),
            Value::Array(vec![Value::Int(3)]),
        ] {
            let err = parse_claim(garbage).unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::Corrupt);
        }
        assert_eq!(
            parse_flag(Value::Okay).unwrap_err().kind(),
            StoreErrorKind::Corrupt
        );
    }

    #[test]
    fn both_keys_share_the_hash_tag_of_the_key() {
        let key = StoreKey::from_bytes([0xab; 32]);
        let entry = entry_key("svc:", &key);
        assert_eq!(entry, format!("svc:{{{}}}", key.to_hex()));
        // Redis hashes only what lies between the first `{` and the next `}`.
        let tag = |name: &str| {
            let open = name.find('{').unwrap();
            let close = open + name[open..].find('}').unwrap();
            name[open + 1..close].to_owned()
        };
        assert_eq!(tag(&entry), key.to_hex());
        assert_eq!(tag(&format!("{entry}:fence")), key.to_hex());
    }

    #[test]
    fn builder_refuses_prefixes_that_move_the_hash_tag_and_a_zero_timeout() {
        assert!(RedisStore::builder().validate().is_ok());
        for prefix in ["a{b", "x}", "{}"] {
            let err = RedisStore::builder().prefix(prefix).validate().unwrap_err();
            assert_eq!(err.field(), "prefix");
        }
        let long = "p".repeat(MAX_PREFIX_LEN + 1);
        assert_eq!(
            RedisStore::builder()
                .prefix(long)
                .validate()
                .unwrap_err()
                .field(),
            "prefix"
        );
        let err = RedisStore::builder()
            .timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "timeout");
    }
}
