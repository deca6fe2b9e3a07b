//! A request body that can be sent again: buffered while it streams, up to a cap.
//!
//! The retry layer wraps every request body in a [`ReplayBody`] and hands each attempt a
//! clone. Nothing is read up front: the first attempt streams the body to the agent as it
//! arrives, and keeps each chunk (a reference count, not a copy) until more than
//! `max_replay_body_bytes` went by. A later attempt replays what was kept and then goes on
//! reading where the earlier one stopped. Past the cap the kept chunks are let go, the
//! attempt in flight carries on streaming, and the body can no longer be replayed: the
//! request is sent once. So a retry costs at most the cap in memory, a large upload is
//! never held back, and an open breaker refuses a call before a byte of its body is read
//! (the body is only read when an attempt is actually sent).
//!
//! The model is linkerd2-proxy's `ReplayBody`. One difference: a clone never waits for,
//! or panics over, the body still being read by an earlier attempt (an HTTP/1 connection
//! may still be writing it when the answer arrives). [`ReplayBody::is_replayable`] says
//! whether a new attempt could be sent right now, and the retry layer does not retry when
//! it could not.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use agentgate_classify::{BoxError, RequestBodyError};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// A body that one attempt streams and a later attempt can replay (see the module docs).
///
/// Clones share what was read. Only one clone reads the wrapped body at a time; a clone
/// that is dropped while reading hands it back for the next one.
pub struct ReplayBody<B> {
    /// `None` for a body that was empty from the start: nothing to share or replay.
    shared: Option<Arc<Shared<B>>>,
    /// The wrapped body, while this clone is the one reading it.
    reading: Option<B>,
    /// Chunks of the shared buffer this clone has sent.
    next: usize,
    /// Whether this clone has sent the trailers.
    trailers_sent: bool,
}

/// The body would have to be replayed, but it cannot be: it went past the replay cap, or
/// failed, while an earlier attempt sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the request body cannot be sent again (it was larger than the replay cap)")]
pub struct NotReplayable;

struct Shared<B> {
    state: Mutex<State<B>>,
    /// The wrapped body's size hint before anything was read.
    size_hint: SizeHint,
}

struct State<B> {
    /// Every chunk read so far, unless `capped`.
    chunks: Vec<Bytes>,
    /// Chunks read so far (also once `chunks` is let go).
    read: usize,
    /// Bytes read so far.
    bytes: usize,
    /// Keep at most this many bytes.
    cap: usize,
    /// More than `cap` bytes went by (or the body failed): `chunks` is empty for good.
    capped: bool,
    /// The wrapped body has ended.
    complete: bool,
    trailers: Option<HeaderMap>,
    /// The wrapped body while no clone is reading it.
    rest: Option<B>,
}

// === impl ReplayBody ===

impl<B: Body> ReplayBody<B> {
    /// Wraps `body`, keeping up to `cap` bytes of it for replays.
    pub fn new(body: B, cap: usize) -> Self {
        // Most requests through a gateway (GET, HEAD, DELETE) have no body at all.
        if body.is_end_stream() {
            return Self::empty();
        }
        let size_hint = body.size_hint();
        let state = State {
            chunks: Vec::new(),
            read: 0,
            bytes: 0,
            cap,
            capped: false,
            complete: false,
            trailers: None,
            // Whichever clone is polled first reads it.
            rest: Some(body),
        };
        Self {
            shared: Some(Arc::new(Shared {
                state: Mutex::new(state),
                size_hint,
            })),
            reading: None,
            next: 0,
            trailers_sent: false,
        }
    }
}

impl<B> ReplayBody<B> {
    /// A body without data: replayable forever, at no cost.
    pub fn empty() -> Self {
        Self {
            shared: None,
            reading: None,
            next: 0,
            trailers_sent: false,
        }
    }

    /// Whether a new attempt could send this body now, from its start: it was empty, or
    /// everything read so far is kept and nobody is reading the rest (a clone that was
    /// reading it has been dropped, or it has ended).
    pub fn is_replayable(&self) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let state = shared.lock();
        !state.capped && (state.complete || state.rest.is_some())
    }
}

