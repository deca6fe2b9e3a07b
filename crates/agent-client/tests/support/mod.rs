//! A scriptable agent: a real hyper server on 127.0.0.1:0, in the test's own runtime
//! (so a paused clock drives its delays too).

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// What the agent does with one request.
#[derive(Clone, Debug)]
pub enum Step {
    /// Answer this status with a JSON body `{}`.
    Status(u16),
    /// Answer this status with `Retry-After`.
    RetryAfter(u16, &'static str),
    /// Answer 200 with this body and content type `text/plain`.
    Text(&'static str),
    /// Answer 200 with this JSON text.
    Json(&'static str),
    /// Never answer.
    Hang,
    /// Send the head and a first chunk, then break the connection.
    ResetMidBody,
    /// Answer 200 `text/event-stream` at once, then each of `events` as an SSE event,
    /// one `every` apart; then end the stream, or break the connection.
    Sse {
        every: Duration,
        events: &'static [&'static str],
        then_break: bool,
    },
}

/// One request as the agent saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub attempt: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

#[derive(Clone)]
pub struct ScriptedAgent {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl ScriptedAgent {
    /// Starts the agent; the last step repeats.
    pub async fn start(script: Vec<Step>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script = Arc::new(script);
        let state = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = state.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let script = script.clone();
                        async move { Ok::<_, Infallible>(answer(req, &seen, &script).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    pub fn url(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Time between the agent receiving request `i` and `i + 1`.
    pub fn gaps(&self) -> Vec<Duration> {
        let seen = self.seen();
        seen.windows(2).map(|w| w[1].at - w[0].at).collect()
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    script: &[Step],
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let step = {
        let mut seen = seen.lock().unwrap();
        let step = script[seen.len().min(script.len() - 1)].clone();
        seen.push(Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            attempt: parts
                .headers
                .get("x-agentgate-attempt")
                .map(|v| v.to_str().unwrap().to_owned()),
            headers: parts.headers.clone(),
            body,
            at: Instant::now(),
        });
        step
    };
    let full = |b: &'static str| {
        Full::new(Bytes::from_static(b.as_bytes()))
            .map_err(|e| match e {})
            .boxed()
    };
    match step {
        Step::Status(code) => Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(full("{}"))
            .unwrap(),
        Step::RetryAfter(code, ra) => Response::builder()
            .status(code)
            .header("retry-after", ra)
            .body(full("{}"))
            .unwrap(),
        Step::Text(text) => Response::builder()
            .header("content-type", "text/plain")
            .body(full(text))
            .unwrap(),
        Step::Json(json) => Response::builder()
            .header("content-type", "application/json")
            .body(full(json))
            .unwrap(),
        Step::Hang => std::future::pending().await,
        Step::Sse {
            every,
            events,
            then_break,
        } => {
            let frames = futures_util::stream::unfold(0, move |i| async move {
                let frame = match events.get(i) {
                    Some(event) => {
                        tokio::time::sleep(every).await;
                        Ok(Frame::data(Bytes::from(format!("data: {event}\n\n"))))
                    }
                    None if then_break && i == events.len() => {
                        // A pause first, so the last event is flushed before the break.
                        tokio::time::sleep(every).await;
                        Err(std::io::Error::other("agent crashed"))
                    }
                    None => return None,
                };
                Some((frame, i + 1))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(frames).boxed())
                .unwrap()
        }
        Step::ResetMidBody => {
            let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(Bytes::from_static(b"{\"partial\":"))),
                Err(std::io::Error::other("agent crashed")),
            ];
            Response::builder()
                .header("content-length", "100")
                .body(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
                .unwrap()
        }
    }
}

/// A loopback port with nothing listening.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}
