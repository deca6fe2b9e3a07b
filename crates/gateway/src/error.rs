//! The one place where failures become HTTP answers: every error status code and every
//! JSON error body of the gateway is chosen here.
//!
//! Clients get a status code and `{"error": {"kind", "message"}}` (SPEC §3). Routes say
//! *what* went wrong ([`Problem`], and for calls to agents the pipeline's [`ErrorKind`]);
//! this module says how that is answered. Messages speak in terms of the request, never
//! of internals (those are logged).

use std::time::Duration;

use agentgate_classify::{cause_ref, is_caused_by, BoxError, RequestBodyError};
use agentgate_pipeline::{ErrorKind, QueryRecord, SubmitError};
use agentgate_progress::QuotaRefusal;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::LengthLimitError;
use serde_json::json;

/// What went wrong with a request, as its answer's `error.kind` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// 400: the request cannot be understood.
    BadRequest,
    /// 404: no such route.
    NotFound,
    /// 404: no pipeline of that name.
    UnknownPipeline,
    /// 404: no such query (or another client's, later).
    UnknownQuery,
    /// 404: no agent of that name.
    UnknownAgent,
    /// 405.
    MethodNotAllowed,
    /// 409: the query to cancel has already finished.
    AlreadyFinished,
    /// 400: a reload found the config file invalid (the running config stays).
    InvalidConfig,
    /// 409: a reload was asked of a gateway started without a config file.
    ReloadUnavailable,
    /// 413: the body is larger than `max_body_bytes`.
    PayloadTooLarge,
    /// 415: the body must be JSON.
    UnsupportedMediaType,
    /// 426: a WebSocket route asked without an upgrade.
    UpgradeRequired,
    /// 401: a token (or key) is missing or wrong.
    Unauthorized,
    /// 403: not allowed (or no admin token configured).
    Forbidden,
    /// 503: the gateway is shutting down.
    ShuttingDown,
    /// 503: `max_ws_connections` reached.
    TooManyConnections,
    /// 503: other replicas' queries cannot be reached (the progress backend is down).
    BackendUnavailable,
    /// 503: `max_running_queries` queries are running, all clients together (SPEC §8).
    Overloaded,
    /// 429: the client runs its `max_running_queries` already (SPEC §7).
    TooManyQueries,
    /// 429: the client is over its `rate` (SPEC §7).
    RateLimited,
    /// 408: the request body stalled longer than `body_read_timeout` (SPEC §8).
    RequestTimeout,
    /// A call to an agent through the reverse proxy failed this way.
    Agent(ErrorKind),
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong (picks the status and `error.kind`).
    pub problem: Problem,
    /// What went wrong, for humans.
    pub message: String,
    /// `Retry-After`, when the client should come back later.
    pub retry_after: Option<Duration>,
}

// === impl Problem ===

impl Problem {
    /// The HTTP status that answers it.
    pub fn status(self) -> StatusCode {
        match self {
            Problem::BadRequest | Problem::InvalidConfig => StatusCode::BAD_REQUEST,
            Problem::NotFound
            | Problem::UnknownPipeline
            | Problem::UnknownQuery
            | Problem::UnknownAgent => StatusCode::NOT_FOUND,
            Problem::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Problem::AlreadyFinished | Problem::ReloadUnavailable => StatusCode::CONFLICT,
            Problem::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Problem::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Problem::Unauthorized => StatusCode::UNAUTHORIZED,
            Problem::Forbidden => StatusCode::FORBIDDEN,
            Problem::ShuttingDown
            | Problem::TooManyConnections
            | Problem::BackendUnavailable
            | Problem::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Problem::TooManyQueries | Problem::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Problem::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Problem::Agent(kind) => proxied_status(kind),
        }
    }

