use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentgate_classify::{BoxError, Classify};
use tokio::time::Instant;
use tower_service::Service;

use crate::breaker::{Admission, Breaker, ProbePermit};
use crate::future::{ProbeRecorder, Recorder, ResponseFuture, DONE};
use crate::{CircuitBreakerHandle, CircuitBreakerLayer};

/// A service guarded by a circuit breaker. Built by [`CircuitBreakerLayer`].
///
/// The breaker decides in `poll_ready`: when it is open the inner service is not polled
/// at all and `call` returns an immediately ready [`CircuitOpen`](crate::CircuitOpen)
/// error; when it admits, the inner service's readiness is passed through. A half-open
/// probe permit taken in `poll_ready` is held by this service until `call`, then by the
/// response future; dropping either gives it back.
pub struct CircuitBreaker<S, C> {
    inner: S,
    breaker: Arc<Breaker>,
    classifier: C,
    /// `poll_ready` admitted the next call as a closed-state call. Kept apart from
    /// `admission`, which has drop glue (a probe permit), so that the closed path only
    /// sets and tests a flag.
    closed: bool,
    /// Any other decision `poll_ready` took (disabled, a probe permit, a rejection).
    admission: Option<Admission>,
}

// === impl CircuitBreaker ===

impl<S, C: Clone> CircuitBreaker<S, C> {
    /// Wraps `inner` in the breaker of `layer`.
    pub fn new(inner: S, layer: &CircuitBreakerLayer<C>) -> Self {
        Self {
            inner,
            breaker: layer.breaker().clone(),
            classifier: layer.classifier().clone(),
            closed: false,
            admission: None,
        }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service (giving back any probe permit held).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// A handle to this service's breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.breaker.core().clone())
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A probe permit already held is kept while the inner service gets ready; any
        // other decision is cheap to take again and must not go stale.
        if self.admission.is_none() && self.breaker.core().is_closed() {
            self.closed = true;
        } else if self.admit_not_closed() {
            // Rejected. Fail fast: never wait on (or even poll) a backend the breaker
            // has given up on.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                // Gives back a probe permit, if one was held.
                self.closed = false;
                self.admission = None;
                Poll::Ready(Err(e.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // The closed path, by far the most common, only looks at the flag.
        if std::mem::take(&mut self.closed) {
            // The breaker may have tripped since poll_ready: then decide again.
            if self.breaker.core().is_closed() {
                return self.called(req, None);
            }
            self.admission = Some(self.breaker.core().admit(Instant::now));
        }
        let admission = self
            .admission
            .take()
            .expect("CircuitBreaker::call without a successful poll_ready");
        match admission {
            Admission::Closed => self.called(req, None),
            Admission::Probe(permit) => self.called(req, Some(permit)),
            Admission::Disabled => {
                let recorder = Recorder::Closed {
                    shard: self.breaker.shard(),
                    start: DONE,
                    classifier: self.classifier.clone(),
                };
                ResponseFuture::called(self.inner.call(req), recorder)
            }
            Admission::Rejected { state, retry_after } => {
                ResponseFuture::rejected(self.breaker.core().reject(state, retry_after))
            }
        }
    }
}

impl<S, C: Clone> CircuitBreaker<S, C> {
    /// `poll_ready`'s decision when the breaker is not closed, or when an earlier
    /// decision is held (rare). Returns whether the call is rejected.
    #[cold]
    #[inline(never)]
    fn admit_not_closed(&mut self) -> bool {
        self.closed = false;
        if !matches!(self.admission, Some(Admission::Probe(_))) {
            let admission = self.breaker.core().admit(Instant::now);
            let rejected = matches!(admission, Admission::Rejected { .. });
            self.admission = Some(admission);
            return rejected;
        }
        false
    }

    /// Calls the inner service, recording the outcome when it finishes.
    #[inline(always)]
    fn called<Req>(&mut self, req: Req, probe: Option<ProbePermit>) -> ResponseFuture<S::Future, C>
    where
        S: Service<Req>,
    {
        let shard = self.breaker.shard();
        let start = if shard.core().slow_calls_enabled() {
            shard.core().stamp(Instant::now())
        } else {
            0
        };
        let classifier = self.classifier.clone();
        let recorder = match probe {
            None => Recorder::Closed {
                shard,
                start,
                classifier,
            },
            Some(permit) => Recorder::Probe(Box::new(ProbeRecorder {
                shard,
                permit,
                start,
                classifier,
            })),
        };
        ResponseFuture::called(self.inner.call(req), recorder)
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    /// A clone shares the breaker but not this service's readiness or probe permit.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
            closed: false,
            admission: None,
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("agent", self.breaker.core().name())
            .field("inner", &self.inner)
            .field("closed", &self.closed)
            .field("admission", &self.admission)
            .finish()
    }
}
