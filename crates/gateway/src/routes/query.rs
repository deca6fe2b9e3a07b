//! `POST /api/query`, `GET /api/query/{id}`, `DELETE /api/query/{id}` (SPEC §3).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use agentgate_pipeline::{CancelError, Cancellation, QueryInput, SubmitError};
use agentgate_progress::QuotaRefusal;

use crate::admission::{BodyStalled, OVERLOAD_REJECTED};
use crate::auth::{Client, Refusal};
use crate::error::{query_answer, ApiError, Problem};
use crate::AppState;
use agentgate_classify::is_caused_by;

/// The body of `POST /api/query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    query: String,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    pipeline: Option<String>,
}

/// Submits a query; answers when it finished, or at once with
/// `Prefer: respond-async` (202).
pub(crate) async fn submit(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    req: Request,
) -> Response {
    match submit_inner(state, client, req).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn submit_inner(state: AppState, client: Client, req: Request) -> Result<Response, ApiError> {
    if state.is_draining() {
        return Err(ApiError::draining());
    }
    // The body is read even when the gateway is full: an answer sent before it would
    // cost the connection (hyper does not reuse one whose request body was left
    // unread), and the body is small and bounded (`max_body_bytes`,
    // `body_read_timeout`). The engine refuses with one atomic check at admission.
    let engine = state.engine();
    let (parts, body) = req.into_parts();
    let body = read_json_body(
        &parts.headers,
        body,
        state.runtime().config().server.max_body_bytes,
    )
    .await?;
    let input = parse_query(&body)?;
    let pipeline = input
        .pipeline
        .as_deref()
        .unwrap_or(engine.default_pipeline());
    client.may_run(pipeline)?;
    let traceparent = parts
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let respond_async = prefers_async(&parts.headers);
    let input = QueryInput {
        traceparent,
        client: client.owner(),
        ..input
    };
    let submitted = engine
        .submit_with_quota(input, client.quota())
        .await
        .map_err(|e| refused(&client, &e))?;
    if respond_async {
        let location = format!("/api/query/{}", submitted.query_id);
        let mut res = (
            StatusCode::ACCEPTED,
            Json(json!({ "query_id": submitted.query_id, "status": "accepted" })),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            res.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(res);
    }
    Ok(query_answer(&submitted.finished().await))
}

/// The answer to a refused submit, counted in the refusal metrics (SPEC §7, §8).
pub(crate) fn refused(client: &Client, e: &SubmitError) -> ApiError {
    match e {
        SubmitError::Overloaded(_) => {
            metrics::counter!(OVERLOAD_REJECTED, "scope" => "global").increment(1);
        }
        SubmitError::Quota(QuotaRefusal::TooManyQueries) => {
            client.rejected(Refusal::TooManyQueries);
        }
        SubmitError::Quota(QuotaRefusal::RateLimited { .. }) => {
            client.rejected(Refusal::RateLimited);
        }
        _ => {}
    }
    ApiError::from_submit_error(e)
}

/// The record of a query, running or finished, run by this replica or another one;
/// another client's query is answered as an unknown one.
pub(crate) async fn get(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> Response {
    match state.engine().record(&id, client.caller()).await {
        Ok(Some(record)) => Json(record).into_response(),
        Ok(None) => ApiError::unknown_query(&id).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, query_id = %id, "progress backend: record lookup failed");
            backend_unavailable("query records of other replicas cannot be read right now")
        }
    }
}

/// How long `DELETE` waits for another replica to cancel its query.
const REMOTE_CANCEL_WAIT: Duration = Duration::from_secs(2);

/// Cancels a running query, here or on another replica: the final record, or 202
/// `cancelling` when another replica runs it and has not ended it within
/// [`REMOTE_CANCEL_WAIT`]. Another client's query is answered as an unknown one.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> Response {
    let cancel = state
        .engine()
        .cancel(&id, REMOTE_CANCEL_WAIT, client.caller());
    match cancel.await {
        Ok(Cancellation::Cancelled(record)) => Json(record).into_response(),
        Ok(Cancellation::Requested) => (
            StatusCode::ACCEPTED,
            Json(json!({ "query_id": id, "status": "cancelling" })),
        )
            .into_response(),
        Err(CancelError::NotFound) => ApiError::unknown_query(&id).into_response(),
        Err(CancelError::AlreadyFinished(record)) => ApiError::new(
            Problem::AlreadyFinished,
            format!("query `{id}` already finished ({})", record.status.as_str()),
        )
        .into_response(),
        Err(CancelError::Unavailable(e)) => {
            tracing::warn!(error = %e, query_id = %id, "progress backend: remote cancel failed");
            backend_unavailable("queries of other replicas cannot be cancelled right now")
        }
    }
}

