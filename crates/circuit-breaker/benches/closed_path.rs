//! Closed-path overhead of the circuit breaker over the bare inner service, next to two
//! peers (tower-resilience-circuitbreaker and failsafe) wrapped around the same service.
//!
//! One measured "call" is what a caller of any tower service pays: `poll_ready`, `call`,
//! and polling the returned future to completion. The inner service is an always-ready,
//! in-memory `Echo` that answers `200 OK` at once, so what is left is the breaker's own
//! cost. Every variant is driven by the same `one_call` function, in the same criterion
//! group, so the ratios between them mean something.
//!
//! - `1_thread/*`: one service, one OS thread.
//! - `2_threads/*`: two OS threads, each with a clone of the same service (one shared
//!   breaker), each making `iters` calls; the time reported is the wall time from the
//!   moment both threads start until both are done, divided by `iters` (the calls one
//!   thread made). A breaker that scales perfectly reports the same figure as with one
//!   thread; contention on shared cache lines shows up as a larger one.
//!
//! No runtime is involved: futures are polled with a no-op waker. On the paths measured
//! here every future is ready on its first poll, except tower-resilience's, whose
//! `tokio::sync::Mutex` returns `Pending` while the other thread holds it; such a future
//! is polled again at once (a spin, yielding the thread now and then) — the cheapest way
//! to wait, so contention is not blamed on a sleeping thread's wake-up latency.
//!
//! The `parts` group measures two parts of the closed path on their own, in the same run:
//! the clock read of the time-based window and an `Arc` clone and drop.
//!
//! Run with `cargo bench -p agentgate-circuit-breaker --bench closed_path`; the figures
//! and how the peers are configured are in `docs/BENCHMARKS.md`.

#![allow(missing_docs)]

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::sync::Barrier;
use std::task::{Context, Poll};
use std::time::Duration;

use agentgate_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, State};
use agentgate_classify::is_failure_status;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use futures_util::task::noop_waker_ref;
use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};
use tower_resilience_circuitbreaker::SlidingWindowType;

/// Calls made through every breaker before measuring, to check it is closed and counting.
const SANITY_CALLS: u64 = 10_000;

// === the inner service ===

/// The bare inner service: always ready, answers `200 OK` without doing anything.
#[derive(Clone, Copy, Debug, Default)]
struct Echo;

impl Service<u64> for Echo {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, _req: u64) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

// === failsafe as a tower service ===

/// failsafe is not a tower middleware: its futures API wraps a future
/// (`StateMachine::call(fut)`), asks `is_call_permitted` on the first poll and records
/// the outcome when the future finishes. This adapter gives it the same shape as the
/// others: readiness is the inner service's, `call` wraps the inner future.
#[derive(Clone, Debug)]
struct Failsafe<S, B> {
    inner: S,
    breaker: B,
}

pin_project! {
    /// failsafe only counts `Err`s, so a 500/502/503/504 answer is turned into one, as
    /// agentgate's `HttpClassifier` and the tower-resilience classifier below count it.
    #[derive(Debug)]
    struct FailOn5xx<F> {
        #[pin]
        fut: F,
    }
}

