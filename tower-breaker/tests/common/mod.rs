//! Shared test helpers: a backend whose every call says how it ends.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::oneshot;
use tower::{Service, ServiceExt, service_fn};
use tower_red::BoxError;
use tower_red::classify::{Verdict, classify_fn};

/// What a backend call does.
#[derive(Debug)]
pub enum Call {
    /// Succeeds at once.
    Ok,
    /// Fails at once.
    Fail,
    /// Succeeds after this long (on tokio's clock).
    Slow(Duration),
    /// Fails after this long.
    SlowFail(Duration),
    /// Answers a status the `by_status` classifier ignores.
    Ignored,
    /// Succeeds when the sender fires (or fails when it is dropped).
    Wait(oneshot::Receiver<()>),
    /// Answers the status the sender sends (or fails when it is dropped).
    Answer(oneshot::Receiver<u16>),
}

/// The backend's error, to check inner errors pass through untouched.
#[derive(Debug, PartialEq, Eq)]
pub struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}
impl std::error::Error for Boom {}

/// The backend's future.
pub type BoxFut = Pin<Box<dyn Future<Output = Result<u16, Boom>> + Send>>;

/// A backend doing what each [`Call`] says.
pub fn backend() -> impl Service<Call, Response = u16, Error = Boom, Future = BoxFut> + Clone {
    service_fn(|call: Call| -> BoxFut {
        Box::pin(async move {
            match call {
                Call::Ok => Ok(200),
                Call::Fail => Err(Boom),
                Call::Slow(d) => {
                    tokio::time::sleep(d).await;
                    Ok(200)
                }
                Call::SlowFail(d) => {
                    tokio::time::sleep(d).await;
                    Err(Boom)
                }
                Call::Ignored => Ok(404),
                Call::Wait(rx) => rx.await.map(|()| 200).map_err(|_| Boom),
                Call::Answer(rx) => rx.await.map_err(|_| Boom),
            }
        })
    })
}

/// The classifier function of [`by_status`].
pub type ClassifyStatus = fn(&Result<u16, Boom>) -> Verdict;

/// Errors fail, 404 is ignored, anything else succeeds.
pub fn by_status() -> tower_red::classify::ClassifyFn<ClassifyStatus> {
    fn classify(r: &Result<u16, Boom>) -> Verdict {
        match r {
            Err(_) => Verdict::Failure(tower_red::FailureClass::Error),
            Ok(404) => Verdict::Ignored,
            Ok(_) => Verdict::Success,
        }
    }
    classify_fn(classify as fn(&Result<u16, Boom>) -> Verdict)
}

/// `ready().await` + `call().await`.
pub async fn send<S>(svc: &mut S, call: Call) -> Result<u16, BoxError>
where
    S: Service<Call, Response = u16, Error = BoxError>,
{
    svc.ready().await?.call(call).await
}

/// Trips a breaker that opens on four failures, lets its open time pass, and sends the probe
/// that closes it again (starting a graded recovery, when one is set).
pub async fn recover<S>(svc: &mut S, open: std::time::Duration)
where
    S: Service<Call, Response = u16, Error = BoxError>,
{
    for _ in 0..4 {
        let _ = send(svc, Call::Fail).await;
    }
    tokio::time::advance(open).await;
    assert_eq!(send(svc, Call::Ok).await.unwrap(), 200, "the probe");
}

/// [`recover`]s the breaker, then sends the graded recovery's first call, which the ramp admits.
pub async fn recover_and_send_the_ramps_first_call<S>(svc: &mut S, open: std::time::Duration)
where
    S: Service<Call, Response = u16, Error = BoxError>,
{
    recover(svc, open).await;
    assert_eq!(
        send(svc, Call::Ok).await.unwrap(),
        200,
        "the ramp's first call"
    );
}

/// Whether `err` is a breaker refusal.
pub fn refused(result: &Result<u16, BoxError>) -> bool {
    matches!(result, Err(e) if tower_breaker::is_circuit_open(&**e))
}

/// The future of a backend whose error is already a [`BoxError`].
pub type BoxFutBox = Pin<Box<dyn Future<Output = Result<u16, BoxError>> + Send>>;
