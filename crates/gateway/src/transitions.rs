//! The recent circuit-breaker transitions of every agent, kept by the gateway.
//!
//! A breaker only publishes its transitions to whoever listens at that moment, so a
//! dashboard opened after a trip saw an OPEN breaker and an empty transition list. The
//! gateway listens from the start instead: the log subscribes to every breaker when it
//! is built (so nothing between building the state and serving is lost), and once
//! serving, one task per breaker logs each transition (`warn` when it opens) and
//! records it here, the last [`RECENT_PER_AGENT`] per agent (per agent, so that one
//! flapping breaker cannot push another agent's trip out).
//!
//! Readers get the recorded transitions and the live ones after them from one place,
//! [`TransitionLog::follow`], taken under one lock: none is missed between the two and
//! none comes twice.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use agentgate_circuit_breaker::{CircuitBreakerHandle, State as BreakerState, Transition};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// How many transitions are kept per agent.
pub const RECENT_PER_AGENT: usize = 20;

/// How many live transitions a follower may be behind before it skips ahead.
const LIVE_CAPACITY: usize = 256;

/// The recent transitions of every breaker, and a feed of the next ones. Cheap to
/// clone; clones share the log.
#[derive(Clone, Debug)]
pub struct TransitionLog {
    inner: Arc<Mutex<Log>>,
}

#[derive(Debug)]
struct Log {
    per_agent: usize,
    recent: BTreeMap<Arc<str>, VecDeque<Transition>>,
    live: broadcast::Sender<Transition>,
    /// The breakers' feeds, until [`TransitionLog::spawn_recorders`] takes them.
    feeds: Vec<broadcast::Receiver<Transition>>,
}

// === impl TransitionLog ===

