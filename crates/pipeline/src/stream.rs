//! A stage's streamed answer (SPEC §6): each chunk published as an `output` event the
//! moment it is parsed, and the stage's output made from the chunks as the stage's
//! `stream_result` says.
//!
//! The agent's stack ended the attempt at the answer's head (a success for the breaker
//! and the retry layer: nothing is retried once the agent started streaming). From
//! there the query's deadline bounds the whole stream, `stream_idle_timeout` each
//! silence, `[server] max_body_bytes` each line or event, and the agent's
//! `max_response_bytes` what the output may hold. A stream that breaks fails the stage
//! with `stream_broken`; one that sends what cannot be read, with `bad_response`.

use agentgate_agent_client::{ChunkStream, StreamError};
use agentgate_progress::{ErrorInfo, EventKind, JsonText, StageStatus};
use serde_json::Value;
use tokio::time::Instant;

use crate::call::{failed, Call};
use crate::query::QueryRun;
use crate::record::{millis, AttemptJson};
use crate::{ErrorKind, StreamResult};

/// The stage's output, built as chunks come, within a size limit.
#[derive(Debug)]
struct Collector {
    mode: StreamResult,
    max_bytes: usize,
    /// `array`: every chunk; `last`: the last one.
    chunks: Vec<JsonText>,
    /// `array`: the bytes of the JSON array so far; `concat`: of the string.
    size: usize,
    text: String,
}

/// Why the chunks so far cannot make the output.
#[derive(Debug)]
struct TooLarge(usize);

/// Where the stream stands for the caller's messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamAt<'a> {
    pub(crate) stage: &'a str,
    pub(crate) agent: &'a str,
    /// The attempt whose answer streams.
    pub(crate) attempt: u32,
    /// Progress at the stage's end.
    pub(crate) progress_end: u8,
    /// The agent's `max_response_bytes`.
    pub(crate) max_bytes: usize,
}

// === impl QueryRun ===

impl QueryRun {
    /// Reads `stream` to its end (or until the deadline), publishing each chunk, and
    /// reports the stage `completed` when it ends cleanly. The streamed attempt (the last
    /// of `attempts`) is extended to the stream's end, and marked failed if it broke.
    pub(crate) async fn read_stream(
        &self,
        at: StreamAt<'_>,
        stream: ChunkStream,
        mode: StreamResult,
        attempts: &mut [AttemptJson],
    ) -> Call {
        let started = Instant::now();
        let mut stream = stream.max_bytes(self.max_chunk_bytes);
        let mut output = Collector::new(mode, at.max_bytes);
        let mut index = 0u64;
        let read = async {
            while let Some(text) = stream.next_chunk().await.map_err(Ended::Stream)? {
                let chunk = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                let chunk = output
                    .push(&chunk)
                    .map_err(|TooLarge(max)| Ended::TooLarge(max))?;
                let _ = self.publisher.publish(EventKind::Output {
                    stage: at.stage.to_owned(),
                    attempt: at.attempt,
                    index,
                    chunk,
                });
                index += 1;
            }
            Ok(())
        };
        let ended = match tokio::time::timeout_at(self.deadline, read).await {
            Ok(ended) => ended,
            Err(_elapsed) => Err(Ended::Deadline),
        };
        if let Some(last) = attempts.last_mut() {
            last.duration_ms += millis(started.elapsed());
        }
        let (kind, message) = match ended {
            Ok(()) => {
                let _ = self.publisher.publish(EventKind::Progress {
                    stage: at.stage.to_owned(),
                    status: StageStatus::Completed,
                    progress: at.progress_end,
                    attempt: None,
                    detail: None,
                });
                return Call::Output(output.finish());
            }
            Err(Ended::Deadline) => (
                ErrorKind::Deadline,
                format!(
                    "agent `{}` was still streaming at the query deadline ({index} chunks)",
                    at.agent
                ),
            ),
            Err(Ended::TooLarge(max)) => (
                ErrorKind::BadResponse,
                format!(
                    "agent `{}` streamed more than its max_response_bytes ({max} bytes)",
                    at.agent
                ),
            ),
            Err(Ended::Stream(e)) if e.is_broken() => (
                ErrorKind::StreamBroken,
                format!(
                    "the stream from agent `{}` broke after {index} chunks: {e}",
                    at.agent
                ),
            ),
            Err(Ended::Stream(e)) => (
                ErrorKind::BadResponse,
                format!(
                    "agent `{}` streamed an unusable answer after {index} chunks: {e}",
                    at.agent
                ),
            ),
        };
        tracing::debug!(query_id = %self.query_id, stage = at.stage, agent = at.agent, %message, "streamed answer failed");
        if let Some(last) = attempts.last_mut() {
            last.error = Some(kind);
        }
        let _ = self.publisher.publish(EventKind::Error {
            stage: at.stage.to_owned(),
            error: ErrorInfo {
                stage: None,
                kind: kind.as_str().to_owned(),
                message: format!("attempt {}: {message}", at.attempt),
            },
        });
        failed(kind, message)
    }
}

