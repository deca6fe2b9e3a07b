//! `ProgressLayer`: stage events for one agent call, emitted from the request path
//! without ever blocking it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use agentgate_classify::{BoxError, FailureClass};
use agentgate_retry::{AttemptLedger, AttemptObserver, AttemptOutcome, AttemptRecord};
use http::{Request, Response};
use pin_project_lite::pin_project;
use serde_json::json;
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

/// Emits, for each call carrying a [`ProgressContext`]: `progress/started` (attempt 1),
/// an `error` event for every failed attempt, `progress/retrying` (attempt n, with
/// `{"delay_ms"}`) for every retry, and `progress/completed` when the agent answered
/// with a 2xx. Fallback, skip, stage failure and the terminal events
/// belong to the pipeline, which knows what comes next.
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
        ctx: Option<ProgressContext>,
    }
}

#[derive(Debug)]
struct StageObserver {
    ctx: ProgressContext,
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
        let ctx = req.extensions().get::<ProgressContext>().cloned();
        if let Some(ctx) = &ctx {
            let ledger = AttemptLedger::of(&mut req);
            ledger.observe(Arc::new(StageObserver { ctx: ctx.clone() }));
            ctx.emit(StageStatus::Started, ctx.progress_start, Some(1), None);
        }
        ProgressFuture {
            inner: self.inner.call(req),
            ctx,
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
        if let (Some(ctx), Ok(res)) = (this.ctx.take(), &result) {
            // Only a 2xx completes a stage: the pipeline treats any other answer as a
            // failure and goes on to fallbacks.
            if res.status().is_success() {
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

/// The SPEC error kind of a failed attempt: the failure class, or `circuit_open`.
pub fn attempt_error_kind(record: &AttemptRecord) -> &'static str {
    match (record.outcome, record.error) {
        (AttemptOutcome::Rejected, _) => "circuit_open",
        (_, Some(class)) => class.as_str(),
        (_, None) => FailureClass::Status.as_str(),
    }
}

impl AttemptObserver for StageObserver {
    fn attempt_finished(&self, record: &AttemptRecord) {
        if record.outcome == AttemptOutcome::Success {
            return;
        }
        let message = match (record.status, record.outcome) {
            (Some(status), _) => format!("attempt {} answered {status}", record.attempt),
            (None, AttemptOutcome::Rejected) => {
                format!("attempt {}: circuit breaker open", record.attempt)
            }
            (None, AttemptOutcome::Timeout) => format!("attempt {} timed out", record.attempt),
            (None, _) => format!(
                "attempt {} failed: {}",
                record.attempt,
                attempt_error_kind(record)
            ),
        };
        self.ctx.emit_error(attempt_error_kind(record), message);
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
