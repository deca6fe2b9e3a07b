//! Errors of the engine's API.

use agentgate_progress::BackendError;

use crate::QueryRecord;

/// Why a query was not started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// No pipeline of that name is configured (HTTP 404).
    #[error("unknown pipeline `{0}`")]
    UnknownPipeline(String),
    /// The engine is closed for new work: the gateway is shutting down (HTTP 503).
    #[error("shutting down: not accepting new queries")]
    ShuttingDown,
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
