//! What the agent-client harnesses share — the `client` criterion bench, `client_ratio`
//! and `stack_profile`: the local hyper server they call, the runtime and clients around
//! it, one GET through each kind of client, the loop that keeps a number of GETs in
//! flight, and the stack built up one layer at a time.
//!
//! Every binary of this package uses jemalloc, as the `agentgate` binary does, so
//! allocation costs are the ones the gateway pays.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// A local hyper server answering `{}` to everything, on its own thread and runtime.
pub fn start_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    addr
}

/// The local server with a current-thread runtime to call it from, its `/echo` URL and a
/// bare hyper-util client (the baseline every figure is a ratio against).
#[derive(Debug)]
pub struct Rig {
    /// Where the server listens.
    pub addr: std::net::SocketAddr,
    /// A current-thread runtime for the client side.
    pub rt: tokio::runtime::Runtime,
    /// `http://addr/echo`.
    pub url: http::Uri,
    /// The baseline: the bare transport under `AgentClient` (`http_client`).
    pub bare: agentgate_agent_client::HttpClient,
}

impl Rig {
    /// Starts the server and builds the runtime and the bare client.
    pub fn start() -> Rig {
        let addr = start_server();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url: http::Uri = format!("http://{addr}/echo").parse().unwrap();
        // The transport `AgentClient` uses (its connector, a pool of 256 idle connections).
        let bare = agentgate_agent_client::http_client(&agentgate_agent_client::AgentConfig::new(
            url.clone(),
        ))
        .unwrap();
        Rig {
            addr,
            rt,
            url,
            bare,
        }
    }

    /// An `AgentClient` named `name` for the server, with `edit` applied to its config.
    pub fn agent(
        &self,
        name: &str,
        edit: impl FnOnce(&mut agentgate_agent_client::AgentConfig),
    ) -> agentgate_agent_client::AgentClient {
        let mut cfg = agentgate_agent_client::AgentConfig::new(
            format!("http://{}", self.addr).parse().unwrap(),
        );
        edit(&mut cfg);
        // `AgentClient::new` spawns nothing, but its timer and pool want a runtime context.
        let _guard = self.rt.enter();
        agentgate_agent_client::AgentClient::new(name, cfg).unwrap()
    }
}

/// The path `AgentClient` resolves against the agent's URL, parsed once as the bare
/// client's absolute URL is: resolving is counted, parsing the caller's string is not.
pub fn echo_path() -> http::Uri {
    http::Uri::from_static("/echo")
}

/// Reads an answer to its end, after checking it is a success.
async fn drain(res: Response<Incoming>) {
    use http_body_util::BodyExt;
    assert!(res.status().is_success(), "answer {}", res.status());
    res.into_body().collect().await.unwrap();
}

/// One GET of `url` through the bare client.
pub async fn bare_get(bare: agentgate_agent_client::HttpClient, url: http::Uri) {
    let req = Request::get(url).body(Default::default()).unwrap();
    drain(bare.request(req).await.unwrap()).await
}

/// One GET of `path` through `AgentClient::send`.
pub async fn agent_get(agent: agentgate_agent_client::AgentClient, path: http::Uri) {
    let req = Request::get(path)
        .body(agentgate_agent_client::AgentBody::empty())
        .unwrap();
    drain(agent.send(req).await.unwrap()).await
}

/// One GET of `url` (with an empty body of type `B`) through a variant of the stack,
/// used once as `AgentClient` uses its per-request clone.
pub async fn stack_get<S, B: Default>(svc: S, url: http::Uri)
where
    S: tower::Service<Request<B>, Response = Response<Incoming>>,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    let req = Request::get(url).body(B::default()).unwrap();
    drain(svc.oneshot(req).await.unwrap()).await
}

