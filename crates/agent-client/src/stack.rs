//! The one place where the order of agentgate's layers is written.

use std::sync::Arc;
use std::time::Duration;

use agentgate_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use agentgate_classify::{BoxError, HttpClassifier};
use agentgate_progress::{ProgressLayer, ProgressService};
use agentgate_retry::{AttemptHeader, ReplayBody, Retry, RetryLayer, RetryPolicy};
use http::{Request, Response};
use tower::timeout::{Timeout, TimeoutLayer};
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;
use tower_service::Service;

use crate::bulkhead::{Bulkhead, BulkheadLayer};
use crate::{AgentBody, AgentMetrics};

/// A boxed stack: what [`crate::AgentClient::streaming_service`] hands out.
pub type AgentService<B> = BoxCloneSyncService<Request<AgentBody>, Response<B>, BoxError>;

/// The stack over `S` as [`layered`] builds it, unboxed: what [`crate::AgentClient`]
/// calls, so a call costs no allocation for a boxed service or a boxed future.
pub type Stack<S> = ProgressService<Retry<Bulkhead<CircuitBreaker<Timeout<S>, HttpClassifier>>>>;

/// What the transport under a stack is sent: the caller's body, made replayable.
pub type TransportBody = ReplayBody<AgentBody>;

/// The shared parts of one agent's stack. Two stacks built from the same parts (the
/// streaming proxy and the JSON pipeline stacks) share one breaker, one retry budget and
/// one set of metrics.
#[derive(Clone, Debug)]
pub struct StackParts {
    /// Per-agent metrics, told about every attempt by the retry layer.
    pub metrics: Arc<AgentMetrics>,
    /// Retry policy (budget and RNG shared by clones).
    pub retry: RetryPolicy,
    /// The agent's bulkhead (`max_concurrency`, `queue_timeout`).
    pub bulkhead: BulkheadLayer,
    /// The agent's breaker.
    pub breaker: CircuitBreakerLayer,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Which attempts carry `x-agentgate-attempt`: every one for pipeline stages (SPEC
    /// §3), only retries through the reverse proxy.
    pub attempt_header: AttemptHeader,
}

/// Wraps `inner` (the agent's transport) in the full stack, outermost first:
///
/// ```text
/// progress → retry (→ metrics) → bulkhead → circuit breaker → per-attempt timeout → inner
/// ```
///
/// - progress outermost: it sees the whole call and, through the request's attempt
///   ledger, each attempt and retry, and it reports even calls the breaker refuses;
/// - retry outside the breaker, so every attempt passes the breaker and an open breaker
///   fails fast instead of being retried (the body is not read before the breaker
///   admits an attempt: the retry layer replays it lazily);
/// - metrics are the retry layer's observer: it tells of each attempt, breaker refusals
///   included, so one outcome is counted per attempt (SPEC §4) without a layer or any
///   per-request state of their own;
/// - the bulkhead (SPEC §8) between retry and breaker: its refusal is `rejected`
///   (`overloaded`), so retry does not retry it and the pipeline takes the fallback,
///   and the breaker never sees it (a busy agent is not a failing one);
/// - the timeout inside the breaker, so a timed-out attempt counts as a failure.
pub fn layered<S>(parts: &StackParts, inner: S) -> Stack<S> {
    ServiceBuilder::new()
        .layer(ProgressLayer::new())
        .layer(
            RetryLayer::new(parts.retry.clone())
                .on_attempt(parts.metrics.clone())
                .attempt_header(parts.attempt_header),
        )
        .layer(parts.bulkhead.clone())
        .layer(parts.breaker.clone())
        .layer(TimeoutLayer::new(parts.timeout))
        .service(inner)
}

/// [`layered`], boxed: a stack for requests with bodies of type `B` (its transport
/// gets them wrapped in a [`ReplayBody`]).
pub fn stack<S, B, RB>(
    parts: &StackParts,
    inner: S,
) -> BoxCloneSyncService<Request<B>, Response<RB>, BoxError>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    RB: Send + Sync + 'static,
{
    BoxCloneSyncService::new(layered(parts, inner))
}
