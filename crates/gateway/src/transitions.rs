//! Every breaker's transitions in one feed, for whatever follows them all (the log,
//! WebSocket metrics subscribers, notifications), whatever agents a reload adds.
//!
//! A breaker publishes its transitions to whoever listens at that moment. The gateway
//! listens from the start: [`TransitionLog::new`] subscribes to the breakers it is
//! given (so nothing between building the state and serving is lost), a reload adds the
//! breakers it builds ([`TransitionLog::watch`]), and once serving, one task per breaker
//! logs each transition (`warn` when it opens) and hands it to the followers
//! ([`TransitionLog::follow`]). A breaker's task ends when the breaker is dropped (its
//! agent removed by a reload, once no running query uses it).

use std::sync::{Arc, Mutex, MutexGuard};

use agentgate_circuit_breaker::{CircuitBreakerHandle, State as BreakerState, Transition};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// How many transitions a follower may be behind before it skips ahead.
const LIVE_CAPACITY: usize = 256;

/// The transitions of every breaker. Cheap to clone; clones share the feed.
#[derive(Clone, Debug)]
pub struct TransitionLog {
    inner: Arc<Mutex<Log>>,
}

#[derive(Debug)]
struct Log {
    live: broadcast::Sender<Transition>,
    /// Breakers' feeds not followed by a task yet (until serving starts).
    feeds: Vec<broadcast::Receiver<Transition>>,
    /// The tasks of the feeds followed so far: set once serving has started.
    tasks: Option<Vec<JoinHandle<()>>>,
}

// === impl TransitionLog ===

impl TransitionLog {
    /// A log subscribed to `breakers` from now on.
    pub fn new<'a>(breakers: impl IntoIterator<Item = &'a CircuitBreakerHandle>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Log {
                live: broadcast::channel(LIVE_CAPACITY).0,
                feeds: breakers.into_iter().map(|b| b.subscribe()).collect(),
                tasks: None,
            })),
        }
    }

    /// A receiver of every transition from now on. One more than 256 transitions behind
    /// gets `Lagged` and goes on from the newest.
    pub fn follow(&self) -> broadcast::Receiver<Transition> {
        self.lock().live.subscribe()
    }

    /// Adds `breaker` (an agent a reload built): followed at once when serving, else
    /// once it starts.
    pub fn watch(&self, breaker: &CircuitBreakerHandle) {
        let feed = breaker.subscribe();
        let mut log = self.lock();
        let live = log.live.clone();
        match &mut log.tasks {
            Some(tasks) => tasks.push(tokio::spawn(record(feed, live))),
            None => log.feeds.push(feed),
        }
    }

    /// Starts following every breaker watched so far (and every later one at once).
    pub fn start(&self) {
        let mut log = self.lock();
        let live = log.live.clone();
        let started: Vec<JoinHandle<()>> = std::mem::take(&mut log.feeds)
            .into_iter()
            .map(|feed| tokio::spawn(record(feed, live.clone())))
            .collect();
        log.tasks.get_or_insert_with(Vec::new).extend(started);
    }

    /// Stops following (shutdown).
    pub fn stop(&self) {
        for task in self.lock().tasks.take().into_iter().flatten() {
            task.abort();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Logs and forwards the transitions of one breaker until it is dropped.
async fn record(mut feed: broadcast::Receiver<Transition>, live: broadcast::Sender<Transition>) {
    loop {
        match feed.recv().await {
            Ok(t) => {
                trace(&t);
                // No follower is fine.
                let _ = live.send(t);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "breaker transition log fell behind");
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// `warn` when a breaker opens, `info` otherwise.
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
