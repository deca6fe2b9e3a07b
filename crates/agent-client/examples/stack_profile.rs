//! A fixed-size driver for attributing the agent stack's cost with instruction counts
//! (`docs/BENCHMARKS.md`, "The agent stack"): the same GETs as `benches/stack.rs`'s
//! `client` group, a fixed number of them, so `valgrind --tool=callgrind` (instructions)
//! and `valgrind --tool=dhat` (allocations) give deterministic per-request figures on a
//! noisy machine.
//!
//! ```sh
//! cargo build --release -p agentgate-agent-client --example stack_profile
//! B=target/release/examples/stack_profile
//! for n in 2000 6000; do
//!   CONCURRENCY=1 valgrind --tool=callgrind --separate-threads=yes $B agent $n
//!   CONCURRENCY=1 valgrind --tool=dhat $B agent $n
//! done   # per request: (figure at 6000 - figure at 2000) / 4000
//! ```
//!
//! Variants: `bare` (a bare hyper-util client) and `agent` (`AgentClient::send`), as in
//! the bench; and the stack built up one layer at a time, unboxed and cloned per request
//! as `AgentClient` does: `a_client` (the shared client alone), `b_timeout`,
//! `c_breaker`, `d_metrics`, `e_retry`, `f_full` (progress on top: the whole stack),
//! `g_boxed` (the whole stack boxed, as [`stack`] returns it). `sizes` prints the sizes
//! of the request and of the stack's future.
//!
//! The server runs on its own thread and runtime, so `--separate-threads=yes` puts the
//! client's instructions (file `…-01`) apart from the server's (`…-02`). Taking the
//! difference of two request counts cancels set-up, warm-up and connecting.
//! `CONCURRENCY` (default 64, as in the bench) is the number of requests in flight; 1
//! gives figures that do not depend on how the two threads interleave under valgrind.
//! `PROM=1` installs the Prometheus recorder first, as the gateway does.

use std::sync::Arc;
use std::time::Duration;

use agentgate_agent_client::{
    layered as layered_stack, stack, AgentClient, AgentConfig, AgentMetrics, AgentMetricsLayer,
    HttpClient, SharedClient, StackParts,
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

/// Requests in flight, as in the bench (`CONCURRENCY=1` makes the figures steadier for
/// attributing costs to layers: no batching that depends on thread interleaving).
fn concurrency() -> u64 {
    std::env::var("CONCURRENCY").map_or(64, |c| c.parse().unwrap())
}
const WARM_UP: u64 = 256;

/// Runs the GETs through `svc`, cloned per request as `AgentClient::send` does.
async fn drive<S>(svc: S, url: http::Uri, total: u64)
where
    S: Service<Request<RetryBody>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let send = move || {
        let (svc, url) = (svc.clone(), url.clone());
        async move {
            let req = Request::get(url).body(RetryBody::empty()).unwrap();
            let res = svc.oneshot(req).await.unwrap();
            res.into_body().collect().await.unwrap();
        }
    };
    run(WARM_UP, concurrency(), send.clone()).await;
    run(total, concurrency(), send).await;
}

/// The stack built up one layer at a time, unboxed (as `AgentClient` holds it).
async fn layered(variant: &str, shared: SharedClient, url: http::Uri, total: u64) {
    let parts = StackParts {
        metrics: Arc::new(AgentMetrics::new("profile")),
        retry: RetryPolicy::try_new("profile", RetryConfig::default()).unwrap(),
        breaker: CircuitBreakerLayer::try_new("profile", CircuitBreakerConfig::default()).unwrap(),
        timeout: Duration::from_secs(30),
    };
    let t = parts.timeout;
    match variant {
        "a_client" => drive(shared, url, total).await,
        "b_timeout" => drive(ServiceBuilder::new().timeout(t).service(shared), url, total).await,
        "c_breaker" => {
            let svc = ServiceBuilder::new()
                .layer(parts.breaker.clone())
                .timeout(t)
                .service(shared);
            drive(svc, url, total).await
        }
        "d_metrics" => {
            let svc = ServiceBuilder::new()
                .layer(AgentMetricsLayer::new(parts.metrics.clone()))
                .layer(parts.breaker.clone())
                .timeout(t)
                .service(shared);
            drive(svc, url, total).await
        }
        "e_retry" => {
            let svc = ServiceBuilder::new()
                .layer(RetryLayer::new(parts.retry.clone()))
                .layer(AgentMetricsLayer::new(parts.metrics.clone()))
                .layer(parts.breaker.clone())
                .timeout(t)
                .service(shared);
            drive(svc, url, total).await
        }
        "f_full" => drive(layered_stack(&parts, shared), url, total).await,
        "g_boxed" => drive(stack(&parts, shared), url, total).await,
        other => panic!("unknown variant {other:?}"),
    }
}

/// Sizes of what every layer moves: the request and the nested response futures.
fn print_sizes() {
    use std::mem::size_of;
    type Fut<S> = <S as tower::Service<Request<RetryBody>>>::Future;
    type T = agentgate_agent_client::Stack<SharedClient>;
    println!(
        "Request<RetryBody>      {}",
        size_of::<Request<RetryBody>>()
    );
    println!("RetryBody               {}", size_of::<RetryBody>());
    println!(
        "http::request::Parts    {}",
        size_of::<http::request::Parts>()
    );
    println!("Stack (service)         {}", size_of::<T>());
    println!("Stack future            {}", size_of::<Fut<T>>());
    println!("hyper-util future       {}", size_of::<Fut<SharedClient>>());
    println!(
        "Timeout future          {}",
        size_of::<Fut<tower::timeout::Timeout<SharedClient>>>()
    );
    println!(
        "tokio Sleep             {}",
        size_of::<tokio::time::Sleep>()
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "agent".into());
    let total: u64 = args.next().map_or(4000, |n| n.parse().unwrap());
    if std::env::var_os("PROM").is_some() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::set_global_recorder(recorder).unwrap();
    }

    if variant == "sizes" {
        print_sizes();
        return;
    }
    let addr = start_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url: http::Uri = format!("http://{addr}/echo").parse().unwrap();
    let bare: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();

    rt.block_on(async move {
        match variant.as_str() {
            "bare" => {
                let send = move || {
                    let (bare, url) = (bare.clone(), url.clone());
                    async move {
                        let req = Request::get(url).body(RetryBody::empty()).unwrap();
                        let res = bare.request(req).await.unwrap();
                        res.into_body().collect().await.unwrap();
                    }
                };
                run(WARM_UP, concurrency(), send.clone()).await;
                run(total, concurrency(), send).await;
            }
            "agent" => {
                let agent = AgentClient::new(
                    "profile",
                    AgentConfig::new(format!("http://{addr}").parse().unwrap()),
                )
                .unwrap();
                let send = move || {
                    let agent = agent.clone();
                    async move {
                        let req = Request::get("/echo").body(RetryBody::empty()).unwrap();
                        let res = agent.send(req).await.unwrap();
                        res.into_body().collect().await.unwrap();
                    }
                };
                run(WARM_UP, concurrency(), send.clone()).await;
                run(total, concurrency(), send).await;
            }
            other => layered(other, SharedClient::new(bare), url, total).await,
        }
    });
}
