//! Streamed stage answers (SPEC §6): an agent that answers `text/event-stream` (SSE) or
//! `application/x-ndjson` is read chunk by chunk, as the bytes arrive.
//!
//! The decoder is fed from the response body frame by frame and holds at most one
//! line or event: a line or an event longer than the caller's limit fails the stream
//! (never unbounded buffering), and so does a silence longer than
//! `stream_idle_timeout` (any bytes count, so SSE `: keep-alive` comments keep a slow
//! stream open). Lines are split by `tokio_util`'s `LinesCodec` (`\n` or `\r\n`, UTF-8
//! checked, length bounded).
//!
//! SSE follows the WHATWG event-stream format for what agents send (`data:` lines,
//! joined with `\n`, dispatched by a blank line; comments; `event`, `id` and `retry`
//! ignored), and is stricter where leniency would hide a broken agent: a line that is
//! no SSE field, and a stream that ends in the middle of an event, fail it. `data:
//! [DONE]` ends the stream and is not a chunk.

use std::fmt;
use std::time::Duration;

use agentgate_classify::BoxError;
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::HeaderMap;
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

/// How a streamed answer is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamFormat {
    /// `text/event-stream`: each event's `data` is a chunk.
    Sse,
    /// `application/x-ndjson`: each non-empty line is a chunk.
    Ndjson,
}

/// A streamed answer, read one chunk at a time with [`ChunkStream::next_chunk`].
pub struct ChunkStream {
    format: StreamFormat,
    body: UnsyncBoxBody<Bytes, BoxError>,
    buf: BytesMut,
    lines: LinesCodec,
    max_bytes: usize,
    idle_timeout: Duration,
    /// SSE: the data of the event being read (`None` before its first `data` line).
    data: Option<String>,
    /// Lines read so far (SSE: a byte-order mark may start the first).
    lines_read: u64,
    /// `[DONE]` seen, or the body ended.
    done: bool,
}

/// Why a stream could not be read to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The connection broke (or the body failed otherwise).
    #[error("the stream broke ({0})")]
    Broken(#[source] BoxError),
    /// The body ended in the middle of an SSE event or line.
    #[error("the stream ended in the middle of an event")]
    Truncated,
    /// Nothing arrived for `stream_idle_timeout`.
    #[error("no data for {} (stream_idle_timeout)", humantime::format_duration(*.0))]
    Idle(Duration),
    /// A line or an event longer than the limit.
    #[error("a line or event longer than {0} bytes")]
    TooLarge(usize),
    /// Bytes that are not UTF-8.
    #[error("a line that is not UTF-8")]
    NotUtf8,
    /// A line that is not part of the format.
    #[error("not an event stream: {0}")]
    Malformed(String),
}

// === impl StreamFormat ===

impl StreamFormat {
    /// The format named by a `Content-Type` header, if it is one that streams.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("text/event-stream") {
            Some(StreamFormat::Sse)
        } else if essence.eq_ignore_ascii_case("application/x-ndjson") {
            Some(StreamFormat::Ndjson)
        } else {
            None
        }
    }

    /// The media type.
    pub fn media_type(self) -> &'static str {
        match self {
            StreamFormat::Sse => "text/event-stream",
            StreamFormat::Ndjson => "application/x-ndjson",
        }
    }
}

impl fmt::Display for StreamFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.media_type())
    }
}

// === impl StreamError ===

impl StreamError {
    /// Whether the stream broke (the connection, the idle timeout, a cut-off event), as
    /// opposed to the agent sending something unusable.
    pub fn is_broken(&self) -> bool {
        matches!(
            self,
            StreamError::Broken(_) | StreamError::Truncated | StreamError::Idle(_)
        )
    }
}

// === impl ChunkStream ===

