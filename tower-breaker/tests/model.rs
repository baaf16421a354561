//! The breaker against a small reference model: random sequences of calls, outcomes,
//! durations, clock advances and cancellations; states and admissions must agree.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::{Call, backend, by_status};
use proptest::prelude::*;
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt};
use tower_breaker::{BreakerLayer, State};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    Fail,
    Ignored,
}

#[derive(Debug, Clone)]
enum Op {
    Start(Outcome),
    Finish(usize),
    Cancel(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        3 => Just(Outcome::Ok),
        3 => Just(Outcome::Fail),
        1 => Just(Outcome::Ignored),
    ];
    prop_oneof![
        4 => outcome.prop_map(Op::Start),
        4 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::Cancel),
        2 => (0u64..1_500).prop_map(Op::Advance),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Params {
    window: usize,
    minimum: usize,
    threshold: f64,
    consecutive: Option<u32>,
    slow_ms: Option<u64>,
    slow_threshold: f64,
    open_ms: u64,
    probes: u32,
    max_wait_ms: u64,
}

fn params() -> impl Strategy<Value = Params> {
    (
        1usize..8,
        prop_oneof![Just(0.25), Just(0.5), Just(1.0)],
        proptest::option::of(1u32..4),
        proptest::option::of(100u64..800),
        prop_oneof![Just(0.5), Just(1.0)],
        100u64..2_000,
        1u32..4,
        500u64..3_000,
    )
        .prop_flat_map(
            |(
                window,
                threshold,
                consecutive,
                slow_ms,
                slow_threshold,
                open_ms,
                probes,
                max_wait_ms,
            )| {
                (1..=window).prop_map(move |minimum| Params {
                    window,
                    minimum,
                    threshold,
                    consecutive,
                    slow_ms,
                    slow_threshold,
                    open_ms,
                    probes,
                    max_wait_ms,
                })
            },
        )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Closed,
    Probe,
}

#[derive(Debug)]
struct ModelCall {
    epoch: u64,
    kind: Kind,
    start: u64,
}

/// The rules, written as plainly as possible.
#[derive(Debug)]
struct Model {
    p: Params,
    state: State,
    epoch: u64,
    window: VecDeque<(bool, bool)>,
    consecutive: u32,
    open_until: u64,
    admitted: u32,
    done: u32,
    failures: u32,
    slow: u32,
    since: u64,
}

impl Model {
    fn new(p: Params) -> Self {
        Model {
            p,
            state: State::Closed,
            epoch: 0,
            window: VecDeque::new(),
            consecutive: 0,
            open_until: 0,
            admitted: 0,
            done: 0,
            failures: 0,
            slow: 0,
            since: 0,
        }
    }

    fn go(&mut self, to: State, now: u64) {
        self.state = to;
        self.epoch += 1;
        match to {
            State::Open => self.open_until = now + self.p.open_ms,
            State::HalfOpen => {
                (self.admitted, self.done, self.failures, self.slow) = (0, 0, 0, 0);
                self.since = now;
            }
            _ => {
                self.window.clear();
                self.consecutive = 0;
            }
        }
    }

    fn admit(&mut self, now: u64) -> Result<ModelCall, u64> {
        match self.state {
            State::Closed => Ok(ModelCall {
                epoch: self.epoch,
                kind: Kind::Closed,
                start: now,
            }),
            State::Open if now < self.open_until => Err(self.open_until - now),
            State::Open => {
                self.go(State::HalfOpen, now);
                self.admitted = 1;
                Ok(ModelCall {
                    epoch: self.epoch,
                    kind: Kind::Probe,
                    start: now,
                })
            }
            State::HalfOpen if now - self.since >= self.p.max_wait_ms => {
                self.go(State::Open, now);
                Err(self.p.open_ms)
            }
            State::HalfOpen if self.admitted < self.p.probes => {
                self.admitted += 1;
                Ok(ModelCall {
                    epoch: self.epoch,
                    kind: Kind::Probe,
                    start: now,
                })
            }
            // Every probe slot is busy: come back when the probes are declared hung.
            _ => Err(self.p.max_wait_ms - (now - self.since)),
        }
    }

    fn rates_trip(&self, calls: usize, failures: usize, slow: usize) -> bool {
        calls > 0
            && (failures as f64 / calls as f64 >= self.p.threshold
                || (self.p.slow_ms.is_some()
                    && slow as f64 / calls as f64 >= self.p.slow_threshold))
    }

