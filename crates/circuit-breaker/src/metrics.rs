//! The breaker's Prometheus series, through the `metrics` facade.

use metrics::{Counter, Gauge};

use crate::state::{Change, State};

const STATE: &str = "agentgate_circuit_breaker_state";
const TRANSITIONS: &str = "agentgate_circuit_breaker_transitions_total";
const REJECTED: &str = "agentgate_circuit_breaker_rejected_total";

/// Registers help texts for the breaker's metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        STATE,
        "Circuit breaker state per agent, one-hot over closed|open|half_open|forced_open|disabled"
    );
    metrics::describe_counter!(
        TRANSITIONS,
        "Circuit breaker state transitions per agent, by from, to and reason"
    );
    metrics::describe_counter!(
        REJECTED,
        "Calls rejected by an open circuit breaker without reaching the agent"
    );
}

/// Handles registered once per breaker, so the hot paths never look a series up.
#[derive(Debug)]
pub(crate) struct Metrics {
    agent: String,
    state: [Gauge; 5],
    rejected: Counter,
}

impl Metrics {
    pub(crate) fn new(agent: &str) -> Self {
        let state = State::ALL
            .map(|s| metrics::gauge!(STATE, "agent" => agent.to_owned(), "state" => s.as_str()));
        for (gauge, s) in state.iter().zip(State::ALL) {
            gauge.set(if s == State::Closed { 1.0 } else { 0.0 });
        }
        Self {
            agent: agent.to_owned(),
            state,
            rejected: metrics::counter!(REJECTED, "agent" => agent.to_owned()),
        }
    }

    pub(crate) fn transition(&self, change: &Change) {
        self.state[change.from.index()].set(0.0);
        self.state[change.to.index()].set(1.0);
        metrics::counter!(
            TRANSITIONS,
            "agent" => self.agent.clone(),
            "from" => change.from.as_str(),
            "to" => change.to.as_str(),
            "reason" => change.reason.as_str(),
        )
        .increment(1);
    }

    pub(crate) fn rejected(&self) {
        self.rejected.increment(1);
    }
}
