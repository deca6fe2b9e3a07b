//! What the writer and the subscriber share when Redis fails: the backoff between
//! attempts, and a warning that is counted every time but logged at most every 10 s.

use std::time::Duration;

use tokio::time::Instant;

use crate::RedisBackend;

/// Backoff between attempts while Redis is unreachable: doubles from 100 ms up to 2 s.
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Connection problems are logged at most this often (each is counted).
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Backoff {
    pub(crate) fn new() -> Self {
        Self(BACKOFF_MIN)
    }

    /// Back to the shortest pause (after a success).
    pub(crate) fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }

    /// Sleeps for the current pause, then doubles it.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }
}

/// Counts each failure in `agentgate_progress_redis_errors_total`; logs one at most
/// every [`LOG_EVERY`].
#[derive(Debug)]
pub(crate) struct FailureLog {
    what: &'static str,
    last: Option<Instant>,
}

impl FailureLog {
    /// `what` says what does not work meanwhile, in the warning.
    pub(crate) fn new(what: &'static str) -> Self {
        Self { what, last: None }
    }

    pub(crate) fn failed(&mut self, backend: &RedisBackend, e: &redis::RedisError) {
        metrics::counter!("agentgate_progress_redis_errors_total").increment(1);
        if self.last.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            self.last = Some(Instant::now());
            tracing::warn!(url = %crate::redact(&backend.settings().url), error = %e, "progress backend: {}", self.what);
        }
    }
}
