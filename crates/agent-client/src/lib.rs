//! One client per agent: a pooled hyper-util client (HTTP/1.1 or HTTP/2, plain or over
//! rustls, with the agent's own connector and headers) wrapped, in exactly one place
//! ([`stack`]), in agentgate's resilience stack:
//!
//! ```text
//! progress → retry (→ metrics) → bulkhead → circuit breaker → per-attempt timeout → client
//! ```
//!
//! [`AgentClient`] is built from an agent's config (SPEC §2 `[defaults]` merged with
//! `[agents.X]`) and offers a streaming call (the reverse proxy) and a stage call
//! (pipeline stages: a 2xx that is not JSON is a `bad_response` the breaker counts; an
//! SSE or NDJSON answer is handed back at its head as a [`ChunkStream`], which reads it
//! chunk by chunk, bounded per line and event, with `stream_idle_timeout`).
//! Both share one breaker, one retry budget and one set of per-attempt metrics
//! (`agentgate_agent_requests_total{agent,outcome}`,
//! `agentgate_agent_request_duration_seconds{agent}`, `agentgate_agent_retries_total{agent}`).
//!
//! # Example
//!
//! ```no_run
//! use agentgate_agent_client::{AgentBody, AgentClient, AgentConfig};
//!
//! # async fn run() -> Result<(), tower::BoxError> {
//! let nlp = AgentClient::new("nlp", AgentConfig::new("http://127.0.0.1:7001".parse()?))?;
//! let req = http::Request::post("/process")
//!     .header("content-type", "application/json")
//!     .header("idempotency-key", "q1:nlp")
//!     .body(AgentBody::from(bytes::Bytes::from_static(br#"{"query":"hi"}"#)))?;
//! let res = nlp.call_json(req).await?;
//! println!("{} {}", res.status(), res.body());
//! # Ok(()) }
//! ```

mod body;
mod bulkhead;
mod client;
mod config;
mod json;
mod metrics;
mod stack;
mod stream;

pub use body::AgentBody;
pub use bulkhead::{
    Bulkhead, BulkheadLayer, Overloaded, ResponseFuture as BulkheadFuture, OVERLOAD_REJECTED,
};
pub use client::{http_client, AgentClient, HttpClient, SharedClient};
pub use config::{check_url, AgentConfig, AgentConfigError, HttpVersion};
pub use json::{JsonBody, StageAnswer};
pub use metrics::{describe_metrics, AgentMetrics, AgentStats, LATENCY_BUCKETS};
pub use stack::{layered, stack, AgentService, Stack, StackParts, TransportBody};
pub use stream::{ChunkStream, StreamError, StreamFormat};
