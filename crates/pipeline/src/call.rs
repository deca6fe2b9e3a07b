//! One call of a stage to one agent (the stage's own, or a fallback agent): the request
//! SPEC §3 describes, sent through the agent's full stack under the query's deadline,
//! and its answer turned into an output or a [`Failure`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentgate_agent_client::{AgentBody, StageAnswer};
use agentgate_classify::{
    cause_ref, is_failure_status, AttemptLedger, AttemptObserver, AttemptRecord, Rejected,
    Rejection,
};
use agentgate_progress::{ErrorInfo, EventKind, JsonText, ProgressContext};
use agentgate_retry::Deadline;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request};
use tokio::time::Instant;

use crate::query::QueryRun;
use crate::record::{millis, AttemptJson};
use crate::stream::StreamAt;
use crate::ErrorKind;

/// How a call ended when it produced no output.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: ErrorKind,
    /// For clients: the failure class and a short reason, never internals.
    pub(crate) message: String,
    /// When the refusing layer lets calls through again (refusals only).
    pub(crate) retry_at: Option<Instant>,
    /// The agent answered with a status that is not a failure for the breaker (a 4xx),
    /// so the progress layer already reported the call `completed` at the stage's end.
    pub(crate) reported_done: bool,
}

/// The outcome of one call.
#[derive(Debug)]
pub(crate) enum Call {
    /// A 2xx JSON answer, as its text (parsed values take several times the memory).
    Output(JsonText),
    /// No output.
    Failed(Failure),
}

/// When the attempt in flight started: the call's start, then the end of each backoff.
/// Only needed to say how long an attempt cut off by the deadline had run.
#[derive(Debug)]
struct AttemptClock {
    next_start: Mutex<Instant>,
}

// === impl AttemptClock ===

impl AttemptObserver for AttemptClock {
    fn attempt_finished(&self, _: &AttemptRecord) {}

    fn retry_scheduled(&self, _: u32, delay: Duration) {
        *self
            .next_start
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now() + delay;
    }
}

// === impl QueryRun ===

