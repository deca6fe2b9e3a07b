//! Retries for calls to HTTP agents, built on `tower::retry::Retry`.
//!
//! In agentgate's stack the retry layer sits outside the circuit breaker
//! (`progress → retry → metrics → circuit breaker → timeout → client`), so every attempt
//! passes the breaker, and an open breaker's rejection is never retried. The
//! [`RetryPolicy`] decides, per failed attempt (SPEC §5):
//!
//! - only failures listed in `retry_on` (`connect`, `timeout`, `reset`, status codes),
//!   never a circuit-open rejection, never more than `max_attempts` in all;
//! - only idempotent requests (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, or any request with
//!   an `Idempotency-Key`), unless nothing was sent (a connect error) or
//!   `retry_non_idempotent` is set;
//! - after the [`Backoff`] delay — full, equal, decorrelated or no jitter — raised to the
//!   agent's `Retry-After` when it sent one (a longer `Retry-After` than
//!   `max_retry_after` means no retry);
//! - only when the backoff ends before the caller's [`Deadline`], the query's
//!   [`RetryAllowance`] has a retry left, and the agent's retry budget (`budget_ratio` of
//!   recent requests plus `budget_min_per_sec`: [`RetryBudget`], tower's `TpsBudget`
//!   without its lock) allows it — an exhausted budget counts
//!   `agentgate_retry_budget_exhausted_total{agent}`;
//! - only requests whose body was small enough to keep ([`RetryBody`]).
//!
//! Each attempt carries `x-agentgate-attempt: n` and the response
//! `x-agentgate-attempts: n`. A caller that inserted an [`AttemptLedger`] in the request
//! gets every attempt's outcome written to it, and its observers (progress events) told.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use agentgate_retry::{AttemptLedger, Jitter, RetryBody, RetryConfig, RetryLayer, RetryPolicy};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let config = RetryConfig { base_delay: Duration::from_millis(10), jitter: Jitter::None, ..Default::default() };
//! let policy = RetryPolicy::try_new("nlp", config)?;
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let agent = tower::service_fn({
//!     let calls = calls.clone();
//!     move |_req: http::Request<RetryBody>| {
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
//! let mut req = http::Request::get("/x").body(RetryBody::empty())?;
//! req.extensions_mut().insert(ledger.clone());
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["x-agentgate-attempts"], "2");
//! assert_eq!(ledger.attempts(), 2);
//! # Ok(())
//! # }
//! ```

mod attempt;
mod backoff;
mod body;
mod budget;
mod config;
mod layer;
mod ledger;
mod policy;

pub use attempt::{attempt_of, Attempt, AttemptFuture, ATTEMPTS_HEADER, ATTEMPT_HEADER};
pub use backoff::Backoff;
pub use body::RetryBody;
pub use budget::RetryBudget;
pub use config::{ConfigError, Jitter, RetryConfig, RetryOn};
pub use layer::{RetryFuture, RetryLayer, RetryService};
pub use ledger::{
    AttemptLedger, AttemptObserver, AttemptOutcome, AttemptRecord, Deadline, RetryAllowance,
};
pub use policy::{describe_metrics, NoRetry, RetryPolicy, DEADLINE_HEADER};