impl TransitionLog {
    /// An empty log keeping `per_agent` transitions of each agent (at least 1),
    /// subscribed to `breakers` from now on.
    pub fn new<'a>(
        per_agent: usize,
        breakers: impl IntoIterator<Item = &'a CircuitBreakerHandle>,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Log {
                per_agent: per_agent.max(1),
                recent: BTreeMap::new(),
                live: broadcast::channel(LIVE_CAPACITY).0,
                feeds: breakers.into_iter().map(|b| b.subscribe()).collect(),
            })),
        }
    }

    /// The kept transitions of every agent, oldest first.
    pub fn recent(&self) -> Vec<Transition> {
        self.lock().merged()
    }

    /// The kept transitions of `agent`, oldest first.
    pub fn recent_of(&self, agent: &str) -> Vec<Transition> {
        self.lock()
            .recent
            .get(agent)
            .map(|kept| kept.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The kept transitions (oldest first) and a receiver of every later one. A
    /// receiver more than 256 transitions behind gets `Lagged` and goes on from the
    /// newest.
    pub fn follow(&self) -> (Vec<Transition>, broadcast::Receiver<Transition>) {
        let log = self.lock();
        (log.merged(), log.live.subscribe())
    }

    /// Records `t` and hands it to the followers.
    pub fn record(&self, t: Transition) {
        let mut log = self.lock();
        let per_agent = log.per_agent;
        let kept = log.recent.entry(t.agent.clone()).or_default();
        if kept.len() == per_agent {
            kept.pop_front();
        }
        kept.push_back(t.clone());
        // No follower is fine: the transition is kept all the same.
        let _ = log.live.send(t);
    }

    /// Starts one task per breaker that logs and records its transitions, from the
    /// first since [`TransitionLog::new`]. The tasks end when their breakers are
    /// dropped; abort them to stop earlier. A second call starts nothing.
    pub fn spawn_recorders(&self) -> Vec<JoinHandle<()>> {
        let feeds = std::mem::take(&mut self.lock().feeds);
        feeds
            .into_iter()
            .map(|mut events| {
                let log = self.clone();
                tokio::spawn(async move {
                    loop {
                        match events.recv().await {
                            Ok(t) => {
                                trace(&t);
                                log.record(t);
                            }
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!(skipped = n, "breaker transition log fell behind");
                            }
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                    }
                })
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl Log ===

impl Log {
    /// Every agent's kept transitions in the order they happened.
    fn merged(&self) -> Vec<Transition> {
        let mut all: Vec<Transition> = self.recent.values().flatten().cloned().collect();
        // Stable: two transitions of one agent at the same instant keep their order.
        all.sort_by_key(|t| t.at);
        all
    }
}

/// Logs one transition: `warn` when a breaker opens, `info` otherwise.
fn trace(t: &Transition) {
    if matches!(t.to, BreakerState::Open | BreakerState::ForcedOpen) {
        tracing::warn!(agent = %t.agent, from = %t.from, to = %t.to, reason = %t.reason,
            calls_in_window = t.calls_in_window, failure_rate = t.failure_rate,
            consecutive_failures = t.consecutive_failures, "circuit breaker opened");
    } else {
        tracing::info!(agent = %t.agent, from = %t.from, to = %t.to, reason = %t.reason,
            "circuit breaker transition");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use agentgate_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, Reason};
    use tokio::time::Instant;

    use super::*;

    fn transition(agent: &str, to: BreakerState, at: Instant) -> Transition {
        Transition {
            agent: agent.into(),
            from: BreakerState::Closed,
            to,
            reason: Reason::Manual,
            at,
            wall: SystemTime::UNIX_EPOCH,
            calls_in_window: 0,
            failure_rate: 0.0,
            consecutive_failures: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_the_last_few_per_agent_in_the_order_they_happened() {
        let log = TransitionLog::new(2, []);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        log.record(transition("a", BreakerState::Open, at(1)));
        log.record(transition("b", BreakerState::Open, at(2)));
        log.record(transition("a", BreakerState::HalfOpen, at(3)));
        log.record(transition("a", BreakerState::Closed, at(4)));
        // `a` keeps its last two; `b`'s only one is not pushed out by `a`'s.
        let seen: Vec<(&str, BreakerState)> = log
            .recent()
            .iter()
            .map(|t| (if &*t.agent == "a" { "a" } else { "b" }, t.to))
            .collect();
        assert_eq!(
            seen,
            [
                ("b", BreakerState::Open),
                ("a", BreakerState::HalfOpen),
                ("a", BreakerState::Closed)
            ]
        );
        assert_eq!(log.recent_of("b").len(), 1);
        assert!(log.recent_of("nobody").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_gets_the_kept_ones_then_each_later_one_once() {
        let log = TransitionLog::new(RECENT_PER_AGENT, []);
        let t0 = Instant::now();
        log.record(transition("a", BreakerState::Open, t0));
        let (kept, mut live) = log.follow();
        assert_eq!(kept.len(), 1);
        log.record(transition("a", BreakerState::HalfOpen, t0));
        assert_eq!(live.recv().await.unwrap().to, BreakerState::HalfOpen);
        assert!(live.try_recv().is_err(), "nothing twice");
    }

    #[tokio::test]
    async fn recorders_keep_what_a_real_breaker_published_before_they_started() {
        let layer = CircuitBreakerLayer::try_new("nlp", CircuitBreakerConfig::default()).unwrap();
        let breaker = layer.handle();
        let log = TransitionLog::new(RECENT_PER_AGENT, [&breaker]);
        let (_, mut live) = log.follow();
        // Before any recorder runs (as between building the state and serving).
        breaker.force_open(None);
        let tasks = log.spawn_recorders();
        assert!(log.spawn_recorders().is_empty(), "the feeds are taken once");
        let t = live.recv().await.unwrap();
        assert_eq!((&*t.agent, t.to), ("nlp", BreakerState::ForcedOpen));
        assert_eq!(log.recent_of("nlp"), vec![t]);
        for task in tasks {
            task.abort();
        }
    }
}
