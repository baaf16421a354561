//! The response future of [`Idempotency`](crate::Idempotency).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_red::clock;
use tower_red::red::RedMetrics;

use crate::body::ResponseBody;

/// The boxed future of a request that carries a key (it reads the body and talks to the store).
pub(crate) type KeyedFuture<ResB, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<ResB>>, E>> + Send>>;

pin_project! {
    /// The future of [`Idempotency`](crate::Idempotency): the inner future as it is for a request
    /// without a key (no allocation), or the layer's own work for one with a key.
    pub struct ResponseFuture<F, ResB, E> {
        #[pin]
        kind: Kind<F, ResB, E>,
    }
}

pin_project! {
    #[project = Proj]
    enum Kind<F, ResB, E> {
        Passthrough {
            #[pin]
            fut: F,
            red: Option<(RedMetrics, Option<Instant>)>,
        },
        Keyed {
            fut: KeyedFuture<ResB, E>,
        },
    }
}

impl<F, ResB, E> ResponseFuture<F, ResB, E> {
    pub(crate) fn passthrough(fut: F, red: Option<(RedMetrics, Option<Instant>)>) -> Self {
        Self {
            kind: Kind::Passthrough { fut, red },
        }
    }

    pub(crate) fn keyed(fut: KeyedFuture<ResB, E>) -> Self {
        Self {
            kind: Kind::Keyed { fut },
        }
    }
}

impl<F, ResB, E> fmt::Debug for ResponseFuture<F, ResB, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Passthrough { .. } => f.write_str("ResponseFuture::Passthrough"),
            Kind::Keyed { .. } => f.write_str("ResponseFuture::Keyed"),
        }
    }
}

impl<F, ResB, E> Future for ResponseFuture<F, ResB, E>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: 'static,
{
    type Output = Result<Response<ResponseBody<ResB>>, E>;

    // Forced inline, as the server stack's other pass-through steps: measured, the five save
    // ~200 instructions a call there (benches/README, "RED in a stack").
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Proj::Passthrough { fut, red } => {
                let result = ready!(fut.poll(cx));
                if let Some((red, start)) = red.take() {
                    let outcome = match &result {
                        Ok(res) => crate::metrics::outcome_of(res),
                        Err(err) => crate::metrics::outcome_of_error(err),
                    };
                    // No start: counted only, inside a stack that times the call once.
                    let elapsed = start.map_or(Duration::ZERO, |start| {
                        let _scope = clock::Scope::enter();
                        clock::now().saturating_duration_since(start)
                    });
                    red.record(outcome, elapsed);
                }
                Poll::Ready(result.map(|res| res.map(ResponseBody::new)))
            }
            Proj::Keyed { fut } => fut.as_mut().poll(cx),
        }
    }
}
