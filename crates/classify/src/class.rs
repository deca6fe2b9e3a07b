use std::fmt;
use std::time::Duration;

use crate::BoxError;

/// How a call to an agent failed (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The connection could not be established (refused, unreachable, DNS). Nothing was
    /// sent, so even a non-idempotent request may be retried.
    Connect,
    /// The connection broke after it was established, or failed in a way we do not
    /// recognise more precisely.
    Reset,
    /// The per-attempt timeout elapsed.
    Timeout,
    /// The agent answered with a status that counts as a failure (500, 502, 503, 504).
    Status,
    /// The agent answered 2xx with something that is not what the caller needs
    /// (for the pipeline: not JSON).
    BadResponse,
    /// One of our own layers refused the call (open breaker, full bulkhead): see
    /// [`crate::Rejected`].
    Rejected,
    /// The caller went away (dropped the request, cancelled the query, or its own request
    /// body failed while it was sent).
    Cancelled,
}

/// What a finished call means to the breaker and the retry policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The agent is healthy: a 2xx, 3xx or a 4xx other than the failure statuses.
    Success,
    /// The call failed in the given way.
    Failure(FailureClass),
}

/// The verdict on one call: its outcome and any `Retry-After` the agent sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    /// Success or the failure class.
    pub outcome: Outcome,
    /// A `Retry-After` delay from a 429 or 503 answer, already resolved to a duration.
    pub retry_after: Option<Duration>,
}

/// Classifies the result of a call. Implemented by [`crate::HttpClassifier`] for HTTP
/// responses; library users implement it for their own response types.
pub trait Classify<Res> {
    /// Classifies a finished call.
    fn classify(&self, result: &Result<Res, BoxError>) -> Classified;
}

/// Classifies any response as a success and errors by [`crate::classify_error`]: for
/// services whose responses carry no status of their own.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorClassifier;

impl<Res> Classify<Res> for ErrorClassifier {
    fn classify(&self, result: &Result<Res, BoxError>) -> Classified {
        match result {
            Ok(_) => Classified {
                outcome: Outcome::Success,
                retry_after: None,
            },
            Err(err) => Classified {
                outcome: Outcome::Failure(crate::classify_error(&**err)),
                retry_after: None,
            },
        }
    }
}

// === impl FailureClass ===

impl FailureClass {
    /// Every class, in a stable order (useful for metrics and tests).
    pub const ALL: [FailureClass; 7] = [
        FailureClass::Connect,
        FailureClass::Reset,
        FailureClass::Timeout,
        FailureClass::Status,
        FailureClass::BadResponse,
        FailureClass::Rejected,
        FailureClass::Cancelled,
    ];

    /// The SPEC name of the class (`connect`, `reset`, …), used in JSON and labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureClass::Connect => "connect",
            FailureClass::Reset => "reset",
            FailureClass::Timeout => "timeout",
            FailureClass::Status => "status",
            FailureClass::BadResponse => "bad_response",
            FailureClass::Rejected => "rejected",
            FailureClass::Cancelled => "cancelled",
        }
    }

    /// Does this failure say something about the agent's health? Our own rejections and
    /// callers that went away do not; everything else does.
    pub const fn counts_for_breaker(self) -> bool {
        !matches!(self, FailureClass::Rejected | FailureClass::Cancelled)
    }

    /// May a call that failed this way be tried again at all? Connection failures,
    /// resets, timeouts and failure statuses may (subject to `retry_on`, idempotency and
    /// the budget); a bad response will not get better by asking again, and our own
    /// rejections and cancellations must not be retried.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureClass::Connect
                | FailureClass::Reset
                | FailureClass::Timeout
                | FailureClass::Status
        )
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Outcome ===

impl Outcome {
    /// Whether this outcome counts as a failure for the circuit breaker.
    pub const fn counts_as_failure(self) -> bool {
        match self {
            Outcome::Success => false,
            Outcome::Failure(class) => class.counts_for_breaker(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_and_retry_tables_match_spec() {
        use FailureClass::*;
        let counts: Vec<_> = FailureClass::ALL
            .iter()
            .filter(|c| c.counts_for_breaker())
            .copied()
            .collect();
        assert_eq!(counts, vec![Connect, Reset, Timeout, Status, BadResponse]);
        let retryable: Vec<_> = FailureClass::ALL
            .iter()
            .filter(|c| c.is_retryable())
            .copied()
            .collect();
        assert_eq!(retryable, vec![Connect, Reset, Timeout, Status]);
        let names: Vec<_> = FailureClass::ALL.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            names,
            [
                "connect",
                "reset",
                "timeout",
                "status",
                "bad_response",
                "rejected",
                "cancelled"
            ]
        );
        assert!(!Outcome::Failure(Cancelled).counts_as_failure());
        assert!(Outcome::Failure(Timeout).counts_as_failure());
        assert!(!Outcome::Success.counts_as_failure());
    }
}
