//! What agentgate's stack costs per call, in memory.
//!
//! `stack/bare` vs `stack/full`: the full stack (progress → retry (→ metrics) → circuit
//! breaker → timeout) around an always-ready in-memory service, against that service
//! alone. Target: ≤ 1 µs/call of overhead. `stack/unboxed` is the stack as `AgentClient`
//! holds it, `stack/full` the boxed one `stack` returns.
//!
//! Through hyper (`AgentClient` against a bare hyper-util client) is measured by
//! `benches/harness` (`cargo bench -p agentgate-bench-harness`, `client_ratio`).
#![allow(missing_docs)]

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
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Empty;
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
        bulkhead: agentgate_agent_client::BulkheadLayer::new("bench", 0, Duration::ZERO),
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

criterion_group!(benches, in_memory_stack);
criterion_main!(benches);
