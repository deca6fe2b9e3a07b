//! Errors returned by the circuit breaker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::State;

/// The breaker refused the call without touching the inner service.
///
/// Look for it with `agentgate_classify::is_caused_by::<CircuitOpen>()`; it classifies
/// as [`FailureClass::Rejected`](agentgate_classify::FailureClass::Rejected), which is
/// neither retried nor counted against any breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitOpen {
    agent: Arc<str>,
    state: State,
    retry_after: Option<Duration>,
}

// === impl CircuitOpen ===

impl CircuitOpen {
    pub(crate) fn new(agent: Arc<str>, state: State, retry_after: Option<Duration>) -> Self {
        Self {
            agent,
            state,
            retry_after,
        }
    }

    /// The breaker's name (the agent it protects).
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The state that rejected the call: `open`, `forced_open` or `half_open` (all probe
    /// permits taken).
    pub fn state(&self) -> State {
        self.state
    }

    /// How long until the breaker lets a probe through, when known. An expiry-less
    /// forced-open breaker and a half-open breaker whose probes are in flight say `None`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker for agent `{}` is {}",
            self.agent, self.state
        )?;
        if let Some(d) = self.retry_after {
            write!(f, "; retry in {:.3}s", d.as_secs_f64())?;
        }
        Ok(())
    }
}

impl std::error::Error for CircuitOpen {}
