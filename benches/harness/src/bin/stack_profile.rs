//! A fixed-size driver for attributing the agent stack's cost with instruction counts
//! (`docs/BENCHMARKS.md`, "The agent stack"): the same GETs as the criterion
//! `client` group, a fixed number of them, so `valgrind --tool=callgrind` (instructions)
//! and `valgrind --tool=dhat` (allocations) give deterministic per-request figures on a
//! noisy machine.
//!
//! ```sh
//! cargo build --release -p agentgate-bench-harness --bin stack_profile
//! B=target/release/stack_profile
//! for n in 2000 6000; do
//!   CONCURRENCY=1 valgrind --tool=callgrind --separate-threads=yes $B agent $n
//!   CONCURRENCY=1 valgrind --tool=dhat $B agent $n
//! done   # per request: (figure at 6000 - figure at 2000) / 4000
//! ```
//!
//! Variants: `bare` (a bare hyper-util client) and `agent` (`AgentClient::send`), as in
//! the bench; and the stack built up one layer at a time, unboxed and cloned per request
//! as `AgentClient` does: `a_client` (the shared client alone), `b_timeout`,
//! `c_breaker`, `d_one_attempt` (the retry layer's bookkeeping without a copy of the
//! request, see `support::LAYERS`), `e_retry`, `f_full` (progress on top: the whole
//! stack), `g_boxed` (the whole stack boxed, as `stack` returns it). `sizes` prints the
//! sizes of the request and of the stack's future.
//!
//! The server runs on its own thread and runtime, so `--separate-threads=yes` puts the
//! client's instructions (file `…-01`) apart from the server's (`…-02`). Taking the
//! difference of two request counts cancels set-up, warm-up and connecting.
//! `CONCURRENCY` (default 64, as in the bench) is the number of requests in flight; 1
//! gives figures that do not depend on how the two threads interleave under valgrind.
//! `PROM=1` installs the Prometheus recorder first, as the gateway does.

use agentgate_agent_client::SharedClient;
use http::{Request, Response};
use hyper::body::Incoming;
use tower::Service;

use agentgate_bench_harness as support;
use support::{agent_get, bare_get, echo_path, run, stack_get, Rig};

/// Requests in flight, as in the bench (`CONCURRENCY=1` makes the figures steadier for
/// attributing costs to layers: no batching that depends on thread interleaving).
fn concurrency() -> u64 {
    std::env::var("CONCURRENCY").map_or(64, |c| c.parse().unwrap())
}

/// The gateway binary's allocator, so the figures are the ones it would show.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const WARM_UP: u64 = 256;

/// Runs the GETs through a variant of the stack, cloned per request as
/// `AgentClient::send` does.
struct Drive {
    url: http::Uri,
    total: u64,
}

impl support::WithStack for Drive {
    type Output = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

    fn with<S, B>(self, svc: S) -> Self::Output
    where
        S: Service<Request<B>, Response = Response<Incoming>> + Clone + Send + 'static,
        S::Error: std::fmt::Debug,
        S::Future: Send,
        B: Default + Send + 'static,
    {
        let Drive { url, total } = self;
        Box::pin(warm_then_run(total, move || {
            stack_get::<_, B>(svc.clone(), url.clone())
        }))
    }
}

/// `WARM_UP` GETs through `send`, then `total` more.
async fn warm_then_run<F, Fut>(total: u64, send: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    run(WARM_UP, concurrency(), send.clone()).await;
    run(total, concurrency(), send).await;
}

/// Sizes of what every layer moves: the request and the nested response futures.
fn print_sizes() {
    use agentgate_agent_client::{AgentBody, TransportBody};
    use std::mem::size_of;
    type Fut<S, B> = <S as tower::Service<Request<B>>>::Future;
    type T = agentgate_agent_client::Stack<SharedClient>;
    println!(
        "Request<AgentBody>      {}",
        size_of::<Request<AgentBody>>()
    );
    println!("AgentBody               {}", size_of::<AgentBody>());
    println!("ReplayBody<AgentBody>   {}", size_of::<TransportBody>());
    println!(
        "http::request::Parts    {}",
        size_of::<http::request::Parts>()
    );
    println!("Stack (service)         {}", size_of::<T>());
    println!("Stack future            {}", size_of::<Fut<T, AgentBody>>());
    println!(
        "hyper-util future       {}",
        size_of::<Fut<SharedClient, TransportBody>>()
    );
    println!(
        "Timeout future          {}",
        size_of::<Fut<tower::timeout::Timeout<SharedClient>, TransportBody>>()
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
    let rig = Rig::start();
    let agent = rig.agent("profile", |_| {});
    let Rig { rt, url, bare, .. } = rig;
    rt.block_on(async move {
        match variant.as_str() {
            "bare" => warm_then_run(total, move || bare_get(bare.clone(), url.clone())).await,
            "agent" => {
                let path = echo_path();
                warm_then_run(total, move || agent_get(agent.clone(), path.clone())).await
            }
            other => {
                let parts = support::default_parts("profile");
                let drive = Drive { url, total };
                support::with_layers(other, &parts, SharedClient::new(bare), drive).await
            }
        }
    });
}
