//! Per-attempt agent metrics: `agentgate_agent_requests_total{agent,outcome}`,
//! `agentgate_agent_request_duration_seconds{agent}`, `agentgate_agent_retries_total{agent}`,
//! plus the same figures as atomics for the JSON metrics API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agentgate_retry::{AttemptLedger, AttemptObserver, AttemptOutcome, AttemptRecord};
use http::Request;
use metrics::{Counter, Histogram};
use tower_layer::Layer;
use tower_service::Service;

const REQUESTS: &str = "agentgate_agent_requests_total";
const DURATION: &str = "agentgate_agent_request_duration_seconds";
const RETRIES: &str = "agentgate_agent_retries_total";

/// Registers help texts for the agent metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        REQUESTS,
        "Attempts sent to an agent, by outcome (one per attempt)"
    );
    metrics::describe_histogram!(
        DURATION,
        metrics::Unit::Seconds,
        "Duration of each attempt to an agent"
    );
    metrics::describe_counter!(RETRIES, "Retries scheduled for calls to an agent");
}

/// One agent's counters. Shared by every request to that agent.
#[derive(Debug)]
pub struct AgentMetrics {
    outcomes: [Counter; 4],
    duration: Histogram,
    retries_counter: Counter,
    requests: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    latency_micros: AtomicU64,
    timed: AtomicU64,
}

/// A snapshot of one agent's figures (SPEC §4 `agents.{name}`, less the breaker).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AgentStats {
    /// Attempts sent (including rejected ones).
    pub requests: u64,
    /// Attempts that succeeded.
    pub successes: u64,
    /// Attempts that failed (not counting timeouts and rejections).
    pub failures: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Attempts the breaker rejected.
    pub rejected: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Mean duration of attempts that reached the agent, in milliseconds.
    pub avg_latency_ms: f64,
}

/// Installs [`AgentMetrics`] as an observer of every request's attempt ledger.
#[derive(Clone, Debug)]
pub struct AgentMetricsLayer {
    metrics: Arc<AgentMetrics>,
}

/// The service built by [`AgentMetricsLayer`].
#[derive(Clone, Debug)]
pub struct AgentMetricsService<S> {
    inner: S,
    metrics: Arc<AgentMetrics>,
}

// === impl AgentMetrics ===

impl AgentMetrics {
    /// Registers the series of `agent`.
    pub fn new(agent: &str) -> Self {
        let outcome = |o: AttemptOutcome| metrics::counter!(REQUESTS, "agent" => agent.to_owned(), "outcome" => o.as_str());
        Self {
            outcomes: [
                outcome(AttemptOutcome::Success),
                outcome(AttemptOutcome::Failure),
                outcome(AttemptOutcome::Timeout),
                outcome(AttemptOutcome::Rejected),
            ],
            duration: metrics::histogram!(DURATION, "agent" => agent.to_owned()),
            retries_counter: metrics::counter!(RETRIES, "agent" => agent.to_owned()),
            requests: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            latency_micros: AtomicU64::new(0),
            timed: AtomicU64::new(0),
        }
    }

    /// The figures now.
    pub fn stats(&self) -> AgentStats {
        let timed = self.timed.load(Ordering::Relaxed);
        AgentStats {
            requests: self.requests.load(Ordering::Relaxed),
            successes: self.successes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            avg_latency_ms: if timed == 0 {
                0.0
            } else {
                self.latency_micros.load(Ordering::Relaxed) as f64 / timed as f64 / 1000.0
            },
        }
    }
}

impl AttemptObserver for AgentMetrics {
    fn attempt_finished(&self, record: &AttemptRecord) {
        let (index, counter) = match record.outcome {
            AttemptOutcome::Success => (0, &self.successes),
            AttemptOutcome::Failure => (1, &self.failures),
            AttemptOutcome::Timeout => (2, &self.timeouts),
            AttemptOutcome::Rejected => (3, &self.rejected),
        };
        self.outcomes[index].increment(1);
        counter.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        // Rejections never reached the agent: their "latency" would only flatter it.
        if record.outcome != AttemptOutcome::Rejected {
            self.duration.record(record.duration.as_secs_f64());
            self.latency_micros
                .fetch_add(record.duration.as_micros() as u64, Ordering::Relaxed);
            self.timed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn retry_scheduled(&self, _next_attempt: u32, _delay: Duration) {
        self.retries_counter.increment(1);
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

// === impl AgentMetricsLayer ===

impl AgentMetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<AgentMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for AgentMetricsLayer {
    type Service = AgentMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AgentMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

impl<S, B> Service<Request<B>> for AgentMetricsService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ledger = AttemptLedger::of(&mut req);
        ledger.observe(self.metrics.clone());
        self.inner.call(req)
    }
}
