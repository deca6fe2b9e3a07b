//! Query figures for `/api/orchestration/metrics` (SPEC §4 `queries`).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::QueryStatus;

/// How many recent durations the percentiles are computed over.
pub(crate) const WINDOW: usize = 1024;

/// How far back [`QueryStats::recent_completed`] and [`QueryStats::recent_failed`] look:
/// what the gateway's health score calls "recent queries", so that it recovers after an
/// incident instead of remembering it for the life of the process.
pub const RECENT: Duration = Duration::from_secs(300);

/// The recent outcomes are counted in slots of this length (the window moves by it).
const SLOT: Duration = Duration::from_secs(10);

/// SPEC §4 `queries`: counts since the engine started, plus latency figures.
///
/// - `total` counts submitted queries (`completed + failed + cancelled + in_flight`);
/// - `success_rate` is `completed / (completed + failed)`: cancellations are the
///   client's (or the operator's) choice, not failures. It is 1.0 before any query
///   finished, so a fresh gateway does not look unhealthy;
/// - `avg_duration_ms` covers every completed or failed query since start, the
///   percentiles (nearest rank) the last 1024 of them. Cancelled queries are left out of
///   both: how long they ran says when someone gave up, not how fast agents answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct QueryStats {
    /// Queries submitted.
    pub total: u64,
    /// Queries that completed.
    pub completed: u64,
    /// Queries that failed.
    pub failed: u64,
    /// Queries that were cancelled.
    pub cancelled: u64,
    /// Queries running now.
    pub in_flight: u64,
    /// `completed / (completed + failed)`, 1.0 when none finished.
    pub success_rate: f64,
    /// Mean duration of completed and failed queries.
    pub avg_duration_ms: f64,
    /// Median duration of the recent completed and failed queries.
    pub p50_ms: f64,
    /// 95th percentile of the same.
    pub p95_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// Queries completed within the last [`RECENT`] (5 minutes).
    pub recent_completed: u64,
    /// Queries failed within the last [`RECENT`] (5 minutes).
    pub recent_failed: u64,
}

/// Collects [`QueryStats`]. Touched once per submit and once per finish.
#[derive(Debug, Default)]
pub(crate) struct StatsCollector {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
    duration_sum_ms: f64,
    recent: VecDeque<f64>,
    /// Completed and failed queries per [`SLOT`], oldest first, within [`RECENT`].
    outcomes: VecDeque<Slot>,
}

/// The outcomes of one [`SLOT`].
#[derive(Debug)]
struct Slot {
    start: Instant,
    completed: u64,
    failed: u64,
}

// === impl StatsCollector ===

impl StatsCollector {
    pub(crate) fn submitted(&self) {
        self.lock().total += 1;
    }

    pub(crate) fn finished(&self, status: QueryStatus, duration: Duration) {
        let mut s = self.lock();
        let failed = status == QueryStatus::Failed;
        if matches!(status, QueryStatus::Completed | QueryStatus::Failed) {
            let slot = s.slot(Instant::now());
            if failed {
                slot.failed += 1;
            } else {
                slot.completed += 1;
            }
        }
        match status {
            QueryStatus::Completed => s.completed += 1,
            QueryStatus::Failed => s.failed += 1,
            QueryStatus::Cancelled => {
                s.cancelled += 1;
                return;
            }
            QueryStatus::Running => return,
        }
        let ms = duration.as_secs_f64() * 1000.0;
        s.duration_sum_ms += ms;
        if s.recent.len() == WINDOW {
            s.recent.pop_front();
        }
        s.recent.push_back(ms);
    }

