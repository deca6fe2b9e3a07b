//! Admission control at the connection and body level (SPEC §8): the public listener's
//! connection cap and the request body's stall timeout. The query cap is the engine's
//! (`max_running_queries`), the per-agent cap the agent stack's bulkhead.
//!
//! - [`Counted`] wraps each accepted connection's socket and holds its place in the
//!   count until the socket is dropped, so a connection upgraded to a WebSocket (whose
//!   socket leaves hyper) still counts. Beyond `max_connections` the accept loop closes
//!   new connections at once: no task, no buffers, one counter increment.
//! - [`StallTimeout`] wraps each request body: when no frame arrives for
//!   `body_read_timeout` the body fails with [`BodyStalled`], which the routes answer
//!   with 408 and `Connection: close`. The clock starts when a route first reads the
//!   body (a request whose body nobody reads is never cut off) and restarts with every
//!   frame, so a large upload that keeps moving is never cut off either.
//!   Unlike `tower_http::timeout::TimeoutBody` it keeps the body's size hint and end of
//!   stream, which the reverse proxy passes on to agents.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `agentgate_overload_rejected_total`, shared with the agent bulkhead's series.
pub use agentgate_agent_client::OVERLOAD_REJECTED;

/// A socket that holds a place in a connection count while it lives.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    count: Arc<AtomicUsize>,
}

pin_project! {
    /// A request body that fails with [`BodyStalled`] when it sends nothing for a while.
    #[derive(Debug)]
    pub struct StallTimeout<B> {
        #[pin]
        body: B,
        timeout: Duration,
        #[pin]
        sleep: Option<Sleep>,
    }
}

/// A request body sent nothing for `body_read_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyStalled(pub Duration);

// === impl Counted ===

impl<IO> Counted<IO> {
    /// Takes a place in `count` for `io` if fewer than `max` are taken; else `None`
    /// (and `io` is dropped: the connection closes).
    pub fn admit(io: IO, count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let taken = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
        taken.is_ok().then(|| Self {
            io,
            count: count.clone(),
        })
    }
}

impl<IO> Counted<IO> {
    /// The socket.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO> Drop for Counted<IO> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// === impl StallTimeout ===

impl<B> StallTimeout<B> {
    /// `body`, failing after `timeout` without a frame.
    pub fn new(body: B, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            sleep: None,
        }
    }
}

impl<B> Body for StallTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<agentgate_classify::BoxError>,
{
    type Data = Bytes;
    type Error = agentgate_classify::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            this.sleep.set(None);
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.timeout)));
        }
        let sleep = this.sleep.as_pin_mut().expect("just set");
        match sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(*this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl BodyStalled ===

impl fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request body sent nothing for {:?}", self.0)
    }
}

impl std::error::Error for BodyStalled {}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_moving_is_never_cut_off_and_a_stalled_one_is() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, std::convert::Infallible>(Frame::data(chunk)), rx))
        });
        let body = StallTimeout::new(StreamBody::new(Box::pin(frames)), Duration::from_secs(2));
        let mut body = std::pin::pin!(body);
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
            // Then nothing, with the sender kept open.
            std::future::pending::<()>().await;
        });
        for _ in 0..5 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let started = tokio::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyStalled>(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        feeder.abort();
    }

    #[test]
    fn the_count_caps_and_each_drop_frees_a_place() {
        let count = Arc::new(AtomicUsize::new(0));
        let a = Counted::admit((), &count, 2).unwrap();
        let b = Counted::admit((), &count, 2).unwrap();
        assert!(Counted::admit((), &count, 2).is_none());
        assert_eq!(count.load(Ordering::Acquire), 2);
        drop(a);
        let c = Counted::admit((), &count, 2).unwrap();
        drop((b, c));
        assert_eq!(count.load(Ordering::Acquire), 0);
    }
}
