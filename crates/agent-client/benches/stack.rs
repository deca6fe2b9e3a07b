//! What agentgate's stack costs per call.
//!
//! - `stack/bare` vs `stack/full`: the full stack (progress → retry (→ metrics) →
//!   circuit breaker → timeout) around an always-ready in-memory service, against that
//!   service alone. Target: ≤ 1 µs/call of overhead.
//! - `client/bare_hyper` vs `client/agentgate`: 64 concurrent requests at a time through
//!   a bare hyper-util client and through `AgentClient`, against the same local hyper
//!   server. Target: agentgate ≥ 0.95× the bare client's throughput. On a noisy machine
//!   `examples/client_ratio.rs` gives the same ratio from alternating blocks.
//!
//! With `ABLATE=1` the client group also runs the stack built up one layer at a time
//! (client, + timeout, + breaker, + retry with one attempt, + retry, full; each unboxed,
//! as `AgentClient` holds it; and the full stack boxed), to show what each costs.
//! `stack/unboxed` is the in-memory stack as `AgentClient` holds it, `stack/full` the
//! boxed one `stack` returns.
#![allow(missing_docs)]

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agentgate_agent_client::{layered, stack, AgentMetrics, StackParts};
use agentgate_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use agentgate_retry::{ReplayBody, RetryConfig, RetryPolicy};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use support::{agent_get, bare_get, echo_path, run, stack_get, Rig};
use tower::Service;

/// Polls a future that is expected to be ready at once.
fn now<F: Future>(fut: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("in-memory call was not ready at once"),
    }
}

fn one_call<S>(svc: &mut S) -> Response<()>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(&mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let req = Request::get("http://agent/process")
        .body(Empty::new())
        .unwrap();
    now(svc.call(req)).unwrap()
}

fn in_memory_stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let inner = tower::service_fn(|_req: Request<ReplayBody<Empty<Bytes>>>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    });
    // The bare service takes the caller's body as it is.
    let bare_inner = tower::service_fn(|_req: Request<Empty<Bytes>>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    });
    let parts = StackParts {
        metrics: Arc::new(AgentMetrics::new("bench")),
        retry: RetryPolicy::try_new("bench", RetryConfig::default()).unwrap(),
        breaker: CircuitBreakerLayer::try_new("bench", CircuitBreakerConfig::default()).unwrap(),
        timeout: Duration::from_secs(30),
        attempt_header: agentgate_retry::AttemptHeader::Always,
    };
    let mut full = stack(&parts, inner);
    let mut unboxed = layered(&parts, inner);
    let mut bare = bare_inner;

    let mut group = c.benchmark_group("stack");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    group.bench_function("bare", |b| {
        b.iter(|| std::hint::black_box(one_call(&mut bare)))
    });
    group.bench_function("full", |b| {
        b.iter(|| std::hint::black_box(one_call(&mut full)))
    });
    group.bench_function("unboxed", |b| {
        b.iter(|| std::hint::black_box(one_call(&mut unboxed)))
    });
    group.finish();
    assert_eq!(
        parts.breaker.handle().snapshot().state,
        agentgate_circuit_breaker::State::Closed
    );
}

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
            let agent = agent.clone();
            rt.block_on(run(iters, CONCURRENCY, move || {
                agent_get(agent.clone(), echo_path())
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

criterion_group!(benches, in_memory_stack, through_hyper);
criterion_main!(benches);