fn backend_unavailable(message: &'static str) -> Response {
    ApiError::new(Problem::BackendUnavailable, message).into_response()
}

fn prefers_async(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        })
    })
}

/// Reads a JSON request body: `application/json` (415 otherwise), at most `limit` bytes
/// (413), valid UTF-8 (400).
pub(crate) async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !(mime.starts_with("application/") && mime.ends_with("+json"))
    {
        return Err(ApiError::new(
            Problem::UnsupportedMediaType,
            if content_type.is_empty() {
                "the body must be JSON: set `content-type: application/json`".to_owned()
            } else {
                format!("the body must be JSON, not `{content_type}`")
            },
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(ApiError::too_large(limit)),
        Err(e) if is_caused_by::<BodyStalled>(&*e) => return Err(ApiError::body_timeout()),
        Err(_) => return Err(ApiError::bad_request("the request body could not be read")),
    };
    if std::str::from_utf8(&bytes).is_err() {
        return Err(ApiError::bad_request("the body is not valid UTF-8"));
    }
    Ok(bytes)
}

/// Parses and checks a query request. serde_json's recursion limit (128) bounds
/// nesting, so a deeply nested body is a 400, never a stack overflow.
fn parse_query(body: &[u8]) -> Result<QueryInput, ApiError> {
    let req: QueryRequest = serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof => {
                ApiError::bad_request(format!("malformed JSON: {e}"))
            }
            Category::Data => ApiError::bad_request(format!("invalid query: {e}")),
            Category::Io => ApiError::bad_request("the request body could not be read"),
        }
    })?;
    if req.query.trim().is_empty() {
        return Err(ApiError::bad_request(
            "invalid query: `query` must not be empty",
        ));
    }
    Ok(QueryInput {
        query: req.query,
        context: req.context.unwrap_or_default(),
        pipeline: req.pipeline,
        traceparent: None,
        client: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_bodies() {
        assert!(parse_query(br#"{"query":"hi"}"#).is_ok());
        let cases: [(&[u8], &str); 6] = [
            (b"{", "malformed JSON"),
            (
                br#"{"query": 5}"#,
                "invalid query: invalid type: integer `5`, expected a string",
            ),
            (br#"{"query":"x","context":[1]}"#, "invalid query"),
            (br#"{"query":"x","extra":1}"#, "unknown field `extra`"),
            (br#"{"context":{}}"#, "missing field `query`"),
            (br#"{"query":"  "}"#, "must not be empty"),
        ];
        for (body, want) in cases {
            let err = parse_query(body).unwrap_err();
            assert_eq!(err.problem, Problem::BadRequest);
            assert!(
                err.message.contains(want),
                "{:?}: {}",
                String::from_utf8_lossy(body),
                err.message
            );
        }
        let deep = format!(
            "{{\"query\":\"x\",\"context\":{{\"a\":{}1{}}}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(
            parse_query(deep.as_bytes()).unwrap_err().problem,
            Problem::BadRequest
        );
    }

    #[test]
    fn prefer_header() {
        let mut h = HeaderMap::new();
        assert!(!prefers_async(&h));
        h.insert(
            "prefer",
            HeaderValue::from_static("return=minimal, respond-async"),
        );
        assert!(prefers_async(&h));
    }
}
