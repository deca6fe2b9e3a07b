//! The response future of [`CircuitBreaker`](crate::CircuitBreaker).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use agentgate_classify::{BoxError, Classify};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::breaker::{ProbePermit, Shard};
use crate::CircuitOpen;

pin_project! {
    /// Either the inner call, whose outcome is recorded when it finishes, or an
    /// immediately ready rejection.
    ///
    /// Dropping the future before it finishes records nothing (a caller that went away
    /// says nothing about the agent) and gives back a half-open probe permit.
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Called {
            #[pin]
            fut: F,
            recorder: Option<Recorder<C>>,
        },
        Rejected {
            err: Option<CircuitOpen>,
        },
    }
}

/// Carries the admission from `call` to the outcome.
///
/// Kept to three plain words: it is written on every call.
pub(crate) struct Recorder<C> {
    pub(crate) shard: Arc<Shard>,
    /// The half-open permit this call holds, if it is a probe (rare: boxed).
    pub(crate) probe: Option<Box<ProbePermit>>,
    /// [`Core::stamp`](crate::breaker::Core::stamp) of the call's start when slow calls
    /// are detected, else 0.
    pub(crate) start: u64,
    pub(crate) classifier: C,
}

// === impl ResponseFuture ===

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(fut: F, recorder: Option<Recorder<C>>) -> Self {
        Self {
            state: State::Called { fut, recorder },
        }
    }

    pub(crate) fn rejected(err: CircuitOpen) -> Self {
        Self {
            state: State::Rejected { err: Some(err) },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, recorder } => {
                let result = ready!(fut.poll(cx)).map_err(Into::into);
                if let Some(recorder) = recorder.take() {
                    recorder.finish(&result);
                }
                Poll::Ready(result)
            }
            StateProj::Rejected { err } => {
                let err = err.take().expect("ResponseFuture polled after completion");
                Poll::Ready(Err(Box::new(err)))
            }
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

// === impl Recorder ===

impl<C> Recorder<C> {
    #[inline]
    fn finish<T>(self, result: &Result<T, BoxError>)
    where
        C: Classify<T>,
    {
        let classified = self.classifier.classify(result);
        self.shard
            .finish(self.probe, classified, self.start, Instant::now);
    }
}
