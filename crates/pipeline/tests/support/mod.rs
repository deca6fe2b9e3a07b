//! Test helpers: scriptable agents (real hyper servers on 127.0.0.1:0 in the test's own
//! runtime, so a paused clock drives their delays too), engines over them, and event
//! collection.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentgate_agent_client::{AgentClient, AgentConfig};
use agentgate_circuit_breaker::CircuitBreakerConfig;
use agentgate_pipeline::{
    CancelError, Cancellation, Engine, EngineSettings, PipelineConfig, QueryRecord,
};
use agentgate_progress::{HubConfig, MemoryHub, SubscriptionItem};
use agentgate_retry::{Jitter, RetryConfig};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// What an agent does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with this JSON.
    Json(Value),
    /// This status with a JSON body `{}`.
    Status(u16),
    /// 200 with a `text/plain` body.
    Text(&'static str),
    /// Never answer (counts in `dropped` when the request is abandoned).
    Hang,
    /// Wait, then reply.
    After(Duration, Box<Reply>),
    /// 200 with this content type at once, then each frame after its pause; then the
    /// end of the body, or a broken connection.
    Stream {
        content_type: &'static str,
        frames: Vec<(Duration, Bytes)>,
        then_break: bool,
    },
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// One request as the agent saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Value,
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

#[derive(Clone)]
pub struct Agent {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    dropped: Arc<AtomicUsize>,
}

struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Agent {
    /// Starts an agent answering with `script`, one reply per request; the last repeats.
    pub async fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let agent = Self {
            addr,
            seen: Arc::default(),
            dropped: Arc::default(),
        };
        let script = Arc::new(script);
        let (seen, dropped) = (agent.seen.clone(), agent.dropped.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (seen, dropped, script) = (seen.clone(), dropped.clone(), script.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, dropped, script) =
                            (seen.clone(), dropped.clone(), script.clone());
                        async move { Ok::<_, Infallible>(answer(req, &seen, &dropped, &script).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        agent
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

    /// Requests abandoned by the caller while the agent was hanging.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    dropped: &Arc<AtomicUsize>,
    script: &[Reply],
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
            headers: parts.headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            at: Instant::now(),
        });
        step
    };
    reply(step, dropped).await
}

async fn reply(mut step: Reply, dropped: &Arc<AtomicUsize>) -> Response<Body> {
    loop {
        return match step {
            Reply::Json(v) => Response::builder()
                .header("content-type", "application/json")
                .body(full(v.to_string()))
                .unwrap(),
            Reply::Status(code) => Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(full(Bytes::from_static(b"{}")))
                .unwrap(),
            Reply::Text(t) => Response::builder()
                .header("content-type", "text/plain")
                .body(full(Bytes::from_static(t.as_bytes())))
                .unwrap(),
            Reply::Stream {
                content_type,
                frames,
                then_break,
            } => {
                let frames = futures_util::stream::unfold(
                    (frames.into_iter(), then_break),
                    |(mut frames, then_break)| async move {
                        let frame = match frames.next() {
                            Some((pause, data)) => {
                                tokio::time::sleep(pause).await;
                                Ok(http_body::Frame::data(data))
                            }
                            // A pause first, so the last frame is flushed before the break.
                            None if then_break => {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                Err(std::io::Error::other("agent crashed"))
                            }
                            None => return None,
                        };
                        let more = then_break && frame.is_ok();
                        Some((frame, (frames, more)))
                    },
                );
                Response::builder()
                    .header("content-type", content_type)
                    .body(http_body_util::StreamBody::new(frames).boxed())
                    .unwrap()
            }
            Reply::Hang => {
                let _count = DropCount(dropped.clone());
                std::future::pending().await
            }
            Reply::After(d, next) => {
                tokio::time::sleep(d).await;
                step = *next;
                continue;
            }
        };
    }
}

/// An agent that answers every request with 200 and `body` (JSON) and remembers
/// nothing, so it holds no memory per request (for the memory test).
pub async fn quiet_agent(body: Bytes) -> http::Uri {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}").parse().unwrap()
}

/// A loopback port with nothing listening.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// Agent settings for tests: 3 attempts, 100 ms then 200 ms backoff without jitter, a
/// 5 s per-attempt timeout, a breaker that does not trip unless told to.
pub fn agent_config(url: http::Uri) -> AgentConfig {
    AgentConfig {
        timeout: Duration::from_secs(5),
        retry: RetryConfig {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter: Jitter::None,
            budget_min_per_sec: 1000,
            ..RetryConfig::default()
        },
        circuit_breaker: CircuitBreakerConfig {
            consecutive_failures: 1000,
            minimum_calls: 1000,
            ..CircuitBreakerConfig::default()
        },
        ..AgentConfig::new(url)
    }
}

pub fn pipeline(src: &str) -> PipelineConfig {
    toml::from_str(src).unwrap()
}

/// An engine with one hub, the given pipelines and agents.
pub struct Setup {
    pub engine: Engine,
    pub hub: MemoryHub,
}

pub fn engine(
    pipelines: &[(&str, &str)],
    agents: Vec<(&str, AgentConfig)>,
    settings: EngineSettings,
) -> Setup {
    let agents: BTreeMap<String, AgentClient> = agents
        .into_iter()
        .map(|(name, cfg)| (name.to_owned(), AgentClient::new(name, cfg).unwrap()))
        .collect();
    let pipelines: BTreeMap<String, PipelineConfig> = pipelines
        .iter()
        .map(|(name, src)| {
            let p = pipeline(src);
            p.validate(|a| agents.contains_key(a)).unwrap();
            ((*name).to_owned(), p)
        })
        .collect();
    let hub = MemoryHub::new(HubConfig::default());
    let engine = Engine::new(pipelines, agents, Arc::new(hub.clone()), settings);
    Setup { engine, hub }
}

/// Cancels a query of `engine`, which shares nothing with other replicas (so nothing
/// is waited for), and returns its final record.
pub async fn cancel(engine: &Engine, query_id: &str) -> Result<QueryRecord, CancelError> {
    engine
        .cancel(query_id, Duration::ZERO, agentgate_pipeline::Caller::Anyone)
        .await
        .map(|c| match c {
            Cancellation::Cancelled(record) => record,
            Cancellation::Requested => panic!("one process: no other replica to ask"),
        })
}

/// Every event of a query (replayed from seq 1), up to and including its terminal one.
pub async fn events(hub: &MemoryHub, query_id: &str) -> Vec<Value> {
    let mut sub = hub.subscribe(query_id, 0).unwrap();
    let mut out = Vec::new();
    while let Some(item) = sub.recv().await {
        match item {
            SubscriptionItem::Event(e) => out.push(serde_json::to_value(e.event()).unwrap()),
            SubscriptionItem::Lagged { .. } => panic!("lagged"),
        }
    }
    out
}

/// A record's result, parsed.
pub fn result(record: &QueryRecord) -> Option<Value> {
    record.result.as_ref().map(|r| r.to_value())
}

/// `type/status@progress` for each event, e.g. `progress/started@0`, `error/status`.
pub fn brief(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "progress" => format!(
                "{}:{}@{}",
                e["stage"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
                e["progress"]
            ),
            "error" => format!(
                "{}:error/{}",
                e["stage"].as_str().unwrap(),
                e["error"]["kind"].as_str().unwrap()
            ),
            other => other.to_owned(),
        })
        .collect()
}

/// Waits (on the paused clock) until `cond` holds, failing after a minute.
pub async fn until(mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