impl ChunkStream {
    /// Reads `body` as `format`, with a 1 MiB limit per line or event (see
    /// [`ChunkStream::max_bytes`]) and at most `idle_timeout` of silence.
    pub fn new<B>(format: StreamFormat, body: B, idle_timeout: Duration) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        const DEFAULT_MAX: usize = 1024 * 1024;
        Self {
            format,
            body: body.map_err(Into::into).boxed_unsync(),
            buf: BytesMut::new(),
            lines: LinesCodec::new_with_max_length(DEFAULT_MAX),
            max_bytes: DEFAULT_MAX,
            idle_timeout,
            data: None,
            lines_read: 0,
            done: false,
        }
    }

    /// Sets the limit for one line or one event (its `data` joined).
    pub fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max.max(1);
        self.lines = LinesCodec::new_with_max_length(self.max_bytes);
        self
    }

    /// The stream's format.
    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// The next chunk's text: `Ok(None)` once the stream has ended (the body ended
    /// cleanly, or SSE `data: [DONE]`), then always `Ok(None)`.
    ///
    /// Cancel-safe only in that dropping it drops the stream: call it from one task.
    pub async fn next_chunk(&mut self) -> Result<Option<String>, StreamError> {
        loop {
            if self.done {
                return Ok(None);
            }
            // What is buffered first: a frame often holds several lines.
            let max = self.max_bytes;
            while let Some(line) = self
                .lines
                .decode(&mut self.buf)
                .map_err(|e| line_error(e, max))?
            {
                if let Some(chunk) = self.on_line(line)? {
                    return Ok(Some(chunk));
                }
                if self.done {
                    return Ok(None);
                }
            }
            let frame = tokio::time::timeout(self.idle_timeout, self.body.frame()).await;
            match frame {
                Err(_) => return Err(StreamError::Idle(self.idle_timeout)),
                Ok(Some(Err(e))) => return Err(StreamError::Broken(e)),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Ok(None) => return self.at_end(),
            }
        }
    }

    /// The body ended: what is left in the buffer is the last line.
    fn at_end(&mut self) -> Result<Option<String>, StreamError> {
        self.done = true;
        let max = self.max_bytes;
        let last = self
            .lines
            .decode_eof(&mut self.buf)
            .map_err(|e| line_error(e, max))?;
        match (self.format, last) {
            (StreamFormat::Ndjson, Some(line)) => Ok(self.on_ndjson(line)),
            (StreamFormat::Ndjson, None) => Ok(None),
            (StreamFormat::Sse, None) if self.data.is_none() => Ok(None),
            (StreamFormat::Sse, _) => Err(StreamError::Truncated),
        }
    }

    /// One complete line; a chunk when it completes one.
    fn on_line(&mut self, line: String) -> Result<Option<String>, StreamError> {
        self.lines_read += 1;
        match self.format {
            StreamFormat::Ndjson => Ok(self.on_ndjson(line)),
            StreamFormat::Sse => self.on_sse(line),
        }
    }

    fn on_ndjson(&mut self, line: String) -> Option<String> {
        (!line.trim().is_empty()).then_some(line)
    }

    fn on_sse(&mut self, line: String) -> Result<Option<String>, StreamError> {
        let line = match (self.lines_read, line.strip_prefix('\u{feff}')) {
            (1, Some(rest)) => rest,
            _ => line.as_str(),
        };
        if line.is_empty() {
            // A blank line dispatches the event (one without data is no event).
            return Ok(match self.data.take() {
                Some(data) if data == "[DONE]" => {
                    self.done = true;
                    None
                }
                data => data,
            });
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                let joined = data.len() + usize::from(!data.is_empty()) + value.len();
                if joined > self.max_bytes {
                    return Err(StreamError::TooLarge(self.max_bytes));
                }
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
                Ok(None)
            }
            "event" | "id" | "retry" => Ok(None),
            other => {
                let shown: String = other.chars().take(32).collect();
                Err(StreamError::Malformed(format!(
                    "a line starting {shown:?} is no SSE field (data, event, id, retry)"
                )))
            }
        }
    }
}

fn line_error(e: LinesCodecError, max: usize) -> StreamError {
    match e {
        LinesCodecError::MaxLineLengthExceeded => StreamError::TooLarge(max),
        // The codec reports bytes that are not UTF-8 as an I/O error of its own.
        LinesCodecError::Io(_) => StreamError::NotUtf8,
    }
}