    /// The `error.kind` of the answer.
    pub fn kind(self) -> &'static str {
        match self {
            Problem::BadRequest => "bad_request",
            Problem::NotFound => "not_found",
            Problem::UnknownPipeline => "unknown_pipeline",
            Problem::UnknownQuery => "unknown_query",
            Problem::UnknownAgent => "unknown_agent",
            Problem::MethodNotAllowed => "method_not_allowed",
            Problem::AlreadyFinished => "already_finished",
            Problem::InvalidConfig => "invalid_config",
            Problem::ReloadUnavailable => "reload_unavailable",
            Problem::PayloadTooLarge => "payload_too_large",
            Problem::UnsupportedMediaType => "unsupported_media_type",
            Problem::UpgradeRequired => "upgrade_required",
            Problem::Unauthorized => "unauthorized",
            Problem::Forbidden => "forbidden",
            Problem::ShuttingDown => "shutting_down",
            Problem::TooManyConnections => "too_many_connections",
            Problem::BackendUnavailable => "backend_unavailable",
            Problem::Overloaded => "overloaded",
            Problem::TooManyQueries => "too_many_queries",
            Problem::RateLimited => "rate_limited",
            Problem::RequestTimeout => "request_timeout",
            // SPEC §8: the proxy tells a full bulkhead apart from the gateway's own
            // `overloaded`.
            Problem::Agent(ErrorKind::Overloaded) => "agent_overloaded",
            Problem::Agent(kind) => kind.as_str(),
        }
    }
}

/// The status of a failed call through the reverse proxy (SPEC §3): an agent that
/// refused (open breaker, full bulkhead) 503 with `Retry-After`, a per-attempt timeout
/// 504, anything else the agent did 502.
fn proxied_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::CircuitOpen | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout | ErrorKind::Deadline => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Internal | ErrorKind::Config => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// The status of a failed query (SPEC §3): 503 when an agent refused (a breaker was
/// open) or the replica running the query was lost (SPEC §9: nothing is wrong with the
/// query; another replica takes it if sent again, as Envoy answers 503 when an upstream
/// connection is torn down), 504 when the deadline ran out, 500 when the engine itself
/// broke, else 502 (an agent failed, even by timing out: the query's own clock is the
/// deadline).
fn query_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::CircuitOpen | ErrorKind::Overloaded | ErrorKind::ReplicaLost => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorKind::Deadline => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    }
}

// === impl ApiError ===

impl ApiError {
    /// An error with no `Retry-After`.
    pub fn new(problem: Problem, message: impl Into<String>) -> Self {
        Self {
            problem,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Asks the client to come back after `d`.
    pub fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Problem::BadRequest, message)
    }

    /// 413 for a body larger than `limit`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            Problem::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 404 for a query that does not exist (or is no longer retained).
    pub fn unknown_query(id: &str) -> Self {
        Self::new(
            Problem::UnknownQuery,
            format!("no query `{id}` (it never existed or is no longer retained)"),
        )
    }

    /// 404 for an agent that is not configured.
    pub fn unknown_agent(name: &str) -> Self {
        Self::new(Problem::UnknownAgent, format!("no agent named `{name}`"))
    }

    /// A reload that changed nothing: 400 `invalid_config` with `file:line:col: message`
    /// for a config that cannot be used, 409 `reload_unavailable` without a file.
    pub fn from_reload_error(err: &crate::reload::ReloadError) -> Self {
        use crate::reload::ReloadError;
        let problem = match err {
            ReloadError::NoFile => Problem::ReloadUnavailable,
            ReloadError::Invalid(_) | ReloadError::Build(_) => Problem::InvalidConfig,
        };
        Self::new(problem, err.to_string())
    }

    /// 408 for a request body that stalled longer than `body_read_timeout`; the
    /// connection is closed after the answer.
    pub fn body_timeout() -> Self {
        Self::new(
            Problem::RequestTimeout,
            "the request body stalled: send it without long pauses",
        )
    }

    /// What a failed submit answers: 404 for an unknown pipeline, 503 while shutting
    /// down or over the global `max_running_queries`, 429 over the client's quota.
    pub fn from_submit_error(e: &SubmitError) -> Self {
        match e {
            SubmitError::UnknownPipeline(name) => Self::new(
                Problem::UnknownPipeline,
                format!("no pipeline named `{name}`"),
            ),
            SubmitError::ShuttingDown => Self::draining(),
            SubmitError::Overloaded(max) => Self::new(
                Problem::Overloaded,
                format!("the gateway runs its maximum of {max} queries: try again shortly"),
            )
            .retry_after(Duration::from_secs(1)),
            SubmitError::Quota(QuotaRefusal::TooManyQueries) => Self::new(
                Problem::TooManyQueries,
                "this client runs its maximum of queries (max_running_queries): wait for one to end",
            ),
            SubmitError::Quota(QuotaRefusal::RateLimited { retry_after }) => Self::new(
                Problem::RateLimited,
                "this client starts queries faster than its rate allows",
            )
            .retry_after(*retry_after),
        }
    }

