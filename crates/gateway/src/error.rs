//! The one place where errors become HTTP responses.
//!
//! Clients get a status code and `{"error": {"kind", "message"}}` (SPEC §3). Messages
//! say what happened in terms of the request — never internals, which are logged.

use std::time::Duration;

use agentgate_circuit_breaker::CircuitOpen;
use agentgate_classify::{
    cause_ref, classify_error, is_caused_by, BoxError, FailureClass, RequestBodyError,
};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::LengthLimitError;
use serde_json::json;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable kind (`bad_request`, `circuit_open`, …).
    pub kind: &'static str,
    /// What went wrong, for humans.
    pub message: String,
    /// `Retry-After`, when the client should come back later.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with no `Retry-After`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404.
    pub fn not_found(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, message)
    }

    /// 413 for a body larger than `limit`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 503 while the gateway shuts down.
    pub fn draining() -> Self {
        Self {
            retry_after: Some(Duration::from_secs(1)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the gateway is shutting down",
            )
        }
    }

    /// Maps the error of a call to `agent` (reverse proxy) to an answer: open breaker
    /// 503 + `Retry-After`, per-attempt timeout 504, connection failure 502, a request
    /// body over the limit 413, one that broke off 400.
    pub fn from_agent_error(agent: &str, err: &BoxError, body_limit: usize) -> Self {
        if let Some(open) = cause_ref::<CircuitOpen>(&**err) {
            return Self {
                retry_after: Some(open.retry_after().unwrap_or(Duration::from_secs(1))),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "circuit_open",
                    format!(
                        "agent `{agent}` is unavailable: its circuit breaker is {}",
                        open.state()
                    ),
                )
            };
        }
        if cause_ref::<LengthLimitError>(&**err).is_some() {
            return Self::too_large(body_limit);
        }
        if is_caused_by::<RequestBodyError>(&**err) {
            return Self::bad_request("the request body could not be read");
        }
        match classify_error(&**err) {
            FailureClass::Timeout => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("agent `{agent}` did not answer in time"),
            ),
            FailureClass::Connect => Self::new(
                StatusCode::BAD_GATEWAY,
                "connect",
                format!("could not connect to agent `{agent}`"),
            ),
            class => {
                tracing::warn!(agent, error = %err, "agent call failed");
                Self::new(
                    StatusCode::BAD_GATEWAY,
                    class.as_str(),
                    format!("agent `{agent}` failed ({class})"),
                )
            }
        }
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_value(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "kind": self.kind, "message": self.message } });
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(d) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, retry_after_value(d));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_value(Duration::from_millis(1)), "1");
        assert_eq!(retry_after_value(Duration::from_millis(2500)), "3");
        assert_eq!(retry_after_value(Duration::from_secs(60)), "60");
        assert_eq!(retry_after_value(Duration::ZERO), "1");
    }
}
