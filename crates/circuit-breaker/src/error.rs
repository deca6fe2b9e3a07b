//! Errors returned by the circuit breaker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agentgate_classify::{Rejected, Rejection};

use crate::State;

/// The breaker refused the call without touching the inner service.
///
/// Look for it with `agentgate_classify::is_caused_by::<CircuitOpen>()`. Its `source()`
/// is the [`Rejected`] marker every refusal by one of agentgate's layers carries, so
/// layers that do not know the breaker (retry, progress) still see a refusal, and it
/// classifies as [`FailureClass::Rejected`](agentgate_classify::FailureClass::Rejected):
/// neither retried nor counted against any breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitOpen {
    agent: Arc<str>,
    state: State,
    rejected: Rejected,
}

// === impl CircuitOpen ===

impl CircuitOpen {
    pub(crate) fn new(agent: Arc<str>, state: State, retry_after: Option<Duration>) -> Self {
        Self {
            agent,
            state,
            rejected: Rejected::new(Rejection::CircuitOpen, retry_after),
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
        self.rejected.retry_after()
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker for agent `{}` is {}",
            self.agent, self.state
        )?;
        if let Some(d) = self.retry_after() {
            write!(f, "; retry in {:.3}s", d.as_secs_f64())?;
        }
        Ok(())
    }
}

impl std::error::Error for CircuitOpen {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.rejected)
    }
}