    /// 503 while the gateway shuts down.
    pub fn draining() -> Self {
        Self::new(Problem::ShuttingDown, "the gateway is shutting down")
            .retry_after(Duration::from_secs(1))
    }

    /// Maps the error of a call to `agent` through the reverse proxy to an answer: a
    /// refusal (open breaker) 503 + `Retry-After`, a per-attempt timeout 504, a
    /// connection failure 502, a request body over the limit 413, one that broke off
    /// 400.
    pub fn from_agent_error(agent: &str, err: &BoxError, body_limit: usize) -> Self {
        if cause_ref::<LengthLimitError>(&**err).is_some() {
            return Self::too_large(body_limit);
        }
        if is_caused_by::<crate::admission::BodyStalled>(&**err) {
            return Self::body_timeout();
        }
        if is_caused_by::<RequestBodyError>(&**err) {
            return Self::bad_request("the request body could not be read");
        }
        let kind = ErrorKind::of_error(&**err);
        if let Some(refused) = cause_ref::<agentgate_classify::Rejected>(&**err) {
            let message = match cause_ref::<agentgate_circuit_breaker::CircuitOpen>(&**err) {
                Some(open) => format!(
                    "agent `{agent}` is unavailable: its circuit breaker is {}",
                    open.state()
                ),
                None => format!("agent `{agent}` is unavailable ({kind})"),
            };
            let after = refused.retry_after().unwrap_or(Duration::from_secs(1));
            return Self::new(Problem::Agent(kind), message).retry_after(after);
        }
        let message = match kind {
            ErrorKind::Timeout => format!("agent `{agent}` did not answer in time"),
            ErrorKind::Connect => format!("could not connect to agent `{agent}`"),
            ErrorKind::Tls => {
                tracing::warn!(agent, error = %err, "TLS handshake with agent failed");
                format!("the TLS handshake with agent `{agent}` failed")
            }
            other => {
                tracing::warn!(agent, error = %err, "agent call failed");
                format!("agent `{agent}` failed ({other})")
            }
        };
        Self::new(Problem::Agent(kind), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "kind": self.problem.kind(), "message": self.message } });
        let mut res = (self.problem.status(), Json(body)).into_response();
        if let Some(d) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, retry_after_value(d));
        }
        match self.problem {
            Problem::Unauthorized => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of a stalled body cannot be trusted to arrive: close.
            Problem::RequestTimeout => {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        res
    }
}

/// A finished query as SPEC §3 answers it: the record, with 200, or for a failed query
/// 503 (+ `Retry-After`) / 504 / 502 / 500 by its [`ErrorKind`].
pub fn query_answer(record: &QueryRecord) -> Response {
    let status = record.failure().map_or(StatusCode::OK, query_status);
    let mut res = (status, Json(record)).into_response();
    if let Some(d) = record.retry_after() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, retry_after_value(d));
    }
    res
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_value(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
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

    #[test]
    fn a_failed_query_is_answered_by_its_kind() {
        use ErrorKind::*;
        for (kind, status) in [
            (CircuitOpen, 503),
            (Overloaded, 503),
            (ReplicaLost, 503),
            (Deadline, 504),
            (Internal, 500),
            (Timeout, 502),
            (Status, 502),
            (Connect, 502),
            (BadResponse, 502),
        ] {
            assert_eq!(query_status(kind).as_u16(), status, "{kind}");
        }
    }

    #[test]
    fn a_failed_proxied_call_is_answered_by_its_kind() {
        use ErrorKind::*;
        for (kind, status) in [
            (CircuitOpen, 503),
            (Timeout, 504),
            (Connect, 502),
            (Reset, 502),
        ] {
            assert_eq!(Problem::Agent(kind).status().as_u16(), status, "{kind}");
            assert_eq!(Problem::Agent(kind).kind(), kind.as_str());
        }
        let full = Problem::Agent(Overloaded);
        assert_eq!(
            (full.status().as_u16(), full.kind()),
            (503, "agent_overloaded")
        );
        let err: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let answer = ApiError::from_agent_error("nlp", &err, 10);
        assert_eq!(
            (answer.problem.status(), answer.problem.kind()),
            (StatusCode::BAD_GATEWAY, "connect")
        );
    }
}