/// Runs `total` GETs through `send`, `concurrency` at a time; returns the elapsed time.
pub async fn run<F, Fut>(total: u64, concurrency: u64, send: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let start = tokio::time::Instant::now();
    let per_task = total.div_ceil(concurrency);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let send = send.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    send().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// The names of the stack built up one layer at a time, in order: the shared client alone,
/// then + timeout, + breaker, + retry with one attempt (its bookkeeping: the attempt
/// header and extension, the budget deposit, one record for the metrics observer; no
/// copy of the request), + retry as configured (default 3 attempts: a copy of the
/// request head kept for a retry), + progress (the whole stack, unboxed as `AgentClient`
/// holds it), and the whole stack boxed (as `stack` returns it).
pub const LAYERS: [&str; 7] = [
    "a_client",
    "b_timeout",
    "c_breaker",
    "d_one_attempt",
    "e_retry",
    "f_full",
    "g_boxed",
];

/// What to do with one variant of the stack: a generic callback, since every variant is
/// a different service type (and the ones with the retry layer take the caller's body,
/// the ones under it the replayable body the retry layer makes).
pub trait WithStack {
    /// What the callback gives back.
    type Output;

    /// Does the work with one variant `svc`, whose requests carry bodies of type `B`.
    fn with<S, B>(self, svc: S) -> Self::Output
    where
        S: tower::Service<Request<B>, Response = Response<Incoming>> + Clone + Send + 'static,
        S::Error: std::fmt::Debug,
        S::Future: Send,
        B: Default + Send + 'static;
}

/// The parts of a default-config stack named `name`.
pub fn default_parts(name: &str) -> agentgate_agent_client::StackParts {
    use agentgate_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    use agentgate_retry::{RetryConfig, RetryPolicy};
    agentgate_agent_client::StackParts {
        metrics: std::sync::Arc::new(agentgate_agent_client::AgentMetrics::new(name)),
        retry: RetryPolicy::try_new(name, RetryConfig::default()).unwrap(),
        bulkhead: agentgate_agent_client::BulkheadLayer::new(name, 0, Duration::ZERO),
        breaker: CircuitBreakerLayer::try_new(name, CircuitBreakerConfig::default()).unwrap(),
        timeout: Duration::from_secs(30),
        // As `AgentClient::send` (the reverse proxy's stack) has it.
        attempt_header: agentgate_retry::AttemptHeader::Retries,
    }
}

/// Builds the variant `name` (one of [`LAYERS`]) over `shared` and hands it to `f`.
pub fn with_layers<W: WithStack>(
    name: &str,
    parts: &agentgate_agent_client::StackParts,
    shared: agentgate_agent_client::SharedClient,
    f: W,
) -> W::Output {
    use agentgate_agent_client::{layered, stack, AgentBody, TransportBody};
    use agentgate_retry::{RetryConfig, RetryLayer, RetryPolicy};
    use tower::{Layer, ServiceBuilder};
    let t = parts.timeout;
    // breaker → timeout → client: what sits under the retry layer.
    let below_retry = |shared| {
        ServiceBuilder::new()
            .layer(parts.breaker.clone())
            .timeout(t)
            .service(shared)
    };
    let retry = |policy| {
        RetryLayer::new(policy)
            .on_attempt(parts.metrics.clone())
            .attempt_header(parts.attempt_header)
    };
    match name {
        "a_client" => f.with::<_, TransportBody>(shared),
        "b_timeout" => f.with::<_, TransportBody>(ServiceBuilder::new().timeout(t).service(shared)),
        "c_breaker" => f.with::<_, TransportBody>(below_retry(shared)),
        "d_one_attempt" => {
            let config = RetryConfig {
                max_attempts: 1,
                ..Default::default()
            };
            let policy = RetryPolicy::try_new("one-attempt", config).unwrap();
            f.with::<_, AgentBody>(retry(policy).layer(below_retry(shared)))
        }
        "e_retry" => f.with::<_, AgentBody>(retry(parts.retry.clone()).layer(below_retry(shared))),
        "f_full" => f.with::<_, AgentBody>(layered(parts, shared)),
        "g_boxed" => f.with::<_, AgentBody>(stack(parts, shared)),
        other => panic!("unknown stack variant {other:?} (one of {LAYERS:?})"),
    }
}