impl QueryRun {
    /// Sends stage `index`'s `body` to `agent` and waits for the answer, at most until
    /// the query's deadline. Appends the call's attempts to `attempts`.
    pub(crate) async fn call_agent(
        &self,
        index: usize,
        agent: &str,
        body: Bytes,
        progress: (u8, u8),
        attempts: &mut Vec<AttemptJson>,
    ) -> Call {
        let stage = &self.plan.config.stages[index];
        let Some(client) = self.agents.get(agent) else {
            return failed(
                ErrorKind::Config,
                format!("agent `{agent}` is not configured"),
            );
        };
        let start = Instant::now();
        if start >= self.deadline {
            return failed(
                ErrorKind::Deadline,
                format!("no time left for agent `{agent}` before the query deadline"),
            );
        }
        let left = self.deadline.saturating_duration_since(start);
        let built = Request::post(stage.path.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header("x-query-id", &*self.query_id)
            .header("x-agentgate-stage", stage.name.as_str())
            .header("x-agentgate-deadline-ms", millis(left))
            .header(
                "idempotency-key",
                format!("{}:{}", self.query_id, stage.name),
            )
            .body(AgentBody::from(body));
        let mut req = match built {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(query_id = %self.query_id, stage = %stage.name, error = %e, "stage request cannot be built");
                return failed(
                    ErrorKind::Config,
                    format!(
                        "stage `{}` cannot be sent (path or name is not valid in a request)",
                        stage.name
                    ),
                );
            }
        };
        if let Some(tp) = &self.traceparent {
            req.headers_mut().insert("traceparent", tp.clone());
        }
        let ledger = AttemptLedger::new();
        let clock = Arc::new(AttemptClock {
            next_start: Mutex::new(start),
        });
        ledger.observe(clock.clone());
        let ext = req.extensions_mut();
        ext.insert(ledger.clone());
        ext.insert(Deadline(self.deadline));
        ext.insert(self.allowance.clone());
        ext.insert(ProgressContext {
            publisher: self.publisher.clone(),
            stage: stage.name.as_str().into(),
            progress_start: progress.0,
            progress_end: progress.1,
        });

        let result = tokio::time::timeout_at(self.deadline, client.call_stage(req)).await;

        let records = ledger.records();
        attempts.extend(records.iter().map(AttemptJson::from_record));
        let made = records.len() as u32;
        let after = |n: u32| {
            if n > 1 {
                format!(" after {n} attempts")
            } else {
                String::new()
            }
        };
        match result {
            Err(_elapsed) => {
                // The attempt in flight was dropped with the call: record it as cut off.
                let began = *clock
                    .next_start
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                attempts.push(AttemptJson {
                    attempt: made + 1,
                    status: None,
                    error: Some(ErrorKind::Deadline),
                    duration_ms: millis(Instant::now().saturating_duration_since(began)),
                });
                let _ = self.publisher.publish(EventKind::Error {
                    stage: stage.name.clone(),
                    error: ErrorInfo {
                        stage: None,
                        kind: ErrorKind::Deadline.as_str().to_owned(),
                        message: format!("attempt {} cut off by the query deadline", made + 1),
                    },
                });
                failed(
                    ErrorKind::Deadline,
                    format!("agent `{agent}` did not answer before the query deadline"),
                )
            }
            Ok(Ok(res)) if res.status().is_success() => match res.into_body() {
                StageAnswer::Json(value) => Call::Output(JsonText::from(value)),
                StageAnswer::Stream(stream) => {
                    let at = StreamAt {
                        stage: &stage.name,
                        agent,
                        attempt: made.max(1),
                        progress_end: progress.1,
                        max_bytes: client.config().max_response_bytes,
                    };
                    self.read_stream(at, stream, stage.stream_result, attempts)
                        .await
                }
            },
            Ok(Ok(res)) => {
                let status = res.status();
                Call::Failed(Failure {
                    kind: ErrorKind::Status,
                    message: format!(
                        "agent `{agent}` answered {}{}",
                        status.as_u16(),
                        after(made)
                    ),
                    retry_at: None,
                    reported_done: !is_failure_status(status),
                })
            }
            Ok(Err(err)) => {
                let kind = ErrorKind::of_error(&*err);
                if let Some(refused) = cause_ref::<Rejected>(&*err) {
                    let left = refused.retry_after().or_else(|| {
                        (refused.reason() == Rejection::CircuitOpen)
                            .then(|| client.breaker().snapshot().retry_after)
                            .flatten()
                    });
                    let message = match kind {
                        ErrorKind::CircuitOpen => {
                            format!("circuit breaker for agent `{agent}` is open")
                        }
                        other => format!("agent `{agent}` refused the call ({other})"),
                    };
                    return Call::Failed(Failure {
                        kind,
                        message,
                        retry_at: left.map(|d| Instant::now() + d),
                        reported_done: false,
                    });
                }
                tracing::debug!(query_id = %self.query_id, stage = %stage.name, agent, error = %err, "stage call failed");
                let reason = match kind {
                    ErrorKind::Connect => format!("could not connect to agent `{agent}`"),
                    ErrorKind::Tls => {
                        // A certificate or trust problem: the operator's to fix.
                        tracing::warn!(agent, error = %err, "TLS handshake with agent failed");
                        format!("the TLS handshake with agent `{agent}` failed")
                    }
                    ErrorKind::Timeout => format!("agent `{agent}` timed out"),
                    ErrorKind::Reset => format!("the connection to agent `{agent}` broke"),
                    ErrorKind::BadResponse => {
                        format!("agent `{agent}` answered with a body that is not usable JSON")
                    }
                    other => format!("the call to agent `{agent}` failed ({other})"),
                };
                failed(kind, format!("{reason}{}", after(made)))
            }
        }
    }
}

pub(crate) fn failed(kind: ErrorKind, message: String) -> Call {
    Call::Failed(Failure {
        kind,
        message,
        retry_at: None,
        reported_done: false,
    })
}

/// `traceparent` as a header value, when it is one.
pub(crate) fn traceparent_value(tp: Option<&str>) -> Option<HeaderValue> {
    tp.and_then(|s| HeaderValue::from_str(s).ok())
}
