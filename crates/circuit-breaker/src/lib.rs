//! A circuit breaker for tower services, with the semantics of resilience4j.
//!
//! The breaker sits between the retry layer and the per-attempt timeout in agentgate's
//! stack (`progress → retry → metrics → circuit breaker → timeout → client`), so every
//! attempt passes it and a timeout counts as a failure. It protects a failing agent from
//! load and callers from waiting on it:
//!
//! - **closed**: calls flow; outcomes are counted in a time-based sliding window without
//!   any lock. The breaker trips on `consecutive_failures` failures in a row, on the
//!   failure rate or slow-call rate once the window holds `minimum_calls`, or at once on
//!   a 429/503 carrying `Retry-After` (`open_on_retry_after`).
//! - **open**: calls are rejected at once with [`CircuitOpen`] — the inner service is not
//!   polled, not even for readiness — until `open_duration` has passed (doubling, with
//!   jitter, after each failed probe round, up to `max_open_duration`).
//! - **half_open**: at most `half_open_max_calls` probes are let through; permits are
//!   shared by every clone and returned when a probe future is dropped. A successful probe
//!   closes the breaker and clears the window; a failed one reopens it.
//! - **forced_open** (optionally expiring into half_open) and **disabled** are set through
//!   a [`CircuitBreakerHandle`], which also reads [`Snapshot`]s and subscribes to
//!   [`Transition`] events.
//!
//! What counts as a failure is decided by a [`Classify`](agentgate_classify::Classify)
//! implementation: [`HttpClassifier`](agentgate_classify::HttpClassifier) by default
//! (connect errors, resets, timeouts, 500/502/503/504; not other 4xx, not cancellation).
//!
//! One [`CircuitBreakerLayer`] is one breaker: every service it wraps, and every clone of
//! those, shares its state.
//!
//! Metrics go through the `metrics` facade, labelled with the breaker's name as `agent`:
//! `agentgate_circuit_breaker_state{agent,state}` (one-hot),
//! `agentgate_circuit_breaker_transitions_total{agent,from,to,reason}` and
//! `agentgate_circuit_breaker_rejected_total{agent}`. Handles are registered when the
//! breaker is built, so install the recorder first.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use agentgate_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, State};
//! use agentgate_classify::is_caused_by;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), agentgate_classify::BoxError> {
//! let config = CircuitBreakerConfig {
//!     consecutive_failures: 2,
//!     open_duration: Duration::from_secs(30),
//!     ..Default::default()
//! };
//! let layer = CircuitBreakerLayer::try_new("nlp", config)?;
//! let handle = layer.handle();
//! let agent = layer.layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::io::Error>(http::Response::builder().status(503).body(()).unwrap())
//! }));
//!
//! for _ in 0..2 {
//!     let res = agent.clone().oneshot(http::Request::new(())).await?;
//!     assert_eq!(res.status(), 503);
//! }
//! assert_eq!(handle.snapshot().state, State::Open);
//!
//! let err = agent.clone().oneshot(http::Request::new(())).await.unwrap_err();
//! assert!(is_caused_by::<CircuitOpen>(&*err));
//! # Ok(())
//! # }
//! ```

mod breaker;
mod config;
pub mod error;
pub mod future;
mod handle;
mod layer;
mod metrics;
mod service;
mod state;
mod window;

pub use config::{CircuitBreakerConfig, ConfigError};
pub use error::CircuitOpen;
pub use handle::{CircuitBreakerHandle, ManualChange, Snapshot, Transition};
pub use layer::{CircuitBreakerBuilder, CircuitBreakerLayer};
pub use metrics::describe_metrics;
pub use service::CircuitBreaker;
pub use state::{Reason, State};
