//! The per-attempt stage under tower's `Retry`: numbers each attempt, stamps
//! `x-agentgate-attempt`, and writes the attempt's outcome to the ledger.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use agentgate_classify::BoxError;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::{AttemptLedger, AttemptRecord};

/// Header carrying the 1-based attempt number to the agent (SPEC §3).
pub const ATTEMPT_HEADER: &str = "x-agentgate-attempt";

/// Numbers and records each attempt. Used by [`crate::RetryLayer`]; public so that
/// other stacks can record attempts the same way.
#[derive(Clone, Debug)]
pub struct Attempt<S> {
    inner: S,
}

pin_project! {
    /// The future of one attempt.
    #[derive(Debug)]
    pub struct AttemptFuture<F> {
        #[pin]
        inner: F,
        ledger: Option<AttemptLedger>,
        attempt: u32,
        start: Instant,
    }
}

impl<S> Attempt<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, RB> Service<Request<B>> for Attempt<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ledger = req.extensions().get::<AttemptLedger>().cloned();
        let attempt = ledger.as_ref().map_or(1, AttemptLedger::begin);
        req.headers_mut()
            .insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
        AttemptFuture {
            inner: self.inner.call(req),
            ledger,
            attempt,
            start: Instant::now(),
        }
    }
}

impl<F, RB, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(Into::into);
        if let Some(ledger) = this.ledger.take() {
            ledger.finish(AttemptRecord::from_result(
                *this.attempt,
                &result,
                this.start.elapsed(),
            ));
        }
        Poll::Ready(result)
    }
}
