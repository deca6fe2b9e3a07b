//! The response body: complete, one that breaks the connection mid-way, or a stream of
//! chunks written one interval apart.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::StreamMode;

/// A response body of the mock agent.
#[derive(Debug)]
pub(crate) struct MockBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    /// Sends `partial`, gives the connection one chance to flush it, then fails so that
    /// hyper aborts the connection short of the declared `Content-Length`.
    Broken {
        partial: Option<Bytes>,
        flushed: bool,
        declared: u64,
    },
    Stream(Box<Ticker>),
}

/// A streamed answer: a chunk every `interval`, written as it is due (no task, no
/// buffer: dropping the body stops it).
#[derive(Debug)]
pub(crate) struct Ticker {
    mode: StreamMode,
    next: u32,
    chunks: u32,
    break_after: Option<u32>,
    interval: Duration,
    sleep: Pin<Box<Sleep>>,
    /// `[DONE]` written (SSE).
    done: bool,
    /// Breaking: hyper was given the chance to flush the last chunk.
    flushed: bool,
}

/// The canned answer a streaming mock agent spells out, one word per chunk.
const ANSWER: &str = "agentgate publishes every chunk of a streamed answer the moment it \
    arrives: clients watch the tokens on the WebSocket while the agent is still writing.";

/// The error a broken body ends with; hyper closes the connection on it.
#[derive(Debug, thiserror::Error)]
#[error("connection reset by mock agent")]
pub(crate) struct InjectedReset;

// === impl MockBody ===

impl MockBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// `chunks` chunks, one `interval` apart, as `mode` frames them (the first after one
    /// interval); the connection breaks after `break_after` of them.
    pub(crate) fn stream(
        mode: StreamMode,
        chunks: u32,
        interval: Duration,
        break_after: Option<u32>,
    ) -> Self {
        Self {
            kind: Kind::Stream(Box::new(Ticker {
                mode,
                next: 0,
                chunks,
                break_after,
                interval,
                sleep: Box::pin(tokio::time::sleep(interval)),
                done: false,
                flushed: false,
            })),
        }
    }

    /// A body that declares `whole.len()` bytes but sends only the first half.
    pub(crate) fn broken(whole: Bytes) -> Self {
        let declared = whole.len() as u64;
        let partial = whole.slice(..whole.len() / 2);
        Self {
            kind: Kind::Broken {
                partial: (!partial.is_empty()).then_some(partial),
                flushed: false,
                declared,
            },
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = InjectedReset;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InjectedReset>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Broken {
                partial, flushed, ..
            } => {
                if let Some(data) = partial.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if !*flushed {
                    // hyper flushes what it buffered (head + partial body) when the body is
                    // pending; only then fail, so the client sees a head and a cut body
                    // rather than a connection closed before any answer.
                    *flushed = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(InjectedReset)))
            }
            Kind::Stream(ticker) => ticker.poll_chunk(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Broken { declared, .. } => SizeHint::with_exact(*declared),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

// === impl Ticker ===

impl Ticker {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InjectedReset>>> {
        if self.break_after == Some(self.next) && self.next < self.chunks {
            if !self.flushed {
                // As for a broken body: let hyper write what it has, then fail.
                self.flushed = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(InjectedReset)));
        }
        if self.next >= self.chunks {
            if self.mode == StreamMode::Sse && !self.done {
                self.done = true;
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    b"data: [DONE]\n\n",
                )))));
            }
            return Poll::Ready(None);
        }
        ready!(self.sleep.as_mut().poll(cx));
        let due = self.sleep.deadline() + self.interval;
        self.sleep.as_mut().reset(due.max(Instant::now()));
        let index = self.next;
        self.next += 1;
        Poll::Ready(Some(Ok(Frame::data(chunk(self.mode, index)))))
    }
}

/// Chunk `index` as `mode` frames it.
fn chunk(mode: StreamMode, index: u32) -> Bytes {
    let words = ANSWER.split_whitespace().count() as u32;
    let word = ANSWER
        .split_whitespace()
        .nth((index % words.max(1)) as usize)
        .unwrap_or("");
    let ts_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let json = serde_json::json!({"index": index, "delta": format!("{word} "), "ts_us": ts_us});
    let text = match mode {
        StreamMode::Sse => format!("data: {json}\n\n"),
        StreamMode::Ndjson | StreamMode::None => format!("{json}\n"),
    };
    Bytes::from(text)
}
