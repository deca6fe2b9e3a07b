//! The marker every refusal by one of our own layers carries, so that the layers above
//! recognise it without knowing the layer that refused (the retry layer does not depend
//! on the circuit breaker, the progress layer not on either).

use std::fmt;
use std::time::Duration;

/// Why one of our own layers refused a call without sending it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// A circuit breaker is open (or forced open, or out of half-open probes).
    CircuitOpen,
    /// A concurrency limit is full and the call could not wait for a slot.
    Overloaded,
}

/// A call refused by one of our layers: the request never reached the agent.
///
/// Layers that refuse return an error of their own (`CircuitOpen`, …) whose
/// [`source()`](std::error::Error::source) is a `Rejected`; callers ask
/// `is_caused_by::<Rejected>()` and [`classify_error`](crate::classify_error) calls it
/// [`FailureClass::Rejected`](crate::FailureClass::Rejected): never retried, never
/// counted against a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    reason: Rejection,
    retry_after: Option<Duration>,
}

// === impl Rejection ===

impl Rejection {
    /// The SPEC error kind (`circuit_open`, `overloaded`), as clients see it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Rejection::CircuitOpen => "circuit_open",
            Rejection::Overloaded => "overloaded",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Rejected ===

impl Rejected {
    /// A refusal for `reason`; `retry_after` says when trying again may succeed, if known.
    pub const fn new(reason: Rejection, retry_after: Option<Duration>) -> Self {
        Self {
            reason,
            retry_after,
        }
    }

    /// Why the call was refused.
    pub const fn reason(&self) -> Rejection {
        self.reason
    }

    /// When trying again may succeed, if the refusing layer knows.
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rejected ({})", self.reason)
    }
}

impl std::error::Error for Rejected {}

/// The request's own body failed while it was being sent: the caller went away
/// mid-upload, or sent more than a limit allows. Classified as
/// [`FailureClass::Cancelled`](crate::FailureClass::Cancelled): it says nothing about
/// the agent, so it neither counts against the breaker nor is retried. The error that
/// the body returned is its `source()`.
#[derive(Debug)]
pub struct RequestBodyError(crate::BoxError);

impl RequestBodyError {
    /// Wraps the body's error.
    pub fn new(source: impl Into<crate::BoxError>) -> Self {
        Self(source.into())
    }
}

impl fmt::Display for RequestBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body failed")
    }
}

impl std::error::Error for RequestBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
