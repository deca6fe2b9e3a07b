use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use agentgate_classify::BoxError;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::retry::Retry;
use tower_layer::Layer;
use tower_service::Service;

#[cfg(doc)]
use crate::AttemptLedger;
use crate::{Attempt, RetryBody, RetryPolicy};

/// Retries calls to one agent with [`RetryPolicy`], on tower's own `Retry`.
///
/// Each attempt carries `x-agentgate-attempt: n`; the response carries
/// `x-agentgate-attempts: n`, the number of attempts made. A caller that wants every
/// attempt's outcome puts an [`AttemptLedger`] in the request's extensions first; under
/// the retry sits an [`Attempt`] stage that writes to it.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

/// The service built by [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct RetryService<S> {
    inner: Retry<RetryPolicy, Attempt<S>>,
}

pin_project! {
    /// The response future of [`RetryService`].
    pub struct RetryFuture<F> {
        #[pin]
        inner: F,
    }
}

impl RetryLayer {
    /// A layer retrying with `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner: Retry::new(self.policy.clone(), Attempt::new(inner)),
        }
    }
}

impl<S, RB> Service<Request<RetryBody>> for RetryService<S>
where
    S: Service<Request<RetryBody>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future =
        RetryFuture<<Retry<RetryPolicy, Attempt<S>> as Service<Request<RetryBody>>>::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<RetryBody>) -> Self::Future {
        // The header is added per attempt by the `Attempt` stage, after tower's `Retry`
        // has kept its copy: a request without headers of its own is copied for free.
        req.body_mut().set_attempt(1);
        RetryFuture {
            inner: self.inner.call(req),
        }
    }
}

impl<F, RB> Future for RetryFuture<F>
where
    F: Future<Output = Result<Response<RB>, BoxError>>,
{
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F> std::fmt::Debug for RetryFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryFuture").finish_non_exhaustive()
    }
}