impl<F> Future for FailOn5xx<F>
where
    F: Future<Output = Result<Response<()>, Infallible>>,
{
    type Output = Result<Response<()>, Response<()>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().fut.poll(cx) {
            Poll::Ready(Ok(res)) if is_failure_status(res.status()) => Poll::Ready(Err(res)),
            Poll::Ready(Ok(res)) => Poll::Ready(Ok(res)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S, B> Service<u64> for Failsafe<S, B>
where
    S: Service<u64, Response = Response<()>, Error = Infallible>,
    B: failsafe::futures::CircuitBreaker,
{
    type Response = Response<()>;
    type Error = failsafe::Error<Response<()>>;
    type Future = failsafe::futures::ResponseFuture<
        FailOn5xx<S::Future>,
        B::FailurePolicy,
        B::Instrument,
        failsafe::Any,
    >;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn call(&mut self, req: u64) -> Self::Future {
        self.breaker.call(FailOn5xx {
            fut: self.inner.call(req),
        })
    }
}

// === driving a service without a runtime ===

/// Waits before polling again after `Pending`: spins, and gives the core away now and
/// then so a holder that was preempted can finish.
#[cold]
fn wait(spins: &mut u32) {
    *spins += 1;
    if *spins % 64 == 0 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// One call as a tower client makes it: `poll_ready`, `call`, poll the future to the end.
#[inline]
fn one_call<S>(svc: &mut S, cx: &mut Context<'_>, req: u64) -> S::Response
where
    S: Service<u64>,
    S::Error: fmt::Debug,
{
    let mut spins = 0;
    loop {
        match svc.poll_ready(cx) {
            Poll::Ready(Ok(())) => break,
            Poll::Ready(Err(e)) => panic!("poll_ready failed: {e:?}"),
            Poll::Pending => wait(&mut spins),
        }
    }
    let mut fut = pin!(svc.call(req));
    loop {
        match fut.as_mut().poll(cx) {
            Poll::Ready(Ok(res)) => return res,
            Poll::Ready(Err(e)) => panic!("call failed: {e:?}"),
            Poll::Pending => wait(&mut spins),
        }
    }
}

/// Makes `n` calls and checks that each was answered `200 OK`.
fn calls<S>(svc: &mut S, n: u64)
where
    S: Service<u64, Response = Response<()>>,
    S::Error: fmt::Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    for i in 0..n {
        assert_eq!(one_call(svc, &mut cx, i).status(), 200);
    }
}

// === the benchmarks ===

fn bench_variant<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, svc: S)
where
    S: Service<u64> + Clone + Send,
    S::Error: fmt::Debug,
{
    group.bench_function(format!("1_thread/{name}"), |b| {
        let mut svc = svc.clone();
        let mut cx = Context::from_waker(noop_waker_ref());
        b.iter(|| one_call(&mut svc, &mut cx, black_box(1)));
    });

    group.bench_function(format!("2_threads/{name}"), |b| {
        b.iter_custom(|iters| {
            // Both workers and this thread meet at the barrier, so thread start-up is not
            // timed; joining (a few microseconds against milliseconds of calls) is.
            let start_line = Barrier::new(3);
            let started = std::thread::scope(|scope| {
                for _ in 0..2 {
                    let mut svc = svc.clone();
                    let start_line = &start_line;
                    scope.spawn(move || {
                        let mut cx = Context::from_waker(noop_waker_ref());
                        start_line.wait();
                        for _ in 0..iters {
                            black_box(one_call(&mut svc, &mut cx, black_box(1)));
                        }
                    });
                }
                start_line.wait();
                Instant::now()
            });
            // `scope` returns once both workers are joined.
            started.elapsed()
        });
    });
}

fn closed_path(c: &mut Criterion) {
    // agentgate: the SPEC defaults (5 consecutive failures, or a 50% failure rate over a
    // 30 s time-based window once it holds 20 calls; open 60 s doubling up to 300 s;
    // Retry-After trips on), classified by the default HttpClassifier.
    let layer = CircuitBreakerLayer::try_new("bench", CircuitBreakerConfig::default())
        .expect("default config");
    let handle = layer.handle();
    let mut agentgate = layer.layer(Echo);
    calls(&mut agentgate, SANITY_CALLS);
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, State::Closed);
    assert_eq!(
        snapshot.calls_in_window, SANITY_CALLS,
        "the closed path must count calls"
    );

    // agentgate with the policy of failsafe's `consecutive_failures` below: 5 failures in
    // a row, no rate trip (`failure_rate_threshold = 0`), so no window and no clock read.
    let consecutive_layer = CircuitBreakerLayer::try_new(
        "bench-consecutive",
        CircuitBreakerConfig {
            failure_rate_threshold: 0.0,
            ..CircuitBreakerConfig::default()
        },
    )
    .expect("consecutive-only config");
    let consecutive_handle = consecutive_layer.handle();
    let mut agentgate_consecutive = consecutive_layer.layer(Echo);
    calls(&mut agentgate_consecutive, SANITY_CALLS);
    assert_eq!(consecutive_handle.snapshot().state, State::Closed);

    // tower-resilience: 50% failure rate once 20 calls are in a count-based window of 100
    // calls, open 60 s, one half-open probe, 5xx classified as failures. Its time-based
    // window keeps one record per call in a VecDeque and scans all of them on every call,
    // so under a closed-loop benchmark (millions of calls per 30 s) its cost grows with
    // the number of calls made; the count-based window is its O(1) configuration.
    let mut tower_resilience = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .name("bench")
        .failure_rate_threshold(0.5)
        .sliding_window_type(SlidingWindowType::CountBased)
        .sliding_window_size(100)
        .minimum_number_of_calls(20)
        .wait_duration_in_open(Duration::from_secs(60))
        .permitted_calls_in_half_open(1)
        .classify_response(|res: &Response<()>| is_failure_status(res.status()))
        .build()
        .expect("tower-resilience config")
        .layer(Echo);
    calls(&mut tower_resilience, SANITY_CALLS);
    assert!(!tower_resilience.is_open());

    // failsafe: trip on 5 consecutive failures, exponential backoff 60 s .. 300 s.
    let backoff = failsafe::backoff::exponential(Duration::from_secs(60), Duration::from_secs(300));
    let policy = failsafe::failure_policy::consecutive_failures(5, backoff);
    let mut failsafe = Failsafe {
        inner: Echo,
        breaker: failsafe::Config::new().failure_policy(policy).build(),
    };
    calls(&mut failsafe, SANITY_CALLS);
    assert!(failsafe.breaker.is_call_permitted());

    // failsafe with agentgate's default policy: 5 consecutive failures, or a 50% failure
    // rate (success rate below 0.5) over a 30 s window once it holds 20 calls. This one
    // reads the clock on every call, as any time-based window must.
    let backoff = failsafe::backoff::exponential(Duration::from_secs(60), Duration::from_secs(300));
    let policy = failsafe::FailurePolicy::or_else(
        failsafe::failure_policy::consecutive_failures(5, backoff.clone()),
        failsafe::failure_policy::success_rate_over_time_window(
            0.5,
            20,
            Duration::from_secs(30),
            backoff,
        ),
    );
    let mut failsafe_windowed = Failsafe {
        inner: Echo,
        breaker: failsafe::Config::new().failure_policy(policy).build(),
    };
    calls(&mut failsafe_windowed, SANITY_CALLS);
    assert!(failsafe_windowed.breaker.is_call_permitted());

    let mut group = c.benchmark_group("closed_path");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    bench_variant(&mut group, "bare", Echo);
    bench_variant(&mut group, "agentgate", agentgate);
    bench_variant(&mut group, "agentgate_consecutive", agentgate_consecutive);
    bench_variant(&mut group, "tower_resilience", tower_resilience);
    bench_variant(&mut group, "failsafe", failsafe);
    bench_variant(&mut group, "failsafe_same_policy", failsafe_windowed);
    group.finish();

    for handle in [&handle, &consecutive_handle] {
        assert_eq!(
            handle.snapshot().state,
            State::Closed,
            "agentgate left the closed state"
        );
    }
}

/// What the closed path is made of, measured in the same run: the clock read the
/// time-based window needs per call (`tokio::time::Instant::now`, as the breaker reads it)
/// and the response future's `Arc` clone and drop. docs/BENCHMARKS.md splits the
/// closed path's overhead with these.
fn parts(c: &mut Criterion) {
    let mut group = c.benchmark_group("parts");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    group.bench_function("clock_read", |b| b.iter(|| black_box(Instant::now())));
    let shared = std::sync::Arc::new(0u64);
    group.bench_function("arc_clone_drop", |b| {
        // criterion drops each returned clone inside the timed loop.
        b.iter(|| std::sync::Arc::clone(&shared))
    });
    group.finish();
}

criterion_group!(benches, closed_path, parts);
criterion_main!(benches);
