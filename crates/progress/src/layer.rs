//! `ProgressLayer`: stage events for one agent call, emitted from the request path
//! without ever blocking it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use agentgate_classify::{
    AttemptLedger, AttemptObserver, AttemptOutcome, AttemptRecord, BoxError, Rejection,
};
use http::{Request, Response};
use pin_project_lite::pin_project;
use serde_json::json;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::{ErrorInfo, EventKind, QueryPublisher, StageStatus};

/// Which query and stage a request belongs to (request extension). Requests without
/// one (the reverse proxy) pass through silently.
#[derive(Clone, Debug)]
pub struct ProgressContext {
    /// The query's publisher.
    pub publisher: QueryPublisher,
    /// The stage name.
    pub stage: Arc<str>,
    /// Overall progress when the stage starts…
    pub progress_start: u8,
    /// … and when it completes.
    pub progress_end: u8,
}

/// A response extension saying that the answer goes on streaming after its head (SPEC
/// §6: an SSE or NDJSON stage answer). [`ProgressLayer`] then does not report the stage
/// `completed` when the head arrives: whoever reads the stream does, at its end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamedAnswer;

/// Emits, for each call carrying a [`ProgressContext`]: `progress/started` (attempt 1),
/// an `error` event for every failed attempt, `progress/retrying` (attempt n, with
/// `{"delay_ms"}`) for every retry, and `progress/completed` when the agent answered
/// with a 2xx (unless the answer is a [`StreamedAnswer`]). Fallback, skip, stage failure
/// and the terminal events belong to the pipeline, which knows what comes next.
///
/// Attempts and retries are learnt from the request's
/// [`AttemptLedger`](agentgate_classify::AttemptLedger), which a retry layer below tells
/// (any retry layer: this one depends on none). Without one below, the call is one
/// attempt, and this layer reports it itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgressLayer {
    _priv: (),
}

/// The service built by [`ProgressLayer`].
#[derive(Clone, Debug)]
pub struct ProgressService<S> {
    inner: S,
}

pin_project! {
    /// The response future of [`ProgressService`].
    #[derive(Debug)]
    pub struct ProgressFuture<F> {
        #[pin]
        inner: F,
        watch: Option<Watch>,
    }
}

#[derive(Debug)]
struct StageObserver {
    ctx: ProgressContext,
}

/// What a call with a [`ProgressContext`] keeps until it ends.
#[derive(Debug)]
struct Watch {
    observer: Arc<StageObserver>,
    ledger: AttemptLedger,
    started: Instant,
}

impl ProgressLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ProgressLayer {
    type Service = ProgressService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProgressService { inner }
    }
}

impl<S, B, RB> Service<Request<B>> for ProgressService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ProgressFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let watch = req
            .extensions()
            .get::<ProgressContext>()
            .cloned()
            .map(|ctx| {
                let ledger = AttemptLedger::of(&mut req);
                let observer = Arc::new(StageObserver { ctx });
                ledger.observe(observer.clone());
                let ctx = &observer.ctx;
                ctx.emit(StageStatus::Started, ctx.progress_start, Some(1), None);
                Watch {
                    observer,
                    ledger,
                    started: Instant::now(),
                }
            });
        ProgressFuture {
            inner: self.inner.call(req),
            watch,
        }
    }
}

impl<F, RB, E> Future for ProgressFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(Into::into);
        if let Some(watch) = this.watch.take() {
            if watch.ledger.attempts() == 0 {
                // Nothing below counted attempts: this call was the one attempt.
                let record = AttemptRecord::from_result(1, &result, watch.started.elapsed());
                watch.ledger.finish(record);
            }
            let ctx = &watch.observer.ctx;
            // Only a 2xx completes a stage: the pipeline treats any other answer as a
            // failure and goes on to fallbacks. A streamed one completes at its end.
            let done = |res: &Response<RB>| {
                res.status().is_success() && res.extensions().get::<StreamedAnswer>().is_none()
            };
            if result.as_ref().is_ok_and(done) {
                ctx.emit(StageStatus::Completed, ctx.progress_end, None, None);
            }
        }
        Poll::Ready(result)
    }
}

impl ProgressContext {
    /// Publishes a `progress` event for this stage. A query that already ended refuses
    /// it, which is fine: nothing is waiting for it.
    pub fn emit(
        &self,
        status: StageStatus,
        progress: u8,
        attempt: Option<u32>,
        detail: Option<serde_json::Value>,
    ) {
        let _ = self.publisher.publish(EventKind::Progress {
            stage: self.stage.to_string(),
            status,
            progress,
            attempt,
            detail,
        });
    }

    /// Publishes an `error` event (a failed attempt; not terminal).
    pub fn emit_error(&self, kind: &str, message: String) {
        let _ = self.publisher.publish(EventKind::Error {
            stage: self.stage.to_string(),
            error: ErrorInfo {
                stage: None,
                kind: kind.to_owned(),
                message,
            },
        });
    }
}

impl AttemptObserver for StageObserver {
    fn attempt_finished(&self, record: &AttemptRecord) {
        if record.outcome == AttemptOutcome::Success {
            return;
        }
        let kind = record.error_kind().unwrap_or("status");
        let message = match (record.status, record.outcome, record.rejection) {
            (Some(status), _, _) => format!("attempt {} answered {status}", record.attempt),
            (None, _, Some(Rejection::CircuitOpen)) => {
                format!("attempt {}: circuit breaker open", record.attempt)
            }
            (None, _, Some(_)) => format!("attempt {} refused: {kind}", record.attempt),
            (None, AttemptOutcome::Timeout, _) => {
                format!("attempt {} timed out", record.attempt)
            }
            (None, _, None) => format!("attempt {} failed: {kind}", record.attempt),
        };
        self.ctx.emit_error(kind, message);
    }

    fn retry_scheduled(&self, next_attempt: u32, delay: Duration) {
        self.ctx.emit(
            StageStatus::Retrying,
            self.ctx.progress_start,
            Some(next_attempt),
            Some(json!({ "delay_ms": delay.as_millis() as u64 })),
        );
    }
}