impl<B> Default for ReplayBody<B> {
    /// An empty body.
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> Clone for ReplayBody<B> {
    /// A clone that replays the body from its start.
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            reading: None,
            next: 0,
            trailers_sent: false,
        }
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        if let (Some(rest), Some(shared)) = (self.reading.take(), &self.shared) {
            let mut state = shared.lock();
            if !state.complete {
                state.rest = Some(rest);
            }
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(shared) = &this.shared else {
            return Poll::Ready(None);
        };
        if this.reading.is_none() {
            let mut state = shared.lock();
            // First what earlier attempts read …
            if this.next < state.read {
                if state.capped {
                    return Poll::Ready(Some(Err(NotReplayable.into())));
                }
                let chunk = state.chunks[this.next].clone();
                this.next += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if state.complete {
                return match (&state.trailers, this.trailers_sent) {
                    (Some(t), false) => {
                        this.trailers_sent = true;
                        Poll::Ready(Some(Ok(Frame::trailers(t.clone()))))
                    }
                    _ => Poll::Ready(None),
                };
            }
            // … then the rest, which this clone now reads.
            match state.rest.take() {
                Some(rest) => this.reading = Some(rest),
                None => return Poll::Ready(Some(Err(NotReplayable.into()))),
            }
        }
        let reading = this.reading.as_mut().expect("taken above");
        let frame = match Pin::new(reading).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        let mut state = shared.lock();
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    state.read += 1;
                    state.bytes = state.bytes.saturating_add(data.len());
                    this.next = state.read;
                    if state.bytes > state.cap {
                        // This attempt goes on; no other may follow it.
                        state.capped = true;
                        state.chunks = Vec::new();
                    } else {
                        state.chunks.push(data.clone());
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    // Trailers end a body.
                    let trailers = frame.into_trailers().ok();
                    state.trailers.clone_from(&trailers);
                    state.complete = true;
                    this.reading = None;
                    this.trailers_sent = true;
                    Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                }
            },
            Some(Err(e)) => {
                // What the caller sent cannot be trusted to be whole: never replay it.
                state.capped = true;
                state.chunks = Vec::new();
                this.reading = None;
                Poll::Ready(Some(Err(Box::new(RequestBodyError::new(e)))))
            }
            None => {
                state.complete = true;
                this.reading = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        if let Some(reading) = &self.reading {
            return reading.is_end_stream();
        }
        let state = shared.lock();
        state.complete
            && self.next >= state.read
            && (self.trailers_sent || state.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let Some(shared) = &self.shared else {
            return SizeHint::with_exact(0);
        };
        if self.next == 0 && !self.trailers_sent {
            // Every attempt sends the whole body: what the wrapped body said at first.
            return shared.size_hint;
        }
        SizeHint::new()
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ReplayBody");
        match &self.shared {
            None => d.field("empty", &true),
            Some(shared) => {
                let state = shared.lock();
                d.field("read_bytes", &state.bytes)
                    .field("capped", &state.capped)
                    .field("complete", &state.complete)
                    .field("reading", &self.reading.is_some())
            }
        };
        d.finish()
    }
}

// === impl Shared ===

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    fn chunks(parts: &[&'static str]) -> Chunks {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read<B>(body: ReplayBody<B>) -> Result<String, BoxError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let bytes = body.collect().await?.to_bytes();
        Ok(String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn an_empty_body_shares_nothing_and_always_replays() {
        let body = ReplayBody::new(http_body_util::Empty::<Bytes>::new(), 10);
        assert!(body.shared.is_none() && body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.is_replayable());
        assert_eq!(read(body.clone()).await.unwrap(), "");
    }

    #[tokio::test]
    async fn a_body_within_the_cap_is_replayed_whole_by_every_clone() {
        let body = ReplayBody::new(chunks(&["ab", "cd", "e"]), 5);
        let keep = body.clone();
        // Not read yet: a clone could take it over.
        assert!(keep.is_replayable());
        assert_eq!(read(body).await.unwrap(), "abcde");
        assert!(keep.is_replayable());
        for _ in 0..2 {
            assert_eq!(read(keep.clone()).await.unwrap(), "abcde");
        }
    }

    #[tokio::test]
    async fn nothing_is_read_until_an_attempt_polls() {
        let body = ReplayBody::new(Full::new(Bytes::from_static(b"hello")), 64);
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.shared.as_ref().unwrap().lock().read, 0);
        let replay = body.clone();
        drop(body);
        // The first clone was dropped unread: the next one reads the wrapped body.
        assert!(replay.is_replayable());
        assert_eq!(read(replay).await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn a_clone_replays_what_was_read_then_reads_on() {
        let mut first = ReplayBody::new(chunks(&["ab", "cd", "ef"]), 100);
        let keep = first.clone();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        // The first attempt is still reading: no other may start now.
        assert!(!keep.is_replayable());
        drop(first);
        assert!(keep.is_replayable());
        assert_eq!(read(keep.clone()).await.unwrap(), "abcdef");
        assert_eq!(read(keep).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn past_the_cap_the_attempt_streams_on_and_no_replay_follows() {
        let body = ReplayBody::new(chunks(&["abc", "def", "gh"]), 5);
        let keep = body.clone();
        assert_eq!(read(body).await.unwrap(), "abcdefgh");
        assert!(!keep.is_replayable());
        let err = read(keep).await.unwrap_err();
        assert!(err.is::<NotReplayable>(), "{err}");
    }

    #[tokio::test]
    async fn trailers_are_replayed_once_per_clone() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", http::HeaderValue::from_static("7"));
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = ReplayBody::new(StreamBody::new(futures_util::stream::iter(frames)), 10);
        let keep = body.clone();
        for body in [body, keep.clone(), keep] {
            let collected = body.collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["x-sum"], "7");
            assert_eq!(collected.to_bytes(), "ab");
        }
    }

    #[tokio::test]
    async fn a_failing_body_is_the_callers_error_and_never_replayed() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ];
        let body = ReplayBody::new(StreamBody::new(futures_util::stream::iter(frames)), 10);
        let keep = body.clone();
        let err = read(body).await.unwrap_err();
        assert_eq!(
            agentgate_classify::classify_error(&*err),
            agentgate_classify::FailureClass::Cancelled
        );
        assert!(!keep.is_replayable());
    }
}
