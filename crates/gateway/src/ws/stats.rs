//! What the gateway knows about its WebSocket connections: how many there are (and the
//! `max_ws_connections` limit), their figures, and the shutdown signal they watch.
//!
//! Upgraded connections leave hyper's `GracefulShutdown` once the upgrade is done, so
//! they are counted here instead: every connection holds a [`ConnectionGuard`] from the
//! moment its upgrade is accepted until its task ends, and [`WsRegistry::shutdown`]
//! waits for the count to reach zero.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::watch;

/// After its bound, [`WsRegistry::shutdown`] tells the connections still open to close at
/// once, and waits this long more for them to go.
const FORCED_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Default size, in frames, of each connection's queue of answers, and how many live
/// events a subscription may be behind before it skips ahead with `lagged` (the hub's
/// live buffer, 256 events, bounds that first).
pub const OUTGOING_QUEUE_FRAMES: usize = 1024;

/// The WebSocket side of one gateway. Cheap to clone; clones share everything.
#[derive(Clone, Debug)]
pub struct WsRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_connections: usize,
    /// Open connections (upgrades accepted and not yet ended).
    connections: watch::Sender<usize>,
    subscriptions: AtomicUsize,
    events_sent: AtomicU64,
    events_dropped: AtomicU64,
    phase: watch::Sender<Phase>,
    queue_frames: AtomicUsize,
    prom: Prom,
}

/// The process-wide Prometheus series (several gateways in one process add up).
#[derive(Debug)]
struct Prom {
    connections: Gauge,
    sent: Counter,
    dropped: Counter,
}

/// The `websocket` figures of `/api/orchestration/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WsStats {
    /// Open connections.
    pub connections: usize,
    /// Live query subscriptions across connections.
    pub subscriptions: usize,
    /// Events (query events and `circuit_breaker` events) written to clients.
    pub events_sent: u64,
    /// Events skipped because a client's outgoing queue was full.
    pub events_dropped: u64,
}

/// Where the gateway is in its life, as connections see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Normal service.
    Serving,
    /// Shutdown began: deliver the subscribed queries' terminal events, then close 1001.
    Draining,
    /// Close 1001 now, whatever is still queued.
    Closing,
}

/// One open connection; dropping it releases its slot.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    registry: WsRegistry,
}

/// One live query subscription, counted while it exists.
#[derive(Debug)]
pub(crate) struct SubscriptionGuard {
    registry: WsRegistry,
}

/// Registers the WebSocket series' descriptions with the installed recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_gauge!("agentgate_ws_connections", "Open WebSocket connections");
    metrics::describe_counter!(
        "agentgate_ws_events_sent_total",
        "Events written to WebSocket clients"
    );
    metrics::describe_counter!(
        "agentgate_ws_events_dropped_total",
        "Events skipped because a WebSocket client's outgoing queue was full"
    );
}

// === impl WsRegistry ===

impl WsRegistry {
    /// A registry admitting at most `max_connections` connections at once.
    pub fn new(max_connections: usize) -> Self {
        describe_metrics();
        let prom = Prom {
            connections: metrics::gauge!("agentgate_ws_connections"),
            sent: metrics::counter!("agentgate_ws_events_sent_total"),
            dropped: metrics::counter!("agentgate_ws_events_dropped_total"),
        };
        // Make the series visible (at 0) before the first connection.
        prom.connections.increment(0.0);
        prom.sent.increment(0);
        prom.dropped.increment(0);
        Self {
            inner: Arc::new(Inner {
                max_connections,
                connections: watch::Sender::new(0),
                subscriptions: AtomicUsize::new(0),
                events_sent: AtomicU64::new(0),
                events_dropped: AtomicU64::new(0),
                phase: watch::Sender::new(Phase::Serving),
                queue_frames: AtomicUsize::new(OUTGOING_QUEUE_FRAMES),
                prom,
            }),
        }
    }

    /// The figures now.
    pub fn stats(&self) -> WsStats {
        WsStats {
            connections: *self.inner.connections.borrow(),
            subscriptions: self.inner.subscriptions.load(Ordering::Relaxed),
            events_sent: self.inner.events_sent.load(Ordering::Relaxed),
            events_dropped: self.inner.events_dropped.load(Ordering::Relaxed),
        }
    }

    /// For connections opened from now on: the size of the answers queue, and how many
    /// live events a subscription may be behind before it skips ahead with `lagged`
    /// (default [`OUTGOING_QUEUE_FRAMES`]; at least 1). A tuning knob for tests and
    /// benchmarks: a small value makes slow-client handling easy to observe.
    pub fn set_queue_capacity(&self, frames: usize) {
        self.inner
            .queue_frames
            .store(frames.max(1), Ordering::Relaxed);
    }

