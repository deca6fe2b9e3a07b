//! The JSON text frames of SPEC §3: what clients send and what the server answers.
//!
//! Query events are not built here: the hub serializes each one once
//! ([`agentgate_progress::Published::json`]) and every subscriber gets that text as is.

use std::time::Duration;

use agentgate_circuit_breaker::Transition;
use agentgate_pipeline::QueryInput;
use agentgate_progress::event::rfc3339;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Default `interval_ms` of `subscribe_metrics`.
pub(crate) const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_millis(1000);
/// `interval_ms` is clamped to this range.
pub(crate) const METRICS_INTERVAL_RANGE: (u64, u64) = (100, 60_000);
/// `after_seq` above this is treated as this (JSON numbers are exact up to 2^53, and no
/// query gets anywhere near it).
pub(crate) const MAX_AFTER_SEQ: u64 = 1 << 53;

/// A frame a client sent.
#[derive(Debug, PartialEq)]
pub(crate) enum ClientFrame {
    /// `{"type":"query","query",…,"request_id"?}`: run a query and watch it.
    Query {
        input: QueryInput,
        request_id: Option<Value>,
    },
    /// `{"type":"subscribe","query_id","after_seq"?,"outputs"?}` (`outputs: false`
    /// leaves out the `output` events of streamed answers).
    Subscribe {
        query_id: String,
        after_seq: u64,
        outputs: bool,
    },
    /// `{"type":"unsubscribe","query_id"}`.
    Unsubscribe { query_id: String },
    /// `{"type":"cancel","query_id"}`.
    Cancel { query_id: String },
    /// `{"type":"ping"}`.
    Ping,
    /// `{"type":"subscribe_metrics","interval_ms"?}`.
    SubscribeMetrics { interval: Duration },
}

/// The `code` of an error frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// Not JSON, not an object, an unknown `type`, a missing or mistyped field, a binary
    /// frame, a pipeline that does not exist.
    BadRequest,
    /// A query that never existed or is no longer retained.
    UnknownQuery,
    /// More than `ws_max_subscriptions` live subscriptions on this connection.
    TooManySubscriptions,
    /// `subscribe_metrics` without admin rights.
    Unauthorized,
    /// Too many frames per second; the frame was dropped.
    RateLimited,
    /// The gateway is shutting down and takes no new queries.
    ShuttingDown,
    /// A pipeline outside the client's `pipelines` (SPEC §7).
    Forbidden,
    /// The client runs its `max_running_queries` already (SPEC §7).
    TooManyQueries,
    /// The gateway runs its `max_running_queries` already (SPEC §8).
    Overloaded,
}

/// A refused client frame: answered with an error frame, the connection stays open.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FrameError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// Echoed so clients can match the error to what they sent.
    pub(crate) request_id: Option<Value>,
    /// The query the frame was about, when known.
    pub(crate) query_id: Option<String>,
    /// For a refused `query`: when trying again may succeed (`retry_after_ms`).
    pub(crate) retry_after: Option<std::time::Duration>,
}

#[derive(Deserialize)]
struct QueryFrame {
    query: String,
    #[serde(default)]
    context: Map<String, Value>,
    #[serde(default)]
    pipeline: Option<String>,
}

#[derive(Deserialize)]
struct SubscribeFrame {
    query_id: String,
    #[serde(default)]
    after_seq: u64,
    #[serde(default = "yes")]
    outputs: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct QueryIdFrame {
    query_id: String,
}

#[derive(Deserialize)]
struct MetricsFrame {
    #[serde(default)]
    interval_ms: Option<u64>,
}

const TYPES: &str = "query, subscribe, unsubscribe, cancel, ping, subscribe_metrics";

// === impl ErrorCode ===

impl ErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownQuery => "unknown_query",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyQueries => "too_many_queries",
            ErrorCode::Overloaded => "overloaded",
        }
    }
}

// === impl FrameError ===

impl FrameError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            request_id: None,
            query_id: None,
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub(crate) fn unknown_query(query_id: &str) -> Self {
        Self::new(
            ErrorCode::UnknownQuery,
            format!("no query `{query_id}` (it never existed or is no longer retained)"),
        )
        .about(query_id)
    }

    pub(crate) fn about(mut self, query_id: &str) -> Self {
        self.query_id = Some(query_id.to_owned());
        self
    }

    pub(crate) fn for_request(mut self, request_id: Option<Value>) -> Self {
        self.request_id = request_id;
        self
    }

    /// `{"type":"error","code","message"}` (+ `request_id`, `query_id` when known).
    pub(crate) fn to_json(&self) -> String {
        let mut v = json!({ "type": "error", "code": self.code.as_str(), "message": self.message });
        if let Some(r) = &self.request_id {
            v["request_id"] = r.clone();
        }
        if let Some(q) = &self.query_id {
            v["query_id"] = Value::from(q.as_str());
        }
        if let Some(d) = self.retry_after {
            v["retry_after_ms"] = Value::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        }
        v.to_string()
    }
}

