use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use agentgate_classify::BoxError;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::retry::Retry;
use tower_layer::Layer;
use tower_service::Service;

use crate::{Attempt, AttemptLedger, RetryBody, RetryPolicy};

/// Retries calls to one agent with [`RetryPolicy`], on tower's own `Retry`.
///
/// Under the retry sits an [`Attempt`] stage that numbers attempts. The layer makes sure
/// every request carries an [`AttemptLedger`] (keeping the caller's, if any) and copies
/// it into the response's extensions.
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
        ledger: AttemptLedger,
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<RetryBody>) -> Self::Future {
        let ledger = AttemptLedger::of(&mut req);
        RetryFuture {
            inner: self.inner.call(req),
            ledger,
        }
    }
}

impl<F, RB> Future for RetryFuture<F>
where
    F: Future<Output = Result<Response<RB>, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let Ok(res) = &mut result {
            res.extensions_mut().insert(this.ledger.clone());
        }
        Poll::Ready(result)
    }
}

impl<F> std::fmt::Debug for RetryFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryFuture")
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}
