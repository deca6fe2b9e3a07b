//! The request body an [`AgentClient`](crate::AgentClient) sends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use agentgate_classify::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

/// A request body for an agent: nothing, bytes in hand (a pipeline stage's JSON), or
/// a stream (what the reverse proxy forwards, read as the agent takes it).
///
/// One type for every caller, so an agent keeps one connection pool. The retry layer
/// wraps it in a [`ReplayBody`](agentgate_retry::ReplayBody) to send it again.
pub struct AgentBody(Kind);

enum Kind {
    Empty,
    Bytes(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl AgentBody {
    /// No body.
    pub fn empty() -> Self {
        Self(Kind::Empty)
    }

    /// A body streamed from `body` (boxed, unless it has ended already).
    pub fn stream<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Self::empty();
        }
        Self(Kind::Stream(body.map_err(Into::into).boxed_unsync()))
    }
}

impl From<Bytes> for AgentBody {
    fn from(data: Bytes) -> Self {
        if data.is_empty() {
            return Self::empty();
        }
        Self(Kind::Bytes(Some(data)))
    }
}

impl Default for AgentBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for AgentBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Empty => f.write_str("AgentBody::Empty"),
            Kind::Bytes(data) => f
                .debug_struct("AgentBody::Bytes")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Stream(_) => f.write_str("AgentBody::Stream"),
        }
    }
}

impl Body for AgentBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Bytes(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Bytes(data) => data.is_none(),
            Kind::Stream(body) => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Bytes(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Stream(body) => body.size_hint(),
        }
    }
}
