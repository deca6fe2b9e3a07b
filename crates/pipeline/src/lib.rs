//! Runs queries through pipelines of agent stages (SPEC §3): stages in order, each with
//! its fallbacks, one deadline and one retry allowance for the whole query, progress
//! events for clients, and records kept for `query_retention`.
//!
//! # Where it sits
//!
//! The gateway's HTTP and WebSocket routes call [`Engine::submit`], [`Engine::record`],
//! [`Engine::subscribe`] and [`Engine::cancel`]; the engine calls agents through their
//! [`AgentClient`]s, whose stacks (`progress → retry → metrics → circuit breaker →
//! timeout`) do everything that concerns one agent call. The engine adds what concerns the query:
//!
//! - **the stage contract**: stage *k* POSTs `{"query_id","query","context","results"}`
//!   (the outputs of the stages before it) to `agent.url + path` with `x-query-id`,
//!   `x-agentgate-stage`, `x-agentgate-deadline-ms`, an `idempotency-key` of
//!   `"{query_id}:{stage}"` (the same for every retry and fallback, so agents can
//!   deduplicate, and so the retry layer may retry the POST) and the client's
//!   `traceparent`. A 2xx JSON answer is the stage's output; so is a 2xx streamed
//!   answer (SPEC §6), whose chunks are published as `output` events as they come;
//! - **fallbacks**: when a stage fails after its retries, or its breaker is open, its
//!   `fallback` entries are tried in order — another agent (same path, body and key),
//!   then a static value. If all fail, an `optional` stage is skipped and the query goes
//!   on; otherwise the query fails with the primary failure's kind (`circuit_open` when
//!   the stage's breaker was open: HTTP 503 with `Retry-After`);
//! - **one deadline**: the pipeline's `deadline`, from submit, bounds every agent call
//!   (the request in flight is dropped when it runs out) and every backoff (the retry
//!   policy reads the [`Deadline`](agentgate_retry::Deadline) extension). Once it has
//!   run out, agent fallbacks are skipped, static ones still apply, optional stages are
//!   skipped, and otherwise the query fails with kind `deadline` (HTTP 504);
//! - **one retry allowance**: the pipeline's `retry_allowance` is shared by every stage
//!   of a query ([`RetryAllowance`](agentgate_retry::RetryAllowance)), so a query that
//!   meets several flaky agents cannot multiply its load on them;
//! - **progress**: each query's events go to its stream in the progress [`Backend`]. The
//!   agent stacks report started / error / retrying / completed for each call; the
//!   engine reports `fallback`, a static output's `completed`, `skipped`, the `failed`
//!   stage, and the one terminal event (`completed`, `failed` or `cancelled`). Each
//!   stage owns a slice of the progress bar proportional to its `weight`; `progress`
//!   never decreases and is 100 before `completed`;
//! - **records**: [`QueryRecord`]s of running queries, and of finished ones for
//!   [`EngineSettings::retention`] (at most [`EngineSettings::max_records`], oldest
//!   finished dropped first), with [`QueryRecord::failure`] ([`ErrorKind`], the one
//!   vocabulary of failures from the pipeline to the gateway, which picks each HTTP
//!   status) and [`QueryRecord::retry_after`] for the gateway's answers. A backend shared by
//!   several replicas also gets each record as JSON when the query starts and ends, so
//!   any replica can answer for any query. Stage outputs and results
//!   are kept as JSON text ([`JsonText`]), never as parsed values, and a finished
//!   record's result shares its bytes with the terminal `completed` event: a retained
//!   query costs about the JSON text of its record and events (`tests/memory.rs`);
//! - **clients and admission** (SPEC §7, §8): a query carries the client that started
//!   it ([`QueryInput::client`], the record's `client`); [`Engine::record`],
//!   [`Engine::subscribe`] and [`Engine::cancel`] take the [`Caller`], and another
//!   client's query is to them exactly an unknown one. [`Engine::submit_with_quota`]
//!   admits a client's query under its quota through the backend (across replicas when
//!   shared), and every submit takes one of [`EngineSettings::max_running`] places, so
//!   a refused query starts nothing;
//! - **figures**: [`QueryStats`] for the JSON metrics API and the Prometheus series
//!   `agentgate_queries_total{pipeline,outcome}`,
//!   `agentgate_query_duration_seconds{pipeline}` and
//!   `agentgate_stage_fallbacks_total{pipeline,stage}`,
//!   `agentgate_client_queries_total{client,outcome}` ([`describe_metrics`]).
//!
//! Cancelling a query ([`Engine::cancel`], or [`Engine::drain`] when the grace period
//! is over) stops its task at once: the request in flight to an agent is dropped, and
//! the terminal event is `cancelled`. A query of another replica is cancelled by that
//! replica, asked through the backend.
//!
//! # Example
//!
//! A one-stage pipeline whose agent's breaker is open: the stage's static fallback
//! answers, and the query completes without any network traffic.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//!
//! use agentgate_agent_client::{AgentClient, AgentConfig};
//! use agentgate_pipeline::{
//!     Engine, EngineSettings, ErrorKind, Fallback, PipelineConfig, QueryInput, QueryStatus,
//!     StageConfig, StageOutcome,
//! };
//! use agentgate_progress::{HubConfig, MemoryHub};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let nlp = AgentClient::new("nlp", AgentConfig::new("http://127.0.0.1:7001".parse()?))?;
//! nlp.breaker().force_open(None); // as an operator would through the admin API
//!
//! let pipeline: PipelineConfig = toml::from_str(r#"
//!     deadline = "10s"
//!     [[stages]]
//!     name = "nlp_processing"
//!     agent = "nlp"
//!     path = "/process"
//!     fallback = [ { static = { intent = "unknown" } } ]
//! "#)?;
//! pipeline.validate(|agent| agent == "nlp")?;
//!
//! let engine = Engine::new(
//!     BTreeMap::from([("default".to_owned(), pipeline)]),
//!     BTreeMap::from([("nlp".to_owned(), nlp)]),
//!     Arc::new(MemoryHub::new(HubConfig::default())),
//!     EngineSettings::default(),
//! );
//! let submitted = engine.submit(QueryInput::new("what is agentgate?"))?;
//! let record = submitted.finished().await;
//! assert_eq!(record.status, QueryStatus::Completed);
//! // The result is kept as JSON text (shared with the terminal `completed` event).
//! let result = record.result.as_ref().unwrap();
//! assert_eq!(result.get(), r#"{"nlp_processing":{"intent":"unknown"}}"#);
//! assert_eq!(result.to_value(), json!({"nlp_processing": {"intent": "unknown"}}));
//! assert_eq!(record.stages[0].status, StageOutcome::Fallback);
//! assert_eq!(record.stages[0].attempts[0].error, Some(ErrorKind::CircuitOpen));
//! assert_eq!(record.failure(), None);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `config`: the `[pipelines.P]` keys and their validation;
//! - `engine`: [`Engine`] — submit, records, subscribe, cancel (here or on another
//!   replica), drain; ends each query exactly once;
//! - `query`: running one query's stages, fallbacks and skips;
//! - `call`: one stage call to one agent, under the deadline;
//! - `stream`: a streamed answer (SSE, NDJSON) read chunk by chunk, each published as
//!   an `output` event, made into the stage's output as `stream_result` says;
//! - `record`: the JSON records clients read, and the retention store;
//! - `plan`, `stats`, `metrics`: progress ranges, [`QueryStats`], Prometheus series.
//!
//! [`AgentClient`]: agentgate_agent_client::AgentClient
//! [`Backend`]: agentgate_progress::Backend

mod call;
pub mod config;
mod engine;
mod error;
mod metrics;
mod plan;
mod query;
mod record;
mod stats;
mod stream;

pub use agentgate_progress::JsonText;
pub use config::{Fallback, PipelineConfig, PipelineConfigError, StageConfig, StreamResult};
pub use engine::{Caller, Cancellation, Engine, EngineSettings, LiveQuery, Submitted};
pub use error::{CancelError, ErrorKind, SubmitError};
pub use metrics::describe_metrics;
pub use query::QueryInput;
pub use record::{AttemptJson, QueryError, QueryRecord, QueryStatus, StageOutcome, StageRecord};
pub use stats::{QueryStats, RECENT};
