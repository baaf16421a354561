//! A test backend that records the order of calls and the most calls it saw at once.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;
use tower_bulkhead::Reason;
use tower_red::{BoxError, Rejection};
use tower_timeout_budget::{Deadline, DeadlineCarrier};

/// A request: an id, how long the backend works on it, and an optional deadline.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub id: u64,
    pub work: Duration,
    pub deadline: Option<Deadline>,
    pub class: &'static str,
}

impl Job {
    pub fn new(id: u64, work_ms: u64) -> Job {
        Job {
            id,
            work: Duration::from_millis(work_ms),
            deadline: None,
            class: "critical",
        }
    }
    pub fn deadline_in(mut self, ms: u64) -> Job {
        self.deadline = Some(Deadline::after(Duration::from_millis(ms)));
        self
    }
    pub fn background(mut self) -> Job {
        self.class = "background";
        self
    }
}

impl DeadlineCarrier for Job {
    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
}

/// The backend: sleeps `work` on tokio's clock, counting calls in flight.
#[derive(Debug, Clone, Default)]
pub struct Backend {
    pub started: Arc<Mutex<Vec<u64>>>,
    pub in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
    pub finished: Arc<AtomicUsize>,
}

impl Backend {
    pub fn started(&self) -> Vec<u64> {
        self.started.lock().unwrap().clone()
    }
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

struct InFlight(Arc<AtomicUsize>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service<Job> for Backend {
    type Response = u64;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<u64, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: Job) -> Self::Future {
        self.started.lock().unwrap().push(job.id);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(self.in_flight.clone());
        let finished = self.finished.clone();
        Box::pin(async move {
            let _guard = guard;
            if job.work.is_zero() {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
            } else {
                tokio::time::sleep(job.work).await;
            }
            finished.fetch_add(1, Ordering::SeqCst);
            Ok(job.id)
        })
    }
}

/// The bulkhead reason of an error, if it is a bulkhead rejection.
pub fn reason(err: &BoxError) -> Option<Reason> {
    Rejection::find_in(err).and_then(Reason::of)
}
