//! agentgate: resilience layers for tower services that call HTTP "agents".
//!
//! This facade re-exports the layers so library users depend on one crate:
//!
//! - [`classify`]: failure classes (what counts against a breaker, what may be retried),
//!   and what the layers share without depending on each other (the `Rejected` marker,
//!   attempt records, their observers and ledger).
//! - [`circuit_breaker`]: [`CircuitBreakerLayer`], resilience4j-grade breaker semantics.
//! - [`retry`]: [`RetryLayer`]: jittered backoff, budget, `Retry-After`, idempotency
//!   guard, request bodies replayed while they stream, one record per attempt.
//! - [`progress`]: per-query progress events, a hub with gap-free replay, [`ProgressLayer`].
//! - [`agent_client`]: [`AgentClient`], one pooled hyper-util client per agent wrapped in
//!   the whole stack (`progress → retry (→ metrics) → circuit breaker → timeout → client`).
//!
//! # Examples
//!
//! Runnable programs in the repository's `examples/`, each `cargo run --example NAME`
//! from the repository root (and run by `scripts/test.sh`, which fails if one does not
//! do what it says):
//!
//! - `wrap_service`: your own tower service wrapped in retry, circuit breaker and
//!   per-attempt timeout — a 503 retried, the breaker tripping on timeouts, failing fast,
//!   and closing again through a probe, read through the [`CircuitBreakerHandle`].
//! - `progress_events`: a [`ProgressLayer`] over a [`RetryLayer`] publishing a call's
//!   events to a [`MemoryHub`], printed by a subscriber as they are published.
//! - `custom_classifier`: a [`Classify`](classify::Classify) implementation of your own
//!   (a 429, or a 200 whose JSON says `error`, is a failure) plugged into the breaker
//!   with [`CircuitBreakerLayer::with_classifier`].
//!
//! The smallest use:
//!
//! ```
//! use agentgate::{CircuitBreakerConfig, CircuitBreakerLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let breaker = CircuitBreakerLayer::try_new("nlp", CircuitBreakerConfig::default())?;
//! let handle = breaker.handle();
//! let svc = breaker.layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::io::Error>(http::Response::new(()))
//! }));
//! let res = svc.oneshot(http::Request::new(())).await?;
//! assert_eq!(res.status(), 200);
//! assert_eq!(handle.snapshot().state, agentgate::circuit_breaker::State::Closed);
//! # Ok(())
//! # }
//! ```

pub use agentgate_agent_client as agent_client;
pub use agentgate_circuit_breaker as circuit_breaker;
pub use agentgate_classify as classify;
pub use agentgate_progress as progress;
pub use agentgate_retry as retry;

pub use agentgate_agent_client::{AgentClient, AgentConfig};
pub use agentgate_progress::{Backend, MemoryHub, ProgressLayer};
pub use agentgate_retry::{ReplayBody, RetryConfig, RetryLayer, RetryPolicy};

pub use agentgate_circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen,
};
pub use agentgate_classify::{
    is_caused_by, AttemptLedger, AttemptObserver, AttemptRecord, FailureClass, HttpClassifier,
    Rejected,
};

/// The README's examples, compiled and run as doc tests so they stay true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
