//! Answers one HTTP request: the control endpoint on `/_mock`, the scripted agent elsewhere.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{
    HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE,
    RETRY_AFTER, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::body::MockBody;
use crate::fault::{retry_after_secs, Fault};
use crate::state::{Plan, Shared};
use crate::StreamMode;

/// The control endpoint; `/_mock/stats` lives under it.
pub(crate) const CONTROL_PATH: &str = "/_mock";

/// Request bodies above this are answered `413`, on agent and control paths alike.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The request headers echoed back under `"headers"` (when present): the ones the gateway
/// sets on agent calls (SPEC §3), so tests can check what reached the agent.
const ECHOED_HEADERS: [&str; 7] = [
    "x-query-id",
    "x-agentgate-stage",
    "x-agentgate-attempt",
    "x-agentgate-deadline-ms",
    "idempotency-key",
    "traceparent",
    "content-type",
];

fn application_json() -> HeaderValue {
    HeaderValue::from_static("application/json")
}

/// The hyper service function.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let path = req.uri().path();
    let res = if path == CONTROL_PATH || path.starts_with("/_mock/") {
        control(&shared, req).await
    } else {
        agent(&shared, req).await
    };
    Ok(res)
}

// === the scripted agent ===

async fn agent(shared: &Shared, req: Request<Incoming>) -> Response<MockBody> {
    shared.counters().request();
    let (mut parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(res) => return res,
    };

    let Plan {
        fault,
        delay,
        behavior,
    } = shared.plan();
    tracing::debug!(
        agent = %behavior.name,
        method = %parts.method,
        path = parts.uri.path(),
        ?fault,
        ?delay,
        "mock agent request"
    );

    match fault {
        Fault::Outage { retry_after } => {
            let mut res =
                json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "outage"}));
            set_retry_after(&mut res, retry_after_secs(retry_after).max(1));
            return res;
        }
        // Never answer; the connection task is aborted when the agent shuts down, and hyper
        // drops this future if the client goes away.
        Fault::Hang => return std::future::pending().await,
        _ => {}
    }

    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    match fault {
        Fault::Throttle => {
            let status = status_or(behavior.throttle_status, StatusCode::SERVICE_UNAVAILABLE);
            let mut res = json_response(status, &json!({"error": "throttled"}));
            set_retry_after(&mut res, retry_after_secs(behavior.retry_after));
            res
        }
        Fault::Error => {
            let status = status_or(behavior.error_status, StatusCode::INTERNAL_SERVER_ERROR);
            json_response(status, &json!({"error": "injected"}))
        }
        Fault::BadJson => {
            let mut res = Response::new(MockBody::full("this is not json"));
            res.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            res
        }
        Fault::Reset => {
            let echo = echo(
                &behavior.name,
                &parts.method,
                parts.uri.path(),
                &parts.headers,
                &body,
            );
            let whole = Bytes::from(serde_json::to_vec(&echo).unwrap_or_default());
            let len = whole.len();
            let mut res = Response::new(MockBody::broken(whole));
            res.headers_mut().insert(CONTENT_TYPE, application_json());
            res.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(len));
            res
        }
        Fault::None | Fault::Outage { .. } | Fault::Hang if wants_websocket(&parts.headers) => {
            websocket_echo(&mut parts)
        }
        Fault::None | Fault::Outage { .. } | Fault::Hang if behavior.stream != StreamMode::None => {
            let mut res = Response::new(MockBody::stream(
                behavior.stream,
                behavior.stream_chunks,
                behavior.stream_interval,
                behavior.stream_break_after,
            ));
            let media = match behavior.stream {
                StreamMode::Sse => "text/event-stream",
                _ => "application/x-ndjson",
            };
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(media));
            res.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            res
        }
        Fault::None | Fault::Outage { .. } | Fault::Hang => {
            let echo = echo(
                &behavior.name,
                &parts.method,
                parts.uri.path(),
                &parts.headers,
                &body,
            );
            json_response(StatusCode::OK, &echo)
        }
    }
}

/// Whether the request asks for a WebSocket (`Upgrade: websocket`).
fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Accepts the WebSocket handshake (101) and echoes every text and binary message on
/// the upgraded connection until the client closes it.
fn websocket_echo(parts: &mut http::request::Parts) -> Response<MockBody> {
    let (Some(key), Some(on_upgrade)) = (
        parts.headers.get(SEC_WEBSOCKET_KEY),
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
    ) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a WebSocket handshake needs Sec-WebSocket-Key (and an HTTP/1.1 connection)",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut res = Response::new(MockBody::full(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    res
}

