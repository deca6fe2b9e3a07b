//! What every layer may want to know about the attempts of one call, in one vocabulary:
//! which attempt a request is ([`AttemptNumber`], a request extension), how an attempt
//! ended ([`AttemptRecord`]), and who is told ([`AttemptObserver`], and the per-request
//! [`AttemptLedger`]).
//!
//! The retry layer is the one place that produces records: it times each attempt,
//! classifies its result and tells the observers it was built with (per-agent metrics)
//! and the observers of the request's ledger (a pipeline stage's record, progress events).
//! Nothing is allocated for a request without a ledger.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::Response;

use crate::{
    cause_ref, classify_error, is_caused_by, is_failure_status, BoxError, FailureClass, Rejected,
    Rejection, TlsFailure,
};

/// Which attempt a request is (request extension, set by the retry layer on every retry
/// it sends). A request without one is a first attempt: [`AttemptNumber::of`] says 1, and
/// the common case costs no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttemptNumber(pub u32);

// === impl AttemptNumber ===

impl AttemptNumber {
    /// The attempt a request with these extensions is: 1 unless a retry layer numbered it.
    pub fn of(extensions: &http::Extensions) -> u32 {
        extensions.get::<AttemptNumber>().map_or(1, |n| n.0)
    }
}

/// How one attempt ended, as the `outcome` label of `agentgate_agent_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// The agent answered with a status that is not a failure.
    Success,
    /// The agent failed (5xx failure status, connect error, reset, bad response).
    Failure,
    /// The per-attempt timeout elapsed.
    Timeout,
    /// One of our own layers refused the attempt (open breaker, full bulkhead).
    Rejected,
}

/// One finished attempt: SPEC's `{"attempt","status"?,"error"?,"duration_ms"}` and the
/// metric outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// 1-based attempt number.
    pub attempt: u32,
    /// The status the agent answered with, if it answered.
    pub status: Option<u16>,
    /// The failure class when the attempt failed without an answer, or `Status` for a
    /// failure status.
    pub error: Option<FailureClass>,
    /// Which of our layers refused it, for a rejected attempt.
    pub rejection: Option<Rejection>,
    /// The attempt failed in the TLS handshake ([`crate::TlsFailure`]; class
    /// `connect`, kind `tls`).
    pub tls: bool,
    /// How long the attempt took.
    pub duration: Duration,
    /// The metric outcome.
    pub outcome: AttemptOutcome,
}

/// Told about attempts as they happen. Implementations run on the request path: they
/// must not block, and must not call back into the ledger that tells them.
pub trait AttemptObserver: Send + Sync + fmt::Debug {
    /// An attempt finished.
    fn attempt_finished(&self, record: &AttemptRecord);

    /// Attempt `next_attempt` will be sent after `delay`.
    fn retry_scheduled(&self, next_attempt: u32, delay: Duration) {
        let _ = (next_attempt, delay);
    }
}

/// The attempts of one call, in order, and the observers of that call (request
/// extension). A caller that wants to know inserts one before calling and keeps a
/// clone; layers add observers ([`AttemptLedger::of`]). Cheap to clone: clones share
/// the records.
#[derive(Clone, Default)]
pub struct AttemptLedger {
    inner: Arc<Mutex<Ledger>>,
}

#[derive(Default)]
struct Ledger {
    records: Vec<AttemptRecord>,
    observers: Vec<Arc<dyn AttemptObserver>>,
}

// === impl AttemptOutcome ===

