//! Per-attempt agent metrics: `agentgate_agent_requests_total{agent,outcome}`,
//! `agentgate_agent_request_duration_seconds{agent}`, `agentgate_agent_retries_total{agent}`,
//! plus the same figures as atomics for the JSON metrics API.
//!
//! [`AgentMetrics`] is the retry layer's observer ([`AttemptObserver`]): the retry layer
//! sits over the circuit breaker, so it tells of every attempt — the ones the breaker
//! refuses included — and of nothing else: one outcome per attempt, as SPEC §4 counts
//! them, with no per-request state.

use std::sync::atomic::{AtomicU64, Ordering};

use agentgate_classify::{AttemptObserver, AttemptOutcome, AttemptRecord, FailureClass};
use metrics::{Counter, Histogram};

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
    metrics::describe_gauge!(
        crate::bulkhead::IN_FLIGHT,
        "Requests in flight to an agent with max_concurrency (holding a slot)"
    );
    metrics::describe_counter!(
        crate::bulkhead::OVERLOAD_REJECTED,
        "Requests refused by admission control, by scope (global, agent, connections)"
    );
}

/// One agent's counters. Shared by every request to that agent.
///
/// The series' handles are resolved once, here, so recording an attempt never looks a
/// series up. The figures for the JSON API are atomics, as few as can be: attempts and
/// timed attempts are sums of the outcome counters, not counters of their own (each
/// atomic add is a locked instruction on the request path).
#[derive(Debug)]
pub struct AgentMetrics {
    outcomes: [Counter; 4],
    duration: Histogram,
    retries_counter: Counter,
    successes: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    latency_micros: AtomicU64,
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
    /// Retries made (attempts after the first).
    pub retries: u64,
    /// Mean duration of attempts that reached the agent, in milliseconds.
    pub avg_latency_ms: f64,
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
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            latency_micros: AtomicU64::new(0),
        }
    }

    /// The figures now.
    pub fn stats(&self) -> AgentStats {
        let successes = self.successes.load(Ordering::Relaxed);
        let failures = self.failures.load(Ordering::Relaxed);
        let timeouts = self.timeouts.load(Ordering::Relaxed);
        let rejected = self.rejected.load(Ordering::Relaxed);
        // Every attempt but a rejected one reached the agent and was timed.
        let timed = successes + failures + timeouts;
        AgentStats {
            requests: timed + rejected,
            successes,
            failures,
            timeouts,
            rejected,
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
    /// Counts one finished attempt. An attempt that failed because of the caller (its
    /// own request body broke off or went over a limit) says nothing about the agent and
    /// is not counted, as a call the caller dropped is not.
    fn attempt_finished(&self, record: &AttemptRecord) {
        if record.error == Some(FailureClass::Cancelled) {
            return;
        }
        let (index, counter) = match record.outcome {
            AttemptOutcome::Success => (0, &self.successes),
            AttemptOutcome::Failure => (1, &self.failures),
            AttemptOutcome::Timeout => (2, &self.timeouts),
            AttemptOutcome::Rejected => (3, &self.rejected),
        };
        self.outcomes[index].increment(1);
        counter.fetch_add(1, Ordering::Relaxed);
        if record.attempt > 1 {
            self.retries_counter.increment(1);
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        // Rejections never reached the agent: their "latency" would only flatter it.
        if record.outcome != AttemptOutcome::Rejected {
            self.duration.record(record.duration.as_secs_f64());
            self.latency_micros
                .fetch_add(record.duration.as_micros() as u64, Ordering::Relaxed);
        }
    }
}
