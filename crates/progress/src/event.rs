//! The JSON shapes of SPEC §3, server → client, per query.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// What happened to a stage (`progress.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// The stage's first attempt is being sent.
    Started,
    /// An attempt failed and another is scheduled.
    Retrying,
    /// The stage failed over to a fallback.
    Fallback,
    /// The stage produced its output.
    Completed,
    /// An optional stage failed and the query goes on without it.
    Skipped,
    /// The stage failed for good.
    Failed,
}

/// `{"kind","message"}` (plus `stage` where SPEC has it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The stage that failed, for terminal `failed` events.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stage: Option<String>,
    /// A failure class (`timeout`, `connect`, `circuit_open`, …).
    pub kind: String,
    /// A human-readable message (never internals).
    pub message: String,
}

/// The body of an event; the hub adds `query_id`, `seq` and `ts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A stage's progress.
    Progress {
        /// The stage name.
        stage: String,
        /// What happened.
        status: StageStatus,
        /// Overall progress, 0..=100, never decreasing within a query.
        progress: u8,
        /// The attempt, for `started` and `retrying`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        attempt: Option<u32>,
        /// Extra detail (`{"delay_ms": 250}` for `retrying`, the fallback taken, …).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        detail: Option<Value>,
    },
    /// An attempt failed (not terminal).
    Error {
        /// The stage name.
        stage: String,
        /// What failed.
        error: ErrorInfo,
    },
    /// One chunk of a stage's streamed answer (SPEC §6), published the moment it is
    /// parsed. Not terminal, and never part of a query's record.
    Output {
        /// The stage name.
        stage: String,
        /// The attempt whose answer streams (1-based; a fallback agent's attempts count
        /// from 1 again), so clients can tell a fallback's chunks from the primary's.
        attempt: u32,
        /// 0, 1, 2, … per attempt.
        index: u64,
        /// The chunk: its JSON when it parses as JSON, else the string.
        chunk: JsonText,
    },
    /// Terminal: the query's result.
    Completed {
        /// `{stage: output}`, as JSON text (written into the event as it is).
        result: JsonText,
        /// Wall time of the whole query.
        duration_ms: u64,
    },
    /// Terminal: the query failed.
    Failed {
        /// Why.
        error: ErrorInfo,
    },
    /// Terminal: the query was cancelled.
    Cancelled {},
}

/// One event of one query, as sent to clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressEvent {
    /// The body (`type` and its fields).
    #[serde(flatten)]
    pub kind: EventKind,
    /// The query.
    pub query_id: String,
    /// 1, 2, 3, … per query, without gaps.
    pub seq: u64,
    /// When the event was published (RFC 3339, UTC).
    #[serde(with = "rfc3339")]
    pub ts: SystemTime,
}

/// An event with its JSON text, serialized once however many clients receive it.
///
/// Only the JSON text is kept (plus the seq and whether it is terminal): a parsed
/// `serde_json::Value` of a `completed` event's result takes several times its text's
/// memory, and every retained query keeps up to `replay_events` of these.
#[derive(Clone)]
pub struct Published {
    seq: u64,
    terminal: bool,
    /// An `output` event (subscriptions may leave those out).
    output: bool,
    /// `serde_json::to_string(&event)`.
    pub json: Arc<str>,
    /// [`Published::json_bytes`], made the first time it is asked for.
    bytes: OnceLock<Bytes>,
}

/// A JSON value kept as its compact text, shared: cloning it copies no text, and it
/// serializes as that text, verbatim.
///
/// Finished queries are kept for `query_retention`, so what they hold matters: a
/// parsed `serde_json::Value` takes 5 to 10 times the memory of its text, and a query's
/// `result` appears both in its record and in its terminal `completed` event. Held as
/// `JsonText`, the record's result is a slice of the event's text
/// ([`Published::completed_result`]), so the result is in memory once.
///
/// The text is always valid JSON: it is only ever made by serializing a value.
#[derive(Clone)]
pub struct JsonText {
    text: Arc<str>,
    start: usize,
    end: usize,
}

