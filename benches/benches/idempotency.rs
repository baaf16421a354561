//! Idempotency keys: what `tower-idempotency` costs over an HTTP passthrough with the in-memory
//! store, for a request with no key (passed through), a new key (claim, run, complete) and a
//! replay (claim finds the stored response); then the same two keyed paths with the Redis store
//! on a private `redis-server`, and the Redis round trips per request counted from that
//! server's own `INFO commandstats` (target: one to claim, one to complete).
//!
//! Requests are built before the timed loop (a fresh store every [`CHUNK`] requests, so a new
//! key never meets a full store), so the figures are the layer's and the passthrough's alone.
//! The Redis part needs `redis-server` and `redis-cli` on the `PATH`; without them it says so
//! and is skipped.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use benches::{PerCall, allocations_per_call, runtime};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::store::redis::RedisStore;
use tower_idempotency::store::{MemoryStore, Store};

/// Requests built ahead of each timed run, and served by one store.
const CHUNK: u64 = 20_000;
/// Requests per operation counted against `INFO commandstats`.
const COUNTED: u64 = 1_000;
const BODY: &str = r#"{"invoice":42,"amount":"10.00 EUR"}"#;
const ANSWER: &str = r#"{"charge":"ch_1","status":"succeeded"}"#;

/// An always-ready HTTP service that answers 201 with a small JSON body (one allocation): the
/// baseline the layer's overhead is measured against.
#[derive(Debug, Clone, Copy, Default)]
struct HttpPassthrough;

impl<B> Service<Request<B>> for HttpPassthrough {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let mut res = Response::new(ANSWER.to_owned());
        *res.status_mut() = StatusCode::CREATED;
        ready(Ok(res))
    }
}

/// A payment request; with `key`, it carries `Idempotency-Key: key`.
fn payment(key: Option<&str>) -> Request<String> {
    let mut req = Request::post("/payments")
        .header("x-user", "merchant-1")
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(BODY.to_owned()).expect("a valid request")
}

fn layer<St: Store>(store: St) -> IdempotencyLayer<St> {
    IdempotencyLayer::builder(store)
        .name("bench")
        .principal(|parts| Some(parts.headers.get("x-user")?.to_str().ok()?.to_owned()))
        .build()
        .expect("a valid config")
}

/// Sends every request of `reqs` in turn through `svc` (`ready().await` + `call().await`) and
/// returns the time taken.
async fn time_requests<S>(svc: &mut S, reqs: Vec<Request<String>>) -> Duration
where
    S: Service<Request<String>>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for req in reqs {
        let svc = svc.ready().await.expect("ready");
        std::hint::black_box(svc.call(req).await.expect("call"));
    }
    start.elapsed()
}

/// The kind of request a bench sends.
#[derive(Clone, Copy)]
enum Kind {
    /// No key: passed through.
    NoKey,
    /// A key never seen before: claim, run, complete.
    NewKey,
    /// The same key every time, after a first request: a replay.
    Replay,
}

fn requests(kind: Kind, round: u64, n: u64) -> Vec<Request<String>> {
    (0..n)
        .map(|i| match kind {
            Kind::NoKey => payment(None),
            Kind::NewKey => payment(Some(&format!("new-{round}-{i}"))),
            Kind::Replay => payment(Some("replayed-key")),
        })
        .collect()
}

static NEXT_ROUND: AtomicU64 = AtomicU64::new(0);

/// Times `iters` requests of `kind` through the service `make` builds, a fresh one (with a fresh
/// store) every [`CHUNK`] requests; only the requests are timed.
fn time_kind<S, F>(rt: &tokio::runtime::Runtime, iters: u64, kind: Kind, mut make: F) -> Duration
where
    F: FnMut() -> S,
    S: Service<Request<String>>,
    S::Error: std::fmt::Debug,
{
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        // Keys never repeat, not even across runs against the one Redis store.
        let round = NEXT_ROUND.fetch_add(1, Ordering::Relaxed);
        let n = CHUNK.min(iters - done);
        let mut svc = make();
        if let Kind::Replay = kind {
            rt.block_on(time_requests(&mut svc, requests(kind, round, 1)));
        }
        let reqs = requests(kind, round, n);
        total += rt.block_on(time_requests(&mut svc, reqs));
        done += n;
    }
    total
}

/// Allocations per request of `kind` through `svc` (10,000 requests built beforehand).
fn allocations<S>(rt: &tokio::runtime::Runtime, svc: &S, kind: Kind) -> PerCall
where
    S: Service<Request<String>> + Clone,
    S::Error: std::fmt::Debug,
{
    const CALLS: u32 = 10_000;
    // One for `allocations_per_call`'s warm-up, one to store the replayed response first.
    let mut reqs = requests(kind, 0, u64::from(CALLS) + 2);
    if let Kind::Replay = kind {
        let first = reqs.pop().expect("built above");
        rt.block_on(svc.clone().oneshot(first)).expect("call");
    }
    allocations_per_call(rt, CALLS, || {
        let req = reqs.pop().expect("one request per call");
        let svc = svc.clone();
        async move { svc.oneshot(req).await.expect("call") }
    })
}

