//! Running one query: its stages in order, each with its fallbacks, under one deadline.
//!
//! The progress layer inside each agent's stack reports what happens to an agent call
//! (started, error, retrying, completed); this module reports what only the pipeline
//! knows — a fallback taken, a static output, a skip, the stage that fails the query —
//! and keeps every event's `progress` from going backwards.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentgate_agent_client::AgentClient;
use agentgate_progress::{EventKind, JsonText, QueryPublisher, StageStatus};
use agentgate_retry::RetryAllowance;
use bytes::Bytes;
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::call::{Call, Failure};
use crate::plan::Plan;
use crate::record::{millis, QueryError, StageOutcome, StageRecord};
use crate::{ErrorKind, Fallback};

/// What a client submits: SPEC's `{"query", "context"?, "pipeline"?}`.
///
/// Other keys are ignored, so a WebSocket `{"type":"query",…}` frame deserializes too.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct QueryInput {
    /// The query text.
    pub query: String,
    /// Anything the agents should see.
    #[serde(default)]
    pub context: Map<String, Value>,
    /// The pipeline to run; the engine's default pipeline when absent.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// The client's W3C `traceparent` header, passed on to every agent.
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// The client that submits it (SPEC §7): the record's `client`, the owner that
    /// alone may read, watch and cancel it. `None` without `[auth]`.
    #[serde(skip)]
    pub client: Option<String>,
}

/// How a query's run ended.
#[derive(Debug)]
pub(crate) enum End {
    /// `{stage: output}` as JSON text.
    Completed(JsonText),
    Failed {
        error: QueryError,
        retry_at: Option<Instant>,
    },
    Cancelled,
}

/// One query on its way through its pipeline.
#[derive(Debug)]
pub(crate) struct QueryRun {
    pub(crate) query_id: Arc<str>,
    pub(crate) query: String,
    pub(crate) context: Map<String, Value>,
    pub(crate) plan: Arc<Plan>,
    pub(crate) agents: Arc<BTreeMap<String, AgentClient>>,
    pub(crate) publisher: QueryPublisher,
    pub(crate) deadline: Instant,
    pub(crate) allowance: RetryAllowance,
    pub(crate) traceparent: Option<HeaderValue>,
    /// The highest `progress` reported so far.
    pub(crate) high_water: u8,
    /// The longest line or event of a streamed answer.
    pub(crate) max_chunk_bytes: usize,
}

/// The body every stage receives.
#[derive(Serialize)]
struct StageRequest<'a> {
    query_id: &'a str,
    query: &'a str,
    context: &'a Map<String, Value>,
    results: &'a Results,
}

/// The outputs so far, by stage name: sorted by name, as a `serde_json::Map` would be,
/// so `result` reads the same; each kept as text, written into later stages' bodies
/// and the result as it is.
type Results = BTreeMap<String, JsonText>;

/// How one stage ended.
enum StageEnd {
    Output(JsonText),
    Skipped,
    Failed {
        error: QueryError,
        retry_at: Option<Instant>,
    },
}

// === impl QueryInput ===

impl QueryInput {
    /// A query for the default pipeline with an empty context.
    pub fn new(query: impl Into<String>) -> Self {
        Self {
            query: query.into(),
            ..Self::default()
        }
    }
}

// === impl QueryRun ===

impl QueryRun {
    /// Runs every stage; `on_stage` is told about each stage as it ends.
    pub(crate) async fn run(mut self, mut on_stage: impl FnMut(StageRecord)) -> End {
        let mut results = Results::new();
        for index in 0..self.plan.config.stages.len() {
            let (record, end) = self.run_stage(index, &results).await;
            on_stage(record);
            match end {
                StageEnd::Output(value) => {
                    results.insert(self.plan.config.stages[index].name.clone(), value);
                }
                StageEnd::Skipped => {}
                StageEnd::Failed { error, retry_at } => return End::Failed { error, retry_at },
            }
        }
        if self.high_water < 100 {
            if let Some(last) = self.plan.config.stages.last() {
                let name = last.name.clone();
                self.emit(&name, StageStatus::Completed, 100, None);
            }
        }
        End::Completed(JsonText::new(&results).expect("JSON texts serialize"))
    }