/// The normal answer: what the agent received, and an `output` a pipeline stage can use.
fn echo(name: &str, method: &Method, path: &str, headers: &HeaderMap, body: &Bytes) -> Value {
    // Anything that is not JSON (or nothing) is `null`, never an error: the mock reports
    // what it got, it does not judge it.
    let received: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    };
    let echoed: serde_json::Map<String, Value> = ECHOED_HEADERS
        .iter()
        .filter_map(|&name| {
            let value = headers.get(name)?;
            Some((
                name.to_owned(),
                Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
            ))
        })
        .collect();
    let stage = headers
        .get(HeaderName::from_static("x-agentgate-stage"))
        .map_or(Value::Null, |v| {
            Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned())
        });
    let query = received.get("query").cloned().unwrap_or(Value::Null);
    json!({
        "agent": name,
        "method": method.as_str(),
        "path": path,
        "received": received,
        "headers": echoed,
        "output": {"agent": name, "stage": stage, "echo": query},
    })
}

// === the control endpoint ===

async fn control(shared: &Shared, req: Request<Incoming>) -> Response<MockBody> {
    let path = req.uri().path();
    let method = req.method().clone();
    match path {
        CONTROL_PATH => match method {
            Method::GET => json_response(
                StatusCode::OK,
                &json!({"behavior": shared.behavior(), "stats": shared.stats()}),
            ),
            Method::PUT => put_behavior(shared, req).await,
            _ => method_not_allowed("GET, PUT"),
        },
        "/_mock/stats" => match method {
            Method::GET => json_response(StatusCode::OK, &json!(shared.stats())),
            _ => method_not_allowed("GET"),
        },
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no control route {path}; try GET /_mock or GET /_mock/stats"),
        ),
    }
}

async fn put_behavior(shared: &Shared, req: Request<Incoming>) -> Response<MockBody> {
    let body = match read_body(req.into_body()).await {
        Ok(body) => body,
        Err(res) => return res,
    };
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("the body is not JSON: {e}"),
            )
        }
    };
    let next = match shared.behavior().patched(patch) {
        Ok(next) => next,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    // `patched` validated already; `set_behavior` validates again, which cannot fail here
    // but keeps one entry point for every change.
    if let Err(e) = shared.set_behavior(next.clone()) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string());
    }
    tracing::info!(behavior = ?next, "mock agent behavior changed");
    json_response(StatusCode::OK, &json!(next))
}

// === helpers ===

/// Reads the whole body, up to [`MAX_BODY_BYTES`].
async fn read_body(body: Incoming) -> Result<Bytes, Response<MockBody>> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
        )),
        Err(e) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("could not read the request body: {e}"),
        )),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    let mut res = Response::new(MockBody::full(
        serde_json::to_vec(value).unwrap_or_default(),
    ));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, application_json());
    res
}

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<MockBody> {
    json_response(
        status,
        &json!({"error": {"kind": kind, "message": message}}),
    )
}

fn method_not_allowed(allow: &'static str) -> Response<MockBody> {
    let mut res = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("allowed methods: {allow}"),
    );
    res.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    res
}

fn set_retry_after(res: &mut Response<MockBody>, secs: u64) {
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
}

/// Statuses are validated to 400..=599 before they get here; the fallback is only a guard.
fn status_or(code: u16, fallback: StatusCode) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_reports_what_it_received() {
        let mut headers = HeaderMap::new();
        headers.insert("x-query-id", HeaderValue::from_static("q1"));
        headers.insert("x-agentgate-stage", HeaderValue::from_static("nlp"));
        headers.insert("x-unrelated", HeaderValue::from_static("nope"));
        let body = Bytes::from_static(br#"{"query": "hello", "results": {}}"#);
        let v = echo("nlp", &Method::POST, "/process", &headers, &body);
        assert_eq!(v["agent"], "nlp");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/process");
        assert_eq!(v["received"]["query"], "hello");
        assert_eq!(
            v["headers"],
            json!({"x-query-id": "q1", "x-agentgate-stage": "nlp"})
        );
        assert_eq!(
            v["output"],
            json!({"agent": "nlp", "stage": "nlp", "echo": "hello"})
        );
    }

    #[test]
    fn echo_of_non_json_is_null() {
        let v = echo(
            "a",
            &Method::GET,
            "/",
            &HeaderMap::new(),
            &Bytes::from_static(b"{oops"),
        );
        assert_eq!(v["received"], Value::Null);
        assert_eq!(
            v["output"],
            json!({"agent": "a", "stage": null, "echo": null})
        );
        let v = echo("a", &Method::GET, "/", &HeaderMap::new(), &Bytes::new());
        assert_eq!(v["received"], Value::Null);
        // A JSON value that is not an object has no `query`.
        let v = echo(
            "a",
            &Method::GET,
            "/",
            &HeaderMap::new(),
            &Bytes::from_static(b"[1]"),
        );
        assert_eq!(v["received"], json!([1]));
        assert_eq!(v["output"]["echo"], Value::Null);
    }
}
