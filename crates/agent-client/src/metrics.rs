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

/// Upper bounds, in seconds, of the latency buckets (1 ms … 60 s): those of the
/// gateway's Prometheus histograms and of [`AgentStats::latency_buckets`], so that the
/// dashboard's p99 and Grafana's `histogram_quantile` agree.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// One counter per bucket of [`LATENCY_BUCKETS`], plus one above the last bound.
const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

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
    /// Timed attempts per latency bucket (not cumulative).
    latency_buckets: [AtomicU64; BUCKETS],
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
    /// Attempts that reached the agent and took at most `LATENCY_BUCKETS[i]`
    /// (cumulative, as Prometheus' `le` buckets); the last entry counts all of them.
    /// Differences between two snapshots give the latency distribution in between.
    pub latency_buckets: [u64; BUCKETS],
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
            latency_buckets: Default::default(),
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
        let mut latency_buckets = [0; BUCKETS];
        let mut below = 0;
        for (cumulative, bucket) in latency_buckets.iter_mut().zip(&self.latency_buckets) {
            below += bucket.load(Ordering::Relaxed);
            *cumulative = below;
        }
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
            latency_buckets,
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
            let secs = record.duration.as_secs_f64();
            self.duration.record(secs);
            self.latency_micros
                .fetch_add(record.duration.as_micros() as u64, Ordering::Relaxed);
            // The first bucket whose bound is not below the duration (`le`).
            let bucket = LATENCY_BUCKETS.partition_point(|bound| *bound < secs);
            self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn attempt(outcome: AttemptOutcome, millis: f64) -> AttemptRecord {
        AttemptRecord {
            attempt: 1,
            status: None,
            error: None,
            rejection: None,
            tls: false,
            duration: Duration::from_secs_f64(millis / 1000.0),
            outcome,
        }
    }

    #[test]
    fn latency_buckets_are_cumulative_le_counts_of_timed_attempts() {
        let m = AgentMetrics::new("buckets-test");
        for (outcome, ms) in [
            (AttemptOutcome::Success, 0.5),
            (AttemptOutcome::Success, 1.0), // on a bound: that bucket (`le`)
            (AttemptOutcome::Failure, 3.0),
            (AttemptOutcome::Timeout, 90_000.0), // above the last bound
            (AttemptOutcome::Rejected, 2.0),     // never reached the agent: not timed
        ] {
            m.attempt_finished(&attempt(outcome, ms));
        }
        let b = m.stats().latency_buckets;
        assert_eq!(b.len(), LATENCY_BUCKETS.len() + 1);
        // le 1 ms: 2; le 2.5 ms: 2; le 5 ms: 3; … le 60 s: 3; all: 4.
        assert_eq!((b[0], b[1], b[2]), (2, 2, 3));
        assert_eq!(b[LATENCY_BUCKETS.len() - 1], 3);
        assert_eq!(b[LATENCY_BUCKETS.len()], 4);
        assert!(b.windows(2).all(|w| w[0] <= w[1]), "{b:?}");
    }
}
