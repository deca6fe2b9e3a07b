//! A fixed number of closed-path calls, for instruction counts of what the breaker adds
//! per call (`benches/closed_path.rs` measures the time):
//!
//! ```sh
//! cargo build --release -p agentgate-circuit-breaker --example closed_path_profile
//! valgrind --tool=callgrind target/release/examples/closed_path_profile agentgate 100000
//! ```
//!
//! The variants are the bench's `bare` (the inner service alone), `agentgate` (behind
//! a breaker with the default config) and `agentgate_consecutive` (the rate trip off, so
//! no window), driven by the same `one_call`: `poll_ready`,
//! `call`, polling the future once with a no-op waker. Per-call figures come from the
//! difference between two call counts.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use agentgate_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, State};
use http::Response;
use tower::{Layer, Service};

/// Always ready, answers `200 OK` (the bench's `Echo`).
#[derive(Clone, Copy, Debug)]
struct Echo;

impl Service<u64> for Echo {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: u64) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

#[inline(never)]
fn one_call<S>(svc: &mut S, cx: &mut Context<'_>) -> S::Response
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    match pin!(svc.call(black_box(1))).poll(cx) {
        Poll::Ready(Ok(res)) => res,
        _ => panic!("not ready"),
    }
}

fn run<S>(mut svc: S, n: u64)
where
    S: Service<u64, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..n {
        black_box(one_call(&mut svc, &mut cx));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "agentgate".into());
    let n: u64 = args.next().map_or(100_000, |n| n.parse().unwrap());
    match variant.as_str() {
        "bare" => run(Echo, n),
        "agentgate" | "agentgate_consecutive" => {
            let config = if variant == "agentgate" {
                CircuitBreakerConfig::default()
            } else {
                CircuitBreakerConfig {
                    failure_rate_threshold: 0.0,
                    ..CircuitBreakerConfig::default()
                }
            };
            let layer = CircuitBreakerLayer::try_new("profile", config).expect("valid config");
            let handle = layer.handle();
            run(layer.layer(Echo), n);
            assert_eq!(handle.snapshot().state, State::Closed);
        }
        other => panic!("unknown variant {other:?}"),
    }
}
