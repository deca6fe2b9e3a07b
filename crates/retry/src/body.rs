//! A request body that can be sent again when it is small enough.

use std::pin::Pin;
use std::task::{Context, Poll};

use agentgate_classify::BoxError;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

/// The body of a request to an agent.
///
/// [`RetryBody::buffer`] reads a body up to a cap: if it ends within the cap it is kept
/// whole and can be replayed for retries; if not, what was read is sent first and the
/// rest streams through, once. This costs at most `cap` bytes of memory per request and
/// never holds a large upload back.
///
/// Each copy also knows which attempt it is sent with (1 for the original; the retry
/// policy numbers the copies it makes), so the layers under the retry read the attempt
/// number here instead of parsing `x-agentgate-attempt` back out of the headers.
pub struct RetryBody {
    kind: Kind,
    attempt: u32,
}

enum Kind {
    Full {
        data: Option<Bytes>,
        // Boxed: trailers are rare, and the body is moved through every layer.
        trailers: Option<Box<HeaderMap>>,
    },
    Streaming {
        prefix: Option<Bytes>,
        rest: UnsyncBoxBody<Bytes, BoxError>,
    },
}

impl RetryBody {
    /// An empty, replayable body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A replayable body holding `data`.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self::from_kind(Kind::Full {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        })
    }

    fn from_kind(kind: Kind) -> Self {
        Self { kind, attempt: 1 }
    }

    /// A body streamed once, never replayed.
    pub fn streaming<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self::from_kind(Kind::Streaming {
            prefix: None,
            rest: body.map_err(Into::into).boxed_unsync(),
        })
    }

    /// Reads `body` until it ends or more than `cap` bytes arrived (see the type docs).
    pub async fn buffer<B>(body: B, cap: usize) -> Result<Self, BoxError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // Most requests through a gateway (GET, HEAD, DELETE) have no body at all.
        if body.is_end_stream() {
            return Ok(Self::empty());
        }
        let mut body = body.map_err(Into::into).boxed_unsync();
        // A body that arrives in one chunk (the common case for small JSON) is kept as
        // that chunk, without a copy; chunks are only gathered once there are several.
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        let gathered = |first: Option<Bytes>, buf: BytesMut| match first {
            Some(data) => data,
            None => buf.freeze(),
        };
        loop {
            match body.frame().await {
                None => return Ok(Self::full(gathered(first, buf))),
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        let len = match (first.take(), buf.is_empty()) {
                            (None, true) => {
                                let len = data.len();
                                first = Some(data);
                                len
                            }
                            (held, _) => {
                                if let Some(held) = held {
                                    buf.extend_from_slice(&held);
                                }
                                buf.extend_from_slice(&data);
                                buf.len()
                            }
                        };
                        if len > cap {
                            return Ok(Self::from_kind(Kind::Streaming {
                                prefix: Some(gathered(first, buf)),
                                rest: body,
                            }));
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body.
                        let trailers = frame.into_trailers().ok().map(Box::new);
                        let data = gathered(first, buf);
                        return Ok(Self::from_kind(Kind::Full {
                            data: (!data.is_empty()).then_some(data),
                            trailers,
                        }));
                    }
                },
            }
        }
    }

    /// Whether [`RetryBody::try_clone`] will succeed.
    pub fn is_replayable(&self) -> bool {
        matches!(self.kind, Kind::Full { .. })
    }

    /// A copy for another attempt, if the body was kept whole.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            Kind::Full { data, trailers } => Some(Self {
                kind: Kind::Full {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
                attempt: self.attempt,
            }),
            Kind::Streaming { .. } => None,
        }
    }

    /// The attempt this body is sent with: 1 for the original, `n` for the copy the
    /// retry policy made for attempt `n`.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub(crate) fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }
}

impl Default for RetryBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for RetryBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full { data, .. } => f
                .debug_struct("RetryBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Streaming { .. } => f
                .debug_struct("RetryBody::Streaming")
                .finish_non_exhaustive(),
        }
    }
}

impl Body for RetryBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Full { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            Kind::Streaming { prefix, rest } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Streaming { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Streaming { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + extra);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + extra);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    async fn collect(body: RetryBody) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn small_bodies_replay() {
        let body = RetryBody::buffer(Full::new(Bytes::from_static(b"hello")), 5)
            .await
            .unwrap();
        assert!(body.is_replayable());
        let copy = body.try_clone().unwrap();
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(collect(body).await, "hello");
        assert_eq!(collect(copy).await, "hello");
    }

    #[tokio::test]
    async fn large_bodies_stream_once_and_whole() {
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..10)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; 1000]))))
            .collect();
        let body = RetryBody::buffer(StreamBody::new(futures_util::stream::iter(chunks)), 2500)
            .await
            .unwrap();
        assert!(!body.is_replayable());
        assert!(body.try_clone().is_none());
        let all = collect(body).await;
        assert_eq!(all.len(), 10_000);
        assert!(all[..1000].iter().all(|b| *b == 0) && all[9000..].iter().all(|b| *b == 9));
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = std::io::Error> {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn bodies_in_any_number_of_chunks_are_kept_in_order() {
        let empty = RetryBody::buffer(http_body_util::Empty::<Bytes>::new(), 10)
            .await
            .unwrap();
        assert!(empty.is_replayable() && empty.is_end_stream());
        // Empty chunks are skipped; several chunks within the cap are gathered.
        for (parts, want) in [
            (&[b"".as_slice(), b"".as_slice()][..], ""),
            (&[b"abc".as_slice()][..], "abc"),
            (
                &[
                    b"ab".as_slice(),
                    b"".as_slice(),
                    b"cd".as_slice(),
                    b"e".as_slice(),
                ][..],
                "abcde",
            ),
        ] {
            let body = RetryBody::buffer(chunks(parts), 5).await.unwrap();
            assert!(body.is_replayable(), "{want}");
            let copy = body.try_clone().unwrap();
            assert_eq!(collect(body).await, want);
            assert_eq!(collect(copy).await, want);
        }
        // Over the cap, in the first chunk or in a later one: sent once, whole.
        for parts in [
            &[b"abcdef".as_slice(), b"gh".as_slice()][..],
            &[b"abc".as_slice(), b"def".as_slice(), b"gh".as_slice()][..],
        ] {
            let body = RetryBody::buffer(chunks(parts), 5).await.unwrap();
            assert!(!body.is_replayable());
            assert_eq!(collect(body).await, "abcdefgh");
        }
    }

    #[tokio::test]
    async fn trailers_end_a_kept_body() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", http::HeaderValue::from_static("7"));
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"c"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = RetryBody::buffer(StreamBody::new(futures_util::stream::iter(frames)), 10)
            .await
            .unwrap();
        assert!(body.is_replayable());
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "7");
        assert_eq!(collected.to_bytes(), "abc");
    }
}