// === parsing ===

/// Parses one text frame. Never panics; serde_json's recursion limit bounds nesting.
pub(crate) fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| FrameError::bad_request(format!("malformed JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(FrameError::bad_request(
            "a frame must be a JSON object with a `type`",
        ));
    };
    let request_id = object.get("request_id").cloned();
    let kind = match object.remove("type") {
        Some(Value::String(kind)) => kind,
        Some(_) => return Err(FrameError::bad_request("`type` must be a string")),
        None => return Err(FrameError::bad_request("missing field `type`")),
    };
    let object = Value::Object(object);
    match kind.as_str() {
        "query" => {
            let f: QueryFrame =
                fields(&kind, object).map_err(|e| e.for_request(request_id.clone()))?;
            if f.query.trim().is_empty() {
                return Err(
                    FrameError::bad_request("invalid query: `query` must not be empty")
                        .for_request(request_id),
                );
            }
            Ok(ClientFrame::Query {
                input: QueryInput {
                    query: f.query,
                    context: f.context,
                    pipeline: f.pipeline,
                    traceparent: None,
                    client: None,
                },
                request_id,
            })
        }
        "subscribe" => {
            let f: SubscribeFrame = fields(&kind, object)?;
            Ok(ClientFrame::Subscribe {
                query_id: f.query_id,
                after_seq: f.after_seq.min(MAX_AFTER_SEQ),
                outputs: f.outputs,
            })
        }
        "unsubscribe" => {
            let f: QueryIdFrame = fields(&kind, object)?;
            Ok(ClientFrame::Unsubscribe {
                query_id: f.query_id,
            })
        }
        "cancel" => {
            let f: QueryIdFrame = fields(&kind, object)?;
            Ok(ClientFrame::Cancel {
                query_id: f.query_id,
            })
        }
        "ping" => Ok(ClientFrame::Ping),
        "subscribe_metrics" => {
            let f: MetricsFrame = fields(&kind, object)?;
            let (lo, hi) = METRICS_INTERVAL_RANGE;
            let interval = f.interval_ms.map_or(DEFAULT_METRICS_INTERVAL, |ms| {
                Duration::from_millis(ms.clamp(lo, hi))
            });
            Ok(ClientFrame::SubscribeMetrics { interval })
        }
        other => Err(FrameError::bad_request(format!(
            "unknown frame type `{}` (expected one of: {TYPES})",
            truncate(other, 64)
        ))),
    }
}

fn fields<T: DeserializeOwned>(kind: &str, object: Value) -> Result<T, FrameError> {
    serde_json::from_value(object)
        .map_err(|e| FrameError::bad_request(format!("invalid `{kind}` frame: {e}")))
}

/// At most `max` characters of client text in our messages.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

// === server frames ===

/// `{"type":"accepted","request_id","query_id"}` (`request_id` only when given).
pub(crate) fn accepted(request_id: Option<&Value>, query_id: &str) -> String {
    let mut v = json!({ "type": "accepted", "query_id": query_id });
    if let Some(r) = request_id {
        v["request_id"] = r.clone();
    }
    v.to_string()
}

/// `{"type":"subscribed","query_id","after_seq"}`.
pub(crate) fn subscribed(query_id: &str, after_seq: u64) -> String {
    json!({ "type": "subscribed", "query_id": query_id, "after_seq": after_seq }).to_string()
}

/// `{"type":"unsubscribed","query_id"}`.
pub(crate) fn unsubscribed(query_id: &str) -> String {
    json!({ "type": "unsubscribed", "query_id": query_id }).to_string()
}

/// `{"type":"pong"}`.
pub(crate) fn pong() -> String {
    r#"{"type":"pong"}"#.to_owned()
}

/// `{"type":"lagged","query_id","next_seq"}`.
pub(crate) fn lagged(query_id: &str, next_seq: u64) -> String {
    json!({ "type": "lagged", "query_id": query_id, "next_seq": next_seq }).to_string()
}

/// `{"type":"metrics", …the JSON of /api/orchestration/metrics…}`.
pub(crate) fn metrics(mut value: Value) -> String {
    if let Value::Object(map) = &mut value {
        map.insert("type".to_owned(), Value::from("metrics"));
    }
    value.to_string()
}

