//! Why queries fail ([`ErrorKind`]) and errors of the engine's API.

use std::fmt;

use agentgate_classify::{
    cause_ref, classify_error, is_caused_by, AttemptRecord, FailureClass, Rejected, Rejection,
    TlsFailure,
};
use agentgate_progress::{BackendError, QuotaRefusal};
use serde::{Deserialize, Serialize};

use crate::QueryRecord;

/// Why a stage, or an attempt, or the whole query failed: the `kind` of SPEC §3's error
/// objects (`{"stage","kind","message"}`, `stages[].attempts[].error`, the `error` event).
///
/// One vocabulary from the pipeline to the gateway, which picks the HTTP status for
/// each (`crates/gateway/src/error.rs`): nothing matches kind strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The agent could not be reached (nothing was sent).
    Connect,
    /// The TLS handshake with the agent failed: its certificate did not verify, it
    /// refused ours, or no protocol was shared (class `connect`: nothing was sent).
    Tls,
    /// The connection to the agent broke.
    Reset,
    /// The agent did not answer within the per-attempt timeout.
    Timeout,
    /// The agent answered with a status other than 2xx.
    Status,
    /// The agent answered 2xx with a body that is not usable JSON (or a streamed answer
    /// that is not usable: malformed, a line too long, not UTF-8).
    BadResponse,
    /// The agent's streamed answer broke off (the connection, `stream_idle_timeout`)
    /// after its head: the attempt is not retried, since chunks may have been published.
    StreamBroken,
    /// The agent's circuit breaker refused the call.
    CircuitOpen,
    /// The agent's concurrency limit was full.
    Overloaded,
    /// The query's deadline ran out.
    Deadline,
    /// The stage cannot be sent (a configuration problem validation did not catch).
    Config,
    /// The caller went away.
    Cancelled,
    /// The engine itself broke.
    Internal,
    /// The replica running the query was lost (its lease in the shared backend expired,
    /// SPEC §9): another replica ended the query.
    ReplicaLost,
}

// === impl ErrorKind ===

impl ErrorKind {
    /// The SPEC name (`connect`, `circuit_open`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Reset => "reset",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Status => "status",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::StreamBroken => "stream_broken",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Deadline => "deadline",
            ErrorKind::Config => "config",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
            ErrorKind::ReplicaLost => "replica_lost",
        }
    }

    /// The kind of a failed call's error: a refusal by one of our layers by its reason,
    /// a TLS failure as `tls`, anything else by its failure class.
    pub fn of_error(err: &(dyn std::error::Error + 'static)) -> Self {
        match cause_ref::<Rejected>(err) {
            Some(rejected) => Self::of_rejection(rejected.reason()),
            None if is_caused_by::<TlsFailure>(err) => ErrorKind::Tls,
            None => Self::of_class(classify_error(err)),
        }
    }

    /// The kind of a failed attempt; `None` for a 2xx answer.
    pub fn of_attempt(record: &AttemptRecord) -> Option<Self> {
        if let Some(rejection) = record.rejection {
            return Some(Self::of_rejection(rejection));
        }
        if record.tls {
            return Some(ErrorKind::Tls);
        }
        match (record.error, record.status) {
            (Some(class), _) => Some(Self::of_class(class)),
            (None, Some(s)) if (200..300).contains(&s) => None,
            // Any other answer (a 404 included) gives the stage no output.
            (None, _) => Some(ErrorKind::Status),
        }
    }

    fn of_rejection(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Overloaded => ErrorKind::Overloaded,
            // A refusal of a kind this version does not know: the breaker's is the one
            // that says "come back later" too.
            _ => ErrorKind::CircuitOpen,
        }
    }

    fn of_class(class: FailureClass) -> Self {
        match class {
            FailureClass::Connect => ErrorKind::Connect,
            FailureClass::Reset => ErrorKind::Reset,
            FailureClass::Timeout => ErrorKind::Timeout,
            FailureClass::Status => ErrorKind::Status,
            FailureClass::BadResponse => ErrorKind::BadResponse,
            FailureClass::Rejected => ErrorKind::CircuitOpen,
            FailureClass::Cancelled => ErrorKind::Cancelled,
        }
    }

    /// Whether failing with this kind says "come back later" (the agent refused for a
    /// while: `Retry-After`).
    pub const fn is_refusal(self) -> bool {
        matches!(self, ErrorKind::CircuitOpen | ErrorKind::Overloaded)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a query was not started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// No pipeline of that name is configured (HTTP 404).
    #[error("unknown pipeline `{0}`")]
    UnknownPipeline(String),
    /// The engine is closed for new work: the gateway is shutting down (HTTP 503).
    #[error("shutting down: not accepting new queries")]
    ShuttingDown,
    /// `max_running` queries are running already, all clients together (HTTP 503
    /// `overloaded`).
    #[error("overloaded: {0} queries are running")]
    Overloaded(usize),
    /// The client's quota refused it (HTTP 429).
    #[error(transparent)]
    Quota(#[from] QuotaRefusal),
}

/// Why a query was not cancelled.
// The record travels by value (the gateway serializes it as the answer); cancelling is
// rare, so the size of the error does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, thiserror::Error)]
pub enum CancelError {
    /// No such query, or it finished longer ago than the retention (HTTP 404).
    #[error("query not found")]
    NotFound,
    /// The query had already finished; its final record (HTTP 409, or 200 with the
    /// record: cancelling is idempotent for clients that only want it stopped).
    #[error("query already finished")]
    AlreadyFinished(QueryRecord),
    /// This replica does not run the query, and the backend that knows about other
    /// replicas' queries cannot be reached (HTTP 503).
    #[error(transparent)]
    Unavailable(BackendError),
}
