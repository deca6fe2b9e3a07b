//! The one place where the order of agentgate's layers is written.

use std::sync::Arc;
use std::time::Duration;

use agentgate_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use agentgate_classify::{BoxError, HttpClassifier};
use agentgate_progress::{ProgressLayer, ProgressService};
use agentgate_retry::{RetryBody, RetryLayer, RetryPolicy, RetryService};
use http::{Request, Response};
use tower::timeout::{Timeout, TimeoutLayer};
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;
use tower_service::Service;

use crate::{AgentMetrics, AgentMetricsLayer, AgentMetricsService};

/// A boxed stack: what [`crate::AgentClient::streaming_service`] hands out.
pub type AgentService<B> = BoxCloneSyncService<Request<RetryBody>, Response<B>, BoxError>;

/// The stack over `S` as [`layered`] builds it, unboxed: what [`crate::AgentClient`]
/// calls, so a call costs no allocation for a boxed service or a boxed future.
pub type Stack<S> =
    ProgressService<RetryService<AgentMetricsService<CircuitBreaker<Timeout<S>, HttpClassifier>>>>;

/// The shared parts of one agent's stack. Two stacks built from the same parts (the
/// streaming proxy and the JSON pipeline stacks) share one breaker, one retry budget and
/// one set of metrics.
#[derive(Clone, Debug)]
pub struct StackParts {
    /// Per-agent metrics.
    pub metrics: Arc<AgentMetrics>,
    /// Retry policy (budget and RNG shared by clones).
    pub retry: RetryPolicy,
    /// The agent's breaker.
    pub breaker: CircuitBreakerLayer,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

/// Wraps `inner` (the agent's transport) in the full stack, outermost first:
///
/// ```text
/// progress → retry → metrics → circuit breaker → per-attempt timeout → inner
/// ```
///
/// - progress outermost: it sees the whole call and, through the attempt ledger, each
///   attempt and retry, and it reports even calls the breaker rejects;
/// - retry outside the breaker, so every attempt passes the breaker and an open breaker
///   fails fast instead of being retried;
/// - metrics between the two: it sees each attempt, breaker rejections included, so it
///   counts one outcome per attempt (SPEC §4) without any per-request state (outside the
///   retry it could only count attempts through a per-request ledger, which cost more
///   than the rest of the stack together);
/// - the timeout inside the breaker, so a timed-out attempt counts as a failure.
pub fn layered<S>(parts: &StackParts, inner: S) -> Stack<S> {
    ServiceBuilder::new()
        .layer(ProgressLayer::new())
        .layer(RetryLayer::new(parts.retry.clone()))
        .layer(AgentMetricsLayer::new(parts.metrics.clone()))
        .layer(parts.breaker.clone())
        .layer(TimeoutLayer::new(parts.timeout))
        .service(inner)
}

/// [`layered`], boxed.
pub fn stack<S, B>(parts: &StackParts, inner: S) -> AgentService<B>
where
    S: Service<Request<RetryBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + Sync + 'static,
{
    BoxCloneSyncService::new(layered(parts, inner))
}
