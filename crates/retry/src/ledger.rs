//! What happened to each attempt of one call, shared by the layers that need to know:
//! the retry layer writes it, the metrics and progress layers observe it as it grows,
//! the pipeline and the proxy read it afterwards (`stages[].attempts`,
//! `x-agentgate-attempts`).
//!
//! The ledger travels in the request's extensions, so a caller that wants it inserts
//! one before calling and keeps a clone. Calls without one pay nothing for it.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentgate_circuit_breaker::CircuitOpen;
use agentgate_classify::{classify_error, is_caused_by, is_failure_status, BoxError, FailureClass};
use tokio::time::Instant;

/// How one attempt ended, as the `outcome` label of `agentgate_agent_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// The agent answered with a status that is not a failure.
    Success,
    /// The agent failed (5xx failure status, connect error, reset).
    Failure,
    /// The per-attempt timeout elapsed.
    Timeout,
    /// The circuit breaker refused the attempt.
    Rejected,
}

/// One attempt: SPEC's `{"attempt","status"?,"error"?,"duration_ms"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// 1-based attempt number.
    pub attempt: u32,
    /// The status the agent answered with, if it answered.
    pub status: Option<u16>,
    /// The failure class when the attempt failed without an answer (or with a failure
    /// status: `status`).
    pub error: Option<FailureClass>,
    /// How long the attempt took.
    pub duration: Duration,
    /// The metric outcome.
    pub outcome: AttemptOutcome,
}

/// Told about attempts as they happen. Implementations must not block: they run on the
/// request path.
pub trait AttemptObserver: Send + Sync + fmt::Debug {
    /// An attempt finished.
    fn attempt_finished(&self, record: &AttemptRecord);
    /// The retry policy scheduled attempt `next_attempt` after `delay`.
    fn retry_scheduled(&self, next_attempt: u32, delay: Duration);
}

/// The attempts of one call, in order. Cheap to clone; clones share the records.
#[derive(Clone, Default)]
pub struct AttemptLedger {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    records: Mutex<Vec<AttemptRecord>>,
    observers: Mutex<Vec<Arc<dyn AttemptObserver>>>,
}

/// The instant by which the whole call must be done (request extension). The retry
/// policy never schedules a retry whose backoff would end past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// Retries left for a whole query, shared by all its stages (request extension;
/// SPEC's `retry_allowance`).
#[derive(Clone, Debug)]
pub struct RetryAllowance(Arc<AtomicU32>);

// === impl AttemptOutcome ===

impl AttemptOutcome {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::Failure => "failure",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Rejected => "rejected",
        }
    }
}

// === impl AttemptRecord ===

impl AttemptRecord {
    /// Describes attempt `attempt` from its result.
    pub fn from_result<B>(
        attempt: u32,
        result: &Result<http::Response<B>, BoxError>,
        duration: Duration,
    ) -> Self {
        match result {
            Ok(res) => {
                let status = res.status();
                let failed = is_failure_status(status);
                Self {
                    attempt,
                    status: Some(status.as_u16()),
                    error: failed.then_some(FailureClass::Status),
                    duration,
                    outcome: if failed {
                        AttemptOutcome::Failure
                    } else {
                        AttemptOutcome::Success
                    },
                }
            }
            Err(err) => {
                let (class, outcome) = if is_caused_by::<CircuitOpen>(&**err) {
                    (FailureClass::Rejected, AttemptOutcome::Rejected)
                } else {
                    match classify_error(&**err) {
                        FailureClass::Timeout => (FailureClass::Timeout, AttemptOutcome::Timeout),
                        class => (class, AttemptOutcome::Failure),
                    }
                };
                Self {
                    attempt,
                    status: None,
                    error: Some(class),
                    duration,
                    outcome,
                }
            }
        }
    }
}

// === impl AttemptLedger ===

impl AttemptLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ledger of `req`, inserted into its extensions first if it has none.
    pub fn of<B>(req: &mut http::Request<B>) -> Self {
        if let Some(ledger) = req.extensions().get::<AttemptLedger>() {
            return ledger.clone();
        }
        let ledger = AttemptLedger::new();
        req.extensions_mut().insert(ledger.clone());
        ledger
    }

    /// Adds an observer told about every later attempt and retry.
    pub fn observe(&self, observer: Arc<dyn AttemptObserver>) {
        lock(&self.inner.observers).push(observer);
    }

    /// Attempts finished so far.
    pub fn attempts(&self) -> u32 {
        lock(&self.inner.records).len() as u32
    }

    /// Records a finished attempt and tells the observers.
    pub fn finish(&self, record: AttemptRecord) {
        lock(&self.inner.records).push(record);
        for o in lock(&self.inner.observers).iter() {
            o.attempt_finished(&record);
        }
    }

    /// Tells the observers a retry was scheduled.
    pub fn retry_scheduled(&self, next_attempt: u32, delay: Duration) {
        for o in lock(&self.inner.observers).iter() {
            o.retry_scheduled(next_attempt, delay);
        }
    }

    /// The finished attempts so far.
    pub fn records(&self) -> Vec<AttemptRecord> {
        lock(&self.inner.records).clone()
    }

    /// The last finished attempt.
    pub fn last(&self) -> Option<AttemptRecord> {
        lock(&self.inner.records).last().copied()
    }
}

impl fmt::Debug for AttemptLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptLedger")
            .field("started", &self.attempts())
            .field("records", &*lock(&self.inner.records))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl RetryAllowance ===

impl RetryAllowance {
    /// `n` retries to share.
    pub fn new(n: u32) -> Self {
        Self(Arc::new(AtomicU32::new(n)))
    }

    /// Retries left.
    pub fn remaining(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Takes one retry if any is left.
    pub fn try_take(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}