impl fmt::Debug for ChunkStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkStream")
            .field("format", &self.format)
            .field("max_bytes", &self.max_bytes)
            .field("idle_timeout", &self.idle_timeout)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body::Frame;
    use http_body_util::channel::{Channel, Sender};
    use http_body_util::StreamBody;

    use super::*;

    const IDLE: Duration = Duration::from_secs(30);

    /// A body of these frames, as the agent wrote them.
    fn body(
        frames: &[&[u8]],
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
        let frames: Vec<_> = frames
            .iter()
            .map(|f| Ok(Frame::data(Bytes::copy_from_slice(f))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn all(mut s: ChunkStream) -> Result<Vec<String>, StreamError> {
        let mut out = Vec::new();
        while let Some(chunk) = s.next_chunk().await? {
            out.push(chunk);
        }
        assert_eq!(s.next_chunk().await.unwrap(), None, "ended for good");
        Ok(out)
    }

    fn sse(frames: &[&[u8]]) -> ChunkStream {
        ChunkStream::new(StreamFormat::Sse, body(frames), IDLE)
    }

    fn ndjson(frames: &[&[u8]]) -> ChunkStream {
        ChunkStream::new(StreamFormat::Ndjson, body(frames), IDLE)
    }

    #[test]
    fn content_types_that_stream() {
        let of = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, v.parse().unwrap());
            StreamFormat::of(&h)
        };
        assert_eq!(of("text/event-stream"), Some(StreamFormat::Sse));
        assert_eq!(
            of("Text/Event-Stream; charset=utf-8"),
            Some(StreamFormat::Sse)
        );
        assert_eq!(of("application/x-ndjson"), Some(StreamFormat::Ndjson));
        assert_eq!(of("application/json"), None);
        assert_eq!(StreamFormat::of(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn sse_events_split_anywhere_are_reassembled() {
        let chunks = all(sse(&[
            b"\xef\xbb\xbf: hello\r\nevent: token\r\ndata: {\"t\":",
            b"\"a\"}\r\n\r\nid: 2\ndata:b\n",
            b"data: c\n\nretry: 10\n\ndata\n\ndata: [DONE]\n\ndata: after\n\n",
        ]))
        .await
        .unwrap();
        // Multi-line data joined with `\n`; a bare `data` is an empty chunk; nothing after [DONE].
        assert_eq!(chunks, [r#"{"t":"a"}"#, "b\nc", ""]);
    }

    #[tokio::test]
    async fn ndjson_lines_are_chunks_and_the_last_may_lack_its_newline() {
        let chunks = all(ndjson(&[b"{\"a\":1}\n\n{\"a\"", b":2}\r\n  \n\"three\""]))
            .await
            .unwrap();
        assert_eq!(chunks, [r#"{"a":1}"#, r#"{"a":2}"#, r#""three""#]);
    }

    #[tokio::test]
    async fn what_cannot_be_a_stream_fails_it() {
        let err = all(sse(&[b"data: a\n\nhello world\n\n"]))
            .await
            .unwrap_err();
        assert!(matches!(err, StreamError::Malformed(_)), "{err}");
        assert!(!err.is_broken());
        let err = all(sse(&[b"data: a\n\ndata: b\n"])).await.unwrap_err();
        assert!(matches!(err, StreamError::Truncated), "{err}");
        assert!(err.is_broken());
        let err = all(ndjson(&[b"{\"a\":1}\n", b"\xff\xfe\n"]))
            .await
            .unwrap_err();
        assert!(matches!(err, StreamError::NotUtf8), "{err}");
    }

    #[tokio::test]
    async fn a_line_or_event_over_the_limit_fails_before_it_is_buffered_whole() {
        // 10 MB without a newline: refused once the limit is passed.
        let (mut tx, rx) = Channel::<Bytes, Infallible>::new(4);
        let reader = tokio::spawn(async move {
            let s = ChunkStream::new(StreamFormat::Ndjson, rx, IDLE).max_bytes(1000);
            all(s).await
        });
        let mut sent = 0;
        for _ in 0..10_000 {
            if tx.send_data(Bytes::from(vec![b'x'; 1000])).await.is_err() {
                break;
            }
            sent += 1;
        }
        let err = reader.await.unwrap().unwrap_err();
        assert!(matches!(err, StreamError::TooLarge(1000)), "{err}");
        assert!(
            sent < 10,
            "the reader stopped at the limit, after {sent} KB"
        );
        // An event of several lines, each short enough, is bounded as a whole too.
        let s = sse(&[b"data: 123456\ndata: 123456\n\n"]).max_bytes(10);
        assert!(matches!(
            all(s).await.unwrap_err(),
            StreamError::TooLarge(10)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_longer_than_the_idle_timeout_fails_the_stream() {
        let (mut tx, rx): (Sender<Bytes>, _) = Channel::new(4);
        let mut s = ChunkStream::new(StreamFormat::Sse, rx, Duration::from_secs(5));
        tx.send_data(Bytes::from_static(b"data: 1\n\n"))
            .await
            .unwrap();
        assert_eq!(s.next_chunk().await.unwrap().as_deref(), Some("1"));
        // A comment 4 s later keeps it alive; then 5 s of nothing ends it.
        let keep_alive = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            tx.send_data(Bytes::from_static(b": ping\n")).await.unwrap();
            tx
        });
        let started = tokio::time::Instant::now();
        let err = s.next_chunk().await.unwrap_err();
        assert!(matches!(err, StreamError::Idle(_)), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(9));
        assert_eq!(err.to_string(), "no data for 5s (stream_idle_timeout)");
        drop(keep_alive.await.unwrap());
    }

    #[tokio::test]
    async fn a_broken_body_is_a_broken_stream() {
        let (mut tx, rx) = Channel::<Bytes, std::io::Error>::new(4);
        let mut s = ChunkStream::new(StreamFormat::Ndjson, rx, IDLE);
        tx.send_data(Bytes::from_static(b"1\n")).await.unwrap();
        tx.abort(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(s.next_chunk().await.unwrap().as_deref(), Some("1"));
        let err = s.next_chunk().await.unwrap_err();
        assert!(
            matches!(err, StreamError::Broken(_)) && err.is_broken(),
            "{err}"
        );
    }
}
