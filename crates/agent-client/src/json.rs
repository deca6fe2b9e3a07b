//! The bottom of a pipeline stage's stack: read the agent's answer as JSON, or open it
//! as a stream of chunks (SPEC §6).
//!
//! It sits under the per-attempt timeout and the circuit breaker, so reading a JSON
//! body counts against the attempt's time, and a 2xx that is not JSON is a
//! `bad_response` failure the breaker sees (SPEC §5). A streamed answer (`Content-Type:
//! text/event-stream` or `application/x-ndjson`) is handed on at its head: the attempt
//! succeeded once the agent started answering, the per-attempt timeout covers the time
//! to the head, and the stream's reader takes it from there (`stream_idle_timeout`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use agentgate_classify::{BadResponse, BoxError};
use agentgate_progress::StreamedAnswer;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use tower_service::Service;

use crate::{ChunkStream, StreamFormat};

/// Turns `Response<B>` into `Response<StageAnswer>`.
///
/// A 2xx must be JSON of at most `max_bytes`, else the attempt fails with
/// [`BadResponse`], or a stream ([`StageAnswer::Stream`], marked [`StreamedAnswer`] in
/// the response's extensions). Other statuses are returned as they are, with the body as
/// JSON when it is JSON and `null` otherwise (it is read anyway, so the connection can
/// be reused).
#[derive(Clone, Debug)]
pub struct JsonBody<S> {
    inner: S,
    max_bytes: usize,
    stream_idle_timeout: Duration,
}

/// A stage's answer: a JSON body read whole, or a stream to read chunk by chunk.
#[derive(Debug)]
pub enum StageAnswer {
    /// The JSON body (`null` for a non-2xx answer whose body is not JSON).
    Json(Value),
    /// A 2xx SSE or NDJSON answer, not read yet.
    Stream(ChunkStream),
}

impl<S> JsonBody<S> {
    /// Wraps `inner`; streamed answers may be silent for 30 s.
    pub fn new(inner: S, max_bytes: usize) -> Self {
        Self {
            inner,
            max_bytes,
            stream_idle_timeout: Duration::from_secs(30),
        }
    }

    /// The longest silence a streamed answer's reader waits for (`stream_idle_timeout`).
    pub fn stream_idle_timeout(mut self, idle: Duration) -> Self {
        self.stream_idle_timeout = idle;
        self
    }
}

impl<S, RB, B> Service<Request<RB>> for JsonBody<S>
where
    S: Service<Request<RB>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<StageAnswer>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<StageAnswer>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<RB>) -> Self::Future {
        let fut = self.inner.call(req);
        let max = self.max_bytes;
        let idle = self.stream_idle_timeout;
        Box::pin(async move {
            let (mut parts, body) = fut.await.map_err(Into::into)?.into_parts();
            let streams = parts
                .status
                .is_success()
                .then(|| StreamFormat::of(&parts.headers))
                .flatten();
            if let Some(format) = streams {
                parts.extensions.insert(StreamedAnswer);
                let stream = ChunkStream::new(format, body, idle);
                return Ok(Response::from_parts(parts, StageAnswer::Stream(stream)));
            }
            let read = Limited::new(body, max).collect().await;
            if !parts.status.is_success() {
                let value = read
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b.to_bytes()).ok())
                    .unwrap_or(Value::Null);
                return Ok(Response::from_parts(parts, StageAnswer::Json(value)));
            }
            let bytes = match read {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<LengthLimitError>() => {
                    return Err(BadResponse::new(format!("body larger than {max} bytes")).into())
                }
                Err(e) => return Err(e),
            };
            let value = serde_json::from_slice(&bytes)
                .map_err(|e| BadResponse::new(format!("body is not JSON ({e})")))?;
            Ok(Response::from_parts(parts, StageAnswer::Json(value)))
        })
    }
}