impl AttemptOutcome {
    /// The label value (`success`, `failure`, `timeout`, `rejected`).
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
        result: &Result<Response<B>, BoxError>,
        duration: Duration,
    ) -> Self {
        match result {
            Ok(res) => {
                let failed = is_failure_status(res.status());
                Self {
                    attempt,
                    status: Some(res.status().as_u16()),
                    error: failed.then_some(FailureClass::Status),
                    rejection: None,
                    tls: false,
                    duration,
                    outcome: if failed {
                        AttemptOutcome::Failure
                    } else {
                        AttemptOutcome::Success
                    },
                }
            }
            Err(err) => Self::from_error(attempt, &**err, duration),
        }
    }

    /// Describes attempt `attempt` that failed with `err`.
    pub fn from_error(
        attempt: u32,
        err: &(dyn std::error::Error + 'static),
        duration: Duration,
    ) -> Self {
        let rejection = cause_ref::<Rejected>(err).map(Rejected::reason);
        let class = match rejection {
            Some(_) => FailureClass::Rejected,
            None => classify_error(err),
        };
        let outcome = match class {
            FailureClass::Rejected => AttemptOutcome::Rejected,
            FailureClass::Timeout => AttemptOutcome::Timeout,
            _ => AttemptOutcome::Failure,
        };
        Self {
            attempt,
            status: None,
            error: Some(class),
            rejection,
            tls: rejection.is_none() && is_caused_by::<TlsFailure>(err),
            duration,
            outcome,
        }
    }

    /// The SPEC error kind of a failed attempt: the refusal (`circuit_open`, …), `tls`
    /// for a TLS failure, else the failure class; `status` for any answer (even one the breaker calls a success,
    /// such as a 404, which still gives a pipeline stage no output). `None` for a 2xx.
    pub fn error_kind(&self) -> Option<&'static str> {
        match (self.rejection, self.error, self.status) {
            (Some(r), _, _) => Some(r.as_str()),
            (None, Some(_), _) if self.tls => Some("tls"),
            (None, Some(class), _) => Some(class.as_str()),
            (None, None, Some(s)) if (200..300).contains(&s) => None,
            (None, None, _) => Some(FailureClass::Status.as_str()),
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
        self.lock().observers.push(observer);
    }

    /// Attempts finished so far.
    pub fn attempts(&self) -> u32 {
        self.lock().records.len() as u32
    }

    /// Records a finished attempt and tells the observers.
    pub fn finish(&self, record: AttemptRecord) {
        let mut ledger = self.lock();
        ledger.records.push(record);
        for o in &ledger.observers {
            o.attempt_finished(&record);
        }
    }

    /// Tells the observers a retry was scheduled.
    pub fn retry_scheduled(&self, next_attempt: u32, delay: Duration) {
        for o in &self.lock().observers {
            o.retry_scheduled(next_attempt, delay);
        }
    }

    /// The finished attempts so far.
    pub fn records(&self) -> Vec<AttemptRecord> {
        self.lock().records.clone()
    }

    /// The last finished attempt.
    pub fn last(&self) -> Option<AttemptRecord> {
        self.lock().records.last().copied()
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for AttemptLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ledger = self.lock();
        f.debug_struct("AttemptLedger")
            .field("records", &ledger.records)
            .field("observers", &ledger.observers.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rejected;

    #[derive(Debug)]
    struct Open(Rejected);
    impl fmt::Display for Open {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("open")
        }
    }
    impl std::error::Error for Open {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn records_from_answers_and_errors() {
        let answer = |s: u16| -> Result<Response<()>, BoxError> {
            Ok(Response::builder().status(s).body(()).unwrap())
        };
        let ok = AttemptRecord::from_result(1, &answer(200), ms(3));
        assert_eq!(
            (ok.outcome, ok.error, ok.error_kind()),
            (AttemptOutcome::Success, None, None)
        );
        let bad = AttemptRecord::from_result(2, &answer(503), ms(3));
        assert_eq!(
            (bad.outcome, bad.error_kind()),
            (AttemptOutcome::Failure, Some("status"))
        );
        let not_found = AttemptRecord::from_result(1, &answer(404), ms(3));
        assert_eq!(
            (not_found.outcome, not_found.error_kind()),
            (AttemptOutcome::Success, Some("status"))
        );

        let open: Result<Response<()>, BoxError> =
            Err(Box::new(Open(Rejected::new(Rejection::CircuitOpen, None))));
        let rejected = AttemptRecord::from_result(1, &open, ms(0));
        assert_eq!(rejected.outcome, AttemptOutcome::Rejected);
        assert_eq!(rejected.error, Some(FailureClass::Rejected));
        assert_eq!(rejected.error_kind(), Some("circuit_open"));

        let elapsed: Result<Response<()>, BoxError> =
            Err(Box::new(tower::timeout::error::Elapsed::new()));
        let timeout = AttemptRecord::from_result(1, &elapsed, ms(9));
        assert_eq!(
            (timeout.outcome, timeout.error_kind()),
            (AttemptOutcome::Timeout, Some("timeout"))
        );

        let refused: Result<Response<()>, BoxError> = Err(Box::new(TlsFailure::new(
            std::io::Error::other("unknown issuer"),
        )));
        let tls = AttemptRecord::from_result(1, &refused, ms(1));
        assert_eq!(
            (tls.outcome, tls.error, tls.tls, tls.error_kind()),
            (
                AttemptOutcome::Failure,
                Some(FailureClass::Connect),
                true,
                Some("tls")
            )
        );
        assert!(!timeout.tls);
    }

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<(u32, Option<Duration>)>>);
    impl AttemptObserver for Seen {
        fn attempt_finished(&self, r: &AttemptRecord) {
            self.0.lock().unwrap().push((r.attempt, None));
        }
        fn retry_scheduled(&self, next: u32, delay: Duration) {
            self.0.lock().unwrap().push((next, Some(delay)));
        }
    }

    #[test]
    fn the_ledger_keeps_records_and_tells_its_observers_in_order() {
        let mut req = http::Request::new(());
        let ledger = AttemptLedger::of(&mut req);
        assert_eq!(AttemptLedger::of(&mut req).attempts(), 0, "the same ledger");
        let seen = Arc::new(Seen::default());
        ledger.observe(seen.clone());
        let err = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        ledger.finish(AttemptRecord::from_error(1, &err, ms(1)));
        ledger.retry_scheduled(2, ms(100));
        ledger.finish(AttemptRecord::from_error(2, &err, ms(1)));
        assert_eq!(ledger.attempts(), 2);
        assert_eq!(ledger.last().unwrap().error, Some(FailureClass::Connect));
        assert_eq!(
            *seen.0.lock().unwrap(),
            [(1, None), (2, Some(ms(100))), (2, None)]
        );
        // The clone in the request's extensions is the same ledger.
        assert_eq!(
            req.extensions().get::<AttemptLedger>().unwrap().attempts(),
            2
        );
    }
}
