//! Decide yourself what counts as a failure for the circuit breaker.
//!
//! ```text
//! cargo run --example custom_classifier
//! ```
//!
//! The default [`HttpClassifier`] follows SPEC §5: connect errors, resets, timeouts and
//! the statuses 500, 502, 503 and 504 are failures; every other answer is the agent
//! telling a healthy "no" (a 429 only trips the breaker when it carries `Retry-After`).
//! Some APIs say "overloaded" differently: a 429 with no `Retry-After`, or a 200 whose
//! JSON body is `{"error": …}`. Behind the default classifier such an agent never trips
//! its breaker, and callers keep hammering it.
//!
//! [`ApiErrors`] below implements [`Classify`] for such an API and is plugged into a
//! breaker with [`CircuitBreakerLayer::with_classifier`]. The program calls the same
//! overloaded agent through a breaker with each classifier and exits non-zero unless
//! only the custom one trips (and then stops calling the agent).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use agentgate::circuit_breaker::State;
use agentgate::classify::{Classified, Classify, Outcome};
use agentgate::{
    is_caused_by, CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, FailureClass,
    HttpClassifier,
};
use http::{Request, Response, StatusCode};
use tower::{BoxError, Layer, ServiceExt};

/// Failures as an API that reports overload in-band sees them: everything the default
/// classifier calls a failure, plus any 429 and any 2xx whose JSON body has an `error`.
///
/// The breaker classifies the response it gets, so the body must already be in it (a
/// `String` here); for streamed bodies, buffer them in a layer below the breaker.
#[derive(Clone, Copy, Debug, Default)]
struct ApiErrors;

impl Classify<Response<String>> for ApiErrors {
    fn classify(&self, result: &Result<Response<String>, BoxError>) -> Classified {
        // Start from the default verdict: it classifies transport errors and failure
        // statuses, and reads `Retry-After`.
        let verdict = HttpClassifier::new().classify(result);
        let Ok(res) = result else {
            return verdict;
        };
        let overloaded = res.status() == StatusCode::TOO_MANY_REQUESTS;
        let error_body = res.status().is_success() && has_error_field(res.body());
        match (overloaded, error_body) {
            (true, _) => Classified {
                outcome: Outcome::Failure(FailureClass::Status),
                ..verdict
            },
            (_, true) => Classified {
                outcome: Outcome::Failure(FailureClass::BadResponse),
                ..verdict
            },
            _ => verdict,
        }
    }
}

fn has_error_field(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| v.get("error").is_some())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // An overloaded agent: it alternates a bare 429 and a 200 carrying an error.
    let calls = Arc::new(AtomicU32::new(0));
    let agent = tower::service_fn({
        let calls = calls.clone();
        move |_req: Request<String>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let res = if n % 2 == 0 {
                    Response::builder()
                        .status(StatusCode::TOO_MANY_REQUESTS)
                        .body(String::new())
                } else {
                    Response::builder().body(r#"{"error":"model overloaded"}"#.to_owned())
                };
                Ok::<_, BoxError>(res?)
            }
        }
    });
    let config = CircuitBreakerConfig {
        consecutive_failures: 3,
        ..CircuitBreakerConfig::default()
    };

    println!("default classifier:");
    let layer = CircuitBreakerLayer::try_new("llm", config.clone())?;
    let handle = layer.handle();
    let guarded = layer.layer(agent.clone());
    for _ in 0..5 {
        let res = guarded.clone().oneshot(Request::new(String::new())).await?;
        println!("   -> {} {:?}", res.status(), res.body());
    }
    let snapshot = handle.snapshot();
    println!("   breaker: {} after 5 calls", snapshot.state);
    assert_eq!(
        snapshot.state,
        State::Closed,
        "a 429 and a 200 are no failures here"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 5);

    println!("custom classifier:");
    calls.store(0, Ordering::SeqCst);
    let layer = CircuitBreakerLayer::try_new("llm", config)?.with_classifier(ApiErrors);
    let handle = layer.handle();
    let guarded = layer.layer(agent);
    let mut rejected = 0;
    for _ in 0..5 {
        match guarded.clone().oneshot(Request::new(String::new())).await {
            Ok(res) => println!("   -> {} {:?}", res.status(), res.body()),
            Err(err) if is_caused_by::<CircuitOpen>(&*err) => {
                println!("   -> rejected: {err}");
                rejected += 1;
            }
            Err(err) => return Err(err),
        }
    }
    let snapshot = handle.snapshot();
    let reason = snapshot.trip_reason.map_or("-", |r| r.as_str());
    println!(
        "   breaker: {} (trip reason: {reason}) after 5 calls",
        snapshot.state
    );
    assert_eq!(snapshot.state, State::Open);
    assert_eq!(rejected, 2, "the 4th and 5th calls fail fast");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the agent got a rest");
    Ok(())
}
