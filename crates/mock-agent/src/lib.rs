//! A scriptable, fault-injecting HTTP agent.
//!
//! agentgate exists to survive agents that are slow, flaky, throttling or down. This crate
//! is such an agent, on demand: a real hyper server on a TCP listener (HTTP/1.1 with
//! keep-alive, or HTTP/2; plain or over TLS with [`MockAgent::start_tls`] or
//! `--tls-cert/--tls-key`) whose latency and failures follow a [`Behavior`]. The layer tests, the
//! end-to-end tests, the benchmarks and `agentgate demo` start it in-process with
//! [`MockAgent::start`]; `agentgate mock-agent` runs it on its own through [`serve`] and
//! [`MockAgentArgs`], so users can test their own setups against it.
//!
//! - [`Behavior`]: latency and jitter; rates of errors, hangs, connection resets,
//!   throttling (`Retry-After`) and non-JSON answers; periodic outage windows; a seed for
//!   reproducible runs. Its docs give the order in which faults are decided.
//! - Answers: without a fault, `200 application/json` echoing the method, path, JSON body
//!   and the agentgate request headers (`x-query-id`, `x-agentgate-stage`, …), plus an
//!   `output` object a pipeline stage can pass on.
//! - Control endpoint on the same listener, never faulted nor counted: `GET /_mock`
//!   (behavior and stats), `PUT /_mock` (merge a JSON object of behavior fields; bad
//!   fields are a `400`), `GET /_mock/stats` ([`Stats`]).
//! - Time goes through `tokio::time` only, so latency and outage windows follow a paused
//!   test clock.
//!
//! Layout: `behavior.rs` (the script and its validation), `fault.rs` (the pure decision per
//! request), `state.rs` (shared behavior, RNG and counters), `handler.rs` (HTTP answers and
//! the control endpoint), `body.rs` (the body that breaks mid-way), `server.rs` (accept
//! loop, [`MockAgent`], [`serve`]), `stats.rs`, `args.rs`.
//!
//! # Example
//!
//! ```
//! use agentgate_mock_agent::{Behavior, MockAgent};
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let agent = MockAgent::start(Behavior { name: "nlp".into(), ..Behavior::default() }).await?;
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let req = http::Request::post(format!("{}/process", agent.url()))
//!     .header("x-agentgate-stage", "nlp_processing")
//!     .body(Full::new(Bytes::from(r#"{"query": "hello"}"#)))?;
//! let res = client.request(req).await?;
//! assert_eq!(res.status(), 200);
//!
//! let body = res.into_body().collect().await?.to_bytes();
//! let json: serde_json::Value = serde_json::from_slice(&body)?;
//! assert_eq!(json["path"], "/process");
//! assert_eq!(json["output"]["stage"], "nlp_processing");
//! assert_eq!(json["output"]["echo"], "hello");
//! assert_eq!(agent.stats().ok, 1);
//!
//! agent.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod args;
mod behavior;
mod body;
mod fault;
mod handler;
mod server;
mod state;
mod stats;

pub use args::MockAgentArgs;
pub use behavior::{Behavior, BehaviorError, StreamMode};
pub use server::{serve, serve_tls, MockAgent};
pub use stats::Stats;
