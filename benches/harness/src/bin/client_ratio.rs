//! The `client` criterion group (`benches/client.rs`) measured in alternating blocks, for a ratio
//! that holds on a noisy machine: `AgentClient::send` against a bare hyper-util client,
//! the same GETs to the same local hyper server, 64 in flight.
//!
//! ```sh
//! cargo run --release -p agentgate-bench-harness --bin client_ratio   # ROUNDS=15 BLOCK=20000
//! ```
//!
//! Criterion runs one variant for seconds, then the other, so a few seconds of a noisy
//! neighbour land on one side only. Here each round runs a block of requests through each
//! client, in turns (the order flips every round), and the figure is the median of the
//! rounds' ratios: a disturbance moves one round, not the median.
//!
//! `VARIANT=` one of `support::LAYERS` (`a_client` … `g_boxed`) measures the
//! stack built up one layer at a time (as the criterion bench's `ABLATE=1` does) instead of
//! `AgentClient::send` (`agent`, the default).
//!
//! Both clients get their request from an already parsed URI: the bare client an absolute
//! one, `AgentClient` the path it resolves against the agent's URL itself (that work is
//! counted; parsing the caller's string is not, for either).

use std::time::Duration;

use agentgate_agent_client::SharedClient;
use http::{Request, Response};
use hyper::body::Incoming;
use tower::Service;

use agentgate_bench_harness as support;
use support::{agent_get, bare_get, echo_path, run, stack_get, Rig};

/// The gateway binary's allocator, so the figures are the ones it would show.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CONCURRENCY: u64 = 64;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

fn main() {
    let rounds = env("ROUNDS", 15);
    let block = env("BLOCK", 20_000);
    let rig = Rig::start();
    let variant = std::env::var("VARIANT").ok();
    let parts = support::default_parts("ratio-layers");
    let shared = SharedClient::new(rig.bare.clone());
    let agent = rig.agent("ratio", |_| {});

    let bare_block = |n: u64| {
        let (bare, url) = (rig.bare.clone(), rig.url.clone());
        rig.rt.block_on(run(n, CONCURRENCY, move || {
            bare_get(bare.clone(), url.clone())
        }))
    };
    let agent_block = |n: u64| match variant.as_deref() {
        None | Some("agent") => {
            let (agent, path) = (agent.clone(), echo_path());
            rig.rt.block_on(run(n, CONCURRENCY, move || {
                agent_get(agent.clone(), path.clone())
            }))
        }
        Some(name) => {
            let block = Block { rig: &rig, n };
            support::with_layers(name, &parts, shared.clone(), block)
        }
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

/// One block of GETs through a variant of the stack (`VARIANT=`), cloned per request as
/// `AgentClient::send` does.
struct Block<'a> {
    rig: &'a Rig,
    n: u64,
}

impl support::WithStack for Block<'_> {
    type Output = Duration;

    fn with<S, B>(self, svc: S) -> Duration
    where
        S: Service<Request<B>, Response = Response<Incoming>> + Clone + Send + 'static,
        S::Error: std::fmt::Debug,
        S::Future: Send,
        B: Default + Send + 'static,
    {
        let url = self.rig.url.clone();
        self.rig.rt.block_on(run(self.n, CONCURRENCY, move || {
            stack_get::<_, B>(svc.clone(), url.clone())
        }))
    }
}