    fn finish(&mut self, call: ModelCall, outcome: Outcome, now: u64) {
        if call.epoch != self.epoch {
            return;
        }
        let failure = outcome == Outcome::Fail;
        let slow = self.p.slow_ms.is_some_and(|ms| now - call.start >= ms);
        match call.kind {
            Kind::Closed => {
                if outcome == Outcome::Ignored {
                    return;
                }
                if let Some(limit) = self.p.consecutive {
                    if failure {
                        self.consecutive += 1;
                        if self.consecutive >= limit {
                            self.go(State::Open, now);
                            return;
                        }
                    } else {
                        self.consecutive = 0;
                    }
                }
                self.window.push_back((failure, slow));
                if self.window.len() > self.p.window {
                    self.window.pop_front();
                }
                let calls = self.window.len();
                let failures = self.window.iter().filter(|s| s.0).count();
                let slows = self.window.iter().filter(|s| s.1).count();
                if calls >= self.p.minimum && self.rates_trip(calls, failures, slows) {
                    self.go(State::Open, now);
                }
            }
            Kind::Probe => {
                if outcome == Outcome::Ignored {
                    self.admitted -= 1;
                    return;
                }
                self.done += 1;
                self.failures += u32::from(failure);
                self.slow += u32::from(slow);
                if self.done >= self.p.probes {
                    let to = if self.rates_trip(
                        self.done as usize,
                        self.failures as usize,
                        self.slow as usize,
                    ) {
                        State::Open
                    } else {
                        State::Closed
                    };
                    self.go(to, now);
                }
            }
        }
    }

    fn cancel(&mut self, call: ModelCall) {
        if call.kind == Kind::Probe && call.epoch == self.epoch {
            self.admitted -= 1;
        }
    }
}

type Fut =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u16, tower_red::BoxError>> + Send>>;

fn run(p: Params, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut builder = BreakerLayer::builder()
            .metrics(false)
            .count_window(p.window as u32)
            .minimum_calls(p.minimum as u32)
            .failure_rate_threshold(p.threshold)
            .open_time(Duration::from_millis(p.open_ms))
            .permitted_probes(p.probes)
            .max_probe_wait(Duration::from_millis(p.max_wait_ms));
        if let Some(n) = p.consecutive {
            builder = builder.consecutive_failures(n);
        }
        if let Some(ms) = p.slow_ms {
            builder = builder.slow_calls(Duration::from_millis(ms), p.slow_threshold);
        }
        let layer = builder.classifier(by_status()).build().unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(backend());
        let mut model = Model::new(p);
        let start = tokio::time::Instant::now();
        let now = || start.elapsed().as_millis() as u64;
        // In-flight calls: the real future and its trigger, and the model's twin.
        let mut inflight: Vec<(
            tokio_test::task::Spawn<Fut>,
            oneshot::Sender<u16>,
            Outcome,
            ModelCall,
        )> = Vec::new();
        for op in ops {
            match op {
                Op::Start(outcome) => {
                    let (tx, rx) = oneshot::channel();
                    let fut: Fut = Box::pin(svc.ready().await.unwrap().call(Call::Answer(rx)));
                    let mut fut = tokio_test::task::spawn(fut);
                    let model_says = model.admit(now());
                    match fut.poll() {
                        std::task::Poll::Ready(Err(e)) => {
                            let rejection = tower_red::Rejection::find_in(&e).expect("a rejection");
                            let expected = model_says.err().unwrap_or_else(|| {
                                panic!("model admitted, breaker refused at {}", now())
                            });
                            // A refusal says to come back in a second at least.
                            prop_assert_eq!(
                                rejection.retry_after().map(|d| d.as_millis() as u64),
                                Some(expected.max(1_000))
                            );
                        }
                        std::task::Poll::Pending => {
                            let call = model_says.map_err(|_| {
                                TestCaseError::fail(format!(
                                    "breaker admitted, model refused at {}: {model:?}",
                                    now()
                                ))
                            })?;
                            inflight.push((fut, tx, outcome, call));
                        }
                        std::task::Poll::Ready(Ok(_)) => {
                            prop_assert!(false, "a waiting call finished early")
                        }
                    }
                }
                Op::Finish(i) if !inflight.is_empty() => {
                    let (mut fut, tx, outcome, call) = inflight.remove(i % inflight.len());
                    match outcome {
                        Outcome::Ok => tx.send(200).unwrap(),
                        Outcome::Ignored => tx.send(404).unwrap(),
                        Outcome::Fail => drop(tx),
                    }
                    prop_assert!(fut.poll().is_ready(), "the backend answered");
                    model.finish(call, outcome, now());
                }
                Op::Cancel(i) if !inflight.is_empty() => {
                    let (fut, _tx, _, call) = inflight.remove(i % inflight.len());
                    drop(fut);
                    model.cancel(call);
                }
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                _ => {}
            }
            prop_assert_eq!(handle.state(), model.state, "after {:?}", model);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn breaker_matches_the_reference_model(p in params(), ops in proptest::collection::vec(op(), 1..80)) {
        run(p, ops)?;
    }
}