    /// All figures from one instant (`in_flight` included).
    pub(crate) fn snapshot(&self) -> QueryStats {
        let s = self.lock();
        let in_flight = s.total.saturating_sub(s.completed + s.failed + s.cancelled);
        let timed = s.completed + s.failed;
        let mut recent: Vec<f64> = s.recent.iter().copied().collect();
        recent.sort_by(f64::total_cmp);
        let now = Instant::now();
        let live = s
            .outcomes
            .iter()
            .filter(|slot| now.saturating_duration_since(slot.start) < RECENT);
        let (recent_completed, recent_failed) =
            live.fold((0, 0), |(c, f), slot| (c + slot.completed, f + slot.failed));
        QueryStats {
            total: s.total,
            completed: s.completed,
            failed: s.failed,
            cancelled: s.cancelled,
            in_flight,
            success_rate: if timed == 0 {
                1.0
            } else {
                s.completed as f64 / timed as f64
            },
            avg_duration_ms: if timed == 0 {
                0.0
            } else {
                s.duration_sum_ms / timed as f64
            },
            p50_ms: percentile(&recent, 50.0),
            p95_ms: percentile(&recent, 95.0),
            p99_ms: percentile(&recent, 99.0),
            recent_completed,
            recent_failed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// The slot counting outcomes at `now`: the newest, or a new one once it is
    /// [`SLOT`] old. Slots that left [`RECENT`] are dropped.
    fn slot(&mut self, now: Instant) -> &mut Slot {
        while self
            .outcomes
            .front()
            .is_some_and(|slot| now.saturating_duration_since(slot.start) >= RECENT)
        {
            self.outcomes.pop_front();
        }
        let fresh = self
            .outcomes
            .back()
            .is_none_or(|slot| now.saturating_duration_since(slot.start) >= SLOT);
        if fresh {
            self.outcomes.push_back(Slot {
                start: now,
                completed: 0,
                failed: 0,
            });
        }
        self.outcomes.back_mut().expect("pushed above")
    }
}

/// Nearest-rank percentile of sorted values (0 when there are none).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn recent_outcomes_leave_the_window_after_five_minutes() {
        let c = StatsCollector::default();
        for _ in 0..5 {
            c.finished(QueryStatus::Failed, Duration::from_millis(5));
        }
        c.finished(QueryStatus::Cancelled, Duration::from_millis(5));
        let s = c.snapshot();
        assert_eq!((s.recent_completed, s.recent_failed), (0, 5));
        tokio::time::advance(Duration::from_secs(150)).await;
        c.finished(QueryStatus::Completed, Duration::from_millis(5));
        let s = c.snapshot();
        assert_eq!((s.recent_completed, s.recent_failed), (1, 5));
        // The failures are 5 minutes old: they leave; the success 2.5 minutes later stays.
        tokio::time::advance(Duration::from_secs(150)).await;
        let s = c.snapshot();
        assert_eq!((s.recent_completed, s.recent_failed), (1, 0));
        assert_eq!((s.completed, s.failed), (1, 5), "lifetime counts stay");
        tokio::time::advance(RECENT).await;
        let s = c.snapshot();
        assert_eq!((s.recent_completed, s.recent_failed), (0, 0));
    }

    #[test]
    fn counts_rates_and_window() {
        let c = StatsCollector::default();
        assert_eq!(c.snapshot().success_rate, 1.0);
        for _ in 0..4 {
            c.submitted();
        }
        c.finished(QueryStatus::Completed, Duration::from_millis(10));
        c.finished(QueryStatus::Completed, Duration::from_millis(30));
        c.finished(QueryStatus::Failed, Duration::from_millis(20));
        c.finished(QueryStatus::Cancelled, Duration::from_secs(100));
        let s = c.snapshot();
        assert_eq!((s.total, s.completed, s.failed, s.cancelled), (4, 2, 1, 1));
        assert!((s.success_rate - 2.0 / 3.0).abs() < 1e-9);
        assert!((s.avg_duration_ms - 20.0).abs() < 1e-9);
        assert_eq!((s.p50_ms, s.p99_ms), (20.0, 30.0));

        for _ in 0..WINDOW {
            c.finished(QueryStatus::Completed, Duration::from_millis(1));
        }
        assert_eq!(c.snapshot().p99_ms, 1.0, "old durations left the window");
    }
}
