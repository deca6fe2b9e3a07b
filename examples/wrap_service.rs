//! Wrap your own tower service in agentgate's resilience layers.
//!
//! ```text
//! cargo run --example wrap_service
//! ```
//!
//! The stack, outermost first, is the one the gateway builds for every agent:
//!
//! ```text
//! retry → circuit breaker → per-attempt timeout → your service
//! ```
//!
//! Retry sits outside the breaker so that every attempt passes the breaker (and an open
//! breaker is never retried); the timeout sits inside it so that an attempt that times
//! out counts as a failure. The service here is an in-memory "agent" that answers 503
//! once, then 200 — until we make it hang. The program shows, in order:
//!
//! 1. a 503 retried into a 200 (`x-agentgate-attempts: 2`);
//! 2. a hanging agent: every attempt times out, and the breaker trips on the third
//!    failure in a row;
//! 3. the open breaker failing the next call at once, without calling the agent;
//! 4. after `open_duration`, a probe that succeeds and closes the breaker again.
//!
//! It exits non-zero if any of that does not happen.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentgate::circuit_breaker::{Reason, State};
use agentgate::classify::{cause_ref, classify_error};
use agentgate::retry::Jitter;
use agentgate::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, FailureClass, ReplayBody, RetryConfig,
    RetryLayer, RetryPolicy,
};
use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::timeout::TimeoutLayer;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// Our own service: answers 503 to its first request and 200 after that, or never
/// answers while `hanging` is set.
#[derive(Debug, Default)]
struct FlakyAgent {
    calls: AtomicU32,
    hanging: AtomicBool,
}

impl FlakyAgent {
    /// The retry layer hands the service below it the request body wrapped in a
    /// [`ReplayBody`], which keeps what was sent so a retry can send it again.
    async fn answer(
        &self,
        _req: Request<ReplayBody<String>>,
    ) -> Result<Response<String>, BoxError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hanging.load(Ordering::SeqCst) {
            // Far longer than the per-attempt timeout: the timeout layer gives up first.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let status = if n == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        Ok(Response::builder()
            .status(status)
            .body(format!("answer #{}", n + 1))?)
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let agent = Arc::new(FlakyAgent::default());
    let service = tower::service_fn({
        let agent = agent.clone();
        move |req| {
            let agent = agent.clone();
            async move { agent.answer(req).await }
        }
    });

    // Up to 3 attempts, 20 ms apart (no jitter, so the run is the same every time).
    let retry = RetryPolicy::try_new(
        "flaky",
        RetryConfig {
            max_attempts: 3,
            base_delay: Duration::from_millis(20),
            jitter: Jitter::None,
            ..RetryConfig::default()
        },
    )?;
    // Trips on 3 failures in a row; stays open 300 ms before it lets a probe through.
    let breaker = CircuitBreakerLayer::try_new(
        "flaky",
        CircuitBreakerConfig {
            consecutive_failures: 3,
            open_duration: Duration::from_millis(300),
            ..CircuitBreakerConfig::default()
        },
    )?;
    // The handle reads and steers the breaker from outside the request path.
    let handle = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(retry))
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_millis(100)))
        .service(service);
    let call = || stack.clone().oneshot(Request::new(String::from("hello")));

    println!("1. the agent answers 503 once, then 200");
    let res = call().await?;
    let attempts = res.headers()["x-agentgate-attempts"].to_str()?;
    println!(
        "   -> {} after {attempts} attempts: {:?}",
        res.status(),
        res.body()
    );
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(attempts, "2");
    assert_eq!(agent.calls(), 2);

    println!("2. the agent hangs: each attempt times out after 100 ms");
    agent.hanging.store(true, Ordering::SeqCst);
    let err = call().await.expect_err("a hanging agent cannot answer");
    println!("   -> failed ({}): {err}", classify_error(&*err));
    assert_eq!(classify_error(&*err), FailureClass::Timeout);
    assert_eq!(agent.calls(), 5, "three attempts, all timed out");
    let snapshot = handle.snapshot();
    let reason = snapshot.trip_reason.map_or("-", |r| r.as_str());
    println!("   breaker: {} (trip reason: {reason})", snapshot.state);
    assert_eq!(snapshot.state, State::Open);
    assert_eq!(snapshot.trip_reason, Some(Reason::Consecutive));

    println!("3. the breaker is open: the next call fails fast");
    let started = Instant::now();
    let err = call().await.expect_err("an open breaker rejects");
    let open = cause_ref::<CircuitOpen>(&*err).expect("rejected by the breaker");
    println!("   -> rejected in {:?}: {open}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "no timeout waited"
    );
    assert_eq!(agent.calls(), 5, "the agent was not called, nor retried");
    assert_eq!(handle.snapshot().rejected, 1);

    println!("4. the agent recovers; after open_duration a probe closes the breaker");
    agent.hanging.store(false, Ordering::SeqCst);
    tokio::time::sleep(open.retry_after().unwrap_or_default()).await;
    println!("   breaker: {}", handle.snapshot().state);
    assert_eq!(handle.snapshot().state, State::HalfOpen);
    let res = call().await?;
    let snapshot = handle.snapshot();
    println!("   -> {}; breaker: {}", res.status(), snapshot.state);
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(snapshot.state, State::Closed);
    // closed → open → half_open → closed
    assert_eq!(snapshot.transitions, 3);
    Ok(())
}