// === impl JsonText ===

impl JsonText {
    /// The compact JSON text of `value`.
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        let text: Arc<str> = serde_json::to_string(value)?.into();
        Ok(Self {
            end: text.len(),
            text,
            start: 0,
        })
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.text[self.start..self.end]
    }

    /// The value, parsed from the text.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.get()).expect("JsonText holds valid JSON")
    }

    /// The value that starts at `at` in `text` (a shared slice of it), if one does.
    fn slice_of(text: &Arc<str>, at: usize) -> Option<Self> {
        let rest = text.get(at..)?;
        let mut de = serde_json::Deserializer::from_str(rest);
        let raw = <&RawValue>::deserialize(&mut de).ok()?;
        // `raw` borrows from `rest`: its offset there is where the value starts.
        let start = at + (raw.get().as_ptr() as usize - rest.as_ptr() as usize);
        Some(Self {
            text: text.clone(),
            start,
            end: start + raw.get().len(),
        })
    }
}

impl From<Value> for JsonText {
    fn from(value: Value) -> Self {
        Self::from(&value)
    }
}

impl From<&Value> for JsonText {
    fn from(value: &Value) -> Self {
        Self::new(value).expect("a serde_json::Value serializes")
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for JsonText {}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Borrowing the text as a `RawValue` checks it (a scan, no allocation); JSON
        // serializers then copy it as it is.
        let raw: &RawValue = serde_json::from_str(self.get()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    /// Through a `Value`, so it also works where serde buffers the input (internally
    /// tagged enums, `flatten`), which a `RawValue` does not survive.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::new(&value).map_err(serde::de::Error::custom)
    }
}

// === impl EventKind ===

impl EventKind {
    /// `completed`, `failed` and `cancelled` end a query.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::Completed { .. } | EventKind::Failed { .. } | EventKind::Cancelled {}
        )
    }

    /// The `type` field's value.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::Progress { .. } => "progress",
            EventKind::Error { .. } => "error",
            EventKind::Output { .. } => "output",
            EventKind::Completed { .. } => "completed",
            EventKind::Failed { .. } => "failed",
            EventKind::Cancelled {} => "cancelled",
        }
    }
}

// === impl Published ===

impl Published {
    /// Serializes `event` once.
    pub fn new(event: ProgressEvent) -> Self {
        let json = serde_json::to_string(&event)
            .expect("events serialize")
            .into();
        Self {
            seq: event.seq,
            terminal: event.kind.is_terminal(),
            output: matches!(event.kind, EventKind::Output { .. }),
            json,
            bytes: OnceLock::new(),
        }
    }

    /// An event published elsewhere (another replica), from its JSON text, which is
    /// kept as it is: its query id, `seq`, `ts` and body are the original's. Returns the
    /// query id with it.
    pub fn from_json(json: Arc<str>) -> Result<(Arc<str>, Self), serde_json::Error> {
        /// Only what the hub needs; the rest of the text is not looked at.
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            query_id: std::borrow::Cow<'a, str>,
            seq: u64,
        }
        let head: Head<'_> = serde_json::from_str(&json)?;
        let terminal = matches!(&*head.kind, "completed" | "failed" | "cancelled");
        if head.seq == 0 {
            return Err(serde::de::Error::custom("seq counts from 1"));
        }
        let query_id: Arc<str> = head.query_id.into();
        Ok((
            query_id,
            Self {
                seq: head.seq,
                terminal,
                output: head.kind == "output",
                json,
                bytes: OnceLock::new(),
            },
        ))
    }

    /// The JSON text as [`Bytes`] that share this event's text: made once (one small
    /// allocation), after which every call is a reference count. For transports that
    /// send the same event to many connections.
    pub fn json_bytes(&self) -> Bytes {
        /// Lends the text to `Bytes` without copying it.
        struct Text(Arc<str>);
        impl AsRef<[u8]> for Text {
            fn as_ref(&self) -> &[u8] {
                self.0.as_bytes()
            }
        }
        self.bytes
            .get_or_init(|| Bytes::from_owner(Text(self.json.clone())))
            .clone()
    }

    /// The event's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether this is the query's terminal event (`completed`, `failed`, `cancelled`).
    pub fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// Whether this is an `output` event (a chunk of a streamed answer).
    pub fn is_output(&self) -> bool {
        self.output
    }

    /// The `result` of a `completed` event, as a slice of this event's text (no copy).
    /// `None` for every other event.
    pub fn completed_result(&self) -> Option<JsonText> {
        // `type` comes first, then the variant's fields in order (`ProgressEvent`
        // flattens `EventKind`, which is tagged by `type`).
        const PREFIX: &str = r#"{"type":"completed","result":"#;
        if !self.terminal || !self.json.starts_with(PREFIX) {
            return None;
        }
        JsonText::slice_of(&self.json, PREFIX.len())
    }

    /// The event, parsed back from its JSON (for tests and other backends; the hot
    /// path only ever sends the text).
    pub fn event(&self) -> ProgressEvent {
        serde_json::from_str(&self.json).expect("published JSON is an event")
    }
}