/// How reading a stream stopped short.
enum Ended {
    Stream(StreamError),
    TooLarge(usize),
    Deadline,
}

// === impl Collector ===

impl Collector {
    fn new(mode: StreamResult, max_bytes: usize) -> Self {
        Self {
            mode,
            max_bytes,
            chunks: Vec::new(),
            size: 2,
            text: String::new(),
        }
    }

    /// Takes `chunk` into the output; returns it as the JSON text to publish.
    fn push(&mut self, chunk: &Value) -> Result<JsonText, TooLarge> {
        let text = JsonText::from(chunk);
        match self.mode {
            StreamResult::Array => {
                self.size += text.get().len() + usize::from(!self.chunks.is_empty());
                self.check(self.size)?;
                self.chunks.push(text.clone());
            }
            StreamResult::Last => {
                self.chunks.clear();
                self.chunks.push(text.clone());
            }
            StreamResult::Concat => {
                if let Some(part) = concat_part(chunk) {
                    self.check(self.text.len() + part.len())?;
                    self.text.push_str(part);
                }
            }
        }
        Ok(text)
    }

    fn check(&self, size: usize) -> Result<(), TooLarge> {
        if size > self.max_bytes {
            return Err(TooLarge(self.max_bytes));
        }
        Ok(())
    }

    fn finish(self) -> JsonText {
        let made = match self.mode {
            StreamResult::Array => JsonText::new(&self.chunks),
            StreamResult::Last => match self.chunks.into_iter().next() {
                Some(last) => return last,
                None => JsonText::new(&Value::Null),
            },
            StreamResult::Concat => JsonText::new(&self.text),
        };
        made.expect("JSON texts serialize")
    }
}

/// What a chunk adds to a `concat` output: a string chunk itself, or the `text`,
/// `delta` or `content` string field of an object chunk (the first there is).
fn concat_part(chunk: &Value) -> Option<&str> {
    match chunk {
        Value::String(s) => Some(s),
        Value::Object(fields) => ["text", "delta", "content"]
            .iter()
            .find_map(|key| fields.get(*key).and_then(Value::as_str)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn collect(mode: StreamResult, max: usize, chunks: &[Value]) -> Result<Value, TooLarge> {
        let mut c = Collector::new(mode, max);
        for chunk in chunks {
            c.push(chunk)?;
        }
        Ok(c.finish().to_value())
    }

    #[test]
    fn each_stream_result() {
        let chunks = [
            json!("Hel"),
            json!({"delta": "lo"}),
            json!({"text": ", "}),
            json!({"content": "world", "text": 1}),
            json!(7),
            json!({"other": "x"}),
        ];
        assert_eq!(
            collect(StreamResult::Array, 1000, &chunks).unwrap(),
            Value::Array(chunks.to_vec())
        );
        assert_eq!(
            collect(StreamResult::Last, 1000, &chunks).unwrap(),
            json!({"other": "x"})
        );
        assert_eq!(
            collect(StreamResult::Concat, 1000, &chunks).unwrap(),
            json!("Hello, world")
        );
        assert_eq!(collect(StreamResult::Array, 10, &[]).unwrap(), json!([]));
        assert_eq!(collect(StreamResult::Last, 10, &[]).unwrap(), json!(null));
        assert_eq!(collect(StreamResult::Concat, 10, &[]).unwrap(), json!(""));
    }

    #[test]
    fn the_output_is_bounded() {
        // `["ab","cd"]` is 11 bytes.
        let chunks = [json!("ab"), json!("cd")];
        assert!(collect(StreamResult::Array, 11, &chunks).is_ok());
        assert!(collect(StreamResult::Array, 10, &chunks).is_err());
        assert!(collect(StreamResult::Concat, 4, &chunks).is_ok());
        assert!(collect(StreamResult::Concat, 3, &chunks).is_err());
    }
}
