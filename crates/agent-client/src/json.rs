//! The bottom of a pipeline stage's stack: read the agent's answer as JSON.
//!
//! It sits under the per-attempt timeout and the circuit breaker, so reading the body
//! counts against the attempt's time, and a 2xx that is not JSON is a `bad_response`
//! failure the breaker sees (SPEC §5).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use agentgate_classify::{BadResponse, BoxError};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use tower_service::Service;

/// Turns `Response<B>` into `Response<serde_json::Value>`.
///
/// A 2xx must be JSON of at most `max_bytes`, else the attempt fails with
/// [`BadResponse`]. Other statuses are returned as they are, with the body as JSON when
/// it is JSON and `null` otherwise (it is read anyway, so the connection can be reused).
#[derive(Clone, Debug)]
pub struct JsonBody<S> {
    inner: S,
    max_bytes: usize,
}

impl<S> JsonBody<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, max_bytes: usize) -> Self {
        Self { inner, max_bytes }
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
    type Response = Response<Value>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Value>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<RB>) -> Self::Future {
        let fut = self.inner.call(req);
        let max = self.max_bytes;
        Box::pin(async move {
            let (parts, body) = fut.await.map_err(Into::into)?.into_parts();
            let read = Limited::new(body, max).collect().await;
            if !parts.status.is_success() {
                let value = read
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b.to_bytes()).ok())
                    .unwrap_or(Value::Null);
                return Ok(Response::from_parts(parts, value));
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
            Ok(Response::from_parts(parts, value))
        })
    }
}
