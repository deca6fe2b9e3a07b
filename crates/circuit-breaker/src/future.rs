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
            recorder: Recorder<C>,
        },
        Rejected {
            err: Option<CircuitOpen>,
        },
    }
}

/// Carries the admission from `call` to the outcome.
///
/// Two words (the future of every call carries it, and every layer above moves that
/// future): the shard and the start stamp of a closed-state call, or a box holding a
/// half-open probe's permit (rare).
pub(crate) enum Recorder<C> {
    /// A closed-state call, or a call through a disabled breaker (`start` is [`DONE`]).
    Closed {
        shard: Arc<Shard>,
        /// [`Core::stamp`](crate::breaker::Core::stamp) of the call's start when slow
        /// calls are detected, 0 when not, [`DONE`] once there is nothing to record.
        start: u64,
        classifier: C,
    },
    /// A half-open probe.
    Probe(Box<ProbeRecorder<C>>),
}

/// What a probe's future carries.
pub(crate) struct ProbeRecorder<C> {
    pub(crate) shard: Arc<Shard>,
    pub(crate) permit: ProbePermit,
    pub(crate) start: u64,
    pub(crate) classifier: C,
}

/// [`Recorder::Closed`]'s `start` once the outcome was recorded (or for a call that is
/// not counted). Stamps are nanoseconds plus one, so they never reach it.
pub(crate) const DONE: u64 = u64::MAX;

// === impl ResponseFuture ===

impl<F, C> ResponseFuture<F, C> {
    #[inline(always)]
    pub(crate) fn called(fut: F, recorder: Recorder<C>) -> Self {
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

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, recorder } => {
                let result = ready!(fut.poll(cx)).map_err(Into::into);
                recorder.finish(&result);
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
    /// Records the outcome, once.
    #[inline]
    fn finish<T>(&mut self, result: &Result<T, BoxError>)
    where
        C: Classify<T>,
    {
        match self {
            Recorder::Closed {
                shard,
                start,
                classifier,
            } => {
                if *start != DONE {
                    let start = std::mem::replace(start, DONE);
                    shard.finish_closed(classifier.classify(result), start, Instant::now);
                }
            }
            Recorder::Probe(probe) => {
                let classified = probe.classifier.classify(result);
                probe.shard.finish_probe(
                    &mut probe.permit,
                    classified,
                    probe.start,
                    Instant::now(),
                );
            }
        }
    }
}