fn bench(c: &mut Criterion) {
    let rt = runtime();

    let mut group = c.benchmark_group("idempotency_memory");
    // The baselines: the same requests (with and without a key) straight to the passthrough.
    group.bench_function("passthrough_no_key", |b| {
        b.iter_custom(|n| time_kind(&rt, n, Kind::NoKey, || HttpPassthrough))
    });
    group.bench_function("passthrough_keyed", |b| {
        b.iter_custom(|n| time_kind(&rt, n, Kind::NewKey, || HttpPassthrough))
    });
    for (name, kind) in [
        ("no_key", Kind::NoKey),
        ("new_key", Kind::NewKey),
        ("replay", Kind::Replay),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|n| {
                time_kind(&rt, n, kind, || {
                    layer(MemoryStore::new()).layer(HttpPassthrough)
                })
            })
        });
    }
    group.finish();

    let report = |label: &str, allocs: PerCall| println!("allocations per call: {label} {allocs}");
    report(
        "passthrough_no_key",
        allocations(&rt, &HttpPassthrough, Kind::NoKey),
    );
    report(
        "passthrough_keyed",
        allocations(&rt, &HttpPassthrough, Kind::NewKey),
    );
    for (name, kind) in [
        ("no_key", Kind::NoKey),
        ("new_key", Kind::NewKey),
        ("replay", Kind::Replay),
    ] {
        let svc = layer(MemoryStore::new()).layer(HttpPassthrough);
        report(name, allocations(&rt, &svc, kind));
    }

    let Some(redis) = PrivateRedis::start() else {
        println!("redis: redis-server or redis-cli not found, Redis benches skipped");
        return;
    };
    let store = rt
        .block_on(RedisStore::connect(&redis.url()))
        .expect("connect to the private redis-server");
    let svc = layer(store).layer(HttpPassthrough);

    let mut group = c.benchmark_group("idempotency_redis");
    group.bench_function("new_key", |b| {
        b.iter_custom(|n| time_kind(&rt, n, Kind::NewKey, || svc.clone()))
    });
    group.bench_function("replay", |b| {
        b.iter_custom(|n| time_kind(&rt, n, Kind::Replay, || svc.clone()))
    });
    group.finish();

    // Round trips: warm up first (the first call of each script loads it).
    for kind in [Kind::NewKey, Kind::Replay] {
        rt.block_on(time_requests(
            &mut svc.clone(),
            requests(kind, NEXT_ROUND.fetch_add(1, Ordering::Relaxed), 2),
        ));
    }
    for (name, kind) in [
        ("new key (claim + complete)", Kind::NewKey),
        ("replay (claim)", Kind::Replay),
        ("no key", Kind::NoKey),
    ] {
        let reqs = requests(kind, NEXT_ROUND.fetch_add(1, Ordering::Relaxed), COUNTED);
        let before = redis.command_calls();
        rt.block_on(time_requests(&mut svc.clone(), reqs));
        let after = redis.command_calls();
        let mut sent = 0;
        let mut detail = Vec::new();
        for (command, calls) in &after {
            let calls = calls - before.get(command).copied().unwrap_or(0);
            if calls == 0 || command == "info" {
                continue;
            }
            detail.push(format!("{command} {calls}"));
            if !SCRIPT_INNER.contains(&command.as_str()) {
                sent += calls;
            }
        }
        println!(
            "redis round trips per request: {name} {} ({sent} commands sent for {COUNTED} requests; \
             commandstats: {})",
            sent as f64 / COUNTED as f64,
            if detail.is_empty() {
                "none".to_owned()
            } else {
                detail.join(", ")
            }
        );
    }
}

/// The commands that only run inside the store's Lua scripts: `INFO commandstats` counts them,
/// but no client sent them.
const SCRIPT_INNER: &[&str] = &[
    "hmget", "hset", "time", "get", "set", "del", "pttl", "pexpire",
];

/// A `redis-server` of our own on a free loopback port, so that nobody else's commands are
/// counted; stopped when dropped.
struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let redis = PrivateRedis { port, child };
        for _ in 0..50 {
            if redis.cli(&["ping"]).is_some_and(|out| out.trim() == "PONG") {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Calls per command so far, from `INFO commandstats` (`cmdstat_evalsha:calls=2,...`).
    fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        let info = self
            .cli(&["info", "commandstats"])
            .expect("redis-cli info commandstats");
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