/// `{"type":"circuit_breaker","agent","from","to","reason","ts","replayed"?}`.
pub(crate) fn circuit_breaker(t: &Transition, replayed: bool) -> String {
    let mut frame = json!({
        "type": "circuit_breaker",
        "agent": &*t.agent,
        "from": t.from.as_str(),
        "to": t.to.as_str(),
        "reason": t.reason.as_str(),
        "ts": rfc3339::format(t.wall),
    });
    if replayed {
        // Kept from before the subscription: history, not news (a client must not
        // alert on it, nor take its `to` as the state now).
        frame["replayed"] = true.into();
    }
    frame.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> FrameError {
        parse(text).unwrap_err()
    }

    #[test]
    fn client_frames() {
        assert_eq!(
            parse(r#"{"type":"query","query":"hi","context":{"a":1},"pipeline":"p","request_id":"r1"}"#)
                .unwrap(),
            ClientFrame::Query {
                input: QueryInput {
                    query: "hi".into(),
                    context: json!({"a": 1}).as_object().unwrap().clone(),
                    pipeline: Some("p".into()),
                    traceparent: None,
                    client: None,
                },
                request_id: Some(json!("r1")),
            }
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","query_id":"q"}"#).unwrap(),
            ClientFrame::Subscribe {
                query_id: "q".into(),
                after_seq: 0,
                outputs: true,
            }
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","query_id":"q","outputs":false}"#).unwrap(),
            ClientFrame::Subscribe {
                query_id: "q".into(),
                after_seq: 0,
                outputs: false,
            }
        );
        assert!(parse(r#"{"type":"subscribe","query_id":"q","outputs":"no"}"#).is_err());
        assert_eq!(
            parse(r#"{"type":"subscribe","query_id":"q","after_seq":18446744073709551615}"#)
                .unwrap(),
            ClientFrame::Subscribe {
                query_id: "q".into(),
                after_seq: MAX_AFTER_SEQ,
                outputs: true,
            }
        );
        assert_eq!(
            parse(r#"{"type":"unsubscribe","query_id":"q"}"#).unwrap(),
            ClientFrame::Unsubscribe {
                query_id: "q".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"cancel","query_id":"q"}"#).unwrap(),
            ClientFrame::Cancel {
                query_id: "q".into()
            }
        );
        assert_eq!(parse(r#"{"type":"ping"}"#).unwrap(), ClientFrame::Ping);
        let interval = |text: &str| match parse(text).unwrap() {
            ClientFrame::SubscribeMetrics { interval } => interval.as_millis(),
            other => panic!("{other:?}"),
        };
        assert_eq!(interval(r#"{"type":"subscribe_metrics"}"#), 1000);
        assert_eq!(
            interval(r#"{"type":"subscribe_metrics","interval_ms":5}"#),
            100
        );
        assert_eq!(
            interval(r#"{"type":"subscribe_metrics","interval_ms":999999}"#),
            60_000
        );
    }

    #[test]
    fn bad_frames_are_bad_requests_with_a_reason() {
        let cases = [
            ("{", "malformed JSON"),
            ("[1]", "JSON object"),
            (r#"{"query":"x"}"#, "missing field `type`"),
            (r#"{"type":5}"#, "`type` must be a string"),
            (r#"{"type":"dance"}"#, "unknown frame type `dance`"),
            (r#"{"type":"subscribe"}"#, "missing field `query_id`"),
            (r#"{"type":"subscribe","query_id":1}"#, "invalid type"),
            (
                r#"{"type":"subscribe","query_id":"q","after_seq":-1}"#,
                "invalid value",
            ),
            (r#"{"type":"query"}"#, "missing field `query`"),
            (r#"{"type":"query","query":" "}"#, "must not be empty"),
            (
                r#"{"type":"query","query":"x","context":[]}"#,
                "invalid type",
            ),
            (r#"{"type":"cancel"}"#, "missing field `query_id`"),
            (
                r#"{"type":"subscribe_metrics","interval_ms":"x"}"#,
                "invalid type",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert_eq!(e.code, ErrorCode::BadRequest, "{text}");
            assert!(e.message.contains(want), "{text}: {}", e.message);
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(err(&deep).code, ErrorCode::BadRequest);
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(10_000));
        assert!(err(&long).message.len() < 300);
        let e = err(r#"{"type":"query","query":"","request_id":7}"#);
        assert_eq!(e.request_id, Some(json!(7)));
    }

    #[test]
    fn server_frames() {
        let v = |s: String| serde_json::from_str::<Value>(&s).unwrap();
        assert_eq!(
            v(accepted(Some(&json!("r")), "q")),
            json!({"type":"accepted","request_id":"r","query_id":"q"})
        );
        assert_eq!(
            v(accepted(None, "q")),
            json!({"type":"accepted","query_id":"q"})
        );
        assert_eq!(
            v(subscribed("q", 3)),
            json!({"type":"subscribed","query_id":"q","after_seq":3})
        );
        assert_eq!(
            v(unsubscribed("q")),
            json!({"type":"unsubscribed","query_id":"q"})
        );
        assert_eq!(v(pong()), json!({"type":"pong"}));
        assert_eq!(
            v(lagged("q", 9)),
            json!({"type":"lagged","query_id":"q","next_seq":9})
        );
        assert_eq!(
            v(metrics(json!({"uptime_s": 1}))),
            json!({"type":"metrics","uptime_s":1})
        );
        assert_eq!(
            v(FrameError::unknown_query("q").to_json()),
            json!({"type":"error","code":"unknown_query","query_id":"q",
                   "message":"no query `q` (it never existed or is no longer retained)"})
        );
    }
}
