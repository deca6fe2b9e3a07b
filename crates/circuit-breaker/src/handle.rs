use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::breaker::{Core, Manual};
use crate::{CircuitBreakerConfig, Reason, State};

/// Reads and steers one breaker from outside the request path (the admin API, the
/// dashboard, metrics). Cheap to clone; every clone sees the same breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreakerHandle {
    breaker: Arc<Core>,
}

/// A consistent view of a breaker at one instant.
///
/// Time-driven changes (open → half_open when the open period ends) are applied before
/// the snapshot is taken, so the state reported is always the state the next call would
/// meet.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The breaker's name (the agent).
    pub agent: Arc<str>,
    /// The state.
    pub state: State,
    /// Why it is open (or forced open); `None` while closed or disabled.
    pub trip_reason: Option<Reason>,
    /// Failures in a row while closed.
    pub consecutive_failures: u32,
    /// Failures / calls in the window (0 when the window is empty).
    pub failure_rate: f64,
    /// Slow calls / calls in the window.
    pub slow_call_rate: f64,
    /// Calls counted in the window.
    pub calls_in_window: u64,
    /// Failures counted in the window.
    pub failures_in_window: u64,
    /// Slow calls counted in the window.
    pub slow_calls_in_window: u64,
    /// When the breaker last opened, if it is open or forced open.
    pub opened_at: Option<SystemTime>,
    /// Time left before probes are admitted, when open (or forced open with an expiry).
    pub retry_after: Option<Duration>,
    /// Probes in flight while half-open.
    pub half_open_in_flight: u32,
    /// Transitions since the breaker was built.
    pub transitions: u64,
    /// Calls rejected since the breaker was built.
    pub rejected: u64,
}

/// One state transition, as published to [`CircuitBreakerHandle::subscribe`]rs.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The breaker's name (the agent).
    pub agent: Arc<str>,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// When it took effect (a time-driven change is stamped with the instant it was due,
    /// even if it was observed later).
    pub at: Instant,
    /// The same instant on the wall clock, for `ts` fields.
    pub wall: SystemTime,
    /// Calls in the window just before the change (for alert messages).
    pub calls_in_window: u64,
    /// Failure rate in the window just before the change.
    pub failure_rate: f64,
    /// Consecutive failures just before the change.
    pub consecutive_failures: u32,
}

/// The answer to an operator action: `{agent, from, to}` of SPEC §4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManualChange {
    /// The breaker's name.
    pub agent: Arc<str>,
    /// State before the action.
    pub from: State,
    /// State after it.
    pub to: State,
}

// === impl CircuitBreakerHandle ===

impl CircuitBreakerHandle {
    pub(crate) fn new(breaker: Arc<Core>) -> Self {
        Self { breaker }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        self.breaker.name()
    }

    /// Whether `other` is a handle of this same breaker (one state for both).
    pub fn same_as(&self, other: &CircuitBreakerHandle) -> bool {
        Arc::ptr_eq(&self.breaker, &other.breaker)
    }

    /// The configuration the breaker was built with.
    pub fn config(&self) -> &CircuitBreakerConfig {
        self.breaker.config()
    }

    /// The breaker's state and window now.
    pub fn snapshot(&self) -> Snapshot {
        self.breaker.snapshot(Instant::now())
    }

    /// Closes the breaker, clears its window and the open-period doubling.
    pub fn reset(&self) -> ManualChange {
        self.breaker.manual(Manual::Reset, Instant::now())
    }

    /// Rejects every call for `duration` (then half-open), or until reset when `None`.
    pub fn force_open(&self, duration: Option<Duration>) -> ManualChange {
        self.breaker
            .manual(Manual::ForceOpen(duration), Instant::now())
    }

    /// Lets every call through without counting, until reset or forced open.
    pub fn disable(&self) -> ManualChange {
        self.breaker.manual(Manual::Disable, Instant::now())
    }

    /// Every later transition, including manual ones. A receiver that falls more than
    /// 256 events behind gets `RecvError::Lagged` and continues from the newest.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.breaker.subscribe()
    }
}