    pub(crate) fn queue_capacity(&self) -> usize {
        self.inner.queue_frames.load(Ordering::Relaxed)
    }

    /// Takes a connection slot, or `None` at `max_connections`.
    pub(crate) fn try_connect(&self) -> Option<ConnectionGuard> {
        let max = self.inner.max_connections;
        let taken = self.inner.connections.send_if_modified(|n| {
            if *n >= max {
                false
            } else {
                *n += 1;
                true
            }
        });
        taken.then(|| {
            self.inner.prom.connections.increment(1.0);
            ConnectionGuard {
                registry: self.clone(),
            }
        })
    }

    /// The connection limit.
    pub(crate) fn max_connections(&self) -> usize {
        self.inner.max_connections
    }

    pub(crate) fn subscription(&self) -> SubscriptionGuard {
        self.inner.subscriptions.fetch_add(1, Ordering::Relaxed);
        SubscriptionGuard {
            registry: self.clone(),
        }
    }

    pub(crate) fn sent(&self, n: u64) {
        self.inner.events_sent.fetch_add(n, Ordering::Relaxed);
        self.inner.prom.sent.increment(n);
    }

    pub(crate) fn dropped(&self, n: u64) {
        if n > 0 {
            self.inner.events_dropped.fetch_add(n, Ordering::Relaxed);
            self.inner.prom.dropped.increment(n);
        }
    }

    pub(crate) fn phase(&self) -> watch::Receiver<Phase> {
        self.inner.phase.subscribe()
    }

    pub(crate) fn is_serving(&self) -> bool {
        *self.inner.phase.borrow() == Phase::Serving
    }

    /// Shutdown began: each connection delivers the terminal events of the queries it is
    /// subscribed to, then closes with 1001; idle connections close at once.
    pub(crate) fn start_draining(&self) {
        self.inner.phase.send_if_modified(|p| {
            if *p == Phase::Serving {
                *p = Phase::Draining;
                true
            } else {
                false
            }
        });
    }

    /// Waits up to `wait` for every connection to close after draining (call it once
    /// running queries have ended, so every terminal event is published); then closes
    /// the ones left with 1001 at once and waits a little more.
    pub async fn shutdown(&self, wait: Duration) {
        self.start_draining();
        let mut open = self.connections();
        if tokio::time::timeout(wait, open.wait_for(|n| *n == 0))
            .await
            .is_ok()
        {
            return;
        }
        tracing::info!(
            connections = *open.borrow(),
            "closing the WebSocket connections still delivering"
        );
        self.inner.phase.send_replace(Phase::Closing);
        if tokio::time::timeout(FORCED_CLOSE_WAIT, open.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                connections = *open.borrow(),
                "some WebSocket connections did not close in time"
            );
        }
    }

    /// The number of open connections, as it changes: for whatever must wait until
    /// connections have closed (shutdown does).
    pub fn connections(&self) -> watch::Receiver<usize> {
        self.inner.connections.subscribe()
    }
}

// === impl ConnectionGuard ===

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let inner = &self.registry.inner;
        inner.connections.send_modify(|n| *n = n.saturating_sub(1));
        inner.prom.connections.decrement(1.0);
    }
}

// === impl SubscriptionGuard ===

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.registry
            .inner
            .subscriptions
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_holds_and_slots_come_back() {
        let ws = WsRegistry::new(2);
        let a = ws.try_connect().expect("first");
        let _b = ws.try_connect().expect("second");
        assert!(ws.try_connect().is_none());
        assert_eq!(ws.stats().connections, 2);
        drop(a);
        assert_eq!(ws.stats().connections, 1);
        assert!(ws.try_connect().is_some());
    }

    #[test]
    fn figures_add_up() {
        let ws = WsRegistry::new(1);
        let sub = ws.subscription();
        ws.sent(3);
        ws.dropped(2);
        ws.dropped(0);
        assert_eq!(
            ws.stats(),
            WsStats {
                connections: 0,
                subscriptions: 1,
                events_sent: 3,
                events_dropped: 2
            }
        );
        drop(sub);
        assert_eq!(ws.stats().subscriptions, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_connections_then_forces_them() {
        let ws = WsRegistry::new(4);
        assert!(ws.is_serving());
        let guard = ws.try_connect().unwrap();
        let mut phase = ws.phase();
        let stopping = tokio::spawn({
            let ws = ws.clone();
            async move { ws.shutdown(Duration::from_secs(1)).await }
        });
        phase.changed().await.unwrap();
        assert_eq!(*phase.borrow_and_update(), Phase::Draining);
        phase.changed().await.unwrap();
        assert_eq!(*phase.borrow_and_update(), Phase::Closing);
        drop(guard);
        stopping.await.unwrap();
        assert_eq!(ws.stats().connections, 0);
    }
}