impl PartialEq for Published {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
            && self.terminal == other.terminal
            && self.output == other.output
            && self.json == other.json
    }
}

impl fmt::Debug for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json)
    }
}

/// RFC 3339 timestamps with millisecond precision, in UTC.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Formats `t` as `2026-11-25T12:00:00.123Z`.
    pub fn format(t: SystemTime) -> String {
        humantime::format_rfc3339_millis(t).to_string()
    }

    /// Serializes a timestamp.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    /// Deserializes a timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at() -> SystemTime {
        humantime::parse_rfc3339("2026-11-25T12:00:00.250Z").unwrap()
    }

    fn event(kind: EventKind) -> Value {
        let e = ProgressEvent {
            kind,
            query_id: "q1".into(),
            seq: 3,
            ts: at(),
        };
        let v: Value = serde_json::from_str(&Published::new(e.clone()).json).unwrap();
        let back: ProgressEvent = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, e, "round trip");
        v
    }

    #[test]
    fn spec_shapes() {
        assert_eq!(
            event(EventKind::Progress {
                stage: "nlp".into(),
                status: StageStatus::Retrying,
                progress: 10,
                attempt: Some(2),
                detail: Some(json!({"delay_ms": 250})),
            }),
            json!({"type":"progress","query_id":"q1","seq":3,"ts":"2026-11-25T12:00:00.250Z",
                   "stage":"nlp","status":"retrying","progress":10,"attempt":2,"detail":{"delay_ms":250}})
        );
        assert_eq!(
            event(EventKind::Progress {
                stage: "nlp".into(),
                status: StageStatus::Started,
                progress: 0,
                attempt: None,
                detail: None
            }),
            json!({"type":"progress","query_id":"q1","seq":3,"ts":"2026-11-25T12:00:00.250Z",
                   "stage":"nlp","status":"started","progress":0})
        );
        assert_eq!(
            event(EventKind::Error {
                stage: "nlp".into(),
                error: ErrorInfo {
                    stage: None,
                    kind: "timeout".into(),
                    message: "attempt 1 timed out".into()
                },
            }),
            json!({"type":"error","query_id":"q1","seq":3,"ts":"2026-11-25T12:00:00.250Z",
                   "stage":"nlp","error":{"kind":"timeout","message":"attempt 1 timed out"}})
        );
        assert_eq!(
            event(EventKind::Completed {
                result: json!({"nlp": {"intent": "x"}}).into(),
                duration_ms: 12
            }),
            json!({"type":"completed","query_id":"q1","seq":3,"ts":"2026-11-25T12:00:00.250Z",
                   "result":{"nlp":{"intent":"x"}},"duration_ms":12})
        );
        assert_eq!(
            event(EventKind::Failed {
                error: ErrorInfo {
                    stage: Some("nlp".into()),
                    kind: "connect".into(),
                    message: "m".into()
                },
            }),
            json!({"type":"failed","query_id":"q1","seq":3,"ts":"2026-11-25T12:00:00.250Z",
                   "error":{"stage":"nlp","kind":"connect","message":"m"}})
        );
        assert_eq!(
            event(EventKind::Output {
                stage: "llm".into(),
                attempt: 2,
                index: 0,
                chunk: JsonText::from(json!({"delta": "Hel"})),
            }),
            json!({"type":"output","query_id":"q1","seq":3,"ts":"2026-11-25T12:00:00.250Z",
                   "stage":"llm","attempt":2,"index":0,"chunk":{"delta":"Hel"}})
        );
        assert_eq!(
            event(EventKind::Cancelled {}),
            json!({"type":"cancelled","query_id":"q1","seq":3,"ts":"2026-11-25T12:00:00.250Z"})
        );
    }

    #[test]
    fn output_events_are_marked_here_and_when_read_back() {
        let chunk = published(EventKind::Output {
            stage: "llm".into(),
            attempt: 1,
            index: 4,
            chunk: JsonText::new("lo").unwrap(),
        });
        assert!(chunk.is_output() && !chunk.is_terminal());
        let (_, back) = Published::from_json(chunk.json.clone()).unwrap();
        assert!(back.is_output());
        assert_eq!(back, chunk);
        let other = published(EventKind::Cancelled {});
        assert!(!other.is_output());
        assert!(!Published::from_json(other.json.clone())
            .unwrap()
            .1
            .is_output());
    }

    #[test]
    fn json_bytes_share_the_text() {
        let p = published(EventKind::Cancelled {});
        let (a, b) = (p.json_bytes(), p.json_bytes());
        assert_eq!(&a[..], p.json.as_bytes());
        // The same bytes every time: made once, then shared.
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(a.as_ptr(), p.json.as_ptr());
        assert_eq!(p.clone(), p, "equality is by content");
    }

    fn published(kind: EventKind) -> Published {
        Published::new(ProgressEvent {
            kind,
            query_id: "q1".into(),
            seq: 9,
            ts: at(),
        })
    }

    #[test]
    fn completed_result_is_a_slice_of_the_event_text() {
        let result = json!({"a": {"x": [1, 2.5, "s\"}{"]}, "b": null, "c": "é"});
        let p = published(EventKind::Completed {
            result: JsonText::from(&result),
            duration_ms: 7,
        });
        let r = p.completed_result().unwrap();
        assert!(Arc::ptr_eq(&r.text, &p.json), "shares the event's text");
        assert_eq!(r.get(), serde_json::to_string(&result).unwrap());
        assert_eq!(r.to_value(), result);
        for kind in [
            EventKind::Cancelled {},
            EventKind::Failed {
                error: ErrorInfo {
                    stage: None,
                    kind: "k".into(),
                    message: "m".into(),
                },
            },
            EventKind::Progress {
                stage: "s".into(),
                status: StageStatus::Completed,
                progress: 100,
                attempt: None,
                detail: Some(json!({"result": 1})),
            },
        ] {
            assert_eq!(published(kind).completed_result(), None);
        }
    }

    #[test]
    fn json_text_serializes_verbatim_and_round_trips() {
        let v = json!({"k": [1, {"n": -0.5e-3, "big": u64::MAX}], "s": "é\n\"", "t": true});
        let t = JsonText::from(&v);
        assert_eq!(t.get(), serde_json::to_string(&v).unwrap());
        assert_eq!(serde_json::to_string(&t).unwrap(), t.get());
        assert_eq!(serde_json::to_value(&t).unwrap(), v);
        assert_eq!(
            serde_json::to_string(&json!({"x": v.clone()})).unwrap(),
            serde_json::to_string(&std::collections::BTreeMap::from([("x", t.clone())])).unwrap()
        );
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        assert_eq!(serde_json::from_str::<JsonText>(&pretty).unwrap(), t);
        assert_eq!(format!("{t:?}"), t.get());
    }
}