    async fn run_stage(&mut self, index: usize, results: &Results) -> (StageRecord, StageEnd) {
        let plan = self.plan.clone();
        let stage = &plan.config.stages[index];
        let (start, end) = plan.bounds[index];
        let began = Instant::now();
        let body = Bytes::from(
            serde_json::to_vec(&StageRequest {
                query_id: &self.query_id,
                query: &self.query,
                context: &self.context,
                results,
            })
            .expect("JSON values serialize"),
        );
        let mut attempts = Vec::new();
        let record = |status, attempts, fallback: Option<&str>| StageRecord {
            name: stage.name.clone(),
            status,
            agent: stage.agent.clone(),
            attempts,
            fallback: fallback.map(str::to_owned),
            duration_ms: millis(began.elapsed()),
        };

        let primary = match self
            .call_agent(
                index,
                &stage.agent,
                body.clone(),
                (self.from(start), end),
                &mut attempts,
            )
            .await
        {
            Call::Output(value) => {
                self.high_water = self.high_water.max(end);
                return (
                    record(StageOutcome::Completed, attempts, None),
                    StageEnd::Output(value),
                );
            }
            Call::Failed(failure) => failure,
        };
        self.note(&primary, end);
        let mut out_of_time = primary.kind == ErrorKind::Deadline;

        for fallback in &stage.fallback {
            match fallback {
                Fallback::Agent(agent) => {
                    if Instant::now() >= self.deadline {
                        // Agent fallbacks need time; static ones further on still apply.
                        out_of_time = true;
                        continue;
                    }
                    let at = self.from(start);
                    self.emit(
                        &stage.name,
                        StageStatus::Fallback,
                        at,
                        Some(json!({ "to": agent })),
                    );
                    plan.metrics.fallback(index);
                    match self
                        .call_agent(
                            index,
                            agent,
                            body.clone(),
                            (self.from(start), end),
                            &mut attempts,
                        )
                        .await
                    {
                        Call::Output(value) => {
                            self.high_water = self.high_water.max(end);
                            let rec = record(StageOutcome::Fallback, attempts, Some(agent));
                            return (rec, StageEnd::Output(value));
                        }
                        Call::Failed(failure) => {
                            out_of_time |= failure.kind == ErrorKind::Deadline;
                            self.note(&failure, end);
                        }
                    }
                }
                Fallback::Static(value) => {
                    let at = self.from(start);
                    self.emit(
                        &stage.name,
                        StageStatus::Fallback,
                        at,
                        Some(json!({ "to": "static" })),
                    );
                    plan.metrics.fallback(index);
                    self.emit(
                        &stage.name,
                        StageStatus::Completed,
                        end.max(self.high_water),
                        Some(json!({ "fallback": "static" })),
                    );
                    self.high_water = self.high_water.max(end);
                    let rec = record(StageOutcome::Fallback, attempts, Some("static"));
                    return (rec, StageEnd::Output(JsonText::from(value)));
                }
            }
        }

        // The primary failure names the kind, except that an open breaker on the stage's
        // own agent says "come back later" (503 + Retry-After) and a deadline that cut
        // the stage short says "too slow" (504).
        let (kind, message) = if primary.kind.is_refusal() || !out_of_time {
            (primary.kind, primary.message)
        } else {
            (
                ErrorKind::Deadline,
                format!(
                    "stage `{}` did not finish before the query deadline ({})",
                    stage.name,
                    humantime::format_duration(plan.config.deadline)
                ),
            )
        };
        if stage.optional {
            let at = end.max(self.high_water);
            self.emit(
                &stage.name,
                StageStatus::Skipped,
                at,
                Some(json!({ "kind": kind.as_str() })),
            );
            self.high_water = at;
            return (
                record(StageOutcome::Skipped, attempts, None),
                StageEnd::Skipped,
            );
        }

        let error = QueryError {
            stage: stage.name.clone(),
            kind,
            message,
        };
        let at = self.high_water;
        self.emit(
            &stage.name,
            StageStatus::Failed,
            at,
            Some(json!({ "kind": error.kind.as_str(), "message": error.message })),
        );
        let retry_at = kind.is_refusal().then_some(primary.retry_at).flatten();
        (
            record(StageOutcome::Failed, attempts, None),
            StageEnd::Failed { error, retry_at },
        )
    }

    /// Where the next call of a stage starting at `start` reports from.
    fn from(&self, start: u8) -> u8 {
        start.max(self.high_water)
    }

    /// Takes note of progress a failed call reported.
    fn note(&mut self, failure: &Failure, end: u8) {
        if failure.reported_done {
            self.high_water = self.high_water.max(end);
        }
    }

    fn emit(&mut self, stage: &str, status: StageStatus, progress: u8, detail: Option<Value>) {
        self.high_water = self.high_water.max(progress);
        let _ = self.publisher.publish(EventKind::Progress {
            stage: stage.to_owned(),
            status,
            progress,
            attempt: None,
            detail,
        });
    }
}
