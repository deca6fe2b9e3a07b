//! The response body: either complete, or one that breaks the connection mid-way.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

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
}

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
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Broken { declared, .. } => SizeHint::with_exact(*declared),
        }
    }
}
