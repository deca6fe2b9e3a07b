//! Retries for calls to HTTP agents: agentgate's own tower layer.
//!
//! In agentgate's stack the retry layer sits outside the circuit breaker
//! (`progress → retry → circuit breaker → timeout → client`), so every attempt passes the
//! breaker, and a breaker's refusal is never retried. The [`RetryPolicy`] decides, per
//! failed attempt (SPEC §5):
//!
//! - only failures listed in `retry_on` (`connect`, `timeout`, `reset`, status codes),
//!   never a refusal by one of our own layers (an error carrying
//!   [`Rejected`](agentgate_classify::Rejected)), never more than `max_attempts` in all;
//! - only idempotent requests (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, or any request with
//!   an `Idempotency-Key`), unless nothing was sent (a connect error) or
//!   `retry_non_idempotent` is set;
//! - only when the request body can be sent again: each body is wrapped in a
//!   [`ReplayBody`], which streams it to the agent and keeps up to
//!   `max_replay_body_bytes` of it for a later attempt (never read up front);
//! - after the [`Backoff`] delay — full, equal, decorrelated or no jitter — raised to the
//!   agent's `Retry-After` when it sent one (a longer `Retry-After` than
//!   `max_retry_after` means no retry);
//! - only when the backoff ends before the caller's [`Deadline`], the query's
//!   [`RetryAllowance`] has a retry left, and the agent's retry budget (`budget_ratio` of
//!   recent requests plus `budget_min_per_sec`: [`RetryBudget`], tower's `TpsBudget`
//!   arithmetic without its lock) allows it — an exhausted budget counts
//!   `agentgate_retry_budget_exhausted_total{agent}`.
//!
//! The layer is generic over the request body and depends on no other layer: what it
//! tells the others travels in request extensions and in
//! [`agentgate_classify`]'s shared types. Each attempt carries `x-agentgate-attempt: n`
//! (or only retries do: [`AttemptHeader`]) and each retry the
//! [`AttemptNumber`](agentgate_classify::AttemptNumber) extension, the answer
//! `x-agentgate-attempts: n`. Every finished attempt becomes one
//! [`AttemptRecord`](agentgate_classify::AttemptRecord), told to the layer's own
//! observer ([`RetryLayer::on_attempt`]: the agent's metrics) and to the request's
//! [`AttemptLedger`](agentgate_classify::AttemptLedger) (a pipeline stage's attempts,
//! progress events).
//!
//! It is a layer of its own rather than tower's `Retry`: that one asks its policy to copy
//! the whole request before every attempt and to keep the attempt number in the body
//! type; this one keeps one copy of the head, numbers attempts in extensions, and replays
//! bodies lazily (measured in `docs/BENCHMARKS.md`).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use agentgate_classify::AttemptLedger;
//! use agentgate_retry::{Jitter, RetryConfig, RetryLayer, RetryPolicy};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let config = RetryConfig { base_delay: Duration::from_millis(10), jitter: Jitter::None, ..Default::default() };
//! let policy = RetryPolicy::try_new("nlp", config)?;
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let agent = tower::service_fn({
//!     let calls = calls.clone();
//!     move |_req: http::Request<_>| {
//!         // Fails once with 503, then answers 200.
//!         let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!         async move {
//!             let status = if n == 0 { 503 } else { 200 };
//!             Ok::<_, std::io::Error>(http::Response::builder().status(status).body(()).unwrap())
//!         }
//!     }
//! });
//! let svc = RetryLayer::new(policy).layer(agent);
//! let ledger = AttemptLedger::new();
//! let mut req = http::Request::get("/x").body(http_body_util::Empty::<bytes::Bytes>::new())?;
//! req.extensions_mut().insert(ledger.clone());
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["x-agentgate-attempts"], "2");
//! assert_eq!(ledger.attempts(), 2);
//! # Ok(())
//! # }
//! ```

mod backoff;
mod budget;
mod config;
mod layer;
mod policy;
mod replay;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use config::{ConfigError, Jitter, RetryConfig, RetryOn};
pub use layer::{
    AttemptHeader, ResponseFuture, Retry, RetryLayer, ATTEMPTS_HEADER, ATTEMPT_HEADER,
};
pub use policy::{
    describe_metrics, Attempted, Deadline, NoRetry, RetryAllowance, RetryPolicy, DEADLINE_HEADER,
};
pub use replay::{NotReplayable, ReplayBody};
