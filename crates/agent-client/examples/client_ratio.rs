//! The `client` group of `benches/stack.rs` measured in alternating blocks, for a ratio
//! that holds on a noisy machine: `AgentClient::send` against a bare hyper-util client,
//! the same GETs to the same local hyper server, 64 in flight.
//!
//! ```sh
//! cargo run --release -p agentgate-agent-client --example client_ratio   # ROUNDS=15 BLOCK=20000
//! ```
//!
//! Criterion runs one variant for seconds, then the other, so a few seconds of a noisy
//! neighbour land on one side only. Here each round runs a block of requests through each
//! client, in turns (the order flips every round), and the figure is the median of the
//! rounds' ratios: a disturbance moves one round, not the median.
//!
//! `VARIANT=client|timeout|breaker|metrics|retry|full` measures the stack built up one
//! layer at a time instead of `AgentClient::send` (`agent`, the default).
//!
//! Both clients get their request from an already parsed URI: the bare client an absolute
//! one, `AgentClient` the path it resolves against the agent's URL itself (that work is
//! counted; parsing the caller's string is not, for either).

use std::sync::Arc;
use std::time::Duration;

use agentgate_agent_client::{
    layered, AgentClient, AgentConfig, AgentMetrics, AgentMetricsLayer, HttpClient, SharedClient,
    StackParts,
};
use agentgate_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use agentgate_retry::{RetryBody, RetryConfig, RetryLayer, RetryPolicy};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};

#[path = "../benches/support/mod.rs"]
mod support;
use support::{run, start_server};

const CONCURRENCY: u64 = 64;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

fn main() {
    let rounds = env("ROUNDS", 15);
    let block = env("BLOCK", 20_000);
    let addr = start_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url: http::Uri = format!("http://{addr}/echo").parse().unwrap();
    let path: http::Uri = "/echo".parse().unwrap();
    let bare: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
    let variant = std::env::var("VARIANT").ok();
    let layers = Layers::new(&bare);
    let agent = rt.block_on(async {
        AgentClient::new(
            "ratio",
            AgentConfig::new(format!("http://{addr}").parse().unwrap()),
        )
        .unwrap()
    });

    let bare_block = |n: u64| {
        let (bare, url) = (bare.clone(), url.clone());
        rt.block_on(run(n, CONCURRENCY, move || {
            let (bare, url) = (bare.clone(), url.clone());
            async move {
                let req = Request::get(url).body(RetryBody::empty()).unwrap();
                let res = bare.request(req).await.unwrap();
                assert!(res.status().is_success());
                res.into_body().collect().await.unwrap();
            }
        }))
    };
    let agent_block = |n: u64| match variant.as_deref() {
        None | Some("agent") => {
            let (agent, path) = (agent.clone(), path.clone());
            rt.block_on(run(n, CONCURRENCY, move || {
                let (agent, path) = (agent.clone(), path.clone());
                async move {
                    let req = Request::get(path).body(RetryBody::empty()).unwrap();
                    let res = agent.send(req).await.unwrap();
                    assert!(res.status().is_success());
                    res.into_body().collect().await.unwrap();
                }
            }))
        }
        Some(name) => layers.run(name, &rt, &url, n),
    };
    let per_request = |d: Duration, n: u64| d.as_secs_f64() * 1e6 / n as f64;

    // Warm-up: connections opened, pools and allocator settled.
    bare_block(block / 4);
    agent_block(block / 4);

    let mut ratios = Vec::new();
    let name = variant.as_deref().unwrap_or("agent");
    println!("round  bare µs/req  {name:>9} µs/req  ratio (bare/{name})");
    for round in 0..rounds {
        let (b, a) = if round % 2 == 0 {
            let b = bare_block(block);
            (b, agent_block(block))
        } else {
            let a = agent_block(block);
            (bare_block(block), a)
        };
        let (b, a) = (per_request(b, block), per_request(a, block));
        ratios.push(b / a);
        println!("{round:>5}  {b:>11.3}  {a:>15.3}  {:>6.3}", b / a);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "RESULT {name}: median ratio {median:.3} (min {:.3}, max {:.3}) over {rounds} rounds of {block} requests each",
        ratios[0],
        ratios[ratios.len() - 1]
    );
    assert_eq!(
        agent.stats().failures,
        0,
        "the agent client must not have failed"
    );
}

/// The stack built up one layer at a time (`VARIANT=`), unboxed and cloned per request as
/// `AgentClient` holds and calls it, over the same shared hyper-util client:
/// `client`, `timeout`, `breaker`, `metrics`, `retry`, `full` (progress on top).
struct Layers {
    shared: SharedClient,
    parts: StackParts,
}

impl Layers {
    fn new(bare: &HttpClient) -> Self {
        Self {
            shared: SharedClient::new(bare.clone()),
            parts: StackParts {
                metrics: Arc::new(AgentMetrics::new("ratio-layers")),
                retry: RetryPolicy::try_new("ratio-layers", RetryConfig::default()).unwrap(),
                breaker: CircuitBreakerLayer::try_new(
                    "ratio-layers",
                    CircuitBreakerConfig::default(),
                )
                .unwrap(),
                timeout: Duration::from_secs(30),
            },
        }
    }

    fn run(&self, name: &str, rt: &tokio::runtime::Runtime, url: &http::Uri, n: u64) -> Duration {
        let (p, t, shared) = (&self.parts, self.parts.timeout, self.shared.clone());
        match name {
            "client" => block(rt, shared, url, n),
            "timeout" => block(rt, ServiceBuilder::new().timeout(t).service(shared), url, n),
            "breaker" => block(
                rt,
                ServiceBuilder::new()
                    .layer(p.breaker.clone())
                    .timeout(t)
                    .service(shared),
                url,
                n,
            ),
            "metrics" => block(
                rt,
                ServiceBuilder::new()
                    .layer(AgentMetricsLayer::new(p.metrics.clone()))
                    .layer(p.breaker.clone())
                    .timeout(t)
                    .service(shared),
                url,
                n,
            ),
            "retry" => block(
                rt,
                ServiceBuilder::new()
                    .layer(RetryLayer::new(p.retry.clone()))
                    .layer(AgentMetricsLayer::new(p.metrics.clone()))
                    .layer(p.breaker.clone())
                    .timeout(t)
                    .service(shared),
                url,
                n,
            ),
            "full" => block(rt, layered(p, shared), url, n),
            other => panic!("unknown VARIANT {other:?}"),
        }
    }
}

/// One block of `n` GETs through `svc`, cloned per request.
fn block<S>(rt: &tokio::runtime::Runtime, svc: S, url: &http::Uri, n: u64) -> Duration
where
    S: Service<Request<RetryBody>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let url = url.clone();
    rt.block_on(run(n, CONCURRENCY, move || {
        let (svc, url) = (svc.clone(), url.clone());
        async move {
            let req = Request::get(url).body(RetryBody::empty()).unwrap();
            let res = svc.oneshot(req).await.unwrap();
            assert!(res.status().is_success());
            res.into_body().collect().await.unwrap();
        }
    }))
}
