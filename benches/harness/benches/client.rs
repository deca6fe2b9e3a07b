//! `AgentClient` against a bare hyper-util client: 64 concurrent requests at a time
//! through each, against the same local hyper server (`client/bare_hyper`,
//! `client/agentgate`). Target: agentgate ≥ 0.95× the bare client's throughput. On a
//! noisy machine `client_ratio` gives the same ratio from alternating blocks.
//!
//! With `ABLATE=1` the group also runs the stack built up one layer at a time (the
//! client, then with a timeout, a breaker, a retry with one attempt, a retry, the whole
//! stack; each unboxed, as `AgentClient` holds it; and the whole stack boxed), to show
//! what each costs.
#![allow(missing_docs)]

use std::time::Duration;

use agentgate_bench_harness as support;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, Response};
use hyper::body::Incoming;
use support::{agent_get, bare_get, echo_path, run, stack_get, Rig};
use tower::Service;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Requests in flight in the `client` group.
const CONCURRENCY: u64 = 64;

fn through_hyper(c: &mut Criterion) {
    let rig = Rig::start();
    let agent = rig.agent("bench-http", |cfg| {
        if std::env::var("NO_RETRY").is_ok() {
            cfg.retry.max_attempts = 1;
        }
    });
    let (rt, url, bare) = (&rig.rt, &rig.url, &rig.bare);

    let mut group = c.benchmark_group("client");
    group
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare_hyper", |b| {
        b.iter_custom(|iters| {
            let (bare, url) = (bare.clone(), url.clone());
            rt.block_on(run(iters, CONCURRENCY, move || {
                bare_get(bare.clone(), url.clone())
            }))
        })
    });
    // Each client gets an already parsed URI, as the bare one does: the absolute URL
    // there, the path that `AgentClient::send` resolves against the agent's URL here.
    group.bench_function("agentgate", |b| {
        b.iter_custom(|iters| {
            let (agent, path) = (agent.clone(), echo_path());
            rt.block_on(run(iters, CONCURRENCY, move || {
                agent_get(agent.clone(), path.clone())
            }))
        })
    });
    if std::env::var("ABLATE").is_ok() {
        let parts = support::default_parts("abl");
        let shared = agentgate_agent_client::SharedClient::new(rig.bare.clone());
        for name in support::LAYERS {
            let ablate = Ablate {
                group: &mut group,
                rig: &rig,
                name,
            };
            support::with_layers(name, &parts, shared.clone(), ablate);
        }
    }
    group.finish();
}

/// One `ABLATE=1` variant as a criterion benchmark: GETs through it, cloned per request
/// as `AgentClient` does.
struct Ablate<'a, 'g> {
    group: &'a mut criterion::BenchmarkGroup<'g, criterion::measurement::WallTime>,
    rig: &'a Rig,
    name: &'a str,
}

impl support::WithStack for Ablate<'_, '_> {
    type Output = ();

    fn with<S, B>(self, svc: S)
    where
        S: Service<Request<B>, Response = Response<Incoming>> + Clone + Send + 'static,
        S::Error: std::fmt::Debug,
        S::Future: Send,
        B: Default + Send + 'static,
    {
        let rig = self.rig;
        self.group.bench_function(self.name, |b| {
            b.iter_custom(|iters| {
                let (svc, url) = (svc.clone(), rig.url.clone());
                rig.rt.block_on(run(iters, CONCURRENCY, move || {
                    stack_get::<_, B>(svc.clone(), url.clone())
                }))
            })
        });
    }
}

criterion_group!(benches, through_hyper);
criterion_main!(benches);
