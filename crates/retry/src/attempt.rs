//! The per-attempt stage under tower's `Retry`: stamps the attempt number the retry
//! layer gave the request's body as `x-agentgate-attempt`, tells the response how many
//! attempts were made, and writes the attempt's outcome to the request's ledger when the
//! caller asked for one.
//!
//! The header is added here, under tower's `Retry`, rather than before it: `Retry`
//! keeps a copy of each request for the next attempt before calling, and a request
//! without headers of its own is then copied without an allocation.
//!
//! No per-request state is allocated on a call without a ledger: the attempt number
//! travels in the [`RetryBody`] (so no layer looks the header up again), and the
//! header values are static text.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use agentgate_classify::BoxError;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::{AttemptLedger, AttemptRecord, RetryBody};

/// Request header carrying the 1-based attempt number to the agent (SPEC §3).
pub const ATTEMPT_HEADER: HeaderName = HeaderName::from_static("x-agentgate-attempt");
/// Response header carrying the number of attempts made (SPEC §3, reverse proxy).
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-agentgate-attempts");

const NUMBERS: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// The header value for attempt `n` (static up to 16, so no allocation).
pub(crate) fn number_value(n: u32) -> HeaderValue {
    match NUMBERS.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

/// The attempt number stamped on a request's headers (1 when there is none). Layers
/// under the retry read [`RetryBody::attempt`] instead, which costs no lookup.
pub fn attempt_of(headers: &HeaderMap) -> u32 {
    headers
        .get(ATTEMPT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Records each attempt. Used by [`crate::RetryLayer`] under tower's `Retry`.
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
        start: Option<Instant>,
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

impl<S, RB> Service<Request<RetryBody>> for Attempt<S>
where
    S: Service<Request<RetryBody>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Request<RetryBody>) -> Self::Future {
        let ledger = req.extensions().get::<AttemptLedger>().cloned();
        let attempt = req.body().attempt();
        req.headers_mut()
            .insert(ATTEMPT_HEADER, number_value(attempt));
        AttemptFuture {
            start: ledger.as_ref().map(|_| Instant::now()),
            inner: self.inner.call(req),
            ledger,
            attempt,
        }
    }
}

impl<F, RB, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx)).map_err(Into::into);
        if let Some(ledger) = this.ledger.take() {
            let elapsed = this.start.map(|s| s.elapsed()).unwrap_or_default();
            ledger.finish(AttemptRecord::from_result(*this.attempt, &result, elapsed));
        }
        if let Ok(res) = &mut result {
            res.headers_mut()
                .insert(ATTEMPTS_HEADER, number_value(*this.attempt));
        }
        Poll::Ready(result)
    }
}
