//! What agentgate's stack costs per call.
//!
//! - `stack/bare` vs `stack/full`: the full stack (progress → retry → metrics → circuit
//!   breaker → timeout) around an always-ready in-memory service, against that service
//!   alone. Target: ≤ 1 µs/call of overhead.
//! - `client/bare_hyper` vs `client/agentgate`: 64 concurrent requests at a time through
//!   a bare hyper-util client and through `AgentClient`, against the same local hyper
//!   server. Target: agentgate ≥ 0.95× the bare client's throughput.
//!
//! With `ABLATE=1` the client group also runs the stack built up one layer at a time
//! (client, + timeout, + breaker, + metrics, + retry, full; each unboxed, as
//! `AgentClient` holds it; and the full stack boxed), to show what each costs.
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

use agentgate_agent_client::{
    layered, stack, AgentClient, AgentConfig, AgentMetrics, HttpClient, StackParts,
};
use agentgate_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use agentgate_retry::{RetryBody, RetryConfig, RetryPolicy};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{run, start_server};
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
    S: Service<Request<RetryBody>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(&mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let req = Request::get("http://agent/process")
        .body(RetryBody::empty())
        .unwrap();
    now(svc.call(req)).unwrap()
}

fn in_memory_stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let inner = tower::service_fn(|_req: Request<RetryBody>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    });
    let parts = StackParts {
        metrics: Arc::new(AgentMetrics::new("bench")),
        retry: RetryPolicy::try_new("bench", RetryConfig::default()).unwrap(),
        breaker: CircuitBreakerLayer::try_new("bench", CircuitBreakerConfig::default()).unwrap(),
        timeout: Duration::from_secs(30),
    };
    let mut full = stack(&parts, inner);
    let mut unboxed = layered(&parts, inner);
    let mut bare = inner;

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
    let addr = start_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url: http::Uri = format!("http://{addr}/echo").parse().unwrap();

    let bare: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
    let agent = rt.block_on(async {
        let mut cfg = AgentConfig::new(format!("http://{addr}").parse().unwrap());
        if std::env::var("NO_RETRY").is_ok() {
            cfg.retry.max_attempts = 1;
        }
        AgentClient::new("bench-http", cfg).unwrap()
    });

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
                let (bare, url) = (bare.clone(), url.clone());
                async move {
                    let req = Request::get(url).body(RetryBody::empty()).unwrap();
                    let res = bare.request(req).await.unwrap();
                    res.into_body().collect().await.unwrap();
                }
            }))
        })
    });
    group.bench_function("agentgate", |b| {
        b.iter_custom(|iters| {
            let agent = agent.clone();
            rt.block_on(run(iters, CONCURRENCY, move || {
                let agent = agent.clone();
                async move {
                    let req = Request::get("/echo").body(RetryBody::empty()).unwrap();
                    let res = agent.send(req).await.unwrap();
                    res.into_body().collect().await.unwrap();
                }
            }))
        })
    });
    if std::env::var("ABLATE").is_ok() {
        use agentgate_agent_client::{AgentMetricsLayer, SharedClient};
        use agentgate_retry::RetryLayer;
        use tower::ServiceBuilder;
        let shared = SharedClient::new(bare.clone());
        let parts = StackParts {
            metrics: Arc::new(AgentMetrics::new("abl")),
            retry: RetryPolicy::try_new("abl", RetryConfig::default()).unwrap(),
            breaker: CircuitBreakerLayer::try_new("abl", CircuitBreakerConfig::default()).unwrap(),
            timeout: Duration::from_secs(30),
        };
        let t = parts.timeout;
        let mut variant = |name: &str, svc| ablate(&mut group, &rt, &url, name, svc);
        variant("a_client", Variant::A(shared.clone()));
        variant(
            "b_timeout",
            Variant::B(ServiceBuilder::new().timeout(t).service(shared.clone())),
        );
        variant(
            "c_breaker",
            Variant::C(
                ServiceBuilder::new()
                    .layer(parts.breaker.clone())
                    .timeout(t)
                    .service(shared.clone()),
            ),
        );
        variant(
            "d_metrics",
            Variant::D(
                ServiceBuilder::new()
                    .layer(AgentMetricsLayer::new(parts.metrics.clone()))
                    .layer(parts.breaker.clone())
                    .timeout(t)
                    .service(shared.clone()),
            ),
        );
        variant(
            "e_retry",
            Variant::E(
                ServiceBuilder::new()
                    .layer(RetryLayer::new(parts.retry.clone()))
                    .layer(AgentMetricsLayer::new(parts.metrics.clone()))
                    .layer(parts.breaker.clone())
                    .timeout(t)
                    .service(shared.clone()),
            ),
        );
        variant("f_full", Variant::F(layered(&parts, shared.clone())));
        variant("g_boxed", Variant::G(stack(&parts, shared.clone())));
    }
    group.finish();
}

/// The stack built up one layer at a time (`ABLATE=1`), each unboxed as `AgentClient`
/// holds it (`g_boxed`: the whole stack boxed).
enum Variant {
    A(agentgate_agent_client::SharedClient),
    B(tower::timeout::Timeout<agentgate_agent_client::SharedClient>),
    C(
        agentgate_circuit_breaker::CircuitBreaker<
            tower::timeout::Timeout<agentgate_agent_client::SharedClient>,
            agentgate_classify::HttpClassifier,
        >,
    ),
    D(
        agentgate_agent_client::AgentMetricsService<
            agentgate_circuit_breaker::CircuitBreaker<
                tower::timeout::Timeout<agentgate_agent_client::SharedClient>,
                agentgate_classify::HttpClassifier,
            >,
        >,
    ),
    E(
        agentgate_retry::RetryService<
            agentgate_agent_client::AgentMetricsService<
                agentgate_circuit_breaker::CircuitBreaker<
                    tower::timeout::Timeout<agentgate_agent_client::SharedClient>,
                    agentgate_classify::HttpClassifier,
                >,
            >,
        >,
    ),
    F(agentgate_agent_client::Stack<agentgate_agent_client::SharedClient>),
    G(agentgate_agent_client::AgentService<Incoming>),
}

fn ablate(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    url: &http::Uri,
    name: &str,
    svc: Variant,
) {
    match svc {
        Variant::A(svc) => ablate_one(group, rt, url, name, svc),
        Variant::B(svc) => ablate_one(group, rt, url, name, svc),
        Variant::C(svc) => ablate_one(group, rt, url, name, svc),
        Variant::D(svc) => ablate_one(group, rt, url, name, svc),
        Variant::E(svc) => ablate_one(group, rt, url, name, svc),
        Variant::F(svc) => ablate_one(group, rt, url, name, svc),
        Variant::G(svc) => ablate_one(group, rt, url, name, svc),
    }
}

fn ablate_one<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    url: &http::Uri,
    name: &str,
    svc: S,
) where
    S: Service<Request<RetryBody>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    use tower::ServiceExt;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (svc, url) = (svc.clone(), url.clone());
            rt.block_on(run(iters, CONCURRENCY, move || {
                let (svc, url) = (svc.clone(), url.clone());
                async move {
                    let req = Request::get(url).body(RetryBody::empty()).unwrap();
                    let res = svc.oneshot(req).await.unwrap();
                    res.into_body().collect().await.unwrap();
                }
            }))
        })
    });
}

criterion_group!(benches, in_memory_stack, through_hyper);
criterion_main!(benches);
