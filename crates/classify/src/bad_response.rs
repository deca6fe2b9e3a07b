use std::fmt;

/// The agent answered 2xx with something the caller cannot use (for the pipeline: a body
/// that is not JSON, or too large). Classified as [`crate::FailureClass::BadResponse`]:
/// it counts against the breaker, and is not retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadResponse {
    reason: String,
}

impl BadResponse {
    /// A bad response, with what was wrong with it.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// What was wrong.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for BadResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad response: {}", self.reason)
    }
}

impl std::error::Error for BadResponse {}
